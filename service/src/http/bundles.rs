//! `/v1/bundles`: create (BundleCreate), status, cancel, and the token-authenticated redeem.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::extract::{client_ip, Authenticated};
use super::problem::ApiError;
use super::respond::{secret_json, ts, RequestCtx};
use crate::audit::Entry;
use crate::state::AppState;
use crate::usecase::bundles::{self, BundleError, BundleToken, Format, NewBundle, Redeemed};
use crate::usecase::groups::Credential;
use crate::usecase::Actor;

impl From<BundleError> for ApiError {
    fn from(e: BundleError) -> Self {
        match e {
            BundleError::Invalid(m) => ApiError::BadRequest(m),
            BundleError::DeviceNotFound => ApiError::NotFound("device not found".into()),
            BundleError::DeviceDisabled => ApiError::Conflict(
                "the device is disabled: enable it first (a pending bundle stays redeemable)"
                    .into(),
            ),
            BundleError::NotFound => ApiError::NotFound("bundle not found".into()),
            BundleError::Unauthorized => {
                ApiError::Unauthorized { detail: "missing or invalid bundle token" }
            }
            BundleError::Gone(why) => ApiError::Gone(format!("bundle {why}")),
            BundleError::NotPending(s) => {
                ApiError::Conflict(format!("bundle is {s}; only pending bundles can be cancelled"))
            }
            BundleError::Store(s) => s.into(),
            BundleError::Internal(m) => ApiError::internal(std::io::Error::other(m)),
            BundleError::Sign(s) => s.into(),
        }
    }
}

/// Create body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    device_id: String,
    credential: String,
    format: String,
    ttl_secs: Option<i64>,
}

/// `POST /v1/bundles`
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Authenticated,
    body: web::Json<CreateBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    crate::ids::validate("device id", &body.device_id)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let credential = Credential::parse(&body.credential)
        .ok_or_else(|| ApiError::BadRequest("credential must be x509, sas or both".into()))?;
    let format = Format::parse(&body.format)
        .ok_or_else(|| ApiError::BadRequest("format must be json, pem-tar or pkcs12".into()))?;
    let ttl = body.ttl_secs.unwrap_or(86_400);
    if !(1..=bundles::MAX_TTL_SECS).contains(&ttl) {
        return Err(ApiError::BadRequest(format!(
            "ttl_secs must be between 1 and {}",
            bundles::MAX_TTL_SECS
        )));
    }
    if format == Format::Pkcs12 && credential == Credential::Sas {
        return Err(ApiError::BadRequest(
            "pkcs12 needs a certificate: use credential x509 or both".into(),
        ));
    }
    let rc = RequestCtx::new(&state, &req, &who);
    let authority = state.authority();
    let new = NewBundle { device_id: body.device_id, credential, format, ttl_secs: ttl };
    let (id, token, expires_at) = bundles::create(
        &state.store,
        &rc.cx(&state),
        &authority,
        &state.config.public_base_url(),
        who.0.scope.as_ref(),
        new,
    )
    .await?;
    Ok(secret_json(
        StatusCode::CREATED,
        &json!({"id": id, "token": token.expose_secret(), "expires_at": ts(expires_at)}),
    ))
}

fn bundle_id(req: &HttpRequest) -> Result<String, ApiError> {
    let id = req.match_info().get("id").unwrap_or_default();
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(ApiError::NotFound("bundle not found".into()));
    }
    Ok(id.to_ascii_lowercase())
}

/// `?device_id=&status=&cursor=&limit=`
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    device_id: Option<String>,
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

fn bundle_json(b: &crate::usecase::bundles::BundleRow, now: i64) -> serde_json::Value {
    json!({
        "id": b.id, "device_id": b.device_id, "credential": b.credential, "format": b.format,
        "status": bundles::status(b, now), "created_at": ts(b.created_at),
        "expires_at": ts(b.expires_at), "redeemed_at": b.redeemed_at.map(ts),
        "redeemed_from": b.redeemed_from,
    })
}

