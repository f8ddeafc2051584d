//! JSON representations shared by the HTTP API and the command line (`export` writes what
//! `GET /v1/devices/{id}` returns; `import` reads what `PUT` accepts), so the two cannot drift.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::clock::rfc3339;
use crate::usecase::devices::{self, AuthInput, Authentication, Device, DeviceInput, Precondition};

fn sas_key(text: Option<String>, member: &str) -> Result<Option<ca::SasKey>, String> {
    text.map(|t| ca::SasKey::from_base64(&t).map_err(|e| format!("{member}: {e}"))).transpose()
}

fn double<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A device's `status`.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// `enabled`
    Enabled,
    /// `disabled`
    Disabled,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum AuthType {
    Sas,
    X509Ca,
    X509Thumbprint,
}

/// A `{primary_key, secondary_key}` pair of base64 SAS keys (devices, enrollments), either
/// optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysBody {
    /// primary key, base64
    pub primary_key: Option<String>,
    /// secondary key, base64
    pub secondary_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThumbprintsBody {
    primary_thumbprint: Option<String>,
    secondary_thumbprint: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthBody {
    #[serde(rename = "type")]
    kind: Option<AuthType>,
    symmetric_key: Option<KeysBody>,
    x509_thumbprint: Option<ThumbprintsBody>,
}

/// PUT body: the device representation, every member optional; read-only members accepted
/// and ignored (a GET body can be PUT back); any other member is refused (API.md A29).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceBody {
    device_id: Option<String>,
    status: Option<Status>,
    #[serde(default, deserialize_with = "double")]
    status_reason: Option<Option<String>>,
    authentication: Option<AuthBody>,
    tags: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "double")]
    parent_id: Option<Option<String>>,
    #[serde(default, rename = "etag")]
    _etag: Option<Value>,
    #[serde(default, rename = "generation_id")]
    _generation_id: Option<Value>,
    #[serde(default, rename = "enrollment_group_id")]
    _enrollment_group_id: Option<Value>,
    #[serde(default, rename = "owner")]
    _owner: Option<Value>,
    #[serde(default, rename = "created_at")]
    _created_at: Option<Value>,
    #[serde(default, rename = "updated_at")]
    _updated_at: Option<Value>,
}

fn thumbprint(t: String, which: &str) -> Result<String, String> {
    let t = t.to_ascii_lowercase().replace(':', "");
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t)
    } else {
        Err(format!("authentication.x509_thumbprint.{which} must be a hex SHA-256 thumbprint"))
    }
}

/// Checks a PUT body against the path id and turns it into the use case's input; the error
/// is the 400 detail.
pub fn validate(id: &str, body: DeviceBody) -> Result<DeviceInput, String> {
    if let Some(body_id) = &body.device_id {
        if body_id != id {
            return Err("device_id in the body must equal the id in the path".to_owned());
        }
    }
    if let Some(Some(reason)) = &body.status_reason {
        if reason.len() > 256 {
            return Err("status_reason must be at most 256 characters".to_owned());
        }
        if reason.chars().any(char::is_control) {
            return Err("status_reason must not contain control characters".to_owned());
        }
    }
    if let Some(tags) = &body.tags {
        devices::check_tags("tags", tags)?;
    }
    if let Some(Some(parent)) = &body.parent_id {
        crate::ids::validate("parent_id", parent).map_err(|e| e.to_string())?;
    }
    let auth = match body.authentication {
        None => None,
        Some(a) => Some(match a.kind.unwrap_or(AuthType::Sas) {
            AuthType::Sas => {
                let (p, s) =
                    a.symmetric_key.map_or((None, None), |k| (k.primary_key, k.secondary_key));
                AuthInput::Sas {
                    primary: sas_key(p, "authentication.symmetric_key.primary_key")?,
                    secondary: sas_key(s, "authentication.symmetric_key.secondary_key")?,
                }
            }
            AuthType::X509Ca => AuthInput::X509Ca,
            AuthType::X509Thumbprint => {
                let t = a.x509_thumbprint.ok_or_else(|| {
                    "authentication.x509_thumbprint is required for type x509_thumbprint".to_owned()
                })?;
                let primary = thumbprint(
                    t.primary_thumbprint.ok_or_else(|| {
                        "authentication.x509_thumbprint.primary_thumbprint is required".to_owned()
                    })?,
                    "primary_thumbprint",
                )?;
                let secondary = t
                    .secondary_thumbprint
                    .map(|s| thumbprint(s, "secondary_thumbprint"))
                    .transpose()?;
                AuthInput::X509Thumbprint { primary, secondary }
            }
        }),
    };
    Ok(DeviceInput {
        enabled: body.status.map(|s| s == Status::Enabled),
        status_reason: body.status_reason,
        auth,
        tags: body.tags,
        parent_id: body.parent_id,
        imported: None,
    })
}

