//! Trust boundaries (API.md A24/A30): scope as a set of objects on every route, ownership on
//! every registration door, one-time tokens, disabled devices, operator sessions, bundles bound
//! to a device generation, revoked keys, certificate URLs.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::enrollment::p256;
use crate::helpers::{assert_problem, leaf_serial, now, policy_token, spawn_app, TestApp};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A self-registration SAS token for `id` signed with `key`.
fn self_token(id: &str, key: &ca::SasKey) -> String {
    ca::sas::SasToken::build(&format!("localhost/registrations/{id}"), key, now() + 60, None)
}

/// The permissions a scoped policy may hold (all but PolicyAdmin).
const SCOPED_PERMISSIONS: [&str; 8] = [
    "RegistryReadWrite",
    "ServiceConnect",
    "DeviceConnect",
    "EnrollmentWrite",
    "Enroll",
    "BundleCreate",
    "CertificateAdmin",
    "AuditRead",
];

impl TestApp {
    async fn send_as(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(method, self.url(path)).header("Authorization", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    async fn owner_get(&self, path: &str) -> Value {
        let r = self.get_as(path, &self.owner_token()).await;
        let status = r.status().as_u16();
        let mut v: Value = r.json().await.unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("__status".into(), json!(status));
        }
        v
    }

    /// A policy with `permissions` and `scope`, and its token.
    async fn scoped_policy(&self, name: &str, permissions: &[&str], scope: Value) -> String {
        let r = self
            .send_as(
                "PUT",
                &format!("/v1/policies/{name}"),
                &self.owner_token(),
                Some(json!({"permissions": permissions, "scope": scope})),
            )
            .await;
        assert!(r.status().is_success(), "policy {name}: {}", r.text().await.unwrap());
        let p: Value = r.json().await.unwrap();
        policy_token(name, p["primary_key"].as_str().unwrap())
    }

    /// Registers `id` through group `group` (JSON door, owner token); the answer.
    async fn register_in(&self, group: &str, id: &str) -> Value {
        let r = self.enroll(group, json!({"registration_id": id, "csr": p256(id)})).await;
        assert_eq!(r.status(), 201, "register {id}");
        r.json().await.unwrap()
    }

    async fn id_scope(&self) -> String {
        let toml = std::fs::read_to_string(self.data.path().join("provisiond.toml")).unwrap();
        toml.lines()
            .find(|l| l.starts_with("id_scope"))
            .unwrap()
            .split('"')
            .nth(1)
            .unwrap()
            .to_owned()
    }

    async fn mint(&self, group: &str, body: Value) -> Vec<String> {
        let r = self
            .send_as(
                "POST",
                &format!("/v1/enrollment-groups/{group}/tokens"),
                &self.owner_token(),
                Some(body),
            )
            .await;
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        v["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect()
    }

    /// `POST /v1/registrations/{id}` with `authorization` and `{"csr"}`.
    async fn self_register(&self, id: &str, authorization: &str, csr: &str) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/registrations/{id}")))
            .header("Authorization", authorization)
            .json(&json!({"csr": csr}))
            .send()
            .await
            .unwrap()
    }

    /// The DPS register route for `id` with `authorization` and a PEM CSR (sent as DER).
    async fn dps_register(&self, id: &str, authorization: &str, csr: &str) -> reqwest::Response {
        let scope = self.id_scope().await;
        let der = ::pem::parse(csr).unwrap().into_contents();
        self.client
            .put(self.url(&format!("/{scope}/registrations/{id}/register?api-version=2019-03-31")))
            .header("Authorization", authorization)
            .json(&json!({"registrationId": id, "csr": B64.encode(der)}))
            .send()
            .await
            .unwrap()
    }

    /// EST `simpleenroll` for `id` with a one-time token as the Basic password.
    async fn est_enroll(&self, id: &str, token: &str, csr: &str) -> reqwest::Response {
        let der = ::pem::parse(csr).unwrap().into_contents();
        self.client
            .post(self.url("/.well-known/est/simpleenroll"))
            .header("Authorization", format!("Basic {}", B64.encode(format!("{id}:{token}"))))
            .header("Content-Type", "application/pkcs10")
            .body(B64.encode(der))
            .send()
            .await
            .unwrap()
    }

    /// A DPS registration SAS token for `id` signed with `key`.
    async fn dps_token(&self, id: &str, key: &ca::SasKey) -> String {
        let scope = self.id_scope().await;
        ca::sas::SasToken::build(
            &format!("{scope}/registrations/{id}"),
            key,
            now() + 60,
            Some("registration"),
        )
    }

    /// Everything an owner sees of a device: the device (keys included), its certificates.
    async fn snapshot(&self, id: &str) -> Value {
        json!({
            "device": self.owner_get(&format!("/v1/devices/{id}")).await,
            "certificates": self.owner_get(&format!("/v1/certificates?device_id={id}")).await,
        })
    }
}

fn group_body() -> Value {
    json!({"attestation": {"type": "symmetric_key"}, "credential": "both",
           "allowed_key_types": ["p256"]})
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Prefix,
    Group,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// neither 401, 403 nor 404
    Works,
    NotFound,
    Forbidden,
}

/// The in-scope and out-of-scope objects of one principal's run.
struct Objects {
    in_cert: String,
    out_cert: String,
    in_bundle: String,
    out_bundle: String,
    in_device_key: ca::SasKey,
    out_device_key: ca::SasKey,
}

/// One row of the scope matrix.
struct Case {
    method: &'static str,
    pattern: &'static str,
    /// path and body for the in-scope (true) or out-of-scope (false) object
    call: fn(&Objects, bool) -> (String, Option<Value>),
    /// what the in-scope call answers for this kind of principal
    in_scope: fn(Kind) -> Expect,
    /// what the out-of-scope call answers
    out_scope: Expect,
}

fn works(_: Kind) -> Expect {
    Expect::Works
}
fn forbidden(_: Kind) -> Expect {
    Expect::Forbidden
}
fn group_objects(k: Kind) -> Expect {
    if k == Kind::Prefix {
        Expect::NotFound
    } else {
        Expect::Works
    }
}
/// Changing a group (or minting unbound tokens): a scope with a prefix may not (its keys and CAs
/// register ids outside the prefix).
fn group_writes(k: Kind) -> Expect {
    match k {
        Kind::Prefix => Expect::NotFound,
        Kind::Group => Expect::Works,
        Kind::Both => Expect::Forbidden,
    }
}
fn individual_enrollments(k: Kind) -> Expect {
    if k == Kind::Prefix {
        Expect::Works
    } else {
        Expect::NotFound
    }
}

fn dev(o: bool) -> &'static str {
    if o {
        "p-dev"
    } else {
        "q-dev"
    }
}
fn grp(o: bool) -> &'static str {
    if o {
        "g-in"
    } else {
        "g-out"
    }
}

