//! Public PKI: CA chain and CRLs.

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::problem::ApiError;
use crate::state::AppState;
use crate::usecase::crl::{self, CrlError};

/// `?format=` of the CRL routes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlQuery {
    format: Option<String>,
}

/// `GET /v1/ca/chain`: current intermediate first, root last.
pub async fn chain(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/pem-certificate-chain")
        .body(state.authority().chain_pem(state.now()))
}

/// `GET /v1/ca/crl`: the current intermediate's CRL.
pub async fn crl_current(
    state: web::Data<AppState>,
    q: web::Query<CrlQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = state.authority().active_entry().id.clone();
    crl_response(&state, &id, q.format.as_deref()).await
}

/// `GET /v1/ca/crl/{issuer_id}`
pub async fn crl_of(
    state: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<CrlQuery>,
) -> Result<HttpResponse, ApiError> {
    crl_response(&state, &path.into_inner(), q.format.as_deref()).await
}

/// `GET /v1/ca/crls.pem`: every live intermediate's CRL, for a broker's `crlfile`.
pub async fn crls_pem(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let authority = state.authority();
    let now = state.now();
    let mut out = String::new();
    for entry in authority.live_intermediates(now) {
        let der = crl::current(&state.store, entry, now, state.config.crl_validity_secs)
            .await
            .map_err(map_crl)?;
        out.push_str(&ca::authority::to_pem("X509 CRL", &der));
    }
    Ok(HttpResponse::Ok().content_type("application/x-pem-file").body(out))
}

async fn crl_response(
    state: &AppState,
    issuer_id: &str,
    format: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    let pem = match format {
        None | Some("der") => false,
        Some("pem") => true,
        Some(_) => return Err(ApiError::BadRequest("format must be `der` or `pem`".into())),
    };
    let authority = state.authority();
    let entry = authority.find(issuer_id).filter(|e| e.issuer.is_some()).ok_or_else(|| {
        ApiError::NotFound(format!("no CRL is published for issuer `{issuer_id}`"))
    })?;
    let der = crl::current(&state.store, entry, state.now(), state.config.crl_validity_secs)
        .await
        .map_err(map_crl)?;
    Ok(if pem {
        HttpResponse::Ok()
            .content_type("application/x-pem-file")
            .body(ca::authority::to_pem("X509 CRL", &der))
    } else {
        HttpResponse::Ok().content_type("application/pkix-crl").body(der)
    })
}

fn map_crl(e: CrlError) -> ApiError {
    match e {
        CrlError::NoKey => ApiError::NotFound("no CRL is published for this issuer".into()),
        CrlError::Store(s) => s.into(),
        other => ApiError::internal(other),
    }
}
