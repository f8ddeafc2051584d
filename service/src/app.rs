//! `Application::build`: the one composition root, shared by `provisiond serve` and the tests.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

use crate::audit::AuditKey;
use crate::auth::ratelimit::FailureLimiter;
use crate::authority::{Authority, AuthorityLoadError};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::http::{self, problem::ApiError};
use crate::metrics::Metrics;
use crate::seal::{SealContext, SealError};
use crate::state::AppState;
use crate::store::{meta, Store, StoreError};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// storage
    #[error("database")]
    Store(#[from] StoreError),
    /// the database cannot be reached at start
    #[error(
        "cannot reach the database {database} — is the database server running, and is \
         `database_url` (PROVISIOND_DATABASE_URL) right?"
    )]
    Unreachable {
        /// the URL, password masked
        database: String,
        /// why
        #[source]
        source: StoreError,
    },
    /// master key
    #[error("{0}")]
    Seal(#[from] SealError),
    /// CA
    #[error("{0}")]
    Authority(#[from] AuthorityLoadError),
    /// the master key does not open this database's secrets
    #[error("the master key does not match this database ({0}); refusing to start")]
    WrongMasterKey(String),
    /// the database was never initialized
    #[error("the database is not initialized: run `provisiond init`")]
    NotInitialized,
    /// the PKCS#11 token
    #[error("{0}")]
    Token(#[from] crate::pkcs11::TokenError),
    /// TLS
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// TLS certificate issuance
    #[error("TLS certificate: {0}")]
    ServerCert(#[from] crate::usecase::server_cert::ServerCertError),
    /// binding the socket
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// address
        addr: String,
        /// cause
        #[source]
        source: std::io::Error,
    },
    /// `mqtt_listen` names the HTTPS address
    #[error("mqtt_listen ({0}) must differ from listen")]
    MqttSameAsListen(String),
    /// metrics registry
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// another server already serves this SQLite database
    #[error(
        "another `provisiond serve` holds {0}: SQLite serves one instance; use PostgreSQL to run several"
    )]
    AlreadyServing(std::path::PathBuf),
    /// the instance lock file cannot be opened
    #[error("cannot open {path}: {source}")]
    LockFile {
        /// lock file
        path: std::path::PathBuf,
        /// cause
        #[source]
        source: std::io::Error,
    },
}

/// On SQLite, holds `<database file>.serve-lock` for the life of the server: one instance per
/// SQLite database, as DESIGN.md "Scale-out" says — which is also what lets that instance keep
/// policies in memory between changes it makes itself. The OS releases it if the process dies.
fn lock_single_instance(config: &Config) -> Result<Option<std::fs::File>, StartError> {
    let Some(db) = config.database().sqlite_file() else { return Ok(None) };
    let mut path = db.into_os_string();
    path.push(".serve-lock");
    let path = std::path::PathBuf::from(path);
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .mode(crate::fsutil::FILE_MODE)
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StartError::LockFile { path: path.clone(), source })?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::AlreadyServing(path)),
        Err(std::fs::TryLockError::Error(source)) => Err(StartError::LockFile { path, source }),
    }
}

/// How often a running server re-reads the master key file (online rotation).
pub const KEY_RELOAD_SECS: u64 = 5;

/// How often a running server checkpoints the SQLite write-ahead log.
pub const CHECKPOINT_MILLIS: u64 = 500;

/// How long a kept-alive connection may stay silent between requests.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// How often the summaries of rate-limited failures whose window ended are written.
pub const SUMMARY_SECS: u64 = 5;

/// Writes one `auth.failure.summary` audit row and one log line per rate-limited key whose
/// window is over (every window with `all`, at shutdown): the failures it refused were counted,
/// not written one by one (API.md A25, A30).
pub async fn write_failure_summaries(state: &AppState, all: bool) {
    let now = state.now();
    let summaries =
        if all { state.limiter.drain_summaries(now) } else { state.limiter.due_summaries(now) };
    let entries: Vec<crate::audit::Entry> =
        summaries.iter().map(crate::audit::Entry::auth_failure_summary).collect();
    for (s, e) in summaries.iter().zip(&entries) {
        tracing::warn!(
            principal = %e.target,
            client_addr = %s.addr,
            count = s.count,
            "authentication failures refused while rate-limited"
        );
    }
    // Bounded transactions (a full limiter table holds 65,536 keys).
    for chunk in entries.chunks(500) {
        let written = async {
            let mut tx = state.store.begin().await?;
            crate::audit::append_many(&mut tx, state.store.dialect(), &state.audit_key, chunk, now)
                .await?;
            tx.commit().await.map_err(StoreError::from)
        };
        if let Err(e) = written.await {
            tracing::warn!(error = %http::problem::error_chain(&e), "failure summaries not audited");
        }
    }
}