/// Every protected route, in the order the matrix runs them (destructive ones last).
fn cases() -> Vec<Case> {
    vec![
        Case {
            method: "GET",
            pattern: "/v1/devices/{id}",
            call: |_, i| (format!("/v1/devices/{}", dev(i)), None),
            in_scope: works,
            out_scope: Expect::NotFound,
        },
        Case {
            method: "PUT",
            pattern: "/v1/devices/{id}",
            call: |_, i| (format!("/v1/devices/{}", dev(i)), Some(json!({"tags": {"t": 1}}))),
            in_scope: works,
            out_scope: Expect::NotFound,
        },
        Case {
            method: "POST",
            pattern: "/v1/devices/{id}/keys/rotate",
            call: |_, i| {
                (format!("/v1/devices/{}/keys/rotate", dev(i)), Some(json!({"key": "swap"})))
            },
            in_scope: works,
            out_scope: Expect::NotFound,
        },
        Case {
            method: "POST",
            pattern: "/v1/devices/{id}/certificates",
            call: |_, i| {
                (format!("/v1/devices/{}/certificates", dev(i)), Some(json!({"csr": p256(dev(i))})))
            },
            in_scope: works,
            out_scope: Expect::NotFound,
        },
        Case {
            method: "POST",
            pattern: "/v1/devices/{id}/sas-token",
            call: |_, i| {
                (format!("/v1/devices/{}/sas-token", dev(i)), Some(json!({"ttl_secs": 60})))
            },
            in_scope: works,
            out_scope: Expect::NotFound,
        },
        Case {
            method: "GET",
            pattern: "/v1/devices",
            call: |_, _| ("/v1/devices?limit=1000".into(), None),
            in_scope: works,
            out_scope: Expect::Works,
        },
        Case {
            method: "GET",
            pattern: "/v1/certificates",
            call: |_, _| ("/v1/certificates?limit=1000".into(), None),
            in_scope: works,
            out_scope: Expect::Works,
        },
        Case {
            method: "POST",
            pattern: "/v1/sas/verify",
            call: |o, i| {
                let (id, key) =
                    if i { ("p-dev", &o.in_device_key) } else { ("q-dev", &o.out_device_key) };
                let token = ca::sas::SasToken::build(
                    &format!("localhost/devices/{id}"),
                    key,
                    now() + 60,
                    None,
                );
                ("/v1/sas/verify".into(), Some(json!({"token": token})))
            },
            in_scope: works,
            out_scope: Expect::Works,
        },
        Case {
            method: "GET",
            pattern: "/v1/enrollment-groups/{id}",
            call: |_, i| (format!("/v1/enrollment-groups/{}", grp(i)), None),
            in_scope: group_objects,
            out_scope: Expect::NotFound,
        },
        Case {
            method: "PUT",
            pattern: "/v1/enrollment-groups/{id}",
            call: |_, i| (format!("/v1/enrollment-groups/{}", grp(i)), Some(group_body())),
            in_scope: group_writes,
            out_scope: Expect::NotFound,
        },
        Case {
            method: "POST",
            pattern: "/v1/enrollment-groups/{id}/tokens",
            call: |_, i| {
                (format!("/v1/enrollment-groups/{}/tokens", grp(i)), Some(json!({"count": 1})))
            },
            in_scope: group_writes,
            out_scope: Expect::NotFound,
        },
        Case {
            method: "POST",
            pattern: "/v1/enrollment-groups/{id}/registrations",
            call: |_, i| {
                let id = if i { "p-new" } else { "q-new" };
                (
                    format!("/v1/enrollment-groups/{}/registrations", grp(i)),
                    Some(json!({"registration_id": id, "csr": p256(id)})),
                )
            },
            in_scope: works,
            out_scope: Expect::NotFound,
        },
        Case {
            method: "GET",
            pattern: "/v1/enrollments/{registration_id}",
            call: |_, i| (format!("/v1/enrollments/{}", if i { "p-ind" } else { "q-ind" }), None),
            in_scope: individual_enrollments,
            out_scope: Expect::NotFound,
        },
        Case {
            method: "PUT",
            pattern: "/v1/enrollments/{registration_id}",
            call: |_, i| {
                (
                    format!("/v1/enrollments/{}", if i { "p-ind" } else { "q-ind" }),
                    Some(json!({"attestation": {"type": "symmetric_key"}})),
                )
            },
            in_scope: individual_enrollments,
            out_scope: Expect::NotFound,
        },
        Case {
            method: "POST",
            pattern: "/v1/bundles",
            call: |_, i| {
                (
                    "/v1/bundles".into(),
                    Some(json!({"device_id": dev(i), "credential": "x509", "format": "json"})),
                )
            },
            in_scope: works,
            out_scope: Expect::NotFound,
        },
        Case {
            method: "GET",
            pattern: "/v1/bundles/{id}",
            call: |o, i| {
                (format!("/v1/bundles/{}", if i { &o.in_bundle } else { &o.out_bundle }), None)
            },
            in_scope: works,
            out_scope: Expect::NotFound,
        },
        Case {
            method: "GET",
            pattern: "/v1/devices/counts",
            call: |_, _| ("/v1/devices/counts".into(), None),
            in_scope: works,
            out_scope: Expect::Works,
        },
        Case {
            method: "GET",
            pattern: "/v1/certificates/{serial}",
            call: |o, i| {
                (format!("/v1/certificates/{}", if i { &o.in_cert } else { &o.out_cert }), None)
            },
            in_scope: works,
            out_scope: Expect::NotFound,
        },
        Case {
            method: "GET",
            pattern: "/v1/ca/issuers",
            call: |_, _| ("/v1/ca/issuers".into(), None),
            in_scope: forbidden,
            out_scope: Expect::Forbidden,
        },
        Case {
            method: "GET",
            pattern: "/v1/enrollment-groups",
            call: |_, _| ("/v1/enrollment-groups?limit=1000".into(), None),
            in_scope: works,
            out_scope: Expect::Works,
        },
        Case {
            method: "GET",
            pattern: "/v1/enrollments",
            call: |_, _| ("/v1/enrollments?limit=1000".into(), None),
            in_scope: works,
            out_scope: Expect::Works,
        },
        Case {
            method: "GET",
            pattern: "/v1/bundles",
            call: |_, _| ("/v1/bundles?limit=1000".into(), None),
            in_scope: works,
            out_scope: Expect::Works,
        },
        Case {
            method: "GET",
            pattern: "/v1/policies",
            call: |_, _| ("/v1/policies".into(), None),
            in_scope: forbidden,
            out_scope: Expect::Forbidden,
        },
        Case {
            method: "GET",
            pattern: "/v1/operators",
            call: |_, _| ("/v1/operators".into(), None),
            in_scope: forbidden,
            out_scope: Expect::Forbidden,
        },
        Case {
            method: "GET",
            pattern: "/v1/operators/{name}",
            call: |_, _| ("/v1/operators/x".into(), None),
            in_scope: forbidden,
            out_scope: Expect::Forbidden,
        },
        // PolicyAdmin cannot be held by a scoped policy; CA-level and audit routes are for
        // unscoped principals only.
        Case {
            method: "PUT",
            pattern: "/v1/policies/{name}",
            call: |_, _| ("/v1/policies/x".into(), Some(json!({"permissions": []}))),
            in_scope: forbidden,
            out_scope: Expect::Forbidden,
        },
        Case {
            method: "GET",
            pattern: "/v1/policies/{name}",
            call: |_, _| ("/v1/policies/owner".into(), None),
            in_scope: forbidden,
            out_scope: Expect::Forbidden,
        },
        Case {
            method: "DELETE",
            pattern: "/v1/policies/{name}",
            call: |_, _| ("/v1/policies/x".into(), None),
            in_scope: forbidden,
            out_scope: Expect::Forbidden,
        },
        Case {
            method: "POST",
            pattern: "/v1/policies/{name}/keys/rotate",
            call: |_, _| ("/v1/policies/owner/keys/rotate".into(), Some(json!({"key": "swap"}))),
            in_scope: forbidden,
            out_scope: Expect::Forbidden,
        },
        Case {
            method: "PUT",
            pattern: "/v1/operators/{name}",
            call: |_, _| {
                (
                    "/v1/operators/x".into(),
                    Some(json!({"password": "long enough pw", "permissions": []})),
                )
            },
            in_scope: forbidden,
            out_scope: Expect::Forbidden,
        },
        Case {
            method: "DELETE",
            pattern: "/v1/operators/{name}",
            call: |_, _| ("/v1/operators/x".into(), None),
            in_scope: forbidden,
            out_scope: Expect::Forbidden,
        },
        Case {
            method: "POST",
            pattern: "/v1/ca/intermediate/rotate",
            call: |_, _| ("/v1/ca/intermediate/rotate".into(), Some(json!({}))),
            in_scope: forbidden,
            out_scope: Expect::Forbidden,
        },
        Case {
            method: "POST",
            pattern: "/v1/ca/server-certificates",
            call: |_, _| {
                (
                    "/v1/ca/server-certificates".into(),
                    Some(json!({"csr": p256("broker"), "dns_names": ["broker"]})),
                )
            },
            in_scope: forbidden,
            out_scope: Expect::Forbidden,
        },
        Case {
            method: "GET",
            pattern: "/v1/audit",
            call: |_, _| ("/v1/audit".into(), None),
            in_scope: forbidden,
            out_scope: Expect::Forbidden,
        },
        Case {
            method: "GET",
            pattern: "/v1/audit/verify",
            call: |_, _| ("/v1/audit/verify".into(), None),
            in_scope: forbidden,
            out_scope: Expect::Forbidden,
        },
        Case {
            method: "GET",
            pattern: "/v1/audit/checkpoint",
            call: |_, _| ("/v1/audit/checkpoint".into(), None),
            in_scope: forbidden,
            out_scope: Expect::Forbidden,
        },
        // Destructive: last.
        Case {
            method: "POST",
            pattern: "/v1/certificates/{serial}/revoke",
            call: |o, i| {
                (
                    format!("/v1/certificates/{}/revoke", if i { &o.in_cert } else { &o.out_cert }),
                    Some(json!({})),
                )
            },
            in_scope: works,
            out_scope: Expect::NotFound,
        },
        Case {
            method: "DELETE",
            pattern: "/v1/bundles/{id}",
            call: |o, i| {
                (format!("/v1/bundles/{}", if i { &o.in_bundle } else { &o.out_bundle }), None)
            },
            in_scope: works,
            out_scope: Expect::NotFound,
        },
        Case {
            method: "DELETE",
            pattern: "/v1/enrollments/{registration_id}",
            call: |_, i| (format!("/v1/enrollments/{}", if i { "p-ind" } else { "q-ind" }), None),
            in_scope: individual_enrollments,
            out_scope: Expect::NotFound,
        },
        Case {
            method: "DELETE",
            pattern: "/v1/devices/{id}",
            call: |_, i| (format!("/v1/devices/{}", dev(i)), None),
            in_scope: works,
            out_scope: Expect::NotFound,
        },
        Case {
            method: "DELETE",
            pattern: "/v1/enrollment-groups/{id}",
            call: |_, i| (format!("/v1/enrollment-groups/{}", grp(i)), None),
            in_scope: group_objects,
            out_scope: Expect::NotFound,
        },
    ]
}

