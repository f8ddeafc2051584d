//! Test fixture: a real `provisiond` process per test (zero2prod `spawn_app`, lldap's real-binary
//! fixture). Each test gets its own data dir and, on PostgreSQL, its own database named by a
//! UUID. The client trusts only the CA chain the server published (no verification disabled).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ca::sas::SasToken;
use ca::SasKey;

pub const BIN: &str = env!("CARGO_BIN_EXE_provisiond");

/// The serial (hex, as the API spells it) of the first certificate of a PEM chain.
pub fn leaf_serial(chain_pem: &str) -> String {
    let leaf = ::pem::parse_many(chain_pem).unwrap()[0].contents().to_vec();
    let (_, c) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    c.raw_serial_as_string().replace(':', "")
}

/// Which database the suite runs on (`PROVISIOND_TEST_DB=sqlite|postgres`).
pub fn backend_is_postgres() -> bool {
    std::env::var("PROVISIOND_TEST_DB").as_deref() == Ok("postgres")
}

/// For tests that only mean something on PostgreSQL: false (and a visible skip line on stderr,
/// which the test harness shows with `--nocapture` and in CI's PostgreSQL run log where the test
/// does run) on SQLite. `.ci/run` runs the suite on both databases, so none of them goes unrun.
pub fn postgres_only(test: &str, why: &str) -> bool {
    if backend_is_postgres() {
        return true;
    }
    eprintln!("SKIPPED on SQLite: {test} — {why}");
    println!("SKIPPED on SQLite: {test} — {why}");
    false
}

fn pg_admin_url() -> String {
    std::env::var("PROVISIOND_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A test's database URL (`None` = embedded SQLite in the data dir). A PostgreSQL database
/// made by [`fresh_database`] is dropped with it, so runs do not pile databases up.
pub struct TestDatabase {
    url: Option<String>,
    owned: bool,
}

impl TestDatabase {
    /// A database the test does not own (never dropped here).
    pub fn given(url: Option<String>) -> Self {
        Self { url, owned: false }
    }
}

impl std::ops::Deref for TestDatabase {
    type Target = Option<String>;
    fn deref(&self) -> &Option<String> {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(url) = self.url.take().filter(|_| self.owned) else { return };
        let Some((_, name)) = url.rsplit_once('/') else { return };
        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                use sqlx::Connection as _;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}

/// A fresh database for one test (None = embedded SQLite), dropped when it is.
pub async fn fresh_database() -> TestDatabase {
    if !backend_is_postgres() {
        return TestDatabase::given(None);
    }
    use sqlx::Connection as _;
    let admin = pg_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("PostgreSQL reachable");
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
    TestDatabase { url: Some(format!("{base}/{name}")), owned: true }
}

/// A data dir initialized with `provisiond init`.
pub struct DataDir {
    pub dir: tempfile::TempDir,
    pub database_url: TestDatabase,
    pub owner_key: String,
}

impl DataDir {
    pub async fn init() -> Self {
        Self::init_with(fresh_database().await).await
    }

    /// Initializes against a given database (None = SQLite in the data dir).
    pub async fn init_with(database_url: TestDatabase) -> Self {
        Self::init_with_args(database_url, &[]).await
    }

    /// `init` with extra arguments (`--public-url`, `--tls-name`, …).
    pub async fn init_with_args(database_url: TestDatabase, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("owner.txt");
        let out = command(&database_url)
            .args(["init", "--data-dir"])
            .arg(dir.path().join("d"))
            .arg("--credentials-out")
            .arg(&creds)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
        let line = std::fs::read_to_string(&creds).unwrap();
        let owner_key = line.trim().rsplit_once("SharedAccessKey=").unwrap().1.to_owned();
        Self { dir, database_url, owner_key }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("d")
    }

    /// URL of the database the server uses (SQLite file or the test's PostgreSQL database).
    pub fn store_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.path().join("provisiond.db").display()))
    }
}

/// `provisiond` with the test database selected.
pub fn command(database_url: &Option<String>) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("DATABASE_URL").env_remove("PROVISIOND_DATABASE_URL");
    if let Some(url) = database_url {
        cmd.env("DATABASE_URL", url);
    }
    cmd
}

/// A running server.
pub struct TestApp {
    pub child: Child,
    pub base: String,
    pub port: u16,
    pub data: DataDir,
    pub client: reqwest::Client,
    pub stderr_path: PathBuf,
    /// the MQTT endpoint's address, when it is on
    pub mqtt: Option<std::net::SocketAddr>,
}

