//! Use cases: plain async functions over `&Store` (and the time), each owning its transaction.
//! They know nothing of HTTP; handlers map their typed errors in `http::problem`.

pub mod aws;
pub mod backup;
pub mod bundles;
pub mod certificates;
pub mod crl;
pub mod devices;
pub mod groups;
pub mod init;
pub mod intermediate;
pub mod operators;
pub mod policies;
pub mod register;
pub mod renew;
pub mod revoke;
pub mod rotate_master_key;
pub mod sas;
pub mod server_cert;

use crate::audit::{AuditKey, Entry};
use crate::seal::KeyRing;
use crate::store::Dialect;
pub use crate::store::StoreError;

/// Who is acting, for the audit trail.
#[derive(Debug, Clone)]
pub struct Actor {
    /// principal name
    pub name: String,
    /// client IP
    pub addr: Option<String>,
}

impl Actor {
    /// An audit entry for a successful `action` on `target` by this actor.
    pub fn did(&self, action: &str, target: &str) -> Entry {
        Entry::success(&self.name, action, target, self.addr.as_deref())
    }
}

/// What every writing use case needs besides the store.
pub struct Ctx<'a> {
    /// master key ring (to seal / open)
    pub ring: &'a KeyRing,
    /// audit chain key
    pub audit_key: &'a AuditKey,
    /// unix seconds
    pub now: i64,
    /// who
    pub actor: &'a Actor,
}

impl Ctx<'_> {
    /// Appends an audit row for `action` on `target` inside `tx`.
    pub async fn audit(
        &self,
        tx: &mut crate::store::Conn,
        dialect: Dialect,
        action: &str,
        target: &str,
    ) -> Result<(), StoreError> {
        crate::audit::append(
            tx,
            dialect,
            self.audit_key,
            &self.actor.did(action, target),
            self.now,
        )
        .await?;
        Ok(())
    }
}

/// One page of a list in key order: reads `fetch(after, n)` pages (rows in key order) and keeps
/// the rows `keep` admits (a scope, a filter) until `limit` are kept. Returns them and whether
/// more follow; the next cursor is the key of the last row returned, so a cursor never names a
/// row the caller may not see.
pub async fn page_where<T, Fut>(
    after: &str,
    limit: i64,
    key: impl Fn(&T) -> &str,
    keep: impl Fn(&T) -> bool,
    mut fetch: impl FnMut(String, i64) -> Fut,
) -> Result<(Vec<T>, bool), StoreError>
where
    Fut: std::future::Future<Output = Result<Vec<T>, StoreError>>,
{
    let want = limit.saturating_add(1);
    let mut cursor = after.to_owned();
    let mut kept = Vec::new();
    loop {
        let rows = fetch(cursor.clone(), want).await?;
        let exhausted = (rows.len() as i64) < want;
        for row in rows {
            cursor = key(&row).to_owned();
            if keep(&row) {
                kept.push(row);
                if kept.len() as i64 == want {
                    kept.pop();
                    return Ok((kept, true));
                }
            }
        }
        if exhausted {
            return Ok((kept, false));
        }
        // a filtered list may read many pages: let other requests run in between
        tokio::task::yield_now().await;
    }
}

/// A random opaque token of `bytes` bytes, lowercase hex (etags, generation ids).
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore as _;
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}
