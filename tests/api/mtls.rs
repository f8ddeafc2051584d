//! Client-certificate routes: renewal, EST (driven by curl + openssl), manufacturer-certificate
//! attestation.

use serde_json::{json, Value};

use crate::helpers::{assert_problem, client_trusting, spawn_app, TestApp};

/// A key pair with a CSR for `cn`.
struct DeviceKey {
    key: rcgen::KeyPair,
    cn: String,
}

impl DeviceKey {
    fn new(cn: &str) -> Self {
        Self { key: rcgen::KeyPair::generate().unwrap(), cn: cn.to_owned() }
    }
    fn csr(&self) -> rcgen::CertificateSigningRequest {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, self.cn.as_str());
        p.serialize_request(&self.key).unwrap()
    }
    fn csr_pem(&self) -> String {
        self.csr().pem().unwrap()
    }
    fn client(&self, app: &TestApp, cert_pem: &str) -> reqwest::Client {
        let identity = reqwest::Identity::from_pem(
            format!("{cert_pem}{}", self.key.serialize_pem()).as_bytes(),
        )
        .unwrap();
        let pem = std::fs::read(app.chain_path()).unwrap();
        let mut b = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .use_rustls_tls()
            .identity(identity);
        for c in reqwest::Certificate::from_pem_bundle(&pem).unwrap() {
            b = b.add_root_certificate(c);
        }
        b.build().unwrap()
    }
}

async fn enrolled(app: &TestApp, id: &str) -> (DeviceKey, String) {
    let k = DeviceKey::new(id);
    let r: Value = app
        .enroll("g", json!({"registration_id": id, "csr": k.csr_pem()}))
        .await
        .json()
        .await
        .unwrap();
    let leaf = ::pem::parse_many(r["certificate_chain"].as_str().unwrap()).unwrap();
    (k, ::pem::encode(&leaf[0]))
}

