//! The verbs of each admin subcommand: their flags (with help and an example each) and what
//! each sends to `/v1` and prints.
//!
//! Invariants: every request goes through [`Api`]; updates are read-modify-write of the
//! server's own representation (so members the CLI does not know survive), with `If-Match`
//! where the API honours it; creates never silently replace an existing object.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

use super::auth::{remove_session, store_session, Session};
use super::client::{seg, Api, Needs, Reply};
use super::output::{emit, emit_bytes, fields, pretty, table, Column};
use super::{AdminError, Output, Remote, EXIT_VERIFY_FAILED};

/// Paging flags of every `list`.
#[derive(Debug, Clone, Args)]
pub struct Paging {
    /// Items per page (1–1000; server default 100).
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
    /// Start from this cursor (the `next_cursor` of a previous page).
    #[arg(long, value_name = "C")]
    cursor: Option<String>,
    /// Follow `next_cursor` until the last page.
    #[arg(long)]
    all: bool,
}

// ---------------------------------------------------------------------------------------------
// device

/// `provisiond device …`
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Create a device (enabled, SAS with generated keys unless told otherwise); an existing id
    /// is refused (exit 5).
    #[command(after_help = "Example:\n  provisiond device create sensor-1 --tag site=berlin")]
    Create {
        /// Device id.
        id: String,
        #[command(flatten)]
        set: DeviceSet,
    },
    /// Delete a device (revokes its certificates, cancels its pending bundles).
    #[command(after_help = "Example:\n  provisiond device delete sensor-1")]
    Delete {
        /// Device id.
        id: String,
    },
    /// List devices, ordered by id.
    #[command(after_help = "Example:\n  provisiond device list --status disabled --all")]
    List {
        /// Only devices with this status.
        #[arg(long, value_parser = ["enabled", "disabled"])]
        status: Option<String>,
        /// Only ids starting with this prefix.
        #[arg(long, value_name = "P")]
        prefix: Option<String>,
        /// Only devices registered through this enrollment group.
        #[arg(long, value_name = "G")]
        group: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Replace a device's keys: primary, secondary, or swap the two.
    #[command(
        name = "rotate-key",
        after_help = "Example:\n  provisiond device rotate-key \
                                                 sensor-1 --key secondary"
    )]
    RotateKey {
        /// Device id.
        id: String,
        #[command(flatten)]
        key: WhichKey,
    },
    /// Show one device (keys only for RegistryReadWrite callers).
    #[command(after_help = "Example:\n  provisiond device show sensor-1 --output json")]
    Show {
        /// Device id.
        id: String,
    },
    /// Change a device (read, modify, write back with If-Match): status, reason, tags, parent,
    /// authentication.
    #[command(after_help = "Example:\n  provisiond device update sensor-1 --status disabled \
                            --status-reason stolen")]
    Update {
        /// Device id.
        id: String,
        #[command(flatten)]
        set: DeviceSet,
        /// Remove this tag (repeatable).
        #[arg(long = "remove-tag", value_name = "K")]
        remove_tags: Vec<String>,
    },
}

/// Which key a rotation replaces.
#[derive(Debug, Clone, Args)]
pub struct WhichKey {
    /// primary, secondary, or swap (exchange the two).
    #[arg(long, value_parser = ["primary", "secondary", "swap"], default_value = "primary")]
    key: String,
}

/// Device members settable from the command line.
#[derive(Debug, Clone, Args)]
pub struct DeviceSet {
    /// enabled or disabled.
    #[arg(long, value_parser = ["enabled", "disabled"])]
    status: Option<String>,
    /// Why (shown with the status).
    #[arg(long, value_name = "TEXT")]
    status_reason: Option<String>,
    /// Tag KEY=VALUE (string value; repeatable).
    #[arg(long = "tag", value_name = "K=V")]
    tags: Vec<String>,
    /// Parent device id.
    #[arg(long, value_name = "ID")]
    parent: Option<String>,
    /// Authentication type.
    #[arg(long = "auth", value_parser = ["sas", "x509_ca", "x509_thumbprint"])]
    auth: Option<String>,
    /// SAS primary key (base64, 16–64 bytes; default generated).
    #[arg(long, value_name = "B64")]
    primary_key: Option<String>,
    /// SAS secondary key (base64, 16–64 bytes; default generated).
    #[arg(long, value_name = "B64")]
    secondary_key: Option<String>,
    /// x509_thumbprint: primary SHA-256 thumbprint (hex).
    #[arg(long, value_name = "HEX")]
    primary_thumbprint: Option<String>,
    /// x509_thumbprint: secondary SHA-256 thumbprint (hex).
    #[arg(long, value_name = "HEX")]
    secondary_thumbprint: Option<String>,
}

const DEVICE_COLUMNS: &[Column] = &[
    ("DEVICE ID", "device_id"),
    ("STATUS", "status"),
    ("OWNER", "owner.kind"),
    ("OWNER ID", "owner.id"),
    ("AUTH", "authentication.type"),
    ("UPDATED", "updated_at"),
];

/// Runs `provisiond device …`.
pub(super) async fn device(
    command: DeviceCommand,
    remote: &Remote,
    data_dir: Option<PathBuf>,
) -> Result<u8, AdminError> {
    let api = Api::connect(remote, data_dir.as_deref(), Needs::Credential)?;
    let out = remote.output;
    match command {
        DeviceCommand::Create { id, set } => {
            let mut body = json!({});
            apply_device(&mut body, &set)?;
            let reply = api
                .send(Method::PUT, &device_path(&id), &[], Some(&body), &[("If-None-Match", "*")])
                .await
                .map_err(|e| match e {
                    AdminError::Api { status: 412, .. } => AdminError::Exists {
                        kind: "device",
                        id: id.clone(),
                        instead: "provisiond device update",
                    },
                    other => other,
                })?;
            show(out, &reply)
        }
        DeviceCommand::Delete { id } => {
            api.send(Method::DELETE, &device_path(&id), &[], None, &[]).await?;
            done(out, &format!("device {id} deleted"))
        }
        DeviceCommand::List { status, prefix, group, paging } => {
            let query = [("status", status), ("prefix", prefix), ("enrollment_group_id", group)];
            list(&api, out, "/v1/devices", &query, &paging, DEVICE_COLUMNS).await
        }
        DeviceCommand::RotateKey { id, key } => {
            let path = format!("{}/keys/rotate", device_path(&id));
            let reply =
                api.send(Method::POST, &path, &[], Some(&json!({ "key": key.key })), &[]).await?;
            show(out, &reply)
        }
        DeviceCommand::Show { id } => show(out, &api.get(&device_path(&id), &[]).await?),
        DeviceCommand::Update { id, set, remove_tags } => {
            let current = api.get(&device_path(&id), &[]).await?.json()?;
            let etag = current.get("etag").and_then(Value::as_str).map(|e| format!("\"{e}\""));
            let mut body = current.clone();
            apply_device(&mut body, &set)?;
            if let Some(tags) = body.get_mut("tags").and_then(Value::as_object_mut) {
                for k in &remove_tags {
                    tags.remove(k);
                }
            }
            let headers: Vec<(&str, &str)> =
                etag.as_deref().map(|e| vec![("If-Match", e)]).unwrap_or_default();
            show(out, &api.send(Method::PUT, &device_path(&id), &[], Some(&body), &headers).await?)
        }
    }
}

