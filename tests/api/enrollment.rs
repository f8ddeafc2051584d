use base64::Engine as _;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, leaf_serial, now, spawn_app, spawn_with, DataDir, TestApp};

pub fn csr(cn: &str, alg: &'static rcgen::SignatureAlgorithm) -> String {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

pub fn p256(cn: &str) -> String {
    csr(cn, &rcgen::PKCS_ECDSA_P256_SHA256)
}

impl TestApp {
    /// How many stored certificates belong to devices whose id starts with `prefix`.
    pub async fn device_certificates(&self, prefix: &str) -> usize {
        let (mut count, mut cursor) = (0, None::<String>);
        loop {
            let page = match &cursor {
                Some(c) => format!("/v1/certificates?limit=1000&cursor={c}"),
                None => "/v1/certificates?limit=1000".to_owned(),
            };
            let certs: Value = self.get_as(&page, &self.owner_token()).await.json().await.unwrap();
            count += certs["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["device_id"].as_str().is_some_and(|d| d.starts_with(prefix)))
                .count();
            match certs["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return count,
            }
        }
    }

    /// The targets of the audit's `registration.create` rows, once the chain has verified.
    pub async fn audited_registrations(&self) -> Vec<String> {
        let verified: Value =
            self.get_as("/v1/audit/verify", &self.owner_token()).await.json().await.unwrap();
        assert_eq!(verified["ok"], true, "the audit chain verifies: {verified}");
        let (mut targets, mut after) = (Vec::new(), 0);
        loop {
            let page = format!("/v1/audit?after={after}&limit=1000");
            let audit: Value = self.get_as(&page, &self.owner_token()).await.json().await.unwrap();
            let items = audit["items"].as_array().unwrap();
            targets.extend(
                items
                    .iter()
                    .filter(|r| r["action"] == "registration.create")
                    .map(|r| r["target"].as_str().unwrap().to_owned()),
            );
            match items.last() {
                Some(last) if items.len() == 1000 => after = last["seq"].as_i64().unwrap(),
                _ => return targets,
            }
        }
    }

    pub async fn put_group(&self, id: &str, body: Value) -> Value {
        let r = self
            .client
            .put(self.url(&format!("/v1/enrollment-groups/{id}")))
            .header("Authorization", self.owner_token())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "group: {}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    pub async fn enroll(&self, group: &str, body: Value) -> reqwest::Response {
        self.post_json(
            &format!("/v1/enrollment-groups/{group}/registrations"),
            &self.owner_token(),
            body,
        )
        .await
    }
}

fn openssl_verify(app: &TestApp, chain_pem: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let certs = ::pem::parse_many(chain_pem).unwrap();
    std::fs::write(dir.path().join("leaf.pem"), ::pem::encode(&certs[0])).unwrap();
    let rest: String = certs[1..].iter().map(::pem::encode).collect();
    std::fs::write(dir.path().join("untrusted.pem"), rest).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"])
        .arg(app.chain_path())
        .arg("-untrusted")
        .arg(dir.path().join("untrusted.pem"))
        .arg(dir.path().join("leaf.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl verify: {}", String::from_utf8_lossy(&out.stdout));
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-ext", "extendedKeyUsage", "-in"])
        .arg(dir.path().join("leaf.pem"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&text.stdout).into_owned()
}

#[tokio::test]
async fn factory_line_registration_issues_verifiable_certificates_idempotently() {
    let app = spawn_app().await;
    let g = app.put_group("line-a", json!({"attestation": {"type": "x509_ca", "x509_ca": {"ca_certificates": [std::fs::read_to_string(app.chain_path()).unwrap().split_inclusive("-----END CERTIFICATE-----\n").last().unwrap()]}}})).await;
    assert_eq!(g["enrollment_group_id"], "line-a");
    assert_eq!(g["credential"], "x509");
    let request = p256("dev-001");
    let r = app.enroll("line-a", json!({"registration_id": "dev-001", "csr": request})).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let first: Value = r.json().await.unwrap();
    assert_eq!(first["device_id"], "dev-001");
    assert_eq!(first["status"], "assigned");
    assert!(first.get("device_key").is_none());
    let text = openssl_verify(&app, first["certificate_chain"].as_str().unwrap());
    assert!(text.contains("CN = dev-001") || text.contains("CN=dev-001"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");

    let again = app.enroll("line-a", json!({"registration_id": "dev-001", "csr": request})).await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["certificate_chain"], first["certificate_chain"], "same certificate on retry");
    let certs: Value = app
        .get_as("/v1/certificates?device_id=dev-001", &app.owner_token())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(certs["items"].as_array().unwrap().len(), 1, "nothing new stored on retry");
    let device: Value =
        app.get_as("/v1/devices/dev-001", &app.owner_token()).await.json().await.unwrap();
    assert_eq!(device["enrollment_group_id"], "line-a");
    assert_eq!(device["authentication"]["type"], "x509_ca");
    // A different CSR reissues (default policy) and supersedes the old certificate.
    let third =
        app.enroll("line-a", json!({"registration_id": "dev-001", "csr": p256("dev-001")})).await;
    assert_eq!(third.status(), 201);
    let certs: Value = app
        .get_as("/v1/certificates?device_id=dev-001", &app.owner_token())
        .await
        .json()
        .await
        .unwrap();
    let statuses: Vec<&str> =
        certs["items"].as_array().unwrap().iter().map(|c| c["status"].as_str().unwrap()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == "valid").count(), 1);
    assert_eq!(statuses.iter().filter(|s| **s == "revoked").count(), 1);
    let audit: Value =
        app.get_as("/v1/audit?limit=1000", &app.owner_token()).await.json().await.unwrap();
    assert!(audit.to_string().contains("registration.create"));
}

#[tokio::test]
async fn csr_and_input_violations_are_400_and_store_nothing() {
    let app = spawn_app().await;
    app.put_group("strict", json!({"attestation": {"type": "token"}, "allowed_key_types": ["p256"], "registration_id_pattern": "sn-[0-9]+"})).await;
    let mut der = ::pem::parse(p256("sn-1")).unwrap().into_contents();
    let i = der.len() - 4;
    der[i] ^= 0x01;
    let tampered = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der));
    let cases = [
        (json!({"registration_id": "sn-1", "csr": p256("sn-2")}), "CN"),
        (json!({"registration_id": "sn-1", "csr": tampered}), "signature"),
        (json!({"registration_id": "sn-1", "csr": csr("sn-1", &rcgen::PKCS_ED25519)}), "ed25519"),
        (json!({"registration_id": "sn-1", "csr": "garbage"}), "CSR"),
        (json!({"registration_id": "sn-1"}), "csr"),
        (json!({"registration_id": "bad-1", "csr": p256("bad-1")}), "pattern"),
        (json!({"registration_id": "a/b", "csr": p256("a/b")}), "registration id"),
    ];
    for (body, needle) in cases {
        let b = assert_problem(app.enroll("strict", body.clone()).await, 400).await;
        assert!(b["detail"].as_str().unwrap().contains(needle), "{needle}: {b}");
    }
    assert_eq!(app.get_as("/v1/devices/sn-1", &app.owner_token()).await.status(), 404);
    let certs: Value =
        app.get_as("/v1/certificates", &app.owner_token()).await.json().await.unwrap();
    assert_eq!(
        certs["items"].as_array().unwrap().iter().filter(|c| c["device_id"].is_string()).count(),
        0
    );
    assert_problem(app.enroll("nope", json!({"registration_id": "x"})).await, 404).await;
    app.put_group("off", json!({"provisioning_status": "disabled"})).await;
    assert_problem(app.enroll("off", json!({"registration_id": "x", "csr": p256("x")})).await, 403)
        .await;
    let r = app
        .client
        .put(app.url("/v1/enrollment-groups/tpm"))
        .header("Authorization", app.owner_token())
        .json(&json!({"attestation": {"type": "tpm"}}))
        .send()
        .await
        .unwrap();
    assert_problem(r, 501).await;
}

#[tokio::test]
async fn a_registration_id_owned_elsewhere_is_409_and_unchanged() {
    let app = spawn_app().await;
    app.put_group("g1", json!({})).await;
    app.put_group("g2", json!({})).await;
    app.put_device("admin-made", json!({"tags": {"owner": "admin"}})).await;
    assert_problem(
        app.enroll("g1", json!({"registration_id": "admin-made", "csr": p256("admin-made")})).await,
        409,
    )
    .await;
    let d: Value =
        app.get_as("/v1/devices/admin-made", &app.owner_token()).await.json().await.unwrap();
    assert_eq!(d["tags"], json!({"owner": "admin"}));
    assert_eq!(
        app.enroll("g1", json!({"registration_id": "shared", "csr": p256("shared")}))
            .await
            .status(),
        201
    );
    assert_problem(
        app.enroll("g2", json!({"registration_id": "shared", "csr": p256("shared")})).await,
        409,
    )
    .await;
}

#[tokio::test]
async fn sas_groups_return_derived_keys_that_verify_independently() {
    let app = spawn_app().await;
    let g = app.put_group("sas-line", json!({"attestation": {"type": "symmetric_key"}, "credential": "both", "initial_tags": {"fw": "1.0"}})).await;
    let group_key = g["attestation"]["symmetric_key"]["primary_key"].as_str().unwrap().to_owned();
    let r: Value = app
        .enroll(
            "sas-line",
            json!({"registration_id": "s-1", "csr": p256("s-1"), "tags": {"line": 3}}),
        )
        .await
        .json()
        .await
        .unwrap();
    // base64(HMAC-SHA256(base64decode(group_key), registration_id)), computed here.
    use hmac::Mac as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(&b64.decode(&group_key).unwrap()).unwrap();
    mac.update(b"s-1");
    let expected = b64.encode(mac.finalize().into_bytes());
    assert_eq!(r["device_key"]["primary_key"], expected);
    assert!(r["certificate_chain"].is_string());
    let d: Value = app.get_as("/v1/devices/s-1", &app.owner_token()).await.json().await.unwrap();
    assert_eq!(d["authentication"]["symmetric_key"]["primary_key"], expected);
    assert_eq!(d["tags"], json!({"fw": "1.0", "line": 3}));
    let service = crate::helpers::policy_token("service", &app.policy_key("service").await);
    let token = ca::sas::SasToken::build(
        "localhost/devices/s-1",
        &ca::SasKey::from_base64(&expected).unwrap(),
        now() + 60,
        None,
    );
    let v: Value = app
        .post_json("/v1/sas/verify", &service, json!({"token": token}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["valid"], true);
}

#[tokio::test]
async fn ndjson_batches_answer_one_line_per_input_in_order() {
    let app = spawn_app().await;
    app.put_group("batch", json!({"allowed_key_types": ["p256"]})).await;
    let n = 1000;
    let mut body = String::new();
    let mut bad = Vec::new();
    for i in 0..n {
        let id = format!("b-{i:04}");
        let line = match i % 97 {
            5 => {
                bad.push(i);
                json!({"registration_id": id, "csr": p256("wrong-cn")}).to_string()
            }
            11 => {
                bad.push(i);
                "{not json".to_string()
            }
            _ => json!({"registration_id": id, "csr": p256(&id)}).to_string(),
        };
        body.push_str(&line);
        body.push('\n');
    }
    let r = app
        .client
        .post(app.url("/v1/enrollment-groups/batch/registrations"))
        .header("Authorization", app.owner_token())
        .header("Content-Type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), n);
    for (i, line) in lines.iter().enumerate() {
        if bad.contains(&i) {
            assert!(line["error"]["status"] == 400, "line {i}: {line}");
            assert!(line.get("certificate_chain").is_none());
        } else {
            assert_eq!(line["device_id"], format!("b-{i:04}"), "order");
            assert!(line["certificate_chain"]
                .as_str()
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----"));
        }
    }
    let page: Value =
        app.get_as("/v1/devices?limit=1000", &app.owner_token()).await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), n - bad.len());
}

impl TestApp {
    pub async fn ndjson(&self, group: &str, lines: &[Value]) -> Vec<Value> {
        let body: String = lines.iter().map(|l| l.to_string() + "\n").collect();
        let r = self
            .client
            .post(self.url(&format!("/v1/enrollment-groups/{group}/registrations")))
            .header("Authorization", self.owner_token())
            .header("Content-Type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

/// The bulk path stores first registrations together; retries, in-batch duplicates and
/// reprovisioning in the same chunk must still behave exactly as single registrations do.
#[tokio::test]
async fn a_batch_mixing_new_ids_retries_duplicates_and_reissues_answers_each_exactly() {
    let app = spawn_app().await;
    app.put_group("mix", json!({"allowed_key_types": ["p256"]})).await;
    let csrs: Vec<String> = (0..3).map(|i| p256(&format!("m-{i}"))).collect();
    let line = |id: &str, csr: &str| json!({"registration_id": id, "csr": csr});
    let first = app.ndjson("mix", &[line("m-0", &csrs[0]), line("m-1", &csrs[1])]).await;
    assert!(first.iter().all(|l| l["certificate_chain"].is_string()), "{first:?}");

    let reissue = p256("m-1");
    let n0 = p256("n-0");
    let out = app
        .ndjson(
            "mix",
            &[
                line("m-0", &csrs[0]), // retry: same certificate
                line("n-0", &n0),      // new
                line("n-0", &n0),      // duplicate in the batch: a retry of the line before
                line("m-1", &reissue), // new CSR: reissue, old certificate superseded
                line("n-1", &p256("n-1")),
                line("n-2", &p256("wrong")), // CN mismatch fails alone
            ],
        )
        .await;
    assert_eq!(out.len(), 6);
    assert_eq!(out[0]["certificate_chain"], first[0]["certificate_chain"]);
    assert!(out[1]["certificate_chain"].is_string());
    assert_eq!(out[2]["certificate_chain"], out[1]["certificate_chain"]);
    assert!(out[3]["certificate_chain"].is_string());
    assert_ne!(out[3]["certificate_chain"], first[1]["certificate_chain"]);
    assert!(out[4]["certificate_chain"].is_string());
    assert_eq!(out[5]["error"]["status"], 400, "{}", out[5]);

    let certs: Value = app
        .get_as("/v1/certificates?device_id=m-1", &app.owner_token())
        .await
        .json()
        .await
        .unwrap();
    let mut status: Vec<&str> =
        certs["items"].as_array().unwrap().iter().map(|c| c["status"].as_str().unwrap()).collect();
    status.sort_unstable();
    assert_eq!(status, ["revoked", "valid"]);
    for id in ["m-0", "n-0"] {
        let certs: Value = app
            .get_as(&format!("/v1/certificates?device_id={id}"), &app.owner_token())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(certs["items"].as_array().unwrap().len(), 1, "{id}: retries issue nothing");
    }
    assert!(app.get_as("/v1/devices/n-2", &app.owner_token()).await.status() == 404);
    let mut registered = app.audited_registrations().await;
    // One row per stored registration (retries store nothing); within a batch, first
    // registrations are written before the others, so compare as a multiset.
    registered.sort_unstable();
    assert_eq!(registered, ["m-0", "m-1", "m-1", "n-0", "n-1"]);
}

/// One stream of several group commits (on PostgreSQL the chunks' transactions overlap): an
/// id repeated in a later chunk meets the earlier chunk's registration exactly as it would
/// line by line: the same CSR is a retry, a new CSR reissues and the later line wins; the audit
/// chain verifies.
#[tokio::test]
async fn repeats_across_the_chunks_of_one_stream_follow_the_stream_order() {
    let app = spawn_app().await;
    app.put_group("order", json!({"allowed_key_types": ["p256"]})).await;
    let id = |i: usize| format!("o-{i:03}");
    let csrs: Vec<String> = (0..700).map(|i| p256(&id(i))).collect();
    let reissued: Vec<String> = (0..20).map(|i| p256(&id(i))).collect();
    let line = |i: usize, csr: &str| json!({"registration_id": id(i), "csr": csr});
    // ids 0..700 once each; after every 240 new lines, ten retries of earlier ids (same CSR)
    // and ten reissues (new CSR) of others, so repeats land in later chunks than their firsts
    let mut lines = Vec::new();
    let mut repeats = Vec::new(); // (line index, id index, reissued?)
    for i in 0..700 {
        lines.push(line(i, &csrs[i]));
        if i % 240 == 239 && i < 700 - 10 {
            let round = i / 240;
            for k in 0..10 {
                let (retry, reissue) = (round * 10 + k + 100, round * 10 + k);
                repeats.push((lines.len(), retry, false));
                lines.push(line(retry, &csrs[retry]));
                repeats.push((lines.len(), reissue, true));
                lines.push(line(reissue, &reissued[reissue]));
            }
        }
    }
    let out = app.ndjson("order", &lines).await;
    assert_eq!(out.len(), lines.len());
    let first: std::collections::HashMap<String, String> = out
        .iter()
        .rev()
        .map(|l| {
            let chain = l["certificate_chain"].as_str().unwrap_or_else(|| panic!("{l}"));
            (l["device_id"].as_str().unwrap().to_owned(), chain.to_owned())
        })
        .collect();
    for (at, i, reissue) in repeats {
        let chain = out[at]["certificate_chain"].as_str().unwrap();
        if !reissue {
            assert_eq!(chain, first[&id(i)], "line {at}: a retry answers the first certificate");
            continue;
        }
        assert_ne!(chain, first[&id(i)], "line {at}: a new CSR is reissued");
        let certs: Value = app
            .get_as(&format!("/v1/certificates?device_id={}", id(i)), &app.owner_token())
            .await
            .json()
            .await
            .unwrap();
        let status_of = |serial: &str| {
            let items = certs["items"].as_array().unwrap();
            let item =
                items.iter().find(|c| c["serial"] == serial).unwrap_or_else(|| panic!("{certs}"));
            item["status"].as_str().unwrap().to_owned()
        };
        assert_eq!(status_of(&leaf_serial(chain)), "valid", "{}: the later line wins", id(i));
        assert_eq!(status_of(&leaf_serial(&first[&id(i)])), "revoked", "{}", id(i));
    }
    assert_eq!(app.device_certificates("o-").await, 700 + 20);
    let registered = app.audited_registrations().await;
    assert_eq!(registered.len(), 720, "one row per stored registration; retries store none");
}

/// Server backends of this database, other than `conn`'s and the one holding the audit head,
/// that are inside a transaction and wait for a lock or sit idle (waiting on something else).
async fn waiting(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() AND xact_start IS NOT NULL \
         AND query NOT LIKE '%audit_head FOR UPDATE%' \
         AND (wait_event_type = 'Lock' OR state = 'idle in transaction')",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

/// PostgreSQL: while one chunk of a stream waits for the audit-head lock, the next inserts its
/// rows. A writer that holds the head and then inserts one of those ids (as a single
/// registration does) closes a cycle; every wait in it must be one the database sees, so it
/// breaks the deadlock instead of everything hanging, and the stream still registers every line.
#[tokio::test]
async fn a_writer_holding_the_audit_head_cannot_hang_a_stream() {
    use sqlx::Connection as _;
    if !crate::helpers::postgres_only(
        "a_writer_holding_the_audit_head_cannot_hang_a_stream",
        "SQLite has one writer: chunks commit one after the other",
    ) {
        return;
    }
    let app = spawn_app().await;
    app.put_group("held", json!({"allowed_key_types": ["p256"]})).await;
    let url = app.data.database_url.clone().unwrap();
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut watcher = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT seq FROM audit_head FOR UPDATE").execute(&mut holder).await.unwrap();

    let (lines, rx) = tokio::sync::mpsc::channel::<String>(4);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|l| (Ok::<_, std::io::Error>(l), rx))
    });
    let request = app
        .client
        .post(app.url("/v1/enrollment-groups/held/registrations"))
        .header("Authorization", app.owner_token())
        .header("Content-Type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let response = tokio::spawn(async move { request.await.unwrap().text().await.unwrap() });
    let line = |id: &str| json!({"registration_id": id, "csr": p256(id)}).to_string() + "\n";
    lines.send(line("h-a")).await.unwrap();
    while waiting(&mut watcher).await < 1 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // the first chunk waits for the head; the second inserts h-b and then waits too
    lines.send(line("h-b")).await.unwrap();
    while waiting(&mut watcher).await < 2 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let insert = sqlx::query(
        "INSERT INTO registrations (registration_id, operation_id, created_at, updated_at) \
         VALUES ('h-b', 'held', 0, 0)",
    )
    .execute(&mut holder);
    let inserted = tokio::time::timeout(std::time::Duration::from_secs(20), insert)
        .await
        .expect("a deadlock the database cannot see: the writer, the stream and its chunks hang");
    eprintln!("the writer's insert: {inserted:?}");
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    drop(lines);
    let out: Vec<Value> =
        response.await.unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out.iter().all(|l| l["certificate_chain"].is_string()), "{out:?}");
    assert_eq!(app.device_certificates("h-").await, 2);
    assert_eq!(app.audited_registrations().await.len(), 2);
}

/// Batches racing over the same ids (on PostgreSQL their transactions really overlap, so a
/// bulk insert can be refused and its batch start over line by line): every id ends up
/// registered once, with one certificate, and every line gets that certificate.
#[tokio::test]
async fn racing_batches_over_the_same_ids_register_each_once() {
    let app = spawn_with(DataDir::init().await, &[("RUST_LOG", "service=debug")]).await;
    app.put_group("race", json!({"allowed_key_types": ["p256"]})).await;
    let lines: Vec<Value> = (0..40)
        .map(|i| {
            let id = format!("r-{i:02}");
            json!({"registration_id": id, "csr": p256(&id)})
        })
        .collect();
    // four clients, each sending the ids in a different rotation
    let rotated = |k: usize| {
        let mut mine = lines.clone();
        mine.rotate_left(k * 10);
        mine
    };
    let (l0, l1, l2, l3) = (rotated(0), rotated(1), rotated(2), rotated(3));
    let (a0, a1, a2, a3) = tokio::join!(
        app.ndjson("race", &l0),
        app.ndjson("race", &l1),
        app.ndjson("race", &l2),
        app.ndjson("race", &l3)
    );
    let answers = [a0, a1, a2, a3];
    let mut chain_of = std::collections::HashMap::new();
    for out in &answers {
        assert_eq!(out.len(), lines.len());
        for line in out {
            let id = line["device_id"].as_str().unwrap_or_else(|| panic!("{line}")).to_owned();
            let chain = line["certificate_chain"].as_str().unwrap().to_owned();
            assert_eq!(chain_of.entry(id.clone()).or_insert_with(|| chain.clone()), &chain, "{id}");
        }
    }
    assert_eq!(chain_of.len(), 40);
    assert_eq!(app.device_certificates("r-").await, 40, "one certificate per id");
    let verified: Value =
        app.get_as("/v1/audit/verify", &app.owner_token()).await.json().await.unwrap();
    assert_eq!(verified["ok"], true, "{verified}");
    // how often a refused bulk insert made a batch start over (usually > 0 on PostgreSQL)
    eprintln!("restarts: {}", app.logs().matches("bulk registration refused").count());
}

/// PUT is create-or-replace even when creates of the same new group race (on PostgreSQL
/// several transactions can find no row): every one succeeds and one group remains.
#[tokio::test]
async fn racing_creates_of_one_group_all_succeed() {
    let app = spawn_app().await;
    for round in 0..10 {
        let url = app.url(&format!("/v1/enrollment-groups/twin-{round}"));
        let tasks: Vec<_> = (0..8)
            .map(|k| {
                let (client, url, token) = (app.client.clone(), url.clone(), app.owner_token());
                tokio::spawn(async move {
                    let body = json!({"initial_tags": {"by": k}});
                    client.put(url).header("Authorization", token).json(&body).send().await
                })
            })
            .collect();
        for t in tasks {
            let status = t.await.unwrap().unwrap().status();
            assert!(status.is_success(), "round {round}: {status}");
        }
        let path = format!("/v1/enrollment-groups/twin-{round}");
        assert_eq!(app.get_as(&path, &app.owner_token()).await.status(), 200);
    }
}

#[tokio::test]
async fn one_time_tokens_work_once_and_only_for_enrollment() {
    let app = spawn_app().await;
    app.put_group("tok", json!({"attestation": {"type": "token"}})).await;
    let r = app
        .post_json(
            "/v1/enrollment-groups/tok/tokens",
            &app.owner_token(),
            json!({"count": 2, "ttl_secs": 600}),
        )
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let minted: Value = r.json().await.unwrap();
    let tokens: Vec<String> = minted["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tokens.len(), 2);
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tokens[0].split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256");
    let register = |tok: &str, id: &str| {
        app.client
            .post(app.url(&format!("/v1/registrations/{id}")))
            .header("Authorization", format!("Bearer {tok}"))
            .json(&json!({"registration_id": id, "csr": p256(id)}))
            .send()
    };
    assert_eq!(register(&tokens[0], "t-1").await.unwrap().status(), 201);
    assert_problem(register(&tokens[0], "t-1").await.unwrap(), 401).await;
    assert_problem(register(&tokens[0], "t-2").await.unwrap(), 401).await;
    // A bad CSR does not burn the token.
    let bad = app
        .client
        .post(app.url("/v1/registrations/t-2"))
        .header("Authorization", format!("Bearer {}", tokens[1]))
        .json(&json!({"csr": p256("other")}))
        .send()
        .await
        .unwrap();
    assert_problem(bad, 400).await;
    assert_eq!(register(&tokens[1], "t-2").await.unwrap().status(), 201);
    // Operator tokens are not enrollment tokens.
    app.client
        .put(app.url("/v1/operators/op"))
        .header("Authorization", app.owner_token())
        .json(&json!({"password": "long enough pw", "permissions": ["Enroll"]}))
        .send()
        .await
        .unwrap();
    let session: Value = app
        .client
        .post(app.url("/v1/auth/login"))
        .json(&json!({"username": "op", "password": "long enough pw"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_problem(register(session["access_token"].as_str().unwrap(), "t-3").await.unwrap(), 401)
        .await;
    assert_problem(app.get_as("/v1/audit", &format!("Bearer {}", tokens[1])).await, 401).await;
}

#[tokio::test]
async fn devices_self_register_with_group_derived_sas_tokens() {
    let app = spawn_app().await;
    let g = app
        .put_group("sym", json!({"attestation": {"type": "symmetric_key"}, "credential": "sas"}))
        .await;
    let group_key =
        ca::SasKey::from_base64(g["attestation"]["symmetric_key"]["primary_key"].as_str().unwrap())
            .unwrap();
    let derived = ca::sas::derive_device_key(&group_key, "sr-1");
    let token =
        ca::sas::SasToken::build("localhost/registrations/sr-1", &derived, now() + 60, None);
    let r = app
        .client
        .post(app.url("/v1/registrations/sr-1"))
        .header("Authorization", &token)
        .json(&json!({"registration_id": "sr-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["device_key"]["primary_key"], *derived.to_base64());
    let wrong =
        ca::sas::SasToken::build("localhost/registrations/sr-2", &derived, now() + 60, None);
    let r = app
        .client
        .post(app.url("/v1/registrations/sr-2"))
        .header("Authorization", &wrong)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_problem(r, 401).await;
    assert_eq!(app.get_as("/v1/devices/sr-2", &app.owner_token()).await.status(), 404);
}

#[tokio::test]
async fn dps_compatible_register_operation_and_status() {
    let app = spawn_app().await;
    let toml = std::fs::read_to_string(app.data.path().join("provisiond.toml")).unwrap();
    let scope = toml
        .lines()
        .find(|l| l.starts_with("id_scope"))
        .unwrap()
        .split('"')
        .nth(1)
        .unwrap()
        .to_owned();
    let g = app
        .put_group("dps", json!({"attestation": {"type": "symmetric_key"}, "credential": "both"}))
        .await;
    let group_key =
        ca::SasKey::from_base64(g["attestation"]["symmetric_key"]["primary_key"].as_str().unwrap())
            .unwrap();
    let derived = ca::sas::derive_device_key(&group_key, "dps-1");
    let token = ca::sas::SasToken::build(
        &format!("{scope}/registrations/dps-1"),
        &derived,
        now() + 60,
        Some("registration"),
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    let csr_der = ::pem::parse(p256("dps-1")).unwrap().into_contents();
    let url = app.url(&format!("/{scope}/registrations/dps-1/register?api-version=2019-03-31"));
    let r = app.client.put(&url).header("Authorization", &token)
        .json(&json!({"registrationId": "dps-1", "payload": {"model": "x"}, "csr": b64.encode(&csr_der)})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let op: Value = r.json().await.unwrap();
    assert_eq!(op["status"], "assigned");
    let st = &op["registrationState"];
    assert_eq!(st["deviceId"], "dps-1");
    assert_eq!(st["assignedHub"], "localhost");
    assert_eq!(st["payload"], json!({"model": "x"}));
    let chain = st["issuedCertificateChain"].as_array().unwrap();
    assert_eq!(chain.len(), 2);
    let leaf = b64.decode(chain[0].as_str().unwrap()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    assert_eq!(cert.subject().iter_common_name().next().unwrap().as_str().unwrap(), "dps-1");

    let op_id = op["operationId"].as_str().unwrap();
    let got: Value = app
        .client
        .get(app.url(&format!(
            "/{scope}/registrations/dps-1/operations/{op_id}?api-version=2019-03-31"
        )))
        .header("Authorization", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["registrationState"]["deviceId"], "dps-1");
    let status: Value = app
        .client
        .post(app.url(&format!("/{scope}/registrations/dps-1?api-version=2019-03-31")))
        .header("Authorization", &token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["deviceId"], "dps-1");

    let bad = ca::sas::SasToken::build(
        &format!("{scope}/registrations/dps-1"),
        &ca::SasKey::generate(),
        now() + 60,
        Some("registration"),
    );
    let r = app
        .client
        .put(&url)
        .header("Authorization", &bad)
        .json(&json!({"registrationId": "dps-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["errorCode"].is_u64()
            && e["trackingId"].is_string()
            && e["message"].is_string()
            && e["timestampUtc"].is_string(),
        "{e}"
    );
    let r = app
        .client
        .put(app.url("/0neFFFFFFFF/registrations/dps-1/register?api-version=2019-03-31"))
        .header("Authorization", &token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// A client that sends its whole batch before it reads a byte of the answer (Python
/// `requests`, like most HTTP libraries) gets every answer line: the server keeps reading the
/// body while answers wait (in memory, then a sealed spool file), and its memory stays bounded.
/// (Before the spool, this batch hung until the client's write timed out.)
#[tokio::test]
async fn a_half_duplex_client_gets_every_answer_of_a_large_batch() {
    let app = spawn_app().await;
    app.put_group("hd", json!({"attestation": {"type": "symmetric_key"}, "credential": "sas"}))
        .await;
    let n = 60_000;
    let script = r#"
import sys, requests
url, token, chain, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
# ~52 MB of body and ~35 MB of answers: far more than both sockets' buffers hold.
pad = "p" * 700
body = "".join('{"registration_id": "%s%06d", "tags": {"pad": "%s"}}\n' % ("h" * 120, i, pad)
               for i in range(n)).encode()
r = requests.post(url, data=body, verify=chain, timeout=120,
                  headers={"Authorization": token, "Content-Type": "application/x-ndjson"})
lines = r.text.splitlines()
ok = sum(1 for l in lines if '"device_key"' in l)
print(r.status_code, len(lines), ok)
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", script])
        .arg(app.url("/v1/enrollment-groups/hd/registrations"))
        .arg(app.owner_token())
        .arg(app.chain_path())
        .arg(n.to_string())
        .output()
        .await;
    let out = match out {
        Ok(o) if o.status.success() => o,
        other => {
            assert_ne!(
                std::env::var("PROVISIOND_REQUIRE_INTEROP").as_deref(),
                Ok("1"),
                "python3 with requests is needed: {other:?}"
            );
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(text, format!("200 {n} {n}"), "status, answer lines, registered");
    let status = std::fs::read_to_string(format!("/proc/{}/status", app.child.id())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(peak_kib < 400 * 1024, "server peak RSS {peak_kib} KiB stays bounded");
}

/// Two instances over one PostgreSQL re-register the same 200 ids at once, each with its own
/// keys (so every line is a first registration or a reprovisioning racing the other): no
/// answer is a 5xx (a deadlock victim is retried, or answered 409), and the chain verifies.
#[tokio::test]
async fn two_instances_reregistering_the_same_ids_never_answer_5xx() {
    if !crate::helpers::postgres_only(
        "two_instances_reregistering_the_same_ids_never_answer_5xx",
        "two instances need PostgreSQL",
    ) {
        return;
    }
    let app = spawn_app().await;
    app.put_group("race2", json!({"allowed_key_types": ["p256"]})).await;
    let sibling = app.sibling().await;
    let batch = |tag: &str| -> String {
        (0..200)
            .map(|i| {
                let id = format!("rr-{i:03}");
                let _ = tag;
                json!({"registration_id": id, "csr": p256(&id)}).to_string() + "\n"
            })
            .collect()
    };
    let send = |base: String, body: String| {
        let client = app.client.clone();
        let token = app.owner_token();
        async move {
            let r = client
                .post(format!("{base}/v1/enrollment-groups/race2/registrations"))
                .header("Authorization", token)
                .header("Content-Type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let text = r.text().await.unwrap();
            text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect::<Vec<_>>()
        }
    };
    for round in 0..2 {
        let (a, b) = tokio::join!(
            send(app.base.clone(), batch("a")),
            send(sibling.base.clone(), batch("b"))
        );
        for line in a.iter().chain(&b) {
            let status = line["error"]["status"].as_u64().unwrap_or(200);
            assert!(status < 500, "round {round}: {line}");
        }
        assert_eq!((a.len(), b.len()), (200, 200));
    }
    let verified: Value =
        app.get_as("/v1/audit/verify", &app.owner_token()).await.json().await.unwrap();
    assert_eq!(verified["ok"], true, "{verified}");
}