#[tokio::test]
async fn renewal_needs_the_devices_own_valid_certificate() {
    let app = spawn_app().await;
    app.put_group("g", json!({})).await;
    let (k1, cert1) = enrolled(&app, "r-1").await;
    let (k2, cert2) = enrolled(&app, "r-2").await;
    let new = DeviceKey::new("r-1");
    let body = json!({"csr": new.csr_pem(), "revoke_previous": true});
    // No client certificate.
    assert_problem(
        app.client
            .post(app.url("/v1/devices/r-1/certificates/renew"))
            .json(&body)
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    // Another device's certificate.
    let other = k2
        .client(&app, &cert2)
        .post(app.url("/v1/devices/r-1/certificates/renew"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(other.status() == 403 || other.status() == 404, "{}", other.status());
    // Its own.
    let r = k1
        .client(&app, &cert1)
        .post(app.url("/v1/devices/r-1/certificates/renew"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let issued: Value = r.json().await.unwrap();
    let certs: Value = app
        .get_as("/v1/certificates?device_id=r-1", &app.owner_token())
        .await
        .json()
        .await
        .unwrap();
    let valid: Vec<&str> = certs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "valid")
        .map(|c| c["serial"].as_str().unwrap())
        .collect();
    assert_eq!(valid, [issued["serial"].as_str().unwrap()], "revoke_previous revoked the old one");
    // The revoked certificate no longer renews.
    let again = k1
        .client(&app, &cert1)
        .post(app.url("/v1/devices/r-1/certificates/renew"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(again, 401).await;
    // A certificate from a foreign CA is refused.
    let foreign = rcgen::generate_simple_self_signed(vec!["r-1".to_string()]).unwrap();
    let fk = DeviceKey { key: foreign.signing_key, cn: "r-1".into() };
    let r = fk
        .client(&app, &foreign.cert.pem())
        .post(app.url("/v1/devices/r-1/certificates/renew"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(r, 401).await;
}

fn sh(cmd: &str) -> (bool, String) {
    let out = std::process::Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[tokio::test]
async fn est_cacerts_simpleenroll_reenroll_and_serverkeygen_with_curl_and_openssl() {
    let app = spawn_app().await;
    app.put_group("g", json!({"attestation": {"type": "token"}})).await;
    let tokens: Value = app
        .post_json(
            "/v1/enrollment-groups/g/tokens",
            &app.owner_token(),
            json!({"count": 2, "ttl_secs": 600}),
        )
        .await
        .json()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let chain = app.chain_path().display().to_string();
    let base = &app.base;

    let (ok, out) = sh(&format!("curl -sf --cacert {chain} {base}/.well-known/est/cacerts | openssl base64 -d | openssl pkcs7 -inform DER -print_certs -noout"));
    assert!(ok, "{out}");
    assert_eq!(out.matches("subject=").count(), 2, "{out}");

    let k = DeviceKey::new("est-1");
    std::fs::write(dir.path().join("key.pem"), k.key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("csr.pem"), k.csr_pem()).unwrap();
    sh(&format!("openssl req -in {d}/csr.pem -outform DER | openssl base64 > {d}/csr.b64"));
    let token = tokens["tokens"][0].as_str().unwrap();
    let enroll = format!("curl -s -o {d}/out.b64 -w '%{{http_code}}' --cacert {chain} -u 'est-1:{token}' -H 'Content-Type: application/pkcs10' --data-binary @{d}/csr.b64 {base}/.well-known/est/simpleenroll");
    let (_, code) = sh(&enroll);
    assert_eq!(code, "200");
    let (ok, out) = sh(&format!("openssl base64 -d -in {d}/out.b64 | openssl pkcs7 -inform DER -print_certs > {d}/cert.pem && openssl x509 -in {d}/cert.pem -noout -subject"));
    assert!(ok && out.contains("est-1"), "{out}");
    let (_, code) = sh(&enroll);
    assert_eq!(code, "401", "a token works once");
    let (_, code) = sh(&format!("curl -s -o /dev/null -w '%{{http_code}}' --cacert {chain} -H 'Content-Type: application/pkcs10' --data-binary @{d}/csr.b64 {base}/.well-known/est/simpleenroll"));
    assert_eq!(code, "401", "no credential");

    // Re-enroll over mTLS with the certificate just issued.
    let k2 = DeviceKey { key: rcgen::KeyPair::generate().unwrap(), cn: "est-1".into() };
    std::fs::write(dir.path().join("csr2.pem"), k2.csr_pem()).unwrap();
    sh(&format!("openssl req -in {d}/csr2.pem -outform DER | openssl base64 > {d}/csr2.b64"));
    let (ok, out) = sh(&format!("curl -sf --cacert {chain} --cert {d}/cert.pem --key {d}/key.pem -H 'Content-Type: application/pkcs10' --data-binary @{d}/csr2.b64 {base}/.well-known/est/simplereenroll | openssl base64 -d | openssl pkcs7 -inform DER -print_certs -noout"));
    assert!(ok && out.contains("est-1"), "{out}");
    let wrong = DeviceKey::new("someone-else");
    std::fs::write(dir.path().join("csr3.pem"), wrong.csr_pem()).unwrap();
    sh(&format!("openssl req -in {d}/csr3.pem -outform DER | openssl base64 > {d}/csr3.b64"));
    let (_, code) = sh(&format!("curl -s -o /dev/null -w '%{{http_code}}' --cacert {chain} --cert {d}/cert.pem --key {d}/key.pem -H 'Content-Type: application/pkcs10' --data-binary @{d}/csr3.b64 {base}/.well-known/est/simplereenroll"));
    assert!(code == "400" || code == "403", "{code}");

    // Server-side key generation.
    let k4 = DeviceKey::new("est-2");
    std::fs::write(dir.path().join("csr4.pem"), k4.csr_pem()).unwrap();
    sh(&format!("openssl req -in {d}/csr4.pem -outform DER | openssl base64 > {d}/csr4.b64"));
    let token2 = tokens["tokens"][1].as_str().unwrap();
    let r = app
        .client
        .post(app.url("/.well-known/est/serverkeygen"))
        .basic_auth("est-2", Some(token2))
        .header("Content-Type", "application/pkcs10")
        .body(std::fs::read(dir.path().join("csr4.b64")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("multipart/mixed; boundary="), "{ct}");
    let body = r.text().await.unwrap();
    let parts: Vec<&str> = body.split("\r\n\r\n").collect();
    assert!(body.contains("application/pkcs8") && body.contains("smime-type=certs-only"));
    let key_b64: String = parts[1].split("\r\n--").next().unwrap().to_owned();
    let cert_b64: String = parts[2].split("\r\n--").next().unwrap().to_owned();
    std::fs::write(dir.path().join("k.b64"), key_b64).unwrap();
    std::fs::write(dir.path().join("c.b64"), cert_b64).unwrap();
    let (ok, out) = sh(&format!(
        "cd {d} && openssl base64 -d -in k.b64 | openssl pkey -inform DER -pubout > a && \
         openssl base64 -d -in c.b64 | openssl pkcs7 -inform DER -print_certs | openssl x509 -pubkey -noout > b && cmp a b"
    ));
    assert!(ok, "generated key matches the certificate: {out}");
}

#[tokio::test]
async fn manufacturer_certificates_attest_registration_on_v1_and_dps_routes() {
    let app = spawn_app().await;
    // A manufacturer CA nobody here runs, and a device certificate from it.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Acme Manufacturing CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let mfg = |cn: &str| {
        let k = DeviceKey::new(cn);
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&k.key, &issuer).unwrap();
        (k, cert.pem())
    };
    app.put_group("acme", json!({"attestation": {"type": "x509_ca", "x509_ca": {"ca_certificates": [ca_cert.pem()]}}})).await;
    let (k, cert) = mfg("mfg-1");
    let client = k.client(&app, &cert);
    let csr = DeviceKey::new("mfg-1").csr_pem();
    let r = client
        .post(app.url("/v1/registrations/mfg-1"))
        .json(&json!({"registration_id": "mfg-1", "csr": csr}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let d: Value = app.get_as("/v1/devices/mfg-1", &app.owner_token()).await.json().await.unwrap();
    assert_eq!(d["enrollment_group_id"], "acme");
    // CN ≠ registration id → 401.
    let r = client
        .post(app.url("/v1/registrations/mfg-2"))
        .json(&json!({"csr": DeviceKey::new("mfg-2").csr_pem()}))
        .send()
        .await
        .unwrap();
    assert_problem(r, 401).await;
    // A certificate from another CA → 401.
    let rogue = rcgen::generate_simple_self_signed(vec!["mfg-3".into()]).unwrap();
    let rk = DeviceKey { key: rogue.signing_key, cn: "mfg-3".into() };
    let r = rk
        .client(&app, &rogue.cert.pem())
        .post(app.url("/v1/registrations/mfg-3"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_problem(r, 401).await;
    // DPS route with X.509 attestation.
    let toml = std::fs::read_to_string(app.data.path().join("provisiond.toml")).unwrap();
    let scope = toml
        .lines()
        .find(|l| l.starts_with("id_scope"))
        .unwrap()
        .split('"')
        .nth(1)
        .unwrap()
        .to_owned();
    let (k4, cert4) = mfg("mfg-4");
    use base64::Engine as _;
    let der = ::pem::parse(DeviceKey::new("mfg-4").csr_pem()).unwrap().into_contents();
    let r = k4.client(&app, &cert4).put(app.url(&format!("/{scope}/registrations/mfg-4/register?api-version=2021-06-01")))
        .json(&json!({"registrationId": "mfg-4", "csr": base64::engine::general_purpose::STANDARD.encode(der)})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["registrationState"]["deviceId"], "mfg-4");
    let _ = client_trusting;
}
