//! AWS IoT fleet provisioning over MQTT (API.md A26, A30): `aws_claim` enrollment groups; a
//! claim certificate gets a held certificate (CreateCertificateFromCsr /
//! CreateKeysAndCertificate) that CRL and OCSP refuse until RegisterThing binds it to the
//! registered device; JSON and CBOR; AWS's own Python SDK; hostile clients.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{assert_problem, spawn_app, TestApp};
use crate::mqtt::{manufacturer_certificate, python_with, script};
use crate::revocation::{openssl, verified_crl};

const TEMPLATE: &str = "fleet-tpl";
const CSR_TOPIC: &str = "$aws/certificates/create-from-csr/json";

fn provision_topic(template: &str, format: &str) -> String {
    format!("$aws/provisioning-templates/{template}/provision/{format}")
}

fn replies(topic: &str) -> Vec<String> {
    vec![format!("{topic}/accepted"), format!("{topic}/rejected")]
}

/// A claim CA and one claim certificate.
pub struct Claim {
    pub _dir: tempfile::TempDir,
    pub ca_pem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn claim(cn: &str) -> Claim {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, cert, key) = manufacturer_certificate(dir.path(), cn);
    Claim { _dir: dir, ca_pem, cert, key }
}

fn group_body(ca_pem: &str, template: &str) -> Value {
    json!({
        "attestation": {"type": "aws_claim", "aws_claim": {
            "ca_certificates": [ca_pem],
            "template_name": template,
            "parameters": {"registration_id": "SerialNumber", "tags": ["Model", "Site"]},
        }},
        "initial_tags": {"fleet": "aws"},
    })
}

/// A device key and a CSR for it (the CN is free: the certificate's is its serial).
pub fn csr() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name.push(rcgen::DnType::CommonName, "whatever-the-device-says");
    (p.serialize_request(&key).unwrap().pem().unwrap(), key.serialize_pem())
}

/// A paho-mqtt client with a claim certificate, driven action by action (`aws_fleet.py session`).
pub struct Device {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    /// CONNACK return code (None: no CONNACK)
    pub rc: Option<i64>,
}

