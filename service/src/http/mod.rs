//! HTTP routes and THE route → access table.
//!
//! Every route is registered from [`ROUTES`], so a route cannot exist without an access rule.
//! The [`guard`] middleware looks the matched (pattern, method) up in the same table, then
//! authenticates and authorizes before any handler runs. Handlers are thin: parse, call a use
//! case, map the result.

pub mod access;
pub mod audit;
pub mod bundles;
pub mod ca;
pub mod certificates;
pub mod console;
pub mod devices;
pub mod enrollment;
pub mod est;
pub mod extract;
pub mod heads;
pub mod limits;
pub mod operators;
pub mod ops;
pub mod policies;
pub mod problem;
pub mod registrations;
pub mod respond;

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
    /// An unscoped policy or operator holding this permission: CA-level objects and the audit
    /// trail (a scoped principal gets 403, API.md A30).
    Unscoped(Permission),
    /// An unscoped policy or operator holding either permission (the CA hierarchy's state).
    UnscopedEither(Permission, Permission),
    /// The handler authenticates the device itself (SAS attestation, enrollment JWT, client
    /// certificate, bundle token): there is no principal with permissions.
    Attestation,
}

impl Access {
    /// The permission the route needs, if any (the first of two alternatives).
    pub fn permission(self) -> Option<Permission> {
        self.permissions().first().copied()
    }

    /// The permissions any one of which lets a caller in (none: public or attested routes).
    pub fn permissions(self) -> Vec<Permission> {
        match self {
            Requires(p) | Unscoped(p) => vec![p],
            UnscopedEither(a, b) => vec![a, b],
            Public | Attestation => Vec::new(),
        }
    }

