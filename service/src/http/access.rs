//! The access log: one structured line per request at info (target `provisiond::access`):
//! method, route template, status, latency, principal, request id and client address. No
//! header, query string or body is ever logged (they carry tokens and keys), the path only as
//! its route template, and the method only from a fixed set: a line's size and content are
//! bounded whatever a caller sends. The request id is echoed as `X-Request-Id`.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage as _};

use super::extract::Authenticated;

/// The access-log middleware.
pub async fn log(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let start = Instant::now();
    let request_id = crate::usecase::random_hex(8);
    let method = super::method_label(req.method());
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let client = req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
    let res = next.call(req).await;
    let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
    match res {
        Ok(mut r) => {
            let principal =
                r.request().extensions().get::<Authenticated>().map(|a| a.0.name.clone());
            tracing::info!(
                target: "provisiond::access",
                method,
                route = %route,
                status = r.status().as_u16(),
                latency_ms,
                principal = principal.as_deref().unwrap_or("-"),
                request_id = %request_id,
                client = %client,
            );
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                r.headers_mut().insert(HeaderName::from_static("x-request-id"), v);
            }
            Ok(r)
        }
        Err(e) => {
            tracing::info!(
                target: "provisiond::access",
                method,
                route = %route,
                status = e.as_response_error().status_code().as_u16(),
                latency_ms,
                principal = "-",
                request_id = %request_id,
                client = %client,
            );
            Err(e)
        }
    }
}
