//! The device registry: create/replace with optimistic concurrency, read, delete (revoking the
//! device's certificates), list, and SAS key rotation. Keys are sealed per row; every change and
//! its audit row commit together.

use ca::SasKey;
use serde_json::{Map, Value};

use super::{random_hex, Ctx};
use crate::seal::{KeyRing, SealContext, SealError};
pub use crate::store::devices::DeviceRow;
use crate::store::devices::{self as rows};
use crate::store::{Store, StoreError};

/// Largest accepted tags object, serialized.
pub const MAX_TAGS_BYTES: usize = 8 * 1024;

/// The one tags limit of every path that stores tags (API.md A30): the compact UTF-8 JSON of
/// `tags` is at most [`MAX_TAGS_BYTES`]. `what` names the member in the message.
pub fn check_tags(what: &str, tags: &Map<String, Value>) -> Result<(), String> {
    let len = serde_json::to_vec(tags).map_or(usize::MAX, |v| v.len());
    if len > MAX_TAGS_BYTES {
        return Err(format!("{what} must be at most {MAX_TAGS_BYTES} bytes of JSON ({len} given)"));
    }
    Ok(())
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// invalid input; the text says what to fix
    #[error("{0}")]
    Invalid(String),
    /// the device is disabled: nothing is issued for it
    #[error("the device is disabled: enable it first")]
    Disabled,
    /// unknown device
    #[error("device not found")]
    NotFound,
    /// the imported owner's enrollment does not exist here
    #[error("{0}")]
    OwnerMissing(String),
    /// If-Match / If-None-Match did not hold
    #[error("precondition failed")]
    PreconditionFailed,
    /// storage
    #[error(transparent)]
    Store(#[from] StoreError),
    /// a sealed key did not open
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// Authentication of a device.
#[derive(Debug)]
pub enum Authentication {
    /// shared access keys
    Sas {
        /// primary
        primary: SasKey,
        /// secondary
        secondary: SasKey,
    },
    /// self-signed / pinned certificates by SHA-256 thumbprint
    X509Thumbprint {
        /// hex SHA-256
        primary: String,
        /// hex SHA-256
        secondary: Option<String>,
    },
    /// certificates from a CA (provisiond's or a group's)
    X509Ca,
}

impl Authentication {
    fn kind(&self) -> &'static str {
        match self {
            Authentication::Sas { .. } => "sas",
            Authentication::X509Thumbprint { .. } => "x509_thumbprint",
            Authentication::X509Ca => "x509_ca",
        }
    }
}

/// A device with its keys unsealed.
#[derive(Debug)]
pub struct Device {
    /// stored row (sealed blobs included, never rendered)
    pub row: DeviceRow,
    /// unsealed authentication
    pub auth: Authentication,
}

/// Requested authentication in a PUT.
#[derive(Debug)]
pub enum AuthInput {
    /// sas, keys generated when absent
    Sas {
        /// primary
        primary: Option<SasKey>,
        /// secondary
        secondary: Option<SasKey>,
    },
    /// thumbprints
    X509Thumbprint {
        /// primary
        primary: String,
        /// secondary
        secondary: Option<String>,
    },
    /// CA-signed
    X509Ca,
}

/// A PUT body, validated. `None` = keep the current value (or default on create);
/// `Some(None)` = clear.
#[derive(Debug, Default)]
pub struct DeviceInput {
    /// enabled?
    pub enabled: Option<bool>,
    /// reason
    pub status_reason: Option<Option<String>>,
    /// authentication
    pub auth: Option<AuthInput>,
    /// tags
    pub tags: Option<Map<String, Value>>,
    /// gateway
    pub parent_id: Option<Option<String>>,
    /// imports only: the owner to record when the device is created (an enrollment that must
    /// exist), and its creation time
    pub imported: Option<Imported>,
}

/// What an import line carries beyond a PUT body (API.md A30 `import`).
#[derive(Debug, Default, Clone)]
pub struct Imported {
    /// `("enrollment_group", group id)` or `("enrollment", registration id)`; None = admin
    pub owner: Option<(String, String)>,
    /// when the device was created where it was exported
    pub created_at: Option<i64>,
    /// `--owner admin`: an owner whose enrollment does not exist here becomes admin
    pub admin_if_missing: bool,
}

/// Conditions of a PUT / DELETE.
#[derive(Debug, Default, Clone)]
pub struct Precondition {
    /// `If-Match` (unquoted etag, or `*`)
    pub if_match: Option<String>,
    /// `If-None-Match: *`
    pub if_none_match_any: bool,
    /// the caller's scope: the stored device (or, on create, the new one) must be inside it,
    /// checked on the row the write transaction read (so it cannot change in between)
    pub scope: Option<crate::auth::Scope>,
}

impl Precondition {
    /// Only the caller's scope.
    pub fn scoped(scope: Option<crate::auth::Scope>) -> Self {
        Self { scope, ..Self::default() }
    }

    /// Out of scope is NotFound (checked first: a 412 would reveal the device exists).
    fn check(&self, id: &str, current: Option<&DeviceRow>) -> Result<(), DeviceError> {
        let group = current.and_then(DeviceRow::owner_group);
        if self.scope.as_ref().is_some_and(|s| !s.covers_device(id, group)) {
            return Err(DeviceError::NotFound);
        }
        match (current, &self.if_match) {
            (Some(_), _) if self.if_none_match_any => Err(DeviceError::PreconditionFailed),
            (None, Some(_)) => Err(DeviceError::PreconditionFailed),
            (Some(row), Some(tag)) if tag != "*" && *tag != row.etag => {
                Err(DeviceError::PreconditionFailed)
            }
            _ => Ok(()),
        }
    }
}

fn ctx<'a>(column: &'a str, id: &'a str) -> SealContext<'a> {
    SealContext { table: "devices", column, row_id: id }
}

/// One page of devices in id order after `after` (`status`, id `prefix`), keeping those
/// `visible` admits (a scope, a group filter) until `limit` are kept; and whether more follow.
pub async fn page(
    store: &Store,
    ring: &KeyRing,
    after: &str,
    limit: i64,
    status: Option<&str>,
    prefix: Option<&str>,
    visible: impl Fn(&DeviceRow) -> bool,
) -> Result<(Vec<Device>, bool), DeviceError> {
    let (rows, more) = super::page_where(
        after,
        limit,
        |r: &DeviceRow| r.device_id.as_str(),
        visible,
        |after, n| async move { rows::page_committed(store, &after, status, prefix, n).await },
    )
    .await?;
    let devices = rows.into_iter().map(|r| open(ring, r)).collect::<Result<_, _>>()?;
    Ok((devices, more))
}

/// Unseals a row's authentication.
pub fn open(ring: &KeyRing, row: DeviceRow) -> Result<Device, DeviceError> {
    let auth = match row.auth_type.as_str() {
        "sas" => {
            let (Some(p), Some(s)) = (&row.primary_key, &row.secondary_key) else {
                return Err(DeviceError::Invalid("stored device has no keys".into()));
            };
            Authentication::Sas {
                primary: SasKey::from_bytes(
                    ring.open(ctx("primary_key", &row.device_id), p)?.to_vec(),
                ),
                secondary: SasKey::from_bytes(
                    ring.open(ctx("secondary_key", &row.device_id), s)?.to_vec(),
                ),
            }
        }
        "x509_thumbprint" => Authentication::X509Thumbprint {
            primary: row.primary_thumbprint.clone().unwrap_or_default(),
            secondary: row.secondary_thumbprint.clone(),
        },
        _ => Authentication::X509Ca,
    };
    Ok(Device { row, auth })
}

fn apply_auth(row: &mut DeviceRow, ring: &KeyRing, auth: &Authentication) {
    row.auth_type = auth.kind().to_owned();
    (row.key_version, row.primary_key, row.secondary_key) = (None, None, None);
    (row.primary_thumbprint, row.secondary_thumbprint) = (None, None);
    match auth {
        Authentication::Sas { primary, secondary } => {
            row.key_version = Some(i64::from(ring.current_version()));
            row.primary_key =
                Some(ring.seal(ctx("primary_key", &row.device_id), primary.expose_secret()));
            row.secondary_key =
                Some(ring.seal(ctx("secondary_key", &row.device_id), secondary.expose_secret()));
        }
        Authentication::X509Thumbprint { primary, secondary } => {
            row.primary_thumbprint = Some(primary.clone());
            row.secondary_thumbprint = secondary.clone();
        }
        Authentication::X509Ca => {}
    }
}

/// `(enabled, disabled)` devices inside `scope`.
pub async fn counts(
    store: &Store,
    scope: Option<&crate::auth::Scope>,
) -> Result<(i64, i64), StoreError> {
    let prefix = scope.and_then(|s| s.device_id_prefix.as_deref());
    let groups = scope.and_then(|s| s.enrollment_group_ids.as_deref());
    rows::counts(&mut *store.conn().await?, prefix, groups).await
}

/// Whether `scope` covers the device `device_id` as stored now, read in the caller's
/// transaction (a device that is gone has no owner: only a prefix-only scope may cover it).
pub async fn in_scope(
    conn: &mut crate::store::Conn,
    scope: &crate::auth::Scope,
    device_id: &str,
) -> Result<bool, StoreError> {
    let device = rows::get(conn, device_id).await?;
    Ok(scope.covers_device(device_id, device.as_ref().and_then(DeviceRow::owner_group)))
}

/// Reads one device.
pub async fn get(store: &Store, ring: &KeyRing, id: &str) -> Result<Device, DeviceError> {
    let row = rows::lookup(store, id).await?.ok_or(DeviceError::NotFound)?;
    open(ring, row)
}

/// Creates or replaces a device. Returns the device and whether it was created.
pub async fn put(
    store: &Store,
    cx: &Ctx<'_>,
    id: &str,
    input: DeviceInput,
    pre: &Precondition,
) -> Result<(Device, bool), DeviceError> {
    let mut tx = store.begin().await?;
    let out = put_in(&mut tx, store.dialect(), cx, id, input, pre).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(out)
}

/// Creates or replaces many devices in one transaction (imports): all or nothing. New devices
/// without a parent are stored with one multi-row insert and one audit append; the others
/// (replacements, parents to check, ids repeated in the batch) one by one.
pub async fn put_many(
    store: &Store,
    cx: &Ctx<'_>,
    items: Vec<(String, DeviceInput)>,
) -> Result<usize, DeviceError> {
    let mut tx = store.begin().await?;
    let n = items.len();
    let ids: Vec<&str> = items.iter().map(|(id, _)| id.as_str()).collect();
    let existing = rows::existing(&mut tx, &ids).await?;
    let mut seen = std::collections::HashSet::new();
    let repeated: std::collections::HashSet<String> =
        ids.iter().filter(|id| !seen.insert(**id)).map(|id| (*id).to_owned()).collect();
    let (fresh, rest): (Vec<_>, Vec<_>) = items.into_iter().partition(|(id, input)| {
        !existing.contains(id)
            && !repeated.contains(id)
            && input.parent_id.is_none()
            && input.imported.as_ref().is_none_or(|i| i.owner.is_none())
    });
    let mut new_rows = Vec::with_capacity(fresh.len());
    let mut entries = Vec::with_capacity(fresh.len());
    for (id, input) in fresh {
        entries.push(cx.actor.did("device.create", &id));
        let created_at = input.imported.as_ref().and_then(|i| i.created_at);
        let mut row = shape(cx, &id, None, input)?.row;
        if let Some(at) = created_at {
            row.created_at = at;
        }
        new_rows.push(row);
    }
    let mut w = crate::store::Writes::new(store.dialect());
    rows::insert_many(&mut w, &new_rows);
    if !entries.is_empty() {
        crate::audit::stage(&mut tx, &mut w, cx.audit_key, &entries, cx.now).await?;
    }
    w.execute(&mut tx).await?;
    for (id, input) in rest {
        put_in(&mut tx, store.dialect(), cx, &id, input, &Precondition::default()).await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(n)
}

/// A device row after applying an input to what is stored.
struct Shaped {
    row: DeviceRow,
    auth: Authentication,
    old_etag: String,
    created: bool,
    was_enabled: bool,
}

/// Applies `input` to the stored row (or a new one): no I/O.
fn shape(
    cx: &Ctx<'_>,
    id: &str,
    current: Option<DeviceRow>,
    input: DeviceInput,
) -> Result<Shaped, DeviceError> {
    let created = current.is_none();
    let was_enabled = current.as_ref().is_some_and(|r| r.status == "enabled");
    let existing_auth = match current.clone() {
        Some(row) => Some(open(cx.ring, row)?.auth),
        None => None,
    };
    let mut row = current.unwrap_or_else(|| DeviceRow {
        auth_type: "sas".into(),
        ..DeviceRow::new(id, random_hex(8), cx.now)
    });
    let old_etag = row.etag.clone();
    if let Some(enabled) = input.enabled {
        row.status = if enabled { "enabled" } else { "disabled" }.into();
    }
    if let Some(reason) = input.status_reason {
        row.status_reason = reason;
    }
    if let Some(tags) = input.tags {
        row.tags = Value::Object(tags).to_string();
    }
    if let Some(parent) = input.parent_id {
        row.parent_id = parent;
    }
    let auth = match (input.auth, existing_auth) {
        (Some(AuthInput::Sas { primary, secondary }), existing) => {
            let (old_p, old_s) = match existing {
                Some(Authentication::Sas { primary, secondary }) => {
                    (Some(primary), Some(secondary))
                }
                _ => (None, None),
            };
            Authentication::Sas {
                primary: primary.or(old_p).unwrap_or_else(SasKey::generate),
                secondary: secondary.or(old_s).unwrap_or_else(SasKey::generate),
            }
        }
        (Some(AuthInput::X509Thumbprint { primary, secondary }), _) => {
            Authentication::X509Thumbprint { primary, secondary }
        }
        (Some(AuthInput::X509Ca), _) => Authentication::X509Ca,
        (None, Some(existing)) => existing,
        (None, None) => {
            Authentication::Sas { primary: SasKey::generate(), secondary: SasKey::generate() }
        }
    };
    apply_auth(&mut row, cx.ring, &auth);
    row.etag = random_hex(8);
    row.updated_at = cx.now;
    Ok(Shaped { row, auth, old_etag, created, was_enabled })
}

/// The body of [`put`], inside the caller's transaction.
async fn put_in(
    tx: &mut crate::store::Conn,
    dialect: crate::store::Dialect,
    cx: &Ctx<'_>,
    id: &str,
    input: DeviceInput,
    pre: &Precondition,
) -> Result<(Device, bool), DeviceError> {
    let current = rows::get(&mut *tx, id).await?;
    pre.check(id, current.as_ref())?;
    if let Some(Some(parent)) = &input.parent_id {
        if parent == id {
            return Err(DeviceError::Invalid("parent_id must not be the device itself".into()));
        }
        if !rows::exists(&mut *tx, parent).await? {
            return Err(DeviceError::Invalid(format!("parent device `{parent}` does not exist")));
        }
    }
    let imported = input.imported.clone();
    let Shaped { mut row, auth, old_etag, created, was_enabled } = shape(cx, id, current, input)?;
    if let (true, Some(imported)) = (created, imported) {
        adopt_owner(&mut *tx, &mut row, &imported).await?;
    }
    if created {
        rows::insert(&mut *tx, &row).await?;
        cx.audit(&mut *tx, dialect, "device.create", id).await?;
    } else {
        if !rows::replace(&mut *tx, &row, &old_etag).await? {
            return Err(DeviceError::PreconditionFailed);
        }
        cx.audit(&mut *tx, dialect, "device.update", id).await?;
        if was_enabled && row.status == "disabled" {
            crate::store::certificates::revoke_all_of_device(
                &mut *tx,
                id,
                "privilege_withdrawn",
                cx.now,
            )
            .await?;
        }
    }
    Ok((Device { row, auth }, created))
}

/// Records an imported device's owner (when its enrollment exists here) and creation time.
async fn adopt_owner(
    tx: &mut crate::store::Conn,
    row: &mut DeviceRow,
    imported: &Imported,
) -> Result<(), DeviceError> {
    if let Some(at) = imported.created_at {
        row.created_at = at;
    }
    let Some((kind, id)) = &imported.owner else { return Ok(()) };
    let exists = match kind.as_str() {
        "enrollment_group" => crate::store::enrollment::group(&mut *tx, id).await?.is_some(),
        "enrollment" => {
            id == &row.device_id
                && crate::store::enrollment::enrollment(&mut *tx, id).await?.is_some()
        }
        _ => false,
    };
    match (exists, imported.admin_if_missing) {
        (true, _) => {
            row.owner_kind.clone_from(kind);
            row.enrollment_group_id = (kind == "enrollment_group").then(|| id.clone());
        }
        (false, true) => {}
        (false, false) => {
            return Err(DeviceError::OwnerMissing(format!(
                "owner {kind} `{id}` does not exist here: create it first, or import with \
                 --owner admin"
            )))
        }
    }
    Ok(())
}

/// Deletes a device and revokes its certificates.
pub async fn delete(
    store: &Store,
    cx: &Ctx<'_>,
    id: &str,
    pre: &Precondition,
) -> Result<(), DeviceError> {
    let mut tx = store.begin().await?;
    let current = rows::get(&mut tx, id).await?.ok_or(DeviceError::NotFound)?;
    pre.check(id, Some(&current))?;
    if !rows::delete(&mut tx, id, &current.etag).await? {
        return Err(DeviceError::PreconditionFailed);
    }
    crate::store::certificates::revoke_all_of_device(&mut tx, id, "cessation_of_operation", cx.now)
        .await?;
    crate::store::bundles::cancel_for_device(&mut tx, id, cx.now).await?;
    cx.audit(&mut tx, store.dialect(), "device.delete", id).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

/// Which key to rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChoice {
    /// new primary
    Primary,
    /// new secondary
    Secondary,
    /// exchange primary and secondary
    Swap,
}

/// Rotates a device's SAS keys; the old key stops working at once.
pub async fn rotate_keys(
    store: &Store,
    cx: &Ctx<'_>,
    id: &str,
    which: KeyChoice,
    pre: &Precondition,
) -> Result<Device, DeviceError> {
    let mut tx = store.begin().await?;
    let row = rows::get(&mut tx, id).await?.ok_or(DeviceError::NotFound)?;
    pre.check(id, Some(&row))?;
    let old_etag = row.etag.clone();
    let mut device = open(cx.ring, row)?;
    let Authentication::Sas { primary, secondary } = device.auth else {
        return Err(DeviceError::Invalid("the device does not authenticate with SAS keys".into()));
    };
    let (primary, secondary) = match which {
        KeyChoice::Primary => (SasKey::generate(), secondary),
        KeyChoice::Secondary => (primary, SasKey::generate()),
        KeyChoice::Swap => (secondary, primary),
    };
    device.auth = Authentication::Sas { primary, secondary };
    apply_auth(&mut device.row, cx.ring, &device.auth);
    device.row.etag = random_hex(8);
    device.row.updated_at = cx.now;
    if !rows::replace(&mut tx, &device.row, &old_etag).await? {
        return Err(DeviceError::PreconditionFailed);
    }
    cx.audit(&mut tx, store.dialect(), "device.keys.rotate", id).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(device)
}
