use std::os::unix::fs::PermissionsExt as _;
use std::process::Stdio;

use crate::helpers::{command, fresh_database, spawn_with, DataDir};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn init_writes_the_data_dir_with_private_modes_and_a_second_init_changes_nothing() {
    let data = DataDir::init().await;
    let d = data.path();
    assert_eq!(mode(&d.join("master.key")), 0o600);
    assert_eq!(mode(&d.join("root-ca.key")), 0o600);
    assert_eq!(mode(&data.dir.path().join("owner.txt")), 0o600);
    let toml = std::fs::read_to_string(d.join("provisiond.toml")).unwrap();
    assert!(toml.contains("host_name = \"localhost\""));
    let scope = toml.lines().find(|l| l.starts_with("id_scope")).unwrap();
    let scope = scope.split('"').nth(1).unwrap();
    assert!(
        scope.len() == 11
            && scope.starts_with("0ne")
            && scope[3..].chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
    );
    let line = std::fs::read_to_string(data.dir.path().join("owner.txt")).unwrap();
    assert!(line.starts_with("HostName=localhost;SharedAccessKeyName=owner;SharedAccessKey="));
    assert_eq!(line.lines().count(), 1);

    let snapshot = |p: &std::path::Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.to_string_lossy().contains("provisiond.db"))
            .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
            .collect();
        v.sort();
        v
    };
    let before = snapshot(&d);
    let out = command(&data.database_url).args(["init", "--data-dir"]).arg(&d).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already initialized"));
    assert!(out.stdout.is_empty(), "no key printed");
    assert_eq!(before, snapshot(&d));
}

#[tokio::test]
async fn init_prints_the_owner_connection_string_once_without_credentials_out() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database().await;
    let out = command(&db).args(["init", "--data-dir"]).arg(dir.path().join("d")).output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1);
    assert!(stdout.starts_with("HostName=localhost;SharedAccessKeyName=owner;SharedAccessKey="));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("SharedAccessKey="));
}

#[tokio::test]
async fn serve_initializes_on_first_run_and_writes_the_owner_credentials_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database().await;
    let d = dir.path().join("fresh");
    let mut child = command(&db)
        .args(["serve", "--init", "--data-dir"])
        .arg(&d)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(line.starts_with("mqtt listening on mqtts://127.0.0.1:"), "{line}");
    line.clear();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(line.starts_with("listening on https://127.0.0.1:"), "{line}");
    let creds = d.join("owner-credentials.txt");
    assert_eq!(mode(&creds), 0o600);
    assert!(std::fs::read_to_string(&creds).unwrap().contains("SharedAccessKeyName=owner"));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("owner-credentials.txt"), "logs name the file");
    assert!(!stderr.contains("SharedAccessKey="), "but not the key");
}

#[tokio::test]
async fn a_wrong_or_missing_master_key_stops_serve_with_a_clear_error() {
    let data = DataDir::init().await;
    let key = data.path().join("master.key");
    std::fs::write(&key, service::seal::KeyRing::generate().to_file_text().as_bytes()).unwrap();
    let out = command(&data.database_url)
        .args(["serve", "--data-dir"])
        .arg(data.path())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("master key does not match"), "{err}");
    std::fs::remove_file(&key).unwrap();
    let out = command(&data.database_url)
        .args(["serve", "--data-dir"])
        .arg(data.path())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("provisiond init"));
}

#[tokio::test]
async fn serve_stops_gracefully_on_sigterm() {
    let data = DataDir::init().await;
    let mut app = spawn_with(data, &[]).await;
    app.stop();
    let status = app.child.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
}

