//! End-to-end service benchmarks over HTTPS on this machine, each beside a baseline measured
//! in the same run: SAS verify and OCSP vs /healthz, NDJSON enrollment vs the `ca` crate's
//! in-process issuance ceiling and vs cfssl `serve` /sign (`CFSSL_URL`, rounds alternating),
//! single-registration latency, bundle create+redeem.
//!
//! Run: `scripts/bench` (or `cargo bench --bench service`); `BENCH_SECS` (default 5) per
//! throughput measurement, `BENCH_BATCH` (default 5000) NDJSON lines per round, `BENCH_ROUNDS`
//! (default 3) NDJSON/cfssl rounds, `PROVISIOND_TEST_DB=postgres` for PostgreSQL, `BENCH_BIN`
//! to run another build of `provisiond` under the same conditions.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::panic,
    unreachable_pub
)]

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_provisiond");

/// The server binary: this build's, or `BENCH_BIN` (to compare another build in the same run
/// conditions).
fn bin() -> String {
    std::env::var("BENCH_BIN").unwrap_or_else(|_| BIN.to_owned())
}

/// Whether measurement `name` is selected by `BENCH_ONLY` (comma list; unset = all).
fn selected(name: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |v| v.split(',').any(|n| n.trim() == name))
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[allow(clippy::disallowed_methods)]
fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

struct Server {
    child: std::process::Child,
    base: String,
    chain: Vec<u8>,
    owner: String,
    /// the PostgreSQL database made for this run (dropped at the end)
    database: Option<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn database_url() -> Option<String> {
    if std::env::var("PROVISIOND_TEST_DB").as_deref() != Ok("postgres") {
        return None;
    }
    use sqlx::Connection as _;
    let admin = std::env::var("PROVISIOND_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
    let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut c)
        .await
        .unwrap();
    Some(format!("{}/{name}", admin.rsplit_once('/').unwrap().0))
}

async fn start() -> Server {
    start_with(None).await
}

/// A server whose CA keys are in `hsm` (`ca_key_store = "pkcs11"`), or file keys.
async fn start_with(hsm: Option<&SoftHsm>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("d");
    let db = database_url().await;
    let mut init = Command::new(bin());
    init.args(["init", "--data-dir"]).arg(&d).arg("--credentials-out").arg(dir.path().join("o"));
    if let Some(u) = &db {
        init.env("DATABASE_URL", u);
    }
    if let Some(hsm) = hsm {
        init.env("SOFTHSM2_CONF", hsm.conf()).args(hsm.flags());
    }
    assert!(init.output().unwrap().status.success());
    let line = std::fs::read_to_string(dir.path().join("o")).unwrap();
    let key = line.trim().rsplit_once("SharedAccessKey=").unwrap().1.to_owned();
    let owner = ca::sas::SasToken::build(
        "localhost",
        &ca::SasKey::from_base64(&key).unwrap(),
        now() + 86400,
        Some("owner"),
    );
    let mut serve = Command::new(bin());
    serve
        .args(["serve", "--data-dir"])
        .arg(&d)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn");
    if let Some(u) = &db {
        serve.env("DATABASE_URL", u);
    }
    if let Some(hsm) = hsm {
        serve.env("SOFTHSM2_CONF", hsm.conf());
    }
    let mut child = serve.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    // `mqtt listening on …` comes first when MQTT is on.
    while !line.starts_with("listening on ") {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "serve printed no address");
    }
    let base = line.trim().strip_prefix("listening on ").unwrap().to_owned();
    let chain = std::fs::read(d.join("ca-chain.pem")).unwrap();
    Server { child, base, chain, owner, database: db, _dir: dir }
}

fn client(s: &Server) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .use_rustls_tls()
        .pool_max_idle_per_host(64);
    for c in reqwest::Certificate::from_pem_bundle(&s.chain).unwrap() {
        b = b.add_root_certificate(c);
    }
    b.build().unwrap()
}

