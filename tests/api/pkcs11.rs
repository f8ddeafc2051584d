//! CA keys in a PKCS#11 token (API.md A27), end to end with SoftHSM2: each test has its own
//! token directory and `SOFTHSM2_CONF`. Skipped (visibly) without SoftHSM2, unless
//! `PROVISIOND_REQUIRE_INTEROP=1`, which makes its absence a failure.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::enrollment::p256;
use crate::helpers::{
    assert_problem, command, fresh_database, spawn_with, DataDir, TestApp, TestDatabase,
};
use crate::revocation::openssl;

const MODULES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];
const TOKEN: &str = "provisiond-test";
const PIN: &str = "246810";

/// A SoftHSM2 token of one's own.
pub struct SoftHsm {
    pub dir: tempfile::TempDir,
    pub module: String,
}

impl SoftHsm {
    /// A fresh initialized token, or None (after saying so) when SoftHSM2 is not installed.
    pub fn new() -> Option<Self> {
        let module = MODULES.iter().find(|m| Path::new(m).exists());
        let util = std::process::Command::new("softhsm2-util").arg("--version").output();
        let (Some(module), Ok(_)) = (module, util) else {
            assert_ne!(
                std::env::var("PROVISIOND_REQUIRE_INTEROP").as_deref(),
                Ok("1"),
                "SoftHSM2 is required (apt-get install softhsm2 opensc)"
            );
            eprintln!("SKIPPED: SoftHSM2 not installed (softhsm2-util / libsofthsm2.so)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tokens")).unwrap();
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.path().join("tokens").display()
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("pin"), format!("{PIN}\n")).unwrap();
        let hsm = Self { dir, module: (*module).to_owned() };
        let out = std::process::Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", hsm.conf())
            .args(["--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", "13579"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Some(hsm)
    }

    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    pub fn pin_file(&self) -> PathBuf {
        self.dir.path().join("pin")
    }

    pub fn tokens(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    /// The `init` / `serve` flags that select this token (under `token` as its label).
    pub fn flags(&self, token: &str) -> Vec<String> {
        vec![
            "--ca-key-store".into(),
            "pkcs11".into(),
            "--pkcs11-module".into(),
            self.module.clone(),
            "--pkcs11-token-label".into(),
            token.into(),
            "--pkcs11-pin-file".into(),
            self.pin_file().display().to_string(),
        ]
    }

    /// The config lines that select this token (for an existing data dir).
    pub fn toml(&self) -> String {
        format!(
            "ca_key_store = \"pkcs11\"\npkcs11_module = \"{}\"\npkcs11_token_label = \"{TOKEN}\"\n\
             pkcs11_pin_file = \"{}\"\n",
            self.module,
            self.pin_file().display()
        )
    }

    /// `pkcs11-tool` on this token, logged in.
    pub fn tool(&self, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", self.conf())
            .args(["--module", &self.module, "--token-label", TOKEN, "--login", "--pin", PIN])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// `provisiond init` on a fresh data dir with this token; returns the output on failure.
    pub async fn init(&self, db: TestDatabase, extra: &[&str]) -> Result<DataDir, String> {
        self.init_token(db, TOKEN, extra).await
    }

    /// [`SoftHsm::init`] naming the token `token`.
    pub async fn init_token(
        &self,
        db: TestDatabase,
        token: &str,
        extra: &[&str],
    ) -> Result<DataDir, String> {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("owner.txt");
        let out = command(&db)
            .env("SOFTHSM2_CONF", self.conf())
            .args(["init", "--data-dir"])
            .arg(dir.path().join("d"))
            .arg("--credentials-out")
            .arg(&creds)
            .args(self.flags(token))
            .args(extra)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let line = std::fs::read_to_string(&creds).unwrap();
        let owner_key = line.trim().rsplit_once("SharedAccessKey=").unwrap().1.to_owned();
        Ok(DataDir { dir, database_url: db, owner_key })
    }

    pub async fn serve(&self, data: DataDir) -> TestApp {
        let conf = self.conf().display().to_string();
        spawn_with(data, &[("SOFTHSM2_CONF", conf.as_str())]).await
    }
}

/// Enrolls `id` and returns (leaf PEM, issuing intermediate PEM).
async fn enroll(app: &TestApp, id: &str) -> (String, String) {
    let r = app.enroll("g", json!({"registration_id": id, "csr": p256(id)})).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let body: Value = r.json().await.unwrap();
    let certs = ::pem::parse_many(body["certificate_chain"].as_str().unwrap()).unwrap();
    (::pem::encode(&certs[0]), ::pem::encode(&certs[1]))
}

/// `openssl verify -x509_strict` of `leaf` against the served chain (root trusted).
fn verify_leaf(app: &TestApp, dir: &Path, leaf: &str) {
    let chain = std::fs::read_to_string(app.chain_path()).unwrap();
    let certs = ::pem::parse_many(&chain).unwrap();
    let root = dir.join("root.pem");
    std::fs::write(&root, ::pem::encode(certs.last().unwrap())).unwrap();
    let leaf_p = dir.join("leaf.pem");
    std::fs::write(&leaf_p, leaf).unwrap();
    let served = dir.join("served-chain.pem");
    std::fs::write(&served, chain).unwrap();
    let (ok, out) = openssl(&[
        "verify",
        "-x509_strict",
        "-CAfile",
        root.to_str().unwrap(),
        "-untrusted",
        served.to_str().unwrap(),
        leaf_p.to_str().unwrap(),
    ]);
    assert!(ok && out.contains(": OK"), "{out}");
}

/// Rotates the intermediate; checks that its key is in the token; keeps the served chain.
async fn rotate_into(app: &TestApp, hsm: &SoftHsm) -> String {
    let r = app.post_json("/v1/ca/intermediate/rotate", &app.owner_token(), json!({})).await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let body: Value = r.json().await.unwrap();
    let new_id = body["issuer_id"].as_str().unwrap().to_owned();
    std::fs::write(app.chain_path(), body["certificate_chain"].as_str().unwrap()).unwrap();
    assert!(listed(hsm).contains(&format!("provisiond-intermediate-{new_id}")));
    new_id
}

/// Every CA key of this token, from `pkcs11-tool -O`: (label, private?) pairs and the text.
fn listed(hsm: &SoftHsm) -> String {
    let (ok, out) = hsm.tool(&["-O"]);
    assert!(ok, "{out}");
    out
}

fn ski_hex(der: &[u8]) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    c.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                Some(hex::encode(k.0))
            }
            _ => None,
        })
        .unwrap()
}

