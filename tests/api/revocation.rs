use serde_json::{json, Value};

use crate::enrollment::p256;
use crate::helpers::{assert_problem, leaf_serial, spawn_app, TestApp};

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }
    fn put(&self, name: &str, content: impl AsRef<[u8]>) -> std::path::PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

pub fn openssl(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("openssl").args(args).output().unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

/// Fetches the current CRL into `dir/crl.der` and has `openssl crl -verify` check it against
/// the served chain; returns openssl's text output.
pub async fn verified_crl(app: &TestApp, dir: &std::path::Path) -> String {
    let crl = app.client.get(app.url("/v1/ca/crl")).send().await.unwrap().bytes().await.unwrap();
    let crl_p = dir.join("crl.der");
    std::fs::write(&crl_p, &crl).unwrap();
    let chain = app.chain_path();
    let (ok, out) = openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        crl_p.to_str().unwrap(),
        "-CAfile",
        chain.to_str().unwrap(),
        "-noout",
        "-verify",
        "-text",
    ]);
    assert!(ok && out.contains("verify OK"), "{out}");
    out
}

async fn enrolled(app: &TestApp, group: &str, id: &str) -> (String, String) {
    let r: Value = app
        .enroll(group, json!({"registration_id": id, "csr": p256(id)}))
        .await
        .json()
        .await
        .unwrap();
    let chain = r["certificate_chain"].as_str().unwrap().to_owned();
    let certs = ::pem::parse_many(&chain).unwrap();
    (::pem::encode(&certs[0]), ::pem::encode(&certs[1]))
}