    /// Whether a scoped principal is refused (403) whatever it holds.
    pub fn unscoped_only(self) -> bool {
        matches!(self, Unscoped(_) | UnscopedEither(..))
    }
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

use Access::{Attestation, Public, Requires, Unscoped, UnscopedEither};
use Permission::*;

/// THE route table: one line per route — method, path, who may call it, handler.
#[rustfmt::skip]
pub const ROUTES: &[RouteRule] = &[
    rule("GET",    "/healthz",                         Public,                       || web::get().to(ops::healthz)),
    rule("GET",    "/readyz",                          Public,                       || web::get().to(ops::readyz)),
    rule("GET",    "/metrics",                         Public,                       || web::get().to(ops::metrics)),
    rule("GET",    "/openapi.json",                    Public,                       || web::get().to(ops::openapi)),
    rule("GET",    "/ui/",                             Public,                       || web::get().to(console::index)),
    rule("GET",    "/ui/{asset}",                      Public,                       || web::get().to(console::asset)),
    rule("GET",    "/v1/ca/chain",                     Public,                       || web::get().to(ca::chain)),
    rule("GET",    "/v1/ca/crl",                       Public,                       || web::get().to(ca::crl_current)),
    rule("GET",    "/v1/ca/crls.pem",                  Public,                       || web::get().to(ca::crls_pem)),
    rule("GET",    "/v1/ca/crl/{issuer_id}",           Public,                       || web::get().to(ca::crl_of)),
    rule("POST",   "/v1/ca/ocsp",                      Public,                       || web::post().to(ca::ocsp_post)),
    rule("GET",    "/v1/ca/ocsp/{req:.*}",             Public,                       || web::get().to(ca::ocsp_get)),
    rule("GET",    "/v1/ca/issuers",                   UnscopedEither(CertificateAdmin, RegistryRead), || web::get().to(ca::issuers)),
    rule("POST",   "/v1/ca/intermediate/rotate",       Unscoped(CertificateAdmin),   || web::post().to(ca::rotate_intermediate)),
    rule("POST",   "/v1/ca/server-certificates",       Unscoped(CertificateAdmin),   || web::post().to(ca::server_certificate)),
    rule("POST",   "/v1/certificates/{serial}/revoke", Requires(CertificateAdmin),   || web::post().to(certificates::revoke)),
    rule("GET",    "/v1/devices",                      Requires(RegistryRead),       || web::get().to(devices::list)),
    rule("GET",    "/v1/devices/counts",               Requires(RegistryRead),       || web::get().to(devices::counts)),
    rule("PUT",    "/v1/devices/{id}",                 Requires(RegistryReadWrite),  || web::put().to(devices::put)),
    rule("GET",    "/v1/devices/{id}",                 Requires(RegistryRead),       || web::get().to(devices::get)),
    rule("DELETE", "/v1/devices/{id}",                 Requires(RegistryReadWrite),  || web::delete().to(devices::delete)),
    rule("POST",   "/v1/devices/{id}/keys/rotate",     Requires(RegistryReadWrite),  || web::post().to(devices::rotate)),
    rule("POST",   "/v1/devices/{id}/certificates",    Requires(RegistryReadWrite),  || web::post().to(devices::issue_certificate)),
    rule("POST",   "/v1/devices/{id}/certificates/renew", Attestation,               || web::post().to(devices::renew)),
    rule("POST",   "/v1/devices/{id}/sas-token",       Requires(DeviceConnect),      || web::post().to(devices::sas_token)),
    rule("POST",   "/v1/sas/verify",                   Requires(ServiceConnect),     || web::post().to(devices::verify)),
    rule("GET",    "/v1/certificates",                 Requires(RegistryRead),       || web::get().to(certificates::list)),
    rule("GET",    "/v1/certificates/{serial}",        Requires(RegistryRead),       || web::get().to(certificates::get)),
    rule("GET",    "/v1/policies",                     Requires(PolicyAdmin),        || web::get().to(policies::list)),
    rule("PUT",    "/v1/policies/{name}",              Requires(PolicyAdmin),        || web::put().to(policies::put)),
    rule("GET",    "/v1/policies/{name}",              Requires(PolicyAdmin),        || web::get().to(policies::get)),
    rule("DELETE", "/v1/policies/{name}",              Requires(PolicyAdmin),        || web::delete().to(policies::delete)),
    rule("POST",   "/v1/policies/{name}/keys/rotate",  Requires(PolicyAdmin),        || web::post().to(policies::rotate)),
    rule("GET",    "/v1/operators",                    Requires(PolicyAdmin),        || web::get().to(operators::list)),
    rule("GET",    "/v1/operators/{name}",             Requires(PolicyAdmin),        || web::get().to(operators::get)),
    rule("PUT",    "/v1/operators/{name}",             Requires(PolicyAdmin),        || web::put().to(operators::put)),
    rule("DELETE", "/v1/operators/{name}",             Requires(PolicyAdmin),        || web::delete().to(operators::delete)),
    rule("POST",   "/v1/auth/login",                   Public,                       || web::post().to(operators::login)),
    rule("GET",    "/v1/enrollment-groups",            Requires(EnrollmentRead),     || web::get().to(enrollment::list_groups)),
    rule("GET",    "/v1/enrollments",                  Requires(EnrollmentRead),     || web::get().to(enrollment::list_enrollments)),
    rule("PUT",    "/v1/enrollment-groups/{id}",       Requires(EnrollmentWrite),    || web::put().to(enrollment::put_group)),
    rule("GET",    "/v1/enrollment-groups/{id}",       Requires(EnrollmentRead),     || web::get().to(enrollment::get_group)),
    rule("DELETE", "/v1/enrollment-groups/{id}",       Requires(EnrollmentWrite),    || web::delete().to(enrollment::delete_group)),
    rule("POST",   "/v1/enrollment-groups/{id}/tokens", Requires(EnrollmentWrite),   || web::post().to(enrollment::tokens)),
    rule("POST",   "/v1/enrollment-groups/{id}/registrations", Requires(Enroll),     || web::post().to(enrollment::registrations)),
    rule("PUT",    "/v1/enrollments/{registration_id}", Requires(EnrollmentWrite),   || web::put().to(enrollment::put_enrollment)),
    rule("GET",    "/v1/enrollments/{registration_id}", Requires(EnrollmentRead),    || web::get().to(enrollment::get_enrollment)),
    rule("DELETE", "/v1/enrollments/{registration_id}", Requires(EnrollmentWrite),   || web::delete().to(enrollment::delete_enrollment)),
    rule("POST",   "/v1/registrations/{registration_id}", Attestation,               || web::post().to(registrations::self_register)),
    rule("PUT",    "/{id_scope}/registrations/{registration_id}/register", Attestation, || web::put().to(registrations::dps_register)),
    rule("GET",    "/{id_scope}/registrations/{registration_id}/operations/{operation_id}", Attestation, || web::get().to(registrations::dps_operation)),
    rule("POST",   "/{id_scope}/registrations/{registration_id}", Attestation,       || web::post().to(registrations::dps_status)),
    rule("GET",    "/v1/bundles",                      Requires(BundleCreate),       || web::get().to(bundles::list)),
    rule("POST",   "/v1/bundles",                      Requires(BundleCreate),       || web::post().to(bundles::create)),
    rule("GET",    "/v1/bundles/{id}",                 Requires(BundleCreate),       || web::get().to(bundles::status)),
    rule("DELETE", "/v1/bundles/{id}",                 Requires(BundleCreate),       || web::delete().to(bundles::cancel)),
    rule("POST",   "/v1/bundles/{id}/redeem",          Attestation,                  || web::post().to(bundles::redeem)),
    rule("GET",    "/.well-known/est/cacerts",         Public,                       || web::get().to(est::cacerts)),
    rule("POST",   "/.well-known/est/simpleenroll",    Attestation,                  || web::post().to(est::simpleenroll)),
    rule("POST",   "/.well-known/est/simplereenroll",  Attestation,                  || web::post().to(est::simplereenroll)),
    rule("POST",   "/.well-known/est/serverkeygen",    Attestation,                  || web::post().to(est::serverkeygen)),
    rule("GET",    "/v1/audit",                        Unscoped(AuditRead),          || web::get().to(audit::list)),
    rule("GET",    "/v1/audit/verify",                 Unscoped(AuditRead),          || web::get().to(audit::verify)),
    rule("GET",    "/v1/audit/checkpoint",             Unscoped(AuditRead),          || web::get().to(audit::checkpoint)),
];

/// The query parameters of the `/v1` routes that take any; every other `/v1` route takes none.
/// Anything else is refused with 400 naming it (API.md A30), after authentication.
pub const QUERY_PARAMETERS: &[(&str, &str, &[&str])] = &[
    ("GET", "/v1/devices", &["cursor", "limit", "status", "prefix", "enrollment_group_id"]),
    ("GET", "/v1/certificates", &["device_id", "limit", "cursor", "kind"]),
    ("GET", "/v1/audit", &["after", "limit", "action", "target_prefix", "outcome"]),
    ("GET", "/v1/ca/crl", &["format"]),
    ("GET", "/v1/ca/crl/{issuer_id}", &["format"]),
    ("GET", "/v1/policies", &["cursor", "limit"]),
    ("GET", "/v1/operators", &["cursor", "limit"]),
    ("GET", "/v1/enrollment-groups", &["cursor", "limit"]),
    ("GET", "/v1/enrollments", &["cursor", "limit"]),
    ("GET", "/v1/bundles", &["cursor", "limit", "device_id", "status"]),
];

/// Refuses a `/v1` query parameter the route does not take.
fn check_query(pattern: &str, method: &str, query: &str) -> Result<(), ApiError> {
    if !pattern.starts_with("/v1/") || query.is_empty() {
        return Ok(());
    }
    let allowed = QUERY_PARAMETERS
        .iter()
        .find(|(m, p, _)| *m == method && *p == pattern)
        .map_or(&[][..], |(_, _, names)| *names);
    let pairs = web::Query::<Vec<(String, String)>>::from_query(query)
        .map_err(|_| ApiError::BadRequest("the query string is malformed".into()))?;
    match pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        Some((k, _)) => Err(ApiError::BadRequest(format!(
            "unknown query parameter `{}`",
            k.chars().take(64).collect::<String>()
        ))),
        None => Ok(()),
    }
}

