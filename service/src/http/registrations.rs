//! Device-side registration: `POST /v1/registrations/{registration_id}` and the Azure
//! DPS-compatible device API under `/{id_scope}/registrations/…`.
//!
//! Devices attest with (a) a SAS token signed with an individual enrollment key or a key derived
//! from an enabled `symmetric_key` group, (b) a one-time enrollment JWT (`Bearer`), consumed in
//! the registration's own transaction. DPS routes answer DPS's error body instead of
//! problem+json.

use std::sync::Arc;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::enrollment::registration_json;
use super::extract::client_ip;
use super::problem::ApiError;
use super::respond::{path_id, secret_json, ts};
use crate::auth::enrollments::GroupCacheError;
use crate::auth::jwt::ENROLLMENT_AUDIENCE;
use crate::auth::AuthError;
use crate::state::AppState;
use crate::usecase::groups::{self, Attestation, Group};
use crate::usecase::register::{self, Registered, RegistrationRequest};
use crate::usecase::Actor;

/// How a device proved itself.
struct Attested {
    group: Arc<Group>,
    jti: Option<String>,
}

/// Finds the enrollment whose key signed `token` for `registration_id`: the individual
/// enrollment of that id, else each enabled `symmetric_key` group from the decoded-group cache
/// (no per-attempt decoding, whatever the number of groups).
async fn attest_sas(
    state: &AppState,
    token: &str,
    resource: &str,
    registration_id: &str,
) -> Result<Option<Arc<Group>>, ApiError> {
    let Ok(t) = ca::sas::SasToken::parse(token) else { return Ok(None) };
    let validity = ca::sas::Validity {
        now: state.now(),
        skew_secs: state.config.sas_skew_secs,
        max_ahead_secs: crate::auth::sas::MAX_AHEAD_SECS,
    };
    if t.check_expiry(validity).is_err() || !t.resource().eq_ignore_ascii_case(resource) {
        return Ok(None);
    }
    if t.key_name().is_some_and(|k| k != "registration") {
        return Ok(None);
    }
    let ring = state.ring();
    match groups::get(&state.store, &ring, registration_id, true).await {
        Ok(g) if g.attestation == Attestation::SymmetricKey => {
            let ok =
                t.check_signature(&g.primary).is_ok() | t.check_signature(&g.secondary).is_ok();
            if ok {
                return Ok(Some(Arc::new(g)));
            }
            // Not the individual key: a group's derived key is still a valid credential (the
            // registration rule then decides whether that group may touch this id).
        }
        Ok(_) | Err(groups::GroupError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    let snapshot =
        state.enrollment_groups.snapshot(&state.store, &ring).await.map_err(cache_error)?;
    for g in &snapshot.symmetric {
        let (p, s) = g.device_keys(registration_id);
        if t.check_signature(&p).is_ok() | t.check_signature(&s).is_ok() {
            return Ok(Some(Arc::clone(g)));
        }
    }
    Ok(None)
}

fn cache_error(e: GroupCacheError) -> ApiError {
    match e {
        GroupCacheError::Store(s) => s.into(),
        GroupCacheError::Group(g) => g.into(),
    }
}

async fn attest(
    state: &AppState,
    req: &HttpRequest,
    resource: &str,
    registration_id: &str,
) -> Result<Attested, AuthError> {
    let header = req.headers().get(header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    match header {
        None => match attest_x509(state, req, registration_id).await {
            Some(Ok(group)) => Ok(Attested { group, jti: None }),
            Some(Err(e)) => Err(e),
            None => Err(AuthError::Missing),
        },
        Some(h) if h.starts_with("SharedAccessSignature ") => {
            match attest_sas(state, h, resource, registration_id).await {
                Ok(Some(group)) => Ok(Attested { group, jti: None }),
                _ => Err(AuthError::Invalid { claimed: Some(registration_id.to_owned()) }),
            }
        }
        Some(h) if h.starts_with("Bearer ") => {
            let claims = state
                .jwt
                .verify(h["Bearer ".len()..].trim(), ENROLLMENT_AUDIENCE, state.now(), 0)
                .map_err(|_| AuthError::Invalid { claimed: Some(registration_id.to_owned()) })?;
            // A token minted for one id is no credential for another.
            if claims.sub.as_deref().is_some_and(|sub| sub != registration_id) {
                return Err(AuthError::Invalid { claimed: Some(registration_id.to_owned()) });
            }
            let group_id = claims.grp.ok_or(AuthError::Invalid { claimed: None })?;
            let group = groups::get(&state.store, &state.ring(), &group_id, false)
                .await
                .map_err(|_| AuthError::Invalid { claimed: Some(registration_id.to_owned()) })?;
            Ok(Attested { group: Arc::new(group), jti: Some(claims.jti) })
        }
        Some(_) => Err(AuthError::UnsupportedScheme),
    }
}

/// Manufacturer-certificate attestation: the presented chain must lead to the CA of an enabled
/// `x509_ca` enrollment (individual first, then groups from the decoded-group cache) and its CN
/// must equal the registration id. `None` when no certificate was presented.
pub async fn attest_x509(
    state: &AppState,
    req: &HttpRequest,
    registration_id: &str,
) -> Option<Result<Arc<Group>, AuthError>> {
    let chain = crate::mtls::presented(req)?;
    let refused = || Err(AuthError::Invalid { claimed: Some(registration_id.to_owned()) });
    let ring = state.ring();
    let mut candidates: Vec<(Arc<Group>, Vec<Vec<u8>>)> = Vec::new();
    if let Ok(g) = groups::get(&state.store, &ring, registration_id, true).await {
        if let Attestation::X509Ca(pems) = &g.attestation {
            let anchors = pems
                .iter()
                .filter_map(|p| ca::authority::certs_from_pem(p).ok())
                .flatten()
                .collect();
            candidates.push((Arc::new(g), anchors));
        }
    }
    if let Ok(snapshot) = state.enrollment_groups.snapshot(&state.store, &ring).await {
        candidates.extend(snapshot.x509.iter().map(|x| (Arc::clone(&x.group), x.anchors.clone())));
    }
    for (g, anchors) in candidates {
        if !g.enabled {
            continue;
        }
        if let Ok(identity) = crate::mtls::validate(&chain.0, &anchors, &[], state.now()) {
            if identity.common_name.as_deref() != Some(registration_id) {
                return Some(refused());
            }
            return Some(Ok(g));
        }
    }
    Some(refused())
}

/// Runs a registration for an attested device through `door` (the metric label) and counts it.
pub(crate) async fn run_registration(
    state: &AppState,
    req: &HttpRequest,
    door: &'static str,
    group: Arc<Group>,
    jti: Option<String>,
    r: RegistrationRequest,
) -> Result<Registered, ApiError> {
    let actor = Actor { name: format!("device:{}", r.registration_id), addr: client_ip(req) };
    let door = crate::state::Door::device(door);
    Ok(state.register(door, actor, group, jti, r).await?)
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
        },
    )
    .await?;
    let status = if r.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(secret_json(status, &registration_json(&r)))
}

// ---- Azure DPS-compatible device API ----

/// A DPS error answer: `{"errorCode", "trackingId", "message", "timestampUtc"}`.
pub(crate) fn dps_error(status: StatusCode, code: u32, message: &str) -> HttpResponse {
    let mut resp = HttpResponse::build(status).json(json!({
        "errorCode": code,
        "trackingId": uuid::Uuid::new_v4().to_string(),
        "message": message,
        "timestampUtc": ts(crate::clock::Clock::now(&crate::clock::SystemClock)),
    }));
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("30"));
    }
    resp
}