/// A built, bound, not yet running server.
pub struct Application {
    server: actix_web::dev::Server,
    addr: SocketAddr,
    mqtt: Option<crate::mqtt::Endpoint>,
    state: web::Data<AppState>,
    _instance_lock: Option<std::fs::File>,
}

/// Loads the master key ring, the database and the CA; checks that the ring opens the stored
/// secrets (a wrong key fails here, clearly, never later as garbage).
pub async fn open_state(config: Config, clock: Arc<dyn Clock>) -> Result<AppState, StartError> {
    let token = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || crate::pkcs11::open_configured(&config))
            .await
            .map_err(|e| crate::pkcs11::TokenError::Token(e.to_string()))??
    };
    let ring_file = crate::pkcs11::RingFile::new(&config, token.as_ref())?;
    let ring = ring_file.load(&config.master_key_path())?;
    let unreachable = |source: StoreError| match source {
        StoreError::Unavailable(_) => {
            StartError::Unreachable { database: config.database().masked().to_string(), source }
        }
        other => StartError::Store(other),
    };
    let store =
        Store::connect(&config.database(), config.db_max_connections).await.map_err(unreachable)?;
    // The first connection proves the database reachable (or says where it was looked for).
    drop(store.conn().await.map_err(unreachable)?);
    store.migrate().await?;
    let mut conn = store.conn().await?;
    if meta::get(&mut conn, "initialized").await?.is_none() {
        return Err(StartError::NotInitialized);
    }
    let audit_row = meta::secret(&mut conn, "audit_key").await?;
    let audit_key = ring
        .open(
            SealContext { table: "secrets", column: "value", row_id: "audit_key" },
            &audit_row.value,
        )
        .map_err(|e| StartError::WrongMasterKey(e.to_string()))?;
    let jwt_row = meta::secret(&mut conn, "jwt_signing_key").await?;
    let jwt_key = ring
        .open(
            SealContext { table: "secrets", column: "value", row_id: "jwt_signing_key" },
            &jwt_row.value,
        )
        .map_err(|e| StartError::WrongMasterKey(e.to_string()))?;
    let jwt = crate::auth::jwt::JwtKeys::from_pkcs8(&jwt_key)
        .map_err(|e| StartError::WrongMasterKey(e.to_string()))?;
    let issuers = crate::store::issuers::list(&mut conn).await?;
    drop(conn);
    let authority = Authority::load(issuers, &ring, token.as_ref())?;
    // A missing key fails start-up naming its label, not the first request.
    if let (Some(token), Some(label)) = (&token, &authority.active_entry().key_label) {
        let (token, label) = (token.clone(), label.clone());
        let present =
            tokio::task::spawn_blocking(move || token.has_key(&label).map(|p| (p, label)))
                .await
                .map_err(|e| crate::pkcs11::TokenError::Token(e.to_string()))??;
        if !present.0 {
            return Err(crate::pkcs11::TokenError::KeyMissing(present.1).into());
        }
    }
    Ok(AppState {
        config,
        store,
        ring: RwLock::new(Arc::new(ring)),
        clock,
        audit_key: Arc::new(AuditKey::new(audit_key)),
        jwt,
        authority: RwLock::new(Arc::new(authority)),
        limiter: FailureLimiter::default(),
        metrics: Metrics::new()?,
        registrations: Default::default(),
        policy_cache: Default::default(),
        enrollment_groups: Default::default(),
        token,
        ring_file,
    })
}

