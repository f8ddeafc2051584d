//! Operators (humans): create/replace, delete, login. Passwords are argon2id-hashed on the
//! blocking pool; login returns a short-lived ES256 JWT (audience `provisiond-operator`).

use super::{random_hex, Ctx};
use crate::auth::jwt::{Claims, JwtKeys, OPERATOR_AUDIENCE};
use crate::auth::password::{self, Password};
use crate::auth::{PermissionSet, Principal};
use crate::store::operators as rows;
pub use crate::store::operators::OperatorRow;
use crate::store::{Store, StoreError};

/// Lifetime of an operator session token.
pub const SESSION_SECS: i64 = 15 * 60;

/// Why an operator operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// unknown operator
    #[error("operator not found")]
    NotFound,
    /// wrong user name or password
    #[error("invalid user name or password")]
    BadCredentials,
    /// storage
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `If-None-Match: *` and the operator exists
    #[error("an operator of this name exists")]
    Exists,
    /// a password outside [`MIN_PASSWORD_LEN`]..=[`MAX_PASSWORD_LEN`] characters
    #[error("password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters")]
    PasswordLength,
    /// hashing / signing
    #[error("internal: {0}")]
    Internal(String),
}

/// Shortest operator password accepted (characters).
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest operator password accepted (characters; bounds the hashing cost of a request).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Creates or replaces an operator (only creates with `create_only`: an existing one is
/// [`OperatorError::Exists`], decided by the insert itself); true when created.
pub async fn put(
    store: &Store,
    cx: &Ctx<'_>,
    name: &str,
    password: Password,
    permissions: &PermissionSet,
    create_only: bool,
) -> Result<bool, OperatorError> {
    if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&password.len()) {
        return Err(OperatorError::PasswordLength);
    }
    let hash =
        password::hash(password).await.map_err(|e| OperatorError::Internal(e.to_string()))?;
    let row = OperatorRow {
        name: name.to_owned(),
        password_hash: hash,
        permissions: serde_json::Value::from(permissions.names()).to_string(),
        created_at: cx.now,
        updated_at: cx.now,
        generation: random_hex(16),
    };
    let mut tx = store.begin().await?;
    let created = if create_only {
        if !rows::insert_new(&mut tx, &row).await? {
            return Err(OperatorError::Exists);
        }
        true
    } else {
        rows::upsert(&mut tx, &row).await?
    };
    cx.audit(
        &mut tx,
        store.dialect(),
        if created { "operator.create" } else { "operator.update" },
        name,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(created)
}

/// Deletes an operator; its sessions stop working at once (every request re-reads it, and a
/// re-created operator has another generation).
pub async fn delete(store: &Store, cx: &Ctx<'_>, name: &str) -> Result<(), OperatorError> {
    let mut tx = store.begin().await?;
    if !rows::delete(&mut tx, name).await? {
        return Err(OperatorError::NotFound);
    }
    cx.audit(&mut tx, store.dialect(), "operator.delete", name).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

/// An operator session: the token and what it lets its holder do.
#[derive(Debug)]
pub struct Session {
    /// the signed JWT (a bearer credential)
    pub token: String,
    /// expiry, unix seconds
    pub expires_at: i64,
    /// the operator's permissions with their implications applied (`RegistryReadWrite` lists
    /// `RegistryRead` too): the console hides what the session cannot do. Any change of them
    /// ends the session, so they stay true for its lifetime.
    pub permissions: Vec<&'static str>,
}

/// Checks a password and issues a session token.
pub async fn login(
    store: &Store,
    jwt: &JwtKeys,
    name: &str,
    password: Password,
    now: i64,
) -> Result<Session, OperatorError> {
    let row = {
        let mut conn = store.conn().await?;
        rows::get(&mut conn, name).await?
    };
    if !password::verify(row.as_ref().map(|r| r.password_hash.clone()), password).await {
        return Err(OperatorError::BadCredentials);
    }
    let exp = now + SESSION_SECS;
    let claims = Claims {
        aud: OPERATOR_AUDIENCE.into(),
        sub: Some(name.to_owned()),
        grp: None,
        gen: row.as_ref().map(|r| r.generation.clone()),
        jti: random_hex(16),
        iat: now,
        exp,
    };
    let token = jwt.sign(&claims).map_err(|e| OperatorError::Internal(e.to_string()))?;
    let granted = row
        .as_ref()
        .and_then(|r| serde_json::from_str::<Vec<String>>(&r.permissions).ok())
        .and_then(|names| PermissionSet::parse(names.iter().map(String::as_str)).ok())
        .unwrap_or_default();
    let permissions = crate::auth::Permission::ALL
        .into_iter()
        .filter(|p| granted.allows(*p))
        .map(crate::auth::Permission::as_str)
        .collect();
    Ok(Session { token, expires_at: exp, permissions })
}

/// Authenticates a session token: valid signature, audience, expiry, and the operator still
/// exists under the credential generation the session was issued for (a password or
/// permission change, or a delete and re-create, ends every older session).
pub async fn authenticate(
    store: &Store,
    jwt: &JwtKeys,
    token: &str,
    now: i64,
) -> Result<Option<Principal>, StoreError> {
    let Ok(claims) = jwt.verify(token, OPERATOR_AUDIENCE, now, 0) else { return Ok(None) };
    let Some(name) = claims.sub else { return Ok(None) };
    let Some(row) = rows::lookup(store, &name).await? else { return Ok(None) };
    let current = claims.gen.as_deref().is_some_and(|g| {
        !row.generation.is_empty()
            && bool::from(subtle::ConstantTimeEq::ct_eq(g.as_bytes(), row.generation.as_bytes()))
    });
    if !current {
        return Ok(None);
    }
    let names: Vec<String> = serde_json::from_str(&row.permissions).unwrap_or_default();
    let Ok(permissions) = PermissionSet::parse(names.iter().map(String::as_str)) else {
        return Ok(None);
    };
    Ok(Some(Principal { name: row.name, permissions, scope: None }))
}

/// One page of operators in name order after `after` (rows: the caller renders them without
/// password hashes). Returns them and whether more follow.
pub async fn list(
    store: &Store,
    after: &str,
    limit: i64,
) -> Result<(Vec<OperatorRow>, bool), StoreError> {
    super::page_where(
        after,
        limit,
        |r: &OperatorRow| r.name.as_str(),
        |_| true,
        |after, n| async move { rows::page(&mut *store.conn().await?, &after, n).await },
    )
    .await
}

/// Reads one operator (None when unknown).
pub async fn get(store: &Store, name: &str) -> Result<Option<OperatorRow>, StoreError> {
    rows::lookup(store, name).await
}
