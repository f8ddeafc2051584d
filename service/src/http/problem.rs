//! THE error → HTTP mapping. Every error leaving a handler becomes `application/problem+json`
//! (RFC 9457) with a stable `type` URI per kind. Client errors carry a safe, actionable detail;
//! internal errors carry a fixed text and are logged with their full cause chain.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::usecase::StoreError;

/// Content type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An API error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// 400: invalid input; the text says what to fix.
    #[error("{0}")]
    BadRequest(String),
    /// 409: conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// 403: authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 410: gone for good.
    #[error("{0}")]
    Gone(String),
    /// 500: fixed text to the client, full chain to the log.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// 405.
    #[error("method not allowed on this resource")]
    MethodNotAllowed,
    /// 404 (also for objects outside the caller's scope).
    #[error("{0}")]
    NotFound(String),
    /// 501.
    #[error("{0}")]
    NotImplemented(String),
    /// 503: too much work queued (password hashing); retry after a second.
    #[error("the server is busy; retry after 1 s")]
    Overloaded,
    /// 413.
    #[error("request body too large (JSON bodies are limited to 1 MiB)")]
    PayloadTooLarge,
    /// 408: the body stopped arriving.
    #[error("request timeout: no part of the body arrived for {0} s")]
    RequestTimeout(u64),
    /// 412.
    #[error("precondition failed: the resource changed (etag mismatch)")]
    PreconditionFailed,
    /// 429.
    #[error("too many failed authentications; retry after {retry_after} s")]
    TooManyRequests {
        /// seconds
        retry_after: i64,
    },
    /// 401.
    #[error("{detail}")]
    Unauthorized {
        /// what was wrong, without secret detail
        detail: &'static str,
    },
    /// 503.
    #[error("service unavailable: the database cannot be reached")]
    Unavailable,
    /// 503: the CA key store (PKCS#11 token) cannot sign now; the text names it, no secret.
    #[error("service unavailable: {0}")]
    KeyStoreUnavailable(String),
    /// 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
}

impl ApiError {
    /// Wraps any internal error.
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Internal(Box::new(e))
    }

    fn slug_and_title(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::BadRequest(_) => ("bad-request", "Bad Request"),
            ApiError::Conflict(_) => ("conflict", "Conflict"),
            ApiError::Forbidden(_) => ("forbidden", "Forbidden"),
            ApiError::Gone(_) => ("gone", "Gone"),
            ApiError::Internal(_) => ("internal", "Internal Server Error"),
            ApiError::MethodNotAllowed => ("method-not-allowed", "Method Not Allowed"),
            ApiError::NotFound(_) => ("not-found", "Not Found"),
            ApiError::NotImplemented(_) => ("not-implemented", "Not Implemented"),
            ApiError::Overloaded => ("overloaded", "Service Unavailable"),
            ApiError::PayloadTooLarge => ("payload-too-large", "Payload Too Large"),
            ApiError::PreconditionFailed => ("precondition-failed", "Precondition Failed"),
            ApiError::RequestTimeout(_) => ("request-timeout", "Request Timeout"),
            ApiError::TooManyRequests { .. } => ("rate-limited", "Too Many Requests"),
            ApiError::Unauthorized { .. } => ("unauthorized", "Unauthorized"),
            ApiError::Unavailable | ApiError::KeyStoreUnavailable(_) => {
                ("unavailable", "Service Unavailable")
            }
            ApiError::UnsupportedMediaType(_) => {
                ("unsupported-media-type", "Unsupported Media Type")
            }
        }
    }
}

