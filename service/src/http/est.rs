//! EST (RFC 7030) under `/.well-known/est/`: `cacerts`, `simpleenroll`, `simplereenroll`,
//! `serverkeygen`. Bodies are base64 (PKCS#10 in, certs-only CMS out). Enrollment is
//! authenticated by HTTP Basic (user = registration id, password = a one-time enrollment token)
//! or a manufacturer client certificate; re-enrollment by the current certificate (mTLS).

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;

use super::extract::client_ip;
use super::problem::ApiError;
use super::registrations::{attest_x509, run_registration};
use super::respond::RequestCtx;
use crate::auth::jwt::ENROLLMENT_AUDIENCE;
use crate::auth::AuthError;
use crate::state::AppState;
use crate::usecase::groups::{self, Group};
use crate::usecase::register::RegistrationRequest;

const CERTS_ONLY: &str = "application/pkcs7-mime; smime-type=certs-only";

fn mime_ok(req: &HttpRequest, want: &str) -> Result<(), ApiError> {
    let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case(want) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!("EST requests must be sent as {want}")))
    }
}

fn certs_response(ders: &[&[u8]]) -> Result<HttpResponse, ApiError> {
    let cms = ca::est::certs_only(ders).map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type(CERTS_ONLY)
        .insert_header(("Content-Transfer-Encoding", "base64"))
        .body(ca::est::base64_lines(&cms)))
}

/// `GET /.well-known/est/cacerts`
pub async fn cacerts(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let authority = state.authority();
    let now = state.now();
    let mut ders: Vec<&[u8]> =
        authority.live_intermediates(now).iter().map(|e| e.cert_der.as_slice()).collect();
    ders.push(&authority.root().cert_der);
    let cms = ca::est::certs_only(&ders).map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type("application/pkcs7-mime")
        .insert_header(("Content-Transfer-Encoding", "base64"))
        .body(ca::est::base64_lines(&cms)))
}

fn csr_body(body: &[u8]) -> Result<Vec<u8>, ApiError> {
    ca::est::decode_base64_body(body)
        .map_err(|_| ApiError::BadRequest("the body must be a base64 DER PKCS#10 request".into()))
}

fn csr_cn(der: &[u8]) -> Result<String, ApiError> {
    let csr = ca::csr::VerifiedCsr::parse(der, &ca::csr::CsrPolicy::server())
        .map_err(|e| ApiError::BadRequest(format!("CSR rejected: {e}")))?;
    csr.common_name()
        .map(str::to_owned)
        .ok_or_else(|| ApiError::BadRequest("CSR rejected: no subject CN".into()))
}

/// Who is enrolling: a group and the registration id, plus the token to consume.
struct EstEnroller {
    group: Arc<Group>,
    registration_id: String,
    jti: Option<String>,
}

