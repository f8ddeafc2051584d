//! Crash safety: `kill -9` the server in the middle of a large NDJSON batch, restart it, and
//! find every certificate the client received in the registry, with an intact audit chain.

use serde_json::{json, Value};

use crate::enrollment::p256;
use crate::helpers::spawn_app;

#[tokio::test]
async fn kill_9_during_a_batch_loses_no_acknowledged_registration() {
    let mut app = spawn_app().await;
    app.put_group("crash", json!({"allowed_key_types": ["p256"]})).await;
    let n = 10_000;
    let mut body = String::with_capacity(n * 700);
    for i in 0..n {
        let id = format!("k-{i:05}");
        body.push_str(&json!({"registration_id": id, "csr": p256(&id)}).to_string());
        body.push('\n');
    }
    let mut resp = app
        .client
        .post(app.url("/v1/enrollment-groups/crash/registrations"))
        .header("Authorization", app.owner_token())
        .header("Content-Type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut buf = Vec::new();
    let mut acknowledged: Vec<(String, String)> = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let v: Value = serde_json::from_slice(&line).unwrap();
            let chain = v["certificate_chain"].as_str().expect("all lines are valid");
            let leaf = ::pem::parse_many(chain).unwrap()[0].contents().to_vec();
            let (_, c) = x509_parser::parse_x509_certificate(&leaf).unwrap();
            acknowledged.push((
                v["device_id"].as_str().unwrap().to_owned(),
                c.raw_serial_as_string().replace(':', ""),
            ));
        }
        if acknowledged.len() >= 300 {
            let pid = nix::unistd::Pid::from_raw(app.child.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
            break;
        }
    }
    assert!(
        acknowledged.len() >= 300 && acknowledged.len() < n,
        "killed mid-batch after {}",
        acknowledged.len()
    );
    drop(resp);
    let _ = app.child.wait();
    app.restart().await;
    for (id, serial) in &acknowledged {
        let certs: Value = app
            .get_as(&format!("/v1/certificates?device_id={id}"), &app.owner_token())
            .await
            .json()
            .await
            .unwrap();
        let items = certs["items"].as_array().unwrap();
        assert!(
            items.iter().any(|c| c["serial"] == serial.as_str() && c["status"] == "valid"),
            "{id} {serial} lost"
        );
        assert_eq!(
            app.get_as(&format!("/v1/devices/{id}"), &app.owner_token()).await.status(),
            200,
            "{id}"
        );
    }
    // Nothing half-written: every device of the group has exactly its certificate and vice versa.
    let all: Value =
        app.get_as("/v1/certificates?limit=1000", &app.owner_token()).await.json().await.unwrap();
    for c in all["items"].as_array().unwrap().iter().filter(|c| c["device_id"].is_string()) {
        let id = c["device_id"].as_str().unwrap();
        assert_eq!(
            app.get_as(&format!("/v1/devices/{id}"), &app.owner_token()).await.status(),
            200,
            "certificate without device {id}"
        );
    }
    let v: Value = app.get_as("/v1/audit/verify", &app.owner_token()).await.json().await.unwrap();
    assert_eq!(v["ok"], true, "{v}");
}
