//! The admin console (API.md A28): static assets under `/ui/`, embedded in the binary.
//!
//! The console is plain HTML, CSS and JavaScript modules from `service/ui/`, compiled in with
//! `include_str!` (no build step, no CDN). It talks only to the public `/v1` API with the
//! operator JWT it keeps in memory, so it can do nothing that curl with the same credential
//! cannot. Every asset answer carries the same strict headers: a CSP allowing only `'self'` (no
//! inline script or style, no framing), `nosniff`, `no-referrer`; a name that is not in
//! [`ASSETS`] answers 404 problem+json.

use std::sync::OnceLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use sha2::{Digest as _, Sha256};

use super::problem::ApiError;

/// The console's Content-Security-Policy: everything from this origin only, nothing inline,
/// never framed, no `<base>` rewriting, forms post only here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file: its name under `/ui/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset { name: $name, content_type: $type, body: include_str!(concat!("../../ui/", $name)) }
    };
}

/// Every file the console serves; `/ui/` is `index.html`.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("overview.js", JS),
    asset!("devices.js", JS),
    asset!("enrollment.js", JS),
    asset!("bundles.js", JS),
    asset!("certificates.js", JS),
    asset!("policies.js", JS),
    asset!("audit.js", JS),
    asset!("favicon.svg", "image/svg+xml"),
];

/// Strong ETags of the assets (SHA-256 of the bytes, computed once): browsers revalidate
/// (`no-cache`) and get 304 until the binary changes.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", hex::encode(&Sha256::digest(a.body.as_bytes())[..16])))
            .collect()
    })
}

/// `GET /ui/`: the console's page.
pub async fn index(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    serve(&req, "index.html")
}

/// `GET /ui/{asset}`: one embedded file, or 404 problem+json.
pub async fn asset(req: HttpRequest, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    serve(&req, &name)
}

fn serve(req: &HttpRequest, name: &str) -> Result<HttpResponse, ApiError> {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        // The 404 carries the console's headers too: every `/ui/{file}` answer does.
        use actix_web::ResponseError as _;
        let mut resp = ApiError::NotFound("no such console file".into()).error_response();
        let secured = with_security_headers(HttpResponse::NotFound()).finish();
        for (name, value) in secured.headers() {
            resp.headers_mut().insert(name.clone(), value.clone());
        }
        return Ok(resp);
    };
    let (asset, etag) = (&ASSETS[i], &etags()[i]);
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if fresh {
        with_security_headers(HttpResponse::NotModified())
    } else {
        with_security_headers(HttpResponse::Ok())
    };
    resp.insert_header((header::ETAG, etag.as_str()));
    if fresh {
        return Ok(resp.finish());
    }
    Ok(resp.content_type(asset.content_type).body(asset.body))
}

fn with_security_headers(
    mut builder: actix_web::HttpResponseBuilder,
) -> actix_web::HttpResponseBuilder {
    builder
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .insert_header((header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .insert_header(("cross-origin-opener-policy", "same-origin"))
        .insert_header(("cross-origin-resource-policy", "same-origin"))
        // Revalidate every time (the ETag makes that a 304): an upgraded binary's console is
        // never mixed with cached modules of the old one.
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_unique_name_and_an_etag() {
        let mut names: Vec<_> = ASSETS.iter().map(|a| a.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ASSETS.len());
        assert_eq!(etags().len(), ASSETS.len());
    }

    /// The CSP forbids inline script and style; an inline one would simply not run, so catch
    /// it here rather than in a browser.
    #[test]
    fn no_asset_has_inline_script_style_or_handlers() {
        let handler = regex::Regex::new(r#"(?i)\son[a-z]+\s*="#).unwrap();
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".html") || a.name.ends_with(".svg")) {
            assert!(!a.body.contains("style="), "{}: style attribute", a.name);
            assert!(!a.body.contains("<style"), "{}: style element", a.name);
            assert!(!handler.is_match(a.body), "{}: inline event handler", a.name);
            for script in a.body.split("<script").skip(1) {
                let head = script.split('>').next().unwrap_or_default();
                assert!(head.contains("src="), "{}: inline script", a.name);
            }
        }
    }

    /// Data reaches the page only as text, and the session token only lives in memory.
    #[test]
    fn scripts_never_write_html_or_persist_anything() {
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            // Comments may name what the code must not do; the code itself may not do it.
            let code: String = a
                .body
                .lines()
                .filter(|l| !["//", "/*", "*"].iter().any(|c| l.trim_start().starts_with(c)))
                .collect::<Vec<_>>()
                .join("\n");
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
                "localStorage",
                "sessionStorage",
                "indexedDB",
                "document.cookie",
                "window.confirm",
                "setAttribute('on",
                "setAttribute(\"on",
                ".style.",
            ] {
                assert!(!code.contains(banned), "{} uses {banned}", a.name);
            }
        }
    }
}
