use serde_json::{json, Value};

use crate::helpers::{assert_problem, policy_token, spawn_app, TestApp};

impl TestApp {
    pub async fn put_device(&self, id: &str, body: Value) -> reqwest::Response {
        self.client
            .put(self.url(&format!("/v1/devices/{id}")))
            .header("Authorization", self.owner_token())
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_json(&self, path: &str, token: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("Authorization", token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn put_creates_then_replaces_and_get_returns_the_same_representation() {
    let app = spawn_app().await;
    let r = app.put_device("dev-1", json!({})).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let etag_header = r.headers()["etag"].to_str().unwrap().to_owned();
    let created: Value = r.json().await.unwrap();
    assert_eq!(etag_header, format!("\"{}\"", created["etag"].as_str().unwrap()));
    assert_eq!(created["device_id"], "dev-1");
    assert_eq!(created["status"], "enabled");
    assert_eq!(created["authentication"]["type"], "sas");
    let pk = created["authentication"]["symmetric_key"]["primary_key"].as_str().unwrap();
    assert_eq!(base64_len(pk), 32);

    let got: Value =
        app.get_as("/v1/devices/dev-1", &app.owner_token()).await.json().await.unwrap();
    assert_eq!(got, created);
    // A GET body can be PUT back; keys stay; etag changes.
    let r = app.put_device("dev-1", got.clone()).await;
    assert_eq!(r.status(), 200);
    let replaced: Value = r.json().await.unwrap();
    assert_eq!(replaced["authentication"], created["authentication"]);
    assert_ne!(replaced["etag"], created["etag"]);
    assert_eq!(replaced["generation_id"], created["generation_id"]);
    // Omitting authentication on an update keeps the keys.
    let r = app
        .put_device(
            "dev-1",
            json!({"status": "disabled", "status_reason": "maintenance", "tags": {"site": "a"}}),
        )
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["authentication"], created["authentication"]);
    assert_eq!(v["status"], "disabled");
    assert_eq!(v["tags"], json!({"site": "a"}));
}

fn base64_len(s: &str) -> usize {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap().len()
}

#[tokio::test]
async fn invalid_bodies_and_ids_are_400_problems() {
    let app = spawn_app().await;
    let cases = [
        ("dev-1", json!({"device_id": "other"})),
        ("dev-1", json!({"status": "sleepy"})),
        (
            "dev-1",
            json!({"authentication": {"type": "sas", "symmetric_key": {"primary_key": "c2hvcnQ="}}}),
        ),
        (
            "dev-1",
            json!({"authentication": {"type": "x509_thumbprint", "x509_thumbprint": {"primary_thumbprint": "zz"}}}),
        ),
        ("dev-1", json!({"authentication": {"type": "psk"}})),
        ("dev-1", json!({"tags": "not an object"})),
        ("dev-1", json!({"parent_id": "no-such-gateway"})),
        ("dev-1", json!([1, 2])),
        ("a%2Fb", json!({})),
        ("a%20b", json!({})),
        ("a;b", json!({})),
        ("%C3%A9", json!({})),
        (&"x".repeat(129), json!({})),
    ];
    for (id, body) in cases {
        let r = app.put_device(id, body.clone()).await;
        assert_problem(r, 400).await;
    }
    let r = app
        .client
        .put(app.url("/v1/devices/dev-1"))
        .header("Authorization", app.owner_token())
        .header("Content-Type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(r, 415).await;
    let r = app
        .client
        .put(app.url("/v1/devices/dev-1"))
        .header("Authorization", app.owner_token())
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_problem(r, 400).await;
    let big = format!("{{\"tags\": {{\"x\": \"{}\"}}}}", "a".repeat(1_100_000));
    let r = app
        .client
        .put(app.url("/v1/devices/dev-1"))
        .header("Authorization", app.owner_token())
        .header("Content-Type", "application/json; charset=utf-8")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_problem(r, 413).await;
    // A literal % is sent as %25 and is part of the id.
    let r = app.put_device("50%25off", json!({})).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["device_id"], "50%off");
    assert_problem(app.get_as("/v1/devices/nope", &app.owner_token()).await, 404).await;
}

#[tokio::test]
async fn etag_preconditions_guard_put_and_delete() {
    let app = spawn_app().await;
    let v: Value = app.put_device("d", json!({})).await.json().await.unwrap();
    let etag = v["etag"].as_str().unwrap();
    let put_if = |m: &str, h: &'static str| {
        app.client
            .put(app.url("/v1/devices/d"))
            .header("Authorization", app.owner_token())
            .header(h, m.to_owned())
            .json(&json!({"tags": {"x": 1}}))
            .send()
    };
    assert_problem(put_if("\"stale\"", "If-Match").await.unwrap(), 412).await;
    assert_problem(put_if("*", "If-None-Match").await.unwrap(), 412).await;
    assert_eq!(put_if(&format!("\"{etag}\""), "If-Match").await.unwrap().status(), 200);
    let r = app
        .client
        .delete(app.url("/v1/devices/d"))
        .header("Authorization", app.owner_token())
        .header("If-Match", format!("\"{etag}\""))
        .send()
        .await
        .unwrap();
    assert_problem(r, 412).await;
    let still: Value = app.get_as("/v1/devices/d", &app.owner_token()).await.json().await.unwrap();
    assert_eq!(still["tags"], json!({"x": 1}), "nothing changed by the failed delete");
    let r = app
        .client
        .delete(app.url("/v1/devices/d"))
        .header("Authorization", app.owner_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(app.get_as("/v1/devices/d", &app.owner_token()).await.status(), 404);
    let again: Value = app.put_device("d", json!({})).await.json().await.unwrap();
    assert_ne!(again["generation_id"], v["generation_id"], "generation changes on re-create");
}

#[tokio::test]
async fn listing_pages_in_byte_order_with_cursors_and_filters() {
    let app = spawn_app().await;
    let mut ids: Vec<String> = (0..25).map(|i| format!("d{i:03}")).collect();
    ids.extend(["A1".to_string(), "Z9".to_string(), "a1".to_string()]);
    for id in &ids {
        app.put_device(id, json!({})).await;
    }
    app.put_device("d001", json!({"status": "disabled"})).await;
    ids.sort();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/devices?limit=7&cursor={c}"),
            None => "/v1/devices?limit=7".into(),
        };
        let page: Value = app.get_as(&path, &app.owner_token()).await.json().await.unwrap();
        for item in page["items"].as_array().unwrap() {
            seen.push(item["device_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let disabled: Value =
        app.get_as("/v1/devices?status=disabled", &app.owner_token()).await.json().await.unwrap();
    assert_eq!(disabled["items"].as_array().unwrap().len(), 1);
    for bad in ["limit=0", "limit=1001", "limit=x", "status=gone", "cursor=%%%", "cursor=!!"] {
        assert_problem(app.get_as(&format!("/v1/devices?{bad}"), &app.owner_token()).await, 400)
            .await;
    }
}

#[tokio::test]
async fn read_only_callers_see_no_keys_and_key_rotation_invalidates_old_tokens() {
    let app = spawn_app().await;
    let v: Value = app.put_device("dev-r", json!({})).await.json().await.unwrap();
    let reader = policy_token("registryRead", &app.policy_key("registryRead").await);
    let seen: Value = app.get_as("/v1/devices/dev-r", &reader).await.json().await.unwrap();
    assert!(seen["authentication"].get("symmetric_key").is_none(), "{seen}");
    let list: Value = app.get_as("/v1/devices", &reader).await.json().await.unwrap();
    assert!(!list
        .to_string()
        .contains(v["authentication"]["symmetric_key"]["primary_key"].as_str().unwrap()));
    assert_problem(
        app.client
            .put(app.url("/v1/devices/x"))
            .header("Authorization", &reader)
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;

    let device_policy = policy_token("device", &app.policy_key("device").await);
    let service = policy_token("service", &app.policy_key("service").await);
    let minted: Value = app
        .post_json("/v1/devices/dev-r/sas-token", &device_policy, json!({"ttl_secs": 600}))
        .await
        .json()
        .await
        .unwrap();
    let token = minted["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("SharedAccessSignature sr=localhost%2Fdevices%2Fdev-r&sig="));
    let check = |t: String| app.post_json("/v1/sas/verify", &service, json!({"token": t}));
    let ok: Value = check(token.clone()).await.json().await.unwrap();
    assert_eq!(ok["valid"], true);
    assert_eq!(ok["device_id"], "dev-r");

    let rotated = app
        .post_json("/v1/devices/dev-r/keys/rotate", &app.owner_token(), json!({"key": "primary"}))
        .await;
    assert_eq!(rotated.status(), 200);
    let rotated: Value = rotated.json().await.unwrap();
    assert_ne!(
        rotated["authentication"]["symmetric_key"]["primary_key"],
        v["authentication"]["symmetric_key"]["primary_key"]
    );
    let stale: Value = check(token).await.json().await.unwrap();
    assert_eq!(stale["valid"], false);
    assert_problem(
        app.post_json(
            "/v1/devices/dev-r/keys/rotate",
            &app.owner_token(),
            json!({"key": "tertiary"}),
        )
        .await,
        400,
    )
    .await;
    // Swap: the old secondary becomes primary.
    let swapped: Value = app
        .post_json("/v1/devices/dev-r/keys/rotate", &app.owner_token(), json!({"key": "swap"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        swapped["authentication"]["symmetric_key"]["primary_key"],
        rotated["authentication"]["symmetric_key"]["secondary_key"]
    );
}

#[tokio::test]
async fn sas_verify_answers_200_for_any_string_and_refuses_tampering() {
    let app = spawn_app().await;
    let v: Value = app
        .put_device(
            "dev-v",
            json!({"authentication": {"type": "sas", "symmetric_key": {
            "primary_key": "cHJvdmlzaW9uZC1pbnRlcm9wLXZlY3Rvci1rZXktMzI=",
            "secondary_key": "c2Vjb25kYXJ5LWtleS1zZWNvbmRhcnkta2V5LTEyMzQ="}}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["authentication"]["symmetric_key"]["primary_key"],
        "cHJvdmlzaW9uZC1pbnRlcm9wLXZlY3Rvci1rZXktMzI="
    );
    let service = policy_token("service", &app.policy_key("service").await);
    let key = ca::SasKey::from_base64("c2Vjb25kYXJ5LWtleS1zZWNvbmRhcnkta2V5LTEyMzQ=").unwrap();
    let now = crate::helpers::now();
    let good = ca::sas::SasToken::build("localhost/devices/dev-v", &key, now + 600, None);
    let verify = |t: &str| app.post_json("/v1/sas/verify", &service, json!({"token": t}));
    assert_eq!(
        verify(&good).await.json::<Value>().await.unwrap()["valid"],
        true,
        "secondary key works"
    );
    let cases = [
        "garbage".to_string(),
        good.replace("se=", "se=9"),
        ca::sas::SasToken::build("localhost/devices/dev-v", &key, now - 1000, None),
        ca::sas::SasToken::build("localhost/devices/dev-v", &key, now + 400 * 86400, None),
        ca::sas::SasToken::build("otherhub/devices/dev-v", &key, now + 600, None),
        ca::sas::SasToken::build("localhost/devices/nobody", &key, now + 600, None),
        format!("{good}&sr=x"),
    ];
    for t in &cases {
        let r = verify(t).await;
        assert_eq!(r.status(), 200, "{t}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["valid"], false, "{t}");
        assert!(body["reason"].is_string());
    }
    app.put_device("dev-v", json!({"status": "disabled"})).await;
    assert_eq!(
        verify(&good).await.json::<Value>().await.unwrap()["valid"],
        false,
        "disabled device"
    );
    assert_problem(app.post_json("/v1/sas/verify", &service, json!({})).await, 400).await;
    assert_problem(
        app.post_json("/v1/sas/verify", &app.policy_key("device").await, json!({"token": "x"}))
            .await,
        401,
    )
    .await;
}

#[tokio::test]
async fn azure_python_sdk_device_tokens_verify() {
    let app = spawn_app().await;
    let v: Value = app.put_device("py-dev", json!({})).await.json().await.unwrap();
    let key = v["authentication"]["symmetric_key"]["primary_key"].as_str().unwrap();
    let script = format!(
        "from azure.iot.device.common.auth import sastoken, signing_mechanism\n\
         print(str(sastoken.RenewableSasToken('localhost/devices/py-dev', signing_mechanism.SymmetricKeySigningMechanism('{key}'), ttl=600)))"
    );
    let out = std::process::Command::new("python3").args(["-c", &script]).output().unwrap();
    if !out.status.success() {
        assert_ne!(
            std::env::var("PROVISIOND_REQUIRE_INTEROP").as_deref(),
            Ok("1"),
            "azure-iot-device missing"
        );
        return;
    }
    let token = String::from_utf8(out.stdout).unwrap();
    let service = policy_token("service", &app.policy_key("service").await);
    let body: Value = app
        .post_json("/v1/sas/verify", &service, json!({"token": token.trim()}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["valid"], true, "{body}");
}

#[tokio::test]
async fn admin_issuance_records_the_certificate_and_delete_revokes_it() {
    let app = spawn_app().await;
    app.put_device("cert-dev", json!({"authentication": {"type": "x509_ca"}})).await;
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-subj",
            "/CN=cert-dev",
            "-keyout",
        ])
        .arg(dir.path().join("k.pem"))
        .arg("-out")
        .arg(dir.path().join("c.csr"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let csr = std::fs::read_to_string(dir.path().join("c.csr")).unwrap();
    let r = app
        .post_json("/v1/devices/cert-dev/certificates", &app.owner_token(), json!({"csr": csr}))
        .await;
    assert_eq!(r.status(), 201);
    let issued: Value = r.json().await.unwrap();
    let serial = issued["serial"].as_str().unwrap().to_owned();
    std::fs::write(dir.path().join("chain.pem"), issued["certificate_chain"].as_str().unwrap())
        .unwrap();
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(app.chain_path())
        .arg(dir.path().join("chain.pem"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    let mut der = ::pem::parse(&csr).unwrap().into_contents();
    let last = der.len() - 3;
    der[last] ^= 0x01;
    let tampered = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der));
    let wrong = app
        .post_json(
            "/v1/devices/cert-dev/certificates",
            &app.owner_token(),
            json!({"csr": tampered}),
        )
        .await;
    let body = assert_problem(wrong, 400).await;
    assert!(body["detail"].as_str().unwrap().contains("signature"), "{body}");
    let other = app
        .post_json("/v1/devices/nobody/certificates", &app.owner_token(), json!({"csr": csr}))
        .await;
    assert_problem(other, 404).await;
    app.put_device("other-dev", json!({})).await;
    let mismatch = app
        .post_json("/v1/devices/other-dev/certificates", &app.owner_token(), json!({"csr": csr}))
        .await;
    let body = assert_problem(mismatch, 400).await;
    assert!(body["detail"].as_str().unwrap().contains("CN"), "{body}");

    let list: Value = app
        .get_as("/v1/certificates?device_id=cert-dev", &app.owner_token())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["serial"], serial);
    assert_eq!(list["items"][0]["status"], "valid");
    let none: Value = app
        .get_as("/v1/certificates?device_id=ghost", &app.owner_token())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none["items"], json!([]));
    app.client
        .delete(app.url("/v1/devices/cert-dev"))
        .header("Authorization", app.owner_token())
        .send()
        .await
        .unwrap();
    let list: Value = app
        .get_as("/v1/certificates?device_id=cert-dev", &app.owner_token())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["status"], "revoked");
    // The next CRL lists it.
    let crl = app
        .client
        .get(app.url("/v1/ca/crl?format=pem"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    std::fs::write(dir.path().join("crl.pem"), crl).unwrap();
    let text = std::process::Command::new("openssl")
        .args(["crl", "-noout", "-text", "-in"])
        .arg(dir.path().join("crl.pem"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).to_lowercase().contains(&serial),
        "revoked serial in CRL"
    );
}

/// Issue "3 · registry": stable cursor paging over 1,000 devices — every device exactly once, in
/// byte order, whatever the page size; a device added behind the cursor mid-walk is not repeated
/// and one added ahead of it is seen.
#[tokio::test]
async fn paging_over_a_thousand_devices_sees_each_exactly_once() {
    let app = spawn_app().await;
    app.put_group("fleet", json!({"credential": "sas"})).await;
    let lines: Vec<Value> =
        (0..1000).map(|i| json!({"registration_id": format!("d-{i:04}")})).collect();
    let out = app.ndjson("fleet", &lines).await;
    assert!(
        out.iter().all(|l| l.get("error").is_none()),
        "{:?}",
        out.iter().find(|l| l.get("error").is_some())
    );
    for page_size in [1000, 333, 64] {
        let mut seen: Vec<String> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/devices?limit={page_size}&cursor={c}"),
                None => format!("/v1/devices?limit={page_size}"),
            };
            let page: Value = app.get_as(&path, &app.owner_token()).await.json().await.unwrap();
            let items = page["items"].as_array().unwrap();
            assert!(items.len() <= page_size);
            seen.extend(items.iter().map(|d| d["device_id"].as_str().unwrap().to_owned()));
            if page_size == 64 && seen.len() == 128 {
                app.put_device("d-0000a", json!({})).await; // behind the cursor
                app.put_device("d-0999a", json!({})).await; // ahead of it
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        let mut expected: Vec<String> = (0..1000).map(|i| format!("d-{i:04}")).collect();
        if page_size == 64 {
            expected.push("d-0999a".into());
        }
        expected.sort();
        assert_eq!(seen, expected, "page size {page_size}");
    }
}

/// NUL and other control characters where the API takes text: 400 problems on both databases,
/// never a 500 (PostgreSQL text cannot hold NUL; found by schemathesis on
/// `GET /v1/certificates?device_id=`).
#[tokio::test]
async fn nul_and_control_characters_are_400_never_500() {
    use base64::Engine as _;
    let app = spawn_app().await;
    let owner = app.owner_token();
    let r =
        app.put_device("ctl-1", json!({"status": "disabled", "status_reason": "a\u{0}b"})).await;
    assert_problem(r, 400).await;
    let schemathesis = "/v1/certificates?device_id=H%C3%8A%C2%B2%00%F0%99%AB%AA.%F3%BB%9C%AF%C2%8B";
    assert_problem(app.get_as(schemathesis, &owner).await, 400).await;
    assert_problem(app.get_as("/v1/certificates?device_id=%00", &owner).await, 400).await;
    let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("a\u{0}");
    for list in ["/v1/devices", "/v1/certificates"] {
        let r = app.get_as(&format!("{list}?cursor={cursor}"), &owner).await;
        assert_problem(r, 400).await;
    }
    // a text the API does not police itself: refused by PostgreSQL (400), stored by SQLite
    let r = app
        .client
        .put(app.url("/v1/enrollment-groups/ctl-group"))
        .header("Authorization", &owner)
        .json(&json!({"registration_id_pattern": "^dev-\u{0}$"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success() || r.status() == 400, "{}", r.status());
    if r.status() == 400 {
        assert_problem(r, 400).await;
    }
    assert_eq!(app.get_as("/readyz", &owner).await.status(), 200);
}
