//! Shared access policies: create/replace, read, delete, key rotation. The `owner` policy can
//! neither be deleted nor lose `PolicyAdmin` nor be scoped, so nobody locks the fleet's admins
//! out. Keys are sealed; rotation invalidates tokens signed with the old key at once (tokens
//! are checked against the stored keys on every request, nothing is cached).

use ca::SasKey;

use super::devices::KeyChoice;
use super::Ctx;
use crate::auth::sas::{policy_grants, unseal_policy_keys};
use crate::auth::{Permission, PermissionSet, Scope};
use crate::seal::{KeyRing, SealContext, SealError};
use crate::store::policies::{self as rows, PolicyRow};
use crate::store::{Store, StoreError};

/// The policy that cannot be removed.
pub const OWNER: &str = "owner";

/// Why a policy operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// would lock administrators out
    #[error("{0}")]
    Protected(String),
    /// unknown policy
    #[error("policy not found")]
    NotFound,
    /// storage
    #[error(transparent)]
    Store(#[from] StoreError),
    /// a sealed key did not open
    #[error(transparent)]
    Seal(#[from] SealError),
    /// stored data is corrupt
    #[error("stored policy is corrupt")]
    Corrupt,
}

/// A policy with its keys unsealed.
pub struct Policy {
    /// name
    pub name: String,
    /// permissions
    pub permissions: PermissionSet,
    /// scope
    pub scope: Option<Scope>,
    /// primary key
    pub primary: SasKey,
    /// secondary key
    pub secondary: SasKey,
    /// created
    pub created_at: i64,
    /// updated
    pub updated_at: i64,
}

/// A validated PUT body.
pub struct PolicyInput {
    /// permissions
    pub permissions: PermissionSet,
    /// scope
    pub scope: Option<Scope>,
    /// primary key (kept / generated when absent)
    pub primary: Option<SasKey>,
    /// secondary key (kept / generated when absent)
    pub secondary: Option<SasKey>,
}

fn decode(ring: &KeyRing, row: PolicyRow) -> Result<Policy, PolicyError> {
    let keys = unseal_policy_keys(ring, &row)?;
    let (permissions, scope) = policy_grants(&row).ok_or(PolicyError::Corrupt)?;
    Ok(Policy {
        name: row.name,
        permissions,
        scope,
        primary: keys.primary,
        secondary: keys.secondary,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

fn encode(ring: &KeyRing, p: &Policy) -> PolicyRow {
    let ctx = |column| SealContext { table: "policies", column, row_id: &p.name };
    PolicyRow {
        name: p.name.clone(),
        permissions: serde_json::Value::from(p.permissions.names()).to_string(),
        scope: p.scope.as_ref().and_then(|s| serde_json::to_string(s).ok()),
        key_version: i64::from(ring.current_version()),
        primary_key: ring.seal(ctx("primary_key"), p.primary.expose_secret()),
        secondary_key: ring.seal(ctx("secondary_key"), p.secondary.expose_secret()),
        created_at: p.created_at,
        updated_at: p.updated_at,
    }
}

/// Reads a policy.
pub async fn get(store: &Store, ring: &KeyRing, name: &str) -> Result<Policy, PolicyError> {
    let mut conn = store.conn().await?;
    let row = rows::get(&mut conn, name).await?.ok_or(PolicyError::NotFound)?;
    decode(ring, row)
}

/// Creates or replaces a policy; returns it and whether it was created.
pub async fn put(
    store: &Store,
    cx: &Ctx<'_>,
    name: &str,
    input: PolicyInput,
) -> Result<(Policy, bool), PolicyError> {
    if name == OWNER
        && (!input.permissions.allows(Permission::PolicyAdmin) || input.scope.is_some())
    {
        return Err(PolicyError::Protected(
            "the owner policy must keep PolicyAdmin and cannot be scoped".into(),
        ));
    }
    let mut tx = store.begin().await?;
    let current = match rows::get(&mut tx, name).await? {
        Some(row) => Some(decode(cx.ring, row)?),
        None => None,
    };
    let created = current.is_none();
    let (old_p, old_s, created_at) = match current {
        Some(c) => (Some(c.primary), Some(c.secondary), c.created_at),
        None => (None, None, cx.now),
    };
    let policy = Policy {
        name: name.to_owned(),
        permissions: input.permissions,
        scope: input.scope,
        primary: input.primary.or(old_p).unwrap_or_else(SasKey::generate),
        secondary: input.secondary.or(old_s).unwrap_or_else(SasKey::generate),
        created_at,
        updated_at: cx.now,
    };
    let row = encode(cx.ring, &policy);
    if created {
        rows::insert(&mut tx, &row).await?;
        cx.audit(&mut tx, store.dialect(), "policy.create", name).await?;
    } else {
        rows::update(&mut tx, &row).await?;
        cx.audit(&mut tx, store.dialect(), "policy.update", name).await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    store.policies_changed();
    Ok((policy, created))
}

/// Deletes a policy; its tokens stop working at once.
pub async fn delete(store: &Store, cx: &Ctx<'_>, name: &str) -> Result<(), PolicyError> {
    if name == OWNER {
        return Err(PolicyError::Protected("the owner policy cannot be deleted".into()));
    }
    let mut tx = store.begin().await?;
    if !rows::delete(&mut tx, name).await? {
        return Err(PolicyError::NotFound);
    }
    cx.audit(&mut tx, store.dialect(), "policy.delete", name).await?;
    tx.commit().await.map_err(StoreError::from)?;
    store.policies_changed();
    Ok(())
}

/// Rotates a policy's keys.
pub async fn rotate_keys(
    store: &Store,
    cx: &Ctx<'_>,
    name: &str,
    which: KeyChoice,
) -> Result<Policy, PolicyError> {
    let mut tx = store.begin().await?;
    let row = rows::get(&mut tx, name).await?.ok_or(PolicyError::NotFound)?;
    let mut p = decode(cx.ring, row)?;
    match which {
        KeyChoice::Primary => p.primary = SasKey::generate(),
        KeyChoice::Secondary => p.secondary = SasKey::generate(),
        KeyChoice::Swap => std::mem::swap(&mut p.primary, &mut p.secondary),
    }
    p.updated_at = cx.now;
    rows::update(&mut tx, &encode(cx.ring, &p)).await?;
    cx.audit(&mut tx, store.dialect(), "policy.keys.rotate", name).await?;
    tx.commit().await.map_err(StoreError::from)?;
    store.policies_changed();
    Ok(p)
}

/// One page of policies in name order after `after` (rows: the caller renders them without
/// keys). Returns them and whether more follow.
pub async fn list(
    store: &Store,
    after: &str,
    limit: i64,
) -> Result<(Vec<crate::store::policies::PolicyRow>, bool), StoreError> {
    super::page_where(
        after,
        limit,
        |r: &crate::store::policies::PolicyRow| r.name.as_str(),
        |_| true,
        |after, n| async move {
            crate::store::policies::page(&mut *store.conn().await?, &after, n).await
        },
    )
    .await
}