fn device_path(id: &str) -> String {
    format!("/v1/devices/{}", seg(id))
}

fn apply_device(body: &mut Value, set: &DeviceSet) -> Result<(), AdminError> {
    put_str(body, "status", &set.status);
    put_str(body, "status_reason", &set.status_reason);
    put_str(body, "parent_id", &set.parent);
    merge_tags(body, "tags", &set.tags)?;
    let keys = set.primary_key.is_some() || set.secondary_key.is_some();
    let thumbs = set.primary_thumbprint.is_some() || set.secondary_thumbprint.is_some();
    if set.auth.is_some() || keys || thumbs {
        let kind = set
            .auth
            .clone()
            .unwrap_or_else(|| if thumbs { "x509_thumbprint" } else { "sas" }.to_owned());
        let mut auth = json!({ "type": kind });
        if keys {
            auth["symmetric_key"] = json!({});
            put_str(&mut auth["symmetric_key"], "primary_key", &set.primary_key);
            put_str(&mut auth["symmetric_key"], "secondary_key", &set.secondary_key);
        }
        if thumbs {
            auth["x509_thumbprint"] = json!({});
            put_str(&mut auth["x509_thumbprint"], "primary_thumbprint", &set.primary_thumbprint);
            put_str(
                &mut auth["x509_thumbprint"],
                "secondary_thumbprint",
                &set.secondary_thumbprint,
            );
        }
        body["authentication"] = auth;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// group, enrollment, token

/// Attestation flags of groups and individual enrollments.
#[derive(Debug, Clone, Args)]
pub struct AttestationSet {
    /// Attestation: symmetric_key (derived device keys), x509_ca (manufacturer CA),
    /// token (one-time enrollment tokens).
    #[arg(long, value_parser = ["symmetric_key", "x509_ca", "token"], default_value = "symmetric_key")]
    attestation: String,
    /// x509_ca: a manufacturer CA certificate, PEM file (repeatable).
    #[arg(long = "ca-cert", value_name = "F")]
    ca_certs: Vec<PathBuf>,
    /// symmetric_key: the primary key (base64; default generated).
    #[arg(long, value_name = "B64")]
    primary_key: Option<String>,
    /// symmetric_key: the secondary key (base64; default generated).
    #[arg(long, value_name = "B64")]
    secondary_key: Option<String>,
}

/// Enrollment settings shared by groups and individual enrollments.
#[derive(Debug, Clone, Args)]
pub struct EnrollmentSet {
    /// What registered devices get: x509 (a certificate), sas (derived keys), both.
    #[arg(long, value_parser = ["x509", "sas", "both"])]
    credential: Option<String>,
    /// enabled or disabled.
    #[arg(long, value_parser = ["enabled", "disabled"])]
    provisioning_status: Option<String>,
}

/// Group-only settings.
#[derive(Debug, Clone, Args)]
pub struct GroupSet {
    #[command(flatten)]
    enrollment: EnrollmentSet,
    /// Validity of issued certificates, days.
    #[arg(long, value_name = "DAYS")]
    certificate_validity_days: Option<u32>,
    /// Allowed device key type (repeatable): p256, p384, ed25519, rsa2048, rsa3072, rsa4096.
    #[arg(long = "key-type", value_name = "T")]
    key_types: Vec<String>,
    /// Regular expression registration ids must match.
    #[arg(long, value_name = "REGEX")]
    registration_id_pattern: Option<String>,
    /// Initial tag KEY=VALUE of registered devices (repeatable).
    #[arg(long = "tag", value_name = "K=V")]
    tags: Vec<String>,
    /// What a registration of an already registered id does: reissue, keep or deny.
    #[arg(long, value_parser = ["reissue", "keep", "deny"])]
    reprovisioning: Option<String>,
}

/// `provisiond group …`
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create an enrollment group; an existing id is refused (exit 5).
    #[command(after_help = "Example:\n  provisiond group create line-1 --attestation \
                            symmetric_key --credential both --tag line=1")]
    Create {
        /// Enrollment group id.
        id: String,
        #[command(flatten)]
        attestation: AttestationSet,
        #[command(flatten)]
        set: GroupSet,
    },
    /// Delete an enrollment group (its devices stay).
    #[command(after_help = "Example:\n  provisiond group delete line-1")]
    Delete {
        /// Enrollment group id.
        id: String,
    },
    /// List enrollment groups (without keys).
    #[command(after_help = "Example:\n  provisiond group list --all")]
    List {
        #[command(flatten)]
        paging: Paging,
    },
    /// Show one enrollment group (with its keys, for EnrollmentWrite callers).
    #[command(after_help = "Example:\n  provisiond group show line-1")]
    Show {
        /// Enrollment group id.
        id: String,
    },
    /// Change an enrollment group (read, modify, write back).
    #[command(after_help = "Example:\n  provisiond group update line-1 --provisioning-status \
                            disabled")]
    Update {
        /// Enrollment group id.
        id: String,
        #[command(flatten)]
        set: GroupSet,
    },
}

const GROUP_COLUMNS: &[Column] = &[
    ("GROUP ID", "enrollment_group_id"),
    ("ATTESTATION", "attestation.type"),
    ("CREDENTIAL", "credential"),
    ("STATUS", "provisioning_status"),
    ("REPROVISIONING", "reprovisioning"),
    ("UPDATED", "updated_at"),
];

/// Runs `provisiond group …`.
pub(super) async fn group(
    command: GroupCommand,
    remote: &Remote,
    data_dir: Option<PathBuf>,
) -> Result<u8, AdminError> {
    let api = Api::connect(remote, data_dir.as_deref(), Needs::Credential)?;
    let out = remote.output;
    let path = |id: &str| format!("/v1/enrollment-groups/{}", seg(id));
    match command {
        GroupCommand::Create { id, attestation, set } => {
            refuse_existing(&api, &path(&id), "enrollment group", &id, "provisiond group update")
                .await?;
            let mut body = json!({ "attestation": attestation_json(&attestation)? });
            apply_group(&mut body, &set)?;
            show(out, &api.send(Method::PUT, &path(&id), &[], Some(&body), &[]).await?)
        }
        GroupCommand::Delete { id } => {
            api.send(Method::DELETE, &path(&id), &[], None, &[]).await?;
            done(out, &format!("enrollment group {id} deleted"))
        }
        GroupCommand::List { paging } => {
            list(&api, out, "/v1/enrollment-groups", &[], &paging, GROUP_COLUMNS).await
        }
        GroupCommand::Show { id } => show(out, &api.get(&path(&id), &[]).await?),
        GroupCommand::Update { id, set } => {
            let mut body = api.get(&path(&id), &[]).await?.json()?;
            apply_group(&mut body, &set)?;
            show(out, &api.send(Method::PUT, &path(&id), &[], Some(&body), &[]).await?)
        }
    }
}

fn attestation_json(set: &AttestationSet) -> Result<Value, AdminError> {
    let mut a = json!({ "type": set.attestation });
    match set.attestation.as_str() {
        "x509_ca" => {
            if set.ca_certs.is_empty() {
                return Err(AdminError::Config(
                    "--attestation x509_ca needs at least one --ca-cert FILE".into(),
                ));
            }
            let pems = set.ca_certs.iter().map(|p| read_text(p)).collect::<Result<Vec<_>, _>>()?;
            a["x509_ca"] = json!({ "ca_certificates": pems });
        }
        "symmetric_key" if set.primary_key.is_some() || set.secondary_key.is_some() => {
            a["symmetric_key"] = json!({});
            put_str(&mut a["symmetric_key"], "primary_key", &set.primary_key);
            put_str(&mut a["symmetric_key"], "secondary_key", &set.secondary_key);
        }
        _ => {}
    }
    Ok(a)
}

fn apply_enrollment(body: &mut Value, set: &EnrollmentSet) {
    put_str(body, "credential", &set.credential);
    put_str(body, "provisioning_status", &set.provisioning_status);
}

fn apply_group(body: &mut Value, set: &GroupSet) -> Result<(), AdminError> {
    apply_enrollment(body, &set.enrollment);
    if let Some(days) = set.certificate_validity_days {
        body["certificate_validity_days"] = json!(days);
    }
    if !set.key_types.is_empty() {
        body["allowed_key_types"] = json!(set.key_types);
    }
    put_str(body, "registration_id_pattern", &set.registration_id_pattern);
    put_str(body, "reprovisioning", &set.reprovisioning);
    merge_tags(body, "initial_tags", &set.tags)
}

/// `provisiond enrollment …`
#[derive(Debug, Subcommand)]
pub enum EnrollmentCommand {
    /// Create an individual enrollment for one registration id; an existing one is refused
    /// (exit 5).
    #[command(after_help = "Example:\n  provisiond enrollment create sensor-9 --attestation \
                            symmetric_key --credential sas")]
    Create {
        /// Registration id (= the device id it registers).
        id: String,
        #[command(flatten)]
        attestation: AttestationSet,
        #[command(flatten)]
        set: EnrollmentSet,
    },
    /// Delete an individual enrollment.
    #[command(after_help = "Example:\n  provisiond enrollment delete sensor-9")]
    Delete {
        /// Registration id.
        id: String,
    },
    /// List individual enrollments (without keys).
    #[command(after_help = "Example:\n  provisiond enrollment list --output json")]
    List {
        #[command(flatten)]
        paging: Paging,
    },
    /// Show one individual enrollment.
    #[command(after_help = "Example:\n  provisiond enrollment show sensor-9")]
    Show {
        /// Registration id.
        id: String,
    },
}

const ENROLLMENT_COLUMNS: &[Column] = &[
    ("REGISTRATION ID", "registration_id"),
    ("ATTESTATION", "attestation.type"),
    ("CREDENTIAL", "credential"),
    ("STATUS", "provisioning_status"),
    ("UPDATED", "updated_at"),
];

/// Runs `provisiond enrollment …`.
pub(super) async fn enrollment(
    command: EnrollmentCommand,
    remote: &Remote,
    data_dir: Option<PathBuf>,
) -> Result<u8, AdminError> {
    let api = Api::connect(remote, data_dir.as_deref(), Needs::Credential)?;
    let out = remote.output;
    let path = |id: &str| format!("/v1/enrollments/{}", seg(id));
    match command {
        EnrollmentCommand::Create { id, attestation, set } => {
            refuse_existing(&api, &path(&id), "enrollment", &id, "provisiond enrollment delete")
                .await?;
            let mut body = json!({ "attestation": attestation_json(&attestation)? });
            apply_enrollment(&mut body, &set);
            show(out, &api.send(Method::PUT, &path(&id), &[], Some(&body), &[]).await?)
        }
        EnrollmentCommand::Delete { id } => {
            api.send(Method::DELETE, &path(&id), &[], None, &[]).await?;
            done(out, &format!("enrollment {id} deleted"))
        }
        EnrollmentCommand::List { paging } => {
            list(&api, out, "/v1/enrollments", &[], &paging, ENROLLMENT_COLUMNS).await
        }
        EnrollmentCommand::Show { id } => show(out, &api.get(&path(&id), &[]).await?),
    }
}

/// `provisiond token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint one-time enrollment tokens (JWTs) of an enrollment group; prints one per line.
    #[command(after_help = "Example:\n  provisiond token mint --group line-1 --count 10 \
                            --ttl-secs 86400\n  provisiond token mint --group line-1 \
                            --registration-id sensor-1 --registration-id sensor-2")]
    Mint {
        /// Enrollment group id.
        #[arg(long, value_name = "G")]
        group: String,
        /// Number of unbound tokens (1–1000; default 1, or one per --registration-id).
        #[arg(long, value_name = "N")]
        count: Option<u32>,
        /// Lifetime, seconds.
        #[arg(long, default_value_t = 3600, value_name = "S")]
        ttl_secs: u64,
        /// Bind token i to this registration id (repeatable).
        #[arg(long = "registration-id", value_name = "ID")]
        registration_ids: Vec<String>,
    },
}

