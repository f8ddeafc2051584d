//! Authentication and authorization: who is calling (`Principal`) and what they may do
//! (`Permission`). Credentials: SAS tokens of a policy (`skn=`), later operator JWTs, device
//! tokens and client certificates. Failed authentications are rate-limited per (principal,
//! address) and per address, never per principal alone.

pub mod device;
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
    /// Checks a scope as a policy stores it: `{}` names nothing and is refused (an absent or
    /// null scope is how a policy says "unscoped").
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.enrollment_group_ids.is_none() && self.device_id_prefix.is_none() {
            return Err("scope must name enrollment_group_ids and/or device_id_prefix (omit it, or send null, for an unscoped policy)");
        }
        Ok(())
    }

    /// Whether a device id has the scope's prefix (every id when there is none).
    pub fn admits_id(&self, device_id: &str) -> bool {
        self.device_id_prefix.as_deref().is_none_or(|p| device_id.starts_with(p))
    }

    /// Whether a device is inside this scope: its id has the prefix and, with group ids, it is
    /// owned by one of those groups (`owner_group`: the group that owns it, if a group does).
    pub fn covers_device(&self, device_id: &str, owner_group: Option<&str>) -> bool {
        let group_ok = self
            .enrollment_group_ids
            .as_ref()
            .is_none_or(|ids| owner_group.is_some_and(|g| ids.iter().any(|i| i == g)));
        self.admits_id(device_id) && group_ok
    }

    /// Whether an enrollment group (as an object: read, change, delete, mint tokens) is inside
    /// this scope: only a scope that lists it.
    pub fn covers_group(&self, group_id: &str) -> bool {
        self.enrollment_group_ids.as_ref().is_some_and(|ids| ids.iter().any(|i| i == group_id))
    }

    /// Whether an individual enrollment is inside this scope: a group-scoped principal sees
    /// none; otherwise its registration id must have the prefix.
    pub fn covers_enrollment(&self, registration_id: &str) -> bool {
        self.enrollment_group_ids.is_none() && self.admits_id(registration_id)
    }

    /// Whether registrations through a group may be made: a scope with group ids admits its
    /// groups, one without admits every group (its prefix then limits the ids).
    pub fn admits_registrations_of(&self, group_id: &str) -> bool {
        self.enrollment_group_ids.is_none() || self.covers_group(group_id)
    }
}

impl Principal {
    /// Whether the principal holds `p` (directly or by implication).
    pub fn has(&self, p: Permission) -> bool {
        self.permissions.allows(p)
    }
}

impl Principal {
    /// Whether the principal is limited to a scope.
    pub fn is_scoped(&self) -> bool {
        self.scope.is_some()
    }

    /// Whether a device is within the principal's scope (unscoped principals see everything).
    pub fn sees_device(&self, device_id: &str, owner_group: Option<&str>) -> bool {
        self.scope.as_ref().is_none_or(|s| s.covers_device(device_id, owner_group))
    }

    /// Whether an enrollment group is within the principal's scope.
    pub fn sees_group(&self, group_id: &str) -> bool {
        self.scope.as_ref().is_none_or(|s| s.covers_group(group_id))
    }

    /// Whether an individual enrollment is within the principal's scope.
    pub fn sees_enrollment(&self, registration_id: &str) -> bool {
        self.scope.as_ref().is_none_or(|s| s.covers_enrollment(registration_id))
    }

    /// The device-id prefix lists are filtered by, if any.
    pub fn device_prefix(&self) -> Option<&str> {
        self.scope.as_ref().and_then(|s| s.device_id_prefix.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(groups: Option<&[&str]>, prefix: Option<&str>) -> Scope {
        Scope {
            enrollment_group_ids: groups.map(|g| g.iter().map(|s| (*s).to_owned()).collect()),
            device_id_prefix: prefix.map(str::to_owned),
        }
    }

    #[test]
    fn scopes_are_sets_of_objects() {
        let by_prefix = scope(None, Some("line1-"));
        let by_group = scope(Some(&["g1"]), None);
        let by_both = scope(Some(&["g1"]), Some("line1-"));
        let cases = [
            // (scope, device id, owner group, covers device, covers group g1, covers enrollment)
            (&by_prefix, "line1-a", None, true, false, true),
            (&by_prefix, "line2-a", Some("g1"), false, false, false),
            (&by_group, "x", Some("g1"), true, true, false),
            (&by_group, "x", None, false, true, false),
            (&by_group, "x", Some("g2"), false, true, false),
            (&by_both, "line1-a", Some("g1"), true, true, false),
            (&by_both, "line2-a", Some("g1"), false, true, false),
            (&by_both, "line1-a", None, false, true, false),
        ];
        for (i, (s, id, owner, dev, grp, enr)) in cases.into_iter().enumerate() {
            assert_eq!(s.covers_device(id, owner), dev, "case {i}: device");
            assert_eq!(s.covers_group("g1"), grp, "case {i}: group");
            assert_eq!(s.covers_enrollment(id), enr, "case {i}: enrollment");
        }
        assert!(by_prefix.admits_registrations_of("any"));
        assert!(!by_group.admits_registrations_of("g2"));
        assert!(scope(Some(&[]), None).validate().is_ok());
        assert!(!scope(Some(&[]), None).covers_group("g1"), "[] admits no group");
        assert!(scope(None, Some("")).covers_device("anything", None), "\"\" admits every id");
        assert!(scope(None, None).validate().is_err(), "{{}} is refused");
    }
}
