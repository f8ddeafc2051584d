//! HTTP routes and THE route → access table.
//!
//! Every route is registered from [`ROUTES`], so a route cannot exist without an access rule.
//! The [`guard`] middleware looks the matched (pattern, method) up in the same table, then
//! authenticates and authorizes before any handler runs. Handlers are thin: parse, call a use
//! case, map the result.

pub mod audit;
pub mod ca;
pub mod extract;
pub mod ops;
pub mod problem;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpMessage as _, Route};

use crate::auth::Permission;
use crate::state::AppState;
use extract::Authenticated;
use problem::ApiError;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (operations endpoints, public PKI).
    Public,
    /// A policy or operator holding this permission.
    Requires(Permission),
}

/// One row of the route table.
pub struct RouteRule {
    /// HTTP method
    pub method: &'static str,
    /// actix path pattern
    pub path: &'static str,
    /// access rule
    pub access: Access,
    /// handler
    pub route: fn() -> Route,
}

use Access::{Public, Requires};
use Permission::*;

/// THE route table.
pub const ROUTES: &[RouteRule] = &[
    RouteRule {
        method: "GET",
        path: "/healthz",
        access: Public,
        route: || web::get().to(ops::healthz),
    },
    RouteRule {
        method: "GET",
        path: "/readyz",
        access: Public,
        route: || web::get().to(ops::readyz),
    },
    RouteRule {
        method: "GET",
        path: "/metrics",
        access: Public,
        route: || web::get().to(ops::metrics),
    },
    RouteRule {
        method: "GET",
        path: "/openapi.json",
        access: Public,
        route: || web::get().to(ops::openapi),
    },
    RouteRule {
        method: "GET",
        path: "/v1/ca/chain",
        access: Public,
        route: || web::get().to(ca::chain),
    },
    RouteRule {
        method: "GET",
        path: "/v1/ca/crl",
        access: Public,
        route: || web::get().to(ca::crl_current),
    },
    RouteRule {
        method: "GET",
        path: "/v1/ca/crls.pem",
        access: Public,
        route: || web::get().to(ca::crls_pem),
    },
    RouteRule {
        method: "GET",
        path: "/v1/ca/crl/{issuer_id}",
        access: Public,
        route: || web::get().to(ca::crl_of),
    },
    RouteRule {
        method: "GET",
        path: "/v1/audit",
        access: Requires(AuditRead),
        route: || web::get().to(audit::list),
    },
    RouteRule {
        method: "GET",
        path: "/v1/audit/verify",
        access: Requires(AuditRead),
        route: || web::get().to(audit::verify),
    },
    RouteRule {
        method: "GET",
        path: "/v1/audit/checkpoint",
        access: Requires(AuditRead),
        route: || web::get().to(audit::checkpoint),
    },
];

/// Registers every route of [`ROUTES`], grouping methods per path.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let mut by_path: BTreeMap<&str, Vec<&RouteRule>> = BTreeMap::new();
    for rule in ROUTES {
        by_path.entry(rule.path).or_default().push(rule);
    }
    // Register static paths before parameterized ones so `/v1/ca/crls.pem` never matches a
    // `{param}` sibling.
    let mut paths: Vec<_> = by_path.into_iter().collect();
    paths.sort_by_key(|(p, _)| (p.contains('{'), *p));
    for (path, rules) in paths {
        let mut resource = web::resource(path);
        for rule in rules {
            resource = resource.route((rule.route)());
        }
        cfg.service(
            resource.default_service(web::to(|| async {
                Err::<String, _>(ApiError::MethodNotAllowed)
            })),
        );
    }
}

/// The access rule for a matched route.
pub fn rule_for(pattern: &str, method: &str) -> Option<&'static RouteRule> {
    ROUTES.iter().find(|r| r.path == pattern && r.method == method)
}

/// Authentication + authorization middleware, driven by [`ROUTES`].
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let pattern = req.match_pattern();
    let rule = pattern.as_deref().and_then(|p| rule_for(p, req.method().as_str()));
    if let Some(RouteRule { access: Requires(permission), .. }) = rule {
        let Some(state) = req.app_data::<web::Data<AppState>>().map(|d| d.clone().into_inner())
        else {
            return Err(ApiError::internal(std::io::Error::other("state missing")).into());
        };
        let principal = extract::authenticate(&state, req.request()).await?;
        if !principal.has(*permission) {
            audit_denied(&state, &principal.name, req.request()).await;
            return Err(ApiError::Forbidden(format!(
                "this operation needs the {} permission",
                permission.as_str()
            ))
            .into());
        }
        req.extensions_mut().insert(Authenticated(principal));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

async fn audit_denied(state: &Arc<AppState>, actor: &str, req: &actix_web::HttpRequest) {
    let entry = crate::audit::Entry::failure(
        actor,
        "auth.forbidden",
        req.path(),
        extract::client_ip(req).as_deref(),
    );
    if let Err(e) = crate::audit::record(&state.store, &state.audit_key, &entry, state.now()).await
    {
        tracing::warn!(error = %problem::error_chain(&e), "audit append failed");
    }
}

/// Request metrics middleware.
pub async fn measure(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let start = Instant::now();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().to_string();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let res = next.call(req).await;
    if let Some(state) = state {
        let status = match &res {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.as_response_error().status_code().as_u16(),
        };
        state
            .metrics
            .http_requests
            .with_label_values(&[&route, &method, &status.to_string()])
            .inc();
        state
            .metrics
            .http_duration
            .with_label_values(&[&route])
            .observe(start.elapsed().as_secs_f64());
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_in_the_table_is_in_the_openapi_contract() {
        let doc: serde_json::Value = serde_json::from_str(ops::openapi_json().unwrap()).unwrap();
        for rule in ROUTES {
            let op = &doc["paths"][rule.path][rule.method.to_ascii_lowercase()];
            assert!(
                op.is_object(),
                "{} {} missing from openapi/openapi.yaml",
                rule.method,
                rule.path
            );
        }
    }

    #[test]
    fn routes_are_unique_and_protected_routes_name_a_permission() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    !(a.path == b.path && a.method == b.method),
                    "duplicate {} {}",
                    a.method,
                    a.path
                );
            }
            if a.path.starts_with("/v1/audit") {
                assert_eq!(a.access, Requires(Permission::AuditRead));
            }
        }
    }
}
