//! Enrollment configuration (groups, individual enrollments, one-time tokens) and the
//! factory-line registration endpoint (single JSON or streaming NDJSON).

use std::collections::BTreeSet;
use std::sync::Arc;

use actix_web::http::{header, StatusCode};
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::extract::Authenticated;
use super::problem::ApiError;
use super::respond::{path_id, secret_json, ts, RequestCtx};
use crate::repr::KeysBody;
use crate::state::AppState;
use crate::usecase::groups::{self, Attestation, Credential, Group, Reprovisioning};
use crate::usecase::register::{stream, Registered, RegistrationRequest};

/// Largest NDJSON batch, in lines and bytes (API.md A10).
pub const MAX_BATCH_LINES: usize = 100_000;
/// Largest NDJSON batch in bytes.
pub const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// Lines per group-committed transaction.
pub const GROUP_COMMIT_LINES: usize = 250;
/// Largest single NDJSON line.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaBody {
    ca_certificates: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AwsClaimBody {
    ca_certificates: Vec<String>,
    template_name: String,
    parameters: groups::AwsParameters,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttestationBody {
    #[serde(rename = "type")]
    kind: String,
    symmetric_key: Option<KeysBody>,
    x509_ca: Option<CaBody>,
    aws_claim: Option<AwsClaimBody>,
}

/// PUT body of a group or individual enrollment: every member a GET returns is accepted back
/// (read-only ones ignored, the id must equal the path); any other member is refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupBody {
    enrollment_group_id: Option<String>,
    registration_id: Option<String>,
    #[serde(default, rename = "etag")]
    _etag: Option<Value>,
    #[serde(default, rename = "created_at")]
    _created_at: Option<Value>,
    #[serde(default, rename = "updated_at")]
    _updated_at: Option<Value>,
    attestation: Option<AttestationBody>,
    credential: Option<String>,
    provisioning_status: Option<String>,
    certificate_validity_days: Option<i64>,
    allowed_key_types: Option<Vec<String>>,
    registration_id_pattern: Option<String>,
    initial_tags: Option<Map<String, Value>>,
    reprovisioning: Option<String>,
}

type Keys = (Option<ca::SasKey>, Option<ca::SasKey>);