/// Runs `provisiond token …`.
pub(super) async fn token(
    command: TokenCommand,
    remote: &Remote,
    data_dir: Option<PathBuf>,
) -> Result<u8, AdminError> {
    let api = Api::connect(remote, data_dir.as_deref(), Needs::Credential)?;
    let TokenCommand::Mint { group, count, ttl_secs, registration_ids } = command;
    let mut body = json!({ "ttl_secs": ttl_secs });
    if registration_ids.is_empty() {
        body["count"] = json!(count.unwrap_or(1));
    } else {
        body["registration_ids"] = json!(registration_ids);
        if let Some(n) = count {
            body["count"] = json!(n);
        }
    }
    let path = format!("/v1/enrollment-groups/{}/tokens", seg(&group));
    let reply = api.send(Method::POST, &path, &[], Some(&body), &[]).await?;
    if remote.output == Output::Json {
        return print_json(&reply);
    }
    let v = reply.json()?;
    let tokens = v.get("tokens").and_then(Value::as_array).cloned().unwrap_or_default();
    let text: String = tokens.iter().filter_map(Value::as_str).map(|t| format!("{t}\n")).collect();
    emit(&text);
    eprintln!("{} token(s), valid until {}", tokens.len(), super::output::cell(&v, "expires_at"));
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// bundle

/// `provisiond bundle …`
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Cancel a pending bundle (its payload is erased).
    #[command(after_help = "Example:\n  provisiond bundle cancel 3f2a…")]
    Cancel {
        /// Bundle id.
        id: String,
    },
    /// Create a one-time credential bundle for a device; prints its id and token (once).
    #[command(after_help = "Example:\n  provisiond bundle create --device sensor-1 \
                            --credential both --format pem-tar --ttl-secs 3600")]
    Create {
        /// Device id.
        #[arg(long, value_name = "ID")]
        device: String,
        /// What the bundle carries.
        #[arg(long, value_parser = ["x509", "sas", "both"], default_value = "x509")]
        credential: String,
        /// Its format.
        #[arg(long, value_parser = ["json", "pem-tar", "pkcs12"], default_value = "json")]
        format: String,
        /// Lifetime, seconds (1–2592000; server default 86400).
        #[arg(long, value_name = "S")]
        ttl_secs: Option<u64>,
    },
    /// List bundles (never their tokens or payloads).
    #[command(after_help = "Example:\n  provisiond bundle list --status pending")]
    List {
        /// Only bundles of this device.
        #[arg(long, value_name = "ID")]
        device: Option<String>,
        /// Only bundles with this status.
        #[arg(long, value_parser = ["pending", "redeemed", "expired", "cancelled"])]
        status: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Redeem a bundle with its token (no other credential needed); writes the payload to
    /// --out (created new, 0600) or stdout.
    #[command(after_help = "Example:\n  provisiond bundle redeem 3f2a… --token-file token.txt \
                            --out device.json --url https://prov.example:8443")]
    Redeem {
        /// Bundle id.
        id: String,
        /// The bundle token.
        #[arg(long, value_name = "T", conflicts_with = "token_file")]
        token: Option<String>,
        /// Read the bundle token from this file.
        #[arg(long, value_name = "F")]
        token_file: Option<PathBuf>,
        /// Write the payload here (must not exist).
        #[arg(long, value_name = "F")]
        out: Option<PathBuf>,
    },
    /// Show a bundle's status.
    #[command(after_help = "Example:\n  provisiond bundle show 3f2a…")]
    Show {
        /// Bundle id.
        id: String,
    },
}

const BUNDLE_COLUMNS: &[Column] = &[
    ("BUNDLE ID", "id"),
    ("DEVICE ID", "device_id"),
    ("CREDENTIAL", "credential"),
    ("FORMAT", "format"),
    ("STATUS", "status"),
    ("EXPIRES", "expires_at"),
];

/// Runs `provisiond bundle …`.
pub(super) async fn bundle(
    command: BundleCommand,
    remote: &Remote,
    data_dir: Option<PathBuf>,
) -> Result<u8, AdminError> {
    let out = remote.output;
    let path = |id: &str| format!("/v1/bundles/{}", seg(id));
    if let BundleCommand::Redeem { id, token, token_file, out: file } = command {
        let token = match (token, token_file) {
            (Some(t), _) => Zeroizing::new(t),
            (None, Some(f)) => Zeroizing::new(read_text(&f)?.trim().to_owned()),
            (None, None) => return Err(AdminError::Config("give --token or --token-file".into())),
        };
        let api = Api::connect(remote, data_dir.as_deref(), Needs::Anonymous)?.anonymized();
        let auth = Zeroizing::new(format!("Bundle {}", token.as_str()));
        let reply = api
            .send(
                Method::POST,
                &format!("{}/redeem", path(&id)),
                &[],
                None,
                &[("Authorization", auth.as_str())],
            )
            .await?;
        return write_payload(&reply, file.as_deref());
    }
    let api = Api::connect(remote, data_dir.as_deref(), Needs::Credential)?;
    match command {
        BundleCommand::Cancel { id } => {
            api.send(Method::DELETE, &path(&id), &[], None, &[]).await?;
            done(out, &format!("bundle {id} cancelled"))
        }
        BundleCommand::Create { device, credential, format, ttl_secs } => {
            let mut body =
                json!({ "device_id": device, "credential": credential, "format": format });
            if let Some(ttl) = ttl_secs {
                body["ttl_secs"] = json!(ttl);
            }
            show(out, &api.send(Method::POST, "/v1/bundles", &[], Some(&body), &[]).await?)
        }
        BundleCommand::List { device, status, paging } => {
            let query = [("device_id", device), ("status", status)];
            list(&api, out, "/v1/bundles", &query, &paging, BUNDLE_COLUMNS).await
        }
        BundleCommand::Show { id } => show(out, &api.get(&path(&id), &[]).await?),
        BundleCommand::Redeem { .. } => Ok(0),
    }
}

fn write_payload(reply: &Reply, file: Option<&Path>) -> Result<u8, AdminError> {
    match file {
        Some(path) => {
            crate::fsutil::create_private(path, &reply.body).map_err(|e| {
                AdminError::Config(format!("cannot create {}: {e}", path.display()))
            })?;
            eprintln!("bundle payload ({}) written to {}", reply.content_type, path.display());
        }
        None if reply.content_type.starts_with("application/json") => emit(&pretty(&reply.text())),
        None if std::io::stdout().is_terminal() => {
            return Err(AdminError::Config(format!(
                "the payload is binary ({}): give --out FILE or redirect stdout (the bundle is \
                 redeemed; the server will not hand it out again)",
                reply.content_type
            )))
        }
        None => emit_bytes(&reply.body),
    }
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// cert, ca

/// `provisiond cert …`
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// List issued certificates.
    #[command(after_help = "Example:\n  provisiond cert list --device sensor-1")]
    List {
        /// Only certificates of this device.
        #[arg(long, value_name = "ID")]
        device: Option<String>,
        /// Only this kind (e.g. server).
        #[arg(long, value_name = "K")]
        kind: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Revoke a certificate (visible in OCSP and the next CRL).
    #[command(after_help = "Example:\n  provisiond cert revoke 5d1c0f… --reason key_compromise")]
    Revoke {
        /// Serial, hex.
        serial: String,
        /// Reason.
        #[arg(long, default_value = "unspecified", value_parser = [
            "unspecified", "key_compromise", "ca_compromise", "affiliation_changed",
            "superseded", "cessation_of_operation", "certificate_hold", "privilege_withdrawn"
        ])]
        reason: String,
    },
    /// Show one certificate by serial.
    #[command(after_help = "Example:\n  provisiond cert show 5d1c0f…")]
    Show {
        /// Serial, hex.
        serial: String,
    },
}

