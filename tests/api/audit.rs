use crate::helpers::{command, spawn_app, store, TestApp};

async fn items(app: &TestApp) -> Vec<serde_json::Value> {
    let body: serde_json::Value =
        app.get_as("/v1/audit?limit=1000", &app.owner_token()).await.json().await.unwrap();
    body["items"].as_array().unwrap().clone()
}

async fn verify(app: &TestApp) -> serde_json::Value {
    app.get_as("/v1/audit/verify", &app.owner_token()).await.json().await.unwrap()
}

fn cli_verify(app: &TestApp) -> (i32, String) {
    let out = command(&app.data.database_url)
        .args(["audit", "verify", "--data-dir"])
        .arg(app.data.path())
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn exec(app: &TestApp, sql: &'static str) {
    let s = store(&app.data).await;
    let mut tx = s.begin().await.unwrap();
    sqlx::query(sql).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

async fn make_failures(app: &TestApp, n: usize) {
    for _ in 0..n {
        app.client.get(app.url("/v1/audit")).send().await.unwrap();
    }
}

#[tokio::test]
async fn failed_authentications_are_audited_without_secrets_and_the_chain_verifies() {
    let app = spawn_app().await;
    let bad = crate::helpers::policy_token("owner", &ca::SasKey::generate().to_base64());
    app.get_as("/v1/audit", &bad).await;
    let rows = items(&app).await;
    assert_eq!(rows[0]["action"], "system.init");
    let failure = rows.iter().find(|r| r["action"] == "auth.failure").expect("auth.failure row");
    assert_eq!(failure["outcome"], "failure");
    assert_eq!(failure["actor"], "owner");
    assert_eq!(failure["client_addr"], "127.0.0.1");
    assert_eq!(failure["hash"].as_str().unwrap().len(), 64);
    let sig = bad.split("sig=").nth(1).unwrap().split('&').next().unwrap();
    assert!(!serde_json::to_string(&rows).unwrap().contains(sig));
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["seq"], i as i64 + 1);
        if i > 0 {
            assert_eq!(r["prev_hash"], rows[i - 1]["hash"]);
        }
    }
    let page: serde_json::Value =
        app.get_as("/v1/audit?after=1&limit=1", &app.owner_token()).await.json().await.unwrap();
    assert_eq!(page["items"][0]["seq"], 2);
    assert_eq!(app.get_as("/v1/audit?limit=0", &app.owner_token()).await.status(), 400);
    assert_eq!(app.get_as("/v1/audit?limit=abc", &app.owner_token()).await.status(), 400);
    assert_eq!(
        verify(&app).await,
        serde_json::json!({"ok": true, "checked": rows.len(), "first_bad_seq": null})
    );
    let (code, out) = cli_verify(&app);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn an_edited_row_is_detected_by_rest_and_cli() {
    let app = spawn_app().await;
    make_failures(&app, 4).await;
    exec(&app, "UPDATE audit_log SET target = '/v1/other' WHERE seq = 3").await;
    let v = verify(&app).await;
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_bad_seq"], 3);
    let (code, out) = cli_verify(&app);
    assert_eq!(code, 1);
    assert!(out.contains("seq=3"), "{out}");
}

#[tokio::test]
async fn a_deleted_middle_row_is_detected() {
    let app = spawn_app().await;
    make_failures(&app, 4).await;
    exec(&app, "DELETE FROM audit_log WHERE seq = 2").await;
    let v = verify(&app).await;
    assert_eq!((v["ok"].clone(), v["first_bad_seq"].clone()), (false.into(), 2.into()));
}

#[tokio::test]
async fn reordered_rows_are_detected() {
    let app = spawn_app().await;
    make_failures(&app, 4).await;
    exec(&app, "UPDATE audit_log SET seq = -2 WHERE seq = 2").await;
    exec(&app, "UPDATE audit_log SET seq = 2 WHERE seq = 3").await;
    exec(&app, "UPDATE audit_log SET seq = 3 WHERE seq = -2").await;
    let v = verify(&app).await;
    assert_eq!((v["ok"].clone(), v["first_bad_seq"].clone()), (false.into(), 2.into()));
}

#[tokio::test]
async fn rows_cut_from_the_end_are_detected_and_checkpoints_are_signed() {
    let app = spawn_app().await;
    make_failures(&app, 3).await;
    let cp: serde_json::Value =
        app.get_as("/v1/audit/checkpoint", &app.owner_token()).await.json().await.unwrap();
    // The checkpoint is a compact ES256 JWS by the current intermediate over {seq, hash, at}.
    let chain = std::fs::read_to_string(app.chain_path()).unwrap();
    let inter_der = ::pem::parse_many(&chain).unwrap()[0].contents().to_vec();
    let (_, inter) = x509_parser::parse_x509_certificate(&inter_der).unwrap();
    let key = jsonwebtoken::DecodingKey::from_ec_der(&inter.public_key().subject_public_key.data);
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        cp["signature"].as_str().unwrap(),
        &key,
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims, serde_json::json!({"seq": cp["seq"], "hash": cp["hash"], "at": cp["at"]}));
    let last = cp["seq"].as_i64().unwrap();
    assert!(last >= 4);
    // Cutting the last row and rewinding the head by hand is still caught: the head would
    // need the previous row's hash, which the attacker can copy — so the checkpoint is what
    // proves the cut. Without rewinding the head, verify catches it directly.
    exec(&app, "DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)").await;
    let v = verify(&app).await;
    assert_eq!(v["ok"], false);
}

#[tokio::test]
async fn concurrent_writers_keep_one_linear_chain() {
    let app = spawn_app().await;
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let client = app.client.clone();
        let url = app.url("/v1/audit");
        tasks.push(tokio::spawn(async move { client.get(url).send().await.unwrap().status() }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    let rows = items(&app).await;
    assert!(rows.len() >= 41);
    let v = verify(&app).await;
    assert_eq!(v["ok"], true, "{v}");
}