fn parse_group(id: &str, body: GroupBody, individual: bool) -> Result<(Group, Keys), ApiError> {
    let bad = |m: String| ApiError::BadRequest(m);
    let (member, other) = if individual {
        (&body.registration_id, &body.enrollment_group_id)
    } else {
        (&body.enrollment_group_id, &body.registration_id)
    };
    if member.as_deref().is_some_and(|m| m != id) {
        return Err(bad("the id in the body must equal the id in the path".into()));
    }
    if other.is_some() {
        let name = if individual { "enrollment_group_id" } else { "registration_id" };
        return Err(bad(format!("unknown member `{name}`")));
    }
    let att = body.attestation.unwrap_or(AttestationBody {
        kind: "symmetric_key".into(),
        symmetric_key: None,
        x509_ca: None,
        aws_claim: None,
    });
    if att.aws_claim.is_some() && att.kind != "aws_claim" {
        return Err(bad("attestation.aws_claim is only for attestation type aws_claim".into()));
    }
    let mut keys: Keys = (None, None);
    if let Some(k) = att.symmetric_key {
        keys = (
            super::respond::sas_key(k.primary_key, "attestation.symmetric_key.primary_key")?,
            super::respond::sas_key(k.secondary_key, "attestation.symmetric_key.secondary_key")?,
        );
    }
    let attestation = match att.kind.as_str() {
        "symmetric_key" => Attestation::SymmetricKey,
        "token" if !individual => Attestation::Token,
        "x509_ca" => {
            let pems = att.x509_ca.map(|c| c.ca_certificates).unwrap_or_default();
            if pems.is_empty() {
                return Err(bad(
                    "attestation.x509_ca.ca_certificates must list at least one CA certificate"
                        .into(),
                ));
            }
            for (i, pem) in pems.iter().enumerate() {
                let ders = ca::authority::certs_from_pem(pem).unwrap_or_default();
                let ok = ders.len() == 1
                    && x509_parser::parse_x509_certificate(&ders[0]).is_ok_and(|(_, c)| c.is_ca());
                if !ok {
                    return Err(bad(format!(
                        "attestation.x509_ca.ca_certificates[{i}] is not a PEM CA certificate"
                    )));
                }
            }
            Attestation::X509Ca(pems)
        }
        "aws_claim" if individual => {
            return Err(bad(
                "aws_claim attestation is for enrollment groups: the registration id comes \
                 from the RegisterThing parameters"
                    .into(),
            ))
        }
        "aws_claim" => {
            let Some(c) = att.aws_claim else {
                return Err(bad("attestation.aws_claim is required for type aws_claim".into()));
            };
            let claim = groups::AwsClaim {
                ca_certificates: c.ca_certificates,
                template_name: c.template_name,
                parameters: c.parameters,
            };
            claim.validate().map_err(bad)?;
            if body.credential.as_deref().is_some_and(|c| c != "x509") {
                return Err(bad(
                    "an aws_claim group issues X.509 certificates only: credential must be x509"
                        .into(),
                ));
            }
            Attestation::AwsClaim(claim)
        }
        "tpm" => {
            return Err(ApiError::NotImplemented("TPM attestation is not supported yet".into()))
        }
        other => return Err(bad(format!("unknown attestation type `{other}`"))),
    };
    let credential = match body.credential.as_deref() {
        None => Credential::X509,
        Some(c) => Credential::parse(c)
            .ok_or_else(|| bad("credential must be x509, sas or both".into()))?,
    };
    let enabled = match body.provisioning_status.as_deref() {
        None | Some("enabled") => true,
        Some("disabled") => false,
        Some(_) => return Err(bad("provisioning_status must be enabled or disabled".into())),
    };
    let validity_days = body.certificate_validity_days.unwrap_or(365);
    if !(1..=3650).contains(&validity_days) {
        return Err(bad("certificate_validity_days must be between 1 and 3650".into()));
    }
    let allowed_keys: BTreeSet<ca::KeyType> = match body.allowed_key_types {
        None => ca::KeyType::ALL.into_iter().collect(),
        Some(list) => list
            .iter()
            .map(|k| ca::KeyType::parse(k).ok_or_else(|| bad(format!("unknown key type `{k}`"))))
            .collect::<Result<_, _>>()?,
    };
    if allowed_keys.is_empty() {
        return Err(bad("allowed_key_types must not be empty".into()));
    }
    let pattern = body
        .registration_id_pattern
        .as_deref()
        .map(groups::RegistrationPattern::parse)
        .transpose()?;
    let reprovisioning = match body.reprovisioning.as_deref() {
        // A claim certificate is shared by the whole fleet (and extractable from any one
        // device): letting it re-register an id would let any device take over any other.
        None if matches!(attestation, Attestation::AwsClaim(_)) => Reprovisioning::Deny,
        None => Reprovisioning::Reissue,
        Some(r) => Reprovisioning::parse(r)
            .ok_or_else(|| bad("reprovisioning must be reissue, keep or deny".into()))?,
    };
    if matches!(attestation, Attestation::AwsClaim(_)) && reprovisioning != Reprovisioning::Deny {
        return Err(bad(
            "an aws_claim group's reprovisioning is deny: its claim certificate is \
             shared by the fleet, so re-registering an id would let any device take over another"
                .into(),
        ));
    }
    let tags = body.initial_tags.unwrap_or_default();
    crate::usecase::devices::check_tags("initial_tags", &tags).map_err(bad)?;
    let group = Group {
        id: id.to_owned(),
        individual,
        attestation,
        credential,
        enabled,
        validity_days,
        allowed_keys,
        pattern,
        initial_tags: tags,
        reprovisioning,
        primary: ca::SasKey::generate(),
        secondary: ca::SasKey::generate(),
        etag: String::new(),
        created_at: 0,
        updated_at: 0,
    };
    Ok((group, keys))
}