/// The issuer ids of the served chain, current intermediate first, root last.
fn issuer_ids(app: &TestApp) -> Vec<String> {
    let chain = std::fs::read_to_string(app.chain_path()).unwrap();
    ::pem::parse_many(&chain).unwrap().iter().map(|p| ski_hex(p.contents())).collect()
}

/// Asserts that no CA private key is in the data dir or the database, in any encoding we can
/// recognise without the key itself (the token will not give it): no PEM private key, no
/// PKCS#8 or SEC1 EC private key structure, no sealed CA key row, no root key file.
async fn assert_no_ca_key_at_rest(app: &TestApp) {
    let pkcs8_ec = hex::decode("020100301306072a8648ce3d0201").unwrap();
    let sec1_p256 = hex::decode("30770201010420").unwrap();
    assert!(!app.data.path().join("root-ca.key").exists(), "root key file written");
    for entry in std::fs::read_dir(app.data.path()).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("PRIVATE KEY"), "{} holds a PEM private key", path.display());
        for needle in [&pkcs8_ec, &sec1_p256] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{} holds DER EC private key material",
                path.display()
            );
        }
    }
    let store = crate::helpers::store(&app.data).await;
    let mut conn = store.conn().await.unwrap();
    let rows = service::store::issuers::list(&mut conn).await.unwrap();
    for row in rows {
        assert!(row.private_key.is_none(), "issuer {} has a sealed key in the database", row.id);
        assert!(row.key_version.is_none());
        let label = row.key_label.clone().unwrap();
        let kind = if row.is_root == 1 { "root" } else { "intermediate" };
        assert_eq!(label, format!("provisiond-{kind}-{}", row.id));
    }
}

