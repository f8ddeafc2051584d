//! Audit trail: list, verify, signed checkpoint.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};

use super::problem::ApiError;
use crate::clock::rfc3339;
use crate::state::AppState;

/// `?after=&limit=`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    after: Option<i64>,
    limit: Option<i64>,
    action: Option<String>,
    target_prefix: Option<String>,
    outcome: Option<String>,
}

/// `GET /v1/audit`
pub async fn list(
    state: web::Data<AppState>,
    q: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be between 1 and 1000".into()));
    }
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::BadRequest("after must be a non-negative sequence number".into()));
    }
    if q.outcome.as_deref().is_some_and(|o| o != "success" && o != "failure") {
        return Err(ApiError::BadRequest("outcome must be success or failure".into()));
    }
    if q.action.as_deref().is_some_and(|a| a.len() > 128)
        || q.target_prefix.as_deref().is_some_and(|t| t.len() > 256)
    {
        return Err(ApiError::BadRequest("action or target_prefix is too long".into()));
    }
    let filter = crate::audit::AuditFilter {
        action: q.action.as_deref(),
        target_prefix: q.target_prefix.as_deref(),
        outcome: q.outcome.as_deref(),
    };
    let rows = crate::audit::page(&state.store, after, limit, &filter).await?;
    let items: Vec<_> = rows
        .into_iter()
        .map(|r| {
            let mut item = serde_json::json!({
                "seq": r.seq, "at": rfc3339(r.at), "actor": r.actor, "action": r.action,
                "target": r.target, "outcome": r.outcome, "client_addr": r.client_addr,
                "prev_hash": r.prev_hash, "hash": r.hash,
            });
            // Present only on `auth.failure.summary` rows (API.md A30).
            if let Some(count) = r.failure_count {
                item["count"] = count.into();
            }
            item
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items })))
}

/// `GET /v1/audit/verify`
pub async fn verify(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let report = crate::audit::verify(&state.store, &state.audit_key).await?;
    Ok(HttpResponse::Ok().json(report))
}

#[derive(Serialize)]
struct CheckpointClaims {
    seq: i64,
    hash: String,
    at: String,
}

/// `GET /v1/audit/checkpoint`: `{seq, hash, at, signature}`, the signature a compact JWS by the
/// current intermediate (ES256 / ES384 / PS256 after its key) over `{seq, hash, at}`.
pub async fn checkpoint(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (seq, hash) = crate::audit::last_row(&state.store).await?;
    let claims = CheckpointClaims { seq, hash, at: rfc3339(state.now()) };
    let authority = state.authority();
    let issuer = authority.active();
    let signature = crate::signing::jws(issuer, &claims).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "seq": claims.seq, "hash": claims.hash, "at": claims.at, "signature": signature,
    })))
}
