use serde_json::{json, Value};

use crate::helpers::{assert_problem, policy_token, spawn_app};

#[tokio::test]
async fn policy_crud_rotation_and_owner_protection() {
    let app = spawn_app().await;
    let owner = app.owner_token();
    let r = app
        .client
        .put(app.url("/v1/policies/line-1"))
        .header("Authorization", &owner)
        .json(&json!({"permissions": ["RegistryWrite", "AuditRead"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["permissions"], json!(["RegistryReadWrite", "AuditRead"]));
    let token = policy_token("line-1", p["primary_key"].as_str().unwrap());
    assert_eq!(app.get_as("/v1/audit", &token).await.status(), 200);
    assert_eq!(
        app.get_as("/v1/devices", &token).await.status(),
        200,
        "RegistryReadWrite implies RegistryRead"
    );
    assert_problem(app.get_as("/v1/policies/line-1", &token).await, 403).await;

    let rotated: Value = app
        .client
        .post(app.url("/v1/policies/line-1/keys/rotate"))
        .header("Authorization", &owner)
        .json(&json!({"key": "primary"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(rotated["primary_key"], p["primary_key"]);
    assert_problem(app.get_as("/v1/audit", &token).await, 401).await;
    let token2 = policy_token("line-1", rotated["secondary_key"].as_str().unwrap());
    assert_eq!(app.get_as("/v1/audit", &token2).await.status(), 200, "secondary still works");
    // Narrowing the permissions takes effect on the next request.
    let narrowed = app
        .client
        .put(app.url("/v1/policies/line-1"))
        .header("Authorization", &owner)
        .json(&json!({"permissions": ["AuditRead"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(narrowed.status(), 200);
    assert_problem(app.get_as("/v1/devices", &token2).await, 403).await;
    assert_eq!(app.get_as("/v1/audit", &token2).await.status(), 200);

    let r = app
        .client
        .delete(app.url("/v1/policies/line-1"))
        .header("Authorization", &owner)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_problem(app.get_as("/v1/audit", &token2).await, 401).await;

    let bad = app
        .client
        .put(app.url("/v1/policies/x"))
        .header("Authorization", &owner)
        .json(&json!({"permissions": ["Everything"]}))
        .send()
        .await
        .unwrap();
    assert_problem(bad, 400).await;
    let del_owner = app
        .client
        .delete(app.url("/v1/policies/owner"))
        .header("Authorization", &owner)
        .send()
        .await
        .unwrap();
    assert!([400, 403, 409].contains(&del_owner.status().as_u16()));
    let demote = app
        .client
        .put(app.url("/v1/policies/owner"))
        .header("Authorization", &owner)
        .json(&json!({"permissions": ["RegistryRead"]}))
        .send()
        .await
        .unwrap();
    assert!([400, 403, 409].contains(&demote.status().as_u16()));
    assert_eq!(app.get_as("/v1/policies/owner", &owner).await.status(), 200, "owner intact");
    let rows: Value = app.get_as("/v1/audit?limit=1000", &owner).await.json().await.unwrap();
    let actions: Vec<&str> =
        rows["items"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    for a in ["policy.create", "policy.keys.rotate", "policy.delete"] {
        assert!(actions.contains(&a), "{a} audited");
    }
}

#[tokio::test]
async fn scoped_policies_see_only_their_devices() {
    let app = spawn_app().await;
    let owner = app.owner_token();
    let p: Value = app.client.put(app.url("/v1/policies/plant-a")).header("Authorization", &owner)
        .json(&json!({"permissions": ["RegistryReadWrite"], "scope": {"device_id_prefix": "plant-a-"}}))
        .send().await.unwrap().json().await.unwrap();
    let scoped = policy_token("plant-a", p["primary_key"].as_str().unwrap());
    for id in ["plant-a-1", "plant-a-2", "plant-b-1"] {
        app.client
            .put(app.url(&format!("/v1/devices/{id}")))
            .header("Authorization", &owner)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
    }
    let list: Value = app.get_as("/v1/devices", &scoped).await.json().await.unwrap();
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["plant-a-1", "plant-a-2"]);
    assert_problem(app.get_as("/v1/devices/plant-b-1", &scoped).await, 404).await;
    let del = app
        .client
        .delete(app.url("/v1/devices/plant-b-1"))
        .header("Authorization", &scoped)
        .send()
        .await
        .unwrap();
    assert_problem(del, 404).await;
    let create = app
        .client
        .put(app.url("/v1/devices/plant-b-9"))
        .header("Authorization", &scoped)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_problem(create, 404).await;
    let ok = app
        .client
        .put(app.url("/v1/devices/plant-a-9"))
        .header("Authorization", &scoped)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201);
}

/// A group-scoped principal changes only devices its groups enrolled; for any other device
/// PUT, DELETE (even with a wrong If-Match: 404, not 412) and key rotation answer 404 and
/// change nothing. The scope is checked on the row the write transaction reads.
#[tokio::test]
async fn group_scoped_writes_are_404_outside_the_scope() {
    use crate::enrollment::p256;
    let app = spawn_app().await;
    let owner = app.owner_token();
    for g in ["line-1", "line-2"] {
        app.put_group(g, json!({"allowed_key_types": ["p256"], "credential": "both"})).await;
    }
    for (g, id) in [("line-1", "d-1"), ("line-2", "d-2")] {
        let r = app.enroll(g, json!({"registration_id": id, "csr": p256(id)})).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    let p: Value = app.client.put(app.url("/v1/policies/line-1-admin")).header("Authorization", &owner)
        .json(&json!({"permissions": ["RegistryRead", "RegistryReadWrite"], "scope": {"enrollment_group_ids": ["line-1"]}}))
        .send().await.unwrap().json().await.unwrap();
    let scoped = policy_token("line-1-admin", p["primary_key"].as_str().unwrap());
    let before: Value = app.get_as("/v1/devices/d-2", &owner).await.json().await.unwrap();

    let send =
        |method: reqwest::Method, path: &str, body: Option<Value>, if_match: Option<&str>| {
            let mut rb = app.client.request(method, app.url(path)).header("Authorization", &scoped);
            if let Some(b) = body {
                rb = rb.json(&b);
            }
            if let Some(tag) = if_match {
                rb = rb.header("If-Match", tag);
            }
            rb.send()
        };
    use reqwest::Method;
    assert_problem(send(Method::PUT, "/v1/devices/d-2", Some(json!({})), None).await.unwrap(), 404)
        .await;
    assert_problem(
        send(Method::DELETE, "/v1/devices/d-2", None, Some("\"nope\"")).await.unwrap(),
        404,
    )
    .await;
    let rotate =
        send(Method::POST, "/v1/devices/d-2/keys/rotate", Some(json!({"key": "primary"})), None);
    assert_problem(rotate.await.unwrap(), 404).await;
    assert_problem(
        send(Method::PUT, "/v1/devices/new-1", Some(json!({})), None).await.unwrap(),
        404,
    )
    .await;
    let after: Value = app.get_as("/v1/devices/d-2", &owner).await.json().await.unwrap();
    assert_eq!(before, after, "the out-of-scope device is unchanged");

    let rotate =
        send(Method::POST, "/v1/devices/d-1/keys/rotate", Some(json!({"key": "swap"})), None);
    assert_eq!(rotate.await.unwrap().status(), 200);
    let wrong_tag =
        send(Method::PUT, "/v1/devices/d-1", Some(json!({})), Some("\"nope\"")).await.unwrap();
    assert_problem(wrong_tag, 412).await;
}

/// Every route of the table × every default policy: allowed routes never answer 401/403,
/// refused ones answer 403 (the route table drives both).
#[tokio::test]
async fn default_policies_are_allowed_exactly_their_routes() {
    let app = spawn_app().await;
    let mut tokens = vec![("owner".to_string(), app.owner_token())];
    for name in ["registryRead", "registryReadWrite", "service", "device"] {
        tokens.push((name.to_string(), policy_token(name, &app.policy_key(name).await)));
    }
    let grants = |policy: &str| -> Vec<&str> {
        match policy {
            "owner" => vec!["*"],
            "registryRead" => vec!["RegistryRead"],
            "registryReadWrite" => vec!["RegistryRead", "RegistryReadWrite"],
            "service" => vec!["ServiceConnect"],
            "device" => vec!["DeviceConnect"],
            _ => vec![],
        }
    };
    for rule in service::http::ROUTES {
        let needed = rule.access.permissions();
        if needed.is_empty() {
            continue;
        }
        let path = rule
            .path
            .replace("{id}", "authz-probe")
            .replace("{name}", "authz-probe")
            .replace("{issuer_id}", "00");
        for (policy, token) in &tokens {
            let allowed =
                grants(policy).iter().any(|g| *g == "*" || needed.iter().any(|p| *g == p.as_str()));
            let method = reqwest::Method::from_bytes(rule.method.as_bytes()).unwrap();
            let r = app
                .client
                .request(method, app.url(&path))
                .header("Authorization", token)
                .header("Content-Type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            if allowed {
                assert!(
                    status != 401 && status != 403,
                    "{policy} {} {} → {status}",
                    rule.method,
                    rule.path
                );
            } else {
                assert_eq!(status, 403, "{policy} {} {}", rule.method, rule.path);
            }
        }
    }
}

#[tokio::test]
async fn operators_log_in_with_passwords_and_carry_their_permissions() {
    let app = spawn_app().await;
    let owner = app.owner_token();
    let r = app
        .client
        .put(app.url("/v1/operators/alice"))
        .header("Authorization", &owner)
        .json(&json!({"password": "correct horse battery staple", "permissions": ["AuditRead"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body = r.text().await.unwrap();
    assert!(!body.contains("correct horse"), "password never echoed");
    assert_problem(
        app.client
            .put(app.url("/v1/operators/bob"))
            .header("Authorization", &owner)
            .json(&json!({"password": "short", "permissions": []}))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;

    let login = |u: &str, p: &str| {
        app.client
            .post(app.url("/v1/auth/login"))
            .json(&json!({"username": u, "password": p}))
            .send()
    };
    let r = login("alice", "correct horse battery staple").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let session: Value = r.json().await.unwrap();
    let bearer = format!("Bearer {}", session["access_token"].as_str().unwrap());
    assert!(session["expires_at"].is_string());
    assert_eq!(app.get_as("/v1/audit", &bearer).await.status(), 200);
    assert_problem(app.get_as("/v1/devices", &bearer).await, 403).await;
    assert_problem(login("alice", "wrong password!").await.unwrap(), 401).await;
    assert_problem(login("nobody", "whatever123").await.unwrap(), 401).await;
    assert_problem(app.get_as("/v1/audit", "Bearer not.a.jwt").await, 401).await;

    let audit: Value = app.get_as("/v1/audit?limit=1000", &owner).await.json().await.unwrap();
    assert!(!audit.to_string().contains("correct horse"));
    assert!(!app.logs().contains("correct horse"));

    let r = app
        .client
        .delete(app.url("/v1/operators/alice"))
        .header("Authorization", &owner)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_problem(app.get_as("/v1/audit", &bearer).await, 401).await;
}

/// Generated from the route table: every protected route × every single-permission policy.
/// A route added without a table entry does not exist; one with an entry is covered here.
#[tokio::test]
async fn every_protected_route_times_every_permission() {
    let app = spawn_app().await;
    let all = [
        "RegistryRead",
        "RegistryReadWrite",
        "ServiceConnect",
        "DeviceConnect",
        "EnrollmentRead",
        "EnrollmentWrite",
        "Enroll",
        "BundleCreate",
        "CertificateAdmin",
        "AuditRead",
        "PolicyAdmin",
    ];
    let mut tokens = Vec::new();
    for perm in all {
        let name = format!("only-{perm}");
        let p: Value = app
            .client
            .put(app.url(&format!("/v1/policies/{name}")))
            .header("Authorization", app.owner_token())
            .json(&json!({"permissions": [perm]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push((perm, policy_token(&name, p["primary_key"].as_str().unwrap())));
    }
    let implied = |held: &str, needed: &str| {
        held == needed
            || (held == "RegistryReadWrite" && needed == "RegistryRead")
            || (held == "EnrollmentWrite" && needed == "EnrollmentRead")
    };
    let mut checked = 0;
    for rule in service::http::ROUTES {
        let needed = rule.access.permissions();
        if needed.is_empty() {
            continue;
        }
        let path = rule
            .path
            .replace("{id}", "authz-probe")
            .replace("{name}", "authz-probe")
            .replace("{registration_id}", "authz-probe")
            .replace("{serial}", "4abc");
        for (held, token) in &tokens {
            let method = reqwest::Method::from_bytes(rule.method.as_bytes()).unwrap();
            let status = app
                .client
                .request(method, app.url(&path))
                .header("Authorization", token)
                .header("Content-Type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            if needed.iter().any(|n| implied(held, n.as_str())) {
                assert!(
                    status != 401 && status != 403,
                    "{held} {} {} → {status}",
                    rule.method,
                    rule.path
                );
            } else {
                assert_eq!(status, 403, "{held} {} {}", rule.method, rule.path);
            }
            checked += 1;
        }
    }
    assert!(checked > 200, "{checked}");
}
