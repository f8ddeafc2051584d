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
use super::{random_hex, Ctx};
use crate::authority::Authority;
use crate::seal::SealContext;
use crate::store::devices::{self as device_rows, DeviceRow};
use crate::store::enrollment::{self as rows, RegistrationRow};
use crate::store::{certificates, Store, StoreError};

/// Why a registration failed (nothing was stored).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// the id exists as a device outside this enrollment, or reprovisioning is denied
    #[error("{0}")]
    Conflict(String),
    /// the CSR broke a rule
    #[error("CSR rejected: {0}")]
    Csr(#[from] CsrError),
    /// provisioning is disabled for the enrollment
    #[error("provisioning is disabled for this enrollment")]
    Disabled,
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

/// A request whose input checks and CSR proof of possession passed (CPU work, no I/O).
pub struct Prepared {
    req: RegistrationRequest,
    csr: Option<VerifiedCsr>,
    csr_hash: Option<String>,
}

impl Prepared {
    /// The registration id.
    pub fn registration_id(&self) -> &str {
        &self.req.registration_id
    }
}

/// Validates `req` against `group` and verifies its CSR.
pub fn prepare(group: &Group, req: RegistrationRequest) -> Result<Prepared, RegisterError> {
    let id = req.registration_id.as_str();
    crate::ids::validate("registration id", id)
        .map_err(|e| RegisterError::Invalid(e.to_string()))?;
    group.admits(id)?;
    if !group.enabled {
        return Err(RegisterError::Disabled);
    }
    let csr = match &req.csr {
        Some(bytes) => Some(VerifiedCsr::parse(
            bytes,
            &CsrPolicy::device(id).with_allowed_keys(group.allowed_keys.iter().copied()),
        )?),
        None if group.credential.x509() => {
            return Err(RegisterError::Invalid(
                "this enrollment issues certificates: a csr is required".into(),
            ))
        }
        None => None,
    };
    let csr_hash = csr.as_ref().map(|c| hex::encode(Sha256::digest(c.der())));
    Ok(Prepared { req, csr, csr_hash })
}

/// Registers `req` under `group`. `consume_jti`: a one-time token consumed in the same
/// transaction (so a failed registration does not burn it, and two racing uses cannot both win).
pub async fn register(
    store: &Store,
    cx: &Ctx<'_>,
    authority: &Authority,
    base_url: &str,
    group: &Group,
    req: RegistrationRequest,
    consume_jti: Option<&str>,
) -> Result<Registered, RegisterError> {
    let prepared = prepare(group, req)?;
    let mut tx = store.begin().await?;
    let done = register_in(
        &mut tx,
        store.dialect(),
        cx,
        authority,
        base_url,
        group,
        prepared,
        consume_jti,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(done)
}

/// Registers a batch with group commit: one transaction for all lines, each line isolated in
/// a savepoint (a failing line leaves nothing behind and does not affect the others). Results
/// are returned only after the commit, in input order.
pub async fn register_batch(
    store: &Store,
    cx: &Ctx<'_>,
    authority: &Authority,
    base_url: &str,
    group: &Group,
    reqs: Vec<RegistrationRequest>,
) -> Vec<Result<Registered, RegisterError>> {
    let prepared: Vec<Result<Prepared, RegisterError>> =
        reqs.into_iter().map(|r| prepare(group, r)).collect();
    let mut tx = match store.begin().await {
        Ok(tx) => tx,
        Err(e) => {
            return prepared
                .into_iter()
                .map(|_| Err(RegisterError::Store(unavailable(&e))))
                .collect()
        }
    };
    let mut results = Vec::with_capacity(prepared.len());
    for p in prepared {
        let p = match p {
            Ok(p) => p,
            Err(e) => {
                results.push(Err(e));
                continue;
            }
        };
        let mut sp = match sqlx::Connection::begin(&mut *tx).await {
            Ok(sp) => sp,
            Err(e) => {
                results.push(Err(RegisterError::Store(e.into())));
                continue;
            }
        };
        match register_in(&mut sp, store.dialect(), cx, authority, base_url, group, p, None).await {
            Ok(r) => match sp.commit().await {
                Ok(()) => results.push(Ok(r)),
                Err(e) => results.push(Err(RegisterError::Store(e.into()))),
            },
            Err(e) => {
                let _ = sp.rollback().await;
                results.push(Err(e));
            }
        }
    }
    if let Err(e) = tx.commit().await {
        let e: StoreError = e.into();
        return results
            .into_iter()
            .map(|r| r.and_then(|_| Err(RegisterError::Store(unavailable(&e)))))
            .collect();
    }
    results
}

fn unavailable(e: &StoreError) -> StoreError {
    tracing::warn!(error = %e, "batch transaction failed");
    StoreError::Unavailable(sqlx::Error::PoolClosed)
}

#[allow(clippy::too_many_arguments)]
async fn register_in(
    tx: &mut sqlx::AnyConnection,
    dialect: crate::store::Dialect,
    cx: &Ctx<'_>,
    authority: &Authority,
    base_url: &str,
    group: &Group,
    prepared: Prepared,
    consume_jti: Option<&str>,
) -> Result<Registered, RegisterError> {
    let Prepared { req, csr, csr_hash } = prepared;
    let id = req.registration_id.as_str();
    let group_ref = (!group.individual).then(|| group.id.clone());
    if let Some(jti) = consume_jti {
        if !rows::consume_token(&mut *tx, jti, &group.id, cx.now).await? {
            return Err(RegisterError::TokenUsed);
        }
    }
    let existing_device = device_rows::get(&mut *tx, id).await?;
    if let Some(d) = &existing_device {
        let same_enrollment = d.enrollment_group_id == group_ref
            || (group.individual && d.enrollment_group_id.is_none());
        if !same_enrollment {
            return Err(RegisterError::Conflict(format!(
                "`{id}` already exists as a device outside this enrollment"
            )));
        }
    }
    let previous = rows::registration(&mut *tx, id).await?;
    if let (Some(prev), Some(device)) = (&previous, &existing_device) {
        if prev.csr_sha256 == csr_hash && prev.group_id == group_ref && consume_jti.is_none() {
            // A retry: answer with what was issued, store nothing.
            let chain = match &prev.serial {
                Some(serial) => {
                    let cert = certificates::get(&mut *tx, serial).await?;
                    let issuer = cert.as_ref().and_then(|c| authority.find(&c.issuer_id));
                    match (cert, issuer) {
                        (Some(c), Some(i)) => vec![c.der, i.cert_der.clone()],
                        _ => Vec::new(),
                    }
                }
                None => Vec::new(),
            };
            return Ok(Registered {
                device_id: id.to_owned(),
                chain,
                device_keys: group.credential.sas().then(|| group.device_keys(id)),
                created: false,
                operation_id: prev.operation_id.clone(),
                created_at: prev.created_at,
                updated_at: prev.updated_at,
                etag: device.etag.clone(),
                payload: prev.payload.as_deref().and_then(|p| serde_json::from_str(p).ok()),
            });
        }
        if group.reprovisioning == Reprovisioning::Deny {
            return Err(RegisterError::Conflict(format!(
                "`{id}` is already registered and this enrollment denies reprovisioning"
            )));
        }
    }

    // Device row: created, or updated per the reprovisioning policy.
    let keys = group.credential.sas().then(|| group.device_keys(id));
    let reset = existing_device.is_none() || group.reprovisioning == Reprovisioning::Reissue;
    let mut device = existing_device.clone().unwrap_or_else(|| DeviceRow {
        device_id: id.to_owned(),
        status: "enabled".into(),
        status_reason: None,
        auth_type: String::new(),
        key_version: None,
        primary_key: None,
        secondary_key: None,
        primary_thumbprint: None,
        secondary_thumbprint: None,
        etag: String::new(),
        generation_id: random_hex(8),
        tags: "{}".into(),
        parent_id: None,
        enrollment_group_id: group_ref.clone(),
        created_at: cx.now,
        updated_at: cx.now,
    });
    if reset {
        let mut tags = group.initial_tags.clone();
        if let Some(extra) = req.tags {
            tags.extend(extra);
        }
        device.tags = Value::Object(tags).to_string();
    }
    match &keys {
        Some((p, s)) => {
            device.auth_type = "sas".into();
            device.key_version = Some(i64::from(cx.ring.current_version()));
            device.primary_key = Some(cx.ring.seal(
                SealContext { table: "devices", column: "primary_key", row_id: id },
                p.expose_secret(),
            ));
            device.secondary_key = Some(cx.ring.seal(
                SealContext { table: "devices", column: "secondary_key", row_id: id },
                s.expose_secret(),
            ));
        }
        None => {
            device.auth_type = "x509_ca".into();
            (device.key_version, device.primary_key, device.secondary_key) = (None, None, None);
        }
    }
    let old_etag = device.etag.clone();
    device.etag = random_hex(8);
    device.updated_at = cx.now;
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

    // Certificate.
    let mut chain = Vec::new();
    let mut serial = None;
    if let Some(csr) = &csr {
        if let (Some(prev), Reprovisioning::Reissue) = (&previous, group.reprovisioning) {
            if let Some(old) = &prev.serial {
                certificates::revoke(&mut *tx, old, "superseded", cx.now).await?;
            }
        }
        let issuer = authority.active();
        let urls = RevocationUrls { base_url: Some(base_url.to_owned()) };
        let profile = DeviceProfile {
            device_id: id,
            validity_secs: group.validity_days.max(1) * 86_400,
            urls: &urls,
        };
        let cert = issue_device(issuer, csr, &profile, cx.now)?;
        certificates::insert(&mut *tx, &record(&cert, Some(id), &issuer.id(), "device", cx.now))
            .await?;
        serial = Some(cert.serial.clone());
        chain = vec![cert.der, issuer.cert_der().to_vec()];
    }
    let operation_id = previous
        .as_ref()
        .map_or_else(|| format!("4.{}", random_hex(12)), |p| p.operation_id.clone());
    let created_at = previous.as_ref().map_or(cx.now, |p| p.created_at);
    let payload_text = req.payload.as_ref().map(Value::to_string);
    rows::upsert_registration(
        &mut *tx,
        &RegistrationRow {
            registration_id: id.to_owned(),
            group_id: group_ref,
            csr_sha256: csr_hash,
            serial,
            operation_id: operation_id.clone(),
            payload: payload_text,
            created_at,
            updated_at: cx.now,
        },
    )
    .await?;
    cx.audit(&mut *tx, dialect, "registration.create", id).await?;
    Ok(Registered {
        device_id: id.to_owned(),
        chain,
        device_keys: keys,
        created: true,
        operation_id,
        created_at,
        updated_at: cx.now,
        etag: device.etag,
        payload: req.payload,
    })
}