#[tokio::test]
async fn token_keys_sign_certificates_crls_ocsp_and_checkpoints_and_never_leave_the_token() {
    let Some(hsm) = SoftHsm::new() else { return };
    let data = hsm.init(fresh_database().await, &[]).await.unwrap();
    let config = std::fs::read_to_string(data.path().join("provisiond.toml")).unwrap();
    assert!(config.contains("ca_key_store = \"pkcs11\""), "{config}");
    assert!(config.contains("pkcs11_token_label"), "{config}");
    assert!(!config.contains(PIN), "the PIN is never written: {config}");
    let app = hsm.serve(data).await;
    app.put_group("g", json!({})).await;
    let tmp = tempfile::tempdir().unwrap();
    let (leaf, inter) = enroll(&app, "hsm-dev-1").await;
    verify_leaf(&app, tmp.path(), &leaf);

    // CRL and OCSP, signed in the token, verify with openssl.
    let chain = app.chain_path();
    crate::revocation::verified_crl(&app, tmp.path()).await;
    let (leaf_p, inter_p) = (tmp.path().join("leaf.pem"), tmp.path().join("inter.pem"));
    std::fs::write(&leaf_p, &leaf).unwrap();
    std::fs::write(&inter_p, &inter).unwrap();
    let (ok, out) = openssl(&[
        "ocsp",
        "-issuer",
        inter_p.to_str().unwrap(),
        "-cert",
        leaf_p.to_str().unwrap(),
        "-url",
        &app.url("/v1/ca/ocsp"),
        "-CAfile",
        chain.to_str().unwrap(),
    ]);
    assert!(ok && out.contains("Response verify OK") && out.contains(": good"), "{out}");

    // The audit checkpoint is an ES256 JWS by the intermediate in the token.
    let cp: Value =
        app.get_as("/v1/audit/checkpoint", &app.owner_token()).await.json().await.unwrap();
    let jws = cp["signature"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(jws).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let inter_der = ::pem::parse(&inter).unwrap().contents().to_vec();
    let (_, cert) = x509_parser::parse_x509_certificate(&inter_der).unwrap();
    let point = cert.public_key().subject_public_key.data.to_vec();
    let key = jsonwebtoken::DecodingKey::from_ec_der(&point);
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    jsonwebtoken::decode::<Value>(jws, &key, &validation).unwrap();

    // pkcs11-tool: both keys in the token, sensitive and never extractable; export refused.
    let ids = issuer_ids(&app);
    let objects = listed(&hsm);
    for (kind, id) in [("intermediate", &ids[0]), ("root", ids.last().unwrap())] {
        let label = format!("provisiond-{kind}-{id}");
        let private = objects
            .split("Private Key Object")
            .skip(1)
            .find(|o| o.contains(&format!("label:      {label}\n")))
            .unwrap_or_else(|| panic!("no private key {label}: {objects}"));
        assert!(private.contains("never extractable"), "{private}");
        assert!(private.contains("sensitive"), "{private}");
        // pkcs11-tool cannot export it (for EC keys it says so and exits 0): nothing comes out.
        let dump = hsm.dir.path().join("exported.der");
        let (ok, out) = hsm.tool(&[
            "--read-object",
            "--type",
            "privkey",
            "--label",
            &label,
            "--output-file",
            dump.to_str().unwrap(),
        ]);
        let exported = std::fs::read(&dump).unwrap_or_default();
        assert!(exported.is_empty(), "the token exported {label} ({ok}): {out}");
    }
    assert_no_ca_key_at_rest(&app).await;
}

#[tokio::test]
async fn init_adopts_existing_token_keys_by_label() {
    let Some(hsm) = SoftHsm::new() else { return };
    for label in ["my-root", "my-inter"] {
        let (ok, out) = hsm.tool(&[
            "--keypairgen",
            "--key-type",
            "EC:secp384r1",
            "--label",
            label,
            "--usage-sign",
            "--sensitive",
            "--private",
        ]);
        assert!(ok, "{out}");
    }
    let data = hsm
        .init(
            fresh_database().await,
            &["--root-key-label", "my-root", "--intermediate-key-label", "my-inter"],
        )
        .await
        .unwrap();
    let app = hsm.serve(data).await;
    app.put_group("g", json!({})).await;
    let tmp = tempfile::tempdir().unwrap();
    let (leaf, inter) = enroll(&app, "adopted-dev").await;
    verify_leaf(&app, tmp.path(), &leaf);
    // The intermediate's certificate carries the adopted (P-384) key.
    let inter_der = ::pem::parse(&inter).unwrap().contents().to_vec();
    let (_, cert) = x509_parser::parse_x509_certificate(&inter_der).unwrap();
    assert_eq!(cert.public_key().subject_public_key.data.len(), 97, "a P-384 point");
    let cp: Value =
        app.get_as("/v1/audit/checkpoint", &app.owner_token()).await.json().await.unwrap();
    let header = jsonwebtoken::decode_header(cp["signature"].as_str().unwrap()).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES384);
    let store = crate::helpers::store(&app.data).await;
    let mut conn = store.conn().await.unwrap();
    let labels: Vec<Option<String>> = service::store::issuers::list(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.key_label)
        .collect();
    assert!(labels.contains(&Some("my-root".into())) && labels.contains(&Some("my-inter".into())));
}

