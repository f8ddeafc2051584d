use ca::sas::SasToken;
use ca::SasKey;

use crate::helpers::{assert_problem, now, policy_token, spawn_app};

#[tokio::test]
async fn missing_and_invalid_credentials_get_401_problems_with_www_authenticate() {
    let app = spawn_app().await;
    let owner = SasKey::from_base64(&app.data.owner_key).unwrap();
    let good = app.owner_token();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no header", None),
        ("garbage", Some("SharedAccessSignature garbage".into())),
        ("other scheme", Some("Basic dXNlcjpwYXNz".into())),
        ("expired", Some(SasToken::build("localhost", &owner, now() - 400, Some("owner")))),
        (
            "too far ahead",
            Some(SasToken::build("localhost", &owner, now() + 400 * 86400, Some("owner"))),
        ),
        ("wrong host", Some(SasToken::build("evil.example", &owner, now() + 60, Some("owner")))),
        (
            "wrong key",
            Some(SasToken::build("localhost", &SasKey::generate(), now() + 60, Some("owner"))),
        ),
        ("unknown policy", Some(SasToken::build("localhost", &owner, now() + 60, Some("nobody")))),
        ("no skn", Some(SasToken::build("localhost", &owner, now() + 60, None))),
        ("duplicate field", Some(format!("{good}&se=1"))),
        ("unknown field", Some(format!("{good}&foo=bar"))),
        ("tampered se", Some(good.replace("&se=", "&se=1"))),
    ];
    for (label, header) in cases {
        let mut req = app.client.get(app.url("/v1/audit"));
        if let Some(h) = header {
            req = req.header("Authorization", h);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{label}");
        assert_eq!(resp.headers()["www-authenticate"], "SharedAccessSignature", "{label}");
        assert_problem(resp, 401).await;
    }
    let ok = app.get_as("/v1/audit", &good).await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn azure_python_sdk_policy_tokens_authenticate() {
    let app = spawn_app().await;
    let script = format!(
        "from azure.iot.device.common.auth import sastoken, signing_mechanism\n\
         print(str(sastoken.RenewableSasToken('localhost', signing_mechanism.SymmetricKeySigningMechanism('{}'), key_name='owner', ttl=600)))",
        app.data.owner_key
    );
    let Ok(out) = std::process::Command::new("python3").args(["-c", &script]).output() else {
        return;
    };
    if !out.status.success() {
        assert_ne!(
            std::env::var("PROVISIOND_REQUIRE_INTEROP").as_deref(),
            Ok("1"),
            "azure-iot-device missing"
        );
        return;
    }
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(app.get_as("/v1/audit", token.trim()).await.status(), 200);
}

#[tokio::test]
async fn a_valid_policy_without_the_permission_gets_403() {
    let app = spawn_app().await;
    let key = app.policy_key("registryRead").await;
    let token = policy_token("registryRead", &key);
    let body = assert_problem(app.get_as("/v1/audit", &token).await, 403).await;
    assert!(body["detail"].as_str().unwrap().contains("AuditRead"));
}

#[tokio::test]
async fn repeated_failures_are_rate_limited_but_valid_credentials_still_pass() {
    let app = spawn_app().await;
    let bad = policy_token("owner", &SasKey::generate().to_base64());
    let mut limited = None;
    for i in 0..200 {
        let r = app.get_as("/v1/audit", &bad).await;
        match r.status().as_u16() {
            401 => continue,
            429 => {
                limited = Some(i);
                let retry: i64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=60).contains(&retry));
                assert_problem(r, 429).await;
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let limited = limited.expect("429 before the 200th failure");
    assert!(limited >= 10, "at least 10 failures tolerated, limited at {limited}");
    assert_eq!(app.get_as("/v1/audit", &app.owner_token()).await.status(), 200);
}
