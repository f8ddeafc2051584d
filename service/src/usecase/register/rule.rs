//! THE rule for one registration, inside the caller's transaction: ownership, one-time tokens,
//! compromised keys, disabled devices, reprovisioning, then the rows; and the reads of a stored
//! registration.

use super::*;

pub(super) fn new_operation_id() -> String {
    format!("4.{}", random_hex(12))
}

/// A device row for a first registration, owned by its enrollment, before [`shape_device`].
pub(super) fn blank_device(id: &str, group: &Group, now: i64) -> DeviceRow {
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
pub(super) fn shape_device(
    device: &mut DeviceRow,
    cx: &Ctx<'_>,
    group: &Group,
    p: &Prepared,
    reset: bool,
) {
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

/// THE rule for one registration, in the transaction that stores it (every door, every batch
/// line that is not a plain first registration): checks in the order of [`RegisterError`] on
/// the rows this transaction read, then stores the device, certificate, registration record
/// and audit row.
pub(super) async fn register_in(
    tx: &mut crate::store::Conn,
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

/// The stored registration of `id` as `group` may read it (DPS operation and registration
/// status), and whether its device is enabled. A one-time token (`jti`) reads only the id it
/// registered; an enrollment reads only while it owns the device (not after a delete and an
/// admin re-create, say).
pub async fn stored(
    store: &Store,
    authority: &Authority,
    group: &Group,
    jti: Option<&str>,
    id: &str,
) -> Result<Option<(Registered, bool)>, RegisterError> {
    let mut conn = store.conn().await?;
    if let Some(jti) = jti {
        let used_for = rows::token_used_for(&mut conn, jti).await?;
        if used_for.as_deref() != Some(id) {
            return Err(RegisterError::TokenNotForThisId);
        }
    }
    let Some(reg) = rows::registration(&mut conn, id).await? else { return Ok(None) };
    let Some(device) = device_rows::get(&mut conn, id).await? else { return Ok(None) };
    if !owned_by(&device, group) {
        return Ok(None);
    }
    let chain = match &reg.serial {
        Some(serial) => stored_chain(&mut conn, authority, serial).await?,
        None => Vec::new(),
    };
    let registered = Registered {
        device_id: id.to_owned(),
        chain,
        device_keys: None,
        created: false,
        operation_id: reg.operation_id,
        created_at: reg.created_at,
        updated_at: reg.updated_at,
        etag: device.etag,
        payload: reg.payload.as_deref().and_then(|p| serde_json::from_str(p).ok()),
    };
    Ok(Some((registered, device.status == "enabled")))
}

/// The chain (leaf, issuer) of a stored certificate, empty when it or its issuer is gone.
pub async fn stored_chain(
    conn: &mut crate::store::Conn,
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
