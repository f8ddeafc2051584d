//! Intermediate rotation and server certificates for the fleet's brokers and gateways.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use ca::authority::{create_intermediate, create_intermediate_with, CaKeyAlgorithm, Issuer};
use ca::csr::{CsrPolicy, VerifiedCsr};
use ca::issue::{issue_server, ServerProfile};
use ca::{CsrError, PrivateKey};

use super::certificates::record;
use super::Ctx;
use crate::authority::{key_columns, Authority};
use crate::pkcs11::{Token, TokenError};
use crate::store::issuers::IssuerRow;
use crate::store::{certificates, Store, StoreError};

/// Lifetime of a new intermediate (capped by the root).
pub const INTERMEDIATE_SECS: i64 = 5 * 365 * 86_400;

/// Why the operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaAdminError {
    /// the root key is offline
    #[error("the root CA key file {0} is not available (moved offline?): rotation needs it")]
    RootKeyMissing(String),
    /// the root key does not belong to the stored root
    #[error("the root CA key file does not match the stored root certificate")]
    RootKeyMismatch,
    /// CSR rule
    #[error("CSR rejected: {0}")]
    Csr(#[from] CsrError),
    /// input
    #[error("{0}")]
    Invalid(String),
    /// the key's certificate was revoked for compromise
    #[error("the certificate of this key was revoked for compromise: send a CSR for a new key")]
    KeyCompromised,
    /// signing
    #[error(transparent)]
    Authority(#[from] ca::AuthorityError),
    /// signing
    #[error(transparent)]
    Issue(#[from] ca::IssueError),
    /// storage
    #[error(transparent)]
    Store(#[from] StoreError),
    /// the PKCS#11 token
    #[error(transparent)]
    Token(#[from] TokenError),
    /// the blocking pool failed
    #[error("signing task failed: {0}")]
    Join(String),
}

/// Creates a CA key in the token under a temporary label, lets `build` certify it, then names
/// it `provisiond-{kind}-{issuer_id}` (the id is the certificate's SKI, known only then).
pub fn create_in_token(
    token: &Arc<Token>,
    kind: &str,
    alg: CaKeyAlgorithm,
    build: impl FnOnce(Arc<dyn ca::Signer>) -> Result<Issuer, ca::AuthorityError>,
) -> Result<Issuer, CaAdminError> {
    let pending = format!("provisiond-pending-{}", super::random_hex(8));
    let signer = token.generate_ec(&pending, alg.scheme())?;
    let (scheme, public) = (ca::Signer::scheme(&signer), ca::Signer::public_key(&signer).to_vec());
    let issuer = build(Arc::new(signer))?;
    let label = format!("provisiond-{kind}-{}", issuer.id());
    token.relabel(&pending, &label)?;
    let signer = token.signer_for(&label, scheme, public);
    Ok(Issuer::with_signer(issuer.cert_der(), Arc::new(signer))?)
}

/// Creates a new intermediate under the root and makes it the active issuer. The root key is
/// the token's when the root row names a label, else read from `root_key_file`; the new key is
/// generated in `token` when one is given (`ca_key_store = "pkcs11"`: this is also how a
/// file-key deployment moves into the token), else in memory and sealed. The old intermediates
/// stay, so their certificates keep verifying and stay revocable. Returns the new issuer id.
pub async fn rotate_intermediate(
    store: &Store,
    cx: &Ctx<'_>,
    authority: &Authority,
    root_key_file: &Path,
    token: Option<&Arc<Token>>,
) -> Result<String, CaAdminError> {
    let root = match &authority.root().issuer {
        Some(root) => Issuer::with_signer(root.cert_der(), root.signer().clone())?,
        None => {
            let shown = root_key_file.display().to_string();
            let pem = zeroize::Zeroizing::new(
                std::fs::read_to_string(root_key_file)
                    .map_err(|_| CaAdminError::RootKeyMissing(shown.clone()))?,
            );
            let key = PrivateKey::from_pkcs8_pem(&pem).ok_or(CaAdminError::RootKeyMismatch)?;
            Issuer::from_der(&authority.root().cert_der, &key)
                .map_err(|_| CaAdminError::RootKeyMismatch)?
        }
    };
    let n = authority.entries().len();
    let now = cx.now;
    let token = token.cloned();
    let inter = tokio::task::spawn_blocking(move || {
        let name = format!("provisiond Intermediate CA {n}");
        match token {
            Some(token) => create_in_token(&token, "intermediate", CaKeyAlgorithm::P256, |s| {
                create_intermediate_with(&root, &name, s, now, INTERMEDIATE_SECS)
            }),
            None => {
                Ok(create_intermediate(&root, &name, CaKeyAlgorithm::P256, now, INTERMEDIATE_SECS)?)
            }
        }
    })
    .await
    .map_err(|e| CaAdminError::Join(e.to_string()))??;
    let id = inter.id();
    let (key_version, private_key, key_label) = key_columns(&inter, cx.ring);
    let mut tx = store.begin().await?;
    crate::store::issuers::deactivate_all(&mut tx).await?;
    crate::store::issuers::insert(
        &mut tx,
        &IssuerRow {
            id: id.clone(),
            cert_der: inter.cert_der().to_vec(),
            is_root: 0,
            active: 1,
            key_version,
            private_key,
            key_label,
            not_after: inter.not_after(),
            created_at: cx.now,
        },
    )
    .await?;
    cx.audit(&mut tx, store.dialect(), "ca.intermediate.rotate", &id).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(id)
}

/// A server certificate request.
pub struct ServerCertRequest {
    /// PEM CSR (CN free, requested SANs ignored)
    pub csr: Vec<u8>,
    /// DNS SANs
    pub dns_names: Vec<String>,
    /// IP SANs
    pub ip_addresses: Vec<IpAddr>,
    /// lifetime
    pub validity_days: i64,
}

/// Issues a serverAuth certificate for a broker or gateway.
pub async fn issue_server_certificate(
    store: &Store,
    cx: &Ctx<'_>,
    authority: &Authority,
    req: ServerCertRequest,
) -> Result<(ca::IssuedCertificate, String), CaAdminError> {
    let csr = VerifiedCsr::parse(&req.csr, &CsrPolicy::server())?;
    let cn = csr.common_name().unwrap_or("server").to_owned();
    let issuer = authority.active();
    let profile = ServerProfile {
        common_name: &cn,
        dns_names: &req.dns_names,
        ip_addresses: &req.ip_addresses,
        validity_secs: req.validity_days * 86_400,
    };
    let mut tx = store.begin().await?;
    if certificates::is_compromised(&mut tx, &csr.subject_key().fingerprint()).await? {
        return Err(CaAdminError::KeyCompromised);
    }
    let cert = issue_server(issuer, csr.subject_key(), &profile, cx.now)?;
    certificates::insert(&mut tx, &record(&cert, None, &issuer.id(), "server", cx.now)).await?;
    cx.audit(&mut tx, store.dialect(), "certificate.server.issue", &cert.serial).await?;
    tx.commit().await.map_err(StoreError::from)?;
    let chain = format!("{}{}", cert.pem(), issuer.cert_pem());
    Ok((cert, chain))
}

/// One CA of the hierarchy as the console shows it.
#[derive(Debug, Clone)]
pub struct IssuerInfo {
    /// lowercase hex SKI
    pub issuer_id: String,
    /// subject DN
    pub subject: String,
    /// notBefore
    pub not_before: i64,
    /// notAfter
    pub not_after: i64,
    /// the intermediate that issues now
    pub current: bool,
    /// the root
    pub root: bool,
    /// number of its current CRL (none before the first)
    pub crl_number: Option<i64>,
    /// nextUpdate of its current CRL
    pub crl_next_update: Option<i64>,
}

/// Every CA of the hierarchy with its CRL state, root last.
pub async fn issuers(store: &Store, authority: &Authority) -> Result<Vec<IssuerInfo>, StoreError> {
    let crls = crate::store::issuers::crl_states(&mut *store.conn().await?).await?;
    let active = authority.active_entry().id.clone();
    let mut out: Vec<IssuerInfo> = authority
        .entries()
        .iter()
        .map(|e| {
            let parsed = x509_parser::parse_x509_certificate(&e.cert_der)
                .ok()
                .map(|(_, c)| (c.subject().to_string(), c.validity().not_before.timestamp()));
            let crl = crls.iter().find(|(id, _, _)| *id == e.id);
            IssuerInfo {
                issuer_id: e.id.clone(),
                subject: parsed.as_ref().map(|p| p.0.clone()).unwrap_or_default(),
                not_before: parsed.map_or(0, |p| p.1),
                not_after: e.not_after,
                current: e.id == active,
                root: e.is_root,
                crl_number: crl.map(|c| c.1),
                crl_next_update: crl.map(|c| c.2),
            }
        })
        .collect();
    out.sort_by_key(|i| (i.root, !i.current, i.issuer_id.clone()));
    Ok(out)
}
