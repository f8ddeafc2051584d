//! The MQTT device endpoint (API.md A26, A30): Azure's own device SDKs (Python
//! `azure-iot-device`, Node `azure-iot-provisioning-device-mqtt`) provision unmodified over MQTT,
//! and hostile clients are disconnected without seeing anything or storing anything.
//!
//! Azure's SDKs connect to port 8883 only. Each such test therefore serves MQTT on 8883 of its
//! *own* loopback address (127.0.0.4x, named in the server certificate), so the tests own 8883
//! without a lock and still run in parallel; nothing else binds 8883 by default in the suite
//! (with `--listen …:0` the MQTT default is port 0).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::helpers::{command, spawn_app, spawn_with, DataDir, TestApp};

fn interop_missing(what: &str) {
    assert_ne!(
        std::env::var("PROVISIOND_REQUIRE_INTEROP").as_deref(),
        Ok("1"),
        "{what} required (scripts/ci-deps installs it)"
    );
    eprintln!("SKIPPED: {what} not installed");
}

/// Python with these modules, or a visible skip (a failure under PROVISIOND_REQUIRE_INTEROP=1).
pub fn python_with(modules: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        interop_missing(&format!("python3 with {modules}"));
    }
    ok
}

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(name)
}

/// Runs a Python script: (success, stdout, stderr).
pub fn python(name: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("python3").arg(script(name)).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A server whose MQTT endpoint listens on `{ip}:8883` (HTTPS on a free port of the same ip).
pub async fn spawn_on_8883(ip: &str) -> Option<TestApp> {
    if std::net::TcpListener::bind((ip, 8883)).is_err() {
        interop_missing(&format!("a free {ip}:8883"));
        return None;
    }
    let listen = format!("{ip}:0");
    let mqtt = format!("{ip}:8883");
    Some(
        spawn_with(
            DataDir::init().await,
            &[("LISTEN", &listen), ("PROVISIOND_MQTT_LISTEN", &mqtt), ("PROVISIOND_TLS_NAMES", ip)],
        )
        .await,
    )
}

pub fn scope(app: &TestApp) -> String {
    let toml = std::fs::read_to_string(app.data.path().join("provisiond.toml")).unwrap();
    toml.lines().find(|l| l.starts_with("id_scope")).unwrap().split('"').nth(1).unwrap().to_owned()
}

impl TestApp {
    /// Creates an individual symmetric-key enrollment issuing SAS keys; returns its primary key.
    pub async fn put_individual_sas(&self, id: &str) -> String {
        let r = self
            .client
            .put(self.url(&format!("/v1/enrollments/{id}")))
            .header("Authorization", self.owner_token())
            .json(&json!({"attestation": {"type": "symmetric_key"}, "credential": "sas"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let e: Value = r.json().await.unwrap();
        e["attestation"]["symmetric_key"]["primary_key"].as_str().unwrap().to_owned()
    }

    /// GET as owner on a new connection (these tests idle longer than HTTP keep-alive).
    pub async fn get_fresh(&self, path: &str) -> reqwest::Response {
        let client = crate::helpers::client_trusting(&self.chain_path());
        let req = client.get(self.url(path)).header("Authorization", self.owner_token());
        req.send().await.unwrap()
    }

    pub async fn device(&self, id: &str) -> (u16, Value) {
        let r = self.get_fresh(&format!("/v1/devices/{id}")).await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub fn mqtt_port(&self) -> String {
        self.mqtt.expect("MQTT is on").port().to_string()
    }
}

/// A manufacturer CA and one device certificate (CN = `cn`) written to `dir`: (CA PEM, cert
/// path, key path).
pub fn manufacturer_certificate(dir: &Path, cn: &str) -> (String, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Contoso Devices CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &issuer).unwrap();
    let (cert_p, key_p) = (dir.join(format!("{cn}.pem")), dir.join(format!("{cn}.key")));
    std::fs::write(&cert_p, cert.pem()).unwrap();
    std::fs::write(&key_p, key.serialize_pem()).unwrap();
    (ca_cert.pem(), cert_p, key_p)
}

fn registrations(metrics: &str, door: &str, outcome: &str) -> u64 {
    let needle =
        format!("provisiond_registrations_total{{door=\"{door}\",outcome=\"{outcome}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&needle)).map_or(0, |v| v.trim().parse().unwrap())
}

async fn metrics(app: &TestApp) -> String {
    app.get_fresh("/metrics").await.text().await.unwrap()
}

#[tokio::test]
async fn python_sdk_provisions_over_mqtt_with_symmetric_keys_and_x509() {
    if !python_with("azure.iot.device") {
        return;
    }
    let Some(app) = spawn_on_8883("127.0.0.41").await else { return };
    let ip = "127.0.0.41";
    let chain = app.chain_path();
    let chain = chain.to_str().unwrap();
    let scope = scope(&app);

    // Individual enrollment.
    let key = app.put_individual_sas("py-ind-1").await;
    let (ok, out, err) = python("azure_dps.py", &["symkey", ip, &scope, "py-ind-1", &key, chain]);
    assert!(ok, "SDK failed: {err} {out}");
    let r: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r["status"], "assigned", "{r}");
    assert_eq!(r["deviceId"], "py-ind-1");
    assert_eq!(r["assignedHub"], "localhost");
    let (status, d) = app.device("py-ind-1").await;
    assert_eq!(status, 200);
    assert_eq!(d["owner"]["kind"], "enrollment", "{d}");

    // Group-derived key.
    let g = app
        .put_group(
            "py-group",
            json!({"attestation": {"type": "symmetric_key"}, "credential": "sas"}),
        )
        .await;
    let group_key =
        ca::SasKey::from_base64(g["attestation"]["symmetric_key"]["primary_key"].as_str().unwrap())
            .unwrap();
    let derived = ca::sas::derive_device_key(&group_key, "py-grp-1").to_base64().to_string();
    let (ok, out, err) =
        python("azure_dps.py", &["symkey", ip, &scope, "py-grp-1", &derived, chain]);
    assert!(ok, "SDK failed: {err} {out}");
    assert!(out.contains("\"assigned\""), "{out}");
    let (status, d) = app.device("py-grp-1").await;
    assert_eq!(status, 200);
    assert_eq!(d["enrollment_group_id"], "py-group");

    // A wrong key is refused at CONNECT; nothing is stored.
    let wrong = ca::SasKey::generate().to_base64().to_string();
    let (ok, _, err) = python("azure_dps.py", &["symkey", ip, &scope, "py-grp-2", &wrong, chain]);
    assert!(!ok, "a wrong key is refused");
    assert!(err.contains("CredentialError") || err.contains("rror"), "{err}");
    assert_eq!(app.device("py-grp-2").await.0, 404);

    // X.509 manufacturer certificate.
    let files = tempfile::tempdir().unwrap();
    let (ca_pem, cert, key) = manufacturer_certificate(files.path(), "py-x509-1");
    app.put_group(
        "py-x509",
        json!({"attestation": {"type": "x509_ca", "x509_ca": {"ca_certificates": [ca_pem]}}, "credential": "sas"}),
    )
    .await;
    let (ok, out, err) = python(
        "azure_dps.py",
        &["x509", ip, &scope, "py-x509-1", cert.to_str().unwrap(), key.to_str().unwrap(), chain],
    );
    assert!(ok, "SDK failed: {err} {out}");
    assert!(out.contains("\"py-x509-1\""), "{out}");
    assert_eq!(app.device("py-x509-1").await.1["enrollment_group_id"], "py-x509");

    let m = metrics(&app).await;
    assert_eq!(registrations(&m, "dps_mqtt", "success"), 3, "{m}");
    assert!(m.contains("provisiond_mqtt_connects_total{personality=\"dps\",result=\"refused\"} 1"));
    assert!(!m.contains("py-"), "no ids in metrics");
    // The refusal is audited like an HTTP one.
    let audit: Value = app.get_fresh("/v1/audit?limit=1000").await.json().await.unwrap();
    assert!(audit.to_string().contains("mqtt:"), "failed MQTT CONNECT audited: {audit}");
}

fn node_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    let ok = dir.join("node_modules/azure-iot-provisioning-device-mqtt").exists()
        && Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        interop_missing("node + azure-iot-provisioning-device-mqtt (npm ci in tests/node)");
        return None;
    }
    Some(dir)
}

fn node(dir: &Path, app: &TestApp, args: &[&str]) -> (bool, String, String) {
    crate::azure_sdk::run(dir, app, "mqtt", args)
}

#[tokio::test]
async fn node_sdk_provisions_over_mqtt_with_a_symmetric_key_and_x509() {
    let Some(dir) = node_dir() else { return };
    let Some(app) = spawn_on_8883("127.0.0.42").await else { return };
    let ip = "127.0.0.42";
    let scope = scope(&app);
    let g = app
        .put_group(
            "node-mqtt",
            json!({"attestation": {"type": "symmetric_key"}, "credential": "sas"}),
        )
        .await;
    let group_key =
        ca::SasKey::from_base64(g["attestation"]["symmetric_key"]["primary_key"].as_str().unwrap())
            .unwrap();
    let derived = ca::sas::derive_device_key(&group_key, "node-mqtt-1").to_base64().to_string();
    let (ok, out, err) = node(&dir, &app, &["symkey", ip, &scope, "node-mqtt-1", &derived]);
    assert!(ok, "SDK failed: {err} {out}");
    let r: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r["deviceId"], "node-mqtt-1", "{r}");
    assert_eq!(r["status"], "assigned");
    assert_eq!(r["payload"]["source"], "azure-iot-provisioning-device");
    assert_eq!(app.device("node-mqtt-1").await.1["enrollment_group_id"], "node-mqtt");

    let wrong = ca::SasKey::generate().to_base64().to_string();
    let (ok, _, _) = node(&dir, &app, &["symkey", ip, &scope, "node-mqtt-2", &wrong]);
    assert!(!ok, "a wrong key is refused");
    assert_eq!(app.device("node-mqtt-2").await.0, 404);

    let files = tempfile::tempdir().unwrap();
    let (ca_pem, cert, key) = manufacturer_certificate(files.path(), "node-x509-m");
    app.put_group(
        "node-x509",
        json!({"attestation": {"type": "x509_ca", "x509_ca": {"ca_certificates": [ca_pem]}}, "credential": "sas"}),
    )
    .await;
    let (ok, out, err) = node(
        &dir,
        &app,
        &["x509", ip, &scope, "node-x509-m", cert.to_str().unwrap(), key.to_str().unwrap()],
    );
    assert!(ok, "SDK failed: {err} {out}");
    assert!(out.contains("\"deviceId\":\"node-x509-m\""), "{out}");
    assert_eq!(registrations(&metrics(&app).await, "dps_mqtt", "success"), 2);
}

#[tokio::test]
async fn a_snooper_sees_nothing_while_two_devices_provision() {
    if !python_with("azure.iot.device, paho.mqtt") {
        return;
    }
    let Some(app) = spawn_on_8883("127.0.0.43").await else { return };
    let (ip, port) = ("127.0.0.43", "8883");
    let chain = app.chain_path().to_str().unwrap().to_owned();
    let scope = scope(&app);
    let k1 = app.put_individual_sas("iso-1").await;
    let k2 = app.put_individual_sas("iso-2").await;
    // An anonymous client tries to listen to everything.
    let snooper = {
        let chain = chain.clone();
        std::thread::spawn(move || {
            python("mqtt_hostile.py", &["snoop", ip, port, &chain, "6", "#", "$aws/#", "$dps/#"])
        })
    };
    // A device authenticated for DPS tries the same.
    let user = format!("{scope}/registrations/iso-1/api-version=2019-03-31");
    let token = ca::sas::SasToken::build(
        &format!("{scope}/registrations/iso-1"),
        &ca::SasKey::from_base64(&k1).unwrap(),
        crate::helpers::now() + 600,
        Some("registration"),
    );
    let inside = {
        let (chain, user, token) = (chain.clone(), user.clone(), token.clone());
        std::thread::spawn(move || {
            python(
                "mqtt_hostile.py",
                &["dps_foreign", ip, port, &chain, "iso-1", &user, &token, "subscribe", "#"],
            )
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let devices: Vec<_> = [("iso-1", k1), ("iso-2", k2)]
        .into_iter()
        .map(|(id, k)| {
            let (chain, scope) = (chain.clone(), scope.clone());
            std::thread::spawn(move || {
                python("azure_dps.py", &["symkey", ip, &scope, id, &k, &chain])
            })
        })
        .collect();
    for d in devices {
        let (ok, out, err) = d.join().unwrap();
        assert!(ok, "{err} {out}");
        assert!(out.contains("\"assigned\""), "{out}");
    }
    let (_, out, err) = snooper.join().unwrap();
    let s: Value = serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("{out} {err}"));
    assert_eq!(s["rc"], 5, "an anonymous client is not authorized: {s}");
    assert_eq!(s["messages"], json!([]), "{s}");
    let (_, out, err) = inside.join().unwrap();
    let s: Value = serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("{out} {err}"));
    assert_eq!(s["rc"], 0, "{s}");
    assert_eq!(s["suback"], json!([]), "no SUBACK for a foreign filter: {s}");
    assert_eq!(s["disconnected"], true, "{s}");
    assert_eq!(s["messages"], json!([]), "{s}");
}

/// A connection attests again on every request (like the HTTPS door): an enrollment deleted
/// after CONNECT refuses the next register on the open connection — closed, nothing stored —
/// instead of serving the enrollment as it was at CONNECT (attacker review, H2).
#[tokio::test]
async fn an_enrollment_deleted_after_connect_is_refused_on_the_open_connection() {
    if !python_with("paho.mqtt") {
        return;
    }
    let app = crate::helpers::spawn_app().await;
    let port = app.mqtt_port();
    let chain = app.chain_path().to_str().unwrap().to_owned();
    let scope = scope(&app);
    let key = app.put_individual_sas("late-1").await;
    let user = format!("{scope}/registrations/late-1/api-version=2019-03-31");
    let token = ca::sas::SasToken::build(
        &format!("{scope}/registrations/late-1"),
        &ca::SasKey::from_base64(&key).unwrap(),
        crate::helpers::now() + 600,
        Some("registration"),
    );
    let device = std::thread::spawn(move || {
        python(
            "mqtt_hostile.py",
            &["dps_later", "127.0.0.1", &port, &chain, "late-1", &user, &token, "4"],
        )
    });
    // Connected and subscribed well within the 4 s; then the enrollment goes.
    tokio::time::sleep(std::time::Duration::from_millis(2_000)).await;
    let r = app
        .client
        .delete(app.url("/v1/enrollments/late-1"))
        .header("Authorization", app.owner_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_, out, err) = device.join().unwrap();
    let s: Value = serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("{out} {err}"));
    assert_eq!(s["rc"], 0, "the credential was valid at CONNECT: {s}");
    assert_eq!(s["suback"], json!([[1]]), "and subscribed: {s}");
    assert_eq!(s["messages"], json!([]), "no answer for a withdrawn enrollment: {s}");
    assert_eq!(s["disconnected"], true, "{s}");
    assert_eq!(app.device("late-1").await.0, 404, "nothing stored");
}

fn connect_packet(client_id: &str, login: Option<(&str, &str)>, keep_alive: u16) -> String {
    let mut c = mqttbytes::v4::Connect::new(client_id);
    c.keep_alive = keep_alive;
    if let Some((u, p)) = login {
        c.set_login(u, p);
    }
    let mut buf = bytes::BytesMut::new();
    c.write(&mut buf).unwrap();
    hex::encode(&buf)
}

fn raw(app: &TestApp, hex_bytes: &str) -> Value {
    let chain = app.chain_path();
    let (ok, out, err) = python(
        "mqtt_hostile.py",
        &["raw", "127.0.0.1", &app.mqtt_port(), chain.to_str().unwrap(), hex_bytes],
    );
    assert!(ok, "{err}");
    serde_json::from_str(out.trim()).unwrap()
}

#[tokio::test]
async fn bad_packets_oversize_wrong_protocol_and_foreign_topics_disconnect_and_store_nothing() {
    if !python_with("paho.mqtt") {
        return;
    }
    let app = spawn_app().await;
    let scope = scope(&app);
    let key = app.put_individual_sas("hostile-1").await;
    let user = format!("{scope}/registrations/hostile-1/api-version=2019-03-31");
    let token = ca::sas::SasToken::build(
        &format!("{scope}/registrations/hostile-1"),
        &ca::SasKey::from_base64(&key).unwrap(),
        crate::helpers::now() + 600,
        None,
    );
    let good = connect_packet("hostile-1", Some((&user, &token)), 30);

    // Garbage before CONNECT: closed, no answer.
    let r = raw(&app, "ffffffffffff");
    assert_eq!((r["reply"].as_str(), r["closed"].as_bool()), (Some(""), Some(true)), "{r}");
    // MQTT 5 (protocol level 5): CONNACK 0x01, closed.
    let mut v5 = hex::decode(connect_packet("hostile-1", Some((&user, &token)), 30)).unwrap();
    let level = v5.windows(4).position(|w| w == b"MQTT").unwrap() + 4;
    v5[level] = 5;
    let r = raw(&app, &hex::encode(v5));
    assert_eq!(r["reply"], "20020001", "{r}");
    assert_eq!(r["closed"], true);
    // Oversize packet after a good CONNECT: CONNACK 0, then closed.
    let big = format!("{good}30ffff07");
    let r = raw(&app, &big);
    assert_eq!(r["reply"], "20020000", "{r}");
    assert_eq!(r["closed"], true);
    // Client id ≠ registration id: CONNACK 0x02.
    let r = raw(&app, &connect_packet("someone-else", Some((&user, &token)), 30));
    assert_eq!(r["reply"], "20020002", "{r}");
    // Wrong credential: CONNACK 0x05.
    let r = raw(
        &app,
        &connect_packet("hostile-1", Some((&user, "SharedAccessSignature sr=x&sig=y&se=1")), 30),
    );
    assert_eq!(r["reply"], "20020005", "{r}");
    // Publish to a foreign topic: closed, nothing answered, nothing stored.
    let mut pkt = bytes::BytesMut::new();
    let mut p = mqttbytes::v4::Publish::new(
        "$aws/certificates/create/json",
        mqttbytes::QoS::AtLeastOnce,
        "{}",
    );
    p.pkid = 1;
    p.write(&mut pkt).unwrap();
    let r = raw(&app, &format!("{good}{}", hex::encode(&pkt)));
    assert_eq!(r["reply"], "20020000", "no PUBACK: {r}");
    assert_eq!(r["closed"], true);
    // Subscribe to another device's responses via a wildcard: closed, no SUBACK.
    let mut sub = bytes::BytesMut::new();
    let mut s = mqttbytes::v4::Subscribe::new("$dps/#", mqttbytes::QoS::AtLeastOnce);
    s.pkid = 1;
    s.write(&mut sub).unwrap();
    let r = raw(&app, &format!("{good}{}", hex::encode(&sub)));
    assert_eq!(r["reply"], "20020000", "no SUBACK: {r}");
    assert_eq!(r["closed"], true);
    // QoS 2 publish on the register topic: closed, nothing stored.
    let mut q2 = bytes::BytesMut::new();
    let mut p = mqttbytes::v4::Publish::new(
        "$dps/registrations/PUT/iotdps-register/?$rid=1",
        mqttbytes::QoS::ExactlyOnce,
        "{}",
    );
    p.pkid = 1;
    p.write(&mut q2).unwrap();
    let r = raw(&app, &format!("{good}{}", hex::encode(&q2)));
    assert_eq!(r["reply"], "20020000", "{r}");
    assert_eq!(r["closed"], true);
    assert_eq!(app.device("hostile-1").await.0, 404, "nothing stored");

    // The same connection registering properly gets its answer on its response topic.
    let mut ok = bytes::BytesMut::new();
    let mut s =
        mqttbytes::v4::Subscribe::new("$dps/registrations/res/#", mqttbytes::QoS::AtLeastOnce);
    s.pkid = 1;
    s.write(&mut ok).unwrap();
    let mut reg = mqttbytes::v4::Publish::new(
        "$dps/registrations/PUT/iotdps-register/?$rid=9",
        mqttbytes::QoS::AtLeastOnce,
        " ",
    );
    reg.pkid = 2;
    reg.write(&mut ok).unwrap();
    let r = raw(&app, &format!("{good}{}", hex::encode(&ok)));
    let reply = hex::decode(r["reply"].as_str().unwrap()).unwrap();
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("$dps/registrations/res/200/?$rid=9"), "{text}");
    assert!(text.contains("\"status\":\"assigned\""), "{text}");
    assert_eq!(app.device("hostile-1").await.0, 200);
    assert!(app.logs().lines().all(|l| !l.contains("panicked")), "no panic");
}