fn dps_from_api(e: ApiError) -> HttpResponse {
    use actix_web::ResponseError as _;
    let status = e.status_code();
    let code = u32::from(status.as_u16()) * 1000 + 1;
    if let ApiError::TooManyRequests { retry_after } = &e {
        let mut r = dps_error(status, code, &e.to_string());
        if let Ok(v) = header::HeaderValue::from_str(&retry_after.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    if let ApiError::Internal(_) = &e {
        let _ = e.to_problem_value(); // logs the chain
    }
    dps_error(status, code, &e.to_string())
}

fn registration_state(state: &AppState, r: &Registered) -> Value {
    registration_state_as(state, r, "assigned")
}

/// A `registrationState` with `status` (`assigned`, or `disabled` for a disabled device, which
/// never shows a certificate chain).
fn registration_state_as(state: &AppState, r: &Registered, status: &str) -> Value {
    let mut s = json!({
        "registrationId": r.device_id,
        "createdDateTimeUtc": ts(r.created_at),
        "assignedHub": state.config.host_name,
        "deviceId": r.device_id,
        "status": status,
        "substatus": "initialAssignment",
        "lastUpdatedDateTimeUtc": ts(r.updated_at),
        "etag": r.etag,
    });
    if let Some(p) = &r.payload {
        s["payload"] = p.clone();
    }
    if !r.chain.is_empty() && status == "assigned" {
        let b64 = &base64::engine::general_purpose::STANDARD;
        s["issuedCertificateChain"] =
            json!(r.chain.iter().map(|d| b64.encode(d)).collect::<Vec<_>>());
    }
    s
}

struct DpsPath {
    registration_id: String,
    resource: String,
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
        Ok(a) => Ok((DpsPath { registration_id: id, resource }, a)),
        Err(e) => Err(dps_from_api(super::extract::refuse(state, req, e).await)),
    }
}

/// DPS register body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DpsRegisterBody {
    registration_id: Option<String>,
    payload: Option<Value>,
    csr: Option<String>,
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
    let _ = &path.resource;
    let body: DpsRegisterBody = if body.is_empty() {
        DpsRegisterBody { registration_id: None, payload: None, csr: None }
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return dps_error(StatusCode::BAD_REQUEST, 400_004, &format!("invalid body: {e}"))
            }
        }
    };
    if body.registration_id.as_deref().is_some_and(|b| b != path.registration_id) {
        return dps_error(
            StatusCode::BAD_REQUEST,
            400_004,
            "registrationId does not match the path",
        );
    }
    let csr = match body.csr {
        None => None,
        Some(b64) => match base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
            Ok(der) => Some(der),
            Err(_) => {
                return dps_error(
                    StatusCode::BAD_REQUEST,
                    400_004,
                    "csr must be base64 DER PKCS#10",
                )
            }
        },
    };
    let request = RegistrationRequest {
        registration_id: path.registration_id,
        csr,
        tags: None,
        payload: body.payload,
    };
    match run_registration(&state, &req, "dps_http", attested.group, attested.jti, request).await {
        Ok(r) => {
            HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(json!({
                "operationId": r.operation_id,
                "status": "assigned",
                "registrationState": registration_state(&state, &r),
            }))
        }
        Err(e) => dps_from_api(e),
    }
}