/// The API representation; keys only when `with_keys`.
pub fn device_json(d: &Device, with_keys: bool) -> Value {
    let r = &d.row;
    let authentication = match &d.auth {
        Authentication::Sas { primary, secondary } if with_keys => json!({
            "type": "sas",
            "symmetric_key": {"primary_key": *primary.to_base64(), "secondary_key": *secondary.to_base64()},
        }),
        Authentication::Sas { .. } => json!({"type": "sas"}),
        Authentication::X509Thumbprint { primary, secondary } => json!({
            "type": "x509_thumbprint",
            "x509_thumbprint": {"primary_thumbprint": primary, "secondary_thumbprint": secondary},
        }),
        Authentication::X509Ca => json!({"type": "x509_ca"}),
    };
    json!({
        "device_id": r.device_id,
        "status": r.status,
        "status_reason": r.status_reason,
        "authentication": authentication,
        "etag": r.etag,
        "generation_id": r.generation_id,
        "tags": serde_json::from_str::<Value>(&r.tags).unwrap_or_else(|_| json!({})),
        "parent_id": r.parent_id,
        "enrollment_group_id": r.enrollment_group_id,
        "owner": owner_json(r),
        "created_at": rfc3339(r.created_at),
        "updated_at": rfc3339(r.updated_at),
    })
}

/// The device's owner (API.md A30): `{"kind", "id"}`.
fn owner_json(r: &devices::DeviceRow) -> Value {
    let id = match r.owner_kind.as_str() {
        "enrollment_group" => r.enrollment_group_id.clone(),
        "enrollment" => Some(r.device_id.clone()),
        _ => None,
    };
    json!({"kind": r.owner_kind, "id": id})
}

/// Parses one NDJSON import line (the device representation as `export` writes it,
/// `device_id` required) into an id and a validated input, with the line's `owner` and
/// `created_at` (`admin_if_missing`: `import --owner admin`).
pub fn parse_import_line(
    line: &str,
    admin_if_missing: bool,
) -> Result<(String, DeviceInput), String> {
    let body: DeviceBody = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let id = body.device_id.clone().ok_or("device_id is required")?;
    crate::ids::validate("device id", &id).map_err(|e| e.to_string())?;
    let owner = match body._owner.as_ref().filter(|o| !o.is_null()) {
        None => None,
        Some(o) => match (o["kind"].as_str(), o["id"].as_str()) {
            (Some("admin"), _) => None,
            (Some(kind @ ("enrollment_group" | "enrollment")), Some(oid)) => {
                Some((kind.to_owned(), oid.to_owned()))
            }
            _ => {
                return Err("owner must be {\"kind\": admin|enrollment_group|enrollment, \"id\"}"
                    .to_owned())
            }
        },
    };
    let created_at = match body._created_at.as_ref().and_then(Value::as_str) {
        None => None,
        Some(t) => Some(crate::clock::parse_rfc3339(t).ok_or("created_at must be RFC 3339")?),
    };
    let mut input = validate(&id, body)?;
    input.imported = Some(devices::Imported { owner, created_at, admin_if_missing });
    Ok((id, input))
}

/// Imports one NDJSON line: create or replace, like `PUT /v1/devices/{id}` (an imported
/// owner is recorded on create). Returns a human-readable error for the line.
pub async fn import_line(
    store: &crate::store::Store,
    cx: &crate::usecase::Ctx<'_>,
    line: &str,
    admin_if_missing: bool,
) -> Result<(), String> {
    let (id, input) = parse_import_line(line, admin_if_missing)?;
    devices::put(store, cx, &id, input, &Precondition::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
