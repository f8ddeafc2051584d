//! Registrations stored in batches: one transaction per batch, fresh ids written in one
//! statement, retries and conflicts one at a time in savepoints, and the ordering between
//! batches that overlap (NDJSON chunks, group commits).

use super::*;

/// One registration of a group-committed batch.
pub struct BatchItem<'a> {
    /// its enrollment
    pub group: &'a Group,
    /// who registers (audit)
    pub actor: &'a Actor,
    /// one-time token to consume with it
    pub jti: Option<&'a str>,
    /// the request after [`prepare`] (an error is passed through to its result)
    pub prepared: Result<Prepared, RegisterError>,
}

/// What a batch shares: the key ring, the audit key and the time of the transaction.
pub struct BatchCtx<'a> {
    /// master key ring
    pub ring: &'a KeyRing,
    /// audit chain key
    pub audit_key: &'a AuditKey,
    /// unix seconds
    pub now: i64,
}

impl<'a> BatchCtx<'a> {
    pub(super) fn cx(&self, actor: &'a Actor) -> Ctx<'a> {
        Ctx { ring: self.ring, audit_key: self.audit_key, now: self.now, actor }
    }
}

pub(super) struct Line<'a> {
    i: usize,
    group: &'a Group,
    actor: &'a Actor,
    jti: Option<&'a str>,
    p: Prepared,
}

/// Registers a batch with group commit: one transaction for all lines, results only after the
/// commit, in input order. Lines that look like first registrations (no one-time token, id once
/// in the batch) are stored optimistically, with one multi-row statement per table (one
/// statement in all on PostgreSQL) and one audit append, without looking their ids up first;
/// if the database refuses that (an id is known: a retry, a reprovisioning, a device created
/// otherwise, or another instance was faster), the transaction starts over, looks the ids up
/// and stores the unknown ones in one go again. The others run one by one, each in a
/// savepoint, so a failing line leaves nothing behind and does not affect the rest.
///
/// `last_head` is the audit head after this caller's previous batch, if it knows it; with it,
/// on PostgreSQL, a batch of first registrations only is one statement without a transaction
/// ([`insert_fresh_if_head`]), and the normal path runs only if that is refused. It is updated
/// for the next batch.
pub async fn register_batch<'a>(
    store: &Store,
    bx: &BatchCtx<'a>,
    authority: &Authority,
    items: Vec<BatchItem<'a>>,
    last_head: &mut Option<(i64, String)>,
) -> Vec<Result<Registered, RegisterError>> {
    let (mut results, fresh, slow) = split_lines(store, items).await;
    commit_lines(store, bx, authority, &mut results, fresh, slow, last_head).await;
    finish(results)
}

pub(super) type Results = Vec<Option<Result<Registered, RegisterError>>>;

/// A batch's place in a stream of batches (an NDJSON request's chunks) whose commits overlap
/// on PostgreSQL: a batch inserts its rows once the batch before has inserted its own, then
/// takes the audit-head lock and commits while the next batch inserts. An id repeated in a
/// later batch therefore meets the earlier batch's rows (the database makes it wait for that
/// commit), so a retry or a reissue answers as it would line by line, and the results keep the
/// stream's order; the audit rows of two batches may commit in either order, like those of two
/// clients. A batch waits here only while it holds nothing in the database: every wait between
/// transactions is then one the database sees, and a deadlock (a single registration takes
/// the head before its rows) is broken by it instead of hanging. Dropping a turn releases the
/// next batch.
#[derive(Debug)]
pub struct Turn {
    prev_written: Option<tokio::sync::oneshot::Receiver<()>>,
    prev_committed: Option<tokio::sync::oneshot::Receiver<()>>,
    written: Option<tokio::sync::oneshot::Sender<()>>,
    committed: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Hands out [`Turn`]s in stream order.
#[derive(Debug, Default)]
pub struct Turns {
    written: Option<tokio::sync::oneshot::Receiver<()>>,
    committed: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Turns {
    /// The turn of the next batch.
    pub fn next_turn(&mut self) -> Turn {
        let (written, written_rx) = tokio::sync::oneshot::channel();
        let (committed, committed_rx) = tokio::sync::oneshot::channel();
        Turn {
            prev_written: self.written.replace(written_rx),
            prev_committed: self.committed.replace(committed_rx),
            written: Some(written),
            committed: Some(committed),
        }
    }
}

impl Turn {
    /// Waits until the batch before has written its rows (or is gone).
    pub(super) async fn after_written(&mut self) {
        if let Some(rx) = self.prev_written.take() {
            let _ = rx.await;
        }
    }