#[tokio::test]
async fn silent_connections_are_closed_without_and_after_connect() {
    if !python_with("paho.mqtt") {
        return;
    }
    let app = spawn_app().await;
    let scope = scope(&app);
    let key = app.put_individual_sas("quiet-1").await;
    // No CONNECT within 10 s.
    let t = std::time::Instant::now();
    let chain = app.chain_path();
    let out = Command::new("python3")
        .args(["-c", "import socket,ssl,sys\nctx=ssl.create_default_context(cafile=sys.argv[3]);ctx.check_hostname=False\ns=ctx.wrap_socket(socket.create_connection((sys.argv[1],int(sys.argv[2]))))\ns.settimeout(30)\ntry:\n  d=s.recv(10)\n  print('closed' if d==b'' else repr(d))\nexcept (ssl.SSLError, ConnectionError) as e:\n  print('closed', e)"])
        .args(["127.0.0.1", &app.mqtt_port(), chain.to_str().unwrap()])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let waited = t.elapsed().as_secs_f64();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("closed"), "closed by the server");
    assert!((9.0..14.0).contains(&waited), "closed after ~10 s, not {waited}");

    // Keep-alive 1 s: closed ~1.5 s after the last packet.
    let user = format!("{scope}/registrations/quiet-1/api-version=2019-03-31");
    let token = ca::sas::SasToken::build(
        &format!("{scope}/registrations/quiet-1"),
        &ca::SasKey::from_base64(&key).unwrap(),
        crate::helpers::now() + 600,
        Some("registration"),
    );
    // The client reads with a 5 s timeout per read: closed = closed within 5 s of the CONNACK.
    let r = raw(&app, &connect_packet("quiet-1", Some((&user, &token)), 1));
    assert_eq!(r["reply"], "20020000");
    assert_eq!(r["closed"], true, "closed before the client's 5 s read timeout");
}

