//! The HTTPS client of the admin CLI: resolves the server URL, the credential and the trust
//! anchors (API.md A30 *CLI*), sends one request per call and turns error statuses into
//! [`AdminError::Api`] carrying the problem's `detail`.
//!
//! Invariants: TLS always verifies the server against the chosen anchors (never disabled); the
//! `Authorization` value is built per request and never logged; an operator session is sent
//! only to the URL it was issued by.

use std::path::{Path, PathBuf};
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use zeroize::Zeroizing;

use super::auth::{load_session, ConnectionString};
use super::{AdminError, Remote};

/// Path-segment encoding: everything but unreserved characters (a literal `%` → `%25`, A5).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Common CA bundle locations, for "the system roots".
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// One path segment, percent-encoded.
pub(crate) fn seg(id: &str) -> String {
    utf8_percent_encode(id, SEGMENT).to_string()
}

/// How requests authenticate.
enum Credential {
    /// `Authorization: Bearer …` (operator session).
    Bearer(Zeroizing<String>),
    /// None (public routes, bundle redemption).
    None,
    /// `Authorization: SharedAccessSignature …` minted from a connection string.
    Sas(ConnectionString),
}

/// A server the CLI talks to.
pub(crate) struct Api {
    base: String,
    ca_file: Option<PathBuf>,
    http: reqwest::Client,
    credential: Credential,
}

/// A successful answer.
pub(crate) struct Reply {
    /// `Content-Type`, if any.
    pub(crate) content_type: String,
    /// The raw body.
    pub(crate) body: Vec<u8>,
}

impl Reply {
    /// The body as JSON.
    pub(crate) fn json(&self) -> Result<Value, AdminError> {
        serde_json::from_slice(&self.body).map_err(|e| AdminError::Unreachable {
            url: String::new(),
            reason: format!("the server sent invalid JSON: {e}"),
        })
    }

    /// The body as text (lossy).
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Whether a command needs a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Needs {
    /// Public routes (CA chain, CRL, bundle redemption).
    Anonymous,
    /// Everything else.
    Credential,
}

impl Api {
    /// Resolves URL, credential and trust from the flags, the environment, `--data-dir` and the
    /// login session.
    pub(crate) fn connect(
        remote: &Remote,
        data_dir: Option<&Path>,
        needs: Needs,
    ) -> Result<Self, AdminError> {
        let connection = remote
            .connection_string
            .as_deref()
            .filter(|c| !c.trim().is_empty())
            .map(ConnectionString::parse)
            .transpose()?;
        let config = data_dir
            .map(|d| {
                let overrides = crate::config::Overrides {
                    data_dir: Some(d.to_path_buf()),
                    ..Default::default()
                };
                crate::config::Config::load(&overrides).map_err(|e| {
                    AdminError::Config(format!("cannot read the config of {}: {e}", d.display()))
                })
            })
            .transpose()?;
        let session = if connection.is_none() { load_session()? } else { None };
        let url = remote
            .url
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| config.as_ref().map(|c| c.public_base_url()))
            .or_else(|| connection.as_ref().map(|c| format!("https://{}:8443", c.host)))
            .or_else(|| session.as_ref().map(|s| s.url.clone()))
            .ok_or_else(|| {
                AdminError::Config(
                    "no server: give --url (or PROVISIOND_URL), --data-dir, or a connection string"
                        .into(),
                )
            })?;
        let base = normalize_url(&url)?;
        let ca_file = remote
            .ca_file
            .clone()
            .or_else(|| data_dir.map(|d| d.join("ca-chain.pem")).filter(|p| p.exists()))
            .or_else(|| session.as_ref().and_then(|s| s.ca_file.clone()));
        let credential =
            match (connection, session) {
                (Some(c), _) => Credential::Sas(c),
                (None, Some(s)) if s.url == base => {
                    Credential::Bearer(Zeroizing::new(s.access_token.clone()))
                }
                _ if needs == Needs::Anonymous => Credential::None,
                (None, Some(s)) => {
                    return Err(AdminError::Config(format!(
                        "no credentials for {base}: the login session is for {}; give \
                     --connection-string (or PROVISIOND_CONNECTION_STRING) or run \
                     `provisiond login --url {base}`",
                        s.url
                    )))
                }
                (None, None) => return Err(AdminError::Config(
                    "no credentials: give --connection-string (or PROVISIOND_CONNECTION_STRING) \
                     or run `provisiond login`"
                        .into(),
                )),
            };
        Ok(Self { http: http_client(ca_file.as_deref())?, base, ca_file, credential })
    }

    /// The same server without a credential (login, bundle redemption carry their own).
    pub(crate) fn anonymized(self) -> Self {
        Self { credential: Credential::None, ..self }
    }

