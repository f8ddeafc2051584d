//! Lists (API.md A29) and strict input (A30): every list pages in byte order and shows no
//! secret; unknown members and query parameters are refused with a 400 naming them.

use serde_json::{json, Value};

use crate::enrollment::p256;
use crate::helpers::{assert_problem, spawn_app, TestApp};

impl TestApp {
    async fn owner_send(&self, method: &str, path: &str, body: Option<Value>) -> reqwest::Response {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req =
            self.client.request(method, self.url(path)).header("Authorization", self.owner_token());
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    /// Every item of a list, following cursors with `limit`.
    async fn all_items(&self, path: &str, limit: usize) -> Vec<Value> {
        let (mut items, mut cursor) = (Vec::new(), None::<String>);
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let page = match &cursor {
                Some(c) => format!("{path}{sep}limit={limit}&cursor={c}"),
                None => format!("{path}{sep}limit={limit}"),
            };
            let r = self.owner_send("GET", &page, None).await;
            assert_eq!(r.status(), 200, "{page}");
            let v: Value = r.json().await.unwrap();
            let got = v["items"].as_array().unwrap();
            assert!(got.len() <= limit);
            items.extend(got.iter().cloned());
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return items,
            }
        }
    }
}

#[tokio::test]
async fn every_list_pages_in_byte_order_and_shows_no_secret() {
    let app = spawn_app().await;
    for id in ["Zeta", "alpha", "beta-1", "beta-2", "_x"] {
        let r = app
            .owner_send(
                "PUT",
                &format!("/v1/enrollment-groups/{id}"),
                Some(json!({"attestation": {"type": "symmetric_key"}, "credential": "sas"})),
            )
            .await;
        assert_eq!(r.status(), 201);
        let r = app
            .owner_send(
                "PUT",
                &format!("/v1/enrollments/{id}"),
                Some(json!({"attestation": {"type": "symmetric_key"}})),
            )
            .await;
        assert_eq!(r.status(), 201);
        let r = app
            .owner_send("PUT", &format!("/v1/policies/{id}"), Some(json!({"permissions": []})))
            .await;
        assert_eq!(r.status(), 201);
        let r = app
            .owner_send(
                "PUT",
                &format!("/v1/operators/{id}"),
                Some(json!({"password": "long enough pw", "permissions": ["AuditRead"]})),
            )
            .await;
        assert_eq!(r.status(), 201);
        app.owner_send("PUT", &format!("/v1/devices/{id}"), Some(json!({}))).await;
        let r = app
            .owner_send(
                "POST",
                "/v1/bundles",
                Some(json!({"device_id": id, "credential": "sas", "format": "json"})),
            )
            .await;
        assert_eq!(r.status(), 201);
    }
    let ids = |items: &[Value], member: &str| -> Vec<String> {
        items.iter().map(|i| i[member].as_str().unwrap().to_owned()).collect()
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    for (path, member, at_least) in [
        ("/v1/enrollment-groups", "enrollment_group_id", 5),
        ("/v1/enrollments", "registration_id", 5),
        ("/v1/policies", "name", 10),
        ("/v1/operators", "name", 5),
        ("/v1/bundles", "id", 5),
    ] {
        let items = app.all_items(path, 2).await;
        let got = ids(&items, member);
        assert!(got.len() >= at_least, "{path}: {got:?}");
        assert_eq!(got, sorted(got.clone()), "{path} in byte order");
        let text = Value::Array(items).to_string();
        for secret in ["primary_key", "secondary_key", "password", "token", "payload"] {
            assert!(!text.contains(secret), "{path} shows `{secret}`: {text}");
        }
    }
    let one: Value = app.owner_send("GET", "/v1/operators/alpha", None).await.json().await.unwrap();
    assert_eq!(one["permissions"], json!(["AuditRead"]));
    let pending = app.all_items("/v1/bundles?status=pending&device_id=alpha", 10).await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["device_id"], "alpha");
    assert_problem(app.owner_send("GET", "/v1/bundles?status=nope", None).await, 400).await;
    assert_problem(app.owner_send("GET", "/v1/policies?limit=0", None).await, 400).await;
    let devices = app.all_items("/v1/devices?prefix=beta", 10).await;
    assert_eq!(ids(&devices, "device_id"), ["beta-1", "beta-2"]);
}