#[tokio::test]
async fn clear_errors_for_a_wrong_pin_a_missing_token_and_a_missing_key_label() {
    let Some(hsm) = SoftHsm::new() else { return };
    std::fs::write(hsm.pin_file(), "000000\n").unwrap();
    let err = hsm.init(TestDatabase::given(None), &[]).await.err().unwrap();
    assert!(err.contains("refused the PIN"), "{err}");
    std::fs::write(hsm.pin_file(), format!("{PIN}\n")).unwrap();

    let err = hsm.init_token(TestDatabase::given(None), "no-such-token", &[]).await.err().unwrap();
    assert!(err.contains("no-such-token"), "{err}");

    let err = hsm
        .init(TestDatabase::given(None), &["--root-key-label", "no-such-key"])
        .await
        .err()
        .unwrap();
    assert!(err.contains("no-such-key"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // A key deleted under a running server: 409 naming its label; a restart refuses to start,
    // naming it too.
    let data = hsm.init(fresh_database().await, &[]).await.unwrap();
    let mut app = hsm.serve(data).await;
    app.put_group("g", json!({})).await;
    let label = format!("provisiond-intermediate-{}", issuer_ids(&app)[0]);
    let (ok, out) = hsm.tool(&["--delete-object", "--type", "privkey", "--label", &label]);
    assert!(ok, "{out}");
    let r = app.enroll("g", json!({"registration_id": "lost-key", "csr": p256("lost-key")})).await;
    let body = assert_problem(r, 409).await;
    assert!(body["detail"].as_str().unwrap().contains(&label), "{body}");
    app.stop();
    let mut serve = command(&app.data.database_url);
    serve.env("SOFTHSM2_CONF", hsm.conf()).arg("serve").arg("--data-dir").arg(app.data.path());
    let out = serve.args(["--listen", "127.0.0.1:0"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&label), "{err}");
}

#[tokio::test]
async fn rotation_creates_the_next_intermediate_in_the_token() {
    let Some(hsm) = SoftHsm::new() else { return };
    let data = hsm.init(fresh_database().await, &[]).await.unwrap();
    let app = hsm.serve(data).await;
    app.put_group("g", json!({})).await;
    let tmp = tempfile::tempdir().unwrap();
    let (old_leaf, _) = enroll(&app, "before-rotation").await;
    let new_id = rotate_into(&app, &hsm).await;
    let (new_leaf, new_inter) = enroll(&app, "after-rotation").await;
    let new_inter_der = ::pem::parse(&new_inter).unwrap().into_contents();
    let (_, c) = x509_parser::parse_x509_certificate(&new_inter_der).unwrap();
    assert!(c.subject().to_string().contains("Intermediate"));
    let ski = ski_hex(&new_inter_der);
    assert_eq!(ski, new_id, "new certificates come from the new intermediate");
    verify_leaf(&app, tmp.path(), &new_leaf);
    verify_leaf(&app, tmp.path(), &old_leaf);
    assert_no_ca_key_at_rest(&app).await;
}

#[tokio::test]
async fn a_file_key_deployment_moves_into_the_token_by_rotation() {
    let Some(hsm) = SoftHsm::new() else { return };
    let mut app = crate::helpers::spawn_with(DataDir::init().await, &[]).await;
    app.put_group("g", json!({})).await;
    let tmp = tempfile::tempdir().unwrap();
    let (old_leaf, _) = enroll(&app, "file-key-dev").await;
    app.stop();
    let toml = app.data.path().join("provisiond.toml");
    let mut config: String = std::fs::read_to_string(&toml)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("ca_key_store") && !l.starts_with("pkcs11_"))
        .map(|l| format!("{l}\n"))
        .collect();
    config.push_str(&hsm.toml());
    std::fs::write(&toml, config).unwrap();
    let conf = hsm.conf().display().to_string();
    app.restart_with(&[("SOFTHSM2_CONF", conf.as_str())]).await;
    let new_id = rotate_into(&app, &hsm).await;
    let (new_leaf, _) = enroll(&app, "token-key-dev").await;
    verify_leaf(&app, tmp.path(), &new_leaf);
    verify_leaf(&app, tmp.path(), &old_leaf);
    let store = crate::helpers::store(&app.data).await;
    let mut conn = store.conn().await.unwrap();
    let row = service::store::issuers::list(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.id == new_id)
        .unwrap();
    assert!(row.private_key.is_none());
    assert_eq!(row.key_label, Some(format!("provisiond-intermediate-{new_id}")));
}

#[tokio::test]
async fn an_unreachable_token_answers_503_and_recovers_by_itself() {
    let Some(hsm) = SoftHsm::new() else { return };
    let data = hsm.init(fresh_database().await, &[]).await.unwrap();
    let app = hsm.serve(data).await;
    app.put_group("g", json!({})).await;
    enroll(&app, "before-fault").await;
    // SoftHSM2 keeps the token in memory; moving its directory away is what makes it fail
    // (checked: signatures fail, and a re-initialized module finds no token).
    let away = hsm.dir.path().join("tokens.away");
    std::fs::rename(hsm.tokens(), &away).unwrap();
    let r = app.enroll("g", json!({"registration_id": "during", "csr": p256("during")})).await;
    assert_problem(r, 503).await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_problem(ready, 503).await;
    let r = app.get_as("/v1/audit/checkpoint", &app.owner_token()).await;
    assert_problem(r, 503).await;
    std::fs::rename(&away, hsm.tokens()).unwrap();
    let mut recovered = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
        if ready.status() == 200 {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "the token never came back: {}", app.logs());
    enroll(&app, "after-fault").await;
    assert!(!app.logs().contains("panicked"));
}

#[tokio::test]
async fn a_master_key_ring_wrapped_by_the_token_is_useless_without_it_and_rotates() {
    let Some(hsm) = SoftHsm::new() else { return };
    let data = hsm
        .init(
            fresh_database().await,
            &["--master-key-wrap", "pkcs11", "--pkcs11-wrap-key-label", "ring-wrap"],
        )
        .await
        .unwrap();
    let key_file = data.path().join("master.key");
    let text = std::fs::read_to_string(&key_file).unwrap();
    assert!(text.contains("wrapped-pkcs11-aes-gcm:") && !text.contains("v1:"), "{text}");
    assert!(service::seal::KeyRing::load(&key_file).is_err(), "the file alone opens nothing");
    let objects = listed(&hsm);
    let wrap = objects
        .split("Secret Key Object")
        .nth(1)
        .unwrap_or_else(|| panic!("no AES key: {objects}"));
    assert!(wrap.contains("ring-wrap") && wrap.contains("never extractable"), "{wrap}");

    let mut app = hsm.serve(data).await;
    app.put_group("g", json!({})).await;
    enroll(&app, "wrapped-ring-dev").await;

    // rotate-master-key reads and writes the wrapped file; the server keeps opening secrets.
    let out = command(&app.data.database_url)
        .env("SOFTHSM2_CONF", hsm.conf())
        .args(["rotate-master-key", "--grace-secs", "0", "--data-dir"])
        .arg(app.data.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rotated = std::fs::read_to_string(&key_file).unwrap();
    assert!(rotated.contains("wrapped-pkcs11-aes-gcm:") && rotated != text, "{rotated}");
    let conf = hsm.conf().display().to_string();
    app.restart_with(&[("SOFTHSM2_CONF", conf.as_str())]).await;
    assert_eq!(app.get_as("/v1/audit", &app.owner_token()).await.status(), 200);
    enroll(&app, "after-master-rotation").await;

    // Without the token (an empty SoftHSM2 token directory), serve does not start.
    app.stop();
    let empty = tempfile::tempdir().unwrap();
    let other_conf = empty.path().join("softhsm2.conf");
    std::fs::write(&other_conf, format!("directories.tokendir = {}\n", empty.path().display()))
        .unwrap();
    let mut serve = command(&app.data.database_url);
    serve.env("SOFTHSM2_CONF", &other_conf).arg("serve").arg("--data-dir").arg(app.data.path());
    let out = serve.args(["--listen", "127.0.0.1:0"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(TOKEN), "{err}");
}