    /// The trust anchor file in use (`None` = the system roots).
    pub(crate) fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The base URL (no trailing slash).
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request; error statuses become [`AdminError::Api`].
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, AdminError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if !query.is_empty() {
            req = req.query(query);
        }
        match &self.credential {
            Credential::Bearer(token) => {
                req = req.header("Authorization", format!("Bearer {}", token.as_str()))
            }
            Credential::Sas(cs) => req = req.header("Authorization", cs.token().as_str()),
            Credential::None => {}
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let unreachable = |e: reqwest::Error| AdminError::Unreachable {
            url: self.base.clone(),
            reason: error_chain(&e),
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = resp.bytes().await.map_err(unreachable)?.to_vec();
        if status.is_success() {
            return Ok(Reply { content_type, body });
        }
        Err(AdminError::Api { status: status.as_u16(), detail: problem_detail(status, &body) })
    }

    /// GET returning JSON.
    pub(crate) async fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Reply, AdminError> {
        self.send(Method::GET, path, query, None, &[]).await
    }

    /// Follows `next_cursor` while `all`; returns the raw pages (one unless `all`).
    pub(crate) async fn pages(
        &self,
        path: &str,
        mut query: Vec<(&str, String)>,
        all: bool,
    ) -> Result<Vec<Value>, AdminError> {
        let mut pages = Vec::new();
        loop {
            let page = self.get(path, &query).await?.json()?;
            let next = page.get("next_cursor").and_then(Value::as_str).map(str::to_owned);
            pages.push(page);
            match next {
                Some(cursor) if all => {
                    query.retain(|(k, _)| *k != "cursor");
                    query.push(("cursor", cursor));
                }
                _ => return Ok(pages),
            }
        }
    }
}

/// `https://host[:port]` without a trailing slash; anything else is a usage error.
fn normalize_url(url: &str) -> Result<String, AdminError> {
    let trimmed = url.trim().trim_end_matches('/');
    let parsed = reqwest::Url::parse(trimmed)
        .map_err(|e| AdminError::Config(format!("invalid server URL {url:?}: {e}")))?;
    if parsed.scheme() != "https" || parsed.host_str().is_none() {
        return Err(AdminError::Config(format!(
            "invalid server URL {url:?}: provisiond speaks only https://host[:port]"
        )));
    }
    Ok(trimmed.to_owned())
}

fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client, AdminError> {
    let (path, pem) = match ca_file {
        Some(p) => {
            let pem = std::fs::read(p)
                .map_err(|e| AdminError::Config(format!("cannot read {}: {e}", p.display())))?;
            (p.to_path_buf(), pem)
        }
        None => system_roots()?,
    };
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        AdminError::Config(format!("{} holds no usable PEM certificate: {e}", path.display()))
    })?;
    if certs.is_empty() {
        return Err(AdminError::Config(format!("{} holds no PEM certificate", path.display())));
    }
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .user_agent(concat!("provisiond-cli/", env!("CARGO_PKG_VERSION")));
    for cert in certs {
        builder = builder.add_root_certificate(cert);
    }
    builder.build().map_err(|e| {
        AdminError::Config(format!("cannot build the HTTPS client: {}", error_chain(&e)))
    })
}

fn system_roots() -> Result<(PathBuf, Vec<u8>), AdminError> {
    let candidates = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from));
    for path in candidates {
        if let Ok(pem) = std::fs::read(&path) {
            return Ok((path, pem));
        }
    }
    Err(AdminError::Config(
        "no trust anchors: give --ca-file (the server's ca-chain.pem) or --data-dir".into(),
    ))
}

/// The problem's `detail` (else `title`), else the status text.
fn problem_detail(status: StatusCode, body: &[u8]) -> String {
    let problem: Option<Value> = serde_json::from_slice(body).ok();
    let member = |name: &str| {
        problem.as_ref().and_then(|p| p.get(name)).and_then(Value::as_str).map(str::to_owned)
    };
    member("detail")
        .filter(|d| !d.is_empty())
        .or_else(|| member("title"))
        .or_else(|| member("message"))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned())
}

/// An error and its causes, `: `-joined (reqwest's own message is rarely enough).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_and_lose_their_trailing_slash() {
        assert_eq!(normalize_url("https://h:8443/").unwrap(), "https://h:8443");
        for bad in ["http://h", "h:8443", "", "https://"] {
            assert_eq!(normalize_url(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn path_segments_are_encoded_once() {
        assert_eq!(seg("a/b%c d"), "a%2Fb%25c%20d");
        assert_eq!(seg("dev-1.x_y~"), "dev-1.x_y~");
    }

    #[test]
    fn problem_detail_prefers_detail_then_title() {
        let body = br#"{"type":"t","title":"Not Found","status":404,"detail":"no device d"}"#;
        assert_eq!(problem_detail(StatusCode::NOT_FOUND, body), "no device d");
        assert_eq!(problem_detail(StatusCode::BAD_GATEWAY, b"<html>"), "Bad Gateway");
    }
}
