//! The tamper-evident audit trail.
//!
//! Each row carries `hash = HMAC-SHA256(audit key, prev_hash ‖ canonical row)`, hex. The audit key
//! is random, created by `init` and sealed like every secret, so an attacker with only the
//! database cannot recompute the chain after editing it. `verify` walks the whole chain and names
//! the first row whose sequence, link or MAC is wrong; signed checkpoints (see `http::audit`) let
//! outside monitors detect rows cut from the end. Nothing secret is ever written here: callers
//! pass ids and action names only.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::store::audit::{self as rows};
pub use crate::store::audit::{AuditFilter, AuditRow};
use crate::store::{Dialect, Store, StoreError};

/// `prev_hash` of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The HMAC key of the chain.
pub struct AuditKey(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[secret elided]")
    }
}

impl AuditKey {
    /// Wraps key bytes.
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> Self {
        Self(bytes)
    }

    fn mac(&self, prev_hash: &str, canonical: &str) -> Hmac<Sha256> {
        #[allow(clippy::expect_used)]
        // invariant: HMAC accepts keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(prev_hash.as_bytes());
        mac.update(canonical.as_bytes());
        mac
    }

    /// The row hash, hex.
    pub fn hash(&self, prev_hash: &str, entry: &Entry, seq: i64, at: i64) -> String {
        hex::encode(self.mac(prev_hash, &canonical(seq, at, entry)).finalize().into_bytes())
    }

    fn check(&self, row: &AuditRow) -> bool {
        let entry = Entry {
            actor: row.actor.clone(),
            action: row.action.clone(),
            target: row.target.clone(),
            outcome: if row.outcome == "success" { Outcome::Success } else { Outcome::Failure },
            client_addr: row.client_addr.clone(),
            count: row.failure_count,
        };
        // The stored outcome must be one of the two canonical values, or the row was edited.
        if row.outcome != entry.outcome.as_str() {
            return false;
        }
        let Ok(stored) = hex::decode(&row.hash) else { return false };
        let computed =
            self.mac(&row.prev_hash, &canonical(row.seq, row.at, &entry)).finalize().into_bytes();
        computed.as_slice().ct_eq(&stored).into()
    }
}

/// Whether the audited operation succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It failed (e.g. authentication failure).
    Failure,
    /// It succeeded.
    Success,
}

impl Outcome {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Failure => "failure",
            Outcome::Success => "success",
        }
    }
}

/// What to record: never a secret.
#[derive(Debug, Clone)]
pub struct Entry {
    /// who
    pub actor: String,
    /// dotted action name
    pub action: String,
    /// object id
    pub target: String,
    /// result
    pub outcome: Outcome,
    /// client IP
    pub client_addr: Option<String>,
    /// how many failures a summary row stands for (`auth.failure.summary` only)
    pub count: Option<i64>,
}

/// Longest claimed principal kept in a failure row (characters, API.md A25).
pub const MAX_PRINCIPAL_CHARS: usize = crate::auth::ratelimit::MAX_PRINCIPAL_CHARS;
/// Longest request path kept in a failure row (characters, API.md A25).
pub const MAX_PATH_CHARS: usize = 256;

/// `s` cut to `max` characters (on a character boundary) with control characters escaped
/// (`\u{1b}`), for attacker-chosen text in audit rows and log lines. The escaping may lengthen
/// the result by a bounded factor (at most 8 bytes per kept character).
pub fn bounded_text(s: &str, max: usize) -> String {
    let kept = crate::auth::ratelimit::truncate_chars(s, max);
    if !kept.chars().any(char::is_control) {
        return kept.to_owned();
    }
    kept.chars()
        .map(|c| if c.is_control() { c.escape_unicode().to_string() } else { c.into() })
        .collect()
}

impl Entry {
    /// A success entry.
    pub fn success(actor: &str, action: &str, target: &str, client_addr: Option<&str>) -> Self {
        Self {
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            outcome: Outcome::Success,
            client_addr: client_addr.map(str::to_owned),
            count: None,
        }
    }

    /// A failure entry.
    pub fn failure(actor: &str, action: &str, target: &str, client_addr: Option<&str>) -> Self {
        Self { outcome: Outcome::Failure, ..Self::success(actor, action, target, client_addr) }
    }

    /// A failed authentication: the claimed principal (or `anonymous`) and the request path,
    /// each bounded and escaped (API.md A25).
    pub fn auth_failure(claimed: Option<&str>, path: &str, client_addr: Option<&str>) -> Self {
        let actor = claimed
            .map_or_else(|| "anonymous".to_owned(), |c| bounded_text(c, MAX_PRINCIPAL_CHARS));
        Self::failure(&actor, "auth.failure", &bounded_text(path, MAX_PATH_CHARS), client_addr)
    }

