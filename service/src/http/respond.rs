//! Response and request helpers shared by handlers: the one no-store responder, path ids,
//! the acting principal, the use-case context.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse};

use super::extract::{client_ip, Authenticated};
use super::problem::ApiError;
use crate::state::AppState;
use crate::usecase::Actor;

/// A JSON response carrying secret material: `Cache-Control: no-store`.
pub fn secret_json(status: StatusCode, body: &serde_json::Value) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(body)
}

/// A path parameter validated as an IoT Hub–style id (decoded exactly once).
pub fn path_id(req: &HttpRequest, name: &str, kind: &'static str) -> Result<String, ApiError> {
    let raw =
        req.match_info().get(name).ok_or_else(|| ApiError::NotFound("no such route".into()))?;
    crate::ids::from_path(kind, raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

pub use crate::state::RequestCtx;

impl RequestCtx {
    /// Captures the context of `req` made by `who`.
    pub fn new(state: &AppState, req: &HttpRequest, who: &Authenticated) -> Self {
        Self::for_actor(state, Actor { name: who.0.name.clone(), addr: client_ip(req) })
    }
}

/// Unquoted value of an `If-Match` / `If-None-Match` header.
pub fn etag_header(
    req: &HttpRequest,
    name: header::HeaderName,
) -> Result<Option<String>, ApiError> {
    match req.headers().get(name) {
        None => Ok(None),
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| ApiError::BadRequest("malformed precondition header".into()))?
                .trim();
            let v = v.strip_prefix("W/").unwrap_or(v);
            Ok(Some(v.trim_matches('"').to_owned()))
        }
    }
}

/// RFC 3339 for unix seconds.
pub fn ts(unix: i64) -> String {
    crate::clock::rfc3339(unix)
}

/// Opaque paging cursor: base64url of the last key.
pub fn encode_cursor(last: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last)
}

/// Decodes a cursor; malformed → 400.
pub fn decode_cursor(cursor: Option<&str>) -> Result<String, ApiError> {
    use base64::Engine as _;
    match cursor {
        None => Ok(String::new()),
        Some(c) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            // cursors are ids and serials we issued: printable ASCII
            .filter(|s| !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| ApiError::BadRequest("malformed cursor".into())),
    }
}

/// Checks a `limit` query parameter (1..=1000, default 100).
pub fn limit(v: Option<i64>) -> Result<i64, ApiError> {
    let l = v.unwrap_or(100);
    if (1..=1000).contains(&l) {
        Ok(l)
    } else {
        Err(ApiError::BadRequest("limit must be between 1 and 1000".into()))
    }
}

/// An optional base64 SAS key member (16–64 bytes); the error names the member.
pub fn sas_key(text: Option<String>, member: &str) -> Result<Option<ca::SasKey>, ApiError> {
    text.map(|t| {
        ca::SasKey::from_base64(&t).map_err(|e| ApiError::BadRequest(format!("{member}: {e}")))
    })
    .transpose()
}

/// `?cursor=&limit=` of the lists (A12 paging); unknown parameters are refused by the guard.
#[derive(Debug, serde::Deserialize)]
pub struct PageQuery {
    /// opaque cursor from the previous page
    pub cursor: Option<String>,
    /// 1–1000, default 100
    pub limit: Option<i64>,
}

impl PageQuery {
    /// The decoded cursor and the limit (400 when malformed or out of range).
    pub fn bounds(&self) -> Result<(String, i64), ApiError> {
        Ok((decode_cursor(self.cursor.as_deref())?, limit(self.limit)?))
    }
}

/// A list page `{"items", "next_cursor"}`: the cursor is the key of the last item when more
/// follow, `null` on the last page.
pub fn page_json(items: Vec<serde_json::Value>, next_key: Option<&str>) -> serde_json::Value {
    serde_json::json!({"items": items, "next_cursor": next_key.map(encode_cursor)})
}