#[tokio::test]
async fn revocation_shows_in_ocsp_and_crl_for_openssl_and_python() {
    let app = spawn_app().await;
    app.put_group("g", json!({})).await;
    let (leaf, inter) = enrolled(&app, "g", "ocsp-dev").await;
    let f = Files::new();
    let leaf_p = f.put("leaf.pem", &leaf);
    let inter_p = f.put("inter.pem", &inter);
    let chain = app.chain_path();
    let url = app.url("/v1/ca/ocsp");
    let query = |want: &str| {
        let (ok, out) = openssl(&[
            "ocsp",
            "-issuer",
            inter_p.to_str().unwrap(),
            "-cert",
            leaf_p.to_str().unwrap(),
            "-url",
            &url,
            "-CAfile",
            chain.to_str().unwrap(),
            "-resp_text",
        ]);
        assert!(ok && out.contains("Response verify OK"), "{out}");
        assert!(out.contains(&format!("leaf.pem: {want}")), "{want}: {out}");
        out
    };
    query("good");
    let serial = leaf_serial(&leaf);
    let r = app
        .post_json(
            &format!("/v1/certificates/{}/revoke", serial.to_uppercase()),
            &app.owner_token(),
            json!({"reason": "key_compromise"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "revoked");
    assert_eq!(body["reason"], "key_compromise");
    assert_eq!(body["serial"], serial);
    let out = query("revoked");
    assert!(out.contains("keyCompromise"), "{out}");

    let out = verified_crl(&app, f.dir.path()).await;
    let crl_p = f.dir.path().join("crl.der");
    assert!(out.contains(&serial.to_uppercase()), "{out}");

    // Python cryptography parses both artifacts.
    let (_, req_out) = openssl(&[
        "ocsp",
        "-issuer",
        inter_p.to_str().unwrap(),
        "-cert",
        leaf_p.to_str().unwrap(),
        "-reqout",
        f.dir.path().join("req.der").to_str().unwrap(),
    ]);
    let _ = req_out;
    let req = std::fs::read(f.dir.path().join("req.der")).unwrap();
    let resp = app
        .client
        .post(&url)
        .header("Content-Type", "application/ocsp-request")
        .body(req.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/ocsp-response");
    let resp_p = f.put("resp.der", resp.bytes().await.unwrap());
    let script = format!(
        "from cryptography import x509\nfrom cryptography.x509 import ocsp\n\
         crl = x509.load_der_x509_crl(open('{}','rb').read())\n\
         assert crl.get_revoked_certificate_by_serial_number(int('{serial}', 16)) is not None\n\
         r = ocsp.load_der_ocsp_response(open('{}','rb').read())\n\
         assert r.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL\n\
         assert r.certificate_status == ocsp.OCSPCertStatus.REVOKED, r.certificate_status\n\
         print('ok')",
        crl_p.display(),
        resp_p.display()
    );
    let out = std::process::Command::new("python3").args(["-c", &script]).output().unwrap();
    if String::from_utf8_lossy(&out.stderr).contains("No module named") {
        assert_ne!(std::env::var("PROVISIOND_REQUIRE_INTEROP").as_deref(), Ok("1"));
    } else {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    // GET form, url-encoded base64.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&req);
    let enc: String = b64
        .chars()
        .map(|c| match c {
            '+' => "%2B".into(),
            '/' => "%2F".into(),
            '=' => "%3D".into(),
            c => c.to_string(),
        })
        .collect();
    let r = app.client.get(app.url(&format!("/v1/ca/ocsp/{enc}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let get_p = f.put("get.der", r.bytes().await.unwrap());
    let (ok, out) = openssl(&[
        "ocsp",
        "-respin",
        get_p.to_str().unwrap(),
        "-CAfile",
        chain.to_str().unwrap(),
        "-resp_text",
    ]);
    assert!(ok && out.contains("Cert Status: revoked"), "{out}");

    // Malformed requests get an OCSP malformedRequest, never a 5xx.
    let r = app
        .client
        .post(&url)
        .header("Content-Type", "application/ocsp-request")
        .body("garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &[0x30, 0x03, 0x0a, 0x01, 0x01]);
    assert_problem(
        app.post_json("/v1/certificates/4abc/revoke", &app.owner_token(), json!({})).await,
        404,
    )
    .await;
    assert_problem(
        app.post_json("/v1/certificates/xyz/revoke", &app.owner_token(), json!({})).await,
        400,
    )
    .await;
    assert_problem(
        app.post_json(
            &format!("/v1/certificates/{serial}/revoke"),
            &app.owner_token(),
            json!({"reason": "bored"}),
        )
        .await,
        400,
    )
    .await;
}

#[tokio::test]
async fn rotated_out_intermediates_keep_verifying_and_stay_revocable() {
    let app = spawn_app().await;
    app.put_group("g", json!({})).await;
    let (old_leaf, old_inter) = enrolled(&app, "g", "before").await;
    let r = app.post_json("/v1/ca/intermediate/rotate", &app.owner_token(), json!({})).await;
    assert!(r.status() == 200 || r.status() == 201);
    let chain_text =
        app.client.get(app.url("/v1/ca/chain")).send().await.unwrap().text().await.unwrap();
    let chain = ::pem::parse_many(&chain_text).unwrap();
    assert_eq!(chain.len(), 3, "new intermediate, old intermediate, root");
    assert_ne!(::pem::encode(&chain[0]), old_inter, "new intermediate first");
    let (_, new_inter) = enrolled(&app, "g", "after").await;
    assert_eq!(
        ::pem::encode(&chain[0]),
        new_inter,
        "new certificates come from the new intermediate"
    );
    let f = Files::new();
    let all = f.put("chain.pem", &chain_text);
    let old_p = f.put("old.pem", &old_leaf);
    let (ok, out) = openssl(&["verify", "-CAfile", all.to_str().unwrap(), old_p.to_str().unwrap()]);
    assert!(ok, "old leaf still verifies: {out}");
    let old_id = {
        let der = ::pem::parse(&old_inter).unwrap().into_contents();
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        c.extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(hex::encode(k.0))
                }
                _ => None,
            })
            .unwrap()
    };
    let serial = leaf_serial(&old_leaf);
    app.post_json(&format!("/v1/certificates/{serial}/revoke"), &app.owner_token(), json!({}))
        .await;
    let crl = app
        .client
        .get(app.url(&format!("/v1/ca/crl/{}?format=pem", old_id.to_uppercase())))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let crl_p = f.put("old.crl", crl);
    let (_, out) = openssl(&["crl", "-in", crl_p.to_str().unwrap(), "-noout", "-text"]);
    assert!(out.contains(&serial.to_uppercase()), "{out}");
    let crls =
        app.client.get(app.url("/v1/ca/crls.pem")).send().await.unwrap().text().await.unwrap();
    assert_eq!(crls.matches("-----BEGIN X509 CRL-----").count(), 2);

    std::fs::rename(app.data.path().join("root-ca.key"), app.data.path().join("offline.key"))
        .unwrap();
    let body = assert_problem(
        app.post_json("/v1/ca/intermediate/rotate", &app.owner_token(), json!({})).await,
        409,
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("root-ca.key"), "{body}");
}

#[tokio::test]
async fn server_certificates_take_sans_from_the_body_only() {
    let app = spawn_app().await;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "broker");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let r = app.post_json("/v1/ca/server-certificates", &app.owner_token(),
        json!({"csr": csr, "dns_names": ["broker.local", "localhost"], "ip_addresses": ["127.0.0.1"]})).await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    let f = Files::new();
    let leaf = f.put("leaf.pem", body["certificate"].as_str().unwrap());
    let untrusted = f.put("un.pem", body["certificate_chain"].as_str().unwrap());
    let (ok, out) = openssl(&[
        "verify",
        "-purpose",
        "sslserver",
        "-CAfile",
        app.chain_path().to_str().unwrap(),
        "-untrusted",
        untrusted.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let (_, text) = openssl(&[
        "x509",
        "-in",
        leaf.to_str().unwrap(),
        "-noout",
        "-ext",
        "subjectAltName,extendedKeyUsage",
    ]);
    assert!(text.contains("DNS:broker.local") && text.contains("IP Address:127.0.0.1"), "{text}");
    assert!(!text.contains("evil.example"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert_problem(
        app.post_json(
            "/v1/ca/server-certificates",
            &app.owner_token(),
            json!({"csr": csr, "ip_addresses": ["not-an-ip"]}),
        )
        .await,
        400,
    )
    .await;
    let reader =
        crate::helpers::policy_token("registryRead", &app.policy_key("registryRead").await);
    assert_problem(
        app.post_json("/v1/ca/server-certificates", &reader, json!({"csr": csr})).await,
        403,
    )
    .await;
}
