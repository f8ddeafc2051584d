//! `/v1/devices`: registry CRUD, key rotation, admin certificate issuance, device tokens.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::Authenticated;
use super::problem::ApiError;
use super::respond::{
    decode_cursor, encode_cursor, etag_header, limit, path_id, secret_json, ts, RequestCtx,
};
use crate::auth::Permission;
use crate::repr::{device_json, DeviceBody, Status};
use crate::state::AppState;
use crate::usecase::devices::{self, Device, KeyChoice, Precondition};

const KIND: &str = "device id";

fn respond(status: StatusCode, d: &Device, who: &Authenticated) -> HttpResponse {
    let mut resp = secret_json(status, &device_json(d, who.0.has(Permission::RegistryReadWrite)));
    if let Ok(v) = header::HeaderValue::from_str(&format!("\"{}\"", d.row.etag)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

fn precondition(req: &HttpRequest, who: &Authenticated) -> Result<Precondition, ApiError> {
    Ok(Precondition {
        if_match: etag_header(req, header::IF_MATCH)?,
        if_none_match_any: etag_header(req, header::IF_NONE_MATCH)?.as_deref() == Some("*"),
        scope: who.0.scope.clone(),
    })
}

async fn visible(state: &AppState, who: &Authenticated, id: &str) -> Result<Device, ApiError> {
    let d = devices::get(&state.store, &state.ring(), id).await?;
    if !who.0.sees_device(id, d.row.owner_group()) {
        return Err(ApiError::NotFound("device not found".into()));
    }
    Ok(d)
}

/// `PUT /v1/devices/{id}`
pub async fn put(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Authenticated,
    body: web::Json<DeviceBody>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&req, "id", KIND)?;
    let input = crate::repr::validate(&id, body.into_inner()).map_err(ApiError::BadRequest)?;
    // scoped principals create and replace only devices inside their scope (in the precondition)
    let pre = precondition(&req, &who)?;
    let rc = RequestCtx::new(&state, &req, &who);
    let (device, created) = devices::put(&state.store, &rc.cx(&state), &id, input, &pre).await?;
    Ok(respond(if created { StatusCode::CREATED } else { StatusCode::OK }, &device, &who))
}

/// `GET /v1/devices/{id}`
pub async fn get(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Authenticated,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&req, "id", KIND)?;
    let d = visible(&state, &who, &id).await?;
    Ok(respond(StatusCode::OK, &d, &who))
}

/// `DELETE /v1/devices/{id}`
pub async fn delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Authenticated,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&req, "id", KIND)?;
    let pre = precondition(&req, &who)?;
    let rc = RequestCtx::new(&state, &req, &who);
    devices::delete(&state.store, &rc.cx(&state), &id, &pre).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `?cursor=&limit=&status=&prefix=&enrollment_group_id=`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    cursor: Option<String>,
    limit: Option<i64>,
    status: Option<Status>,
    prefix: Option<String>,
    enrollment_group_id: Option<String>,
}

/// The id prefix a list reads: the query's and the scope's together (`None` inside it: the
/// two exclude each other, nothing to read).
fn effective_prefix<'a>(query: Option<&'a str>, scope: Option<&'a str>) -> Option<Option<&'a str>> {
    match (query, scope) {
        (None, s) => Some(s),
        (q, None) => Some(q),
        (Some(q), Some(s)) if q.starts_with(s) => Some(Some(q)),
        (Some(q), Some(s)) if s.starts_with(q) => Some(Some(s)),
        _ => None,
    }
}

/// `GET /v1/devices`
pub async fn list(
    state: web::Data<AppState>,
    who: Authenticated,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = limit(q.limit)?;
    let after = decode_cursor(q.cursor.as_deref())?;
    let status = q.status.map(|s| if s == Status::Enabled { "enabled" } else { "disabled" });
    if let Some(p) = &q.prefix {
        if p.len() > 128 {
            return Err(ApiError::BadRequest("prefix must be at most 128 characters".into()));
        }
    }
    let Some(prefix) = effective_prefix(q.prefix.as_deref(), who.0.device_prefix()) else {
        return Ok(secret_json(StatusCode::OK, &json!({"items": [], "next_cursor": null})));
    };
    let group = q.enrollment_group_id.as_deref();
    let with_keys = who.0.has(Permission::RegistryReadWrite);
    let visible = |row: &devices::DeviceRow| {
        who.0.sees_device(&row.device_id, row.owner_group())
            && group.is_none_or(|g| row.enrollment_group_id.as_deref() == Some(g))
    };
    let (page, more) =
        devices::page(&state.store, &state.ring(), &after, limit, status, prefix, visible).await?;
    let next = more.then(|| page.last().map(|d| encode_cursor(&d.row.device_id))).flatten();
    let items: Vec<Value> = page.iter().map(|d| device_json(d, with_keys)).collect();
    Ok(secret_json(StatusCode::OK, &json!({"items": items, "next_cursor": next})))
}

/// `GET /v1/devices/counts`: devices by status, in the caller's scope.
pub async fn counts(
    state: web::Data<AppState>,
    who: Authenticated,
) -> Result<HttpResponse, ApiError> {
    let (enabled, disabled) = devices::counts(&state.store, who.0.scope.as_ref()).await?;
    Ok(HttpResponse::Ok().json(json!({"enabled": enabled, "disabled": disabled})))
}

/// `{"key": "primary" | "secondary" | "swap"}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    key: String,
}

/// Parses a rotation choice.
pub fn key_choice(body: &RotateBody) -> Result<KeyChoice, ApiError> {
    match body.key.as_str() {
        "primary" => Ok(KeyChoice::Primary),
        "secondary" => Ok(KeyChoice::Secondary),
        "swap" => Ok(KeyChoice::Swap),
        _ => Err(ApiError::BadRequest("key must be `primary`, `secondary` or `swap`".into())),
    }
}