    /// Waits until the batch before has committed (or is gone).
    pub(super) async fn after_committed(&mut self) {
        self.after_written().await;
        if let Some(rx) = self.prev_committed.take() {
            let _ = rx.await;
        }
    }

    /// Lets the next batch write.
    pub(super) fn wrote(&mut self) {
        if let Some(tx) = self.written.take() {
            let _ = tx.send(());
        }
    }

    /// Lets the next batch commit (and write, if it was not let yet).
    pub(super) fn committed(&mut self) {
        self.wrote();
        if let Some(tx) = self.committed.take() {
            let _ = tx.send(());
        }
    }
}

/// [`register_batch`] for a batch of a stream in `turn` (see [`Turn`]). On PostgreSQL, a batch
/// of first registrations inserts its rows while the batch before commits; every other batch,
/// and one that the database refuses or picks as a deadlock victim, runs as [`register_batch`]
/// does once the batch before has committed. On SQLite (one writer) batches simply run in turn.
pub async fn register_batch_in_turn<'a>(
    store: &Store,
    bx: &BatchCtx<'a>,
    authority: &Authority,
    items: Vec<BatchItem<'a>>,
    mut turn: Turn,
) -> Vec<Result<Registered, RegisterError>> {
    let (mut results, fresh, slow) = split_lines(store, items).await;
    if store.dialect() == Dialect::Postgres && slow.is_empty() && !fresh.is_empty() {
        turn.after_written().await;
        match insert_fresh_in_turn(store, bx, &fresh, &mut turn).await {
            Ok(Some(done)) => {
                answer(&mut results, fresh, done, bx.now);
                turn.committed();
                return finish(results);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "batch commit failed");
                for line in fresh {
                    results[line.i] = Some(Err(RegisterError::Store(unavailable())));
                }
                return finish(results);
            }
        }
    }
    // Holding nothing in the database while it waits.
    turn.after_committed().await;
    commit_lines(store, bx, authority, &mut results, fresh, slow, &mut None).await;
    turn.committed();
    finish(results)
}

/// PostgreSQL, in `turn`: one statement inserts the rows of first registrations; the next
/// batch may insert from then on; the audit rows are chained under the head lock and all
/// commits. `Ok(None)`: nothing is stored (the rows were refused, or the transaction was
/// picked to break a deadlock) and the caller goes the [`register_batch`] way. `Err`: the
/// commit failed.
pub(super) async fn insert_fresh_in_turn(
    store: &Store,
    bx: &BatchCtx<'_>,
    fresh: &[Line<'_>],
    turn: &mut Turn,
) -> Result<Option<Vec<(String, String)>>, StoreError> {
    let rows = FreshRows::new(bx, fresh);
    let mut w = Writes::new(store.dialect());
    rows.add_to(&mut w);
    let mut tx = match store.begin_bulk().await {
        Ok(tx) => tx,
        Err(e) => {
            tracing::debug!(error = %e, "batch transaction failed");
            return Ok(None);
        }
    };
    if let Err(e) = w.execute(&mut tx).await {
        tracing::debug!(error = %e, "bulk registration refused");
        let _ = tx.rollback().await;
        return Ok(None);
    }
    turn.wrote();
    let dialect = store.dialect();
    if let Err(e) =
        crate::audit::append_many(&mut tx, dialect, bx.audit_key, &rows.entries, bx.now).await
    {
        tracing::debug!(error = %e, "bulk registration refused at the audit head");
        let _ = tx.rollback().await;
        return Ok(None);
    }
    tx.commit().await?;
    Ok(Some(rows.out))
}

/// [`lines_of`], with the lines whose public key was revoked for compromise moved to the
/// lines that go one by one (where [`register_in`] refuses them): a first registration is
/// stored without looking anything up, so this one read guards it. A read, not a lock: a key
/// revoked while a batch commits is refused from the next batch on.
pub(super) async fn split_lines<'a>(
    store: &Store,
    items: Vec<BatchItem<'a>>,
) -> (Results, Vec<Line<'a>>, Vec<Line<'a>>) {
    let (results, fresh, mut slow) = lines_of(items);
    let keys: Vec<&str> = fresh.iter().filter_map(|l| l.p.key_fingerprint.as_deref()).collect();
    if keys.is_empty() {
        return (results, fresh, slow);
    }
    let compromised = match store.conn().await {
        Ok(mut conn) => certificates::compromised_among(&mut conn, &keys).await,
        Err(e) => Err(e),
    };
    let compromised = match compromised {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "compromised-key lookup failed; registering line by line");
            slow.extend(fresh);
            return (results, Vec::new(), slow);
        }
    };
    if compromised.is_empty() {
        return (results, fresh, slow);
    }
    let (bad, fresh): (Vec<_>, Vec<_>) = fresh
        .into_iter()
        .partition(|l| l.p.key_fingerprint.as_deref().is_some_and(|k| compromised.contains(k)));
    slow.extend(bad);
    (results, fresh, slow)
}