#[tokio::test]
async fn unknown_members_and_query_parameters_are_refused_by_name() {
    let app = spawn_app().await;
    let r = app.owner_send("PUT", "/v1/devices/s-1", Some(json!({"staus": "disabled"}))).await;
    let body = assert_problem(r, 400).await;
    assert!(body["detail"].as_str().unwrap().contains("staus"), "{body}");
    assert_eq!(app.owner_send("GET", "/v1/devices/s-1", None).await.status(), 404);
    for (method, path, bad) in [
        ("PUT", "/v1/devices/s-2", json!({"authentication": {"type": "sas", "symetric_key": {}}})),
        ("PUT", "/v1/enrollment-groups/g-1", json!({"atestation": {"type": "token"}})),
        ("PUT", "/v1/enrollment-groups/g-1", json!({"attestation": {"type": "token", "x": 1}})),
        ("PUT", "/v1/enrollment-groups/g-1", json!({"enrollment_group_id": "other"})),
        ("PUT", "/v1/policies/p-1", json!({"permissions": [], "name": "other"})),
        ("POST", "/v1/devices/s-1/keys/rotate", json!({"key": "swap", "extra": true})),
        (
            "POST",
            "/v1/bundles",
            json!({"device_id": "x", "credential": "sas", "format": "json", "ttl": 5}),
        ),
    ] {
        assert_problem(app.owner_send(method, path, Some(bad.clone())).await, 400).await;
    }
    // Duplicate members.
    let r = app
        .client
        .put(app.url("/v1/devices/s-3"))
        .header("Authorization", app.owner_token())
        .header("Content-Type", "application/json")
        .body(r#"{"status": "enabled", "status": "disabled"}"#)
        .send()
        .await
        .unwrap();
    assert_problem(r, 400).await;
    // A GET body PUT back is accepted (read-only members ignored).
    app.owner_send("PUT", "/v1/devices/s-4", Some(json!({"tags": {"a": 1}}))).await;
    let got: Value = app.owner_send("GET", "/v1/devices/s-4", None).await.json().await.unwrap();
    assert_eq!(app.owner_send("PUT", "/v1/devices/s-4", Some(got)).await.status(), 200);
    let r = app
        .owner_send(
            "PUT",
            "/v1/enrollment-groups/g-2",
            Some(json!({"attestation": {"type": "symmetric_key"}, "initial_tags": {"x": 1}})),
        )
        .await;
    let group: Value = r.json().await.unwrap();
    let r = app.owner_send("PUT", "/v1/enrollment-groups/g-2", Some(group.clone())).await;
    assert_eq!(r.status(), 200);
    let again: Value = r.json().await.unwrap();
    for member in
        ["attestation", "credential", "initial_tags", "allowed_key_types", "reprovisioning"]
    {
        assert_eq!(group[member], again[member], "{member} round-trips");
    }
    // Unknown query parameters.
    let body = assert_problem(app.owner_send("GET", "/v1/devices?limt=5", None).await, 400).await;
    assert!(body["detail"].as_str().unwrap().contains("limt"));
    assert_problem(app.owner_send("GET", "/v1/devices/s-4?x=1", None).await, 400).await;
    assert_eq!(app.owner_send("GET", "/v1/devices?limit=5", None).await.status(), 200);
}

/// The console's reads (API.md A30): counts, a certificate by serial with its kind, kinds in
/// the list, issuers with their CRL state, audit filters.
#[tokio::test]
async fn console_reads_answer_counts_certificates_issuers_and_filtered_audit() {
    let app = spawn_app().await;
    app.put_group("g", json!({"attestation": {"type": "symmetric_key"}})).await;
    let r = app.enroll("g", json!({"registration_id": "c-1", "csr": p256("c-1")})).await;
    let chain = r.json::<Value>().await.unwrap()["certificate_chain"].as_str().unwrap().to_owned();
    let serial = crate::helpers::leaf_serial(&chain);
    app.owner_send("PUT", "/v1/devices/c-2", Some(json!({"status": "disabled"}))).await;
    let counts: Value =
        app.owner_send("GET", "/v1/devices/counts", None).await.json().await.unwrap();
    assert_eq!(counts, json!({"enabled": 1, "disabled": 1}));
    let cert: Value = app
        .owner_send("GET", &format!("/v1/certificates/{}", serial.to_uppercase()), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!((cert["kind"].as_str(), cert["device_id"].as_str()), (Some("device"), Some("c-1")));
    let instances = app.all_items("/v1/certificates?kind=instance", 100).await;
    assert!(!instances.is_empty(), "the server's own TLS certificate is listed as instance");
    assert!(app.all_items("/v1/certificates?kind=device", 100).await.len() == 1);
    assert_problem(app.owner_send("GET", "/v1/certificates/zz", None).await, 400).await;
    let issuers: Value = app.owner_send("GET", "/v1/ca/issuers", None).await.json().await.unwrap();
    let items = issuers["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["current"], true);
    assert_eq!(items[1]["root"], true);
    assert!(items[0]["subject"].as_str().unwrap().contains("Intermediate"));
    let audit: Value = app
        .owner_send(
            "GET",
            "/v1/audit?action=registration.create&target_prefix=c-&outcome=success",
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let rows = audit["items"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{audit}");
    assert_eq!(rows[0]["target"], "c-1");
    assert_problem(app.owner_send("GET", "/v1/audit?outcome=maybe", None).await, 400).await;
}

/// `PUT /v1/operators/{name}` with `If-None-Match: *` creates only: 201 once, then 412 with the
/// first operator's password and permissions untouched (API.md A30 "Lists").
#[tokio::test]
async fn an_operator_put_with_if_none_match_star_never_replaces_one() {
    let app = spawn_app().await;
    let put = |password: &'static str, permissions: Value| {
        let app = &app;
        async move {
            app.client
                .put(app.url("/v1/operators/carol"))
                .header("Authorization", app.owner_token())
                .header("If-None-Match", "*")
                .json(&json!({"password": password, "permissions": permissions}))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(put("first-password", json!(["AuditRead"])).await.status(), 201);
    assert_problem(put("second-password", json!(["PolicyAdmin"])).await, 412).await;
    let one: Value = app.owner_send("GET", "/v1/operators/carol", None).await.json().await.unwrap();
    assert_eq!(one["permissions"], json!(["AuditRead"]));
    let login = |password: &'static str| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/v1/auth/login"))
                .json(&json!({"username": "carol", "password": password}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(login("first-password").await, 200);
    assert_eq!(login("second-password").await, 401);
}
