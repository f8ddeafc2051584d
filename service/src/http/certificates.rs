//! `/v1/certificates`: listing.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::extract::Authenticated;
use super::problem::ApiError;
use super::respond::{decode_cursor, encode_cursor, limit, ts};
use crate::state::AppState;

/// `?device_id=&kind=&limit=&cursor=`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    device_id: Option<String>,
    kind: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

/// `GET /v1/certificates`
pub async fn list(
    state: web::Data<AppState>,
    who: Authenticated,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = limit(q.limit)?;
    let after = decode_cursor(q.cursor.as_deref())?;
    if let Some(id) = &q.device_id {
        crate::ids::validate("device id", id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    if q.kind.as_deref().is_some_and(|k| !["device", "server", "instance"].contains(&k)) {
        return Err(ApiError::BadRequest("kind must be device, server or instance".into()));
    }
    let now = state.now();
    let (rows, more) = crate::usecase::certificates::list(
        &state.store,
        who.0.scope.as_ref(),
        q.device_id.as_deref(),
        q.kind.as_deref(),
        &after,
        limit,
    )
    .await?;
    let next = if more { rows.last().map(|r| encode_cursor(&r.serial)) } else { None };
    let items: Vec<_> = rows.iter().map(|r| certificate_json(r, now, false)).collect();
    Ok(HttpResponse::Ok().json(json!({"items": items, "next_cursor": next})))
}

/// A certificate as lists show it; with `kind` as `GET /v1/certificates/{serial}` does.
fn certificate_json(
    r: &crate::usecase::certificates::CertificateRow,
    now: i64,
    with_kind: bool,
) -> serde_json::Value {
    let status = if r.revoked_at.is_some() {
        "revoked"
    } else if r.not_after <= now {
        "expired"
    } else {
        "valid"
    };
    let mut v = json!({
        "serial": r.serial, "device_id": r.device_id, "issuer_id": r.issuer_id,
        "status": status, "not_before": ts(r.not_before), "not_after": ts(r.not_after),
        "revoked_at": r.revoked_at.map(ts),
    });
    if with_kind {
        v["kind"] = json!(r.profile);
        v["revocation_reason"] = json!(r.revocation_reason);
    }
    v
}

/// `GET /v1/certificates/{serial}`: one certificate, with its kind (device, server, instance).
pub async fn get(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
    who: Authenticated,
) -> Result<HttpResponse, ApiError> {
    let serial = serial_of(&req)?;
    let cert = crate::usecase::certificates::get(&state.store, who.0.scope.as_ref(), &serial)
        .await?
        .ok_or_else(|| ApiError::NotFound("certificate not found".into()))?;
    Ok(HttpResponse::Ok().json(certificate_json(&cert, state.now(), true)))
}

/// The `{serial}` of the path: hex, any case, leading zeros dropped (400 otherwise).
fn serial_of(req: &actix_web::HttpRequest) -> Result<String, ApiError> {
    let serial = req.match_info().get("serial").unwrap_or_default().to_ascii_lowercase();
    if serial.is_empty() || serial.len() > 64 || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest("serial must be hexadecimal".into()));
    }
    Ok(serial.trim_start_matches('0').to_owned())
}

/// `{"reason"?}`
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    reason: Option<String>,
}

/// `POST /v1/certificates/{serial}/revoke`
pub async fn revoke(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
    who: Authenticated,
    body: Option<web::Json<RevokeBody>>,
) -> Result<HttpResponse, ApiError> {
    let serial = serial_of(&req)?;
    let reason = match body.and_then(|b| b.into_inner().reason) {
        None => ca::revocation::RevocationReason::Unspecified,
        Some(r) => ca::revocation::RevocationReason::parse(&r)
            .ok_or_else(|| ApiError::BadRequest(format!("unknown revocation reason `{r}`")))?,
    };
    let rc = super::respond::RequestCtx::new(&state, &req, &who);
    let row = crate::usecase::revoke::revoke(
        &state.store,
        &rc.cx(&state),
        who.0.scope.as_ref(),
        &serial,
        reason,
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({
        "serial": row.serial,
        "status": "revoked",
        "revoked_at": row.revoked_at.map(ts),
        "reason": row.revocation_reason,
    })))
}