/// The lines of a batch, split as [`split_unique`] does, and its results so far (the lines
/// whose preparation failed).
pub(super) fn lines_of<'a>(items: Vec<BatchItem<'a>>) -> (Results, Vec<Line<'a>>, Vec<Line<'a>>) {
    let mut results: Results = items.iter().map(|_| None).collect();
    let mut pending = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match item.prepared {
            Ok(p) => {
                pending.push(Line { i, group: item.group, actor: item.actor, jti: item.jti, p })
            }
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    let (fresh, slow) = split_unique(pending);
    (results, fresh, slow)
}

/// The body of [`register_batch`]: stores `fresh` and `slow` and records their results.
pub(super) async fn commit_lines<'a>(
    store: &Store,
    bx: &BatchCtx<'a>,
    authority: &Authority,
    results: &mut Results,
    mut fresh: Vec<Line<'a>>,
    mut slow: Vec<Line<'a>>,
    last_head: &mut Option<(i64, String)>,
) {
    let mut refused = false;
    if let (Some(head), true, Dialect::Postgres) =
        (last_head.take(), slow.is_empty() && !fresh.is_empty(), store.dialect())
    {
        match insert_fresh_if_head(store, bx, &fresh, &head).await {
            Ok(Some((done, new_head))) => {
                *last_head = Some(new_head);
                answer(results, fresh, done, bx.now);
                return;
            }
            Ok(None) => tracing::debug!("audit head moved; registering under the head lock"),
            Err(e) => {
                tracing::debug!(error = %e, "bulk registration refused");
                refused = true;
            }
        }
    }
    let mut all_fresh = slow.is_empty();
    let Some(mut tx) = begin_or_fail(store, results, fresh.iter().chain(&slow)).await else {
        return;
    };
    let mut looked_up = false;
    if refused {
        // an id is known: find which before trying again
        looked_up = true;
        (fresh, slow) = split_fresh(&mut tx, fresh).await;
        all_fresh = slow.is_empty();
    }
    let mut new_head = None;
    while !fresh.is_empty() {
        match insert_fresh(&mut tx, store.dialect(), bx, &fresh).await {
            Ok((done, head)) => {
                new_head = Some(head);
                answer(results, std::mem::take(&mut fresh), done, bx.now);
            }
            Err(e) => {
                // Nothing else has been written in this transaction yet: start it over.
                tracing::debug!(error = %e, looked_up, "bulk registration refused");
                let _ = tx.rollback().await;
                let mut all = std::mem::take(&mut fresh);
                all.append(&mut slow);
                let Some(again) = begin_or_fail(store, results, &all).await else {
                    return;
                };
                tx = again;
                all_fresh = false;
                if looked_up {
                    // refused even after the lookup (a concurrent writer): line by line
                    slow = all;
                } else {
                    looked_up = true;
                    (fresh, slow) = split_fresh(&mut tx, all).await;
                }
            }
        }
    }
    slow.sort_by_key(|line| line.i);
    for line in slow {
        let cx = bx.cx(line.actor);
        let mut attempts = 0;
        // A deadlock victim (PostgreSQL breaks a lock cycle between two instances registering
        // the same ids) is rolled back to its savepoint, which releases what it locked, and
        // tried again; the outcome is never a 5xx (Contention maps to 409).
        let r = loop {
            let mut sp = match crate::store::savepoint(&mut tx).await {
                Ok(sp) => sp,
                Err(e) => break Err(RegisterError::Store(e)),
            };
            let outcome = register_in(
                &mut sp,
                store.dialect(),
                &cx,
                authority,
                line.group,
                &line.p,
                line.jti,
            )
            .await;
            match outcome {
                Ok(r) => {
                    break sp.commit().await.map(|()| r).map_err(|e| RegisterError::Store(e.into()))
                }
                Err(RegisterError::Store(StoreError::Contention(e))) if attempts < 3 => {
                    tracing::debug!(error = %e, attempts, "registration retried after contention");
                    let _ = sp.rollback().await;
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(5 << attempts)).await;
                }
                Err(e) => {
                    let _ = sp.rollback().await;
                    break Err(e);
                }
            }
        };
        results[line.i] = Some(r);
    }
    match tx.commit().await {
        // the head is known only if nothing but the bulk insert appended to the chain
        Ok(()) => *last_head = new_head.filter(|_| all_fresh),
        Err(e) => {
            tracing::warn!(error = %e, "batch commit failed");
            for r in results.iter_mut() {
                if matches!(r, Some(Ok(_))) {
                    *r = Some(Err(RegisterError::Store(unavailable())));
                }
            }
        }
    }
}

