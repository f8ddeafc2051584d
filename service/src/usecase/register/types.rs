//! What a registration asks for, what it answers and why it fails: the one request, result and
//! error every door renders.

use super::*;

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
    /// a one-time token asked about an id it did not register
    #[error("this enrollment token did not register this id")]
    TokenNotForThisId,
    /// signing failed
    #[error(transparent)]
    Issue(#[from] ca::IssueError),
    /// storage
    #[error(transparent)]
    Store(#[from] StoreError),
    /// a fault of the server, not of the request (a sealed key that does not open, a signer
    /// that fails): never answered as a 4xx
    #[error(transparent)]
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl From<GroupError> for RegisterError {
    fn from(e: GroupError) -> Self {
        match e {
            GroupError::Store(s) => RegisterError::Store(s),
            GroupError::NotFound => RegisterError::NotFound,
            GroupError::Conflict(m) => RegisterError::Conflict(m),
            GroupError::Invalid(m) => RegisterError::Invalid(m),
            fault @ (GroupError::Seal(_) | GroupError::Sign) => {
                RegisterError::Internal(Box::new(fault))
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealing_or_signing_fault_is_the_servers_not_a_bad_request() {
        use actix_web::ResponseError as _;
        for fault in [GroupError::Sign, GroupError::Seal(crate::seal::SealError::Truncated)] {
            let e = RegisterError::from(fault);
            assert!(matches!(e, RegisterError::Internal(_)), "{e:?}");
            let status = crate::http::problem::ApiError::from(e).status_code();
            assert_eq!(status.as_u16(), 500);
        }
        let refused = RegisterError::from(GroupError::Invalid("pattern".into()));
        assert!(matches!(refused, RegisterError::Invalid(_)));
    }
}