fn attestation_json(g: &Group) -> Value {
    let keys =
        json!({"primary_key": *g.primary.to_base64(), "secondary_key": *g.secondary.to_base64()});
    match &g.attestation {
        Attestation::SymmetricKey => json!({"type": "symmetric_key", "symmetric_key": keys}),
        Attestation::X509Ca(pems) => {
            json!({"type": "x509_ca", "x509_ca": {"ca_certificates": pems}, "symmetric_key": keys})
        }
        Attestation::Token => json!({"type": "token", "symmetric_key": keys}),
        Attestation::AwsClaim(c) => json!({
            "type": "aws_claim",
            "aws_claim": {
                "ca_certificates": c.ca_certificates,
                "template_name": c.template_name,
                "parameters": c.parameters,
            },
            "symmetric_key": keys,
        }),
    }
}

/// Why a scope limited to a device-id prefix may not change a group.
const PREFIX_LIMITED_GROUPS: &str = "a scope limited to a device_id_prefix cannot change an \
     enrollment group: its keys and CA certificates register ids outside the prefix";

/// A group as lists show it: everything but its keys.
fn group_json_without_keys(g: &Group) -> Value {
    let mut v = group_json(g);
    if let Some(att) = v.get_mut("attestation").and_then(Value::as_object_mut) {
        att.remove("symmetric_key");
    }
    v
}

async fn list_any(
    state: web::Data<AppState>,
    who: Authenticated,
    q: web::Query<super::respond::PageQuery>,
    individual: bool,
) -> Result<HttpResponse, ApiError> {
    let (after, limit) = q.bounds()?;
    let ring = state.ring();
    let (groups, more) =
        groups::list(&state.store, &ring, who.0.scope.as_ref(), individual, &after, limit).await?;
    let next = if more { groups.last().map(|g| g.id.clone()) } else { None };
    let items = groups.iter().map(group_json_without_keys).collect();
    Ok(HttpResponse::Ok().json(super::respond::page_json(items, next.as_deref())))
}

/// `GET /v1/enrollment-groups`: every group in the caller's scope, without keys.
pub async fn list_groups(
    s: web::Data<AppState>,
    w: Authenticated,
    q: web::Query<super::respond::PageQuery>,
) -> Result<HttpResponse, ApiError> {
    list_any(s, w, q, false).await
}

/// `GET /v1/enrollments`: every individual enrollment in the caller's scope, without keys.
pub async fn list_enrollments(
    s: web::Data<AppState>,
    w: Authenticated,
    q: web::Query<super::respond::PageQuery>,
) -> Result<HttpResponse, ApiError> {
    list_any(s, w, q, true).await
}

fn group_json(g: &Group) -> Value {
    let id_member = if g.individual { "registration_id" } else { "enrollment_group_id" };
    let mut v = json!({
        id_member: g.id,
        "attestation": attestation_json(g),
        "credential": g.credential.as_str(),
        "provisioning_status": if g.enabled { "enabled" } else { "disabled" },
        "etag": g.etag,
        "created_at": ts(g.created_at),
        "updated_at": ts(g.updated_at),
    });
    // Every member PUT accepts, so GET → PUT round-trips losslessly (API.md A30).
    v["certificate_validity_days"] = json!(g.validity_days);
    v["allowed_key_types"] = json!(g.allowed_keys.iter().map(|k| k.as_str()).collect::<Vec<_>>());
    v["registration_id_pattern"] = json!(g.pattern.as_ref().map(|p| p.as_str()));
    v["initial_tags"] = Value::Object(g.initial_tags.clone());
    v["reprovisioning"] = json!(g.reprovisioning.as_str());
    v
}

/// The group id / registration id of the path, hidden (404) outside the caller's group scope.
fn enrollment_id(
    req: &HttpRequest,
    who: &Authenticated,
    individual: bool,
) -> Result<String, ApiError> {
    let (param, kind) = if individual {
        ("registration_id", "registration id")
    } else {
        ("id", "enrollment group id")
    };
    let id = path_id(req, param, kind)?;
    let visible = if individual { who.0.sees_enrollment(&id) } else { who.0.sees_group(&id) };
    if !visible {
        let what = if individual { "enrollment" } else { "enrollment group" };
        return Err(ApiError::NotFound(format!("{what} not found")));
    }
    Ok(id)
}

