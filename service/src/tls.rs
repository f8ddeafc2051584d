//! rustls server configuration: TLS 1.2 and 1.3 only, ring provider, leaf + intermediate.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::usecase::server_cert::ServerCredential;

/// Builds the server configuration for `cred`.
pub fn server_config(cred: &ServerCredential) -> Result<ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        cred.chain.iter().map(|der| CertificateDer::from(der.clone())).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cred.key.expose_secret().to_vec()));
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(Arc::new(crate::mtls::DeferredClientAuth::new(provider.clone())))
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The MQTT endpoint's configuration: the same certificate and client-certificate handling, no
/// ALPN (MQTT clients on 8883 offer none, or `mqtt`/`x-amzn-mqtt-ca`, which must not fail the
/// handshake).
pub fn mqtt_config(https: &ServerConfig) -> ServerConfig {
    let mut config = https.clone();
    config.alpn_protocols = Vec::new();
    config
}
