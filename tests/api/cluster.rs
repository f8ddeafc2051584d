//! Scale-out: three instances over one database. Exactly-once rules hold across them because
//! each is one conditional statement in the database, and the audit chain stays linear.

use serde_json::{json, Value};

use crate::enrollment::p256;
use crate::helpers::{backend_is_postgres, command, leaf_serial, spawn_app, spawn_with, DataDir};

/// DESIGN.md "Scale-out": SQLite serves one instance. A second `serve` on the same SQLite
/// database is refused at start with a message that says why; on PostgreSQL it starts.
#[tokio::test]
async fn a_second_server_on_one_sqlite_database_is_refused() {
    let app = spawn_app().await;
    if backend_is_postgres() {
        let sibling = app.sibling().await;
        assert!(app
            .client
            .get(format!("{}/readyz", sibling.base))
            .send()
            .await
            .unwrap()
            .status()
            .is_success());
        return;
    }
    let out = command(&app.data.database_url)
        .args(["serve", "--data-dir"])
        .arg(app.data.path())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SQLite serves one instance"), "{err}");
    // The first one is unaffected.
    assert!(app.client.get(app.url("/readyz")).send().await.unwrap().status().is_success());
}

#[tokio::test]
async fn bundle_redeem_and_token_use_are_exactly_once_across_three_instances() {
    if !crate::helpers::postgres_only(
        "bundle_redeem_and_token_use_are_exactly_once_across_three_instances",
        "Scale-out runs over PostgreSQL; on SQLite the test above checks the refusal.",
    ) {
        return;
    }
    let app = spawn_app().await;
    let s1 = app.sibling().await;
    let s2 = app.sibling().await;
    let bases = [app.base.clone(), s1.base.clone(), s2.base.clone()];

    app.put_device("shared", json!({})).await;
    let b: Value = app
        .post_json(
            "/v1/bundles",
            &app.owner_token(),
            json!({"device_id": "shared", "credential": "x509", "format": "json"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let url = format!("{}/v1/bundles/{}/redeem", bases[i % 3], b["id"].as_str().unwrap());
        let (client, auth) =
            (app.client.clone(), format!("Bundle {}", b["token"].as_str().unwrap()));
        tasks.push(tokio::spawn(async move {
            client.post(url).header("Authorization", auth).send().await.unwrap().status().as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
    assert!(codes.iter().all(|c| *c == 200 || *c == 410), "{codes:?}");

    app.put_group("tok", json!({"attestation": {"type": "token"}})).await;
    let minted: Value = app
        .post_json(
            "/v1/enrollment-groups/tok/tokens",
            &app.owner_token(),
            json!({"count": 1, "ttl_secs": 600}),
        )
        .await
        .json()
        .await
        .unwrap();
    let token = minted["tokens"][0].as_str().unwrap().to_owned();
    let mut tasks = Vec::new();
    for i in 0..9 {
        let id = format!("race-{i}");
        let url = format!("{}/v1/registrations/{id}", bases[i % 3]);
        let (client, auth, body) =
            (app.client.clone(), format!("Bearer {token}"), json!({"csr": p256(&id)}));
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .header("Authorization", auth)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 201).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 401).count(), 8, "{codes:?}");

    // One CRL generator at a time: after a revocation on one instance, 30 concurrent fetches
    // across the three regenerate the stale CRL once — every answer is the same CRL, numbered
    // one past the previous, listing the serial.
    app.put_group("crl", json!({"allowed_key_types": ["p256"]})).await;
    let reg: Value = app
        .post_json(
            "/v1/enrollment-groups/crl/registrations",
            &app.owner_token(),
            json!({"registration_id": "crl-dev", "csr": p256("crl-dev")}),
        )
        .await
        .json()
        .await
        .unwrap();
    let serial = leaf_serial(reg["certificate_chain"].as_str().unwrap());
    let crl_of = |der: &[u8]| {
        use x509_parser::prelude::FromDer as _;
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(der).unwrap();
        let number = crl.crl_number().unwrap().to_string();
        let serials: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial_as_string().replace(':', ""))
            .collect();
        (number.parse::<u64>().unwrap(), serials)
    };
    let before = app.client.get(app.url("/v1/ca/crl")).send().await.unwrap().bytes().await.unwrap();
    let (number_before, _) = crl_of(&before);
    let r = app
        .client
        .post(format!("{}/v1/certificates/{serial}/revoke", bases[1]))
        .header("Authorization", app.owner_token())
        .json(&json!({"reason": "key_compromise"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut tasks = Vec::new();
    for i in 0..30 {
        let (client, url) = (app.client.clone(), format!("{}/v1/ca/crl", bases[i % 3]));
        tasks.push(tokio::spawn(async move {
            client.get(url).send().await.unwrap().bytes().await.unwrap().to_vec()
        }));
    }
    let mut crls = Vec::new();
    for t in tasks {
        crls.push(t.await.unwrap());
    }
    assert!(crls.iter().all(|c| *c == crls[0]), "two CRLs were generated for one change");
    let (number, serials) = crl_of(&crls[0]);
    assert_eq!(number, number_before + 1);
    assert!(serials.contains(&serial), "{serials:?}");

    let v: Value = app.get_as("/v1/audit/verify", &app.owner_token()).await.json().await.unwrap();
    assert_eq!(v["ok"], true, "one linear audit chain: {v}");
}

/// Single registrations commit without a lock or a transaction on PostgreSQL when the audit
/// head is where this instance left it; registrations on three instances and other audited
/// writes keep moving it. Every registration must still be stored exactly once with its
/// certificate, and the chain must stay one linear, verifiable chain.
#[tokio::test]
async fn single_registrations_racing_other_writers_keep_one_audit_chain() {
    let app = spawn_with(DataDir::init().await, &[("RUST_LOG", "service=debug")]).await;
    let mut siblings = Vec::new();
    if backend_is_postgres() {
        siblings.push(app.sibling().await);
        siblings.push(app.sibling().await);
    }
    let bases: Vec<String> =
        std::iter::once(app.base.clone()).chain(siblings.iter().map(|s| s.base.clone())).collect();
    app.put_group("line", json!({"allowed_key_types": ["p256"]})).await;
    let mut tasks = Vec::new();
    for w in 0..6 {
        let (client, token, bases) = (app.client.clone(), app.owner_token(), bases.clone());
        tasks.push(tokio::spawn(async move {
            let mut chains = Vec::new();
            for k in 0..8 {
                let id = format!("s-{w}-{k}");
                let csr = p256(&id);
                let base = &bases[(w + k) % bases.len()];
                let r = client
                    .post(format!("{base}/v1/enrollment-groups/line/registrations"))
                    .header("Authorization", &token)
                    .json(&json!({"registration_id": id, "csr": csr}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201, "{id}");
                let v: Value = r.json().await.unwrap();
                chains.push((id, csr, v["certificate_chain"].as_str().unwrap().to_owned()));
            }
            chains
        }));
    }
    // other audited writes in between move the head under the registrations
    for i in 0..12 {
        app.put_device(&format!("other-{i}"), json!({})).await;
    }
    let mut registered = Vec::new();
    for t in tasks {
        registered.extend(t.await.unwrap());
    }
    assert_eq!(registered.len(), 48);
    let token = app.owner_token();
    for (id, csr, chain) in &registered {
        let device: Value =
            app.get_as(&format!("/v1/devices/{id}"), &token).await.json().await.unwrap();
        assert_eq!(device["device_id"], id.as_str(), "{device}");
        // a retry answers the stored certificate: the one the first answer carried
        let again: Value = app
            .post_json(
                "/v1/enrollment-groups/line/registrations",
                &token,
                json!({"registration_id": id, "csr": csr}),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(again["certificate_chain"].as_str(), Some(chain.as_str()), "{id}");
    }
    assert_eq!(app.device_certificates("s-").await, 48, "one certificate per registration");
    // one linear audit chain
    let registrations =
        app.audited_registrations().await.iter().filter(|t| t.starts_with("s-")).count();
    assert_eq!(registrations, 48, "one audit row per registration, none for the retries");
    eprintln!("head moved under a committer: {}", app.logs().matches("audit head moved").count());
}
