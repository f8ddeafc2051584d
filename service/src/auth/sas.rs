//! SAS token authentication for policies (`skn=` tokens over the service's host name).

use ca::sas::{SasToken, Validity};
use ca::SasKey;

use super::{AuthError, PermissionSet, Principal, Scope};
use crate::seal::{KeyRing, SealContext};
use crate::store::policies::PolicyRow;
use crate::store::Store;
use crate::store::StoreError;

/// Tokens whose `se` lies more than this far ahead are refused (API.md A15).
pub const MAX_AHEAD_SECS: i64 = 366 * 86_400;

/// Outcome of checking a token against a policy.
#[derive(Debug)]
pub enum PolicyAuth {
    /// Authenticated.
    Ok(Principal),
    /// Refused.
    Refused(AuthError),
}

/// The keys of a policy, unsealed.
pub struct PolicyKeys {
    /// primary
    pub primary: SasKey,
    /// secondary
    pub secondary: SasKey,
}

/// Unseals both keys of a policy row.
pub fn unseal_policy_keys(
    ring: &KeyRing,
    row: &PolicyRow,
) -> Result<PolicyKeys, crate::seal::SealError> {
    let ctx = |column| SealContext { table: "policies", column, row_id: &row.name };
    let primary = ring.open(ctx("primary_key"), &row.primary_key)?;
    let secondary = ring.open(ctx("secondary_key"), &row.secondary_key)?;
    Ok(PolicyKeys {
        primary: SasKey::from_bytes(primary.to_vec()),
        secondary: SasKey::from_bytes(secondary.to_vec()),
    })
}

/// The permissions and scope stored in a policy row (None when the stored text is corrupt).
pub fn policy_grants(row: &PolicyRow) -> Option<(PermissionSet, Option<Scope>)> {
    let names: Vec<String> = serde_json::from_str(&row.permissions).ok()?;
    let permissions = PermissionSet::parse(names.iter().map(String::as_str)).ok()?;
    let scope = match row.scope.as_deref() {
        None => None,
        Some(text) => Some(serde_json::from_str::<Scope>(text).ok()?),
    };
    Some((permissions, scope))
}

/// Errors beyond a refused credential.
#[derive(Debug, thiserror::Error)]
pub enum SasAuthError {
    /// storage failed
    #[error(transparent)]
    Store(#[from] StoreError),
    /// a sealed key did not open
    #[error(transparent)]
    Seal(#[from] crate::seal::SealError),
    /// a stored permission list is corrupt
    #[error("stored policy {0} is corrupt")]
    Corrupt(String),
}

/// A policy as checked on each request: keys unsealed, permissions and scope parsed.
struct CheckedPolicy {
    generation: u64,
    keys: PolicyKeys,
    principal: Principal,
}

/// Policies read recently, kept only where every policy write happens in this process (SQLite:
/// one instance) and only until the next committed policy change (`Store::policy_generation`):
/// a rotated or deleted key is never served from here. On PostgreSQL, where another instance
/// may rotate a key, every check reads the row.
#[derive(Default)]
pub struct PolicyCache {
    entries: std::sync::RwLock<std::collections::HashMap<String, std::sync::Arc<CheckedPolicy>>>,
}

impl std::fmt::Debug for PolicyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicyCache([keys elided])")
    }
}

/// Most policies kept; past it the cache starts over (policies are few; this bounds memory
/// against a flood of distinct valid names).
const MAX_CACHED_POLICIES: usize = 1024;

impl PolicyCache {
    fn get(&self, name: &str, generation: u64) -> Option<std::sync::Arc<CheckedPolicy>> {
        let entries = self.entries.read().ok()?;
        entries.get(name).filter(|e| e.generation == generation).cloned()
    }

    fn put(&self, name: &str, entry: std::sync::Arc<CheckedPolicy>) {
        if let Ok(mut entries) = self.entries.write() {
            if entries.len() >= MAX_CACHED_POLICIES {
                entries.clear();
            }
            entries.insert(name.to_owned(), entry);
        }
    }
}

/// Reads, unseals and parses a policy (None when it does not exist).
async fn load_policy(
    store: &Store,
    ring: &KeyRing,
    name: &str,
    generation: u64,
) -> Result<Option<CheckedPolicy>, SasAuthError> {
    let mut conn = store.conn().await?;
    let Some(row) = crate::store::policies::get(&mut conn, name).await? else {
        return Ok(None);
    };
    drop(conn);
    let keys = unseal_policy_keys(ring, &row)?;
    let (permissions, scope) =
        policy_grants(&row).ok_or_else(|| SasAuthError::Corrupt(row.name.clone()))?;
    Ok(Some(CheckedPolicy {
        generation,
        keys,
        principal: Principal { name: row.name, permissions, scope },
    }))
}

/// Authenticates a policy SAS token: `skn` names the policy, `sr` must cover `host_name`, the
/// signature must match the primary or secondary key, and the expiry must be within bounds.
#[allow(clippy::too_many_arguments)]
pub async fn authenticate_policy(
    store: &Store,
    cache: &PolicyCache,
    ring: &KeyRing,
    host_name: &str,
    token_text: &str,
    now: i64,
    skew_secs: i64,
) -> Result<PolicyAuth, SasAuthError> {
    let refused = |claimed: Option<&str>| {
        Ok(PolicyAuth::Refused(AuthError::Invalid { claimed: claimed.map(str::to_owned) }))
    };
    let Ok(token) = SasToken::parse(token_text) else {
        return refused(None);
    };
    let Some(name) = token.key_name() else {
        return refused(None);
    };
    let validity = Validity { now, skew_secs, max_ahead_secs: MAX_AHEAD_SECS };
    if token.check_expiry(validity).is_err()
        || !token.covers(host_name)
        || token.resource().contains('/')
    {
        return refused(Some(name));
    }
    // Sampled before the read: an entry filled from a read that raced a change is already stale.
    let generation = store.policy_generation();
    let policy = match cache.get(name, generation) {
        Some(p) => p,
        None => {
            let Some(loaded) = load_policy(store, ring, name, generation).await? else {
                return refused(Some(name));
            };
            let loaded = std::sync::Arc::new(loaded);
            if store.single_instance() {
                cache.put(name, loaded.clone());
            }
            loaded
        }
    };
    // Check both keys unconditionally so timing does not reveal which one matched.
    let primary_ok = token.check_signature(&policy.keys.primary).is_ok();
    let secondary_ok = token.check_signature(&policy.keys.secondary).is_ok();
    if !(primary_ok | secondary_ok) {
        return refused(Some(name));
    }
    Ok(PolicyAuth::Ok(policy.principal.clone()))
}
