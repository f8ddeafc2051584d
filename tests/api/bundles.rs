use serde_json::{json, Value};

use crate::helpers::{assert_problem, spawn_app, store, TestApp};

impl TestApp {
    async fn bundle(&self, device: &str, credential: &str, format: &str) -> Value {
        let r = self.post_json("/v1/bundles", &self.owner_token(), json!({"device_id": device, "credential": credential, "format": format, "ttl_secs": 600})).await;
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["cache-control"], "no-store");
        r.json().await.unwrap()
    }

    async fn redeem(&self, b: &Value) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/bundles/{}/redeem", b["id"].as_str().unwrap())))
            .header("Authorization", format!("Bundle {}", b["token"].as_str().unwrap()))
            .send()
            .await
            .unwrap()
    }
}

fn sh(cmd: &str) -> (bool, String) {
    let out = std::process::Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[tokio::test]
async fn x509_json_bundle_redeems_once_with_a_matching_key_and_chain() {
    let app = spawn_app().await;
    app.put_device("field-1", json!({})).await;
    let b = app.bundle("field-1", "x509", "json").await;
    let token = b["token"].as_str().unwrap();
    assert!(
        token.len() >= 43
            && token.bytes().all(|c| c.is_ascii_alphanumeric() || b"_.~-".contains(&c)),
        "{token}"
    );
    let status: Value = app
        .get_as(&format!("/v1/bundles/{}", b["id"].as_str().unwrap()), &app.owner_token())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "pending");
    assert!(!status.to_string().contains(token));

    let wrong = app
        .client
        .post(app.url(&format!("/v1/bundles/{}/redeem", b["id"].as_str().unwrap())))
        .header("Authorization", format!("Bundle {}", "A".repeat(43)))
        .send()
        .await
        .unwrap();
    assert_problem(wrong, 401).await;
    let none = app
        .client
        .post(app.url(&format!("/v1/bundles/{}/redeem", b["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_problem(none, 401).await;
    let unknown = app
        .client
        .post(app.url("/v1/bundles/ffff/redeem"))
        .header("Authorization", format!("Bundle {token}"))
        .send()
        .await
        .unwrap();
    assert_problem(unknown, 404).await;

    let r = app.redeem(&b).await;
    assert_eq!(r.status(), 200, "wrong tokens did not consume it");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["device_id"], "field-1");
    assert_eq!(p["credential"], "x509");
    assert!(p["private_key"].as_str().unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(dir.path().join("k.pem"), p["private_key"].as_str().unwrap()).unwrap();
    std::fs::write(dir.path().join("c.pem"), p["certificate"].as_str().unwrap()).unwrap();
    std::fs::write(dir.path().join("chain.pem"), p["certificate_chain"].as_str().unwrap()).unwrap();
    std::fs::write(dir.path().join("ca.pem"), p["ca_chain"].as_str().unwrap()).unwrap();
    let (_, a) = sh(&format!("openssl x509 -in {d}/c.pem -noout -pubkey"));
    let (_, b2) = sh(&format!("openssl pkey -in {d}/k.pem -pubout"));
    assert_eq!(a, b2, "key matches certificate");
    let (ok, out) =
        sh(&format!("openssl verify -CAfile {d}/ca.pem -untrusted {d}/chain.pem {d}/c.pem"));
    assert!(ok, "{out}");

    assert_problem(app.redeem(&b).await, 410).await;
    let status: Value = app
        .get_as(&format!("/v1/bundles/{}", b["id"].as_str().unwrap()), &app.owner_token())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "redeemed");
    assert_eq!(status["redeemed_from"], "127.0.0.1");
    let audit: Value =
        app.get_as("/v1/audit?limit=1000", &app.owner_token()).await.json().await.unwrap();
    let text = audit.to_string();
    assert!(text.contains("bundle.redeem") && !text.contains(token));
    assert!(!app.logs().contains(token));
}

#[tokio::test]
async fn fifty_concurrent_redeems_yield_exactly_one_payload() {
    let app = spawn_app().await;
    app.put_device("race", json!({})).await;
    let b = app.bundle("race", "sas", "json").await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let client = app.client.clone();
        let url = app.url(&format!("/v1/bundles/{}/redeem", b["id"].as_str().unwrap()));
        let auth = format!("Bundle {}", b["token"].as_str().unwrap());
        tasks.push(tokio::spawn(async move {
            client.post(url).header("Authorization", auth).send().await.unwrap().status().as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 410).count(), 49, "{codes:?}");
}

#[tokio::test]
async fn sas_bundles_carry_the_keys_current_at_redemption() {
    let app = spawn_app().await;
    app.put_device("sas-1", json!({})).await;
    let b = app.bundle("sas-1", "sas", "json").await;
    let rotated: Value = app
        .post_json("/v1/devices/sas-1/keys/rotate", &app.owner_token(), json!({"key": "primary"}))
        .await
        .json()
        .await
        .unwrap();
    let p: Value = app.redeem(&b).await.json().await.unwrap();
    let pk = rotated["authentication"]["symmetric_key"]["primary_key"].as_str().unwrap();
    assert_eq!(p["symmetric_key"]["primary_key"], pk);
    assert_eq!(p["host_name"], "localhost");
    assert_eq!(
        p["connection_string"],
        format!("HostName=localhost;DeviceId=sas-1;SharedAccessKey={pk}")
    );
    assert!(p.get("private_key").is_none());
}

#[tokio::test]
async fn pem_tar_and_pkcs12_open_with_standard_tools() {
    let app = spawn_app().await;
    app.put_device("fmt", json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let b = app.bundle("fmt", "both", "pem-tar").await;
    let r = app.redeem(&b).await;
    assert_eq!(r.headers()["content-type"], "application/x-tar");
    std::fs::write(dir.path().join("b.tar"), r.bytes().await.unwrap()).unwrap();
    let (ok, list) = sh(&format!("tar -tf {d}/b.tar"));
    assert!(ok, "{list}");
    for f in ["device.crt", "device.key", "chain.pem", "device.json"] {
        assert!(list.contains(f), "{f} in {list}");
    }
    let (ok, out) = sh(&format!("cd {d} && tar -xf b.tar && openssl x509 -in device.crt -noout -pubkey > a && openssl pkey -in device.key -pubout > b && cmp a b"));
    assert!(ok, "{out}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("device.json")).unwrap())
            .unwrap();
    assert!(json["connection_string"].as_str().unwrap().contains("DeviceId=fmt"));

    let b = app.bundle("fmt", "x509", "pkcs12").await;
    let r = app.redeem(&b).await;
    assert_eq!(r.headers()["content-type"], "application/x-pkcs12");
    std::fs::write(dir.path().join("b.p12"), r.bytes().await.unwrap()).unwrap();
    let (ok, out) = sh(&format!(
        "openssl pkcs12 -in {d}/b.p12 -passin 'pass:{}' -nodes -info",
        b["token"].as_str().unwrap()
    ));
    assert!(ok, "{out}");
    assert!(
        out.contains("PBES2") && out.contains("AES-256-CBC") && out.contains("sha256"),
        "{out}"
    );
    assert!(out.contains("BEGIN PRIVATE KEY") && out.contains("BEGIN CERTIFICATE"), "{out}");
}

#[tokio::test]
async fn expired_cancelled_and_invalid_bundles() {
    let app = spawn_app().await;
    app.put_device("e", json!({})).await;
    let short: Value = app
        .post_json(
            "/v1/bundles",
            &app.owner_token(),
            json!({"device_id": "e", "credential": "sas", "format": "json", "ttl_secs": 1}),
        )
        .await
        .json()
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_problem(app.redeem(&short).await, 410).await;
    let b = app.bundle("e", "x509", "json").await;
    let id = b["id"].as_str().unwrap();
    let del = app
        .client
        .delete(app.url(&format!("/v1/bundles/{id}")))
        .header("Authorization", app.owner_token())
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    assert_problem(app.redeem(&b).await, 410).await;
    let again = app
        .client
        .delete(app.url(&format!("/v1/bundles/{id}")))
        .header("Authorization", app.owner_token())
        .send()
        .await
        .unwrap();
    assert_problem(again, 409).await;
    let status: Value =
        app.get_as(&format!("/v1/bundles/{id}"), &app.owner_token()).await.json().await.unwrap();
    assert_eq!(status["status"], "cancelled");
    let bad = [
        json!({"device_id": "e", "credential": "sas", "format": "pkcs12"}),
        json!({"device_id": "e", "credential": "psk", "format": "json"}),
        json!({"device_id": "e", "credential": "sas", "format": "zip"}),
        json!({"device_id": "e", "credential": "sas", "format": "json", "ttl_secs": 0}),
        json!({"device_id": "e", "credential": "sas", "format": "json", "ttl_secs": 2592001}),
    ];
    for body in bad {
        assert_problem(app.post_json("/v1/bundles", &app.owner_token(), body).await, 400).await;
    }
    assert_problem(
        app.post_json(
            "/v1/bundles",
            &app.owner_token(),
            json!({"device_id": "ghost", "credential": "sas", "format": "json"}),
        )
        .await,
        404,
    )
    .await;
}

#[tokio::test]
async fn a_stolen_database_and_master_key_do_not_open_an_unredeemed_bundle() {
    let app = spawn_app().await;
    app.put_device("theft", json!({})).await;
    let b = app.bundle("theft", "x509", "json").await;
    let id = b["id"].as_str().unwrap();
    // Everything the server stores: the row (sealed payload, token digest) and the master key.
    let s = store(&app.data).await;
    let mut conn = s.conn().await.unwrap();
    let row = service::store::bundles::get(&mut conn, id).await.unwrap().unwrap();
    let blob = row.payload.clone().unwrap();
    let ring = service::seal::KeyRing::load(&app.data.path().join("master.key")).unwrap();
    let ctx = service::seal::SealContext { table: "bundles", column: "payload", row_id: id };
    assert!(ring.open(ctx, &blob).is_err(), "the master key does not open it");
    for guess in [row.token_sha256.clone(), "A".repeat(43), id.to_owned()] {
        let t = service::usecase::bundles::BundleToken::from_header(&format!("Bundle {guess}"));
        if let Some(t) = t {
            assert!(service::usecase::bundles::open_payload(&t, id, &blob).is_none(), "{guess}");
        }
    }
    let real = service::usecase::bundles::BundleToken::from_header(&format!(
        "Bundle {}",
        b["token"].as_str().unwrap()
    ))
    .unwrap();
    assert!(
        service::usecase::bundles::open_payload(&real, id, &blob).is_some(),
        "only the token opens it"
    );
    assert!(!String::from_utf8_lossy(&blob).contains("PRIVATE KEY"));
}
