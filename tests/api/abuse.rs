//! What unauthenticated or failing callers can make the server hold (API.md A25, A30): failure
//! audit rows, `/metrics` label sets, login hashing memory and queue, body timeouts, error
//! bodies of answers actix writes itself, and enrollment groups decoded per attempt.

use std::time::{Duration, Instant};

use ca::sas::SasToken;
use ca::SasKey;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, now, spawn_app, spawn_with, DataDir, TestApp};

impl TestApp {
    /// Every audit row, oldest first.
    async fn audit_rows(&self) -> Vec<Value> {
        let mut rows = Vec::new();
        let mut after = 0;
        loop {
            let r = self
                .get_as(&format!("/v1/audit?after={after}&limit=1000"), &self.owner_token())
                .await;
            assert_eq!(r.status(), 200);
            let page: Value = r.json().await.unwrap();
            let items = page["items"].as_array().unwrap().clone();
            let full = items.len() == 1000;
            if let Some(last) = items.last() {
                after = last["seq"].as_i64().unwrap();
            }
            rows.extend(items);
            if !full {
                return rows;
            }
        }
    }

    async fn delete_group(&self, id: &str) -> u16 {
        let url = self.url(&format!("/v1/enrollment-groups/{id}"));
        let r = self.client.delete(url).header("Authorization", self.owner_token()).send();
        r.await.unwrap().status().as_u16()
    }

    fn server_pid(&self) -> u32 {
        self.child.id()
    }

    fn dps_scope(&self) -> String {
        let toml = std::fs::read_to_string(self.data.path().join("provisiond.toml")).unwrap();
        let line = toml.lines().find(|l| l.starts_with("id_scope")).unwrap();
        line.split('"').nth(1).unwrap().to_owned()
    }
}

/// Resident memory of a process, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    kb * 1024
}

