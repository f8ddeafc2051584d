//! The Azure DPS device API, whatever carries it: register, operation status, registration
//! status, and DPS's bodies. HTTPS (`http/registrations.rs`) and MQTT (`mqtt/dps.rs`) are two
//! doors onto these functions: they parse their wire format, attest the device
//! ([`crate::auth::device`]) and render the [`Answer`] — an HTTP status and a JSON body.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::device::Attested;
use crate::http::problem::ApiError;
use crate::http::respond::ts;
use crate::state::AppState;
use crate::usecase::groups::Group;
use crate::usecase::register::{self, Registered, RegistrationRequest};
use crate::usecase::Actor;

/// A DPS answer: HTTP status (also the `{status}` of an MQTT response topic), JSON body and,
/// for 429 and 202, seconds to wait.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status
    pub status: u16,
    /// body
    pub body: Value,
    /// `Retry-After` / `retry-after=`
    pub retry_after: Option<i64>,
}

/// DPS's error body (`errorCode` = status × 1000 + sub-code).
pub fn error(status: u16, code: u32, message: &str) -> Answer {
    Answer {
        status,
        body: json!({
            "errorCode": code,
            "trackingId": uuid::Uuid::new_v4().to_string(),
            "message": message,
            "timestampUtc": ts(crate::clock::Clock::now(&crate::clock::SystemClock)),
        }),
        retry_after: (status == 429).then_some(30),
    }
}

/// The DPS rendering of an API error.
pub fn from_api(e: ApiError) -> Answer {
    use actix_web::ResponseError as _;
    let status = e.status_code().as_u16();
    let code = u32::from(status) * 1000 + 1;
    if let ApiError::Internal(_) = &e {
        let _ = e.to_problem_value(); // logs the chain
    }
    let mut answer = error(status, code, &e.to_string());
    if let ApiError::TooManyRequests { retry_after } = &e {
        answer.retry_after = Some(*retry_after);
    }
    answer
}

/// Runs a registration for an attested device through `door` (the metric label) and counts it.
pub async fn register_device(
    state: &AppState,
    addr: Option<String>,
    door: &'static str,
    group: std::sync::Arc<Group>,
    jti: Option<String>,
    r: RegistrationRequest,
) -> Result<Registered, ApiError> {
    let actor = Actor { name: format!("device:{}", r.registration_id), addr };
    let door = crate::state::Door::device(door);
    Ok(state.register(door, actor, group, jti, r).await?)
}

/// A `registrationState` with `status` (`assigned`, or `disabled` for a disabled device, which
/// never shows a certificate chain).
pub fn registration_state_as(state: &AppState, r: &Registered, status: &str) -> Value {
    let mut s = json!({
        "registrationId": r.device_id,
        "createdDateTimeUtc": ts(r.created_at),
        "assignedHub": state.config.host_name,
        "deviceId": r.device_id,
        "status": status,
        "substatus": "initialAssignment",
        "lastUpdatedDateTimeUtc": ts(r.updated_at),
        "etag": r.etag,
    });
    if let Some(p) = &r.payload {
        s["payload"] = p.clone();
    }
    if !r.chain.is_empty() && status == "assigned" {
        let b64 = &base64::engine::general_purpose::STANDARD;
        s["issuedCertificateChain"] =
            json!(r.chain.iter().map(|d| b64.encode(d)).collect::<Vec<_>>());
    }
    s
}

/// DPS register body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterBody {
    registration_id: Option<String>,
    payload: Option<Value>,
    csr: Option<String>,
}

/// Register `registration_id` (attested by `attested`) with the DPS register `body`, through
/// `door` (`dps_http`, `dps_mqtt`). An empty or blank body is `{}`.
pub async fn register(
    state: &AppState,
    door: &'static str,
    addr: Option<String>,
    attested: Attested,
    registration_id: String,
    body: &[u8],
) -> Answer {
    let body: RegisterBody = if body.iter().all(u8::is_ascii_whitespace) {
        RegisterBody { registration_id: None, payload: None, csr: None }
    } else {
        match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => return error(400, 400_004, &format!("invalid body: {e}")),
        }
    };
    if body.registration_id.as_deref().is_some_and(|b| b != registration_id) {
        return error(400, 400_004, "registrationId does not match the path");
    }
    let csr = match body.csr {
        None => None,
        Some(b64) => match base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
            Ok(der) => Some(der),
            Err(_) => return error(400, 400_004, "csr must be base64 DER PKCS#10"),
        },
    };
    let request =
        RegistrationRequest { registration_id, csr, tags: None, payload: body.payload, held: None };
    match register_device(state, addr, door, attested.group, attested.jti, request).await {
        Ok(r) => Answer {
            status: 200,
            body: json!({
                "operationId": r.operation_id,
                "status": "assigned",
                "registrationState": registration_state_as(state, &r, "assigned"),
            }),
            retry_after: None,
        },
        Err(e) => from_api(e),
    }
}

/// The stored registration of `id` as its attested enrollment may read it, and the status to
/// show (`assigned` or `disabled`).
async fn stored(
    state: &AppState,
    attested: &Attested,
    id: &str,
) -> Result<Option<(Registered, &'static str)>, ApiError> {
    let authority = state.authority();
    let found =
        register::stored(&state.store, &authority, &attested.group, attested.jti.as_deref(), id)
            .await?;
    Ok(found.map(|(r, enabled)| (r, if enabled { "assigned" } else { "disabled" })))
}

/// Operation status: the registration of `id` if `operation_id` is its operation.
pub async fn operation(
    state: &AppState,
    attested: &Attested,
    id: &str,
    operation_id: &str,
) -> Answer {
    match stored(state, attested, id).await {
        Ok(Some((r, status))) if r.operation_id == operation_id => Answer {
            status: 200,
            body: json!({
                "operationId": r.operation_id,
                "status": status,
                "registrationState": registration_state_as(state, &r, status),
            }),
            retry_after: None,
        },
        Ok(_) => error(404, 404_002, "unknown operation"),
        Err(e) => from_api(e),
    }
}

/// Registration status: the current `registrationState` of `id`.
pub async fn status(state: &AppState, attested: &Attested, id: &str) -> Answer {
    match stored(state, attested, id).await {
        Ok(Some((r, status))) => Answer {
            status: 200,
            body: registration_state_as(state, &r, status),
            retry_after: None,
        },
        Ok(None) => error(404, 404_002, "device is not registered"),
        Err(e) => from_api(e),
    }
}