/// Objects in and out of every kind of scope: `p-dev` (prefix `p-`, owned by group `g-in`) and
/// `q-dev` (owned by `g-out`), their certificates and bundles, individual enrollments `p-ind`
/// and `q-ind`.
async fn arrange(app: &TestApp) -> Objects {
    app.put_group("g-in", group_body()).await;
    app.put_group("g-out", group_body()).await;
    let p = app.register_in("g-in", "p-dev").await;
    let q = app.register_in("g-out", "q-dev").await;
    for ind in ["p-ind", "q-ind"] {
        let r = app
            .send_as(
                "PUT",
                &format!("/v1/enrollments/{ind}"),
                &app.owner_token(),
                Some(json!({"attestation": {"type": "symmetric_key"}})),
            )
            .await;
        assert_eq!(r.status(), 201);
    }
    let bundle = |id: &'static str| async move {
        let r = app
            .send_as(
                "POST",
                "/v1/bundles",
                &app.owner_token(),
                Some(json!({"device_id": id, "credential": "x509", "format": "json"})),
            )
            .await;
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
    };
    let key = |v: &Value| ca::SasKey::from_base64(v["device_key"]["primary_key"].as_str().unwrap());
    Objects {
        in_cert: leaf_serial(p["certificate_chain"].as_str().unwrap()),
        out_cert: leaf_serial(q["certificate_chain"].as_str().unwrap()),
        in_bundle: bundle("p-dev").await,
        out_bundle: bundle("q-dev").await,
        in_device_key: key(&p).unwrap(),
        out_device_key: key(&q).unwrap(),
    }
}