impl Device {
    pub fn connect(app: &TestApp, cert: &Path, key: &Path) -> Device {
        let chain = app.chain_path();
        let mut child = Command::new("python3")
            .arg(script("aws_fleet.py"))
            .args(["session", "127.0.0.1", &app.mqtt_port(), chain.to_str().unwrap()])
            .arg(cert)
            .arg(key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let stdin = child.stdin.take().unwrap();
        let mut d = Device { child, stdin, lines, rc: None };
        d.rc = d.read()["rc"].as_i64();
        d
    }

    fn read(&mut self) -> Value {
        let line = self.lines.recv_timeout(Duration::from_secs(40)).expect("client answered");
        serde_json::from_str(&line).unwrap()
    }

    pub fn call(&mut self, action: Value) -> Value {
        writeln!(self.stdin, "{action}").unwrap();
        self.stdin.flush().unwrap();
        self.read()
    }

    pub fn sub(&mut self, filters: &[String]) -> Value {
        self.call(json!({"op": "sub", "filters": filters}))
    }

    pub fn req(&mut self, topic: &str, format: &str, body: Value) -> Value {
        self.call(json!({"op": "req", "topic": topic, "format": format, "body": body}))
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The leaf and issuer of a PEM chain.
fn leaf_and_issuer(chain_pem: &str) -> (Vec<u8>, Vec<u8>) {
    let certs = ::pem::parse_many(chain_pem).unwrap();
    (certs[0].contents().to_vec(), certs[1].contents().to_vec())
}

/// `openssl ocsp` against the server for a PEM chain (leaf, issuer): its text output.
fn ocsp(app: &TestApp, chain_pem: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let certs = ::pem::parse_many(chain_pem).unwrap();
    let leaf = dir.path().join("leaf.pem");
    let issuer = dir.path().join("issuer.pem");
    std::fs::write(&leaf, ::pem::encode(&certs[0])).unwrap();
    std::fs::write(&issuer, ::pem::encode(&certs[1])).unwrap();
    let chain = app.chain_path();
    let (ok, out) = openssl(&[
        "ocsp",
        "-issuer",
        issuer.to_str().unwrap(),
        "-cert",
        leaf.to_str().unwrap(),
        "-url",
        &app.url("/v1/ca/ocsp"),
        "-CAfile",
        chain.to_str().unwrap(),
        "-resp_text",
    ]);
    assert!(ok && out.contains("Response verify OK"), "{out}");
    out
}

async fn crl_text(app: &TestApp) -> String {
    let dir = tempfile::tempdir().unwrap();
    verified_crl(app, dir.path()).await
}

fn registrations(metrics: &str, door: &str, outcome: &str) -> u64 {
    let needle =
        format!("provisiond_registrations_total{{door=\"{door}\",outcome=\"{outcome}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&needle)).map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn aws_claim_groups_are_validated_strictly_and_round_trip() {
    let app = spawn_app().await;
    let c = claim("claim-1");
    let body = group_body(&c.ca_pem, TEMPLATE);
    let created = app.put_group("fleet", body.clone()).await;
    assert_eq!(created["attestation"]["type"], "aws_claim");
    assert_eq!(created["attestation"]["aws_claim"], body["attestation"]["aws_claim"]);
    assert_eq!(created["credential"], "x509");
    // A claim certificate is the whole fleet's: it never re-registers an id (attacker review,
    // H1: any device could otherwise take over any other). deny is the default and the only
    // value accepted.
    assert_eq!(created["reprovisioning"], "deny");
    let got: Value = app.get_fresh("/v1/enrollment-groups/fleet").await.json().await.unwrap();
    assert_eq!(got["attestation"]["aws_claim"], body["attestation"]["aws_claim"]);
    let again = app.put_group("fleet", got.clone()).await;
    assert_eq!(again["attestation"], got["attestation"]);

    let put = |body: Value, path: &'static str| {
        let app = &app;
        async move {
            app.client
                .put(app.url(path))
                .header("Authorization", app.owner_token())
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let leaf_pem = std::fs::read_to_string(&c.cert).unwrap();
    let mut cases: Vec<(&str, Value)> = Vec::new();
    for (why, template) in [
        ("slash in template", "a/b"),
        ("wildcard in template", "a+b"),
        ("hash in template", "#"),
        ("empty template", ""),
        ("template over 36", "0123456789012345678901234567890123456"),
    ] {
        cases.push((why, group_body(&c.ca_pem, template)));
    }
    let mut b = group_body(&c.ca_pem, TEMPLATE);
    b["attestation"]["aws_claim"]["ca_certificates"] = json!([]);
    cases.push(("no CA", b));
    let mut b = group_body(&c.ca_pem, TEMPLATE);
    b["attestation"]["aws_claim"]["ca_certificates"] = json!([leaf_pem]);
    cases.push(("a leaf is not a CA", b));
    let mut b = group_body(&c.ca_pem, TEMPLATE);
    b["attestation"]["aws_claim"]["ca_certificates"] = json!(["garbage"]);
    cases.push(("not PEM", b));
    let mut b = group_body(&c.ca_pem, TEMPLATE);
    b["attestation"]["aws_claim"]["extra"] = json!(1);
    cases.push(("unknown member", b));
    let mut b = group_body(&c.ca_pem, TEMPLATE);
    b["attestation"]["aws_claim"]["parameters"]["extra"] = json!(1);
    cases.push(("unknown parameters member", b));
    let mut b = group_body(&c.ca_pem, TEMPLATE);
    b["attestation"]["aws_claim"]["parameters"]["registration_id"] = json!("");
    cases.push(("empty parameter name", b));
    let mut b = group_body(&c.ca_pem, TEMPLATE);
    b["attestation"]["aws_claim"]["parameters"]["tags"] = json!(["Model", "Model"]);
    cases.push(("repeated tag parameter", b));
    let mut b = group_body(&c.ca_pem, TEMPLATE);
    b["credential"] = json!("sas");
    cases.push(("sas credential", b));
    for policy in ["reissue", "keep"] {
        let mut b = group_body(&c.ca_pem, TEMPLATE);
        b["reprovisioning"] = json!(policy);
        cases.push(("reprovisioning other than deny", b));
    }
    cases.push(("missing aws_claim", json!({"attestation": {"type": "aws_claim"}})));
    let mut b =
        json!({"attestation": {"type": "x509_ca", "x509_ca": {"ca_certificates": [c.ca_pem]}}});
    b["attestation"]["aws_claim"] =
        group_body(&c.ca_pem, TEMPLATE)["attestation"]["aws_claim"].clone();
    cases.push(("aws_claim on another type", b));
    for (why, body) in cases {
        let r = put(body, "/v1/enrollment-groups/bad").await;
        assert_eq!(r.status(), 400, "{why}: {}", r.text().await.unwrap());
    }
    // Individual enrollments have no parameters to take an id from.
    let r = put(group_body(&c.ca_pem, TEMPLATE), "/v1/enrollments/dev-1").await;
    assert_problem(r, 400).await;
    assert_eq!(app.get_fresh("/v1/enrollment-groups/bad").await.status(), 404);
}

#[tokio::test]
async fn a_claim_device_provisions_over_json_and_cbor_and_its_certificate_is_held_until_then() {
    if !python_with("paho.mqtt, cbor2") {
        return;
    }
    let app = spawn_app().await;
    let c = claim("claim-json");
    app.put_group("fleet", group_body(&c.ca_pem, TEMPLATE)).await;
    let mut d = Device::connect(&app, &c.cert, &c.key);
    assert_eq!(d.rc, Some(0), "the claim certificate is accepted");
    let mut filters = replies(CSR_TOPIC);
    filters.extend(replies(&provision_topic(TEMPLATE, "json")));
    assert_eq!(d.sub(&filters)["granted"], json!([1, 1, 1, 1]));

    // CreateCertificateFromCsr.
    let (csr, _key) = csr();
    let r = d.req(CSR_TOPIC, "json", json!({"certificateSigningRequest": csr}));
    assert_eq!(r["topic"], format!("{CSR_TOPIC}/accepted"), "{r}");
    let created = &r["body"];
    assert!(created.get("privateKey").is_none(), "{created}");
    let chain_pem = created["certificatePem"].as_str().unwrap();
    let token = created["certificateOwnershipToken"].as_str().unwrap().to_owned();
    assert!(token.len() >= 43, "256-bit token");
    let (leaf, issuer) = leaf_and_issuer(chain_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let serial = cert.raw_serial_as_string().replace(':', "");
    assert_eq!(created["certificateId"], serial);
    let cn = cert.subject().iter_common_name().next().unwrap().as_str().unwrap();
    assert_eq!(cn, serial, "CN = serial");
    assert!(cert.subject_alternative_name().unwrap().is_none(), "no SAN URI");
    assert!(cert.extended_key_usage().unwrap().unwrap().value.client_auth);
    let served_chain = std::fs::read_to_string(app.chain_path()).unwrap();
    let active = ::pem::parse_many(&served_chain).unwrap()[0].contents().to_vec();
    assert_eq!(issuer, active, "issued by the active intermediate");

    // Held: OCSP and CRL say certificateHold, the certificate has no device, no device exists.
    let out = ocsp(&app, chain_pem);
    assert!(out.contains("leaf.pem: revoked") && out.contains("certificateHold"), "{out}");
    let crl = crl_text(&app).await;
    assert!(crl.contains(&serial.to_uppercase()) && crl.contains("Certificate Hold"), "{crl}");
    let listed: Value =
        app.get_fresh(&format!("/v1/certificates/{serial}")).await.json().await.unwrap();
    assert_eq!(listed["status"], "revoked", "{listed}");
    assert_eq!(listed["device_id"], Value::Null);
    assert_eq!(app.device("sn-1").await.0, 404);

    // RegisterThing.
    let provision = provision_topic(TEMPLATE, "json");
    let params = json!({"SerialNumber": "sn-1", "Model": "m1", "Unmapped": "x"});
    let r = d.req(
        &provision,
        "json",
        json!({"certificateOwnershipToken": token, "parameters": params}),
    );
    assert_eq!(r["topic"], format!("{provision}/accepted"), "{r}");
    assert_eq!(r["body"], json!({"thingName": "sn-1", "deviceConfiguration": {}}));
    let (status, device) = app.device("sn-1").await;
    assert_eq!(status, 200);
    assert_eq!(device["enrollment_group_id"], "fleet");
    assert_eq!(device["owner"]["kind"], "enrollment_group");
    assert_eq!(device["authentication"]["type"], "x509_ca");
    assert_eq!(device["tags"], json!({"fleet": "aws", "Model": "m1"}), "mapped tags only");
    let out = ocsp(&app, chain_pem);
    assert!(out.contains("leaf.pem: good"), "{out}");
    assert!(!crl_text(&app).await.contains(&serial.to_uppercase()), "hold lifted");
    let certs: Value = app.get_fresh("/v1/certificates?device_id=sn-1").await.json().await.unwrap();
    assert_eq!(certs["items"][0]["serial"], serial, "{certs}");
    assert_eq!(certs["items"][0]["status"], "valid");

    // The token worked once.
    let r = d.req(
        &provision,
        "json",
        json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "sn-9"}}),
    );
    assert_eq!(r["topic"], format!("{provision}/rejected"), "{r}");
    assert_eq!(r["body"]["errorCode"], "InvalidCertificateOwnershipToken");
    assert_eq!(r["body"]["statusCode"], 400);
    assert_eq!(app.device("sn-9").await.0, 404);

    // CBOR: CreateKeysAndCertificate, then RegisterThing.
    let keys_cbor = "$aws/certificates/create/cbor";
    let provision_cbor = provision_topic(TEMPLATE, "cbor");
    let mut filters = replies(keys_cbor);
    filters.extend(replies(&provision_cbor));
    assert_eq!(d.sub(&filters)["granted"], json!([1, 1, 1, 1]));
    let r = d.req(keys_cbor, "cbor", json!({}));
    assert_eq!(r["topic"], format!("{keys_cbor}/accepted"), "{r}");
    let key_pem = r["body"]["privateKey"].as_str().unwrap();
    assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
    let pair = rcgen::KeyPair::from_pem(key_pem).unwrap();
    let (leaf, _) = leaf_and_issuer(r["body"]["certificatePem"].as_str().unwrap());
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    assert_eq!(cert.public_key().subject_public_key.data.as_ref(), pair.public_key_raw());
    let token = r["body"]["certificateOwnershipToken"].as_str().unwrap();
    let r = d.req(
        &provision_cbor,
        "cbor",
        json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "sn-2", "Site": "s"}}),
    );
    assert_eq!(r["topic"], format!("{provision_cbor}/accepted"), "{r}");
    assert_eq!(r["body"], json!({"thingName": "sn-2", "deviceConfiguration": {}}));
    assert_eq!(app.device("sn-2").await.1["tags"]["Site"], "s");
    // A CBOR body that is not CBOR is InvalidPayload, in CBOR.
    let r = d
        .call(json!({"op": "req", "topic": provision_cbor, "format": "cbor", "body": "not a map"}));
    assert_eq!(r["body"]["errorCode"], "InvalidPayload", "{r}");

