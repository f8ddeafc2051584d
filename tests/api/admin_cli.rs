//! The admin CLI (`provisiond device|group|…`) against a real server: every subcommand, table and
//! JSON output, the login session, and the exit codes of API.md A30.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::helpers::{command, spawn_app, TestApp};

fn owner_cs(app: &TestApp) -> String {
    format!("HostName=localhost;SharedAccessKeyName=owner;SharedAccessKey={}", app.data.owner_key)
}

/// Runs `provisiond ARGS` against `app` with the connection string `cs` (None = none given) and
/// the session directory `xdg`.
fn run(app: &TestApp, cs: Option<&str>, xdg: &Path, args: &[&str]) -> Output {
    let mut cmd = command(&None);
    cmd.env_remove("PROVISIOND_CONNECTION_STRING")
        .env("PROVISIOND_URL", &app.base)
        .env("XDG_CONFIG_HOME", xdg)
        .args(args)
        .arg("--ca-file")
        .arg(app.chain_path());
    if let Some(cs) = cs {
        cmd.env("PROVISIOND_CONNECTION_STRING", cs);
    }
    cmd.output().unwrap()
}

/// Asserts the exit code and returns stdout.
fn ok(out: Output, code: i32, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{what}: stderr {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn admin_cli_creates_shows_lists_updates_and_deletes_devices_groups_enrollments_policies() {
    let app = spawn_app().await;
    let xdg = tempfile::tempdir().unwrap();
    let cs = owner_cs(&app);
    let cli = |args: &[&str]| run(&app, Some(&cs), xdg.path(), args);

    // Devices.
    let table = ok(cli(&["device", "create", "d-1", "--tag", "site=a"]), 0, "device create");
    assert!(table.lines().any(|l| l.starts_with("device_id") && l.ends_with("d-1")), "{table}");
    ok(cli(&["device", "create", "d-1"]), 5, "an existing device is refused");
    let shown = json(&ok(cli(&["device", "show", "d-1", "-o", "json"]), 0, "device show"));
    assert_eq!(
        (shown["status"].as_str(), shown["tags"]["site"].as_str()),
        (Some("enabled"), Some("a"))
    );
    let listed = ok(cli(&["device", "list"]), 0, "device list");
    assert!(listed.starts_with("DEVICE ID") && listed.contains("d-1"), "{listed}");
    let page =
        json(&ok(cli(&["device", "list", "--limit", "1", "--all", "-o", "json"]), 0, "list"));
    assert_eq!(page["items"][0]["device_id"], "d-1");
    let updated = json(&ok(
        cli(&["device", "update", "d-1", "--status", "disabled", "--tag", "x=y", "-o", "json"]),
        0,
        "device update",
    ));
    assert_eq!(updated["status"], "disabled");
    assert_eq!(
        (updated["tags"]["site"].as_str(), updated["tags"]["x"].as_str()),
        (Some("a"), Some("y"))
    );
    let rotated = json(&ok(
        cli(&["device", "rotate-key", "d-1", "--key", "swap", "-o", "json"]),
        0,
        "rotate",
    ));
    let keys = |v: &Value| v["authentication"]["symmetric_key"].clone();
    assert_eq!(keys(&rotated)["primary_key"], keys(&shown)["secondary_key"]);
    ok(cli(&["device", "delete", "d-1"]), 0, "device delete");
    ok(cli(&["device", "show", "d-1"]), 4, "a deleted device is 404");

    // Enrollment groups and tokens.
    let g = json(&ok(
        cli(&["group", "create", "g-1", "--credential", "both", "--tag", "line=1", "-o", "json"]),
        0,
        "group create",
    ));
    assert_eq!(
        (g["credential"].as_str(), g["initial_tags"]["line"].as_str()),
        (Some("both"), Some("1"))
    );
    ok(cli(&["group", "create", "g-1"]), 5, "an existing group is refused");
    assert!(ok(cli(&["group", "show", "g-1"]), 0, "group show").contains("symmetric_key"));
    let groups = ok(cli(&["group", "list"]), 0, "group list");
    assert!(groups.starts_with("GROUP ID") && groups.contains("g-1"), "{groups}");
    let g = json(&ok(
        cli(&["group", "update", "g-1", "--provisioning-status", "disabled", "-o", "json"]),
        0,
        "group update",
    ));
    assert_eq!(
        (g["provisioning_status"].as_str(), g["credential"].as_str()),
        (Some("disabled"), Some("both"))
    );
    ok(cli(&["group", "delete", "g-1"]), 0, "group delete");
    ok(cli(&["group", "show", "g-1"]), 4, "a deleted group is 404");
    ok(cli(&["group", "create", "g-2", "--attestation", "token"]), 0, "token group");
    let tokens = ok(cli(&["token", "mint", "--group", "g-2", "--count", "2"]), 0, "token mint");
    assert_eq!(tokens.lines().filter(|l| l.starts_with("eyJ")).count(), 2, "{tokens}");
    let minted =
        json(&ok(cli(&["token", "mint", "--group", "g-2", "-o", "json"]), 0, "token mint json"));
    assert_eq!(minted["tokens"].as_array().unwrap().len(), 1);

    // Individual enrollments.
    let e = json(&ok(
        cli(&["enrollment", "create", "e-1", "--credential", "sas", "-o", "json"]),
        0,
        "enrollment create",
    ));
    assert_eq!(e["registration_id"], "e-1");
    assert!(ok(cli(&["enrollment", "show", "e-1"]), 0, "enrollment show").contains("e-1"));
    let enrollments = ok(cli(&["enrollment", "list"]), 0, "enrollment list");
    assert!(enrollments.starts_with("REGISTRATION ID") && enrollments.contains("e-1"));
    ok(cli(&["enrollment", "delete", "e-1"]), 0, "enrollment delete");
    ok(cli(&["enrollment", "show", "e-1"]), 4, "a deleted enrollment is 404");

    // Policies, and a policy without the permission (403 → 3).
    let p = json(&ok(
        cli(&[
            "policy",
            "create",
            "p-1",
            "--permission",
            "RegistryRead",
            "--scope-prefix",
            "x-",
            "-o",
            "json",
        ]),
        0,
        "policy create",
    ));
    assert_eq!(p["scope"]["device_id_prefix"], "x-");
    ok(cli(&["policy", "create", "p-1", "--permission", "RegistryRead"]), 5, "existing policy");
    assert!(ok(cli(&["policy", "list"]), 0, "policy list").contains("p-1"));
    let p2 = json(&ok(
        cli(&[
            "policy",
            "update",
            "p-1",
            "--permission",
            "RegistryReadWrite",
            "--unscoped",
            "-o",
            "json",
        ]),
        0,
        "policy update",
    ));
    assert_eq!(
        (p2["permissions"][0].as_str(), &p2["scope"]),
        (Some("RegistryReadWrite"), &Value::Null)
    );
    assert_eq!(p2["primary_key"], p["primary_key"], "an update keeps the keys");
    let p3 = json(&ok(cli(&["policy", "rotate-key", "p-1", "-o", "json"]), 0, "policy rotate"));
    assert_ne!(p3["primary_key"], p2["primary_key"]);
    ok(cli(&["policy", "delete", "p-1"]), 0, "policy delete");
    ok(cli(&["policy", "show", "p-1"]), 4, "a deleted policy is 404");
    let reader = json(&ok(cli(&["policy", "show", "registryRead", "-o", "json"]), 0, "show"));
    let reader_cs = format!(
        "HostName=localhost;SharedAccessKeyName=registryRead;SharedAccessKey={}",
        reader["primary_key"].as_str().unwrap()
    );
    let denied = run(&app, Some(&reader_cs), xdg.path(), &["device", "create", "d-2"]);
    assert!(String::from_utf8_lossy(&denied.stderr).starts_with("error: "));
    ok(denied, 3, "403 → 3");
    ok(run(&app, Some(&reader_cs), xdg.path(), &["device", "list"]), 0, "a reader lists");
}

#[tokio::test]
async fn admin_cli_handles_bundles_certificates_the_ca_and_the_audit_trail() {
    let app = spawn_app().await;
    let xdg = tempfile::tempdir().unwrap();
    let cs = owner_cs(&app);
    let cli = |args: &[&str]| run(&app, Some(&cs), xdg.path(), args);
    ok(cli(&["device", "create", "b-1"]), 0, "device create");

    // Bundles: create, show, redeem (token only), redeem again (410 → 5), cancel, list.
    let b = json(&ok(cli(&["bundle", "create", "--device", "b-1", "-o", "json"]), 0, "bundle"));
    let (id, token) = (b["id"].as_str().unwrap(), b["token"].as_str().unwrap());
    assert!(ok(cli(&["bundle", "show", id]), 0, "bundle show").contains("pending"));
    let out = xdg.path().join("payload.json");
    let redeem = ["bundle", "redeem", id, "--token", token, "--out", out.to_str().unwrap()];
    ok(run(&app, None, xdg.path(), &redeem), 0, "bundle redeem");
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    let payload = json(&std::fs::read_to_string(&out).unwrap());
    assert!(payload["private_key"].as_str().unwrap().contains("PRIVATE KEY"));
    let again = run(&app, None, xdg.path(), &["bundle", "redeem", id, "--token", token]);
    ok(again, 5, "a redeemed bundle is 410 → 5");
    let b2 = json(&ok(
        cli(&["bundle", "create", "--device", "b-1", "--credential", "sas", "-o", "json"]),
        0,
        "bundle 2",
    ));
    let id2 = b2["id"].as_str().unwrap();
    ok(cli(&["bundle", "cancel", id2]), 0, "bundle cancel");
    ok(cli(&["bundle", "cancel", id2]), 5, "cancelling twice is 409 → 5");
    let bundles = ok(cli(&["bundle", "list", "--device", "b-1"]), 0, "bundle list");
    assert!(bundles.contains(id) && bundles.contains(id2) && bundles.contains("cancelled"));

    // Certificates: the bundle's, revoked.
    let certs = json(&ok(cli(&["cert", "list", "--device", "b-1", "-o", "json"]), 0, "cert list"));
    let serial = certs["items"][0]["serial"].as_str().unwrap().to_owned();
    assert!(ok(cli(&["cert", "show", &serial]), 0, "cert show").contains("b-1"));
    let revoked = json(&ok(
        cli(&["cert", "revoke", &serial, "--reason", "key_compromise", "-o", "json"]),
        0,
        "cert revoke",
    ));
    assert_eq!(
        (revoked["status"].as_str(), revoked["reason"].as_str()),
        (Some("revoked"), Some("key_compromise"))
    );
    let table = ok(cli(&["cert", "list", "--device", "b-1"]), 0, "cert list table");
    assert!(table.starts_with("SERIAL") && table.contains("revoked"), "{table}");
    ok(cli(&["cert", "revoke", "00ff"]), 4, "an unknown serial is 404 → 4");

    // The CA.
    let chain = ok(cli(&["ca", "chain"]), 0, "ca chain");
    let certs = |pem: &str| {
        ::pem::parse_many(pem).unwrap().iter().map(|p| p.contents().to_vec()).collect::<Vec<_>>()
    };
    assert_eq!(certs(&chain), certs(&std::fs::read_to_string(app.chain_path()).unwrap()));
    assert!(ok(cli(&["ca", "crl"]), 0, "ca crl").starts_with("-----BEGIN X509 CRL-----"));
    let issuers = json(&ok(cli(&["ca", "issuers", "-o", "json"]), 0, "ca issuers"));
    let items = issuers["items"].as_array().unwrap();
    let current = items.iter().find(|i| i["current"] == true).expect("a current issuer");
    let issuer = current["issuer_id"].as_str().unwrap().to_owned();
    assert!(ok(cli(&["ca", "issuers"]), 0, "issuers table").starts_with("ISSUER ID"));
    let crl = ok(cli(&["ca", "crl", "--issuer", &issuer]), 0, "ca crl of an issuer");
    assert!(crl.contains("X509 CRL"));

    // The audit trail, remote.
    let tail = ok(cli(&["audit", "tail", "-n", "100"]), 0, "audit tail");
    assert!(tail.starts_with("SEQ") && tail.contains("device.create") && tail.contains("b-1"));
    let filtered =
        json(&ok(cli(&["audit", "tail", "--action", "bundle.create", "-o", "json"]), 0, "tail"));
    assert!(filtered["items"].as_array().unwrap().iter().all(|r| r["action"] == "bundle.create"));
    let cp = json(&ok(cli(&["audit", "checkpoint", "-o", "json"]), 0, "audit checkpoint"));
    assert!(cp["seq"].as_u64().unwrap() > 0 && cp["signature"].as_str().unwrap().contains('.'));
    let verified = ok(cli(&["audit", "verify", "--url", &app.base]), 0, "remote audit verify");
    assert!(verified.contains("OK"), "{verified}");
    let v = json(&ok(cli(&["audit", "verify", "--url", &app.base, "-o", "json"]), 0, "verify"));
    assert_eq!(v["ok"], true);
}

#[tokio::test]
async fn admin_cli_logs_in_manages_operators_and_exits_with_the_a30_codes() {
    let app = spawn_app().await;
    let xdg = tempfile::tempdir().unwrap();
    let cs = owner_cs(&app);
    let pw = xdg.path().join("pw");
    std::fs::write(&pw, "correct horse battery staple\n").unwrap();
    let pw = pw.to_str().unwrap();
    let base = app.base.as_str();

    // Operators on the server (--url), with the owner's connection string.
    let add = [
        "operator",
        "add",
        "alice",
        "--permission",
        "PolicyAdmin",
        "--permission",
        "RegistryRead",
        "--password-file",
        pw,
        "--url",
        base,
    ];
    ok(run(&app, Some(&cs), xdg.path(), &add), 0, "operator add");
    ok(run(&app, Some(&cs), xdg.path(), &add), 5, "operator add without --replace");

    // Login: the session file is private, and later commands use it.
    let login = ["login", "alice", "--password-file", pw, "--url", base];
    let said = ok(run(&app, None, xdg.path(), &login), 0, "login");
    assert!(said.contains("alice") && !said.contains("eyJ"), "no token on stdout: {said}");
    let session = xdg.path().join("provisiond").join("session");
    assert_eq!(std::fs::metadata(&session).unwrap().permissions().mode() & 0o777, 0o600);
    let ops = ok(run(&app, None, xdg.path(), &["operator", "list", "--url", base]), 0, "list");
    assert!(ops.starts_with("NAME") && ops.contains("alice"), "{ops}");
    let shown = json(&ok(
        run(&app, None, xdg.path(), &["operator", "show", "alice", "--url", base, "-o", "json"]),
        0,
        "operator show",
    ));
    assert_eq!(shown["name"], "alice");
    ok(run(&app, None, xdg.path(), &["device", "list"]), 0, "device list with the session");
    ok(run(&app, None, xdg.path(), &["device", "create", "nope"]), 3, "no RegistryReadWrite");
    std::fs::write(xdg.path().join("bad"), "wrong password\n").unwrap();
    let bad = xdg.path().join("bad");
    let wrong = ["login", "alice", "--password-file", bad.to_str().unwrap(), "--url", base];
    ok(run(&app, None, xdg.path(), &wrong), 3, "a wrong password is 401 → 3");
    ok(run(&app, Some(&cs), xdg.path(), &["operator", "remove", "alice", "--url", base]), 0, "rm");
    ok(run(&app, None, xdg.path(), &["device", "list"]), 3, "a removed operator's session ends");
    let logout = command(&None).env("XDG_CONFIG_HOME", xdg.path()).arg("logout").output();
    ok(logout.unwrap(), 0, "logout");
    assert!(!session.exists());
    let none = run(&app, None, xdg.path(), &["device", "list"]);
    assert!(String::from_utf8_lossy(&none.stderr).contains("provisiond login"));
    ok(none, 2, "no credentials → 2");

    // A bad connection string → 2, naming the format.
    let bad_cs =
        run(&app, Some("HostName=localhost;SharedAccessKey=x"), xdg.path(), &["device", "list"]);
    assert!(
        String::from_utf8_lossy(&bad_cs.stderr).contains("HostName=<host>;SharedAccessKeyName=")
    );
    ok(bad_cs, 2, "bad connection string");

    // The server down → 7 with a clear message.
    let down =
        run(&app, Some(&cs), xdg.path(), &["device", "list", "--url", "https://127.0.0.1:1"]);
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach https://127.0.0.1:1"));
    ok(down, 7, "server down");

    // Every verb's help says what it does and shows an example.
    for verb in [
        ["device", "create"],
        ["group", "update"],
        ["enrollment", "list"],
        ["token", "mint"],
        ["bundle", "redeem"],
        ["cert", "revoke"],
        ["policy", "rotate-key"],
        ["ca", "crl"],
        ["audit", "tail"],
        ["audit", "checkpoint"],
    ] {
        let help = ok(run(&app, None, xdg.path(), &[verb[0], verb[1], "--help"]), 0, "help");
        assert!(help.contains("Example:\n  provisiond "), "{verb:?}: {help}");
    }
}
