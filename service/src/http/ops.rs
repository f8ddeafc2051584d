//! Operations endpoints: health, readiness, metrics, the OpenAPI document.

use std::sync::OnceLock;

use actix_web::{web, HttpResponse};

use super::problem::ApiError;
use crate::state::AppState;

/// The contract, embedded at build time.
pub const OPENAPI_YAML: &str = include_str!("../../../openapi/openapi.yaml");

/// `GET /healthz`
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: 503 problem when the database does not answer, or when the PKCS#11 token
/// (if one is configured) is unreachable or lost the active CA key.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.store.ping().await.is_err() {
        return Err(ApiError::Unavailable);
    }
    if let Some(token) = state.token.clone() {
        let label = state.authority().active_entry().key_label.clone();
        let checked = crate::signing::blocking(move || token.check(label.as_deref())).await?;
        if let Err(e) = checked {
            tracing::warn!(error = %e, "readiness: PKCS#11 token");
            return Err(ApiError::KeyStoreUnavailable(
                "the CA key store (PKCS#11 token) is unreachable".into(),
            ));
        }
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ok"})))
}

/// `GET /metrics`
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

/// The OpenAPI document as JSON (converted once).
pub fn openapi_json() -> Result<&'static str, ApiError> {
    static DOC: OnceLock<Result<String, String>> = OnceLock::new();
    DOC.get_or_init(|| {
        serde_yaml::from_str::<serde_json::Value>(OPENAPI_YAML)
            .map(|v| v.to_string())
            .map_err(|e| e.to_string())
    })
    .as_deref()
    .map_err(|e| ApiError::internal(std::io::Error::other(e.clone())))
}

/// `GET /openapi.json`
pub async fn openapi() -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().content_type("application/json").body(openapi_json()?))
}