const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn failure_rows_are_bounded_and_failures_while_limited_become_one_summary_row() {
    let mut app = spawn_app().await;
    // A principal of 3,500 characters (a SAS token is at most 4 KiB), on a path of ~3,000.
    let name = "n".repeat(3500);
    let bad = SasToken::build("localhost", &SasKey::generate(), now() + 600, Some(&name));
    let path = format!("/v1/devices/{}", "p".repeat(3000));
    let (mut unauthorized, mut limited) = (0, 0);
    for _ in 0..200 {
        let r = app.get_as(&path, &bad).await;
        match r.status().as_u16() {
            401 => unauthorized += 1,
            429 => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(limited > 0, "the 200th failure is limited");
    // A login claiming a name with control characters.
    let r = app
        .client
        .post(app.url("/v1/auth/login"))
        .json(&json!({"username": format!("\u{1b}[31mevil\nname{}", "é".repeat(500)), "password": "x"}))
        .send()
        .await
        .unwrap();
    assert_problem(r, 401).await;
    unauthorized += 1;
    let rows = app.audit_rows().await;
    let failures: Vec<_> = rows.iter().filter(|r| r["action"] == "auth.failure").collect();
    assert_eq!(failures.len(), unauthorized, "one row per failure answered 401, none for 429s");
    for row in &failures {
        let actor = row["actor"].as_str().unwrap();
        let target = row["target"].as_str().unwrap();
        assert!(actor.chars().count() <= 128 + 5 * 9, "actor of {} chars", actor.len());
        assert!(!actor.chars().any(char::is_control), "control characters escaped");
        assert!(target.chars().count() <= 256, "target of {} chars", target.chars().count());
        assert!(row.get("count").is_none(), "count only on summary rows");
    }
    // The summary of the window is written at shutdown (or when the window ends).
    app.restart().await;
    let rows = app.audit_rows().await;
    let summaries: Vec<_> = rows.iter().filter(|r| r["action"] == "auth.failure.summary").collect();
    assert_eq!(summaries.len(), 1, "one summary per limited key and window: {summaries:?}");
    assert_eq!(summaries[0]["count"], limited);
    assert!(summaries[0]["target"].as_str().unwrap().chars().count() <= 128 + 5 * 9);
    let verify: Value =
        app.get_as("/v1/audit/verify", &app.owner_token()).await.json().await.unwrap();
    assert_eq!(verify["ok"], true, "summary rows chain like every row: {verify}");
    // Server log lines follow the same limits: no line carries the whole name.
    assert!(!app.logs().contains(&"n".repeat(200)), "log holds an unbounded principal");
}

#[tokio::test]
async fn unknown_http_methods_and_paths_do_not_grow_metrics() {
    let app = spawn_app().await;
    let size = |app: &TestApp| {
        let url = app.url("/metrics");
        let client = app.client.clone();
        async move { client.get(url).send().await.unwrap().text().await.unwrap().len() }
    };
    // Let every route/status pair the probe itself creates exist before measuring.
    for _ in 0..2 {
        let _ = app
            .client
            .request(reqwest::Method::from_bytes(b"XWARM").unwrap(), app.url("/x"))
            .send()
            .await;
        size(&app).await;
    }
    let before = size(&app).await;
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let client = app.client.clone();
        let base = app.base.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..250 {
                let method = format!("M{worker}X{i}");
                let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                let path = format!("{base}/v1/devices/d{worker}-{i}?q={i}");
                let r = client.request(m, path).send().await.unwrap();
                assert!(r.status().is_client_error(), "{}", r.status());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let after = size(&app).await;
    println!("/metrics: {before} bytes before, {after} after 2,000 requests with odd methods");
    assert!(after <= before + 8 * 1024, "/metrics grew from {before} to {after} bytes");
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains("M3X7"), "a method string became a label");
    assert!(!text.contains("d3-7"), "a path became a label");
}

#[tokio::test]
async fn oversized_bodies_get_413_in_the_format_of_their_route() {
    let app = spawn_app().await;
    let big = vec![b'A'; 2 * 1024 * 1024];
    let post = |path: &str, ct: &str| {
        app.client.post(app.url(path)).header("Content-Type", ct).body(big.clone())
    };
    for (path, ct) in [
        ("/v1/ca/ocsp", "application/ocsp-request"),
        ("/.well-known/est/simpleenroll", "application/pkcs10"),
        ("/v1/auth/login", "application/json"),
        ("/v1/registrations/big", "application/json"),
    ] {
        let r = post(path, ct).send().await.unwrap();
        let body = assert_problem(r, 413).await;
        assert!(body["detail"].as_str().unwrap().contains("too large"), "{path}: {body}");
    }
    let scope = app.dps_scope();
    let url = app.url(&format!("/{scope}/registrations/big/register?api-version=2019-03-31"));
    let r = app
        .client
        .put(url)
        .header("Content-Type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errorCode"], 413_001, "{body}");
    for member in ["trackingId", "message", "timestampUtc"] {
        assert!(body.get(member).is_some(), "DPS error body lacks {member}: {body}");
    }
}

#[tokio::test]
async fn a_login_body_trickled_slowly_is_answered_408_and_closed() {
    let data = DataDir::init().await;
    let app = spawn_with(
        data,
        &[
            ("PROVISIOND_REQUEST_BODY_TIMEOUT_SECS", "2"),
            ("PROVISIOND_REQUEST_HEADER_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let login_with = |body: reqwest::Body| {
        let request = app
            .client
            .post(app.url("/v1/auth/login"))
            .header("Content-Type", "application/json")
            .body(body);
        async move {
            let started = Instant::now();
            let sent = request.send().await;
            let elapsed = started.elapsed();
            assert!(elapsed < Duration::from_secs(20), "body read not timed out: {elapsed:?}");
            // The answer is a 408 problem when the client reads it before the close (hyper may
            // report the close instead, having a body left to send).
            if let Ok(r) = sent {
                assert_problem(r, 408).await;
            }
        }
    };
    // One byte a second: never idle for 2 s, but the whole body takes a minute.
    let trickle = futures_util::stream::unfold(0u32, |i| async move {
        if i >= 60 {
            return None;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some((Ok::<_, std::io::Error>(vec![b' ']), i + 1))
    });
    login_with(reqwest::Body::wrap_stream(trickle)).await;
    // A stalled body (nothing after the head) is closed too.
    let stalled = futures_util::stream::pending::<Result<Vec<u8>, std::io::Error>>();
    login_with(reqwest::Body::wrap_stream(stalled)).await;
    // The server still answers.
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200);
}

/// Sends `first` then keeps the connection open; how long until the server closes it (at most
/// 30 s), and what it answered.
async fn hold_connection(app: &TestApp, first: &[u8], then: &[u8]) -> (Duration, String) {
    use std::io::{Read as _, Write as _};
    let mut client = std::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &format!("127.0.0.1:{}", app.port), "-CAfile"])
        .arg(app.chain_path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(first).unwrap();
    stdin.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stdin.write_all(then).unwrap();
    stdin.flush().unwrap();
    let started = Instant::now();
    let mut stdout = client.stdout.take().unwrap();
    let answer = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    while client.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    let _ = client.kill();
    let _ = client.wait();
    drop(stdin);
    (elapsed, answer.join().unwrap())
}

#[tokio::test]
async fn a_request_head_that_does_not_arrive_in_time_is_closed_first_or_later_on_a_connection() {
    let data = DataDir::init().await;
    let app = spawn_with(data, &[("PROVISIOND_REQUEST_HEADER_TIMEOUT_SECS", "2")]).await;
    // Half a head, then nothing (the connection stays open from this side).
    let half = b"POST /v1/auth/login HTTP/1.1\r\nHost: localhost\r\n";
    let (elapsed, answer) = hold_connection(&app, half, b"").await;
    assert!(elapsed < Duration::from_secs(15), "connection still open after {elapsed:?}");
    // actix-http's codec answers before any routing: an empty 408, not a problem document.
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // The same after a first request on the connection (actix times the first head only):
    // closed after keep-alive (5 s) + header timeout.
    let first = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let (elapsed, answer) = hold_connection(&app, first, half).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(elapsed < Duration::from_secs(20), "connection still open after {elapsed:?}");
}

#[tokio::test]
async fn a_burst_of_100_bad_logins_is_bounded_in_memory_and_a_valid_login_still_succeeds() {
    let app = spawn_app().await;
    let r = app
        .client
        .put(app.url("/v1/operators/alice"))
        .header("Authorization", app.owner_token())
        .json(&json!({"password": "correct horse battery", "permissions": ["RegistryRead"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let login = |user: String, password: &'static str| {
        let client = app.client.clone();
        let url = app.url("/v1/auth/login");
        async move {
            let started = Instant::now();
            let r = client
                .post(url)
                .json(&json!({"username": user, "password": password}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), started.elapsed())
        }
    };
    // Warm up: the server's steady state includes its hashing blocks.
    let warm: Vec<_> = (0..4).map(|i| tokio::spawn(login(format!("warm{i}"), "nope"))).collect();
    for w in warm {
        w.await.unwrap();
    }
    let pid = app.server_pid();
    let before = rss(pid);
    let burst: Vec<_> =
        (0..100).map(|i| tokio::spawn(login(format!("mallory{i}"), "wrong password"))).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let valid = tokio::spawn(login("alice".into(), "correct horse battery"));
    let mut peak = before;
    while !burst.iter().all(|t| t.is_finished()) || !valid.is_finished() {
        peak = peak.max(rss(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, took) = valid.await.unwrap();
    assert_eq!(status, 200, "a valid login during the burst");
    assert!(took < Duration::from_secs(10), "valid login took {took:?}");
    let mut statuses = std::collections::BTreeMap::new();
    for t in burst {
        *statuses.entry(t.await.unwrap().0).or_insert(0) += 1;
    }
    assert!(statuses.keys().all(|s| [401, 503].contains(s)), "{statuses:?}");
    // Memory returns to its level before the burst within a minute.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut after = rss(pid);
    while after > before + 16 * MIB && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        after = rss(pid);
    }
    println!(
        "RSS before {} MiB, peak {} MiB, after {} MiB; valid login {took:?}; {statuses:?}",
        before / MIB,
        peak / MIB,
        after / MIB
    );
    assert!(peak <= before + 200 * MIB, "peak {} MiB over {} MiB", peak / MIB, before / MIB);
    assert!(after <= before + 16 * MIB, "after {} MiB, before {} MiB", after / MIB, before / MIB);
}

#[tokio::test]
async fn a_changed_or_deleted_group_stops_attesting_at_once() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.put_group(
            &format!("other{i}"),
            json!({"attestation": {"type": "symmetric_key"}, "credential": "sas",
                   "registration_id_pattern": format!("o{i}-[a-z]+")}),
        )
        .await;
    }
    let g = app
        .put_group("sym", json!({"attestation": {"type": "symmetric_key"}, "credential": "sas"}))
        .await;
    let key = |g: &Value| {
        SasKey::from_base64(g["attestation"]["symmetric_key"]["primary_key"].as_str().unwrap())
            .unwrap()
    };
    let register = |id: &str, group_key: &SasKey| {
        let derived = ca::sas::derive_device_key(group_key, id);
        let token =
            SasToken::build(&format!("localhost/registrations/{id}"), &derived, now() + 60, None);
        app.client
            .post(app.url(&format!("/v1/registrations/{id}")))
            .header("Authorization", token)
            .json(&json!({}))
            .send()
    };
    let old = key(&g);
    assert_eq!(register("c-1", &old).await.unwrap().status(), 201);
    // New keys: the old ones stop attesting with the write's response.
    let new = SasKey::generate();
    let g = app
        .put_group(
            "sym",
            json!({"attestation": {"type": "symmetric_key", "symmetric_key": {
                "primary_key": *new.to_base64(), "secondary_key": *SasKey::generate().to_base64()}},
                "credential": "sas"}),
        )
        .await;
    assert_eq!(key(&g).to_base64(), new.to_base64());
    assert_problem(register("c-2", &old).await.unwrap(), 401).await;
    assert_eq!(register("c-3", &new).await.unwrap().status(), 201);
    // Deleted: refused at once.
    assert_eq!(app.delete_group("sym").await, 204);
    assert_problem(register("c-4", &new).await.unwrap(), 401).await;
}

#[tokio::test]
async fn a_group_changed_on_another_instance_stops_attesting_within_a_second() {
    if !crate::helpers::postgres_only(
        "a_group_changed_on_another_instance_stops_attesting_within_a_second",
        "one instance per SQLite database",
    ) {
        return;
    }
    let app = spawn_app().await;
    let sibling = app.sibling().await;
    let g = app
        .put_group("sym", json!({"attestation": {"type": "symmetric_key"}, "credential": "sas"}))
        .await;
    let old =
        SasKey::from_base64(g["attestation"]["symmetric_key"]["primary_key"].as_str().unwrap())
            .unwrap();
    let register = |base: &str, id: &str| {
        let derived = ca::sas::derive_device_key(&old, id);
        let token =
            SasToken::build(&format!("localhost/registrations/{id}"), &derived, now() + 60, None);
        app.client
            .post(format!("{base}/v1/registrations/{id}"))
            .header("Authorization", token)
            .json(&json!({}))
            .send()
    };
    // The sibling has the group in its cache.
    assert_eq!(register(&sibling.base, "x-1").await.unwrap().status(), 201);
    assert_eq!(app.delete_group("sym").await, 204);
    let deleted = Instant::now();
    // A30: within 1 s on every other instance (a little slack for a loaded machine).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = register(&sibling.base, "x-2").await.unwrap();
    assert_eq!(r.status(), 401, "still attesting {:?} after the delete", deleted.elapsed());
}

/// Median of durations.
fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A latency measurement, so not part of the suite's pass/fail on a loaded 2-core machine (it
/// failed once under a parallel build): run it by hand with `cargo test -- --ignored`;
/// `scripts/abuse` measures the same attack.
#[tokio::test]
#[ignore = "latency measurement: run by hand"]
async fn a_failed_self_registration_costs_the_same_with_1_or_60_patterned_groups() {
    let app = spawn_app().await;
    let mut keys = Vec::new();
    let add_groups = |range: std::ops::Range<usize>| {
        let app = &app;
        async move {
            let mut keys = Vec::new();
            for i in range {
                let g = app
                    .put_group(
                        &format!("g{i:02}"),
                        json!({"attestation": {"type": "symmetric_key"}, "credential": "sas",
                               "registration_id_pattern": format!("(dev|g{i:02})-[a-z0-9]{{1,32}}")}),
                    )
                    .await;
                let key = g["attestation"]["symmetric_key"]["primary_key"].as_str().unwrap();
                keys.push(SasKey::from_base64(key).unwrap());
            }
            keys
        }
    };
    let attempt = |id: String, key: &SasKey| {
        let client = app.client.clone();
        let url = app.url(&format!("/v1/registrations/{id}"));
        let derived = ca::sas::derive_device_key(key, &id);
        let token =
            SasToken::build(&format!("localhost/registrations/{id}"), &derived, now() + 60, None);
        async move {
            let started = Instant::now();
            let r = client.post(url).header("Authorization", token).json(&json!({})).send().await;
            (r.unwrap().status().as_u16(), started.elapsed())
        }
    };
    // p50 of successes (through the last group, so they walk every group too) and failures
    // (a key no group derived).
    let measure = |round: &'static str, key: SasKey| {
        let attempt = &attempt;
        async move {
            let (mut ok, mut failed) = (Vec::new(), Vec::new());
            for i in 0..30 {
                let (status, took) = attempt(format!("dev-{round}ok{i}"), &key).await;
                assert_eq!(status, 201);
                ok.push(took);
                let (status, took) =
                    attempt(format!("dev-{round}no{i}"), &SasKey::generate()).await;
                assert_eq!(status, 401);
                failed.push(took);
            }
            (median(ok), median(failed))
        }
    };
    keys.extend(add_groups(0..1).await);
    let (ok1, failed1) = measure("a", keys[0].clone_secret()).await;
    keys.extend(add_groups(1..60).await);
    let (ok60, failed60) = measure("b", keys[59].clone_secret()).await;
    println!(
        "self-registration p50, 1 group: success {ok1:?}, failure {failed1:?}; \
         60 patterned groups: success {ok60:?}, failure {failed60:?}"
    );
    // Generous (a loaded machine): before, each group cost a decode on every attempt.
    assert!(
        failed60 <= failed1 * 2 + Duration::from_millis(10),
        "failure p50 {failed60:?} with 60 groups vs {failed1:?} with 1"
    );
}
