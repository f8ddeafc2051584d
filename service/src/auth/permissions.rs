//! Permission names (DESIGN.md) and their implications.

use std::collections::BTreeSet;

/// A permission of a policy or operator role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Permission {
    /// Read the audit trail.
    AuditRead,
    /// Issue bundles.
    BundleCreate,
    /// Revoke certificates, rotate the intermediate, issue server certificates.
    CertificateAdmin,
    /// Mint device tokens.
    DeviceConnect,
    /// Register devices through an enrollment group (factory lines).
    Enroll,
    /// Read enrollment configuration.
    EnrollmentRead,
    /// Change enrollment configuration (implies EnrollmentRead).
    EnrollmentWrite,
    /// Manage policies and operators.
    PolicyAdmin,
    /// Read the registry.
    RegistryRead,
    /// Change the registry (implies RegistryRead).
    RegistryReadWrite,
    /// Verify device tokens, read CRL/OCSP (brokers, backends).
    ServiceConnect,
}

impl Permission {
    /// Every permission, in DESIGN.md order.
    pub const ALL: [Permission; 11] = [
        Permission::RegistryRead,
        Permission::RegistryReadWrite,
        Permission::ServiceConnect,
        Permission::DeviceConnect,
        Permission::EnrollmentRead,
        Permission::EnrollmentWrite,
        Permission::Enroll,
        Permission::BundleCreate,
        Permission::CertificateAdmin,
        Permission::AuditRead,
        Permission::PolicyAdmin,
    ];

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::AuditRead => "AuditRead",
            Permission::BundleCreate => "BundleCreate",
            Permission::CertificateAdmin => "CertificateAdmin",
            Permission::DeviceConnect => "DeviceConnect",
            Permission::Enroll => "Enroll",
            Permission::EnrollmentRead => "EnrollmentRead",
            Permission::EnrollmentWrite => "EnrollmentWrite",
            Permission::PolicyAdmin => "PolicyAdmin",
            Permission::RegistryRead => "RegistryRead",
            Permission::RegistryReadWrite => "RegistryReadWrite",
            Permission::ServiceConnect => "ServiceConnect",
        }
    }

    /// Parses a wire name; Azure's `RegistryWrite` is an alias of `RegistryReadWrite`.
    pub fn parse(name: &str) -> Option<Self> {
        if name == "RegistryWrite" {
            return Some(Permission::RegistryReadWrite);
        }
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// A set of permissions with the implications of DESIGN.md applied on lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PermissionSet(BTreeSet<Permission>);

impl PermissionSet {
    /// All permissions (the `owner` policy).
    pub fn all() -> Self {
        Self(Permission::ALL.into_iter().collect())
    }

    /// Parses wire names; returns the first unknown name as the error.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        names
            .into_iter()
            .map(|n| Permission::parse(n).ok_or_else(|| n.to_owned()))
            .collect::<Result<BTreeSet<_>, _>>()
            .map(Self)
    }

    /// Whether `p` is granted, directly or implied.
    pub fn allows(&self, p: Permission) -> bool {
        self.0.contains(&p)
            || (p == Permission::RegistryRead && self.0.contains(&Permission::RegistryReadWrite))
            || (p == Permission::EnrollmentRead && self.0.contains(&Permission::EnrollmentWrite))
    }

    /// Wire names, sorted in DESIGN.md order.
    pub fn names(&self) -> Vec<&'static str> {
        Permission::ALL.into_iter().filter(|p| self.0.contains(p)).map(Permission::as_str).collect()
    }

    /// The permissions.
    pub fn iter(&self) -> impl Iterator<Item = Permission> + '_ {
        self.0.iter().copied()
    }
}

impl FromIterator<Permission> for PermissionSet {
    fn from_iter<T: IntoIterator<Item = Permission>>(iter: T) -> Self {
        Self(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_and_implications() {
        assert_eq!(Permission::parse("RegistryWrite"), Some(Permission::RegistryReadWrite));
        let rw: PermissionSet = [Permission::RegistryReadWrite].into_iter().collect();
        assert!(rw.allows(Permission::RegistryRead));
        let ew: PermissionSet = [Permission::EnrollmentWrite].into_iter().collect();
        assert!(ew.allows(Permission::EnrollmentRead));
        assert!(!ew.allows(Permission::Enroll));
        assert_eq!(PermissionSet::parse(["RegistryRead", "Bogus"]), Err("Bogus".into()));
        assert_eq!(PermissionSet::all().names().len(), 11);
    }
}