/// Requests per second for `concurrency` workers repeating `make` for `secs`.
async fn rate<F, Fut>(secs: u64, concurrency: usize, make: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let make = Arc::new(make);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (make, stop, count) = (make.clone(), stop.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                assert!(make().await, "request failed");
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn csr(cn: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.serialize_request(&key).unwrap().pem().unwrap()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// In-process issuance ceiling of the `ca` crate on `threads` threads (parse + verify + sign).
fn ca_ceiling(csrs: &[String], threads: usize, secs: f64) -> f64 {
    use ca::csr::{CsrPolicy, VerifiedCsr};
    let root =
        ca::authority::create_root("r", ca::CaKeyAlgorithm::P256, now(), 86400 * 3650).unwrap();
    let inter = Arc::new(
        ca::authority::create_intermediate(
            &root,
            "i",
            ca::CaKeyAlgorithm::P256,
            now(),
            86400 * 365,
        )
        .unwrap(),
    );
    let csrs = Arc::new(csrs.to_vec());
    let total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (inter, csrs, total) = (inter.clone(), csrs.clone(), total.clone());
            std::thread::spawn(move || {
                let urls =
                    ca::issue::RevocationUrls { base_url: Some("https://127.0.0.1:8443".into()) };
                let mut i = t;
                while start.elapsed().as_secs_f64() < secs {
                    let id = format!("b-{}", i % csrs.len());
                    let v = VerifiedCsr::parse(
                        csrs[i % csrs.len()].as_bytes(),
                        &CsrPolicy::device(&id),
                    )
                    .unwrap();
                    let profile = ca::issue::DeviceProfile {
                        device_id: &id,
                        validity_secs: 86400,
                        urls: &urls,
                    };
                    std::hint::black_box(
                        ca::issue::issue_device(&inter, &v, &profile, now()).unwrap(),
                    );
                    total.fetch_add(1, Ordering::Relaxed);
                    i += threads;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    total.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let secs = env_num("BENCH_SECS", 5);
    let batch = env_num("BENCH_BATCH", 5000) as usize;
    let s = start().await;
    let c = client(&s);
    for _ in 0..100 {
        if c.get(format!("{}/readyz", s.base)).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let owner = s.owner.clone();
    let base = s.base.clone();
    let put = |path: &str, body: Value| {
        c.put(format!("{base}{path}")).header("Authorization", &owner).json(&body).send()
    };
    put("/v1/devices/bench-dev", json!({})).await.unwrap();
    put("/v1/enrollment-groups/bench", json!({"allowed_key_types": ["p256"]})).await.unwrap();
    put("/v1/policies/bench-service", json!({"permissions": ["ServiceConnect"]})).await.unwrap();
    let svc: Value = c
        .get(format!("{base}/v1/policies/bench-service"))
        .header("Authorization", &owner)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let svc_token = ca::sas::SasToken::build(
        "localhost",
        &ca::SasKey::from_base64(svc["primary_key"].as_str().unwrap()).unwrap(),
        now() + 86400,
        Some("bench-service"),
    );
    let minted: Value = c
        .post(format!("{base}/v1/devices/bench-dev/sas-token"))
        .header("Authorization", &owner)
        .json(&json!({"ttl_secs": 86400}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device_token = minted["token"].as_str().unwrap().to_owned();

    let concurrency = 16;
    let db = if std::env::var("PROVISIOND_TEST_DB").as_deref() == Ok("postgres") {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!("\n## provisiond benchmark ({db}, 2 cores, client on the same machine, {secs} s per rate)\n");
    println!("| measure | value | same-run baseline | ratio |");
    println!("|---|---|---|---|");
    let (cc, b2) = (c.clone(), base.clone());
    let healthz = rate(secs, concurrency, move || {
        let (c, b) = (cc.clone(), b2.clone());
        async move { c.get(format!("{b}/healthz")).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    println!("| GET /healthz (16 conns) | {healthz:.0} req/s | — | — |");
    if selected("verify") {
        let (cc, b2, st, dt) = (c.clone(), base.clone(), svc_token.clone(), device_token.clone());
        let verify = rate(secs, concurrency, move || {
            let (c, b, st, dt) = (cc.clone(), b2.clone(), st.clone(), dt.clone());
            async move {
                let r = c
                    .post(format!("{b}/v1/sas/verify"))
                    .header("Authorization", st)
                    .json(&json!({"token": dt}))
                    .send()
                    .await;
                match r {
                    Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["valid"] == true),
                    Err(_) => false,
                }
            }
        })
        .await;
        println!("| POST /v1/sas/verify (16 conns) | {verify:.0} req/s | healthz {healthz:.0} req/s | {:.0} % |", 100.0 * verify / healthz);
    }
    if selected("ocsp") {
        let one: Value = c
            .post(format!("{base}/v1/enrollment-groups/bench/registrations"))
            .header("Authorization", &owner)
            .json(&json!({"registration_id": "ocsp-dev", "csr": csr("ocsp-dev")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let chain = ::pem::parse_many(one["certificate_chain"].as_str().unwrap()).unwrap();
        let ocsp_req = ocsp_request(chain[1].contents(), chain[0].contents());
        let (cc, b2) = (c.clone(), base.clone());
        let ocsp = rate(secs, concurrency, move || {
            let (c, b, body) = (cc.clone(), b2.clone(), ocsp_req.clone());
            async move {
                c.post(format!("{b}/v1/ca/ocsp"))
                    .header("Content-Type", "application/ocsp-request")
                    .body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        })
        .await;
        println!(
            "| POST /v1/ca/ocsp (16 conns) | {ocsp:.0} req/s | healthz {healthz:.0} req/s | {:.0} % |",
            100.0 * ocsp / healthz
        );
    }
    if selected("single") {
        // Single registrations, 8 concurrent clients, for BENCH_SECS (or until the CSRs made
        // in advance run out): latency over thousands of requests, so that the 99th percentile
        // is not decided by a handful of them.
        let singles: Vec<String> =
            (0..env_num("BENCH_SINGLES", secs * 3000)).map(|i| csr(&format!("s-{i}"))).collect();
        let singles = Arc::new(singles);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for w in 0..8 {
            let (c, b, o, singles) = (c.clone(), base.clone(), owner.clone(), singles.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = w;
                while i < singles.len() && Instant::now() < deadline {
                    let t = Instant::now();
                    let r = c
                        .post(format!("{b}/v1/enrollment-groups/bench/registrations"))
                        .header("Authorization", &o)
                        .json(&json!({"registration_id": format!("s-{i}"), "csr": singles[i]}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 201);
                    r.bytes().await.unwrap();
                    lat.push((t.elapsed().as_secs_f64() * 1000.0, t));
                    i += 8;
                }
                lat
            }));
        }
        let mut timed = Vec::new();
        for t in tasks {
            timed.extend(t.await.unwrap());
        }
        if let Ok(path) = std::env::var("BENCH_LATENCY_FILE") {
            // start offset and latency of every request, to see whether slow ones cluster
            let first = timed.iter().map(|(_, t)| *t).min().unwrap();
            let rows: String = timed
                .iter()
                .map(|(ms, t)| format!("{:.3} {ms:.3}\n", (*t - first).as_secs_f64() * 1000.0))
                .collect();
            std::fs::write(path, rows).unwrap();
        }
        let mut lat: Vec<f64> = timed.into_iter().map(|(ms, _)| ms).collect();
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "| single registration, 8 clients ({} requests) | p50 {:.1} ms, p99 {:.1} ms | — | — |",
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
    }
    if selected("bundles") {
        // Bundles: create + redeem round trips, 16 deployers; redeem latency.
        let redeem_lat = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (cc, b2, o, rl) = (c.clone(), base.clone(), owner.clone(), redeem_lat.clone());
        let bundles = rate(secs, concurrency, move || {
            let (c, b, o, rl) = (cc.clone(), b2.clone(), o.clone(), rl.clone());
            async move {
                let Ok(r) = c
                    .post(format!("{b}/v1/bundles"))
                    .header("Authorization", &o)
                    .json(&json!({"device_id": "bench-dev", "credential": "sas", "format": "json"}))
                    .send()
                    .await
                else {
                    return false;
                };
                let Ok(v) = r.json::<Value>().await else { return false };
                let t = Instant::now();
                let ok = c
                    .post(format!("{b}/v1/bundles/{}/redeem", v["id"].as_str().unwrap_or_default()))
                    .header(
                        "Authorization",
                        format!("Bundle {}", v["token"].as_str().unwrap_or_default()),
                    )
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                rl.lock().unwrap().push(t.elapsed().as_secs_f64() * 1000.0);
                ok
            }
        })
        .await;
        let mut rl = redeem_lat.lock().unwrap().clone();
        rl.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("| bundle create + redeem (16 deployers) | {bundles:.0} round trips/s | — | — |");
        println!(
            "| bundle redeem latency | p50 {:.1} ms, p99 {:.1} ms | — | — |",
            percentile(&rl, 0.5),
            percentile(&rl, 0.99)
        );
    }
    // NDJSON batch enrollment vs the in-process ceiling and vs cfssl `serve` /sign (parse +
    // verify + sign, nothing stored, 16 clients, same CSR shape): the external baseline. The
    // two alternate, round after round, so that both see the same drift of this shared VM
    // (±20 % from run to run); each round's ratio is reported and the median is the result.
    // After the single-registration latency: cfssl's after-effects on these two cores once
    // put SQLite's single-registration p99 at 9.7-40 ms (5.3-8.4 ms otherwise).
    let rounds = env_num("BENCH_ROUNDS", 3).max(1) as usize;
    let cfssl = std::env::var("CFSSL_URL").ok().filter(|_| selected("cfssl")).map(|url| {
        let csrs: Arc<Vec<String>> = Arc::new((0..512).map(|i| csr(&format!("c-{i}"))).collect());
        (url, csrs)
    });
    let ceiling = selected("ndjson").then(|| {
        let csrs: Vec<String> = (0..256).map(|i| csr(&format!("b-{i}"))).collect();
        ca_ceiling(&csrs, 2, secs as f64)
    });
    let (mut batch_rates, mut cfssl_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let batch_rate = match ceiling {
            Some(_) => Some(ndjson_batch(&c, &base, &owner, batch, round).await),
            None => None,
        };
        if let Some((url, csrs)) = &cfssl {
            let cfssl_rate = cfssl_sign_rate(url, csrs, secs, concurrency).await;
            if let Some(b) = batch_rate {
                ratios.push(b / cfssl_rate);
            }
            cfssl_rates.push(cfssl_rate);
        }
        batch_rates.extend(batch_rate);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
    };
    let list = |v: &[f64], decimals: usize, unit: &str| {
        v.iter().map(|x| format!("{x:.decimals$}{unit}")).collect::<Vec<_>>().join(", ")
    };
    if let Some(ceiling) = ceiling {
        let rates = list(&batch_rates, 0, "");
        let rate = median(&mut batch_rates);
        println!("| NDJSON batch enrollment ({batch} P-256 CSRs, median of {rounds} rounds: {rates}) | {rate:.0} certs/s | ca crate in-process, 2 threads: {ceiling:.0} certs/s | {:.0} % |", 100.0 * rate / ceiling);
    }
    if !cfssl_rates.is_empty() {
        let rates = list(&cfssl_rates, 0, "");
        let rate = median(&mut cfssl_rates);
        println!("| cfssl serve /sign (16 conns, stores nothing, median of {rounds} rounds: {rates}) | {rate:.0} certs/s | — | — |");
    }
    if !ratios.is_empty() {
        let each = list(&ratios, 2, "×");
        println!(
            "| NDJSON batch enrollment vs cfssl /sign, rounds alternating ({each}) | median of rounds | cfssl /sign | {:.2}× |",
            median(&mut ratios)
        );
    }
    if selected("pkcs11") {
        pkcs11_vs_file(&c, &base, &owner, batch, rounds, secs).await;
    }
    drop_database(s).await;
}

/// A SoftHSM2 token in a directory of its own.
struct SoftHsm {
    dir: tempfile::TempDir,
    module: String,
}

const HSM_TOKEN: &str = "bench";
const HSM_PIN: &str = "246810";

impl SoftHsm {
    fn new() -> Option<Self> {
        let module = ["/usr/lib/softhsm/libsofthsm2.so", "/usr/local/lib/softhsm/libsofthsm2.so"]
            .into_iter()
            .find(|m| std::path::Path::new(m).exists())?;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tokens")).unwrap();
        let conf = format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.path().join("tokens").display()
        );
        std::fs::write(dir.path().join("softhsm2.conf"), conf).unwrap();
        std::fs::write(dir.path().join("pin"), HSM_PIN).unwrap();
        let hsm = Self { dir, module: module.to_owned() };
        let ok = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", hsm.conf())
            .args([
                "--init-token",
                "--free",
                "--label",
                HSM_TOKEN,
                "--pin",
                HSM_PIN,
                "--so-pin",
                "13579",
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then_some(hsm)
    }

    fn conf(&self) -> std::path::PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    fn flags(&self) -> Vec<String> {
        let pin = self.dir.path().join("pin").display().to_string();
        ["--ca-key-store", "pkcs11", "--pkcs11-module", &self.module, "--pkcs11-token-label"]
            .into_iter()
            .map(str::to_owned)
            .chain([HSM_TOKEN.to_owned(), "--pkcs11-pin-file".to_owned(), pin])
            .collect()
    }
}

/// NDJSON enrollment with CA keys in SoftHSM2 vs file keys (the server `c`/`base` serves), in
/// alternating rounds, and SoftHSM2's own P-256 signing rate through a direct PKCS#11 loop
/// (2 threads, one session each: the ceiling for certificates signed in that token).
async fn pkcs11_vs_file(
    c: &reqwest::Client,
    base: &str,
    owner: &str,
    batch: usize,
    rounds: usize,
    secs: u64,
) {
    let Some(hsm) = SoftHsm::new() else {
        println!(
            "| NDJSON enrollment, CA keys in SoftHSM2 | skipped: SoftHSM2 missing or its token cannot be made | — | — |"
        );
        return;
    };
    let t = start_with(Some(&hsm)).await;
    let tc = client(&t);
    for _ in 0..100 {
        if tc.get(format!("{}/readyz", t.base)).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tc.put(format!("{}/v1/enrollment-groups/bench", t.base))
        .header("Authorization", &t.owner)
        .json(&json!({"allowed_key_types": ["p256"]}))
        .send()
        .await
        .unwrap();
    let (mut files, mut tokens, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let file = ndjson_batch(c, base, owner, batch, 100 + round).await;
        let token = ndjson_batch(&tc, &t.base, &t.owner, batch, 100 + round).await;
        ratios.push(token / file);
        files.push(file);
        tokens.push(token);
    }
    let ceiling = direct_token_rate(&hsm, secs);
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
    };
    let each = ratios.iter().map(|r| format!("{:.0} %", 100.0 * r)).collect::<Vec<_>>().join(", ");
    let (file, token, ratio) = (med(&mut files), med(&mut tokens), med(&mut ratios));
    println!("| NDJSON batch enrollment, CA keys in SoftHSM2 ({batch} CSRs, rounds alternating with file keys: {each}) | {token:.0} certs/s | file keys, same run: {file:.0} certs/s | {:.0} % |", 100.0 * ratio);
    println!("| SoftHSM2 P-256 signatures, direct PKCS#11 loop (2 threads, CKM_ECDSA) | {ceiling:.0} sig/s | NDJSON with SoftHSM2: {token:.0} certs/s | {:.0} % |", 100.0 * token / ceiling);
    drop_database(t).await;
}

fn direct_token_rate(hsm: &SoftHsm, secs: u64) -> f64 {
    use ca::Signer as _;
    std::env::set_var("SOFTHSM2_CONF", hsm.conf());
    let token = service::pkcs11::Token::open(service::pkcs11::TokenConfig {
        module: hsm.module.clone().into(),
        token_label: HSM_TOKEN.into(),
        pin: HSM_PIN.to_owned().into(),
    })
    .unwrap();
    let signer =
        Arc::new(token.generate_ec("bench-ceiling", ca::SignatureScheme::EcdsaP256Sha256).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (signer, stop, count) = (signer.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                let tbs = [7u8; 400];
                while !stop.load(Ordering::Relaxed) {
                    signer.sign(&tbs).unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for th in threads {
        th.join().unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
}

/// One NDJSON batch of `batch` new registrations (ids of round `round`): certificates per second.
async fn ndjson_batch(
    c: &reqwest::Client,
    base: &str,
    owner: &str,
    batch: usize,
    round: usize,
) -> f64 {
    let body: String = (0..batch)
        .map(|i| {
            let id = format!("b{round}-{i}");
            json!({"registration_id": id, "csr": csr(&id)}).to_string() + "\n"
        })
        .collect();
    let t = Instant::now();
    let out = c
        .post(format!("{base}/v1/enrollment-groups/bench/registrations"))
        .header("Authorization", owner)
        .header("Content-Type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let batch_secs = t.elapsed().as_secs_f64();
    let ok_lines = out.lines().filter(|l| l.contains("certificate_chain")).count();
    assert_eq!(ok_lines, batch, "every line enrolled");
    batch as f64 / batch_secs
}

/// cfssl `serve` /sign at `url`, `concurrency` clients for `secs`: certificates per second.
async fn cfssl_sign_rate(url: &str, csrs: &Arc<Vec<String>>, secs: u64, concurrency: usize) -> f64 {
    let plain = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let (url, csrs) = (url.to_owned(), csrs.clone());
    rate(secs, concurrency, move || {
        let (c, url, csrs, next) = (plain.clone(), url.clone(), csrs.clone(), next.clone());
        async move {
            let i = next.fetch_add(1, Ordering::Relaxed) as usize % csrs.len();
            let r = c
                .post(format!("{url}/api/v1/cfssl/sign"))
                .json(&json!({"certificate_request": csrs[i]}))
                .send()
                .await;
            match r {
                Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["success"] == true),
                Err(_) => false,
            }
        }
    })
    .await
}

/// Stops the server and drops its PostgreSQL database, so runs do not pile databases up.
async fn drop_database(mut s: Server) {
    let _ = s.child.kill();
    let _ = s.child.wait();
    let Some(url) = s.database.take() else { return };
    use sqlx::Connection as _;
    let Some((admin, name)) = url.rsplit_once('/') else { return };
    if let Ok(mut c) = sqlx::PgConnection::connect(&format!("{admin}/postgres")).await {
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut c).await;
    }
}

/// A DER OCSP request for `leaf` (SHA-1 CertID), built with openssl to stay independent.
fn ocsp_request(issuer: &[u8], leaf: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("i.pem"),
        ::pem::encode(&::pem::Pem::new("CERTIFICATE", issuer.to_vec())),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("l.pem"),
        ::pem::encode(&::pem::Pem::new("CERTIFICATE", leaf.to_vec())),
    )
    .unwrap();
    let out = Command::new("openssl")
        .args(["ocsp", "-no_nonce", "-issuer"])
        .arg(dir.path().join("i.pem"))
        .arg("-cert")
        .arg(dir.path().join("l.pem"))
        .arg("-reqout")
        .arg(dir.path().join("r.der"))
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::read(dir.path().join("r.der")).unwrap()
}