/// `POST /v1/devices/{id}/keys/rotate`
pub async fn rotate(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Authenticated,
    body: web::Json<RotateBody>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&req, "id", KIND)?;
    let which = key_choice(&body)?;
    let rc = RequestCtx::new(&state, &req, &who);
    let pre = Precondition::scoped(who.0.scope.clone());
    let d = devices::rotate_keys(&state.store, &rc.cx(&state), &id, which, &pre).await?;
    Ok(respond(StatusCode::OK, &d, &who))
}

/// `{"csr": PEM}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrBody {
    csr: String,
}

/// `POST /v1/devices/{id}/certificates`
pub async fn issue_certificate(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Authenticated,
    body: web::Json<CsrBody>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&req, "id", KIND)?;
    let rc = RequestCtx::new(&state, &req, &who);
    let authority = state.authority();
    let base = state.config.public_base_url();
    let issued = crate::usecase::certificates::issue_for_device(
        &state.store,
        &rc.cx(&state),
        &authority,
        &base,
        who.0.scope.as_ref(),
        &id,
        body.csr.as_bytes(),
    )
    .await?;
    Ok(HttpResponse::Created().json(json!({
        "serial": issued.cert.serial,
        "certificate": issued.cert.pem(),
        "certificate_chain": issued.chain_pem,
        "not_before": ts(issued.cert.not_before),
        "not_after": ts(issued.cert.not_after),
    })))
}

/// `{"ttl_secs": n}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    ttl_secs: Option<i64>,
}

/// `POST /v1/devices/{id}/sas-token`
pub async fn sas_token(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Authenticated,
    body: web::Json<TokenBody>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&req, "id", KIND)?;
    let ttl = body.ttl_secs.unwrap_or(3600);
    if !(1..=crate::usecase::sas::MAX_TTL_SECS).contains(&ttl) {
        return Err(ApiError::BadRequest(format!(
            "ttl_secs must be between 1 and {}",
            crate::usecase::sas::MAX_TTL_SECS
        )));
    }
    visible(&state, &who, &id).await?;
    let (token, expires) = crate::usecase::sas::mint(
        &state.store,
        &state.ring(),
        &state.config.host_name,
        &id,
        ttl,
        state.now(),
    )
    .await?;
    Ok(secret_json(StatusCode::OK, &json!({"token": token, "expires_at": ts(expires)})))
}

/// `{"token": string}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    token: Value,
}

/// `POST /v1/sas/verify`: 200 for any string (RFC 7662-style introspection).
pub async fn verify(
    state: web::Data<AppState>,
    who: Authenticated,
    body: web::Json<VerifyBody>,
) -> Result<HttpResponse, ApiError> {
    let Value::String(token) = &body.token else {
        return Err(ApiError::BadRequest("token must be a string".into()));
    };
    let verdict = crate::usecase::sas::verify(
        &state.store,
        &state.ring(),
        who.0.scope.as_ref(),
        &state.config.host_name,
        token,
        state.now(),
        state.config.sas_skew_secs,
    )
    .await?;
    Ok(HttpResponse::Ok().json(match verdict {
        crate::usecase::sas::Verdict::Valid { device_id, expires_at } => {
            json!({"valid": true, "device_id": device_id, "expires_at": ts(expires_at)})
        }
        crate::usecase::sas::Verdict::Invalid(reason) => json!({"valid": false, "reason": reason}),
    }))
}

/// `{"csr", "revoke_previous"?}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewBody {
    csr: String,
    revoke_previous: Option<bool>,
}

/// `POST /v1/devices/{id}/certificates/renew` (mTLS with the device's current certificate)
pub async fn renew(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<RenewBody>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&req, "id", KIND)?;
    let presented = match state.own_client(&req) {
        Ok(p) => p,
        Err(e) => {
            return Err(refused_certificate(&state, &req, Some(&format!("device:{id}")), e).await)
        }
    };
    let actor = crate::usecase::Actor {
        name: format!("device:{id}"),
        addr: super::extract::client_ip(&req),
    };
    let rc = RequestCtx::for_actor(&state, actor);
    let cx = rc.cx(&state);
    let authority = state.authority();
    let issued = crate::usecase::renew::renew(
        &state.store,
        &cx,
        &authority,
        &state.config.public_base_url(),
        crate::usecase::renew::RenewRequest {
            device_id: &id,
            presented: &presented,
            csr: body.csr.as_bytes(),
            revoke_previous: body.revoke_previous.unwrap_or(false),
        },
    )
    .await?;
    Ok(HttpResponse::Created().json(json!({
        "serial": issued.cert.serial,
        "certificate": issued.cert.pem(),
        "certificate_chain": issued.chain_pem,
        "not_before": ts(issued.cert.not_before),
        "not_after": ts(issued.cert.not_after),
    })))
}

/// A refused client certificate (renewal, EST re-enrollment): the one refused-credential step,
/// so it is counted, rate-limited and audited within bounds like every other credential.
pub(crate) async fn refused_certificate(
    state: &AppState,
    req: &HttpRequest,
    claimed: Option<&str>,
    e: crate::mtls::MtlsError,
) -> ApiError {
    let detail = match ApiError::from(e) {
        ApiError::Unauthorized { detail } => detail,
        _ => "the client certificate is not valid here",
    };
    let addr = super::extract::client_ip(req).unwrap_or_else(|| "unknown".into());
    super::extract::refused_credential(state, claimed, req.path(), &addr, "mtls", detail).await
}