    let m = app.get_fresh("/metrics").await.text().await.unwrap();
    assert_eq!(registrations(&m, "aws", "success"), 2, "{m}");
    assert_eq!(registrations(&m, "aws", "failure"), 2, "{m}");
    assert!(m.contains("provisiond_mqtt_connects_total{personality=\"aws\",result=\"accepted\"} 1"));
    assert!(!m.contains("sn-"), "no ids in metrics");
    let audit: Value = app.get_fresh("/v1/audit?limit=1000").await.json().await.unwrap();
    let rows = audit["items"].as_array().unwrap();
    let has = |action: &str, target: &str| {
        rows.iter()
            .any(|r| r["action"] == action && r["target"] == target && r["outcome"] == "success")
    };
    assert!(has("certificate.hold", &serial), "{audit}");
    assert!(has("registration.create", "sn-1"), "{audit}");
    assert!(!audit.to_string().contains(token), "no token in the audit");
    assert!(!app.logs().contains(token), "no token in the logs");
}

/// A process whose stdout is read line by line (with a timeout) and whose stdin is written.
struct Interactive {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    stderr: PathBuf,
}

impl Interactive {
    fn spawn(mut cmd: Command, stderr: PathBuf) -> Interactive {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let stdin = child.stdin.take().unwrap();
        Interactive { child, stdin, lines, stderr }
    }

