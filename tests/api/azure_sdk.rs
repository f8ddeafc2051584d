//! Azure's own Node.js device SDK (azure-iot-provisioning-device + -http transport) provisions
//! against provisiond by changing only the host, the ID scope and the trusted CA.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::helpers::{spawn_with, DataDir, TestApp};
use crate::mqtt::{manufacturer_certificate, scope};

/// Azure's SDK always connects to port 443 (it has no port option), so each test serves on
/// 443 of its own loopback address — which needs root (CI runs as root).
async fn spawn_on_443(addr: &str) -> Option<TestApp> {
    let probe = std::net::TcpListener::bind((addr, 443));
    if probe.is_err() {
        assert_ne!(
            std::env::var("PROVISIOND_REQUIRE_INTEROP").as_deref(),
            Ok("1"),
            "cannot bind {addr}:443"
        );
        eprintln!("SKIPPED: cannot bind {addr}:443 (not root?)");
        return None;
    }
    drop(probe);
    let listen = format!("{addr}:443");
    Some(
        spawn_with(DataDir::init().await, &[("LISTEN", &listen), ("PROVISIOND_TLS_NAMES", addr)])
            .await,
    )
}

fn node_ready() -> Option<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    let ok = dir.join("node_modules/azure-iot-provisioning-device-http").exists()
        && Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert_ne!(
            std::env::var("PROVISIOND_REQUIRE_INTEROP").as_deref(),
            Ok("1"),
            "node + Azure SDK required (npm ci in tests/node)"
        );
        eprintln!("SKIPPED: Azure Node SDK not installed");
        return None;
    }
    Some(dir)
}

/// Runs `register.js` with Azure's `transport` (`http` or `mqtt`).
pub fn run(dir: &Path, app: &TestApp, transport: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("node")
        .arg("register.js")
        .args(args)
        .current_dir(dir)
        .env("TRANSPORT", transport)
        .env("NODE_EXTRA_CA_CERTS", app.chain_path())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn azure_node_sdk_registers_with_a_group_derived_symmetric_key() {
    let Some(dir) = node_ready() else { return };
    let Some(app) = spawn_on_443("127.0.0.11").await else { return };
    let g = app
        .put_group("azure", json!({"attestation": {"type": "symmetric_key"}, "credential": "sas"}))
        .await;
    let group_key =
        ca::SasKey::from_base64(g["attestation"]["symmetric_key"]["primary_key"].as_str().unwrap())
            .unwrap();
    let derived = ca::sas::derive_device_key(&group_key, "node-dev-1");
    let host = app.base.trim_start_matches("https://").trim_end_matches(":443").to_owned();
    let (ok, out, err) = run(
        &dir,
        &app,
        "http",
        &["symkey", &host, &scope(&app), "node-dev-1", &derived.to_base64()],
    );
    assert!(ok, "SDK failed: {err} {out}");
    let result: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(result["assignedHub"], "localhost", "{result}");
    assert_eq!(result["deviceId"], "node-dev-1", "{result}");
    let d: Value =
        app.get_as("/v1/devices/node-dev-1", &app.owner_token()).await.json().await.unwrap();
    assert_eq!(d["enrollment_group_id"], "azure");

    let wrong = ca::SasKey::generate();
    let (ok, _, _) =
        run(&dir, &app, "http", &["symkey", &host, &scope(&app), "node-dev-2", &wrong.to_base64()]);
    assert!(!ok, "a wrong key is refused");
    assert_eq!(app.get_as("/v1/devices/node-dev-2", &app.owner_token()).await.status(), 404);
}

#[tokio::test]
async fn azure_node_sdk_registers_with_an_x509_manufacturer_certificate() {
    let Some(dir) = node_ready() else { return };
    let Some(app) = spawn_on_443("127.0.0.12").await else { return };
    let files = tempfile::tempdir().unwrap();
    let (ca_pem, cert_p, key_p) = manufacturer_certificate(files.path(), "node-x509-1");
    app.put_group("contoso", json!({"attestation": {"type": "x509_ca", "x509_ca": {"ca_certificates": [ca_pem]}}, "credential": "sas"})).await;
    let host = app.base.trim_start_matches("https://").trim_end_matches(":443").to_owned();
    let (ok, out, err) = run(
        &dir,
        &app,
        "http",
        &[
            "x509",
            &host,
            &scope(&app),
            "node-x509-1",
            cert_p.to_str().unwrap(),
            key_p.to_str().unwrap(),
        ],
    );
    assert!(ok, "SDK failed: {err} {out}");
    let result: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(result["deviceId"], "node-x509-1", "{result}");
    assert_eq!(result["assignedHub"], "localhost");
}
