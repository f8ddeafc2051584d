//! The admin console (API.md A28): its assets and headers over HTTPS, and the whole console
//! driven in Debian's headless Chromium by `tests/python/console_browser.py` (Selenium).
//!
//! The browser suite runs on SQLite only (once per CI run, like the other browser-side
//! interop); `scripts/console-postgres` runs it against PostgreSQL by hand. Without chromium,
//! chromedriver or Selenium it is skipped, unless `PROVISIOND_REQUIRE_INTEROP=1` (CI), where
//! it fails. Screenshots of every page land in `target/console-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::helpers::{assert_problem, backend_is_postgres, spawn_app, TestApp};

const CSP_SELF_ONLY: &[&str] =
    &["default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"];

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

fn assert_console_headers(resp: &reqwest::Response, what: &str) {
    let csp = header(resp, "content-security-policy");
    for part in CSP_SELF_ONLY {
        assert!(csp.contains(part), "{what}: CSP {csp:?} lacks {part}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval") && !csp.contains('*'));
    assert_eq!(header(resp, "x-frame-options"), "DENY", "{what}");
    assert_eq!(header(resp, "referrer-policy"), "no-referrer", "{what}");
    assert_eq!(header(resp, "x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header(resp, "cache-control"), "no-cache", "{what}");
    assert!(resp.headers().get("etag").is_some(), "{what}: ETag");
}

#[tokio::test]
async fn console_assets_are_served_with_a_self_only_csp_and_the_right_types() {
    let app = spawn_app().await;
    let page = app.client.get(app.url("/ui/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_console_headers(&page, "/ui/");
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="app.js"></script>"#), "{html}");

    for (file, ty) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("devices.js", "text/javascript; charset=utf-8"),
        ("console.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let resp = app.client.get(app.url(&format!("/ui/{file}"))).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{file}");
        assert_console_headers(&resp, file);
        assert_eq!(header(&resp, "content-type"), ty, "{file}");
        // Revalidation: the same bytes answer 304 to their ETag.
        let etag = header(&resp, "etag").to_owned();
        let again = app
            .client
            .get(app.url(&format!("/ui/{file}")))
            .header("If-None-Match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{file}");
    }

    for unknown in ["/ui", "/ui/nope.js", "/ui/..%2Fopenapi.json", "/ui/a/b", "/ui/app.js.map"] {
        let resp = app.client.get(app.url(unknown)).send().await.unwrap();
        assert_problem(resp, 404).await;
    }
    // An unknown console file's 404 carries the console's headers as well.
    let resp = app.client.get(app.url("/ui/nope.js")).send().await.unwrap();
    assert!(header(&resp, "content-security-policy").contains("frame-ancestors 'none'"));
    assert_eq!(header(&resp, "x-frame-options"), "DENY");
    assert_eq!(header(&resp, "x-content-type-options"), "nosniff");
    assert_problem(resp, 404).await;
    // Only GET: a write to the console's paths is refused like any unknown method.
    assert_problem(app.client.post(app.url("/ui/")).send().await.unwrap(), 405).await;
}

#[tokio::test]
async fn login_answers_the_operators_permissions_with_implied_ones() {
    let app = spawn_app().await;
    put_operator(&app, "rw-op", &["RegistryReadWrite", "AuditRead"]).await;
    let resp = app
        .client
        .post(app.url("/v1/auth/login"))
        .json(&json!({"username": "rw-op", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "cache-control"), "no-store");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["permissions"], json!(["RegistryRead", "RegistryReadWrite", "AuditRead"]));
    assert_eq!(body["token_type"], "Bearer");
}

async fn put_operator(app: &TestApp, name: &str, permissions: &[&str]) {
    let resp = app
        .client
        .put(app.url(&format!("/v1/operators/{name}")))
        .header("Authorization", app.owner_token())
        .json(&json!({"password": "correct horse battery", "permissions": permissions}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "operator {name}: {}", resp.status());
}

/// Chromium, chromedriver and Selenium, or None (skipped) — a failure under
/// `PROVISIOND_REQUIRE_INTEROP=1`.
fn browser_ready() -> bool {
    let chromium = Path::new("/usr/bin/chromium").exists();
    let driver = Path::new("/usr/bin/chromedriver").exists();
    let selenium = Command::new("python3")
        .args(["-c", "import selenium, requests, cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if chromium && driver && selenium {
        return true;
    }
    assert_ne!(
        std::env::var("PROVISIOND_REQUIRE_INTEROP").as_deref(),
        Ok("1"),
        "the console browser test needs chromium ({chromium}), chromium-driver ({driver}) and \
         python3 selenium/requests/cryptography ({selenium}): scripts/ci-deps installs them"
    );
    eprintln!("SKIPPED: chromium, chromium-driver or python selenium missing");
    false
}

/// Where screenshots go: `$CARGO_TARGET_DIR/console-screenshots` or `target/…` (README).
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("console-screenshots")
}

#[tokio::test]
async fn the_console_works_in_a_real_browser_and_leaves_no_secret_behind() {
    // Once per CI run: SQLite. `scripts/console-postgres` sets CONSOLE_BROWSER_ON_POSTGRES.
    if backend_is_postgres() && std::env::var_os("CONSOLE_BROWSER_ON_POSTGRES").is_none() {
        eprintln!(
            "SKIPPED on PostgreSQL: the browser suite runs on SQLite (scripts/console-postgres)"
        );
        return;
    }
    if !browser_ready() {
        return;
    }
    let app = spawn_app().await;
    put_operator(
        &app,
        "admin",
        &[
            "RegistryReadWrite",
            "EnrollmentWrite",
            "Enroll",
            "BundleCreate",
            "CertificateAdmin",
            "AuditRead",
            "PolicyAdmin",
        ],
    )
    .await;
    put_operator(&app, "reader", &["RegistryRead"]).await;
    let shots = screenshot_dir();
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/console_browser.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .env("CONSOLE_URL", &app.base)
        .env("CONSOLE_CA", app.chain_path())
        .env("CONSOLE_OWNER_TOKEN", app.owner_token())
        .env("CONSOLE_PASSWORD", "correct horse battery")
        .env("CONSOLE_SCREENSHOTS", &shots)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser suite failed:\n{stdout}\n{stderr}\nserver:\n{}",
        app.logs()
    );
    assert!(stdout.contains("console browser suite: ok"), "{stdout}");
}

#[tokio::test]
async fn the_devices_search_finds_a_device_by_its_whole_id() {
    let app = spawn_app().await;
    for id in ["sensor-1", "sensor-10", "sensor-2"] {
        let resp = app
            .client
            .put(app.url(&format!("/v1/devices/{id}")))
            .header("Authorization", app.owner_token())
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    for (prefix, want) in [
        ("sensor-1", vec!["sensor-1", "sensor-10"]),
        ("sensor-10", vec!["sensor-10"]),
        ("sensor-2", vec!["sensor-2"]),
        ("sensor-", vec!["sensor-1", "sensor-10", "sensor-2"]),
        ("sensor-3", vec![]),
    ] {
        let page: Value = app
            .get_as(&format!("/v1/devices?prefix={prefix}"), &app.owner_token())
            .await
            .json()
            .await
            .unwrap();
        let ids: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["device_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, want, "prefix {prefix}");
    }
}