const CERT_COLUMNS: &[Column] = &[
    ("SERIAL", "serial"),
    ("DEVICE ID", "device_id"),
    ("STATUS", "status"),
    ("NOT AFTER", "not_after"),
    ("REVOKED", "revoked_at"),
];

/// Runs `provisiond cert …`.
pub(super) async fn cert(
    command: CertCommand,
    remote: &Remote,
    data_dir: Option<PathBuf>,
) -> Result<u8, AdminError> {
    let api = Api::connect(remote, data_dir.as_deref(), Needs::Credential)?;
    let out = remote.output;
    match command {
        CertCommand::List { device, kind, paging } => {
            let query = [("device_id", device), ("kind", kind)];
            list(&api, out, "/v1/certificates", &query, &paging, CERT_COLUMNS).await
        }
        CertCommand::Revoke { serial, reason } => {
            let path = format!("/v1/certificates/{}/revoke", seg(&serial));
            let body = json!({ "reason": reason });
            show(out, &api.send(Method::POST, &path, &[], Some(&body), &[]).await?)
        }
        CertCommand::Show { serial } => {
            show(out, &api.get(&format!("/v1/certificates/{}", seg(&serial)), &[]).await?)
        }
    }
}

/// `provisiond ca …`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the CA chain (PEM, current intermediate first, root last).
    #[command(after_help = "Example:\n  provisiond ca chain --url https://prov.example:8443 \
                            --ca-file root.pem > ca-chain.pem")]
    Chain,
    /// Print a CRL (PEM; DER with --der --out): the current intermediate's, or one issuer's.
    #[command(after_help = "Example:\n  provisiond ca crl --der --out crl.der")]
    Crl {
        /// Issuer id (lowercase hex SKI; see `provisiond ca issuers`).
        #[arg(long, value_name = "ID")]
        issuer: Option<String>,
        /// DER instead of PEM (needs --out).
        #[arg(long, requires = "out")]
        der: bool,
        /// Write to this file (must not exist) instead of stdout.
        #[arg(long, value_name = "F")]
        out: Option<PathBuf>,
    },
    /// List the CA's issuers (intermediates with live certificates).
    #[command(after_help = "Example:\n  provisiond ca issuers")]
    Issuers,
}