    fn line(&mut self) -> Value {
        match self.lines.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => serde_json::from_str(&l).unwrap(),
            Err(_) => panic!("no answer: {}", std::fs::read_to_string(&self.stderr).unwrap()),
        }
    }

    fn go_on(&mut self) {
        writeln!(self.stdin).unwrap();
        self.stdin.flush().unwrap();
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_aws_iot_device_sdk_provisions_from_a_csr_and_with_server_made_keys() {
    if !python_with("awsiot.iotidentity, awscrt") {
        return;
    }
    let app = spawn_app().await;
    let c = claim("claim-sdk");
    app.put_group("fleet", group_body(&c.ca_pem, TEMPLATE)).await;
    for (mode, serial) in [("csr", "sdk-csr-1"), ("keys", "sdk-keys-1")] {
        let out = tempfile::tempdir().unwrap();
        let (csr, key) = csr();
        std::fs::write(out.path().join("csr.pem"), csr).unwrap();
        if mode == "csr" {
            std::fs::write(out.path().join("device.key"), key).unwrap();
        }
        let mut cmd = Command::new("python3");
        cmd.arg(script("aws_fleet.py")).args([
            "sdk",
            "127.0.0.1",
            &app.mqtt_port(),
            app.chain_path().to_str().unwrap(),
            c.cert.to_str().unwrap(),
            c.key.to_str().unwrap(),
            TEMPLATE,
            mode,
            serial,
            out.path().to_str().unwrap(),
            out.path().join("csr.pem").to_str().unwrap(),
        ]);
        let mut sdk = Interactive::spawn(cmd, out.path().join("sdk.log"));
        let created = sdk.line();
        let chain_pem = std::fs::read_to_string(out.path().join("device.pem")).unwrap();
        let serial_hex = crate::helpers::leaf_serial(&chain_pem);
        assert_eq!(created["certificateId"], serial_hex, "{mode}");
        // Held until RegisterThing: OCSP, CRL, no device.
        let ocsp_out = ocsp(&app, &chain_pem);
        assert!(ocsp_out.contains("revoked") && ocsp_out.contains("certificateHold"), "{ocsp_out}");
        assert!(crl_text(&app).await.contains(&serial_hex.to_uppercase()));
        assert_eq!(app.device(serial).await.0, 404);
        sdk.go_on();
        let thing = sdk.line();
        assert_eq!(thing["thingName"], serial, "{mode}: {thing}");
        assert_eq!(thing["deviceConfiguration"], json!({}));
        let (status, device) = app.device(serial).await;
        assert_eq!(status, 200, "{mode}");
        assert_eq!(device["enrollment_group_id"], "fleet");
        let ocsp_out = ocsp(&app, &chain_pem);
        assert!(ocsp_out.contains("leaf.pem: good"), "{mode}: {ocsp_out}");
        assert!(!crl_text(&app).await.contains(&serial_hex.to_uppercase()));
        if mode == "keys" {
            let key = std::fs::read_to_string(out.path().join("device.key")).unwrap();
            assert!(key.contains("PRIVATE KEY"), "the SDK received the private key");
        }
    }
    let m = app.get_fresh("/metrics").await.text().await.unwrap();
    assert_eq!(registrations(&m, "aws", "success"), 2, "{m}");
}

fn mosquitto_installed() -> bool {
    let ok = Command::new("mosquitto").arg("-h").output().is_ok();
    if !ok {
        assert_ne!(
            std::env::var("PROVISIOND_REQUIRE_INTEROP").as_deref(),
            Ok("1"),
            "mosquitto required"
        );
        eprintln!("SKIPPED: mosquitto not installed");
    }
    ok
}

#[tokio::test]
async fn mosquitto_refuses_a_held_certificate_and_accepts_it_once_registered() {
    if !mosquitto_installed() || !python_with("paho.mqtt, cbor2") {
        return;
    }
    let app = spawn_app().await;
    let c = claim("claim-broker");
    app.put_group("fleet", group_body(&c.ca_pem, TEMPLATE)).await;
    let mut d = Device::connect(&app, &c.cert, &c.key);
    let keys = "$aws/certificates/create/json";
    let provision = provision_topic(TEMPLATE, "json");
    let mut filters = replies(keys);
    filters.extend(replies(&provision));
    d.sub(&filters);
    let r = d.req(keys, "json", json!({}));
    assert_eq!(r["topic"], format!("{keys}/accepted"), "{r}");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("thing.pem"), r["body"]["certificatePem"].as_str().unwrap()).unwrap();
    std::fs::write(dir.join("thing.key"), r["body"]["privateKey"].as_str().unwrap()).unwrap();
    crate::mosquitto::broker_certificate(&app, dir).await;
    let port = crate::mosquitto::free_port();

    let broker = crate::mosquitto::Broker::start(&app, dir, port).await;
    assert!(!broker.publish("thing"), "a held certificate is refused by the broker's CRL");
    drop(broker);

    let token = r["body"]["certificateOwnershipToken"].as_str().unwrap();
    let r = d.req(
        &provision,
        "json",
        json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "thing-1"}}),
    );
    assert_eq!(r["body"]["thingName"], "thing-1", "{r}");
    let broker = crate::mosquitto::Broker::start(&app, dir, port).await;
    assert!(broker.publish("thing"), "registered: the broker accepts it with the new CRL");
}

