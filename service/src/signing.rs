//! CA signatures off the async workers, and the JWS of audit checkpoints.
//!
//! A signature may go to a PKCS#11 token and take milliseconds (or wait for the token), so
//! every CA signature made while serving runs on tokio's blocking pool, never on an actix
//! worker; the PKCS#11 session pool is sized to that pool.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Serialize;

use crate::http::problem::ApiError;

/// Runs `f` (which signs) on the blocking pool.
pub async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(ApiError::internal)
}

/// A compact JWS over `claims` by `issuer` (`alg` after its key, `kid` = issuer id).
pub async fn jws(issuer: &ca::Issuer, claims: &impl Serialize) -> Result<String, ApiError> {
    let header = serde_json::json!({
        "typ": "JWT", "alg": issuer.signer().scheme().jws_alg(), "kid": issuer.id(),
    });
    let payload = serde_json::to_vec(claims).map_err(ApiError::internal)?;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signer = issuer.signer().clone();
    let message = input.clone();
    let signature = blocking(move || signer.sign_jws(message.as_bytes())).await??;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// Runs `f` with `entry`'s issuer where a signature may be made: inline for keys in memory
/// (a few microseconds), on the blocking pool for keys in a token.
pub async fn on_signer<T, E, F>(
    entry: std::sync::Arc<crate::authority::CaEntry>,
    f: F,
) -> Result<T, E>
where
    F: FnOnce(&ca::Issuer) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<ca::SignError> + Send + 'static,
{
    let missing = |id: &str| E::from(ca::SignError::KeyMissing(format!("CA {id}")));
    let in_token = match entry.issuer.as_ref() {
        Some(issuer) => issuer.signer().key_label().is_some(),
        None => return Err(missing(&entry.id)),
    };
    if !in_token {
        return match entry.issuer.as_ref() {
            Some(issuer) => f(issuer),
            None => Err(missing(&entry.id)),
        };
    }
    tokio::task::spawn_blocking(move || match entry.issuer.as_ref() {
        Some(issuer) => f(issuer),
        None => Err(missing(&entry.id)),
    })
    .await
    .unwrap_or_else(|e| Err(E::from(ca::SignError::Failed(format!("signing task: {e}")))))
}

/// A device certificate (default lifetime) for `key` by the active intermediate (see
/// [`on_signer`]).
pub async fn issue_device(
    authority: &crate::authority::Authority,
    key: &ca::csr::SubjectKey,
    (device_id, base_url): (&str, &str),
    now: i64,
) -> Result<ca::IssuedCertificate, ca::IssueError> {
    let validity_secs = crate::usecase::certificates::DEFAULT_VALIDITY_SECS;
    let (key, device_id, base_url) = (key.clone(), device_id.to_owned(), base_url.to_owned());
    on_signer(authority.active_shared(), move |issuer| {
        let urls = ca::issue::RevocationUrls { base_url: Some(base_url) };
        let profile =
            ca::issue::DeviceProfile { device_id: &device_id, validity_secs, urls: &urls };
        ca::issue::issue_device_for_key(issuer, &key, &profile, now)
    })
    .await
}