/// Begins the batch transaction; when it cannot, every line in `lines` fails as unavailable.
pub(super) async fn begin_or_fail<'l, 'a: 'l>(
    store: &Store,
    results: &mut Results,
    lines: impl IntoIterator<Item = &'l Line<'a>>,
) -> Option<crate::store::Tx> {
    match store.begin().await {
        Ok(tx) => Some(tx),
        Err(e) => {
            tracing::warn!(error = %e, "batch transaction failed");
            for line in lines {
                results[line.i] = Some(Err(RegisterError::Store(unavailable())));
            }
            None
        }
    }
}

/// Splits `pending` into lines that may be first registrations (no token, id once in the
/// batch) and the rest, without asking the database.
pub(super) fn split_unique(pending: Vec<Line<'_>>) -> (Vec<Line<'_>>, Vec<Line<'_>>) {
    let mut seen = std::collections::HashMap::<&str, usize>::new();
    for line in &pending {
        *seen.entry(line.p.registration_id()).or_default() += 1;
    }
    let once: std::collections::HashSet<String> =
        seen.into_iter().filter(|(_, n)| *n == 1).map(|(id, _)| id.to_owned()).collect();
    // A held certificate is bound by `register_in` only (token, hold): never a fresh line.
    pending.into_iter().partition(|l| {
        l.jti.is_none()
            && l.p.csr_error.is_none()
            && l.p.req.held.is_none()
            && once.contains(l.p.registration_id())
    })
}

/// Splits `pending` into first registrations (ids the database has never seen, once in the
/// batch, no token) and the rest; all are the rest when the lookup fails.
pub(super) async fn split_fresh<'a>(
    tx: &mut crate::store::Conn,
    pending: Vec<Line<'a>>,
) -> (Vec<Line<'a>>, Vec<Line<'a>>) {
    let ids: Vec<&str> = pending.iter().map(|l| l.p.registration_id()).collect();
    let known = match rows::known_ids(tx, &ids).await {
        Ok(k) => k,
        Err(e) => {
            tracing::debug!(error = %e, "batch lookup failed; registering line by line");
            return (Vec::new(), pending);
        }
    };
    let (maybe, rest) = split_unique(pending);
    let (fresh, mut known_lines): (Vec<_>, Vec<_>) =
        maybe.into_iter().partition(|l| !known.contains(l.p.registration_id()));
    known_lines.extend(rest);
    (fresh, known_lines)
}

/// Records the results of stored first registrations.
pub(super) fn answer(
    results: &mut [Option<Result<Registered, RegisterError>>],
    stored: Vec<Line<'_>>,
    done: Vec<(String, String)>,
    now: i64,
) {
    for (line, (etag, operation_id)) in stored.into_iter().zip(done) {
        results[line.i] = Some(Ok(line.p.into_registered(now, etag, operation_id)));
    }
}