/// `GET /v1/bundles`: records only (never a token or payload), in the caller's scope.
pub async fn list(
    state: web::Data<AppState>,
    who: Authenticated,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = super::respond::PageQuery { cursor: q.cursor.clone(), limit: q.limit };
    let (after, limit) = page.bounds()?;
    if let Some(id) = &q.device_id {
        crate::ids::validate("device id", id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    if let Some(s) = &q.status {
        if !["pending", "redeemed", "expired", "cancelled"].contains(&s.as_str()) {
            return Err(ApiError::BadRequest(
                "status must be pending, redeemed, expired or cancelled".into(),
            ));
        }
    }
    let now = state.now();
    let (rows, more) = bundles::list(
        &state.store,
        who.0.scope.as_ref(),
        q.device_id.as_deref(),
        q.status.as_deref(),
        &after,
        limit,
        now,
    )
    .await?;
    let next = if more { rows.last().map(|r| r.id.clone()) } else { None };
    let items = rows.iter().map(|b| bundle_json(b, now)).collect();
    Ok(HttpResponse::Ok().json(super::respond::page_json(items, next.as_deref())))
}

/// `GET /v1/bundles/{id}`
pub async fn status(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Authenticated,
) -> Result<HttpResponse, ApiError> {
    let id = bundle_id(&req)?;
    let b = bundles::get(&state.store, who.0.scope.as_ref(), &id).await?;
    Ok(HttpResponse::Ok().json(bundle_json(&b, state.now())))
}

/// `DELETE /v1/bundles/{id}`
pub async fn cancel(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Authenticated,
) -> Result<HttpResponse, ApiError> {
    let id = bundle_id(&req)?;
    let rc = RequestCtx::new(&state, &req, &who);
    bundles::cancel(&state.store, &rc.cx(&state), who.0.scope.as_ref(), &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /v1/bundles/{id}/redeem` with `Authorization: Bundle <token>`
pub async fn redeem(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = bundle_id(&req)?;
    let addr = client_ip(&req).unwrap_or_else(|| "unknown".into());
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(BundleToken::from_header);
    let actor = Actor { name: format!("bundle:{id}"), addr: Some(addr.clone()) };
    let rc = RequestCtx::for_actor(&state, actor.clone());
    let cx = rc.cx(&state);
    let now = cx.now;
    match bundles::redeem(&state.store, &cx, &id, token).await {
        Ok(r) => render(&state, r),
        // A wrong token is a refused credential: counted, rate-limited, audited within bounds.
        Err(BundleError::Unauthorized) => Err(super::extract::refused_credential(
            &state,
            Some(&actor.name),
            req.path(),
            &addr,
            "bundle",
            "missing or invalid bundle token",
        )
        .await),
        Err(e) => {
            // Only the token's holder gets this far (the token is checked first).
            if matches!(e, BundleError::Gone(_)) {
                let entry = Entry::failure(&actor.name, "bundle.redeem", &id, Some(&addr));
                crate::audit::record(&state.store, &state.audit_key, &entry, now).await?;
            }
            Err(e.into())
        }
    }
}

fn render(state: &AppState, r: Redeemed) -> Result<HttpResponse, ApiError> {
    let x509: Value = serde_json::from_slice(&r.payload).map_err(ApiError::internal)?;
    let host = &state.config.host_name;
    let mut doc = json!({"device_id": r.device_id, "credential": r.credential.as_str()});
    if let Some((p, s)) = &r.sas_keys {
        doc["host_name"] = json!(host);
        doc["symmetric_key"] = json!({"primary_key": **p, "secondary_key": **s});
        doc["connection_string"] =
            json!(format!("HostName={host};DeviceId={};SharedAccessKey={}", r.device_id, **p));
    }
    let text = |k: &str| x509.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let no_store = |b: &mut actix_web::HttpResponseBuilder| {
        b.insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::PRAGMA, "no-cache"));
    };
    match r.format {
        Format::Json => {
            if r.credential.x509() {
                for k in ["private_key", "certificate", "certificate_chain", "ca_chain"] {
                    doc[k] = json!(text(k));
                }
            }
            Ok(secret_json(StatusCode::OK, &doc))
        }
        Format::PemTar => {
            let mut files: Vec<(&str, Zeroizing<Vec<u8>>, u32)> = Vec::new();
            if r.credential.x509() {
                files.push(("device.crt", Zeroizing::new(text("certificate").into_bytes()), 0o644));
                files.push(("device.key", Zeroizing::new(text("private_key").into_bytes()), 0o600));
                files.push((
                    "chain.pem",
                    Zeroizing::new(text("certificate_chain").into_bytes()),
                    0o644,
                ));
            }
            doc["host_name"] = json!(host);
            files.push(("device.json", Zeroizing::new(doc.to_string().into_bytes()), 0o600));
            let mut builder = tar::Builder::new(Vec::new());
            for (name, content, mode) in &files {
                let mut h = tar::Header::new_ustar();
                h.set_size(content.len() as u64);
                h.set_mode(*mode);
                h.set_mtime(state.now().max(0) as u64);
                h.set_cksum();
                builder
                    .append_data(&mut h, name, content.as_slice())
                    .map_err(ApiError::internal)?;
            }
            let archive = builder.into_inner().map_err(ApiError::internal)?;
            let mut resp = HttpResponse::Ok();
            no_store(&mut resp);
            Ok(resp
                .content_type("application/x-tar")
                .insert_header((
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{}.tar\"", r.device_id),
                ))
                .body(archive))
        }
        Format::Pkcs12 => {
            let key_der = pem_contents(&text("private_key"))?;
            let chain = ca::authority::certs_from_pem(&text("certificate_chain"))
                .map_err(ApiError::internal)?;
            let certs = chain
                .iter()
                .map(|d| p12_keystore::Certificate::from_der(d))
                .collect::<Result<Vec<_>, _>>()
                .map_err(ApiError::internal)?;
            let key = p12_keystore::PrivateKey::from_der(&key_der).map_err(ApiError::internal)?;
            let mut store = p12_keystore::KeyStore::new();
            store.add_entry(
                &r.device_id,
                p12_keystore::KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(
                    r.device_id.as_str(),
                    key,
                    certs,
                )),
            );
            let password = req_password(&r)?;
            let p12 = store
                .writer(&password)
                .encryption_algorithm(p12_keystore::EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
                .mac_algorithm(p12_keystore::MacAlgorithm::HmacSha256)
                .write()
                .map_err(ApiError::internal)?;
            let mut resp = HttpResponse::Ok();
            no_store(&mut resp);
            Ok(resp.content_type("application/x-pkcs12").body(p12))
        }
    }
}

fn pem_contents(text: &str) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    pem::parse(text).map(|p| Zeroizing::new(p.into_contents())).map_err(ApiError::internal)
}

fn req_password(r: &Redeemed) -> Result<Zeroizing<String>, ApiError> {
    r.password
        .clone()
        .ok_or_else(|| ApiError::internal(std::io::Error::other("bundle password missing")))
}
