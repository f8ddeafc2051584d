//! Authentication and authorization: who is calling (`Principal`) and what they may do
//! (`Permission`). Credentials: SAS tokens of a policy (`skn=`), later operator JWTs, device
//! tokens and client certificates. Failed authentications are rate-limited per (principal,
//! address) and per address, never per principal alone.

pub mod enrollments;
pub mod jwt;
pub mod password;
pub mod permissions;
pub mod ratelimit;
pub mod sas;

pub use permissions::{Permission, PermissionSet};

/// Why a credential was refused (never says which part of a secret was wrong).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// The credential is not valid: bad signature, expired, unknown policy, wrong resource.
    #[error("invalid credential")]
    Invalid {
        /// the principal the credential claimed to be, for rate limiting and audit
        claimed: Option<String>,
    },
    /// No `Authorization` header.
    #[error("missing credential")]
    Missing,
    /// The scheme is not one this route accepts.
    #[error("unsupported authorization scheme")]
    UnsupportedScheme,
}

/// Limits of what a scoped principal can see.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Enrollment groups the principal may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_ids: Option<Vec<String>>,
    /// Device ids the principal may touch start with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id_prefix: Option<String>,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// policy or operator name
    pub name: String,
    /// what it may do
    pub permissions: PermissionSet,
    /// what it may see (None = everything)
    pub scope: Option<Scope>,
}

impl Scope {
    /// Whether a device (its id and the group that enrolled it) is inside this scope.
    pub fn covers_device(&self, device_id: &str, group: Option<&str>) -> bool {
        let prefix_ok = self.device_id_prefix.as_deref().is_none_or(|p| device_id.starts_with(p));
        let group_ok = self
            .enrollment_group_ids
            .as_ref()
            .is_none_or(|ids| group.is_some_and(|g| ids.iter().any(|i| i == g)));
        prefix_ok && group_ok
    }
}

impl Principal {
    /// Whether the principal holds `p` (directly or by implication).
    pub fn has(&self, p: Permission) -> bool {
        self.permissions.allows(p)
    }
}

impl Principal {
    /// Whether a device is within the principal's scope (unscoped principals see everything).
    pub fn sees_device(&self, device_id: &str, group: Option<&str>) -> bool {
        self.scope.as_ref().is_none_or(|s| s.covers_device(device_id, group))
    }

    /// The device-id prefix lists are filtered by, if any.
    pub fn device_prefix(&self) -> Option<&str> {
        self.scope.as_ref().and_then(|s| s.device_id_prefix.as_deref())
    }
}
