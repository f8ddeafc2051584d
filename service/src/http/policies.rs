//! `/v1/policies`: shared access policies.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::devices::{key_choice, RotateBody};
use super::extract::Authenticated;
use super::problem::ApiError;
use super::respond::{path_id, secret_json, ts, RequestCtx};
use crate::auth::{PermissionSet, Scope};
use crate::state::AppState;
use crate::usecase::policies::{self, Policy, PolicyInput};

const KIND: &str = "policy name";

/// PUT body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    permissions: Vec<String>,
    scope: Option<Scope>,
    primary_key: Option<String>,
    secondary_key: Option<String>,
    // Read-only members of a GET body, accepted and ignored so it can be PUT back.
    name: Option<String>,
    #[serde(default, rename = "created_at")]
    _created_at: Option<Value>,
    #[serde(default, rename = "updated_at")]
    _updated_at: Option<Value>,
}

fn policy_json(p: &Policy) -> Value {
    json!({
        "name": p.name,
        "permissions": p.permissions.names(),
        "scope": p.scope,
        "primary_key": *p.primary.to_base64(),
        "secondary_key": *p.secondary.to_base64(),
        "created_at": ts(p.created_at),
        "updated_at": ts(p.updated_at),
    })
}

/// `PUT /v1/policies/{name}`
pub async fn put(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Authenticated,
    body: web::Json<PolicyBody>,
) -> Result<HttpResponse, ApiError> {
    let name = path_id(&req, "name", KIND)?;
    let body = body.into_inner();
    if body.name.as_deref().is_some_and(|n| n != name) {
        return Err(ApiError::BadRequest("name in the body must equal the path".into()));
    }
    let permissions = PermissionSet::parse(body.permissions.iter().map(String::as_str))
        .map_err(|bad| ApiError::BadRequest(format!("unknown permission `{bad}`")))?;
    if let Some(scope) = &body.scope {
        scope.validate().map_err(|e| ApiError::BadRequest(e.into()))?;
        if permissions.allows(crate::auth::Permission::PolicyAdmin) {
            return Err(ApiError::BadRequest(
                "a scoped policy cannot hold PolicyAdmin (it could widen its own scope)".into(),
            ));
        }
        if let Some(ids) = &scope.enrollment_group_ids {
            for id in ids {
                crate::ids::validate("enrollment group id", id)
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            }
        }
        if let Some(p) = &scope.device_id_prefix {
            if p.len() > 128 {
                return Err(ApiError::BadRequest(
                    "device_id_prefix must be at most 128 characters".into(),
                ));
            }
        }
    }
    let input = PolicyInput {
        permissions,
        scope: body.scope,
        primary: super::respond::sas_key(body.primary_key, "primary_key")?,
        secondary: super::respond::sas_key(body.secondary_key, "secondary_key")?,
    };
    let rc = RequestCtx::new(&state, &req, &who);
    let (p, created) = policies::put(&state.store, &rc.cx(&state), &name, input).await?;
    Ok(secret_json(if created { StatusCode::CREATED } else { StatusCode::OK }, &policy_json(&p)))
}

/// `GET /v1/policies/{name}`
pub async fn get(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let name = path_id(&req, "name", KIND)?;
    let p = policies::get(&state.store, &state.ring(), &name).await?;
    Ok(secret_json(StatusCode::OK, &policy_json(&p)))
}

/// `DELETE /v1/policies/{name}`
pub async fn delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Authenticated,
) -> Result<HttpResponse, ApiError> {
    let name = path_id(&req, "name", KIND)?;
    let rc = RequestCtx::new(&state, &req, &who);
    policies::delete(&state.store, &rc.cx(&state), &name).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /v1/policies/{name}/keys/rotate`
pub async fn rotate(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Authenticated,
    body: web::Json<RotateBody>,
) -> Result<HttpResponse, ApiError> {
    let name = path_id(&req, "name", KIND)?;
    let which = key_choice(&body)?;
    let rc = RequestCtx::new(&state, &req, &who);
    let p = policies::rotate_keys(&state.store, &rc.cx(&state), &name, which).await?;
    Ok(secret_json(StatusCode::OK, &policy_json(&p)))
}

/// `GET /v1/policies`: names, permissions and scopes, never keys.
pub async fn list(
    state: web::Data<AppState>,
    q: web::Query<super::respond::PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (after, limit) = q.bounds()?;
    let (rows, more) = policies::list(&state.store, &after, limit).await?;
    let next = if more { rows.last().map(|r| r.name.clone()) } else { None };
    let items = rows
        .iter()
        .map(|r| {
            let (permissions, scope) = crate::auth::sas::policy_grants(r).unwrap_or_default();
            json!({
                "name": r.name, "permissions": permissions.names(), "scope": scope,
                "created_at": ts(r.created_at), "updated_at": ts(r.updated_at),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(super::respond::page_json(items, next.as_deref())))
}
