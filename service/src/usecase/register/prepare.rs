//! The CPU stage of a registration: input checks, CSR proof of possession, signing, device
//! keys — no I/O, so batches run it in parallel off the async workers.

use super::*;

/// A certificate signed ahead of the transaction that records it.
pub(super) struct Issued {
    pub(super) cert: ca::issue::IssuedCertificate,
    pub(super) issuer_id: String,
    pub(super) issuer_der: Vec<u8>,
}

/// A request whose input checks and CSR proof of possession passed and whose certificate and
/// device keys are made: all the CPU work of a registration, no I/O, so batches can do it in
/// parallel off the async workers. The certificate is discarded if the transaction finds a
/// retry (the stored one is answered) or refuses the registration.
pub struct Prepared {
    pub(super) req: RegistrationRequest,
    pub(super) csr_hash: Option<String>,
    /// the CSR's rejection, answered only after the ownership and device checks (A30 order)
    pub(super) csr_error: Option<CsrError>,
    /// fingerprint of the certified public key
    pub(super) key_fingerprint: Option<String>,
    pub(super) issued: Option<Issued>,
    pub(super) keys: Option<(SasKey, SasKey)>,
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

impl Prepared {
    /// [`Prepared::into_registered`] for a registration that may be tried again (a copy).
    pub(super) fn to_registered(&self, now: i64, etag: String, operation_id: String) -> Registered {
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

    pub(super) fn into_registered(
        self,
        now: i64,
        etag: String,
        operation_id: String,
    ) -> Registered {
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