async fn put_any(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Authenticated,
    body: web::Json<GroupBody>,
    individual: bool,
) -> Result<HttpResponse, ApiError> {
    let id = enrollment_id(&req, &who, individual)?;
    if !individual && who.0.device_prefix().is_some() {
        return Err(ApiError::Forbidden(PREFIX_LIMITED_GROUPS.into()));
    }
    let (group, keys) = parse_group(&id, body.into_inner(), individual)?;
    let rc = RequestCtx::new(&state, &req, &who);
    let (g, created) = groups::put(&state.store, &rc.cx(&state), group, keys).await?;
    Ok(secret_json(if created { StatusCode::CREATED } else { StatusCode::OK }, &group_json(&g)))
}

async fn get_any(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Authenticated,
    individual: bool,
) -> Result<HttpResponse, ApiError> {
    let id = enrollment_id(&req, &who, individual)?;
    let g = groups::get(&state.store, &state.ring(), &id, individual).await?;
    // A group's keys register any id: not for a scope limited to a prefix.
    if !individual && who.0.device_prefix().is_some() {
        return Ok(secret_json(StatusCode::OK, &group_json_without_keys(&g)));
    }
    Ok(secret_json(StatusCode::OK, &group_json(&g)))
}

async fn delete_any(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Authenticated,
    individual: bool,
) -> Result<HttpResponse, ApiError> {
    let id = enrollment_id(&req, &who, individual)?;
    let rc = RequestCtx::new(&state, &req, &who);
    groups::delete(&state.store, &rc.cx(&state), &id, individual).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `PUT /v1/enrollment-groups/{id}`
pub async fn put_group(
    s: web::Data<AppState>,
    r: HttpRequest,
    w: Authenticated,
    b: web::Json<GroupBody>,
) -> Result<HttpResponse, ApiError> {
    put_any(s, r, w, b, false).await
}
/// `GET /v1/enrollment-groups/{id}`
pub async fn get_group(
    s: web::Data<AppState>,
    r: HttpRequest,
    w: Authenticated,
) -> Result<HttpResponse, ApiError> {
    get_any(s, r, w, false).await
}
/// `DELETE /v1/enrollment-groups/{id}`
pub async fn delete_group(
    s: web::Data<AppState>,
    r: HttpRequest,
    w: Authenticated,
) -> Result<HttpResponse, ApiError> {
    delete_any(s, r, w, false).await
}
/// `PUT /v1/enrollments/{registration_id}`
pub async fn put_enrollment(
    s: web::Data<AppState>,
    r: HttpRequest,
    w: Authenticated,
    b: web::Json<GroupBody>,
) -> Result<HttpResponse, ApiError> {
    put_any(s, r, w, b, true).await
}
/// `GET /v1/enrollments/{registration_id}`
pub async fn get_enrollment(
    s: web::Data<AppState>,
    r: HttpRequest,
    w: Authenticated,
) -> Result<HttpResponse, ApiError> {
    get_any(s, r, w, true).await
}
/// `DELETE /v1/enrollments/{registration_id}`
pub async fn delete_enrollment(
    s: web::Data<AppState>,
    r: HttpRequest,
    w: Authenticated,
) -> Result<HttpResponse, ApiError> {
    delete_any(s, r, w, true).await
}

/// `{"count", "ttl_secs", "registration_ids"?}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensBody {
    count: Option<i64>,
    ttl_secs: Option<i64>,
    registration_ids: Option<Vec<String>>,
}