#[tokio::test]
async fn mqtt_listen_defaults_off_and_bind_rules() {
    // Default with `--listen …:0`: port 0 on the same IP (a real port is printed).
    let app = spawn_app().await;
    let addr = app.mqtt.expect("MQTT on by default");
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0);
    drop(app);

    // Empty = off.
    let app = spawn_with(DataDir::init().await, &[("PROVISIOND_MQTT_LISTEN", "")]).await;
    assert!(app.mqtt.is_none());
    drop(app);

    let data = DataDir::init().await;
    let serve = |env: &[(&str, &str)], listen: &str| {
        let mut cmd = command(&data.database_url);
        cmd.args(["serve", "--data-dir"]).arg(data.path()).args(["--listen", listen]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    };
    // Equal to listen → error.
    let out = serve(&[("PROVISIOND_MQTT_LISTEN", "127.0.0.1:0")], "127.0.0.1:0").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mqtt_listen"));
    // Explicit address taken → exit non-zero.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let out = serve(&[("PROVISIOND_MQTT_LISTEN", &busy)], "127.0.0.1:0").output().unwrap();
    assert!(!out.status.success(), "explicit MQTT address in use");
    // Implicit default (listen IP, port 8883) taken → warning, serve runs without MQTT.
    let ip = "127.0.0.44";
    let Ok(_hold) = std::net::TcpListener::bind((ip, 8883)) else { return };
    let free = std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap();
    let listen = free.to_string();
    let mut child = serve(&[], &listen).env_remove("PROVISIOND_MQTT_LISTEN").spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(line.starts_with("listening on https://"), "no MQTT line: {line}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("without MQTT"));
}