async fn enroller(
    state: &AppState,
    req: &HttpRequest,
    csr_der: &[u8],
) -> Result<EstEnroller, ApiError> {
    let auth = req.headers().get(header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    let outcome: Result<EstEnroller, AuthError> = match auth {
        Some(h) if h.len() > 6 && h[..6].eq_ignore_ascii_case("basic ") => {
            let decoded = base64::engine::general_purpose::STANDARD.decode(h[6..].trim()).ok();
            let pair = decoded.and_then(|d| String::from_utf8(d).ok());
            match pair.as_deref().and_then(|p| p.split_once(':')) {
                Some((user, token)) => token_enroller(state, user, token)
                    .await
                    .ok_or_else(|| AuthError::Invalid { claimed: Some(user.to_owned()) }),
                None => Err(AuthError::Invalid { claimed: None }),
            }
        }
        Some(_) => Err(AuthError::UnsupportedScheme),
        None => {
            let id = csr_cn(csr_der)?;
            match attest_x509(state, req, &id).await {
                Some(Ok(group)) => Ok(EstEnroller { group, registration_id: id, jti: None }),
                Some(Err(e)) => Err(e),
                None => Err(AuthError::Missing),
            }
        }
    };
    match outcome {
        Ok(e) => Ok(e),
        Err(e) => Err(super::extract::refuse(state, req, e).await),
    }
}

/// HTTP Basic with an enrollment token as the password: the token's group, if it is valid.
async fn token_enroller(state: &AppState, user: &str, token: &str) -> Option<EstEnroller> {
    let claims = state.jwt.verify(token, ENROLLMENT_AUDIENCE, state.now(), 0).ok()?;
    // A token minted for one id is no credential for another.
    if claims.sub.as_deref().is_some_and(|sub| sub != user) {
        return None;
    }
    let group =
        groups::get(&state.store, &state.ring(), claims.grp.as_deref()?, false).await.ok()?;
    Some(EstEnroller {
        group: Arc::new(group),
        registration_id: user.to_owned(),
        jti: Some(claims.jti),
    })
}

/// `POST /.well-known/est/simpleenroll`
pub async fn simpleenroll(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    mime_ok(&req, "application/pkcs10")?;
    let csr = csr_body(&body)?;
    let who = enroller(&state, &req, &csr).await?;
    let r = run_registration(
        &state,
        &req,
        "est",
        who.group,
        who.jti,
        RegistrationRequest {
            registration_id: who.registration_id,
            csr: Some(csr),
            tags: None,
            payload: None,
            held: None,
        },
    )
    .await?;
    let leaf = r.chain.first().ok_or_else(|| {
        ApiError::BadRequest("this enrollment does not issue certificates".into())
    })?;
    certs_response(&[leaf.as_slice()])
}

/// `POST /.well-known/est/simplereenroll` (mTLS with the current certificate)
pub async fn simplereenroll(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let current = match state.own_client(&req) {
        Ok(c) => c,
        Err(e) => return Err(super::devices::refused_certificate(&state, &req, None, e).await),
    };
    mime_ok(&req, "application/pkcs10")?;
    let csr = csr_body(&body)?;
    let device_id = current
        .common_name
        .clone()
        .ok_or(ApiError::Forbidden("the client certificate has no CN".into()))?;
    if csr_cn(&csr)? != device_id {
        return Err(ApiError::BadRequest(
            "the CSR subject must equal the current certificate's subject".into(),
        ));
    }
    let actor =
        crate::usecase::Actor { name: format!("device:{device_id}"), addr: client_ip(&req) };
    let rc = RequestCtx::for_actor(&state, actor);
    let cx = rc.cx(&state);
    let authority = state.authority();
    let issued = crate::usecase::renew::renew(
        &state.store,
        &cx,
        &authority,
        &state.config.public_base_url(),
        crate::usecase::renew::RenewRequest {
            device_id: &device_id,
            presented: &current,
            csr: &csr,
            revoke_previous: false,
        },
    )
    .await?;
    certs_response(&[issued.cert.der.as_slice()])
}

/// `POST /.well-known/est/serverkeygen`: the server generates the key pair.
pub async fn serverkeygen(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    mime_ok(&req, "application/pkcs10")?;
    let client_csr = csr_body(&body)?;
    let who = enroller(&state, &req, &client_csr).await?;
    // The client's CSR names the subject; the key is generated here and certified through the
    // same registration path (a CSR made server-side with the new key).
    let (key, _) = ca::issue::generate_key(ca::KeyType::P256).map_err(ApiError::internal)?;
    let pair = rcgen::KeyPair::try_from(key.expose_secret()).map_err(ApiError::internal)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, who.registration_id.as_str());
    let csr = params.serialize_request(&pair).map_err(ApiError::internal)?.der().to_vec();
    if csr_cn(&client_csr)? != who.registration_id {
        return Err(ApiError::BadRequest(
            "CSR rejected: the subject CN must equal the registration id".into(),
        ));
    }
    let r = run_registration(
        &state,
        &req,
        "est",
        who.group,
        who.jti,
        RegistrationRequest {
            registration_id: who.registration_id,
            csr: Some(csr),
            tags: None,
            payload: None,
            held: None,
        },
    )
    .await?;
    let leaf = r.chain.first().ok_or_else(|| {
        ApiError::BadRequest("this enrollment does not issue certificates".into())
    })?;
    let cms = ca::est::certs_only(&[leaf.as_slice()]).map_err(ApiError::internal)?;
    let boundary = format!("est-{}", crate::usecase::random_hex(12));
    let key_b64 = zeroize::Zeroizing::new(ca::est::base64_lines(key.expose_secret()));
    let body = zeroize::Zeroizing::new(format!(
        "--{boundary}\r\nContent-Type: application/pkcs8\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n\
         --{boundary}\r\nContent-Type: {CERTS_ONLY}\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--{boundary}--\r\n",
        &*key_b64,
        ca::est::base64_lines(&cms)
    ));
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .content_type(format!("multipart/mixed; boundary={boundary}"))
        .body(body.as_bytes().to_vec()))
}