impl Application {
    /// Builds the server for `config`: state, TLS certificate, routes; binds the socket.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let instance_lock = lock_single_instance(&config)?;
        let mut state = open_state(config, clock).await?;
        match crate::usecase::revoke::mark_compromised_keys(&state.store, state.now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(keys = n, "keys of certificates revoked for compromise marked"),
            Err(e) => tracing::warn!(error = %e, "compromised keys not marked"),
        }
        let listen = state.config.listen.clone();
        let listener =
            bind(&listen).map_err(|source| StartError::Bind { addr: listen.clone(), source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr: listen.clone(), source })?;
        let mqtt_listener = bind_mqtt(&state.config)?;
        if state.config.public_url.is_none() {
            // CRL and OCSP pointers name the port actually bound, never `:0` (API.md A24).
            state.config.public_url = Some(state.config.default_public_url(Some(bound.port())));
        }
        let authority = state.authority();
        // The public URL's host is always a name of the server certificate (API.md A30).
        let mut names = state.config.tls_names.clone();
        let public = state.config.public_base_url();
        if let Ok(host) = crate::config::public_url_host(&public) {
            if !names.contains(&host) {
                names.push(host.clone());
            }
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
            if loopback {
                tracing::warn!(
                    url = %public,
                    "certificates will point devices at a loopback URL for CRL and OCSP: set \
                     public_url (provisiond.toml, PROVISIOND_PUBLIC_URL or init --public-url) to \
                     the address devices reach"
                );
            }
        }
        let cred = crate::usecase::server_cert::issue_for_instance(
            &state.store,
            &authority,
            &state.config.host_name,
            &names,
            state.now(),
        )
        .await?;
        let tls = crate::tls::server_config(&cred)?;
        let state = web::Data::new(state);
        let mqtt = match mqtt_listener {
            Some((listener, addr)) => Some(
                crate::mqtt::Endpoint::start(
                    state.clone(),
                    listener,
                    Arc::new(crate::tls::mqtt_config(&tls)),
                )
                .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let reloader = state.clone();
        let holder = crate::usecase::random_hex(8);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(KEY_RELOAD_SECS));
            loop {
                tick.tick().await;
                reloader.reload_ring();
                if let Err(e) = reloader.reload_authority().await {
                    tracing::warn!(error = %e, "CA reload failed");
                }
                if let Err(e) = periodic_jobs(&reloader, &holder).await {
                    tracing::warn!(error = %e, "periodic jobs failed");
                }
            }
        });
        tokio::spawn(crate::state::run_registration_queue(state.clone()));
        let checkpointer = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(CHECKPOINT_MILLIS));
            loop {
                tick.tick().await;
                if let Err(e) = checkpointer.store.checkpoint().await {
                    tracing::debug!(error = %e, "WAL checkpoint skipped");
                }
            }
        });
        let summarizer = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(SUMMARY_SECS));
            loop {
                tick.tick().await;
                write_failure_summaries(&summarizer, false).await;
                crate::auth::password::release_idle();
            }
        });
        let header_timeout = Duration::from_secs(state.config.request_header_timeout_secs.max(1));
        // Heads after a connection's first request: see `http::heads`.
        let watchdog = Arc::new(http::heads::Watchdog::new(KEEP_ALIVE + header_timeout));
        let sweeper = watchdog.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                sweeper.sweep();
            }
        });
        let data = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(json_config())
                .app_data(web::QueryConfig::default().error_handler(|e, _| {
                    ApiError::BadRequest(format!("invalid query parameters: {e}")).into()
                }))
                .app_data(web::PathConfig::default().error_handler(|e, _| {
                    ApiError::BadRequest(format!("invalid path: {e}")).into()
                }))
                .wrap(from_fn(http::guard))
                .wrap(from_fn(http::measure))
                .wrap(from_fn(http::limits::bodies))
                .wrap(from_fn(http::heads::track))
                .wrap(from_fn(http::access::log))
                .configure(http::configure)
                .default_service(web::to(|| async {
                    Err::<String, _>(ApiError::NotFound("no such route".into()))
                }))
        })
        .on_connect(move |conn, ext| {
            crate::mtls::on_connect(conn, ext);
            watchdog.on_connect(conn, ext);
        })
        .keep_alive(KEEP_ALIVE)
        // A request head must arrive within this (API.md A25); bodies: `http::limits`.
        .client_request_timeout(header_timeout)
        .tls_handshake_timeout(Duration::from_secs(5))
        .shutdown_timeout(20)
        .listen_rustls_0_23(listener, tls)
        .map_err(|source| StartError::Bind { addr: listen.clone(), source })?;
        let addr = server.addrs().first().copied().ok_or_else(|| StartError::Bind {
            addr: listen.clone(),
            source: std::io::Error::other("no address bound"),
        })?;
        let issuer = state.authority().active_entry().id.clone();
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            data_dir = %state.config.data_dir.display(),
            database = %state.config.database().masked(),
            host_name = %state.config.host_name,
            id_scope = %state.config.id_scope,
            public_url = %state.config.public_base_url(),
            listen = %addr,
            mqtt = %mqtt.as_ref().map(|m| m.local_addr().to_string()).unwrap_or_else(|| "off".into()),
            intermediate = %issuer,
            "provisiond starting"
        );
        Ok(Self { server: server.run(), addr, mqtt, state, _instance_lock: instance_lock })
    }

    /// The bound address (the real port when listening on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The MQTT endpoint's bound address, when MQTT is on.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt.as_ref().map(crate::mqtt::Endpoint::local_addr)
    }

    /// Serves until SIGTERM / SIGINT; in-flight requests (HTTP and MQTT) finish.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        if let Some(mqtt) = self.mqtt {
            mqtt.shutdown(Duration::from_secs(20)).await;
        }
        write_failure_summaries(&self.state, true).await;
        self.state.store.close().await;
        result
    }
}