/// Renders a problem document.
pub fn problem(status: StatusCode, slug: &str, title: &str, detail: &str) -> HttpResponse {
    let body = serde_json::json!({
        "type": format!("urn:provisiond:problem:{slug}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, PROBLEM_JSON))
        .body(body.to_string())
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Unavailable | ApiError::KeyStoreUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(source) = self {
            tracing::error!(error = %error_chain(source.as_ref()), "internal error");
        }
        let (slug, title) = self.slug_and_title();
        let mut resp = problem(self.status_code(), slug, title, &self.to_string());
        match self {
            ApiError::Unauthorized { .. } => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("SharedAccessSignature"),
                );
            }
            ApiError::TooManyRequests { retry_after } => {
                if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            ApiError::Unavailable | ApiError::KeyStoreUnavailable(_) => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            ApiError::Overloaded => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::RequestTimeout(_) => {
                resp.head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
            }
            _ => {}
        }
        resp
    }
}

impl From<ca::SignError> for ApiError {
    fn from(e: ca::SignError) -> Self {
        match e {
            ca::SignError::Unavailable(_) => ApiError::KeyStoreUnavailable(
                "the CA key store (PKCS#11 token) is unreachable".into(),
            ),
            ca::SignError::KeyMissing(label) => {
                ApiError::Conflict(format!("the CA key `{label}` is not in the PKCS#11 token"))
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<ca::IssueError> for ApiError {
    fn from(e: ca::IssueError) -> Self {
        match e {
            ca::IssueError::Sign(s) => s.into(),
            other => ApiError::internal(other),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("not found".into()),
            StoreError::Conflict { .. } => ApiError::Conflict("the object already exists".into()),
            StoreError::Unavailable(_) => ApiError::Unavailable,
            StoreError::Contention(_) => ApiError::Conflict(
                "a concurrent change to the same object won; send the request again".into(),
            ),
            StoreError::Unstorable(_) => ApiError::BadRequest(
                "a text value contains a character that cannot be stored (NUL)".into(),
            ),
            other => ApiError::internal(other),
        }
    }
}

pub use crate::errors::error_chain;

impl From<crate::usecase::devices::DeviceError> for ApiError {
    fn from(e: crate::usecase::devices::DeviceError) -> Self {
        use crate::usecase::devices::DeviceError as E;
        match e {
            E::Disabled | E::OwnerMissing(_) => ApiError::Conflict(e.to_string()),
            E::Invalid(m) => ApiError::BadRequest(m),
            E::NotFound => ApiError::NotFound("device not found".into()),
            E::PreconditionFailed => ApiError::PreconditionFailed,
            E::Store(s) => s.into(),
            E::Seal(s) => ApiError::internal(s),
        }
    }
}

impl From<crate::usecase::certificates::CertificateError> for ApiError {
    fn from(e: crate::usecase::certificates::CertificateError) -> Self {
        use crate::usecase::certificates::CertificateError as E;
        match e {
            E::Csr(c) => ApiError::BadRequest(format!("CSR rejected: {c}")),
            E::DeviceDisabled | E::KeyCompromised => ApiError::Conflict(e.to_string()),
            E::DeviceNotFound => ApiError::NotFound("device not found".into()),
            E::Store(s) => s.into(),
            E::Issue(i) => i.into(),
        }
    }
}

impl From<crate::usecase::policies::PolicyError> for ApiError {
    fn from(e: crate::usecase::policies::PolicyError) -> Self {
        use crate::usecase::policies::PolicyError as E;
        match e {
            E::Protected(m) => ApiError::Conflict(m),
            E::NotFound => ApiError::NotFound("policy not found".into()),
            E::Store(s) => s.into(),
            other => ApiError::internal(other),
        }
    }
}

impl ApiError {
    /// The problem document as a JSON value (for NDJSON error lines).
    pub fn to_problem_value(&self) -> serde_json::Value {
        let (slug, title) = self.slug_and_title();
        if let ApiError::Internal(source) = self {
            tracing::error!(error = %error_chain(source.as_ref()), "internal error");
        }
        serde_json::json!({
            "type": format!("urn:provisiond:problem:{slug}"),
            "title": title,
            "status": self.status_code().as_u16(),
            "detail": self.to_string(),
        })
    }
}

impl From<crate::usecase::groups::GroupError> for ApiError {
    fn from(e: crate::usecase::groups::GroupError) -> Self {
        use crate::usecase::groups::GroupError as E;
        match e {
            E::Invalid(m) => ApiError::BadRequest(m),
            E::Conflict(m) => ApiError::Conflict(m),
            E::NotFound => ApiError::NotFound("enrollment not found".into()),
            E::Store(s) => s.into(),
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::usecase::register::RegisterError> for ApiError {
    fn from(e: crate::usecase::register::RegisterError) -> Self {
        use crate::usecase::register::RegisterError as E;
        match e {
            E::Conflict(m) => ApiError::Conflict(m),
            E::Csr(c) => ApiError::BadRequest(format!("CSR rejected: {c}")),
            E::Disabled => {
                ApiError::Forbidden("provisioning is disabled for this enrollment".into())
            }
            E::DeviceDisabled => ApiError::Forbidden(e.to_string()),
            E::KeyCompromised => ApiError::Conflict(e.to_string()),
            E::NotFound => ApiError::NotFound("registration id not found".into()),
            E::Invalid(m) => ApiError::BadRequest(m),
            E::TokenUsed => {
                ApiError::Unauthorized { detail: "enrollment token already used or expired" }
            }
            E::TokenNotForThisId => {
                ApiError::Unauthorized { detail: "this enrollment token did not register this id" }
            }
            E::Store(s) => s.into(),
            E::Issue(i) => i.into(),
            E::Internal(fault) => ApiError::Internal(fault),
        }
    }
}

impl From<crate::usecase::revoke::RevokeError> for ApiError {
    fn from(e: crate::usecase::revoke::RevokeError) -> Self {
        match e {
            crate::usecase::revoke::RevokeError::NotFound => {
                ApiError::NotFound("certificate not found".into())
            }
            crate::usecase::revoke::RevokeError::Store(s) => s.into(),
            crate::usecase::revoke::RevokeError::Sign(s) => s.into(),
        }
    }
}

impl From<crate::usecase::intermediate::CaAdminError> for ApiError {
    fn from(e: crate::usecase::intermediate::CaAdminError) -> Self {
        use crate::usecase::intermediate::CaAdminError as E;
        match e {
            E::RootKeyMissing(_) | E::RootKeyMismatch | E::KeyCompromised => {
                ApiError::Conflict(e.to_string())
            }
            E::Csr(c) => ApiError::BadRequest(format!("CSR rejected: {c}")),
            E::Invalid(m) => ApiError::BadRequest(m),
            E::Store(s) => s.into(),
            E::Token(t) => ca::SignError::from(t).into(),
            E::Authority(ca::AuthorityError::Sign(s)) => s.into(),
            E::Issue(i) => i.into(),
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::usecase::renew::RenewError> for ApiError {
    fn from(e: crate::usecase::renew::RenewError) -> Self {
        use crate::usecase::renew::RenewError as E;
        match e {
            E::Unauthorized(m) => ApiError::Unauthorized { detail: m },
            E::OtherDevice => {
                ApiError::Forbidden("the client certificate belongs to another device".into())
            }
            E::KeyCompromised => ApiError::Conflict(e.to_string()),
            E::Csr(c) => ApiError::BadRequest(format!("CSR rejected: {c}")),
            E::Store(s) => s.into(),
            E::Issue(i) => i.into(),
        }
    }
}

impl From<crate::mtls::MtlsError> for ApiError {
    fn from(e: crate::mtls::MtlsError) -> Self {
        match e {
            crate::mtls::MtlsError::Missing => {
                ApiError::Unauthorized { detail: "a client certificate is required" }
            }
            crate::mtls::MtlsError::Invalid(_) => {
                ApiError::Unauthorized { detail: "the client certificate is not valid here" }
            }
        }
    }
}

impl From<crate::usecase::operators::OperatorError> for ApiError {
    fn from(e: crate::usecase::operators::OperatorError) -> Self {
        match e {
            crate::usecase::operators::OperatorError::NotFound => {
                ApiError::NotFound("operator not found".into())
            }
            crate::usecase::operators::OperatorError::BadCredentials => {
                ApiError::Unauthorized { detail: "invalid user name or password" }
            }
            e @ crate::usecase::operators::OperatorError::PasswordLength => {
                ApiError::BadRequest(e.to_string())
            }
            crate::usecase::operators::OperatorError::Exists => ApiError::PreconditionFailed,
            crate::usecase::operators::OperatorError::Store(s) => s.into(),
            crate::usecase::operators::OperatorError::Internal(m) => {
                ApiError::internal(std::io::Error::other(m))
            }
        }
    }
}