const ISSUER_COLUMNS: &[Column] = &[
    ("ISSUER ID", "issuer_id"),
    ("CURRENT", "current"),
    ("SUBJECT", "subject"),
    ("NOT AFTER", "not_after"),
    ("CRL NUMBER", "crl_number"),
];

/// Runs `provisiond ca …`.
pub(super) async fn ca(
    command: CaCommand,
    remote: &Remote,
    data_dir: Option<PathBuf>,
) -> Result<u8, AdminError> {
    match command {
        CaCommand::Chain => {
            let api = Api::connect(remote, data_dir.as_deref(), Needs::Anonymous)?;
            emit(&api.get("/v1/ca/chain", &[]).await?.text());
            Ok(0)
        }
        CaCommand::Crl { issuer, der, out } => {
            let api = Api::connect(remote, data_dir.as_deref(), Needs::Anonymous)?;
            let path = match issuer {
                Some(id) => format!("/v1/ca/crl/{}", seg(&id)),
                None => "/v1/ca/crl".to_owned(),
            };
            let query = if der { vec![] } else { vec![("format", "pem".to_owned())] };
            let reply = api.get(&path, &query).await?;
            match out {
                Some(file) => write_payload(&reply, Some(&file)),
                None => {
                    emit(&reply.text());
                    Ok(0)
                }
            }
        }
        CaCommand::Issuers => {
            let api = Api::connect(remote, data_dir.as_deref(), Needs::Credential)?;
            let reply = api.get("/v1/ca/issuers", &[]).await?;
            print_list(remote.output, &reply, ISSUER_COLUMNS)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// policy

/// Policy members settable from the command line.
#[derive(Debug, Clone, Args)]
pub struct PolicySet {
    /// Permission (repeatable; replaces the set on update): RegistryRead, RegistryReadWrite,
    /// ServiceConnect, DeviceConnect, EnrollmentRead, EnrollmentWrite, Enroll, BundleCreate,
    /// CertificateAdmin, AuditRead, PolicyAdmin.
    #[arg(long = "permission", value_name = "P")]
    permissions: Vec<String>,
    /// Scope: only device ids with this prefix.
    #[arg(long, value_name = "P")]
    scope_prefix: Option<String>,
    /// Scope: only this enrollment group (repeatable).
    #[arg(long = "scope-group", value_name = "G")]
    scope_groups: Vec<String>,
    /// Drop the scope (unscoped policy).
    #[arg(long, conflicts_with_all = ["scope_prefix", "scope_groups"])]
    unscoped: bool,
    /// Primary key (base64; default generated).
    #[arg(long, value_name = "B64")]
    primary_key: Option<String>,
    /// Secondary key (base64; default generated).
    #[arg(long, value_name = "B64")]
    secondary_key: Option<String>,
}

/// `provisiond policy …`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Create an access policy (SAS keys generated unless given); an existing name is refused
    /// (exit 5).
    #[command(after_help = "Example:\n  provisiond policy create station-7 --permission \
                            RegistryRead --permission BundleCreate --scope-prefix station-7-")]
    Create {
        /// Policy name.
        name: String,
        #[command(flatten)]
        set: PolicySet,
    },
    /// Delete a policy (its tokens stop working at once).
    #[command(after_help = "Example:\n  provisiond policy delete station-7")]
    Delete {
        /// Policy name.
        name: String,
    },
    /// List policies (without keys).
    #[command(after_help = "Example:\n  provisiond policy list")]
    List {
        #[command(flatten)]
        paging: Paging,
    },
    /// Replace a policy's keys: primary, secondary, or swap the two.
    #[command(
        name = "rotate-key",
        after_help = "Example:\n  provisiond policy rotate-key \
                                                 station-7 --key primary"
    )]
    RotateKey {
        /// Policy name.
        name: String,
        #[command(flatten)]
        key: WhichKey,
    },
    /// Show one policy, with its keys.
    #[command(after_help = "Example:\n  provisiond policy show registryRead")]
    Show {
        /// Policy name.
        name: String,
    },
    /// Change a policy's permissions, scope or keys (read, modify, write back).
    #[command(after_help = "Example:\n  provisiond policy update station-7 --permission \
                            RegistryRead --unscoped")]
    Update {
        /// Policy name.
        name: String,
        #[command(flatten)]
        set: PolicySet,
    },
}