#[tokio::test]
async fn master_key_rotation_interrupted_halfway_and_resumed_keeps_every_secret_readable() {
    let mut app = crate::helpers::spawn_app().await;
    let key_file = app.data.path().join("master.key");
    let rotate = |extra: &[&str]| {
        command(&app.data.database_url)
            .args(["rotate-master-key", "--grace-secs", "0", "--batch-size", "1", "--data-dir"])
            .arg(app.data.path())
            .args(extra)
            .output()
            .unwrap()
    };
    let out = rotate(&["--stop-after-batches", "3"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("run rotate-master-key again to resume"));
    let text = std::fs::read_to_string(&key_file).unwrap();
    assert!(text.contains("v1:") && text.contains("v2:"), "both versions kept while unfinished");
    // The running server reads values sealed under either version.
    assert_eq!(app.get_as("/v1/audit", &app.owner_token()).await.status(), 200);

    let out = rotate(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&key_file).unwrap();
    assert!(!text.contains("v1:") && text.contains("v2:"), "old version retired: {text}");
    assert_eq!(mode(&key_file), 0o600);
    assert_eq!(app.get_as("/v1/audit", &app.owner_token()).await.status(), 200);
    // A fresh start opens everything (CA key, audit key, policies) with the new key alone.
    app.restart().await;
    assert_eq!(app.get_as("/v1/audit", &app.owner_token()).await.status(), 200);
    let v: serde_json::Value =
        app.get_as("/v1/audit/verify", &app.owner_token()).await.json().await.unwrap();
    assert_eq!(v["ok"], true);
}

#[tokio::test]
async fn export_import_operator_and_offline_sas_token_commands() {
    use std::io::Write as _;
    let app = crate::helpers::spawn_app().await;
    for i in 0..5 {
        app.put_device(&format!("exp-{i}"), serde_json::json!({"tags": {"i": i}})).await;
    }
    let out = app.data.dir.path().join("devices.ndjson");
    let run = |args: &[&str]| {
        command(&app.data.database_url)
            .args(args)
            .arg("--data-dir")
            .arg(app.data.path())
            .output()
            .unwrap()
    };
    let o = run(&["export", "--with-keys", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode(&out), 0o600, "keys in the file: 0600");
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 5);

    // Import into another deployment, with one bad line; the rest still lands, keys preserved.
    let other = DataDir::init().await;
    let input = other.dir.path().join("in.ndjson");
    std::fs::write(&input, format!("{text}{{\"device_id\": \"bad id\"}}\nnot json\n")).unwrap();
    let o = command(&other.database_url)
        .args(["import", input.to_str().unwrap(), "--data-dir"])
        .arg(other.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("imported 5 devices, 2 lines failed"), "{err}");
    let o = command(&other.database_url)
        .args(["import", input.to_str().unwrap(), "--data-dir"])
        .arg(other.path())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("imported 5 devices"),
        "idempotent re-import"
    );
    let other_app = spawn_with(other, &[]).await;
    let d: serde_json::Value =
        other_app.get_as("/v1/devices/exp-3", &other_app.owner_token()).await.json().await.unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().nth(3).unwrap()).unwrap();
    assert_eq!(d["authentication"], first["authentication"]);
    assert_eq!(d["tags"], serde_json::json!({"i": 3}));

    // Operators from the CLI (password on stdin), then log in over REST.
    let mut child = command(&app.data.database_url)
        .args(["operator", "add", "carol", "--permission", "AuditRead", "--data-dir"])
        .arg(app.data.path())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"a long passphrase\n").unwrap();
    assert!(child.wait().unwrap().success());
    let r = app
        .client
        .post(app.url("/v1/auth/login"))
        .json(&serde_json::json!({"username": "carol", "password": "a long passphrase"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Offline token minting.
    let o = run(&["sas-token", "--policy", "owner", "--ttl-secs", "600"]);
    let token = String::from_utf8(o.stdout).unwrap();
    assert_eq!(app.get_as("/v1/audit", token.trim()).await.status(), 200);
    let o = run(&["sas-token", "--device", "exp-1"]);
    let token = String::from_utf8(o.stdout).unwrap();
    assert!(token.starts_with("SharedAccessSignature sr=localhost%2Fdevices%2Fexp-1&sig="));
}

#[tokio::test]
async fn init_with_an_offline_root_imports_the_intermediate_and_never_sees_the_root_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let sh = |cmd: String| {
        let o = std::process::Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
        assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stderr));
    };
    sh(format!("cd {d} && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out root.key 2>/dev/null && \
        openssl req -x509 -new -key root.key -subj '/CN=Offline Root' -days 3650 \
          -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' -out root.pem && \
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out inter.key 2>/dev/null && \
        openssl req -new -key inter.key -subj '/CN=Offline Intermediate' -out inter.csr && \
        printf 'basicConstraints=critical,CA:TRUE,pathlen:0\\nkeyUsage=critical,digitalSignature,keyCertSign,cRLSign\\nsubjectKeyIdentifier=hash\\nauthorityKeyIdentifier=keyid\\n' > ext.cnf && \
        openssl x509 -req -in inter.csr -CA root.pem -CAkey root.key -CAcreateserial -days 1000 -extfile ext.cnf -out inter.pem 2>/dev/null && \
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out other.key 2>/dev/null"));
    let db = fresh_database().await;
    let data = dir.path().join("data");
    // A key that does not match the certificate is refused and nothing is written.
    let bad = command(&db)
        .args(["init", "--data-dir"])
        .arg(&data)
        .args([
            "--intermediate-cert",
            &format!("{d}/inter.pem"),
            "--intermediate-key",
            &format!("{d}/other.key"),
            "--root-cert",
            &format!("{d}/root.pem"),
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("does not match"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(!data.join("provisiond.toml").exists());
    let _ = std::fs::remove_dir_all(&data);
    let db = fresh_database().await;
    let ok = command(&db)
        .args(["init", "--data-dir"])
        .arg(&data)
        .args(["--credentials-out", &format!("{d}/owner.txt")])
        .args([
            "--intermediate-cert",
            &format!("{d}/inter.pem"),
            "--intermediate-key",
            &format!("{d}/inter.key"),
            "--root-cert",
            &format!("{d}/root.pem"),
        ])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(!data.join("root-ca.key").exists(), "the root key never touches provisiond");
    let line = std::fs::read_to_string(dir.path().join("owner.txt")).unwrap();
    let owner_key = line.trim().rsplit_once("SharedAccessKey=").unwrap().1.to_owned();
    let moved = DataDir { dir, database_url: db, owner_key };
    // DataDir expects the data dir at <tmp>/d.
    std::fs::rename(&data, moved.path()).unwrap();
    let app = spawn_with(moved, &[]).await;
    app.put_group("g", serde_json::json!({})).await;
    let r: serde_json::Value = app
        .enroll(
            "g",
            serde_json::json!({"registration_id": "o-1", "csr": crate::enrollment::p256("o-1")}),
        )
        .await
        .json()
        .await
        .unwrap();
    std::fs::write(app.data.dir.path().join("leaf.pem"), r["certificate_chain"].as_str().unwrap())
        .unwrap();
    let v = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(app.data.dir.path().join("root.pem"))
        .arg("-untrusted")
        .arg(app.data.dir.path().join("inter.pem"))
        .arg(app.data.dir.path().join("leaf.pem"))
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let rot = app
        .post_json("/v1/ca/intermediate/rotate", &app.owner_token(), serde_json::json!({}))
        .await;
    assert_eq!(rot.status(), 409, "rotation needs the (offline) root key");
}

/// An explicit data dir that is missing (a typo, the wrong directory) is an error naming the
/// fix, never a second PKI made silently (API.md A30).
#[tokio::test]
async fn serve_refuses_a_missing_explicit_data_dir_and_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_database().await;
    let d = dir.path().join("typo");
    let out = command(&db)
        .args(["serve", "--data-dir"])
        .arg(&d)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("provisiond init") && err.contains("serve --init"), "{err}");
    assert!(!d.exists(), "nothing created");
    assert!(out.stdout.is_empty());
}

