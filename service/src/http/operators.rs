//! `/v1/operators` and `/v1/auth/login`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::extract::{client_ip, refused_credential, Authenticated};
use super::problem::ApiError;
use super::respond::{path_id, secret_json, ts, RequestCtx};
use crate::audit::Entry;
use crate::auth::password::{self, Password};
use crate::auth::PermissionSet;
use crate::state::AppState;
use crate::usecase::operators::{self, OperatorError};

/// PUT body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorBody {
    password: String,
    permissions: Vec<String>,
}

/// `PUT /v1/operators/{name}`
pub async fn put(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Authenticated,
    body: web::Json<OperatorBody>,
) -> Result<HttpResponse, ApiError> {
    let name = path_id(&req, "name", "operator name")?;
    let body = body.into_inner();
    let password = Password::new(body.password);
    let permissions = PermissionSet::parse(body.permissions.iter().map(String::as_str))
        .map_err(|bad| ApiError::BadRequest(format!("unknown permission `{bad}`")))?;
    // `If-None-Match: *`: create only (412 when it exists, decided by the insert).
    let create_only = super::respond::etag_header(&req, actix_web::http::header::IF_NONE_MATCH)?
        .as_deref()
        == Some("*");
    let rc = RequestCtx::new(&state, &req, &who);
    let cx = rc.cx(&state);
    let created =
        operators::put(&state.store, &cx, &name, password, &permissions, create_only).await?;
    let now = state.now();
    Ok(HttpResponse::build(if created { StatusCode::CREATED } else { StatusCode::OK })
        .json(json!({"name": name, "permissions": permissions.names(), "updated_at": ts(now)})))
}

/// `DELETE /v1/operators/{name}`
pub async fn delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Authenticated,
) -> Result<HttpResponse, ApiError> {
    let name = path_id(&req, "name", "operator name")?;
    let rc = RequestCtx::new(&state, &req, &who);
    operators::delete(&state.store, &rc.cx(&state), &name).await?;
    Ok(HttpResponse::NoContent().finish())
}

fn operator_json(r: &crate::usecase::operators::OperatorRow) -> serde_json::Value {
    let names: Vec<String> = serde_json::from_str(&r.permissions).unwrap_or_default();
    json!({
        "name": r.name, "permissions": names,
        "created_at": ts(r.created_at), "updated_at": ts(r.updated_at),
    })
}

/// `GET /v1/operators`: names and permissions, never password hashes.
pub async fn list(
    state: web::Data<AppState>,
    q: web::Query<super::respond::PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (after, limit) = q.bounds()?;
    let (rows, more) = operators::list(&state.store, &after, limit).await?;
    let next = if more { rows.last().map(|r| r.name.clone()) } else { None };
    let items = rows.iter().map(operator_json).collect();
    Ok(HttpResponse::Ok().json(super::respond::page_json(items, next.as_deref())))
}

/// `GET /v1/operators/{name}`
pub async fn get(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let name = path_id(&req, "name", "operator name")?;
    let row = operators::get(&state.store, &name)
        .await?
        .ok_or_else(|| ApiError::NotFound("operator not found".into()))?;
    Ok(HttpResponse::Ok().json(operator_json(&row)))
}

/// Login body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    username: String,
    password: String,
}

/// `POST /v1/auth/login`. A caller whose key is already rate-limited is refused before any
/// hashing; the others queue for a hashing permit (at most 64 per core waiting, else 503 with
/// `Retry-After: 1`), see `auth::password`.
pub async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let now = state.now();
    let addr = client_ip(&req).unwrap_or_else(|| "unknown".into());
    if let Some(retry_after) = state.limiter.refuse_if_limited(Some(&body.username), &addr, now) {
        state.metrics.auth_failures.with_label_values(&["password"]).inc();
        return Err(ApiError::TooManyRequests { retry_after });
    }
    let Some(_queued) = password::admit() else { return Err(ApiError::Overloaded) };
    match operators::login(
        &state.store,
        &state.jwt,
        &body.username,
        Password::new(body.password),
        now,
    )
    .await
    {
        Ok(session) => {
            let entry = Entry::success(&body.username, "auth.login", &body.username, Some(&addr));
            crate::audit::record(&state.store, &state.audit_key, &entry, now).await?;
            Ok(secret_json(
                StatusCode::OK,
                &json!({
                    "access_token": session.token, "token_type": "Bearer",
                    "expires_at": ts(session.expires_at), "permissions": session.permissions,
                }),
            ))
        }
        Err(OperatorError::BadCredentials) => Err(refused_credential(
            &state,
            Some(&body.username),
            req.path(),
            &addr,
            "password",
            "invalid user name or password",
        )
        .await),
        Err(e) => Err(e.into()),
    }
}