const POLICY_COLUMNS: &[Column] = &[
    ("NAME", "name"),
    ("PERMISSIONS", "permissions"),
    ("SCOPE PREFIX", "scope.device_id_prefix"),
    ("SCOPE GROUPS", "scope.enrollment_group_ids"),
    ("UPDATED", "updated_at"),
];

/// Runs `provisiond policy …`.
pub(super) async fn policy(
    command: PolicyCommand,
    remote: &Remote,
    data_dir: Option<PathBuf>,
) -> Result<u8, AdminError> {
    let api = Api::connect(remote, data_dir.as_deref(), Needs::Credential)?;
    let out = remote.output;
    let path = |name: &str| format!("/v1/policies/{}", seg(name));
    match command {
        PolicyCommand::Create { name, set } => {
            refuse_existing(&api, &path(&name), "policy", &name, "provisiond policy update")
                .await?;
            let mut body = json!({ "permissions": set.permissions });
            apply_policy(&mut body, &set);
            show(out, &api.send(Method::PUT, &path(&name), &[], Some(&body), &[]).await?)
        }
        PolicyCommand::Delete { name } => {
            api.send(Method::DELETE, &path(&name), &[], None, &[]).await?;
            done(out, &format!("policy {name} deleted"))
        }
        PolicyCommand::List { paging } => {
            list(&api, out, "/v1/policies", &[], &paging, POLICY_COLUMNS).await
        }
        PolicyCommand::RotateKey { name, key } => {
            let p = format!("{}/keys/rotate", path(&name));
            show(
                out,
                &api.send(Method::POST, &p, &[], Some(&json!({ "key": key.key })), &[]).await?,
            )
        }
        PolicyCommand::Show { name } => show(out, &api.get(&path(&name), &[]).await?),
        PolicyCommand::Update { name, set } => {
            let current = api.get(&path(&name), &[]).await?.json()?;
            let mut body = json!({});
            for member in ["permissions", "scope", "primary_key", "secondary_key"] {
                if let Some(v) = current.get(member) {
                    body[member] = v.clone();
                }
            }
            if !set.permissions.is_empty() {
                body["permissions"] = json!(set.permissions);
            }
            apply_policy(&mut body, &set);
            show(out, &api.send(Method::PUT, &path(&name), &[], Some(&body), &[]).await?)
        }
    }
}

fn apply_policy(body: &mut Value, set: &PolicySet) {
    if set.unscoped {
        body["scope"] = Value::Null;
    } else if set.scope_prefix.is_some() || !set.scope_groups.is_empty() {
        let mut scope = json!({});
        put_str(&mut scope, "device_id_prefix", &set.scope_prefix);
        if !set.scope_groups.is_empty() {
            scope["enrollment_group_ids"] = json!(set.scope_groups);
        }
        body["scope"] = scope;
    }
    put_str(body, "primary_key", &set.primary_key);
    put_str(body, "secondary_key", &set.secondary_key);
}

// ---------------------------------------------------------------------------------------------
// audit

/// Which audit rows `tail` shows.
#[derive(Debug, Clone, Args)]
pub struct TailOpts {
    /// How many of the latest rows (1–1000).
    #[arg(long, short = 'n', default_value_t = 20, value_name = "N")]
    lines: u32,
    /// Rows after this sequence number instead of the latest.
    #[arg(long, value_name = "SEQ")]
    after: Option<u64>,
    /// Only this action (e.g. device.create).
    #[arg(long, value_name = "A")]
    action: Option<String>,
    /// Only targets starting with this prefix.
    #[arg(long, value_name = "P")]
    target_prefix: Option<String>,
    /// Only this outcome.
    #[arg(long, value_parser = ["success", "failure"])]
    outcome: Option<String>,
}

/// `provisiond audit tail|checkpoint` (always against a server).
#[derive(Debug, Subcommand)]
pub enum AuditRemoteCommand {
    /// The server's latest audit rows (remote; needs AuditRead, unscoped).
    #[command(after_help = "Example:\n  provisiond audit tail -n 50 --outcome failure")]
    Tail {
        #[command(flatten)]
        remote: Remote,
        #[command(flatten)]
        opts: TailOpts,
    },
    /// A signed checkpoint of the server's audit chain (remote): keep it elsewhere to prove
    /// later that no row was cut from the end.
    #[command(after_help = "Example:\n  provisiond audit checkpoint --output json >> \
                            checkpoints.jsonl")]
    Checkpoint {
        #[command(flatten)]
        remote: Remote,
    },
}

/// `provisiond audit … --url URL`.
#[derive(Debug, Subcommand)]
pub enum AuditUrlCommand {
    /// A signed checkpoint of the server's audit chain.
    #[command(
        after_help = "Example:\n  provisiond audit checkpoint --url https://prov.example:8443"
    )]
    Checkpoint,
    /// The server's latest audit rows.
    #[command(
        after_help = "Example:\n  provisiond audit tail --url https://prov.example:8443 -n 5"
    )]
    Tail(TailOpts),
    /// Let the server verify its audit chain (GET /v1/audit/verify); exit 1 when broken.
    #[command(after_help = "Example:\n  provisiond audit verify --url https://prov.example:8443")]
    Verify,
}

const AUDIT_COLUMNS: &[Column] = &[
    ("SEQ", "seq"),
    ("AT", "at"),
    ("ACTOR", "actor"),
    ("ACTION", "action"),
    ("TARGET", "target"),
    ("OUTCOME", "outcome"),
    ("CLIENT", "client_addr"),
];

/// Runs `provisiond audit tail|checkpoint` (local parser).
pub(super) async fn audit(
    command: AuditRemoteCommand,
    data_dir: Option<PathBuf>,
) -> Result<u8, AdminError> {
    match command {
        AuditRemoteCommand::Tail { remote, opts } => {
            audit_url(AuditUrlCommand::Tail(opts), &remote, data_dir).await
        }
        AuditRemoteCommand::Checkpoint { remote } => {
            audit_url(AuditUrlCommand::Checkpoint, &remote, data_dir).await
        }
    }
}

