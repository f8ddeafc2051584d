//! The TLS certificate an instance serves with: a fresh P-256 key that never leaves memory, and a
//! serverAuth certificate from the active intermediate, recorded in `certificates` (so it can be
//! revoked like any other).

use std::net::IpAddr;

use ca::issue::{issue_server, ServerProfile};
use ca::{KeyType, PrivateKey};

use crate::authority::Authority;
use crate::store::certificates::CertificateRow;
use crate::store::{Store, StoreError};

/// Validity of an instance's own certificate (re-issued at every start).
const SERVER_CERT_SECS: i64 = 90 * 86_400;

/// The instance's credential.
pub struct ServerCredential {
    /// leaf then intermediate, DER
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 key
    pub key: PrivateKey,
}

/// Why the TLS credential could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ServerCertError {
    /// issuance failed
    #[error(transparent)]
    Issue(#[from] ca::IssueError),
    /// storage failed
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Issues this instance's certificate for `localhost`, `127.0.0.1`, `::1`, the host name and
/// `extra_names` (DNS names or IP literals).
pub async fn issue_for_instance(
    store: &Store,
    authority: &Authority,
    host_name: &str,
    extra_names: &[String],
    now: i64,
) -> Result<ServerCredential, ServerCertError> {
    let mut dns = vec!["localhost".to_owned()];
    let mut ips: Vec<IpAddr> = vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
    for name in std::iter::once(host_name).chain(extra_names.iter().map(String::as_str)) {
        match name.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) if !dns.iter().any(|d| d == name) && !name.is_empty() => {
                dns.push(name.to_owned())
            }
            Err(_) => {}
        }
    }
    let (key, public) = ca::issue::generate_key(KeyType::P256)?;
    let issuer = authority.active();
    let profile = ServerProfile {
        common_name: host_name,
        dns_names: &dns,
        ip_addresses: &ips,
        validity_secs: SERVER_CERT_SECS,
    };
    let cert = issue_server(issuer, &public, &profile, now)?;
    let mut conn = store.conn().await?;
    crate::store::certificates::insert(
        &mut conn,
        &CertificateRow {
            serial: cert.serial.clone(),
            device_id: None,
            issuer_id: issuer.id(),
            profile: "instance".into(),
            der: cert.der.clone(),
            not_before: cert.not_before,
            not_after: cert.not_after,
            revoked_at: None,
            revocation_reason: None,
            created_at: now,
        },
    )
    .await?;
    Ok(ServerCredential { chain: vec![cert.der, issuer.cert_der().to_vec()], key })
}