/// `POST /v1/enrollment-groups/{id}/tokens`
pub async fn tokens(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Authenticated,
    body: web::Json<TokensBody>,
) -> Result<HttpResponse, ApiError> {
    let id = enrollment_id(&req, &who, false)?;
    let body = body.into_inner();
    // A token registers whatever id it is not bound to: a scope limited to a prefix mints only
    // tokens bound to ids inside it.
    if let Some(prefix) = who.0.device_prefix() {
        let inside = body
            .registration_ids
            .as_ref()
            .is_some_and(|ids| ids.iter().all(|i| i.starts_with(prefix)));
        if !inside {
            return Err(ApiError::Forbidden(
                "a scope limited to a device_id_prefix mints only tokens bound to ids that start \
                 with it: list them in registration_ids"
                    .into(),
            ));
        }
    }
    if let Some(ids) = &body.registration_ids {
        if ids.is_empty() || ids.len() > 1000 {
            return Err(ApiError::BadRequest(
                "registration_ids must list between 1 and 1000 ids".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        for rid in ids {
            crate::ids::validate("registration id", rid)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            if !seen.insert(rid.as_str()) {
                return Err(ApiError::BadRequest(format!("registration_ids lists `{rid}` twice")));
            }
        }
        if body.count.is_some_and(|c| c != ids.len() as i64) {
            return Err(ApiError::BadRequest(
                "count must equal the number of registration_ids (or be omitted)".into(),
            ));
        }
    }
    let count =
        body.registration_ids.as_ref().map_or(body.count.unwrap_or(1), |ids| ids.len() as i64);
    let ttl = body.ttl_secs.unwrap_or(86_400);
    if !(1..=1000).contains(&count) {
        return Err(ApiError::BadRequest("count must be between 1 and 1000".into()));
    }
    if !(1..=30 * 86_400).contains(&ttl) {
        return Err(ApiError::BadRequest("ttl_secs must be between 1 and 2592000".into()));
    }
    let rc = RequestCtx::new(&state, &req, &who);
    let (tokens, exp) = groups::mint_tokens(
        &state.store,
        &rc.cx(&state),
        &state.jwt,
        &id,
        count as usize,
        body.registration_ids.as_deref(),
        ttl,
    )
    .await?;
    Ok(secret_json(StatusCode::CREATED, &json!({"tokens": tokens, "expires_at": ts(exp)})))
}

/// A registration result in the A13 shape.
pub fn registration_json(r: &Registered) -> Value {
    let mut v = json!({"device_id": r.device_id, "status": "assigned"});
    if let Some(chain) = r.chain_pem() {
        v["certificate_chain"] = json!(chain);
    }
    if let Some((p, s)) = &r.device_keys {
        v["device_key"] = json!({"primary_key": *p.to_base64(), "secondary_key": *s.to_base64()});
    }
    v
}

/// One registration request line / body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationBody {
    registration_id: String,
    csr: Option<String>,
    tags: Option<Map<String, Value>>,
}

/// Parses one NDJSON registration line (exposed for the fuzz target).
pub fn parse_registration_line(line: &[u8]) -> Result<RegistrationRequest, String> {
    serde_json::from_slice::<RegistrationBody>(line)
        .map(RegistrationBody::into_request)
        .map_err(|e| e.to_string())
}

impl RegistrationBody {
    fn into_request(self) -> RegistrationRequest {
        RegistrationRequest {
            registration_id: self.registration_id,
            csr: self.csr.map(String::into_bytes),
            tags: self.tags,
            payload: None,
            held: None,
        }
    }
}

/// Everything one registration needs, owned (batches run on a spawned task).
struct Registrar {
    state: web::Data<AppState>,
    rc: RequestCtx,
    group: Arc<Group>,
    scope: Option<Arc<crate::auth::Scope>>,
}

impl Registrar {
    async fn run(&self, req: RegistrationRequest) -> Result<Registered, ApiError> {
        let door = crate::state::Door { name: "json", scope: self.scope.as_deref() };
        Ok(self
            .state
            .register(door, self.rc.actor().clone(), self.group.clone(), None, req)
            .await?)
    }
}

/// `POST /v1/enrollment-groups/{id}/registrations`: JSON (one) or NDJSON (a streamed batch).
pub async fn registrations(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Authenticated,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&req, "id", "enrollment group id")?;
    if who.0.scope.as_ref().is_some_and(|s| !s.admits_registrations_of(&id)) {
        return Err(ApiError::NotFound("enrollment group not found".into()));
    }
    let mime = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = mime.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let ndjson = match essence.as_str() {
        "application/json" => false,
        "application/x-ndjson" | "application/ndjson" => true,
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "send application/json or application/x-ndjson".into(),
            ))
        }
    };
    let group =
        groups::get(&state.store, &state.ring(), &id, false).await.map_err(|e| match e {
            groups::GroupError::NotFound => ApiError::NotFound("enrollment group not found".into()),
            other => other.into(),
        })?;
    if !group.enabled {
        return Err(ApiError::Forbidden(
            "provisioning is disabled for this enrollment group".into(),
        ));
    }
    let registrar = Registrar {
        rc: RequestCtx::new(&state, &req, &who),
        scope: who.0.scope.clone().map(Arc::new),
        state,
        group: Arc::new(group),
    };
    if !ndjson {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::BadRequest(format!("cannot read body: {e}")))?;
            if body.len() + chunk.len() > 1024 * 1024 {
                return Err(ApiError::PayloadTooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let parsed: RegistrationBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
        let r = registrar.run(parsed.into_request()).await?;
        let status = if r.created { StatusCode::CREATED } else { StatusCode::OK };
        return Ok(secret_json(status, &registration_json(&r)));
    }
    // Answers wait in a spool (memory, then a sealed temporary file), never in a bounded
    // channel: a client that sends its whole batch before it reads (most HTTP libraries) would
    // otherwise fill the socket both ways and hang with the server. The registration core's
    // stream pipeline (`register::stream`) prepares and commits the chunks this task reads.
    let spool = Arc::new(crate::spool::Spool::default());
    let Registrar { state, rc, group, scope } = registrar;
    let batch = Arc::new(stream::Batch {
        handles: crate::state::registration_handles(&state),
        authority: state.authority(),
        group,
        actor: rc.actor().clone(),
        scope,
        base_url: state.config.public_base_url(),
        parse: ndjson_line,
    });
    let (jobs, input) = tokio::sync::mpsc::channel::<stream::Input<ApiError>>(1);
    let out = spool.clone();
    let metrics = state.clone();
    actix_web::rt::spawn(async move {
        let sink = |outcomes: Vec<stream::LineOutcome<ApiError>>| {
            if out.abandoned() {
                return false; // client went away
            }
            for outcome in outcomes {
                if let Err(e) = out.push(render_line(&metrics, outcome)) {
                    tracing::error!(error = %e, "answer spool failed");
                    out.abandon();
                    return false;
                }
            }
            true
        };
        batch.run(input, sink).await;
        if !out.abandoned() {
            out.close();
        }
    });
    let read_timeout_secs = state.config.request_body_timeout_secs;
    actix_web::rt::spawn(async move {
        use futures_util::FutureExt as _;
        let mut buf: Vec<u8> = Vec::new();
        let mut pending: Vec<Vec<u8>> = Vec::new();
        let (mut lines, mut bytes) = (0usize, 0usize);
        let mut done = false;
        // An error that ends the batch is sent after the lines before it.
        let fail = |e: ApiError| {
            let jobs = jobs.clone();
            async move {
                let _ = jobs.send(stream::Input::Stop(e)).await;
            }
        };
        while !done {
            // Take what has already arrived without waiting; wait only when nothing is pending.
            // The body's idle clock is `http::limits` (request_body_timeout_secs): it runs only
            // while this reader waits for bytes.
            let next = if pending.is_empty() {
                Some(payload.next().await)
            } else {
                payload.next().now_or_never()
            };
            let input_idle = next.is_none();
            match next {
                Some(Some(Ok(chunk))) => {
                    bytes += chunk.len();
                    if bytes > MAX_BATCH_BYTES {
                        return fail(ApiError::PayloadTooLarge).await;
                    }
                    buf.extend_from_slice(&chunk);
                }
                Some(Some(Err(e))) if super::limits::is_body_timeout(&e) => {
                    return fail(ApiError::RequestTimeout(read_timeout_secs)).await;
                }
                Some(Some(Err(e))) => {
                    return fail(ApiError::BadRequest(format!("cannot read body: {e}"))).await;
                }
                Some(None) => {
                    done = true;
                    buf.push(b'\n');
                }
                None => {}
            }
            let mut consumed = 0;
            while let Some(pos) = buf[consumed..].iter().position(|b| *b == b'\n') {
                let line = buf[consumed..consumed + pos].trim_ascii().to_vec();
                consumed += pos + 1;
                if line.is_empty() {
                    continue;
                }
                lines += 1;
                if lines > MAX_BATCH_LINES {
                    let msg = format!("batch exceeds {MAX_BATCH_LINES} lines");
                    if !pending.is_empty() {
                        let chunk = stream::Input::Lines(std::mem::take(&mut pending));
                        let _ = jobs.send(chunk).await;
                    }
                    return fail(ApiError::BadRequest(msg)).await;
                }
                pending.push(line);
                if pending.len() == GROUP_COMMIT_LINES {
                    let chunk = stream::Input::Lines(std::mem::take(&mut pending));
                    if jobs.send(chunk).await.is_err() {
                        return;
                    }
                }
            }
            buf.drain(..consumed);
            if buf.len() > MAX_LINE_BYTES {
                return fail(ApiError::BadRequest("NDJSON line too long".into())).await;
            }
            // Group commit: a partial chunk goes when no more input is immediately available
            // (so slow senders still get prompt answers).
            if !pending.is_empty() && (done || input_idle) {
                let chunk = stream::Input::Lines(std::mem::take(&mut pending));
                if jobs.send(chunk).await.is_err() {
                    return;
                }
            }
        }
    });
    let reader = SpoolReader(spool);
    let stream = futures_util::stream::unfold(reader, |reader| async move {
        match reader.0.pop().await? {
            Ok(line) => Some((Ok::<_, actix_web::Error>(line), reader)),
            Err(e) => {
                tracing::error!(error = %e, "answer spool failed");
                None
            }
        }
    });
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .content_type("application/x-ndjson")
        .streaming(stream))
}

