//! Public PKI: CA chain and CRLs.

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::problem::ApiError;
use super::respond::ts;
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
        CrlError::Revocation(ca::revocation::RevocationError::Sign(s)) => s.into(),
        other => ApiError::internal(other),
    }
}

fn ocsp_reply(der: Vec<u8>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/ocsp-response")
        .insert_header((actix_web::http::header::CACHE_CONTROL, "max-age=60, public"))
        .body(der)
}

async fn answer_ocsp(state: &AppState, der: &[u8]) -> Result<HttpResponse, ApiError> {
    let Ok(request) = ca::revocation::ParsedOcspRequest::parse(der) else {
        return Ok(ocsp_reply(ca::revocation::ocsp_malformed()));
    };
    let der = crate::usecase::revoke::ocsp(&state.store, &state.authority(), &request, state.now())
        .await?;
    Ok(ocsp_reply(der))
}

/// `POST /v1/ca/ocsp` (`application/ocsp-request`)
pub async fn ocsp_post(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    if body.len() > 16 * 1024 {
        return Ok(ocsp_reply(ca::revocation::ocsp_malformed()));
    }
    answer_ocsp(&state, &body).await
}

/// `GET /v1/ca/ocsp/{url-encoded base64 DER}` (RFC 6960 appendix A.1)
pub async fn ocsp_get(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    use base64::Engine as _;
    let raw = req.match_info().get("req").unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy().replace(' ', "+");
    let Ok(der) = base64::engine::general_purpose::STANDARD.decode(decoded.trim()) else {
        return Ok(ocsp_reply(ca::revocation::ocsp_malformed()));
    };
    answer_ocsp(&state, &der).await
}

/// `POST /v1/ca/intermediate/rotate`
pub async fn rotate_intermediate(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
    who: super::extract::Authenticated,
) -> Result<HttpResponse, ApiError> {
    let rc = super::respond::RequestCtx::new(&state, &req, &who);
    let authority = state.authority();
    let id = crate::usecase::intermediate::rotate_intermediate(
        &state.store,
        &rc.cx(&state),
        &authority,
        &state.config.root_key_path(),
        state.ca_token(),
    )
    .await?;
    state.reload_authority().await?;
    let now = state.now();
    Ok(HttpResponse::Created().json(serde_json::json!({
        "issuer_id": id,
        "certificate_chain": state.authority().chain_pem(now),
    })))
}

/// `POST /v1/ca/server-certificates` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerCertBody {
    csr: String,
    dns_names: Option<Vec<String>>,
    ip_addresses: Option<Vec<String>>,
    validity_days: Option<i64>,
}

/// `POST /v1/ca/server-certificates`
pub async fn server_certificate(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
    who: super::extract::Authenticated,
    body: web::Json<ServerCertBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let validity_days = body.validity_days.unwrap_or(365);
    if !(1..=3650).contains(&validity_days) {
        return Err(ApiError::BadRequest("validity_days must be between 1 and 3650".into()));
    }
    let dns_names = body.dns_names.unwrap_or_default();
    for name in &dns_names {
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
            });
        if !ok {
            return Err(ApiError::BadRequest(format!("`{name}` is not a valid DNS name")));
        }
    }
    let ip_addresses = body
        .ip_addresses
        .unwrap_or_default()
        .iter()
        .map(|ip| {
            ip.parse().map_err(|_| ApiError::BadRequest(format!("`{ip}` is not an IP address")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rc = super::respond::RequestCtx::new(&state, &req, &who);
    let request = crate::usecase::intermediate::ServerCertRequest {
        csr: body.csr.into_bytes(),
        dns_names,
        ip_addresses,
        validity_days,
    };
    let (cert, chain) = crate::usecase::intermediate::issue_server_certificate(
        &state.store,
        &rc.cx(&state),
        &state.authority(),
        request,
    )
    .await?;
    Ok(HttpResponse::Created().json(serde_json::json!({
        "serial": cert.serial,
        "certificate": cert.pem(),
        "certificate_chain": chain,
        "not_before": crate::clock::rfc3339(cert.not_before),
        "not_after": crate::clock::rfc3339(cert.not_after),
    })))
}

/// `GET /v1/ca/issuers`: every CA with its validity and CRL state (unscoped principals with
/// CertificateAdmin or RegistryRead).
pub async fn issuers(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let authority = state.authority();
    let items: Vec<_> = crate::usecase::intermediate::issuers(&state.store, &authority)
        .await?
        .into_iter()
        .map(|i| {
            serde_json::json!({
                "issuer_id": i.issuer_id, "subject": i.subject, "not_before": ts(i.not_before),
                "not_after": ts(i.not_after), "current": i.current, "root": i.root,
                "crl_number": i.crl_number, "crl_next_update": i.crl_next_update.map(ts),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({"items": items})))
}