#[tokio::test]
async fn ownership_tokens_work_once_for_their_connection_group_and_held_certificate_only() {
    if !python_with("paho.mqtt, cbor2") {
        return;
    }
    let app = spawn_app().await;
    let ca = claim("claim-a");
    let cb = claim("claim-b");
    app.put_group("fleet", group_body(&ca.ca_pem, TEMPLATE)).await;
    app.put_group("other", group_body(&cb.ca_pem, "other-tpl")).await;
    let provision = provision_topic(TEMPLATE, "json");
    let other = provision_topic("other-tpl", "json");
    let mut a = Device::connect(&app, &ca.cert, &ca.key);
    let mut a2 = Device::connect(&app, &ca.cert, &ca.key);
    let mut b = Device::connect(&app, &cb.cert, &cb.key);
    for d in [&mut a, &mut a2] {
        let mut f = replies(CSR_TOPIC);
        f.extend(replies(&provision));
        assert_eq!(d.sub(&f)["granted"], json!([1, 1, 1, 1]));
    }
    assert_eq!(b.sub(&replies(&other))["granted"], json!([1, 1]));
    let create = |d: &mut Device| {
        let r = d.req(CSR_TOPIC, "json", json!({"certificateSigningRequest": csr().0}));
        assert_eq!(r["topic"], format!("{CSR_TOPIC}/accepted"), "{r}");
        (
            r["body"]["certificateOwnershipToken"].as_str().unwrap().to_owned(),
            r["body"]["certificateId"].as_str().unwrap().to_owned(),
            r["body"]["certificatePem"].as_str().unwrap().to_owned(),
        )
    };
    let register = |d: &mut Device, topic: &str, token: &str, id: &str| {
        d.req(
            topic,
            "json",
            json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": id}}),
        )
    };
    let (t1, s1, _) = create(&mut a);

    // Another connection of the same group, and another group: the token is not theirs.
    let r = register(&mut a2, &provision, &t1, "tok-1");
    assert_eq!(r["body"]["errorCode"], "InvalidCertificateOwnershipToken", "{r}");
    let r = register(&mut b, &other, &t1, "tok-1");
    assert_eq!(r["body"]["errorCode"], "InvalidCertificateOwnershipToken", "{r}");
    assert_eq!(app.device("tok-1").await.0, 404);
    // A device another owner holds: 409 through the registration core, nothing spent.
    let r = app
        .client
        .put(app.url("/v1/devices/admin-dev"))
        .header("Authorization", app.owner_token())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = register(&mut a, &provision, &t1, "admin-dev");
    assert_eq!(r["topic"], format!("{provision}/rejected"), "{r}");
    assert_eq!(r["body"]["statusCode"], 409, "{r}");
    assert_eq!(r["body"]["errorCode"], "Conflict");
    assert_eq!(app.device("admin-dev").await.1["owner"]["kind"], "admin");
    // An id outside the group's pattern, a missing parameter, a malformed body: 400.
    let r = a.req(&provision, "json", json!({"certificateOwnershipToken": t1}));
    assert_eq!(r["body"]["errorCode"], "InvalidPayload", "{r}");
    let r = a.req(&provision, "json", json!({"certificateOwnershipToken": 7}));
    assert_eq!(r["body"]["errorCode"], "InvalidPayload", "{r}");
    let r = register(&mut a, &provision, &t1, "no/slash");
    assert_eq!(r["body"]["statusCode"], 400, "{r}");
    // The token is still good on its own connection.
    let r = register(&mut a, &provision, &t1, "tok-1");
    assert_eq!(r["body"]["thingName"], "tok-1", "{r}");
    let listed: Value =
        app.get_fresh(&format!("/v1/certificates/{s1}")).await.json().await.unwrap();
    assert_eq!(listed["device_id"], "tok-1");
    // Spent.
    let r = register(&mut a, &provision, &t1, "tok-2");
    assert_eq!(r["body"]["errorCode"], "InvalidCertificateOwnershipToken", "{r}");

    // Expired: refused; the sweep turns the hold into cessationOfOperation.
    let (t2, s2, chain2) = create(&mut a);
    let store = crate::helpers::store(&app.data).await;
    let mut conn = store.conn().await.unwrap();
    sqlx::query("UPDATE aws_ownership_tokens SET expires_at = $1 WHERE serial = $2")
        .bind(crate::helpers::now() - 1)
        .bind(&s2)
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let r = register(&mut a, &provision, &t2, "tok-3");
    assert_eq!(r["body"]["errorCode"], "InvalidCertificateOwnershipToken", "{r}");
    let mut swept = String::new();
    for _ in 0..40 {
        swept = ocsp(&app, &chain2);
        if swept.contains("cessationOfOperation") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(swept.contains("revoked") && swept.contains("cessationOfOperation"), "{swept}");
    assert_eq!(app.device("tok-3").await.0, 404);

    // A held certificate an administrator revokes can no longer be bound.
    let (t3, s3, _) = create(&mut a);
    let r = app
        .post_json(
            &format!("/v1/certificates/{s3}/revoke"),
            &app.owner_token(),
            json!({"reason": "key_compromise"}),
        )
        .await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "key_compromise", "the hold is replaced: {body}");
    let r = register(&mut a, &provision, &t3, "tok-4");
    assert_eq!(r["body"]["statusCode"], 409, "{r}");
    assert_eq!(app.device("tok-4").await.0, 404);

    // A disabled group creates nothing.
    let mut disabled = group_body(&ca.ca_pem, TEMPLATE);
    disabled["provisioning_status"] = json!("disabled");
    app.put_group("fleet", disabled).await;
    let r = a.req(CSR_TOPIC, "json", json!({"certificateSigningRequest": csr().0}));
    assert_eq!(r["topic"], format!("{CSR_TOPIC}/rejected"), "{r}");
    assert_eq!(r["body"]["statusCode"], 403, "{r}");
    // Replies went only to the connection that asked.
    assert!(a2.call(json!({"op": "messages"}))["topics"].as_array().unwrap().len() == 1);
    assert!(b.call(json!({"op": "messages"}))["topics"].as_array().unwrap().len() == 1);
    assert!(app.logs().lines().all(|l| !l.contains("panicked")), "no panic");
}