impl TestApp {
    /// Owner policy token (host `localhost`).
    pub fn owner_token(&self) -> String {
        policy_token("owner", &self.data.owner_key)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get_as(&self, path: &str, token: &str) -> reqwest::Response {
        self.client.get(self.url(path)).header("Authorization", token).send().await.unwrap()
    }

    pub fn chain_path(&self) -> PathBuf {
        self.data.path().join("ca-chain.pem")
    }

    /// Everything the server wrote to stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// A policy's primary key, read the way the server does (for policies the test did not
    /// create and so has no key for).
    pub async fn policy_key(&self, name: &str) -> String {
        let ring = service::seal::KeyRing::load(&self.data.path().join("master.key")).unwrap();
        let store = store(&self.data).await;
        let mut conn = store.conn().await.unwrap();
        let row = service::store::policies::get(&mut conn, name).await.unwrap().unwrap();
        let keys = service::auth::sas::unseal_policy_keys(&ring, &row).unwrap();
        keys.primary.to_base64().to_string()
    }

    /// Stops the server and starts it again on the same data dir (new port).
    pub async fn restart(&mut self) {
        self.restart_with(&[]).await;
    }

    /// [`TestApp::restart`] with extra environment.
    pub async fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.stop();
        let (child, base, port, mqtt) = start_server(&self.data, &self.stderr_path, env).await;
        self.child = child;
        self.base = base;
        self.port = port;
        self.mqtt = mqtt;
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        for _ in 0..100 {
            if let Ok(r) = self.client.get(self.url("/readyz")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server never became ready: {}", self.logs());
    }

    /// Another `provisiond serve` on the same data dir and database (scale-out).
    pub async fn sibling(&self) -> Sibling {
        let log =
            self.data.dir.path().join(format!("sibling-{}.log", uuid::Uuid::new_v4().simple()));
        let (child, base, _, _) = start_server(&self.data, &log, &[]).await;
        for _ in 0..100 {
            if let Ok(r) = self.client.get(format!("{base}/readyz")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Sibling { child, base }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..200 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn policy_token(name: &str, key_b64: &str) -> String {
    let key = SasKey::from_base64(key_b64).unwrap();
    SasToken::build("localhost", &key, now() + 3600, Some(name))
}

pub fn now() -> i64 {
    #[allow(clippy::disallowed_methods)]
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    d.as_secs() as i64
}

/// A store handle on the test's database (for tampering and inspection).
pub async fn store(data: &DataDir) -> service::store::Store {
    let url = service::config::DatabaseUrl::new(data.store_url());
    service::store::Store::connect(&url, 2).await.unwrap()
}

/// Init + serve.
pub async fn spawn_app() -> TestApp {
    spawn_with(DataDir::init().await, &[]).await
}

/// Serves an initialized data dir, with extra environment.
pub async fn spawn_with(data: DataDir, env: &[(&str, &str)]) -> TestApp {
    let stderr_path = data.dir.path().join(format!("stderr-{}.log", uuid::Uuid::new_v4().simple()));
    let (child, base, port, mqtt) = start_server(&data, &stderr_path, env).await;
    let client = client_trusting(&data.path().join("ca-chain.pem"));
    let app = TestApp { child, base, port, data, client, stderr_path, mqtt };
    app.wait_ready().await;
    app
}

async fn start_server(
    data: &DataDir,
    stderr_path: &Path,
    env: &[(&str, &str)],
) -> (Child, String, u16, Option<std::net::SocketAddr>) {
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(stderr_path).unwrap();
    let mut cmd = command(&data.database_url);
    let listen = env.iter().find(|(k, _)| *k == "LISTEN").map_or("127.0.0.1:0", |(_, v)| *v);
    cmd.args(["serve", "--data-dir"]).arg(data.path()).args(["--listen", listen]);
    for (k, v) in env.iter().filter(|(k, _)| *k != "LISTEN") {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut mqtt = None;
    let base = loop {
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            panic!(
                "server did not print its address: {}",
                std::fs::read_to_string(stderr_path).unwrap_or_default()
            )
        });
        if let Some(addr) = line.strip_prefix("mqtt listening on mqtts://") {
            mqtt = Some(addr.parse().expect("mqtt address"));
            continue;
        }
        break line.strip_prefix("listening on ").expect("listening line").to_owned();
    };
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    (child, base, port, mqtt)
}

/// A reqwest client that trusts only the given PEM chain.
pub fn client_trusting(chain: &Path) -> reqwest::Client {
    let pem = std::fs::read(chain).unwrap();
    // Idle pooled connections are dropped before the server's 5 s keep-alive ends them: a
    // request on a connection the server just closed fails its body write (BrokenPipe) instead
    // of being retried, which made tests that pause (generating CSRs) flaky on a loaded machine.
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .use_rustls_tls()
        .pool_idle_timeout(Duration::from_secs(2));
    for cert in reqwest::Certificate::from_pem_bundle(&pem).unwrap() {
        builder = builder.add_root_certificate(cert);
    }
    builder.build().unwrap()
}

/// Asserts a problem+json response and returns its body.
pub async fn assert_problem(resp: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    let ct = resp.headers().get("content-type").unwrap().to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/problem+json"), "content-type {ct}");
    let body: serde_json::Value = resp.json().await.unwrap();
    for member in ["type", "title", "status", "detail"] {
        assert!(body.get(member).is_some(), "problem lacks {member}: {body}");
    }
    assert_eq!(body["status"], status);
    body
}

/// An extra instance; killed on drop.
pub struct Sibling {
    pub child: Child,
    pub base: String,
}

impl Drop for Sibling {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