/// The response's end of the spool: when the client goes away (the body stream is dropped)
/// the batch stops and its spooled answers are dropped.
struct SpoolReader(Arc<crate::spool::Spool>);

impl Drop for SpoolReader {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// An NDJSON line of a batch: the request, or (the line's `registration_id` if it has one, why
/// it is unreadable). The fuzz target drives this same function.
fn ndjson_line(line: &[u8]) -> Result<RegistrationRequest, (Option<String>, String)> {
    parse_registration_line(line).map_err(|why| {
        let id = serde_json::from_slice::<Value>(line)
            .ok()
            .and_then(|v| v.get("registration_id").and_then(Value::as_str).map(str::to_owned));
        (id, format!("invalid line: {why}"))
    })
}

/// One line of the NDJSON answer (and the line's count in the registrations metric).
fn render_line(state: &AppState, outcome: stream::LineOutcome<ApiError>) -> Bytes {
    let count = |outcome: &str| {
        state.metrics.registrations.with_label_values(&["ndjson", outcome]).inc();
    };
    match outcome {
        stream::LineOutcome::Registered(r, id) => {
            count("success");
            let mut v = registration_json(&r);
            v["registration_id"] = json!(id);
            json_line(&v)
        }
        stream::LineOutcome::Refused(e, id) => {
            count("failure");
            error_line(Some(&id), &e.into())
        }
        stream::LineOutcome::Unreadable(id, why) => {
            error_line(id.as_deref(), &ApiError::BadRequest(why))
        }
        stream::LineOutcome::Failed(why) => {
            tracing::error!(error = %why, "registration batch failed");
            error_line(None, &ApiError::internal(std::io::Error::other(why)))
        }
        stream::LineOutcome::Stop(e) => error_line(None, &e),
    }
}

fn json_line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

fn error_line(registration_id: Option<&str>, e: &ApiError) -> Bytes {
    json_line(&json!({"registration_id": registration_id, "error": e.to_problem_value()}))
}