/// What out-of-scope objects look like to the owner: must not change.
async fn out_of_scope_state(app: &TestApp, o: &Objects) -> Value {
    json!({
        "device": app.owner_get("/v1/devices/q-dev").await,
        "certificates": app.owner_get("/v1/certificates?device_id=q-dev").await,
        "group": app.owner_get("/v1/enrollment-groups/g-out").await,
        "enrollment": app.owner_get("/v1/enrollments/q-ind").await,
        "bundle": app.owner_get(&format!("/v1/bundles/{}", o.out_bundle)).await,
    })
}

fn classify(status: u16) -> Expect {
    match status {
        404 => Expect::NotFound,
        403 => Expect::Forbidden,
        _ => Expect::Works,
    }
}

/// Generated from the route table: every protected route × a principal scoped by prefix, one
/// by group and one by both, against an in-scope and an out-of-scope object. The in-scope call
/// works, the out-of-scope call answers 404 (403 for CA-level and audit routes) and changes
/// nothing; lists and introspection show nothing out of scope. A protected route without a row
/// here fails the test.
#[tokio::test]
async fn scope_matrix_every_route_in_and_out_of_scope() {
    let table = cases();
    for rule in service::http::ROUTES {
        if rule.access.permission().is_none() {
            continue;
        }
        assert!(
            table.iter().any(|c| c.method == rule.method && c.pattern == rule.path),
            "{} {} has no row in the scope matrix",
            rule.method,
            rule.path
        );
    }
    for kind in [Kind::Prefix, Kind::Group, Kind::Both] {
        let app = spawn_app().await;
        let objects = arrange(&app).await;
        let scope = match kind {
            Kind::Prefix => json!({"device_id_prefix": "p-"}),
            Kind::Group => json!({"enrollment_group_ids": ["g-in"]}),
            Kind::Both => json!({"device_id_prefix": "p-", "enrollment_group_ids": ["g-in"]}),
        };
        let token = app.scoped_policy("scoped", &SCOPED_PERMISSIONS, scope).await;
        let before = out_of_scope_state(&app, &objects).await;
        for case in &table {
            for in_scope in [false, true] {
                let (path, body) = (case.call)(&objects, in_scope);
                let r = app.send_as(case.method, &path, &token, body).await;
                let status = r.status().as_u16();
                let text = r.text().await.unwrap();
                let want = if in_scope { (case.in_scope)(kind) } else { case.out_scope };
                assert_eq!(
                    classify(status),
                    want,
                    "{kind:?} {} {path} (in scope: {in_scope}) → {status} {text}",
                    case.method
                );
                assert!(
                    status < 500 && status != 401,
                    "{kind:?} {} {path} → {status}",
                    case.method
                );
                match (case.pattern, in_scope) {
                    (
                        "/v1/devices"
                        | "/v1/certificates"
                        | "/v1/bundles"
                        | "/v1/enrollment-groups"
                        | "/v1/enrollments",
                        _,
                    ) => {
                        for out in ["q-dev", "g-out", "q-ind", &objects.out_bundle] {
                            assert!(!text.contains(out), "{kind:?} {path} lists {out}: {text}");
                        }
                    }
                    ("/v1/devices/counts", _) => {
                        let v: Value = serde_json::from_str(&text).unwrap();
                        // p-dev and p-new (registered above), never q-dev
                        assert_eq!(v, json!({"enabled": 2, "disabled": 0}), "{kind:?}: {v}");
                    }
                    ("/v1/sas/verify", false) => {
                        let v: Value = serde_json::from_str(&text).unwrap();
                        assert_eq!(v["valid"], false);
                        assert_eq!(v["reason"], "unknown device", "as unknown: {v}");
                    }
                    ("/v1/sas/verify", true) => {
                        let v: Value = serde_json::from_str(&text).unwrap();
                        assert_eq!(v["valid"], true, "{kind:?}: {v}");
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(before, out_of_scope_state(&app, &objects).await, "{kind:?} changed nothing");
    }
}

#[tokio::test]
async fn scopes_that_name_nothing_or_hold_policy_admin_are_refused() {
    let app = spawn_app().await;
    for (scope, perms) in [
        (json!({}), json!(["RegistryRead"])),
        (json!({"device_id_prefix": "a"}), json!(["PolicyAdmin"])),
    ] {
        let r = app
            .send_as(
                "PUT",
                "/v1/policies/bad",
                &app.owner_token(),
                Some(json!({"permissions": perms, "scope": scope})),
            )
            .await;
        assert_problem(r, 400).await;
    }
}

/// A device of each owner kind; every enrollment-authenticated door of group `g1` may
/// re-provision only the one `g1` owns, and changes nothing of the others.
#[tokio::test]
async fn registration_doors_reprovision_only_what_their_enrollment_owns() {
    let app = spawn_app().await;
    let g1 = app.put_group("g1", group_body()).await;
    app.put_group("g2", group_body()).await;
    let g1_key = ca::SasKey::from_base64(
        g1["attestation"]["symmetric_key"]["primary_key"].as_str().unwrap(),
    )
    .unwrap();
    // Owners: admin, another group, another individual enrollment, g1 itself.
    let r = app.send_as("PUT", "/v1/devices/v-admin", &app.owner_token(), Some(json!({}))).await;
    assert_eq!(r.status(), 201);
    app.register_in("g2", "v-group").await;
    let ind: Value = app
        .send_as(
            "PUT",
            "/v1/enrollments/v-ind",
            &app.owner_token(),
            Some(json!({"attestation": {"type": "symmetric_key"}, "credential": "both"})),
        )
        .await
        .json()
        .await
        .unwrap();
    let ind_key = ca::SasKey::from_base64(
        ind["attestation"]["symmetric_key"]["primary_key"].as_str().unwrap(),
    )
    .unwrap();
    let r = app.self_register("v-ind", &self_token("v-ind", &ind_key), &p256("v-ind")).await;
    assert_eq!(r.status(), 201, "individual enrollment registers its own id");
    app.register_in("g1", "v-same").await;

    for (victim, allowed) in
        [("v-admin", false), ("v-group", false), ("v-ind", false), ("v-same", true)]
    {
        let est_token = app.mint("g1", json!({"registration_ids": [victim]})).await.remove(0);
        let derived = ca::sas::derive_device_key(&g1_key, victim);
        for door in ["json", "ndjson", "self", "dps", "est"] {
            let before = app.snapshot(victim).await;
            let csr = p256(victim);
            let status = match door {
                "json" => {
                    app.enroll("g1", json!({"registration_id": victim, "csr": csr})).await.status()
                }
                "ndjson" => {
                    let lines =
                        app.ndjson("g1", &[json!({"registration_id": victim, "csr": csr})]).await;
                    let line = &lines[0];
                    if line.get("error").is_some() {
                        reqwest::StatusCode::from_u16(
                            line["error"]["status"].as_u64().unwrap() as u16
                        )
                        .unwrap()
                    } else {
                        reqwest::StatusCode::CREATED
                    }
                }
                "self" => {
                    app.self_register(victim, &self_token(victim, &derived), &csr).await.status()
                }
                "dps" => {
                    let t = app.dps_token(victim, &derived).await;
                    app.dps_register(victim, &t, &csr).await.status()
                }
                _ => app.est_enroll(victim, &est_token, &csr).await.status(),
            };
            if allowed {
                assert!(status.is_success(), "{door} re-provisions its own {victim}: {status}");
            } else {
                assert_eq!(status, 409, "{door} on {victim}");
                assert_eq!(before, app.snapshot(victim).await, "{door} changed {victim}");
            }
        }
    }
}

/// An unbound one-time token registers only new ids; a bound one only its id; a spent one
/// authenticates only status reads of the id it registered.
#[tokio::test]
async fn one_time_tokens_register_new_ids_or_their_bound_id_only() {
    let app = spawn_app().await;
    let scope = app.id_scope().await;
    app.put_group("tok", json!({"attestation": {"type": "token"}})).await;
    let tokens = app.mint("tok", json!({"count": 4})).await;
    let register = |tok: String, id: &'static str| {
        app.client
            .post(app.url(&format!("/v1/registrations/{id}")))
            .header("Authorization", format!("Bearer {tok}"))
            .json(&json!({"csr": p256(id)}))
            .send()
    };
    let first: Value = register(tokens[0].clone(), "t-1").await.unwrap().json().await.unwrap();
    let serial = leaf_serial(first["certificate_chain"].as_str().unwrap());
    let before = app.snapshot("t-1").await;
    // A second token against the registered id: 409 on every door, nothing changed.
    assert_problem(register(tokens[1].clone(), "t-1").await.unwrap(), 409).await;
    let csr = p256("t-1");
    let dps = app.dps_register("t-1", &format!("Bearer {}", tokens[1]), &csr).await;
    assert_eq!(dps.status(), 409);
    let est = app.est_enroll("t-1", &tokens[1], &csr).await;
    assert_eq!(est.status(), 409);
    assert_eq!(before, app.snapshot("t-1").await);
    let certs = app.owner_get("/v1/certificates?device_id=t-1").await;
    assert_eq!(certs["items"][0]["serial"], serial);
    assert_eq!(certs["items"][0]["status"], "valid", "the first device's certificate is good");
    // The refused attempts did not spend the token: it still registers a new id.
    assert_eq!(register(tokens[1].clone(), "t-2").await.unwrap().status(), 201);

    // A spent token reads the status of its own id only.
    let status_of = |tok: String, id: &'static str| {
        app.client
            .post(app.url(&format!("/{scope}/registrations/{id}?api-version=2019-03-31")))
            .header("Authorization", format!("Bearer {tok}"))
            .json(&json!({}))
            .send()
    };
    assert_eq!(status_of(tokens[0].clone(), "t-1").await.unwrap().status(), 200);
    assert_eq!(status_of(tokens[0].clone(), "t-2").await.unwrap().status(), 401);
    assert_eq!(status_of(tokens[2].clone(), "t-1").await.unwrap().status(), 401, "unspent");

    // Bound tokens: minted for one id, refused for any other; they may re-provision it.
    let bound = app.mint("tok", json!({"registration_ids": ["t-1", "t-3"]})).await;
    assert_problem(register(bound[1].clone(), "t-4").await.unwrap(), 401).await;
    assert_eq!(register(bound[0].clone(), "t-1").await.unwrap().status(), 201);
    assert_eq!(register(bound[1].clone(), "t-3").await.unwrap().status(), 201);
    for bad in [
        json!({"registration_ids": []}),
        json!({"registration_ids": ["a", "a"]}),
        json!({"registration_ids": ["a"], "count": 2}),
        json!({"registration_ids": ["a b"]}),
    ] {
        let r = app
            .send_as("POST", "/v1/enrollment-groups/tok/tokens", &app.owner_token(), Some(bad))
            .await;
        assert_problem(r, 400).await;
    }
}

/// A disabled device gets nothing on any route, stays disabled, and has no good certificate.
#[tokio::test]
async fn disabled_devices_get_nothing_on_any_route() {
    let app = spawn_app().await;
    let scope = app.id_scope().await;
    let g = app.put_group("g", group_body()).await;
    let gkey =
        ca::SasKey::from_base64(g["attestation"]["symmetric_key"]["primary_key"].as_str().unwrap())
            .unwrap();
    app.register_in("g", "d-1").await;
    let r = app
        .send_as(
            "PUT",
            "/v1/devices/d-1",
            &app.owner_token(),
            Some(json!({"status": "disabled", "status_reason": "stolen"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let pending: Value = app
        .send_as(
            "POST",
            "/v1/bundles",
            &app.owner_token(),
            Some(json!({"device_id": "d-1", "credential": "sas", "format": "json"})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(pending["status"], 409, "bundle creation for a disabled device: {pending}");

    let derived = ca::sas::derive_device_key(&gkey, "d-1");
    let csr = p256("d-1");
    // Registration doors: 403.
    let r = app.enroll("g", json!({"registration_id": "d-1", "csr": csr})).await;
    assert_problem(r, 403).await;
    let lines = app.ndjson("g", &[json!({"registration_id": "d-1", "csr": p256("d-1")})]).await;
    assert_eq!(lines[0]["error"]["status"], 403);
    assert_problem(app.self_register("d-1", &self_token("d-1", &derived), &csr).await, 403).await;
    let t = app.dps_token("d-1", &derived).await;
    let r = app.dps_register("d-1", &t, &csr).await;
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert!(body["errorCode"].as_u64().unwrap() / 1000 == 403, "DPS error body: {body}");
    let status: Value = app
        .client
        .post(app.url(&format!("/{scope}/registrations/d-1?api-version=2019-03-31")))
        .header("Authorization", &t)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "disabled");
    assert!(status.get("issuedCertificateChain").is_none());
    // Admin issuance, SAS tokens, bundles: 409.
    let r = app
        .send_as(
            "POST",
            "/v1/devices/d-1/certificates",
            &app.owner_token(),
            Some(json!({"csr": p256("d-1")})),
        )
        .await;
    assert_problem(r, 409).await;
    let r = app
        .send_as(
            "POST",
            "/v1/devices/d-1/sas-token",
            &app.owner_token(),
            Some(json!({"ttl_secs": 60})),
        )
        .await;
    assert_problem(r, 409).await;
    let device = app.owner_get("/v1/devices/d-1").await;
    assert_eq!(device["status"], "disabled", "registration never re-enables");
    let certs = app.owner_get("/v1/certificates?device_id=d-1").await;
    assert!(
        certs["items"].as_array().unwrap().iter().all(|c| c["status"] != "valid"),
        "no good certificate: {certs}"
    );
}

/// A bundle pending for an enabled device: redeem refuses while the device is disabled (the
/// bundle stays pending); deleting the device cancels it; a device re-created under the same id
/// never receives an older bundle.
#[tokio::test]
async fn bundles_are_bound_to_the_device_generation_they_were_made_for() {
    let app = &spawn_app().await;
    let create = |id: &'static str| async move {
        let r = app
            .send_as(
                "POST",
                "/v1/bundles",
                &app.owner_token(),
                Some(json!({"device_id": id, "credential": "sas", "format": "json"})),
            )
            .await;
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()
    };
    let redeem = |b: &Value| {
        app.client
            .post(app.url(&format!("/v1/bundles/{}/redeem", b["id"].as_str().unwrap())))
            .header("Authorization", format!("Bundle {}", b["token"].as_str().unwrap()))
            .send()
    };
    app.send_as("PUT", "/v1/devices/b-1", &app.owner_token(), Some(json!({}))).await;
    let b = create("b-1").await;
    app.send_as("PUT", "/v1/devices/b-1", &app.owner_token(), Some(json!({"status": "disabled"})))
        .await;
    assert_problem(redeem(&b).await.unwrap(), 409).await;
    let st = app.owner_get(&format!("/v1/bundles/{}", b["id"].as_str().unwrap())).await;
    assert_eq!(st["status"], "pending");
    app.send_as("PUT", "/v1/devices/b-1", &app.owner_token(), Some(json!({"status": "enabled"})))
        .await;
    let b2 = create("b-1").await;
    assert_eq!(
        app.send_as("DELETE", "/v1/devices/b-1", &app.owner_token(), None).await.status(),
        204
    );
    let st = app.owner_get(&format!("/v1/bundles/{}", b["id"].as_str().unwrap())).await;
    assert_eq!(st["status"], "cancelled", "deleting the device cancels its pending bundles");
    app.send_as("PUT", "/v1/devices/b-1", &app.owner_token(), Some(json!({}))).await;
    assert_problem(redeem(&b2).await.unwrap(), 410).await;
    assert_problem(redeem(&b).await.unwrap(), 410).await;
}

/// Password change, permission change, delete + re-create: the old session is 401 at once.
#[tokio::test]
async fn operator_sessions_end_when_their_credential_changes() {
    let app = &spawn_app().await;
    let put = |pw: &'static str, perms: Value| async move {
        app.send_as(
            "PUT",
            "/v1/operators/alice",
            &app.owner_token(),
            Some(json!({"password": pw, "permissions": perms})),
        )
        .await
    };
    let login = |pw: &'static str| async move {
        let r = app
            .client
            .post(app.url("/v1/auth/login"))
            .json(&json!({"username": "alice", "password": pw}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        format!("Bearer {}", v["access_token"].as_str().unwrap())
    };
    put("first password!", json!(["RegistryRead"])).await;
    let s1 = login("first password!").await;
    assert_eq!(app.get_as("/v1/devices", &s1).await.status(), 200);
    put("second password!", json!(["RegistryRead"])).await;
    assert_problem(app.get_as("/v1/devices", &s1).await, 401).await;
    let s2 = login("second password!").await;
    put("second password!", json!(["RegistryRead", "AuditRead"])).await;
    assert_problem(app.get_as("/v1/devices", &s2).await, 401).await;
    let s3 = login("second password!").await;
    assert_eq!(
        app.send_as("DELETE", "/v1/operators/alice", &app.owner_token(), None).await.status(),
        204
    );
    put("second password!", json!(["RegistryRead", "AuditRead", "PolicyAdmin"])).await;
    assert_problem(app.get_as("/v1/devices", &s3).await, 401).await;
    assert_problem(app.get_as("/v1/audit", &s3).await, 401).await;
}

/// A retry whose certificate was revoked for key compromise is 409 and that key is never
/// certified again; revoked for another reason, a retry gets a new certificate.
#[tokio::test]
async fn revoked_keys_are_never_handed_out_or_certified_again() {
    let app = spawn_app().await;
    app.put_group("g", json!({"attestation": {"type": "symmetric_key"}})).await;
    let csr = p256("k-1");
    let r = app.enroll("g", json!({"registration_id": "k-1", "csr": csr})).await;
    let serial =
        leaf_serial(r.json::<Value>().await.unwrap()["certificate_chain"].as_str().unwrap());
    let retry = app.enroll("g", json!({"registration_id": "k-1", "csr": csr})).await;
    assert_eq!(retry.status(), 200, "a retry while valid returns the stored certificate");
    let r = app
        .send_as(
            "POST",
            &format!("/v1/certificates/{serial}/revoke"),
            &app.owner_token(),
            Some(json!({"reason": "key_compromise"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let again = app.enroll("g", json!({"registration_id": "k-1", "csr": csr})).await;
    let body = assert_problem(again, 409).await;
    assert!(body["detail"].as_str().unwrap().contains("new key"), "{body}");
    let admin = app
        .send_as(
            "POST",
            "/v1/devices/k-1/certificates",
            &app.owner_token(),
            Some(json!({"csr": csr})),
        )
        .await;
    assert_problem(admin, 409).await;
    let fresh = app.enroll("g", json!({"registration_id": "k-1", "csr": p256("k-1")})).await;
    assert_eq!(fresh.status(), 201, "a new key is certified");

    let csr2 = p256("k-2");
    let r = app.enroll("g", json!({"registration_id": "k-2", "csr": csr2})).await;
    let serial2 =
        leaf_serial(r.json::<Value>().await.unwrap()["certificate_chain"].as_str().unwrap());
    app.send_as(
        "POST",
        &format!("/v1/certificates/{serial2}/revoke"),
        &app.owner_token(),
        Some(json!({"reason": "superseded"})),
    )
    .await;
    let again = app.enroll("g", json!({"registration_id": "k-2", "csr": csr2})).await;
    assert_eq!(again.status(), 201);
    let chain =
        again.json::<Value>().await.unwrap()["certificate_chain"].as_str().unwrap().to_owned();
    assert_ne!(leaf_serial(&chain), serial2, "never the revoked certificate");
}

/// `PUT /v1/enrollments/{id}` cannot take over a device another owner holds; tags limits hold
/// through registration; metrics name no group or device; certificates point at the bound port.
#[tokio::test]
async fn enrollments_tags_metrics_and_certificate_urls_hold_their_limits() {
    let app = spawn_app().await;
    app.send_as("PUT", "/v1/devices/adm-1", &app.owner_token(), Some(json!({}))).await;
    let r = app
        .send_as(
            "PUT",
            "/v1/enrollments/adm-1",
            &app.owner_token(),
            Some(json!({"attestation": {"type": "symmetric_key"}})),
        )
        .await;
    assert_problem(r, 409).await;
    let device = app.owner_get("/v1/devices/adm-1").await;
    assert_eq!(device["owner"], json!({"kind": "admin", "id": null}));

    app.put_group("secret-group-name", json!({"attestation": {"type": "symmetric_key"}})).await;
    let big: serde_json::Map<String, Value> =
        (0..400).map(|i| (format!("tag-{i}"), json!("xxxxxxxxxxxxxxxx"))).collect();
    let r = app
        .enroll(
            "secret-group-name",
            json!({"registration_id": "tags-1", "csr": p256("tags-1"), "tags": big}),
        )
        .await;
    assert_problem(r, 400).await;
    let r = app
        .enroll(
            "secret-group-name",
            json!({"registration_id": "secret-device-id", "csr": p256("secret-device-id")}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let chain = r.json::<Value>().await.unwrap()["certificate_chain"].as_str().unwrap().to_owned();
    let device = app.owner_get("/v1/devices/secret-device-id").await;
    assert_eq!(device["owner"], json!({"kind": "enrollment_group", "id": "secret-group-name"}));
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("secret-group-name") && !metrics.contains("secret-device-id"));
    assert!(metrics.contains("door=\"json\""), "registrations counted by door");

    let leaf = ::pem::parse_many(&chain).unwrap()[0].contents().to_vec();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let text = format!("{:?}", cert.extensions());
    let expected = format!("https://localhost:{}/v1/ca/crl/", app.port);
    assert!(text.contains(&expected), "CRL DP at the bound port: {text}");
    assert!(!text.contains(":0/"), "never port 0");
}

/// After rows are cut from the end of the chain, a checkpoint signs the last row present.
#[tokio::test]
async fn a_checkpoint_signs_only_a_head_the_rows_show() {
    let app = spawn_app().await;
    for i in 0..3 {
        app.send_as("PUT", &format!("/v1/devices/c-{i}"), &app.owner_token(), Some(json!({})))
            .await;
    }
    let store = crate::helpers::store(&app.data).await;
    let mut conn = store.conn().await.unwrap();
    let (max,): (i64,) =
        sqlx::query_as("SELECT MAX(seq) FROM audit_log").fetch_one(&mut *conn).await.unwrap();
    sqlx::query("DELETE FROM audit_log WHERE seq >= $1")
        .bind(max - 1)
        .execute(&mut *conn)
        .await
        .unwrap();
    let (last, hash): (i64, String) =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    let cp = app.owner_get("/v1/audit/checkpoint").await;
    assert_eq!(cp["seq"], last);
    assert_eq!(cp["hash"], hash);
}

/// A scope with a prefix and a group cannot widen itself through the group: no group writes,
/// no keys, only tokens bound to ids inside the prefix (found by the attacker's review).
#[tokio::test]
async fn a_prefix_limited_scope_cannot_register_outside_its_prefix_through_a_group() {
    let app = spawn_app().await;
    app.put_group("g-in", group_body()).await;
    app.register_in("g-in", "other-1").await;
    let token = app
        .scoped_policy(
            "both",
            &SCOPED_PERMISSIONS,
            json!({"device_id_prefix": "p-", "enrollment_group_ids": ["g-in"]}),
        )
        .await;
    let r = app.send_as("GET", "/v1/enrollment-groups/g-in", &token, None).await;
    assert_eq!(r.status(), 200);
    let g: Value = r.json().await.unwrap();
    assert!(g["attestation"].get("symmetric_key").is_none(), "no group keys: {g}");
    let r = app.send_as("PUT", "/v1/enrollment-groups/g-in", &token, Some(group_body())).await;
    assert_problem(r, 403).await;
    for body in [
        json!({"count": 1}),
        json!({"registration_ids": ["other-1"]}),
        json!({"registration_ids": ["p-1", "zz-new"]}),
    ] {
        let r = app.send_as("POST", "/v1/enrollment-groups/g-in/tokens", &token, Some(body)).await;
        assert_problem(r, 403).await;
    }
    let r = app
        .send_as(
            "POST",
            "/v1/enrollment-groups/g-in/tokens",
            &token,
            Some(json!({"registration_ids": ["p-1"]})),
        )
        .await;
    assert_eq!(r.status(), 201);
}

/// Found by the attacker's review: the DPS status of a device its group no longer owns, a
/// server certificate for a compromised key, an x509 bundle whose certificate was revoked.
#[tokio::test]
async fn stale_ownership_compromised_server_keys_and_revoked_bundle_certificates_are_refused() {
    let app = spawn_app().await;
    let g = app.put_group("g", group_body()).await;
    let gkey =
        ca::SasKey::from_base64(g["attestation"]["symmetric_key"]["primary_key"].as_str().unwrap())
            .unwrap();
    let derived = ca::sas::derive_device_key(&gkey, "dl-1");
    let t = app.dps_token("dl-1", &derived).await;
    assert_eq!(app.dps_register("dl-1", &t, &p256("dl-1")).await.status(), 200);
    app.send_as("DELETE", "/v1/devices/dl-1", &app.owner_token(), None).await;
    app.send_as("PUT", "/v1/devices/dl-1", &app.owner_token(), Some(json!({}))).await;
    let scope = app.id_scope().await;
    let status = app
        .client
        .post(app.url(&format!("/{scope}/registrations/dl-1?api-version=2019-03-31")))
        .header("Authorization", &t)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 404, "the group no longer owns dl-1");

    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, "kc-1");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let r = app.enroll("g", json!({"registration_id": "kc-1", "csr": csr})).await;
    let serial =
        leaf_serial(r.json::<Value>().await.unwrap()["certificate_chain"].as_str().unwrap());
    app.send_as(
        "POST",
        &format!("/v1/certificates/{serial}/revoke"),
        &app.owner_token(),
        Some(json!({"reason": "key_compromise"})),
    )
    .await;
    let r = app
        .send_as(
            "POST",
            "/v1/ca/server-certificates",
            &app.owner_token(),
            Some(json!({"csr": csr, "dns_names": ["evil.example"]})),
        )
        .await;
    assert_problem(r, 409).await;

    app.send_as("PUT", "/v1/devices/bx-1", &app.owner_token(), Some(json!({}))).await;
    let b: Value = app
        .send_as(
            "POST",
            "/v1/bundles",
            &app.owner_token(),
            Some(json!({"device_id": "bx-1", "credential": "x509", "format": "json"})),
        )
        .await
        .json()
        .await
        .unwrap();
    for status in ["disabled", "enabled"] {
        app.send_as("PUT", "/v1/devices/bx-1", &app.owner_token(), Some(json!({"status": status})))
            .await;
    }
    let r = app
        .client
        .post(app.url(&format!("/v1/bundles/{}/redeem", b["id"].as_str().unwrap())))
        .header("Authorization", format!("Bundle {}", b["token"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_problem(r, 410).await;
}
