use std::io::{Read as _, Write as _};
use std::process::Command;

use crate::helpers::spawn_app;

#[tokio::test]
async fn curl_verifies_the_server_certificate_against_the_published_chain() {
    let app = spawn_app().await;
    for host in ["127.0.0.1", "localhost"] {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(app.chain_path())
            .arg(format!("https://{host}:{}/healthz", app.port))
            .output()
            .unwrap();
        assert!(out.status.success(), "{host}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), r#"{"status":"ok"}"#);
    }
}

#[tokio::test]
async fn server_sends_leaf_and_intermediate_and_refuses_tls_1_1() {
    let app = spawn_app().await;
    let connect = format!("127.0.0.1:{}", app.port);
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &connect, "-showcerts", "-verify_return_error", "-CAfile"])
        .arg(app.chain_path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("-----BEGIN CERTIFICATE-----").count(), 2, "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &connect, "-tls1_1"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "TLS 1.1 must be refused");
    let san = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {connect} </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName"
        ))
        .output()
        .unwrap();
    let san = String::from_utf8_lossy(&san.stdout);
    for name in ["DNS:localhost", "IP Address:127.0.0.1", "IP Address:0:0:0:0:0:0:0:1"] {
        assert!(san.contains(name), "{name} missing in {san}");
    }
}

#[tokio::test]
async fn plaintext_http_on_the_tls_port_neither_crashes_nor_wedges_it() {
    let app = spawn_app().await;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", app.port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