    /// The summary of one rate-limited key's refused failures in one window: target = the
    /// (truncated) principal, or `*` for an address key (every principal from that address).
    pub fn auth_failure_summary(s: &crate::auth::ratelimit::Summary) -> Self {
        let principal = s.principal.as_deref().map(|p| bounded_text(p, MAX_PRINCIPAL_CHARS));
        let actor = principal.as_deref().unwrap_or("anonymous");
        let target = principal.as_deref().unwrap_or("*");
        Self {
            count: Some(i64::try_from(s.count).unwrap_or(i64::MAX)),
            ..Self::failure(actor, "auth.failure.summary", target, Some(&s.addr))
        }
    }
}

/// Canonical, unambiguous serialization of a row's content (a JSON array). A summary's count
/// is an eighth element, present only on summary rows, so older rows hash as they always did.
fn canonical(seq: i64, at: i64, e: &Entry) -> String {
    let mut row = serde_json::json!([
        seq,
        at,
        e.actor,
        e.action,
        e.target,
        e.outcome.as_str(),
        e.client_addr
    ]);
    if let (Some(count), Some(items)) = (e.count, row.as_array_mut()) {
        items.push(count.into());
    }
    row.to_string()
}

/// Appends `entry` inside the caller's write transaction (so the audit row commits or rolls back
/// with the change it describes).
pub async fn append(
    conn: &mut sqlx::AnyConnection,
    dialect: Dialect,
    key: &AuditKey,
    entry: &Entry,
    now: i64,
) -> Result<i64, StoreError> {
    append_many(conn, dialect, key, std::slice::from_ref(entry), now).await
}

/// Appends consecutive entries inside the caller's write transaction: locks the head (one round
/// trip), then one insert and the head move (one more on PostgreSQL). Returns the last sequence
/// number.
pub async fn append_many(
    conn: &mut sqlx::AnyConnection,
    dialect: Dialect,
    key: &AuditKey,
    entries: &[Entry],
    now: i64,
) -> Result<i64, StoreError> {
    let mut w = crate::store::Writes::new(dialect);
    let (seq, _) = stage(conn, &mut w, key, entries, now).await?;
    w.execute(conn).await?;
    Ok(seq)
}

/// Locks the chain head and adds the rows for `entries` and the head move to `w`, for the
/// caller to send with its own writes (one statement on PostgreSQL) before it commits. Returns
/// the new head.
pub async fn stage(
    conn: &mut sqlx::AnyConnection,
    w: &mut crate::store::Writes,
    key: &AuditKey,
    entries: &[Entry],
    now: i64,
) -> Result<(i64, String), StoreError> {
    let head = rows::lock_head(conn, w.dialect()).await?;
    let (rows, new_head) = chain(key, &head, entries, now);
    rows::append(w, &rows);
    Ok(new_head)
}

/// PostgreSQL: adds the rows for `entries`, chained to `head` as last seen, to an empty `w` and
/// gates all of `w` on the head still being `head` ([`rows::append_if_head`]): no lock, no
/// transaction. Returns the new head (current only if the gate matches).
pub fn stage_if_head(
    w: &mut crate::store::Writes,
    key: &AuditKey,
    head: &(i64, String),
    entries: &[Entry],
    now: i64,
) -> (i64, String) {
    let (rows, new_head) = chain(key, head, entries, now);
    rows::append_if_head(w, &rows, head);
    new_head
}

/// Rows for `entries` chained after `head`, and the head they lead to.
fn chain(
    key: &AuditKey,
    head: &(i64, String),
    entries: &[Entry],
    now: i64,
) -> (Vec<AuditRow>, (i64, String)) {
    let (mut seq, mut prev_hash) = head.clone();
    let mut rows = Vec::with_capacity(entries.len());
    for entry in entries {
        seq += 1;
        let hash = key.hash(&prev_hash, entry, seq, now);
        rows.push(AuditRow {
            seq,
            at: now,
            actor: entry.actor.clone(),
            action: entry.action.clone(),
            target: entry.target.clone(),
            outcome: entry.outcome.as_str().to_owned(),
            client_addr: entry.client_addr.clone(),
            failure_count: entry.count,
            prev_hash: std::mem::replace(&mut prev_hash, hash.clone()),
            hash,
        });
    }
    (rows, (seq, prev_hash))
}

/// Appends in a transaction of its own (failed authentications, which change nothing else).
pub async fn record(
    store: &Store,
    key: &AuditKey,
    entry: &Entry,
    now: i64,
) -> Result<i64, StoreError> {
    let mut tx = store.begin().await?;
    let seq = append(&mut tx, store.dialect(), key, entry, now).await?;
    tx.commit().await?;
    Ok(seq)
}

/// Result of a chain verification.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verification {
    /// true when every row and the head are consistent
    pub ok: bool,
    /// rows checked
    pub checked: i64,
    /// first row that is wrong (or the first missing sequence number)
    pub first_bad_seq: Option<i64>,
}