/// The rows of first registrations, and each line's device etag and operation id.
pub(super) struct FreshRows {
    devices: Vec<DeviceRow>,
    certs: Vec<certificates::CertificateRow>,
    regs: Vec<RegistrationRow>,
    entries: Vec<crate::audit::Entry>,
    out: Vec<(String, String)>,
}

impl FreshRows {
    pub(super) fn new(bx: &BatchCtx<'_>, fresh: &[Line<'_>]) -> Self {
        let now = bx.now;
        let mut rows = FreshRows {
            devices: Vec::with_capacity(fresh.len()),
            certs: Vec::new(),
            regs: Vec::with_capacity(fresh.len()),
            entries: Vec::with_capacity(fresh.len()),
            out: Vec::with_capacity(fresh.len()),
        };
        for line in fresh {
            let (p, group) = (&line.p, line.group);
            let id = p.registration_id();
            let group_ref = (!group.individual).then(|| group.id.clone());
            let mut device = blank_device(id, group, now);
            shape_device(&mut device, &bx.cx(line.actor), group, p, true);
            if let Some(issued) = &p.issued {
                rows.certs.push(record(&issued.cert, Some(id), &issued.issuer_id, "device", now));
            }
            let operation_id = new_operation_id();
            rows.regs.push(RegistrationRow {
                registration_id: id.to_owned(),
                group_id: group_ref,
                csr_sha256: p.csr_hash.clone(),
                serial: p.issued.as_ref().map(|i| i.cert.serial.clone()),
                operation_id: operation_id.clone(),
                payload: p.req.payload.as_ref().map(Value::to_string),
                created_at: now,
                updated_at: now,
            });
            rows.entries.push(line.actor.did("registration.create", id));
            rows.out.push((device.etag.clone(), operation_id));
            rows.devices.push(device);
        }
        rows
    }

    pub(super) fn add_to(&self, w: &mut Writes) {
        device_rows::insert_many(w, &self.devices);
        certificates::insert_many(w, &self.certs);
        rows::insert_registrations(w, &self.regs);
    }
}

/// What storing first registrations returns: each line's device etag and operation id, and
/// the audit head after them.
pub(super) type Stored = (Vec<(String, String)>, (i64, String));

/// Stores first registrations in the caller's transaction: the head lock, then one multi-row
/// insert per table and the audit append (one statement on PostgreSQL, four on SQLite).
pub(super) async fn insert_fresh(
    tx: &mut crate::store::Conn,
    dialect: crate::store::Dialect,
    bx: &BatchCtx<'_>,
    fresh: &[Line<'_>],
) -> Result<Stored, StoreError> {
    let rows = FreshRows::new(bx, fresh);
    let mut w = Writes::new(dialect);
    rows.add_to(&mut w);
    let head = crate::audit::stage(&mut *tx, &mut w, bx.audit_key, &rows.entries, bx.now).await?;
    w.execute(tx).await?;
    Ok((rows.out, head))
}

/// PostgreSQL: stores first registrations in **one** statement and no transaction (one round
/// trip in all), chained to the audit head this committer wrote last; `None` (nothing written)
/// when another writer moved the head since.
pub(super) async fn insert_fresh_if_head(
    store: &Store,
    bx: &BatchCtx<'_>,
    fresh: &[Line<'_>],
    head: &(i64, String),
) -> Result<Option<Stored>, StoreError> {
    let rows = FreshRows::new(bx, fresh);
    let mut w = Writes::new(store.dialect());
    let new_head = crate::audit::stage_if_head(&mut w, bx.audit_key, head, &rows.entries, bx.now);
    rows.add_to(&mut w);
    let mut conn = store.conn().await?;
    Ok(w.execute_gated(&mut conn).await?.then_some((rows.out, new_head)))
}

pub(super) fn finish(
    results: Vec<Option<Result<Registered, RegisterError>>>,
) -> Vec<Result<Registered, RegisterError>> {
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(RegisterError::Invalid("line was not processed".into()))))
        .collect()
}

pub(super) fn unavailable() -> StoreError {
    StoreError::closed()
}