/// Binds the MQTT socket (API.md A26, A30): off when `mqtt_listen` is empty; the implicit
/// default that cannot be bound is a warning (serve runs without MQTT), an explicit address
/// that cannot be bound an error, as is `mqtt_listen` equal to `listen`.
fn bind_mqtt(config: &Config) -> Result<Option<(std::net::TcpListener, String)>, StartError> {
    let Some((addr, implicit)) = config.mqtt_address() else { return Ok(None) };
    if !implicit && addr == config.listen {
        return Err(StartError::MqttSameAsListen(addr));
    }
    match bind(&addr) {
        Ok(listener) => Ok(Some((listener, addr))),
        Err(e) if implicit => {
            tracing::warn!(addr = %addr, error = %e, "cannot listen for MQTT on the default address; serving without MQTT (set mqtt_listen)");
            Ok(None)
        }
        Err(source) => Err(StartError::Bind { addr, source }),
    }
}

/// Binds the HTTPS socket as actix would (address reuse, a backlog of 1,024), before the
/// server is built, so the bound port is known to what the server issues.
fn bind(listen: &str) -> std::io::Result<std::net::TcpListener> {
    use std::net::ToSocketAddrs as _;
    let mut last = std::io::Error::other("the address resolves to nothing");
    for addr in listen.to_socket_addrs()? {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        match socket.bind(&addr.into()).and_then(|()| socket.listen(1024)) {
            Ok(()) => return Ok(socket.into()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Jobs that one instance at a time runs (a lease in the database, DESIGN.md "Scale-out"):
/// erase the payloads of expired bundles; expire the holds of AWS certificates whose ownership
/// token expired unused.
async fn periodic_jobs(state: &AppState, holder: &str) -> Result<(), StoreError> {
    let now = state.now();
    let mut conn = state.store.conn().await?;
    if crate::store::leases::try_claim(&mut conn, "sweep", holder, now, 3 * KEY_RELOAD_SECS as i64)
        .await?
    {
        let erased = crate::store::bundles::sweep_expired(&mut conn, now).await?;
        if erased > 0 {
            tracing::info!(erased, "expired bundle payloads erased");
        }
        drop(conn);
        let expired =
            crate::usecase::aws::expire_holds(&state.store, &state.audit_key, now).await?;
        if expired > 0 {
            tracing::info!(
                expired,
                "AWS ownership tokens expired unused: holds became cessationOfOperation"
            );
        }
    }
    Ok(())
}

/// JSON bodies: 1 MiB, `application/json` (parameters allowed), errors as problems.
fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(1024 * 1024)
        .content_type_required(true)
        .content_type(|mime| mime.type_() == "application" && mime.subtype() == "json")
        .error_handler(|err, _| {
            use actix_web::error::JsonPayloadError as E;
            match err {
                E::OverflowKnownLength { .. } | E::Overflow { .. } => ApiError::PayloadTooLarge,
                E::ContentType => ApiError::UnsupportedMediaType(
                    "request body must be sent as application/json".into(),
                ),
                E::Deserialize(e) => ApiError::BadRequest(format!("invalid JSON body: {e}")),
                other => ApiError::BadRequest(format!("invalid request body: {other}")),
            }
            .into()
        })
}