/// One page of the trail after `after`, limited by `filter`.
pub async fn page(
    store: &Store,
    after: i64,
    limit: i64,
    filter: &AuditFilter<'_>,
) -> Result<Vec<AuditRow>, StoreError> {
    let mut conn = store.conn().await?;
    crate::store::audit::page(&mut conn, after, limit, filter).await
}

/// `(seq, hash)` of the last row present — not the head record: after rows are cut from the
/// end the head still names the vanished row, and a checkpoint of it would vouch for rows that
/// are gone. `(0, 64 zeros)` for an empty trail.
pub async fn last_row(store: &Store) -> Result<(i64, String), StoreError> {
    let mut conn = store.conn().await?;
    rows::last_row(&mut conn).await
}

/// Walks the whole chain in pages and reports the first inconsistency: a gap or reordering in
/// `seq`, a `prev_hash` that is not the previous row's `hash`, a MAC that does not match, or a
/// head that does not point at the last row (rows cut from the end).
pub async fn verify(store: &Store, key: &AuditKey) -> Result<Verification, StoreError> {
    let mut conn = store.conn().await?;
    let (head_seq, head_hash) = rows::head(&mut conn).await?;
    let mut expected_seq = 1;
    let mut prev = GENESIS.to_owned();
    let mut checked = 0;
    loop {
        let page = rows::page(&mut conn, expected_seq - 1, 1000, &Default::default()).await?;
        if page.is_empty() {
            break;
        }
        for row in page {
            checked += 1;
            if row.seq != expected_seq || row.prev_hash != prev || !key.check(&row) {
                return Ok(Verification { ok: false, checked, first_bad_seq: Some(expected_seq) });
            }
            prev = row.hash;
            expected_seq += 1;
        }
    }
    if head_seq != expected_seq - 1 || head_hash != prev {
        // Rows after the last one present were removed (or the head was edited).
        return Ok(Verification { ok: false, checked, first_bad_seq: Some(expected_seq) });
    }
    Ok(Verification { ok: true, checked, first_bad_seq: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_covers_every_field() {
        let key = AuditKey::new(Zeroizing::new(vec![7; 32]));
        let e = Entry::success("owner", "device.create", "d1", Some("127.0.0.1"));
        let base = key.hash(GENESIS, &e, 1, 100);
        let variants = [
            key.hash(GENESIS, &Entry { actor: "x".into(), ..e.clone() }, 1, 100),
            key.hash(GENESIS, &Entry { action: "x".into(), ..e.clone() }, 1, 100),
            key.hash(GENESIS, &Entry { target: "x".into(), ..e.clone() }, 1, 100),
            key.hash(GENESIS, &Entry { outcome: Outcome::Failure, ..e.clone() }, 1, 100),
            key.hash(GENESIS, &Entry { client_addr: None, ..e.clone() }, 1, 100),
            key.hash(GENESIS, &Entry { count: Some(0), ..e.clone() }, 1, 100),
            key.hash(GENESIS, &e, 2, 100),
            key.hash(GENESIS, &e, 1, 101),
            key.hash(&"1".repeat(64), &e, 1, 100),
        ];
        for v in variants {
            assert_ne!(v, base);
        }
        assert_eq!(base.len(), 64);
    }

    #[test]
    fn a_row_without_a_count_hashes_as_before_the_count_existed() {
        let e = Entry::failure("a", "auth.failure", "/x", None);
        assert_eq!(canonical(1, 2, &e), r#"[1,2,"a","auth.failure","/x","failure",null]"#);
        let s = Entry { count: Some(7), ..e };
        assert_eq!(canonical(1, 2, &s), r#"[1,2,"a","auth.failure","/x","failure",null,7]"#);
    }

    #[test]
    fn failure_rows_hold_at_most_128_characters_of_principal_and_256_of_path() {
        let e = Entry::auth_failure(Some(&"ü".repeat(5000)), &"/a".repeat(40_000), Some("::1"));
        assert_eq!(e.actor.chars().count(), 128);
        assert_eq!(e.target.chars().count(), 256);
        assert_eq!(Entry::auth_failure(None, "/v1", None).actor, "anonymous");
    }

    #[test]
    fn control_characters_in_failure_rows_are_escaped() {
        let e = Entry::auth_failure(Some("evil\n\u{1b}[31mname"), "/p\r\nX", None);
        assert!(!e.actor.chars().any(char::is_control), "{}", e.actor);
        assert!(e.actor.contains("\\u{a}"), "{}", e.actor);
        assert!(!e.target.chars().any(char::is_control));
    }

    #[test]
    fn summaries_name_the_principal_and_carry_the_count() {
        use crate::auth::ratelimit::Summary;
        let s = Summary { principal: Some("p".into()), addr: "10.0.0.1".into(), count: 42 };
        let e = Entry::auth_failure_summary(&s);
        assert_eq!(
            (e.action.as_str(), e.target.as_str(), e.count),
            ("auth.failure.summary", "p", Some(42))
        );
        let s = Summary { principal: None, ..s };
        assert_eq!(Entry::auth_failure_summary(&s).target, "*");
    }
}
