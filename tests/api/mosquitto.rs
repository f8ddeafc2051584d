//! A real MQTT broker enforces what provisiond issues and revokes: mosquitto with
//! `require_certificate`, provisiond's chain as `cafile`, a server certificate from
//! `/v1/ca/server-certificates`, and `/v1/ca/crls.pem` as `crlfile`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{leaf_serial, spawn_app, TestApp};

pub struct Broker {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn fetch(app: &TestApp, path: &str) -> String {
    app.client.get(app.url(path)).send().await.unwrap().text().await.unwrap()
}

impl Broker {
    /// (Re)starts mosquitto with the current chain and CRLs from provisiond.
    pub async fn start(app: &TestApp, dir: &Path, port: u16) -> Broker {
        std::fs::write(dir.join("ca.pem"), fetch(app, "/v1/ca/chain").await).unwrap();
        std::fs::write(dir.join("crls.pem"), fetch(app, "/v1/ca/crls.pem").await).unwrap();
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nrequire_certificate true\nuse_identity_as_username true\n\
             cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\ncrlfile {d}/crls.pem\n\
             persistence false\nlog_dest stderr\n",
            d = dir.display()
        );
        std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("broker.log")).unwrap())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Broker { child, port, dir: dir.to_owned() }
    }

    /// Publishes as a device; true when the broker accepted the connection and message.
    pub fn publish(&self, device: &str) -> bool {
        Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-t",
                "telemetry",
                "-m",
                "hello",
                "-q",
                "1",
            ])
            .arg("--cafile")
            .arg(self.dir.join("ca.pem"))
            .arg("--cert")
            .arg(self.dir.join(format!("{device}.pem")))
            .arg("--key")
            .arg(self.dir.join(format!("{device}.key")))
            .output()
            .unwrap()
            .status
            .success()
    }

    /// Subscribes as `sub`, publishes as `publisher`, returns what `sub` received.
    fn round_trip(&self, sub: &str, publisher: &str) -> String {
        let s = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-t",
                "telemetry",
                "-C",
                "1",
                "-W",
                "10",
            ])
            .arg("--cafile")
            .arg(self.dir.join("ca.pem"))
            .arg("--cert")
            .arg(self.dir.join(format!("{sub}.pem")))
            .arg("--key")
            .arg(self.dir.join(format!("{sub}.key")))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert!(self.publish(publisher));
        let out = s.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// The broker's own certificate, from provisiond: `dir/server.pem` and `dir/server.key`.
pub async fn broker_certificate(app: &TestApp, dir: &Path) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name.push(rcgen::DnType::CommonName, "broker");
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    let r: Value = app
        .post_json(
            "/v1/ca/server-certificates",
            &app.owner_token(),
            json!({"csr": csr, "dns_names": ["localhost"], "ip_addresses": ["127.0.0.1"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    std::fs::write(dir.join("server.pem"), r["certificate_chain"].as_str().unwrap()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

async fn device(app: &TestApp, dir: &Path, id: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, id);
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    let r: Value =
        app.enroll("mqtt", json!({"registration_id": id, "csr": csr})).await.json().await.unwrap();
    let chain = r["certificate_chain"].as_str().unwrap();
    std::fs::write(dir.join(format!("{id}.pem")), chain).unwrap();
    std::fs::write(dir.join(format!("{id}.key")), key.serialize_pem()).unwrap();
    leaf_serial(chain)
}

#[tokio::test]
async fn mosquitto_accepts_enrolled_devices_and_refuses_revoked_ones() {
    if Command::new("mosquitto").arg("-h").output().is_err() {
        assert_ne!(
            std::env::var("PROVISIOND_REQUIRE_INTEROP").as_deref(),
            Ok("1"),
            "mosquitto required"
        );
        return;
    }
    let app = spawn_app().await;
    app.put_group("mqtt", json!({})).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    broker_certificate(&app, dir).await;

    let old_serial = device(&app, dir, "sensor-old").await;
    // Rotate: the old device's certificate now comes from a rotated-out intermediate.
    assert!(app
        .post_json("/v1/ca/intermediate/rotate", &app.owner_token(), json!({}))
        .await
        .status()
        .is_success());
    let serial = device(&app, dir, "sensor-1").await;
    let _listener = device(&app, dir, "listener").await;

    let port = free_port();
    let broker = Broker::start(&app, dir, port).await;
    assert_eq!(
        broker.round_trip("listener", "sensor-1"),
        "hello",
        "enrolled device publishes, another subscribes"
    );
    assert!(
        broker.publish("sensor-old"),
        "a certificate of the rotated-out intermediate is still accepted"
    );

    for s in [&serial, &old_serial] {
        let r = app
            .post_json(
                &format!("/v1/certificates/{s}/revoke"),
                &app.owner_token(),
                json!({"reason": "key_compromise"}),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    drop(broker);
    let broker = Broker::start(&app, dir, port).await;
    assert!(!broker.publish("sensor-1"), "revoked device refused after CRL refresh");
    assert!(!broker.publish("sensor-old"), "revoked device of the old intermediate refused");
    assert!(broker.publish("listener"), "others unaffected");
}