/// Runs `provisiond audit … --url`.
pub(super) async fn audit_url(
    command: AuditUrlCommand,
    remote: &Remote,
    data_dir: Option<PathBuf>,
) -> Result<u8, AdminError> {
    let api = Api::connect(remote, data_dir.as_deref(), Needs::Credential)?;
    let out = remote.output;
    match command {
        AuditUrlCommand::Checkpoint => show(out, &api.get("/v1/audit/checkpoint", &[]).await?),
        AuditUrlCommand::Tail(opts) => {
            let limit = opts.lines.clamp(1, 1000);
            let after = match opts.after {
                Some(a) => a,
                None => {
                    let cp = api.get("/v1/audit/checkpoint", &[]).await?.json()?;
                    let seq = cp.get("seq").and_then(Value::as_u64).unwrap_or(0);
                    seq.saturating_sub(u64::from(limit))
                }
            };
            let mut query = vec![("after", after.to_string()), ("limit", limit.to_string())];
            for (k, v) in [
                ("action", opts.action),
                ("target_prefix", opts.target_prefix),
                ("outcome", opts.outcome),
            ] {
                if let Some(v) = v {
                    query.push((k, v));
                }
            }
            let reply = api.get("/v1/audit", &query).await?;
            print_list(out, &reply, AUDIT_COLUMNS)
        }
        AuditUrlCommand::Verify => {
            let reply = api.get("/v1/audit/verify", &[]).await?;
            let v = reply.json()?;
            let ok = v.get("ok").and_then(Value::as_bool).unwrap_or(false);
            if out == Output::Json {
                print_json(&reply)?;
            } else if ok {
                emit(&format!(
                    "audit chain OK: {} rows verified\n",
                    super::output::cell(&v, "checked")
                ));
            } else {
                emit(&format!(
                    "audit chain BROKEN: first bad row seq={} ({} rows checked)\n",
                    super::output::cell(&v, "first_bad_seq"),
                    super::output::cell(&v, "checked")
                ));
            }
            Ok(if ok { 0 } else { EXIT_VERIFY_FAILED })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// operator (remote), login, logout

/// `provisiond operator … --url URL`.
#[derive(Debug, Subcommand)]
pub enum OperatorRemoteCommand {
    /// Create an operator on the server (password prompted without echo, or --password-file);
    /// an existing one is refused unless --replace.
    #[command(after_help = "Example:\n  provisiond operator add alice --permission RegistryRead \
                            --permission AuditRead --url https://prov.example:8443")]
    Add {
        /// User name.
        name: String,
        /// Permission (repeatable, at least one).
        #[arg(long = "permission", value_name = "P", required = true)]
        permissions: Vec<String>,
        /// Read the password from the first line of this file.
        #[arg(long, value_name = "F")]
        password_file: Option<PathBuf>,
        /// Replace an existing operator of that name.
        #[arg(long)]
        replace: bool,
    },
    /// List the server's operators.
    #[command(after_help = "Example:\n  provisiond operator list --url https://prov.example:8443")]
    List {
        #[command(flatten)]
        paging: Paging,
    },
    /// Change an operator's password on the server, keeping its permissions.
    #[command(after_help = "Example:\n  provisiond operator passwd alice --url \
                            https://prov.example:8443")]
    Passwd {
        /// User name.
        name: String,
        /// Read the password from the first line of this file.
        #[arg(long, value_name = "F")]
        password_file: Option<PathBuf>,
    },
    /// Remove an operator from the server (its sessions end at once).
    #[command(after_help = "Example:\n  provisiond operator remove alice --url \
                            https://prov.example:8443")]
    Remove {
        /// User name.
        name: String,
    },
    /// Show one operator.
    #[command(after_help = "Example:\n  provisiond operator show alice --url \
                            https://prov.example:8443")]
    Show {
        /// User name.
        name: String,
    },
}

const OPERATOR_COLUMNS: &[Column] =
    &[("NAME", "name"), ("PERMISSIONS", "permissions"), ("UPDATED", "updated_at")];

/// Runs `provisiond operator … --url`.
pub(super) async fn operator(
    command: OperatorRemoteCommand,
    remote: &Remote,
    data_dir: Option<PathBuf>,
) -> Result<u8, AdminError> {
    let api = Api::connect(remote, data_dir.as_deref(), Needs::Credential)?;
    let out = remote.output;
    let path = |name: &str| format!("/v1/operators/{}", seg(name));
    match command {
        OperatorRemoteCommand::Add { name, permissions, password_file, replace } => {
            let mut headers = Vec::new();
            if !replace {
                refuse_existing(&api, &path(&name), "operator", &name, "--replace").await?;
                headers.push(("If-None-Match", "*"));
            }
            let password = read_password(password_file.as_deref(), &name, true)?;
            let body = json!({ "password": password.as_str(), "permissions": permissions });
            let reply = api.send(Method::PUT, &path(&name), &[], Some(&body), &headers).await?;
            show_or_done(out, &reply, &format!("operator {name} saved"))
        }
        OperatorRemoteCommand::List { paging } => {
            list(&api, out, "/v1/operators", &[], &paging, OPERATOR_COLUMNS).await
        }
        OperatorRemoteCommand::Passwd { name, password_file } => {
            let current = api.get(&path(&name), &[]).await?.json()?;
            let permissions = current.get("permissions").cloned().unwrap_or_else(|| json!([]));
            let password = read_password(password_file.as_deref(), &name, true)?;
            let body = json!({ "password": password.as_str(), "permissions": permissions });
            let reply = api.send(Method::PUT, &path(&name), &[], Some(&body), &[]).await?;
            show_or_done(out, &reply, &format!("password of operator {name} changed"))
        }
        OperatorRemoteCommand::Remove { name } => {
            api.send(Method::DELETE, &path(&name), &[], None, &[]).await?;
            done(out, &format!("operator {name} removed"))
        }
        OperatorRemoteCommand::Show { name } => show(out, &api.get(&path(&name), &[]).await?),
    }
}

/// `provisiond login`
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Operator name.
    username: String,
    /// Read the password from the first line of this file (else a prompt without echo, or
    /// one line of stdin when it is not a terminal).
    #[arg(long, value_name = "F")]
    password_file: Option<PathBuf>,
    #[command(flatten)]
    remote: Remote,
}

/// Runs `provisiond login`.
#[tracing::instrument(skip_all)]
pub(super) async fn login(args: LoginArgs, data_dir: Option<PathBuf>) -> Result<u8, AdminError> {
    let api = Api::connect(&args.remote, data_dir.as_deref(), Needs::Anonymous)?.anonymized();
    let password = read_password(args.password_file.as_deref(), &args.username, false)?;
    let body = json!({ "username": args.username, "password": password.as_str() });
    let reply = api.send(Method::POST, "/v1/auth/login", &[], Some(&body), &[]).await?;
    let v = reply.json()?;
    let member = |name: &str| v.get(name).and_then(Value::as_str).map(str::to_owned);
    let (Some(access_token), Some(expires_at)) = (member("access_token"), member("expires_at"))
    else {
        return Err(AdminError::Unreachable {
            url: api.base().to_owned(),
            reason: "the login answer lacks access_token or expires_at".into(),
        });
    };
    let ca_file =
        api.ca_file().map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()));
    let session = Session {
        url: api.base().to_owned(),
        username: args.username.clone(),
        access_token,
        expires_at: expires_at.clone(),
        ca_file,
    };
    let path = store_session(&session)?;
    if args.remote.output == Output::Json {
        let v = json!({ "username": args.username, "url": api.base(), "expires_at": expires_at,
                        "session_file": path.display().to_string() });
        emit(&pretty(&v.to_string()));
    } else {
        emit(&format!(
            "logged in to {} as {} until {expires_at} (session in {})\n",
            api.base(),
            args.username,
            path.display()
        ));
    }
    Ok(0)
}