const fn rule(
    method: &'static str,
    path: &'static str,
    access: Access,
    route: fn() -> Route,
) -> RouteRule {
    RouteRule { method, path, access, route }
}

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
    let needed = rule.map(|r| (r.access.permissions(), r.access.unscoped_only()));
    if let Some((permissions, unscoped_only)) = needed.filter(|(p, _)| !p.is_empty()) {
        let Some(state) = req.app_data::<web::Data<AppState>>().map(|d| d.clone().into_inner())
        else {
            return Err(ApiError::internal(std::io::Error::other("state missing")).into());
        };
        let principal = extract::authenticate(&state, req.request()).await?;
        if !permissions.iter().any(|p| principal.has(*p)) {
            audit_denied(&state, &principal.name, req.request()).await;
            let names: Vec<&str> = permissions.iter().map(|p| p.as_str()).collect();
            return Err(ApiError::Forbidden(format!(
                "this operation needs the {} permission",
                names.join(" or ")
            ))
            .into());
        }
        if unscoped_only && principal.is_scoped() {
            audit_denied(&state, &principal.name, req.request()).await;
            return Err(ApiError::Forbidden(
                "this operation is for unscoped principals only (CA-level objects, audit)".into(),
            )
            .into());
        }
        req.extensions_mut().insert(Authenticated(principal));
    }
    if let Some(rule) = rule {
        check_query(rule.path, rule.method, req.query_string())?;
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

async fn audit_denied(state: &Arc<AppState>, actor: &str, req: &actix_web::HttpRequest) {
    // The path is the caller's text: bounded and escaped like a failure row's (API.md A25).
    let path = crate::audit::bounded_text(req.path(), crate::audit::MAX_PATH_CHARS);
    let entry = crate::audit::Entry::failure(
        actor,
        "auth.forbidden",
        &path,
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
    // Bounded label sets (API.md A25): the matched route template, never the raw path; the
    // standard methods by name and any other method string as `other`.
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(req.method());
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let res = next.call(req).await;
    if let Some(state) = state {
        let status = match &res {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.as_response_error().status_code().as_u16(),
        };
        state.metrics.http_requests.with_label_values(&[&route, method, &status.to_string()]).inc();
        state
            .metrics
            .http_duration
            .with_label_values(&[&route])
            .observe(start.elapsed().as_secs_f64());
    }
    res
}

/// The `method` label of a request: one of the standard methods, or `other` (the access log
/// names methods the same way).
pub fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method as M;
    match *method {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::PATCH => "PATCH",
        M::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_the_standard_methods_or_other() {
        use actix_web::http::Method;
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for odd in ["TRACE", "CONNECT", "FOO", "get", "X-ANYTHING-123"] {
            let m = Method::from_bytes(odd.as_bytes()).unwrap();
            assert_eq!(method_label(&m), "other", "{odd}");
        }
    }

    #[test]
    fn every_route_in_the_table_is_in_the_openapi_contract() {
        let doc: serde_json::Value = serde_json::from_str(ops::openapi_json().unwrap()).unwrap();
        let param = regex::Regex::new(r"\{([a-z_]+):[^}]*\}").unwrap();
        for rule in ROUTES {
            // `{name:regex}` in actix is `{name}` in OpenAPI.
            let path = param.replace_all(rule.path, "{$1}");
            let op = &doc["paths"][path.as_ref()][rule.method.to_ascii_lowercase()];
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
                assert_eq!(a.access, Unscoped(Permission::AuditRead));
            }
        }
    }
}
