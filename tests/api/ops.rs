use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn health_and_readiness_answer_ok_json() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz"] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body, serde_json::json!({"status": "ok"}));
    }
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_the_provisiond_prefix() {
    let app = spawn_app().await;
    app.client.get(app.url("/healthz")).send().await.unwrap();
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        text.contains(
            "provisiond_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"}"
        ),
        "{text}"
    );
    assert!(text.contains("provisiond_http_request_duration_seconds_bucket"), "{text}");
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        assert!(line.starts_with("provisiond_"), "unprefixed metric: {line}");
    }
}

#[tokio::test]
async fn openapi_document_is_served_as_json() {
    let app = spawn_app().await;
    let doc: serde_json::Value =
        app.client.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    // Valid per openapi-spec-validator (a tool nobody here wrote), when installed.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), doc.to_string()).unwrap();
    let script = format!(
        "import json; from openapi_spec_validator import validate; validate(json.load(open('{}')))",
        file.path().display()
    );
    match std::process::Command::new("python3").args(["-c", &script]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named") => {
            assert_ne!(
                std::env::var("PROVISIOND_REQUIRE_INTEROP").as_deref(),
                Ok("1"),
                "openapi-spec-validator missing"
            );
        }
        Ok(out) => panic!("invalid OpenAPI: {}", String::from_utf8_lossy(&out.stderr)),
        Err(_) => {}
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_problem_json() {
    let app = spawn_app().await;
    assert_problem(app.client.get(app.url("/no/such/route")).send().await.unwrap(), 404).await;
    assert_problem(app.client.delete(app.url("/healthz")).send().await.unwrap(), 405).await;
}

#[tokio::test]
async fn ca_chain_is_intermediate_then_root_and_crl_is_signed_der() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/v1/ca/chain")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/pem-certificate-chain");
    let pem = r.text().await.unwrap();
    assert_eq!(pem, std::fs::read_to_string(app.chain_path()).unwrap(), "same as D/ca-chain.pem");
    let certs = ::pem::parse_many(&pem).unwrap();
    assert_eq!(certs.len(), 2);
    let (_, inter) = x509_parser::parse_x509_certificate(certs[0].contents()).unwrap();
    let (_, root) = x509_parser::parse_x509_certificate(certs[1].contents()).unwrap();
    assert_eq!(root.subject(), root.issuer());
    assert_eq!(inter.issuer(), root.subject());
    assert_eq!(inter.basic_constraints().unwrap().unwrap().value.path_len_constraint, Some(0));

    let r = app.client.get(app.url("/v1/ca/crl")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/pkix-crl");
    let der = r.bytes().await.unwrap();
    use x509_parser::prelude::FromDer as _;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
    crl.verify_signature(inter.public_key()).unwrap();
    let pem = app.client.get(app.url("/v1/ca/crl?format=pem")).send().await.unwrap();
    assert_eq!(pem.headers()["content-type"], "application/x-pem-file");
    assert!(pem.text().await.unwrap().starts_with("-----BEGIN X509 CRL-----"));
    assert_problem(app.client.get(app.url("/v1/ca/crl?format=xml")).send().await.unwrap(), 400)
        .await;
    assert_problem(app.client.get(app.url("/v1/ca/crl/00ff")).send().await.unwrap(), 404).await;
}

/// One access line per request (JSON when asked), with route template, status, principal and
/// request id, and never a secret: not the token, its signature, or a key the answer carried.
#[tokio::test]
async fn every_request_writes_one_json_access_line_without_secrets() {
    let data = crate::helpers::DataDir::init().await;
    let app = crate::helpers::spawn_with(data, &[("PROVISIOND_LOG_FORMAT", "json")]).await;
    let owner = app.owner_token();
    let r = app
        .client
        .put(app.url("/v1/devices/log-1"))
        .header("Authorization", &owner)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let device: serde_json::Value = r.json().await.unwrap();
    let key = device["authentication"]["symmetric_key"]["primary_key"].as_str().unwrap().to_owned();
    app.client.get(app.url("/healthz")).send().await.unwrap();
    app.client
        .get(app.url("/v1/devices"))
        .header("Authorization", "SharedAccessSignature sr=x&sig=y&se=1&skn=nobody")
        .send()
        .await
        .unwrap();
    let logs = app.logs();
    let lines: Vec<serde_json::Value> =
        logs.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(!lines.is_empty(), "JSON log lines: {logs}");
    let access: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["target"] == "provisiond::access").collect();
    let put = access.iter().find(|l| l["request_id"] == request_id.as_str()).expect("PUT line");
    assert_eq!(put["route"], "/v1/devices/{id}");
    assert_eq!(put["method"], "PUT");
    assert_eq!(put["status"], 201);
    assert_eq!(put["principal"], "owner");
    assert!(access.iter().any(|l| l["route"] == "/healthz" && l["status"] == 200));
    assert!(access.iter().any(|l| l["route"] == "/v1/devices" && l["status"] == 401));
    let sig = owner.split("sig=").nth(1).unwrap().split('&').next().unwrap();
    for secret in [app.data.owner_key.as_str(), sig, key.as_str()] {
        assert!(!logs.contains(secret), "a secret reached the log");
    }
    assert!(!logs.contains('\u{1b}'), "no ANSI escape codes in a log file");
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "provisiond starting"
            || l["message"] == "provisiond starting"),
        "a start-up summary"
    );
}
