use base64::Engine as _;

use crate::helpers::{spawn_app, store};

fn forms(key_b64: &str) -> Vec<Vec<u8>> {
    let raw = base64::engine::general_purpose::STANDARD.decode(key_b64).unwrap();
    vec![
        key_b64.as_bytes().to_vec(),
        key_b64.trim_end_matches('=').as_bytes().to_vec(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw).into_bytes(),
        hex::encode(&raw).into_bytes(),
        raw,
    ]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn no_policy_key_or_private_key_appears_in_the_database_in_any_form() {
    let app = spawn_app().await;
    let mut keys = vec![app.data.owner_key.clone()];
    for name in ["registryRead", "registryReadWrite", "service", "device"] {
        keys.push(app.policy_key(name).await);
    }
    let dump: Vec<u8> = if let Some(url) = &*app.data.database_url {
        let out = std::process::Command::new("pg_dump").arg(url).output().unwrap();
        assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    } else {
        let mut all = Vec::new();
        for f in std::fs::read_dir(app.data.path()).unwrap() {
            let path = f.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("provisiond.db") {
                all.extend(std::fs::read(&path).unwrap());
            }
        }
        all
    };
    assert!(dump.len() > 1000);
    for key in &keys {
        for form in forms(key) {
            assert!(!contains(&dump, &form), "a policy key is stored in the clear");
        }
    }
    assert!(!contains(&dump, b"PRIVATE KEY"), "plaintext PEM private key in the database");
}

#[tokio::test]
async fn a_sealed_value_copied_to_another_row_does_not_open() {
    let app = spawn_app().await;
    let ring = service::seal::KeyRing::load(&app.data.path().join("master.key")).unwrap();
    let s = store(&app.data).await;
    let mut conn = s.conn().await.unwrap();
    let owner = service::store::policies::get(&mut conn, "owner").await.unwrap().unwrap();
    let mut moved = service::store::policies::get(&mut conn, "service").await.unwrap().unwrap();
    moved.primary_key = owner.primary_key.clone();
    assert!(service::auth::sas::unseal_policy_keys(&ring, &owner).is_ok());
    assert!(service::auth::sas::unseal_policy_keys(&ring, &moved).is_err());
}

#[tokio::test]
async fn debug_logs_carry_no_key_or_token() {
    let data = crate::helpers::DataDir::init().await;
    let app = crate::helpers::spawn_with(data, &[("RUST_LOG", "debug")]).await;
    let token = app.owner_token();
    assert_eq!(app.get_as("/v1/audit", &token).await.status(), 200);
    let bad = token.replace("sig=", "sig=AAAA");
    app.get_as("/v1/audit", &bad).await;
    let logs = app.logs();
    assert!(logs.contains("DEBUG"), "debug logging is on");
    let sig = token.split("sig=").nth(1).unwrap().split('&').next().unwrap();
    for secret in
        forms(&app.data.owner_key).into_iter().map(|f| String::from_utf8_lossy(&f).into_owned())
    {
        if secret.len() > 20 {
            assert!(!logs.contains(&secret), "key in logs");
        }
    }
    assert!(!logs.contains(sig), "signature in logs");
    assert!(!logs.contains("SharedAccessSignature sr="), "token in logs");
}
