//! Device-side registration: `POST /v1/registrations/{registration_id}` and the Azure
//! DPS-compatible device API under `/{id_scope}/registrations/…`.
//!
//! Devices attest with (a) a SAS token signed with an individual enrollment key or a key derived
//! from an enabled `symmetric_key` group, (b) a one-time enrollment JWT (`Bearer`), consumed in
//! the registration's own transaction. DPS routes answer DPS's error body instead of
//! problem+json.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::enrollment::registration_json;
use super::extract::client_ip;
use super::problem::ApiError;
use super::respond::{path_id, secret_json};
use crate::auth::device::{self, Attested};
use crate::auth::AuthError;
use crate::dps;
use crate::state::AppState;
use crate::usecase::groups::Group;
use crate::usecase::register::{Registered, RegistrationRequest};

async fn attest(
    state: &AppState,
    req: &HttpRequest,
    resource: &str,
    registration_id: &str,
) -> Result<Attested, AuthError> {
    let header = req.headers().get(header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    let chain = crate::mtls::presented(req);
    let chain = chain.as_ref().map(|c| c.0.as_slice());
    device::attest(state, header, chain, resource, registration_id).await
}

/// Manufacturer-certificate attestation of a request's connection (see
/// [`device::attest_chain`]). `None` when no certificate was presented.
pub async fn attest_x509(
    state: &AppState,
    req: &HttpRequest,
    registration_id: &str,
) -> Option<Result<std::sync::Arc<Group>, AuthError>> {
    let chain = crate::mtls::presented(req)?;
    Some(device::attest_chain(state, &chain.0, registration_id).await)
}

/// Runs a registration for an attested device through `door` (the metric label) and counts it.
pub(crate) async fn run_registration(
    state: &AppState,
    req: &HttpRequest,
    door: &'static str,
    group: impl Into<std::sync::Arc<Group>>,
    jti: Option<String>,
    r: RegistrationRequest,
) -> Result<Registered, ApiError> {
    crate::dps::register_device(state, client_ip(req), door, group.into(), jti, r).await
}

/// `POST /v1/registrations/{registration_id}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfRegistrationBody {
    registration_id: Option<String>,
    csr: Option<String>,
}

/// `POST /v1/registrations/{registration_id}`
pub async fn self_register(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<SelfRegistrationBody>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&req, "registration_id", "registration id")?;
    let resource = format!("{}/registrations/{id}", state.config.host_name);
    let attested = match attest(&state, &req, &resource, &id).await {
        Ok(a) => a,
        Err(e) => return Err(super::extract::refuse(&state, &req, e).await),
    };
    let body = body.into_inner();
    if body.registration_id.as_deref().is_some_and(|b| b != id) {
        return Err(ApiError::BadRequest("registration_id in the body must equal the path".into()));
    }
    let r = run_registration(
        &state,
        &req,
        "self",
        attested.group,
        attested.jti,
        RegistrationRequest {
            registration_id: id,
            csr: body.csr.map(String::into_bytes),
            tags: None,
            payload: None,
            held: None,
        },
    )
    .await?;
    let status = if r.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(secret_json(status, &registration_json(&r)))
}

// ---- Azure DPS-compatible device API (the operations live in `crate::dps`) ----

fn dps_response(answer: dps::Answer) -> HttpResponse {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = HttpResponse::build(status);
    if status.is_success() {
        resp.insert_header((header::CACHE_CONTROL, "no-store"));
    }
    if let Some(s) = answer.retry_after {
        resp.insert_header((header::RETRY_AFTER, s.to_string()));
    }
    resp.json(answer.body)
}

/// A DPS error answer: `{"errorCode", "trackingId", "message", "timestampUtc"}`.
pub(crate) fn dps_error(status: StatusCode, code: u32, message: &str) -> HttpResponse {
    dps_response(dps::error(status.as_u16(), code, message))
}

struct DpsPath {
    registration_id: String,
}

async fn dps_auth(
    state: &AppState,
    req: &HttpRequest,
) -> Result<(DpsPath, Attested), HttpResponse> {
    let scope = req.match_info().get("id_scope").unwrap_or_default();
    let Ok(id) = path_id(req, "registration_id", "registration id") else {
        return Err(dps_error(StatusCode::BAD_REQUEST, 400_004, "invalid registration id"));
    };
    if scope != state.config.id_scope {
        return Err(dps_error(StatusCode::NOT_FOUND, 404_001, "unknown ID scope"));
    }
    let resource = format!("{scope}/registrations/{id}");
    match attest(state, req, &resource, &id).await {
        Ok(a) => Ok((DpsPath { registration_id: id }, a)),
        Err(e) => Err(dps_response(dps::from_api(super::extract::refuse(state, req, e).await))),
    }
}

/// `PUT /{id_scope}/registrations/{registration_id}/register`
pub async fn dps_register(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let (path, attested) = match dps_auth(&state, &req).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let addr = client_ip(&req);
    dps_response(
        dps::register(&state, "dps_http", addr, attested, path.registration_id, &body).await,
    )
}

/// `GET /{id_scope}/registrations/{registration_id}/operations/{operation_id}`
pub async fn dps_operation(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let (path, attested) = match dps_auth(&state, &req).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let op = req.match_info().get("operation_id").unwrap_or_default();
    dps_response(dps::operation(&state, &attested, &path.registration_id, op).await)
}

/// `POST /{id_scope}/registrations/{registration_id}`: the current registration state.
pub async fn dps_status(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let (path, attested) = match dps_auth(&state, &req).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    dps_response(dps::status(&state, &attested, &path.registration_id).await)
}