/// Runs `provisiond logout`.
pub(super) fn logout() -> Result<u8, AdminError> {
    if remove_session()? {
        emit("logged out\n");
    } else {
        emit("no session\n");
    }
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// helpers

fn put_str(body: &mut Value, member: &str, value: &Option<String>) {
    if let Some(v) = value {
        body[member] = json!(v);
    }
}

fn merge_tags(body: &mut Value, member: &str, tags: &[String]) -> Result<(), AdminError> {
    if tags.is_empty() {
        return Ok(());
    }
    let mut map = body.get(member).and_then(Value::as_object).cloned().unwrap_or_else(Map::new);
    for tag in tags {
        let (k, v) = tag
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| AdminError::Config(format!("--tag {tag:?}: expected KEY=VALUE")))?;
        map.insert(k.to_owned(), json!(v));
    }
    body[member] = Value::Object(map);
    Ok(())
}

fn read_text(path: &Path) -> Result<String, AdminError> {
    std::fs::read_to_string(path)
        .map_err(|e| AdminError::Config(format!("cannot read {}: {e}", path.display())))
}

/// The password: first line of `file`, else a prompt without echo on a terminal (twice when
/// `confirm`), else one line of stdin.
fn read_password(
    file: Option<&Path>,
    user: &str,
    confirm: bool,
) -> Result<Zeroizing<String>, AdminError> {
    let password = match file {
        Some(path) => {
            let text = Zeroizing::new(read_text(path)?);
            Zeroizing::new(text.lines().next().unwrap_or_default().to_owned())
        }
        None if std::io::stdin().is_terminal() => {
            let fail =
                |e: std::io::Error| AdminError::Config(format!("cannot read the password: {e}"));
            let first = Zeroizing::new(
                rpassword::prompt_password(format!("Password for {user}: ")).map_err(fail)?,
            );
            if confirm {
                let again = Zeroizing::new(
                    rpassword::prompt_password("Repeat the password: ").map_err(fail)?,
                );
                if *again != *first {
                    return Err(AdminError::Config("the passwords differ".into()));
                }
            }
            first
        }
        None => {
            let mut line = Zeroizing::new(String::new());
            std::io::stdin().read_line(&mut line).map_err(|e| {
                AdminError::Config(format!("cannot read the password from stdin: {e}"))
            })?;
            Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned())
        }
    };
    if password.is_empty() {
        return Err(AdminError::Config("empty password".into()));
    }
    Ok(password)
}

/// A create must not replace: 404 on GET is the go-ahead; an existing object is a conflict.
async fn refuse_existing(
    api: &Api,
    path: &str,
    kind: &'static str,
    id: &str,
    instead: &'static str,
) -> Result<(), AdminError> {
    match api.get(path, &[]).await {
        Err(AdminError::Api { status: 404, .. }) => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Err(AdminError::Exists { kind, id: id.to_owned(), instead }),
    }
}

fn print_json(reply: &Reply) -> Result<u8, AdminError> {
    emit(&pretty(&reply.text()));
    Ok(0)
}

fn show(out: Output, reply: &Reply) -> Result<u8, AdminError> {
    match out {
        Output::Json => print_json(reply),
        Output::Table => {
            emit(&fields(&reply.json()?));
            Ok(0)
        }
    }
}

fn show_or_done(out: Output, reply: &Reply, message: &str) -> Result<u8, AdminError> {
    if reply.body.is_empty() {
        done(out, message)
    } else {
        show(out, reply)
    }
}

fn done(out: Output, message: &str) -> Result<u8, AdminError> {
    if out == Output::Table {
        emit(&format!("{message}\n"));
    }
    Ok(0)
}

fn print_list(out: Output, reply: &Reply, columns: &[Column]) -> Result<u8, AdminError> {
    if out == Output::Json {
        return print_json(reply);
    }
    let v = reply.json()?;
    let items = v.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
    emit(&table(columns, &items));
    Ok(0)
}

async fn list(
    api: &Api,
    out: Output,
    path: &str,
    filters: &[(&'static str, Option<String>)],
    paging: &Paging,
    columns: &[Column],
) -> Result<u8, AdminError> {
    let mut query: Vec<(&str, String)> =
        filters.iter().filter_map(|(k, v)| v.clone().map(|v| (*k, v))).collect();
    if let Some(limit) = paging.limit {
        query.push(("limit", limit.to_string()));
    }
    if let Some(cursor) = &paging.cursor {
        query.push(("cursor", cursor.clone()));
    }
    if !paging.all {
        let reply = api.get(path, &query).await?;
        if out == Output::Json {
            return print_json(&reply);
        }
        let v = reply.json()?;
        let items = v.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
        emit(&table(columns, &items));
        if let Some(next) = v.get("next_cursor").and_then(Value::as_str) {
            eprintln!("more: --cursor {next} (or --all)");
        }
        return Ok(0);
    }
    let pages = api.pages(path, query, true).await?;
    let items: Vec<Value> = pages
        .iter()
        .flat_map(|p| p.get("items").and_then(Value::as_array).cloned().unwrap_or_default())
        .collect();
    match out {
        Output::Json => {
            let all = json!({ "items": items, "next_cursor": null });
            emit(&pretty(&all.to_string()));
        }
        Output::Table => emit(&table(columns, &items)),
    }
    Ok(0)
}