/// A database that cannot be reached at start: a non-zero exit within seconds, naming where it
/// was looked for (password masked) and what to check — once, not the same words twice.
#[tokio::test]
async fn serve_names_an_unreachable_database_and_what_to_check() {
    let data = DataDir::init().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgres://provisiond:hunter2@127.0.0.1:{closed}/fleet");
    let out = command(&Some(url))
        .args(["serve", "--data-dir"])
        .arg(data.path())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot reach the database postgres://provisiond:***@127.0.0.1:{closed}/fleet"
        )),
        "{err}"
    );
    assert!(err.contains("database_url") && !err.contains("hunter2"), "{err}");
    assert_eq!(err.matches("database unavailable").count(), 1, "{err}");
}

/// `init --public-url --tls-name` (API.md A30): certificates point at the public URL, its host
/// is a name of the server certificate, and a URL of the wrong form is refused.
#[tokio::test]
async fn init_takes_the_public_url_and_tls_names_that_certificates_carry() {
    let db = fresh_database().await;
    let data = DataDir::init_with_args(
        db,
        &["--public-url", "https://pki.example.test:9443", "--tls-name", "broker.example.test"],
    )
    .await;
    let toml = std::fs::read_to_string(data.path().join("provisiond.toml")).unwrap();
    assert!(toml.contains("https://pki.example.test:9443"), "{toml}");
    let app = spawn_with(data, &[]).await;
    let r = app
        .client
        .put(app.url("/v1/enrollment-groups/g"))
        .header("Authorization", app.owner_token())
        .json(&serde_json::json!({"attestation": {"type": "symmetric_key"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = app
        .client
        .post(app.url("/v1/enrollment-groups/g/registrations"))
        .header("Authorization", app.owner_token())
        .json(&serde_json::json!({"registration_id": "u-1", "csr": crate::enrollment::p256("u-1")}))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    let leaf = ::pem::parse_many(body["certificate_chain"].as_str().unwrap()).unwrap()[0]
        .contents()
        .to_vec();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let text = format!("{:?}", cert.extensions());
    assert!(text.contains("https://pki.example.test:9443/v1/ca/crl/"), "{text}");
    assert!(text.contains("https://pki.example.test:9443/v1/ca/ocsp"), "{text}");

    let out = command(&None)
        .args(["init", "--data-dir"])
        .arg(app.data.dir.path().join("other"))
        .args(["--public-url", "http://plain.example?x=1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("public_url"));
}

/// A backup restored into a fresh data dir serves every device, key, certificate and audit
/// row, and its audit chain verifies (on PostgreSQL with the pg_dump / pg_restore recipe).
#[tokio::test]
async fn backup_then_restore_brings_back_everything_and_the_audit_verifies() {
    let app = crate::helpers::spawn_app().await;
    app.put_group("g", serde_json::json!({"attestation": {"type": "symmetric_key"}})).await;
    let r = app
        .enroll(
            "g",
            serde_json::json!({"registration_id": "b-1", "csr": crate::enrollment::p256("b-1")}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let put = app
        .client
        .put(app.url("/v1/devices/b-2"))
        .header("Authorization", app.owner_token())
        .json(&serde_json::json!({"tags": {"site": "x"}}))
        .send()
        .await
        .unwrap();
    let before: serde_json::Value = put.json().await.unwrap();
    let out = app.data.dir.path().join("backup.tar");
    let b = command(&app.data.database_url)
        .args(["backup", "--data-dir"])
        .arg(app.data.path())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert_eq!(mode(&out), 0o600);
    let again = command(&app.data.database_url)
        .args(["backup", "--data-dir"])
        .arg(app.data.path())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!again.status.success(), "an existing file is never overwritten");

    let restored_db = if crate::helpers::backend_is_postgres() {
        let target = fresh_database().await;
        let dump = app.data.dir.path().join("db.dump");
        let src = app.data.database_url.clone().unwrap();
        let d = std::process::Command::new("pg_dump")
            .args(["--format=custom", "--file"])
            .arg(&dump)
            .arg(&src)
            .output()
            .unwrap();
        assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
        let r = std::process::Command::new("pg_restore")
            .args(["--no-owner", "--dbname"])
            .arg(target.as_ref().unwrap())
            .arg(&dump)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        target
    } else {
        crate::helpers::TestDatabase::given(None)
    };
    let dir2 = tempfile::tempdir().unwrap();
    let d2 = dir2.path().join("restored");
    let r = command(&restored_db)
        .args(["restore", "--data-dir"])
        .arg(&d2)
        .arg("--from")
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(mode(&d2), 0o700);
    assert_eq!(mode(&d2.join("master.key")), 0o600);
    let verify =
        command(&restored_db).args(["audit", "verify", "--data-dir"]).arg(&d2).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    let data2 =
        DataDir { dir: dir2, database_url: restored_db, owner_key: app.data.owner_key.clone() };
    // `DataDir::path()` is `dir/d`: serve the restored dir through a link of that name.
    std::os::unix::fs::symlink(&d2, data2.dir.path().join("d")).unwrap();
    let app2 = spawn_with(data2, &[]).await;
    let after: serde_json::Value =
        app2.get_as("/v1/devices/b-2", &app2.owner_token()).await.json().await.unwrap();
    assert_eq!(before["authentication"], after["authentication"], "keys come back");
    assert_eq!(before["tags"], after["tags"]);
    let certs: serde_json::Value = app2
        .get_as("/v1/certificates?device_id=b-1", &app2.owner_token())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(certs["items"][0]["status"], "valid");
    let v: serde_json::Value =
        app2.get_as("/v1/audit/verify", &app2.owner_token()).await.json().await.unwrap();
    assert_eq!(v["ok"], true);
    let restore_again = command(&None)
        .args(["restore", "--data-dir"])
        .arg(&d2)
        .arg("--from")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!restore_again.status.success(), "restore needs an absent or empty directory");
}

/// `operator add` requires a permission (valid names listed), refuses to replace without
/// --replace, takes --password-file; `operator list` shows names and permissions, never hashes.
#[tokio::test]
async fn operator_cli_requires_permissions_refuses_silent_replacement_and_lists() {
    let data = DataDir::init().await;
    let run = |args: &[&str]| {
        command(&data.database_url)
            .args(args)
            .arg("--data-dir")
            .arg(data.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let pw = data.dir.path().join("pw");
    std::fs::write(&pw, "correct horse battery\n").unwrap();
    let pw = pw.display().to_string();
    let none = run(&["operator", "add", "dave", "--password-file", &pw]);
    assert_eq!(none.status.code(), Some(2), "a permission is required");
    let bad =
        run(&["operator", "add", "dave", "--permission", "Everything", "--password-file", &pw]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("RegistryRead"), "valid names listed");
    let ok = run(&["operator", "add", "dave", "--permission", "AuditRead", "--password-file", &pw]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let again =
        run(&["operator", "add", "dave", "--permission", "PolicyAdmin", "--password-file", &pw]);
    assert_eq!(again.status.code(), Some(5), "no silent replacement");
    let replaced = run(&[
        "operator",
        "add",
        "dave",
        "--permission",
        "RegistryRead",
        "--password-file",
        &pw,
        "--replace",
    ]);
    assert!(replaced.status.success());
    let list = run(&["operator", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert_eq!(text.trim(), "dave\tRegistryRead");
    assert!(!text.contains("argon2"));
}

/// export → import keeps every field of a device: owner (when its enrollment exists there,
/// else the line fails 409 unless --owner admin), enrollment group, creation time, keys, tags.
#[tokio::test]
async fn export_then_import_keeps_owner_group_and_timestamps() {
    let app = crate::helpers::spawn_app().await;
    app.put_group(
        "fab",
        serde_json::json!({"attestation": {"type": "symmetric_key"}, "credential": "sas"}),
    )
    .await;
    let r = app.enroll("fab", serde_json::json!({"registration_id": "own-1"})).await;
    assert_eq!(r.status(), 201);
    app.put_device("adm-1", serde_json::json!({"tags": {"a": 1}})).await;
    let out = app.data.dir.path().join("export.ndjson");
    let o = command(&app.data.database_url)
        .args(["export", "--with-keys", "--out"])
        .arg(&out)
        .arg("--data-dir")
        .arg(app.data.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let exported: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    let other = DataDir::init().await;
    let import = |extra: &[&str]| {
        command(&other.database_url)
            .arg("import")
            .arg(&out)
            .args(extra)
            .arg("--data-dir")
            .arg(other.path())
            .output()
            .unwrap()
    };
    let o = import(&[]);
    assert_eq!(o.status.code(), Some(1), "the group is missing there");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--owner admin"));
    let other_app = spawn_with(other, &[]).await;
    other_app
        .put_group(
            "fab",
            serde_json::json!({"attestation": {"type": "symmetric_key"}, "credential": "sas"}),
        )
        .await;
    let mut other_app = other_app;
    other_app.stop();
    let o = command(&other_app.data.database_url)
        .arg("import")
        .arg(&out)
        .arg("--data-dir")
        .arg(other_app.data.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    other_app.restart().await;
    for before in &exported {
        let id = before["device_id"].as_str().unwrap();
        let after: serde_json::Value = other_app
            .get_as(&format!("/v1/devices/{id}"), &other_app.owner_token())
            .await
            .json()
            .await
            .unwrap();
        for member in ["owner", "enrollment_group_id", "created_at", "authentication", "tags"] {
            assert_eq!(before[member], after[member], "{id}: {member}");
        }
    }
}
