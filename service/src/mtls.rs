//! Client certificates. TLS *requests* a certificate but never requires one, and accepts any
//! chain at handshake time (after checking the handshake signature, i.e. possession of the
//! key): which trust anchor applies depends on the route (provisiond's CA for renewal and EST
//! re-enroll, a group's manufacturer CAs for attestation), so the application validates each
//! presented chain itself — path, validity, key usage — with rustls-webpki, and checks
//! revocation against its own registry.

use std::sync::Arc;

use actix_web::HttpRequest;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

/// Handshake-level verifier: offers client auth, never mandates it, verifies the handshake
/// signature, defers chain validation to the application.
#[derive(Debug)]
pub struct DeferredClientAuth {
    provider: Arc<CryptoProvider>,
}

impl DeferredClientAuth {
    /// With the process's crypto provider.
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self { provider }
    }
}

impl ClientCertVerifier for DeferredClientAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Validated per route by `validate` (different trust anchors per route).
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The chain a client presented during the handshake (leaf first).
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Vec<CertificateDer<'static>>);

/// Captures the peer chain of a new connection into its connection data.
pub fn on_connect(conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    if let Some(tls) = conn.downcast_ref::<Tls>() {
        let (_, session) = tls.get_ref();
        if let Some(certs) = session.peer_certificates() {
            ext.insert(PeerCertificates(certs.iter().map(|c| c.clone().into_owned()).collect()));
        }
    }
}

/// The presented chain of a request's connection, if any.
pub fn presented(req: &HttpRequest) -> Option<PeerCertificates> {
    req.conn_data::<PeerCertificates>().cloned()
}

/// A validated client certificate.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// leaf DER
    pub leaf: Vec<u8>,
    /// serial, canonical hex
    pub serial: String,
    /// subject CN
    pub common_name: Option<String>,
    /// subject DN, DER (EST re-enroll compares subjects)
    pub subject_der: Vec<u8>,
}

/// Why a presented chain was refused.
#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    /// no certificate presented
    #[error("no client certificate presented")]
    Missing,
    /// the chain does not lead to the trust anchor, is expired, or not for client auth
    #[error("client certificate is not valid for this route: {0}")]
    Invalid(String),
}

/// Validates `chain` (leaf first) against `anchors` (DER), with `intermediates` known to the
/// server added to the presented ones, at `now`, for TLS client authentication.
pub fn validate(
    chain: &[CertificateDer<'static>],
    anchors: &[Vec<u8>],
    intermediates: &[Vec<u8>],
    now: i64,
) -> Result<ClientIdentity, MtlsError> {
    let leaf = chain.first().ok_or(MtlsError::Missing)?;
    let anchor_ders: Vec<CertificateDer<'_>> =
        anchors.iter().map(|a| CertificateDer::from(a.as_slice())).collect();
    let trust: Vec<_> =
        anchor_ders.iter().filter_map(|a| webpki::anchor_from_trusted_cert(a).ok()).collect();
    let mut inter: Vec<CertificateDer<'_>> =
        chain[1..].iter().map(|c| CertificateDer::from(c.as_ref())).collect();
    inter.extend(intermediates.iter().map(|d| CertificateDer::from(d.as_slice())));
    let ee =
        webpki::EndEntityCert::try_from(leaf).map_err(|e| MtlsError::Invalid(e.to_string()))?;
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0) as u64));
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &trust,
        &inter,
        time,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| MtlsError::Invalid(e.to_string()))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| MtlsError::Invalid(e.to_string()))?;
    let common_name =
        cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok()).map(str::to_owned);
    let identity = ClientIdentity {
        leaf: leaf.to_vec(),
        serial: ca::issue::serial_hex(cert.raw_serial()),
        common_name,
        subject_der: cert.subject().as_raw().to_vec(),
    };
    Ok(identity)
}
