//! Request extractors: the authenticated principal, client address, and credential parsing.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, FromRequest, HttpMessage as _, HttpRequest};

use super::problem::ApiError;
use crate::audit::Entry;
use crate::auth::ratelimit::Verdict;
use crate::auth::sas::{authenticate_policy, PolicyAuth, SasAuthError};
use crate::auth::{AuthError, Principal};
use crate::seal::SealError;
use crate::state::AppState;

/// The principal the guard middleware authenticated for this request.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Principal);

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Authenticated>()
                .cloned()
                .ok_or(ApiError::Unauthorized { detail: "authentication required" }),
        )
    }
}

/// The client's IP address as text.
pub fn client_ip(req: &HttpRequest) -> Option<String> {
    req.peer_addr().map(|a| a.ip().to_string())
}

/// Authenticates the `Authorization` header; on failure audits, counts toward the rate limit
/// and returns 401 or 429.
pub async fn authenticate(state: &AppState, req: &HttpRequest) -> Result<Principal, ApiError> {
    let header =
        req.headers().get(actix_web::http::header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    let outcome = match header {
        None => Err(AuthError::Missing),
        Some(h) if h.starts_with("SharedAccessSignature ") => {
            let (host, now, skew) =
                (&state.config.host_name, state.now(), state.config.sas_skew_secs);
            let ring = state.ring();
            let mut result =
                authenticate_policy(&state.store, &state.policy_cache, &ring, host, h, now, skew)
                    .await;
            if let Err(SasAuthError::Seal(SealError::UnknownVersion(_))) = &result {
                // A rotation added a key version this instance has not read yet.
                state.reload_ring();
                let ring = state.ring();
                result = authenticate_policy(
                    &state.store,
                    &state.policy_cache,
                    &ring,
                    host,
                    h,
                    now,
                    skew,
                )
                .await;
            }
            match result {
                Ok(PolicyAuth::Ok(p)) => Ok(p),
                Ok(PolicyAuth::Refused(e)) => Err(e),
                Err(SasAuthError::Store(e)) => return Err(e.into()),
                Err(e) => return Err(ApiError::internal(e)),
            }
        }
        Some(h) if h.starts_with("Bearer ") => {
            let token = h["Bearer ".len()..].trim();
            match crate::usecase::operators::authenticate(
                &state.store,
                &state.jwt,
                token,
                state.now(),
            )
            .await?
            {
                Some(p) => Ok(p),
                None => Err(AuthError::Invalid { claimed: None }),
            }
        }
        Some(_) => Err(AuthError::UnsupportedScheme),
    };
    match outcome {
        Ok(p) => Ok(p),
        Err(e) => Err(refuse(state, req, e).await),
    }
}

/// Records a failed authentication and builds the 401 / 429 answer.
pub async fn refuse(state: &AppState, req: &HttpRequest, err: AuthError) -> ApiError {
    refuse_at(state, client_ip(req), req.path(), err).await
}

/// [`refuse`] for any transport: `addr` the client address, `target` what it asked for (an HTTP
/// path, an MQTT username).
pub async fn refuse_at(
    state: &AppState,
    addr: Option<String>,
    target: &str,
    err: AuthError,
) -> ApiError {
    let addr = addr.unwrap_or_else(|| "unknown".into());
    let (claimed, detail, scheme) = match &err {
        AuthError::Missing => (None, "authentication required", "none"),
        AuthError::UnsupportedScheme => (None, "unsupported authorization scheme", "other"),
        AuthError::Invalid { claimed } => (claimed.clone(), "invalid or expired credential", "sas"),
    };
    refused_credential(state, claimed.as_deref(), target, &addr, scheme, detail).await
}

/// THE "credential refused" step: counts the failure (metric, limiter) and audits it as one
/// `auth.failure` row with bounded principal and path, unless its key is rate-limited: then the
/// failure only counts toward that key's summary row (API.md A25, A30). Requests without
/// credentials (`claimed` None) count only toward the per-address limit (API.md A23).
/// Returns 401 with `detail`, or 429.
pub async fn refused_credential(
    state: &AppState,
    claimed: Option<&str>,
    path: &str,
    addr: &str,
    scheme: &str,
    detail: &'static str,
) -> ApiError {
    state.metrics.auth_failures.with_label_values(&[scheme]).inc();
    let now = state.now();
    match state.limiter.record(claimed, addr, now) {
        Verdict::Limited { retry_after } => ApiError::TooManyRequests { retry_after },
        Verdict::Counted => {
            let entry = Entry::auth_failure(claimed, path, Some(addr));
            if let Err(e) = crate::audit::record(&state.store, &state.audit_key, &entry, now).await
            {
                tracing::warn!(error = %super::problem::error_chain(&e), "audit append failed");
            }
            ApiError::Unauthorized { detail }
        }
    }
}
