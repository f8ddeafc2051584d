//! Registration: a device (or a factory line on its behalf) gets its identity from an
//! enrollment. All-or-nothing: device row, certificate row, registration record and audit row
//! commit together, or nothing is stored. Idempotent: the same registration id with the same
//! CSR returns the same certificate and stores nothing new; a different CSR follows the
//! enrollment's reprovisioning policy.

use ca::csr::{CsrPolicy, VerifiedCsr};
use ca::issue::{issue_device, DeviceProfile, RevocationUrls};
use ca::{CsrError, SasKey};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::certificates::record;
use super::groups::{Group, GroupError, Reprovisioning};
use super::{random_hex, Actor, Ctx};
use crate::audit::AuditKey;
use crate::auth::Scope;
use crate::authority::Authority;
use crate::seal::KeyRing;
use crate::seal::SealContext;
use crate::store::devices::{self as device_rows, DeviceRow};
use crate::store::enrollment::{self as rows, RegistrationRow};
use crate::store::{certificates, Dialect, Store, StoreError, Writes};
use std::sync::Arc;

/// Why a registration failed (nothing was stored). Every door checks in one order (API.md
/// A30): credential → enrollment unknown or out of scope ([`RegisterError::NotFound`]) →
/// enrollment disabled → body, id, pattern ([`RegisterError::Invalid`]) → ownership, unbound
/// token, compromised key ([`RegisterError::Conflict`], [`RegisterError::KeyCompromised`]) →
/// device disabled → CSR.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// the id is a device another owner holds, an unbound token met a registered id, or
    /// reprovisioning is denied
    #[error("{0}")]
    Conflict(String),
    /// the CSR broke a rule
    #[error("CSR rejected: {0}")]
    Csr(#[from] CsrError),
    /// provisioning is disabled for the enrollment
    #[error("provisioning is disabled for this enrollment")]
    Disabled,
    /// the device is disabled: nothing is issued for it
    #[error(
        "the device is disabled: an administrator must enable it before it is provisioned again"
    )]
    DeviceDisabled,
    /// the public key's certificate was revoked for key or CA compromise
    #[error("the certificate of this key was revoked for compromise: generate a new key and send a new CSR")]
    KeyCompromised,
    /// the registration id is outside the caller's scope
    #[error("registration id not found")]
    NotFound,
    /// invalid input
    #[error("{0}")]
    Invalid(String),
    /// the one-time token was already used, expired or unknown
    #[error("enrollment token already used or expired")]
    TokenUsed,
    /// signing failed
    #[error(transparent)]
    Issue(#[from] ca::IssueError),
    /// storage
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<GroupError> for RegisterError {
    fn from(e: GroupError) -> Self {
        match e {
            GroupError::Store(s) => RegisterError::Store(s),
            other => RegisterError::Invalid(other.to_string()),
        }
    }
}

/// A registration request.
#[derive(Debug, Default)]
pub struct RegistrationRequest {
    /// = device id
    pub registration_id: String,
    /// PEM or DER PKCS#10
    pub csr: Option<Vec<u8>>,
    /// tags merged over the group's initial tags
    pub tags: Option<Map<String, Value>>,
    /// DPS custom payload (stored, echoed)
    pub payload: Option<Value>,
    /// AWS RegisterThing: bind this held certificate instead of issuing one (no `csr` then)
    pub held: Option<HeldCertificate>,
}

/// A certificate issued ahead of its registration and on hold until it (AWS fleet
/// provisioning, API.md A30), with the ownership token that claims it. The registration
/// consumes the token, binds the certificate to the device and lifts the hold, in its
/// transaction; a refused registration leaves both as they were.
#[derive(Debug, Clone)]
pub struct HeldCertificate {
    /// the token's row (hash, certificate, group, connection) as the door read it
    pub token: crate::store::aws::OwnershipTokenRow,
    /// DER
    pub der: Vec<u8>,
    /// the issuing CA's certificate, DER
    pub issuer_der: Vec<u8>,
    /// fingerprint of the certified public key
    pub key_fingerprint: String,
}

/// What a registration produced.
#[derive(Debug)]
pub struct Registered {
    /// device id
    pub device_id: String,
    /// leaf then issuing intermediate, DER (empty without a certificate)
    pub chain: Vec<Vec<u8>>,
    /// device keys (when the credential includes sas)
    pub device_keys: Option<(SasKey, SasKey)>,
    /// first time (201) or a retry (200)
    pub created: bool,
    /// DPS operation id
    pub operation_id: String,
    /// registration record times
    pub created_at: i64,
    /// last update
    pub updated_at: i64,
    /// device etag
    pub etag: String,
    /// stored DPS payload
    pub payload: Option<Value>,
}

impl Registered {
    /// The chain as PEM.
    pub fn chain_pem(&self) -> Option<String> {
        (!self.chain.is_empty())
            .then(|| self.chain.iter().map(|d| ca::authority::to_pem("CERTIFICATE", d)).collect())
    }
}

/// A certificate signed ahead of the transaction that records it.
struct Issued {
    cert: ca::issue::IssuedCertificate,
    issuer_id: String,
    issuer_der: Vec<u8>,
}

/// A request whose input checks and CSR proof of possession passed and whose certificate and
/// device keys are made: all the CPU work of a registration, no I/O, so batches can do it in
/// parallel off the async workers. The certificate is discarded if the transaction finds a
/// retry (the stored one is answered) or refuses the registration.
pub struct Prepared {
    req: RegistrationRequest,
    csr_hash: Option<String>,
    /// the CSR's rejection, answered only after the ownership and device checks (A30 order)
    csr_error: Option<CsrError>,
    /// fingerprint of the certified public key
    key_fingerprint: Option<String>,
    issued: Option<Issued>,
    keys: Option<(SasKey, SasKey)>,
}

impl Prepared {
    /// The registration id.
    pub fn registration_id(&self) -> &str {
        &self.req.registration_id
    }
}

/// Validates `req` against `group` (and the caller's `scope`, for factory lines), verifies its
/// CSR and signs the certificate.
pub fn prepare(
    group: &Group,
    authority: &Authority,
    base_url: &str,
    scope: Option<&Scope>,
    req: RegistrationRequest,
    now: i64,
) -> Result<Prepared, RegisterError> {
    let id = req.registration_id.as_str();
    if scope.is_some_and(|s| !s.admits_id(id)) {
        return Err(RegisterError::NotFound);
    }
    if !group.enabled {
        return Err(RegisterError::Disabled);
    }
    crate::ids::validate("registration id", id)
        .map_err(|e| RegisterError::Invalid(e.to_string()))?;
    group.admits(id)?;
    if let Some(extra) = &req.tags {
        let mut tags = group.initial_tags.clone();
        tags.extend(extra.clone());
        crate::usecase::devices::check_tags("tags (merged with the group's initial_tags)", &tags)
            .map_err(RegisterError::Invalid)?;
    }
    if let Some(held) = &req.held {
        if req.csr.is_some() || !group.credential.x509() || group.credential.sas() {
            return Err(RegisterError::Invalid(
                "a held certificate is bound only by an x509 enrollment, without a csr".into(),
            ));
        }
        return Ok(Prepared {
            csr_hash: Some(hex::encode(Sha256::digest(&held.der))),
            csr_error: None,
            key_fingerprint: Some(held.key_fingerprint.clone()),
            issued: None,
            keys: None,
            req,
        });
    }
    let (csr, csr_error) = match &req.csr {
        Some(bytes) => match VerifiedCsr::parse(
            bytes,
            &CsrPolicy::device(id).with_allowed_keys(group.allowed_keys.iter().copied()),
        ) {
            Ok(csr) => (Some(csr), None),
            Err(e) => (None, Some(e)),
        },
        None if group.credential.x509() => {
            return Err(RegisterError::Invalid(
                "this enrollment issues certificates: a csr is required".into(),
            ))
        }
        None => (None, None),
    };
    let csr_hash = csr.as_ref().map(|c| hex::encode(Sha256::digest(c.der())));
    let key_fingerprint = csr.as_ref().map(|c| c.subject_key().fingerprint());
    let issued = match &csr {
        Some(csr) => {
            let issuer = authority.active();
            let urls = RevocationUrls { base_url: Some(base_url.to_owned()) };
            let profile = DeviceProfile {
                device_id: id,
                validity_secs: group.validity_days.max(1) * 86_400,
                urls: &urls,
            };
            Some(Issued {
                cert: issue_device(issuer, csr, &profile, now)?,
                issuer_id: issuer.id(),
                issuer_der: issuer.cert_der().to_vec(),
            })
        }
        None => None,
    };
    let keys = group.credential.sas().then(|| group.device_keys(id));
    Ok(Prepared { req, csr_hash, csr_error, key_fingerprint, issued, keys })
}

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
    fn cx(&self, actor: &'a Actor) -> Ctx<'a> {
        Ctx { ring: self.ring, audit_key: self.audit_key, now: self.now, actor }
    }
}

struct Line<'a> {
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

type Results = Vec<Option<Result<Registered, RegisterError>>>;

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
    async fn after_written(&mut self) {
        if let Some(rx) = self.prev_written.take() {
            let _ = rx.await;
        }
    }

    /// Waits until the batch before has committed (or is gone).
    async fn after_committed(&mut self) {
        self.after_written().await;
        if let Some(rx) = self.prev_committed.take() {
            let _ = rx.await;
        }
    }

    /// Lets the next batch write.
    fn wrote(&mut self) {
        if let Some(tx) = self.written.take() {
            let _ = tx.send(());
        }
    }

    /// Lets the next batch commit (and write, if it was not let yet).
    fn committed(&mut self) {
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
async fn insert_fresh_in_turn(
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
async fn split_lines<'a>(
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
fn lines_of<'a>(items: Vec<BatchItem<'a>>) -> (Results, Vec<Line<'a>>, Vec<Line<'a>>) {
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
async fn commit_lines<'a>(
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
            let mut sp = match sqlx::Connection::begin(&mut *tx).await {
                Ok(sp) => sp,
                Err(e) => break Err(RegisterError::Store(e.into())),
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
async fn begin_or_fail<'l, 'a: 'l>(
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
fn split_unique(pending: Vec<Line<'_>>) -> (Vec<Line<'_>>, Vec<Line<'_>>) {
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
async fn split_fresh<'a>(
    tx: &mut sqlx::AnyConnection,
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
fn answer(
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
struct FreshRows {
    devices: Vec<DeviceRow>,
    certs: Vec<certificates::CertificateRow>,
    regs: Vec<RegistrationRow>,
    entries: Vec<crate::audit::Entry>,
    out: Vec<(String, String)>,
}

impl FreshRows {
    fn new(bx: &BatchCtx<'_>, fresh: &[Line<'_>]) -> Self {
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

    fn add_to(&self, w: &mut Writes) {
        device_rows::insert_many(w, &self.devices);
        certificates::insert_many(w, &self.certs);
        rows::insert_registrations(w, &self.regs);
    }
}

/// What storing first registrations returns: each line's device etag and operation id, and
/// the audit head after them.
type Stored = (Vec<(String, String)>, (i64, String));

/// Stores first registrations in the caller's transaction: the head lock, then one multi-row
/// insert per table and the audit append (one statement on PostgreSQL, four on SQLite).
async fn insert_fresh(
    tx: &mut sqlx::AnyConnection,
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
async fn insert_fresh_if_head(
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

/// A single registration waiting for the group commit.
pub struct Job {
    /// its enrollment
    pub group: Arc<Group>,
    /// who registers
    pub actor: Actor,
    /// one-time token to consume with it
    pub jti: Option<String>,
    /// the prepared request
    pub prepared: Prepared,
    /// where the result goes
    pub reply: tokio::sync::oneshot::Sender<Result<Registered, RegisterError>>,
}

/// Group commit for single registrations (JSON factory line, self-registration, DPS, EST):
/// whatever requests are waiting when a transaction starts share it, so concurrent clients
/// pay one commit instead of queueing for the single writer one transaction at a time.
#[derive(Debug)]
pub struct Queue {
    tx: tokio::sync::mpsc::Sender<Job>,
    rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Job>>>,
}

impl Default for Queue {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(4 * MAX_GROUP_COMMIT);
        Self { tx, rx: std::sync::Mutex::new(Some(rx)) }
    }
}

/// Most registrations one group commit takes from the queue.
pub const MAX_GROUP_COMMIT: usize = 250;

impl Queue {
    /// Takes the receiving end (once) for the committer task.
    pub fn take_receiver(&self) -> Option<tokio::sync::mpsc::Receiver<Job>> {
        match self.rx.lock() {
            Ok(mut r) => r.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    /// Queues a registration and waits for its group commit.
    pub async fn register(
        &self,
        group: Arc<Group>,
        actor: Actor,
        jti: Option<String>,
        prepared: Prepared,
    ) -> Result<Registered, RegisterError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job { group, actor, jti, prepared, reply };
        if self.tx.send(job).await.is_err() {
            return Err(RegisterError::Store(unavailable()));
        }
        answer.await.unwrap_or_else(|_| Err(RegisterError::Store(unavailable())))
    }

    /// Stores queued registrations, a group commit at a time, until every sender is gone.
    pub async fn run(
        mut rx: tokio::sync::mpsc::Receiver<Job>,
        store: &Store,
        shared: impl Fn() -> (Arc<KeyRing>, Arc<Authority>, i64),
        audit_key: &AuditKey,
    ) {
        let mut jobs = Vec::with_capacity(MAX_GROUP_COMMIT);
        let mut head = None;
        while rx.recv_many(&mut jobs, MAX_GROUP_COMMIT).await > 0 {
            let (ring, authority, now) = shared();
            let bx = BatchCtx { ring: &ring, audit_key, now };
            let mut replies = Vec::with_capacity(jobs.len());
            let mut who = Vec::with_capacity(jobs.len());
            let mut prepared = Vec::with_capacity(jobs.len());
            for job in jobs.drain(..) {
                replies.push(job.reply);
                who.push((job.group, job.actor, job.jti));
                prepared.push(job.prepared);
            }
            let items = who
                .iter()
                .zip(prepared)
                .map(|((group, actor, jti), p)| BatchItem {
                    group,
                    actor,
                    jti: jti.as_deref(),
                    prepared: Ok(p),
                })
                .collect();
            let results = register_batch(store, &bx, &authority, items, &mut head).await;
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
    }
}

fn finish(
    results: Vec<Option<Result<Registered, RegisterError>>>,
) -> Vec<Result<Registered, RegisterError>> {
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(RegisterError::Invalid("line was not processed".into()))))
        .collect()
}

fn unavailable() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolClosed)
}

fn new_operation_id() -> String {
    format!("4.{}", random_hex(12))
}

/// A device row for a first registration, owned by its enrollment, before [`shape_device`].
fn blank_device(id: &str, group: &Group, now: i64) -> DeviceRow {
    let (owner_kind, enrollment_group_id) = if group.individual {
        ("enrollment", None)
    } else {
        ("enrollment_group", Some(group.id.clone()))
    };
    DeviceRow {
        enrollment_group_id,
        owner_kind: owner_kind.into(),
        ..DeviceRow::new(id, random_hex(8), now)
    }
}

/// Applies a registration to a device row: tags (when `reset`), credential, new etag.
fn shape_device(device: &mut DeviceRow, cx: &Ctx<'_>, group: &Group, p: &Prepared, reset: bool) {
    let id = p.registration_id();
    if reset {
        let mut tags = group.initial_tags.clone();
        if let Some(extra) = &p.req.tags {
            tags.extend(extra.clone());
        }
        device.tags = Value::Object(tags).to_string();
    }
    match &p.keys {
        Some((primary, secondary)) => {
            device.auth_type = "sas".into();
            device.key_version = Some(i64::from(cx.ring.current_version()));
            device.primary_key = Some(cx.ring.seal(
                SealContext { table: "devices", column: "primary_key", row_id: id },
                primary.expose_secret(),
            ));
            device.secondary_key = Some(cx.ring.seal(
                SealContext { table: "devices", column: "secondary_key", row_id: id },
                secondary.expose_secret(),
            ));
        }
        None => {
            device.auth_type = "x509_ca".into();
            (device.key_version, device.primary_key, device.secondary_key) = (None, None, None);
        }
    }
    device.etag = random_hex(8);
    device.updated_at = cx.now;
}

impl Prepared {
    /// [`Prepared::into_registered`] for a registration that may be tried again (a copy).
    fn to_registered(&self, now: i64, etag: String, operation_id: String) -> Registered {
        Registered {
            device_id: self.req.registration_id.clone(),
            chain: match (&self.issued, &self.req.held) {
                (Some(i), _) => vec![i.cert.der.clone(), i.issuer_der.clone()],
                (None, Some(h)) => vec![h.der.clone(), h.issuer_der.clone()],
                (None, None) => Vec::new(),
            },
            device_keys: self.keys.as_ref().map(|(p, s)| (p.clone_secret(), s.clone_secret())),
            created: true,
            operation_id,
            created_at: now,
            updated_at: now,
            etag,
            payload: self.req.payload.clone(),
        }
    }

    fn into_registered(self, now: i64, etag: String, operation_id: String) -> Registered {
        let chain = match (self.issued, self.req.held.as_ref()) {
            (Some(i), _) => vec![i.cert.der, i.issuer_der],
            (None, Some(h)) => vec![h.der.clone(), h.issuer_der.clone()],
            (None, None) => Vec::new(),
        };
        Registered {
            device_id: self.req.registration_id,
            chain,
            device_keys: self.keys,
            created: true,
            operation_id,
            created_at: now,
            updated_at: now,
            etag,
            payload: self.req.payload,
        }
    }
}

/// THE rule for one registration, in the transaction that stores it (every door, every batch
/// line that is not a plain first registration): checks in the order of [`RegisterError`] on
/// the rows this transaction read, then stores the device, certificate, registration record
/// and audit row.
async fn register_in(
    tx: &mut sqlx::AnyConnection,
    dialect: crate::store::Dialect,
    cx: &Ctx<'_>,
    authority: &Authority,
    group: &Group,
    prepared: &Prepared,
    consume_jti: Option<&str>,
) -> Result<Registered, RegisterError> {
    let id = prepared.registration_id().to_owned();
    let id = id.as_str();
    let group_ref = (!group.individual).then(|| group.id.clone());
    let token_bound = match consume_jti {
        Some(jti) => match rows::consume_token(&mut *tx, jti, &group.id, id, cx.now).await? {
            rows::Consumed::Now { bound } => bound,
            rows::Consumed::Refused => return Err(RegisterError::TokenUsed),
        },
        None => false,
    };
    let held = prepared.req.held.as_ref();
    if let Some(h) = held {
        // The ownership token is the credential: spent here, or the registration stops.
        if h.token.group_id != group.id
            || !crate::store::aws::consume_token(&mut *tx, &h.token, id, cx.now).await?
        {
            return Err(RegisterError::TokenUsed);
        }
    }
    let existing_device = device_rows::get(&mut *tx, id).await?;
    if let Some(d) = &existing_device {
        if !owned_by(d, group) {
            return Err(RegisterError::Conflict(format!(
                "`{id}` is a device owned outside this enrollment: nothing was changed"
            )));
        }
        if consume_jti.is_some() && !token_bound {
            return Err(RegisterError::Conflict(format!(
                "`{id}` is already registered: a one-time token registers only new devices \
                 (or the id it was minted for)"
            )));
        }
    }
    if let Some(fp) = &prepared.key_fingerprint {
        if certificates::is_compromised(&mut *tx, fp).await? {
            return Err(RegisterError::KeyCompromised);
        }
    }
    if existing_device.as_ref().is_some_and(|d| d.status != "enabled") {
        return Err(RegisterError::DeviceDisabled);
    }
    let previous = rows::registration(&mut *tx, id).await?;
    if let (Some(prev), Some(device)) = (&previous, &existing_device) {
        if prepared.csr_error.is_none()
            && prev.csr_sha256 == prepared.csr_hash
            && prev.group_id == group_ref
            && consume_jti.is_none()
        {
            // A retry: answer with what was issued while it is still valid, store nothing.
            let stored = match &prev.serial {
                Some(serial) => certificates::get(&mut *tx, serial).await?,
                None => None,
            };
            let valid =
                stored.as_ref().is_some_and(|c| c.revoked_at.is_none() && c.not_after > cx.now);
            if prev.serial.is_none() || valid {
                let chain = match (stored, prev.serial.is_some()) {
                    (Some(c), true) => authority
                        .find(&c.issuer_id)
                        .map(|i| vec![c.der, i.cert_der.clone()])
                        .unwrap_or_default(),
                    _ => Vec::new(),
                };
                return Ok(Registered {
                    device_id: id.to_owned(),
                    chain,
                    device_keys: prepared
                        .keys
                        .as_ref()
                        .map(|(p, s)| (p.clone_secret(), s.clone_secret())),
                    created: false,
                    operation_id: prev.operation_id.clone(),
                    created_at: prev.created_at,
                    updated_at: prev.updated_at,
                    etag: device.etag.clone(),
                    payload: prev.payload.as_deref().and_then(|p| serde_json::from_str(p).ok()),
                });
            }
            // Revoked (not for compromise) or expired: a new certificate, as a reprovisioning.
        }
    }
    if let Some(e) = &prepared.csr_error {
        return Err(RegisterError::Csr(e.clone()));
    }
    if let (Some(_), Some(_)) = (&previous, &existing_device) {
        if group.reprovisioning == Reprovisioning::Deny {
            return Err(RegisterError::Conflict(format!(
                "`{id}` is already registered and this enrollment denies reprovisioning"
            )));
        }
    }

    // Device row: created, or updated per the reprovisioning policy (never re-enabled).
    let reset = existing_device.is_none() || group.reprovisioning == Reprovisioning::Reissue;
    let mut device = existing_device.clone().unwrap_or_else(|| blank_device(id, group, cx.now));
    let old_etag = device.etag.clone();
    shape_device(&mut device, cx, group, prepared, reset);
    match &existing_device {
        None => device_rows::insert(&mut *tx, &device).await?,
        Some(_) => {
            if !device_rows::replace(&mut *tx, &device, &old_etag).await? {
                return Err(RegisterError::Conflict(
                    "the device changed concurrently; retry".into(),
                ));
            }
        }
    }

    // Certificate (signed in `prepare`).
    let new_serial = match (&prepared.issued, held) {
        (Some(i), _) => Some(i.cert.serial.clone()),
        (None, Some(h)) => Some(h.token.serial.clone()),
        (None, None) => None,
    };
    if let (Some(_), Some(prev), Reprovisioning::Reissue) =
        (&new_serial, &previous, group.reprovisioning)
    {
        if let Some(old) = prev.serial.as_ref().filter(|old| Some(*old) != new_serial.as_ref()) {
            certificates::revoke(&mut *tx, old, "superseded", cx.now).await?;
        }
    }
    if let Some(h) = held {
        if !crate::store::aws::lift_hold(&mut *tx, &h.token.serial, id).await? {
            return Err(RegisterError::Conflict(
                "the certificate of this ownership token is no longer on hold (it was revoked \
                 or its token expired): create a new certificate"
                    .into(),
            ));
        }
    }
    if let Some(issued) = &prepared.issued {
        certificates::insert(
            &mut *tx,
            &record(&issued.cert, Some(id), &issued.issuer_id, "device", cx.now),
        )
        .await?;
    }
    let operation_id = previous.as_ref().map_or_else(new_operation_id, |p| p.operation_id.clone());
    let created_at = previous.as_ref().map_or(cx.now, |p| p.created_at);
    rows::upsert_registration(
        &mut *tx,
        &RegistrationRow {
            registration_id: id.to_owned(),
            group_id: group_ref,
            csr_sha256: prepared.csr_hash.clone(),
            serial: new_serial,
            operation_id: operation_id.clone(),
            payload: prepared.req.payload.as_ref().map(Value::to_string),
            created_at,
            updated_at: cx.now,
        },
    )
    .await?;
    cx.audit(&mut *tx, dialect, "registration.create", id).await?;
    let etag = device.etag;
    let mut done = prepared.to_registered(cx.now, etag, operation_id);
    done.created_at = created_at;
    Ok(done)
}

/// Whether `group` (an enrollment group or individual enrollment) owns `device`.
pub fn owned_by(device: &DeviceRow, group: &Group) -> bool {
    match device.owner_kind.as_str() {
        "enrollment_group" => {
            !group.individual && device.enrollment_group_id.as_deref() == Some(group.id.as_str())
        }
        "enrollment" => group.individual && device.device_id == group.id,
        _ => false,
    }
}

/// The chain (leaf, issuer) of a stored certificate, empty when it or its issuer is gone.
pub async fn stored_chain(
    conn: &mut sqlx::AnyConnection,
    authority: &Authority,
    serial: &str,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let cert = certificates::get(conn, serial).await?;
    let issuer = cert.as_ref().and_then(|c| authority.find(&c.issuer_id));
    Ok(match (cert, issuer) {
        (Some(c), Some(i)) => vec![c.der, i.cert_der.clone()],
        _ => Vec::new(),
    })
}