/// The stored registration of `id` as its attested enrollment may read it, and the status to
/// show (`assigned` or `disabled`). A one-time token reads only the id it registered.
async fn stored(
    state: &AppState,
    attested: &Attested,
    id: &str,
) -> Result<Option<(Registered, &'static str)>, ApiError> {
    let mut conn = state.store.conn().await?;
    if let Some(jti) = &attested.jti {
        let used_for = crate::store::enrollment::token_used_for(&mut conn, jti).await?;
        if used_for.as_deref() != Some(id) {
            return Err(ApiError::Unauthorized {
                detail: "this enrollment token did not register this id",
            });
        }
    }
    let Some(reg) = crate::store::enrollment::registration(&mut conn, id).await? else {
        return Ok(None);
    };
    let Some(device) = crate::store::devices::get(&mut conn, id).await? else { return Ok(None) };
    let status = if device.status == "enabled" { "assigned" } else { "disabled" };
    let authority = state.authority();
    let chain = match &reg.serial {
        Some(serial) => register::stored_chain(&mut conn, &authority, serial).await?,
        None => Vec::new(),
    };
    Ok(Some(Registered {
        device_id: id.to_owned(),
        chain,
        device_keys: None,
        created: false,
        operation_id: reg.operation_id,
        created_at: reg.created_at,
        updated_at: reg.updated_at,
        etag: device.etag.clone(),
        payload: reg.payload.as_deref().and_then(|p| serde_json::from_str(p).ok()),
    })
    // Only while the attested enrollment owns the device (not after a delete and an admin
    // re-create, say).
    .filter(|_| register::owned_by(&device, &attested.group))
    .map(|r| (r, status)))
}

/// `GET /{id_scope}/registrations/{registration_id}/operations/{operation_id}`
pub async fn dps_operation(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let (path, attested) = match dps_auth(&state, &req).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let op = req.match_info().get("operation_id").unwrap_or_default().to_owned();
    match stored(&state, &attested, &path.registration_id).await {
        Ok(Some((r, status))) if r.operation_id == op => HttpResponse::Ok().json(json!({
            "operationId": r.operation_id,
            "status": status,
            "registrationState": registration_state_as(&state, &r, status),
        })),
        Ok(_) => dps_error(StatusCode::NOT_FOUND, 404_002, "unknown operation"),
        Err(e) => dps_from_api(e),
    }
}

/// `POST /{id_scope}/registrations/{registration_id}`: the current registration state.
pub async fn dps_status(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let (path, attested) = match dps_auth(&state, &req).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    match stored(&state, &attested, &path.registration_id).await {
        Ok(Some((r, status))) => HttpResponse::Ok().json(registration_state_as(&state, &r, status)),
        Ok(None) => dps_error(StatusCode::NOT_FOUND, 404_002, "device is not registered"),
        Err(e) => dps_from_api(e),
    }
}