#[tokio::test]
async fn claim_connections_use_only_their_topics_and_never_see_another_device() {
    if !python_with("paho.mqtt, cbor2") {
        return;
    }
    let app = spawn_app().await;
    let c = claim("claim-topics");
    app.put_group("fleet", group_body(&c.ca_pem, TEMPLATE)).await;
    let connect = || {
        let d = Device::connect(&app, &c.cert, &c.key);
        assert_eq!(d.rc, Some(0));
        d
    };
    for filter in ["$aws/#", "#", "$aws/certificates/create/json/+", "$dps/registrations/res/#"] {
        let mut d = connect();
        assert_eq!(d.sub(&[filter.to_owned()]), json!({"disconnected": true}), "{filter}");
    }
    let mut d = connect();
    let r = d.sub(&[format!("{}/accepted", provision_topic("other", "json"))]);
    assert_eq!(r, json!({"disconnected": true}), "another template's replies");
    for topic in [
        provision_topic("other", "json"),
        "$dps/registrations/PUT/iotdps-register/?$rid=1".to_owned(),
        "$aws/things/thing-1/shadow/update".to_owned(),
        "telemetry".to_owned(),
    ] {
        let mut d = connect();
        let r = d.call(json!({"op": "pub", "topic": topic, "payload": "{}"}));
        assert_eq!(r["disconnected"], true, "{topic}");
    }

    // A claim certificate of no group's CA: 0x05, audited, counted.
    let stranger = claim("claim-stranger");
    let d = Device::connect(&app, &stranger.cert, &stranger.key);
    assert_eq!(d.rc, Some(5));

    // Two devices provisioning at once each get their own answers only.
    let mut a = connect();
    let mut b = connect();
    for d in [&mut a, &mut b] {
        let mut f = replies(CSR_TOPIC);
        f.extend(replies(&provision_topic(TEMPLATE, "json")));
        d.sub(&f);
    }
    let run = |mut d: Device, id: &'static str| {
        std::thread::spawn(move || {
            let r = d.req(CSR_TOPIC, "json", json!({"certificateSigningRequest": csr().0}));
            let token = r["body"]["certificateOwnershipToken"].as_str().unwrap().to_owned();
            let reg = d.req(
                &provision_topic(TEMPLATE, "json"),
                "json",
                json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": id}}),
            );
            std::thread::sleep(Duration::from_millis(500));
            let seen = d.call(json!({"op": "messages"}));
            (token, reg, seen)
        })
    };
    let (ja, jb) = (run(a, "iso-a"), run(b, "iso-b"));
    let (ta, ra, seen_a) = ja.join().unwrap();
    let (tb, rb, seen_b) = jb.join().unwrap();
    assert_ne!(ta, tb);
    assert_eq!(ra["body"]["thingName"], "iso-a", "{ra}");
    assert_eq!(rb["body"]["thingName"], "iso-b", "{rb}");
    assert_eq!(seen_a["topics"].as_array().unwrap().len(), 2, "{seen_a}");
    assert_eq!(seen_b["topics"].as_array().unwrap().len(), 2, "{seen_b}");

    let m = app.get_fresh("/metrics").await.text().await.unwrap();
    assert!(
        m.contains("provisiond_mqtt_connects_total{personality=\"aws\",result=\"refused\"} 1"),
        "{m}"
    );
    let audit: Value = app.get_fresh("/v1/audit?limit=1000").await.json().await.unwrap();
    let refused = audit["items"].as_array().unwrap().iter().any(|r| {
        r["action"] == "auth.failure" && r["target"].as_str().unwrap().starts_with("mqtt:aws:")
    });
    assert!(refused, "the refused claim certificate is audited: {audit}");
    assert!(app.logs().lines().all(|l| !l.contains("panicked")), "no panic");
}
