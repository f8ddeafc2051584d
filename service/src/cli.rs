//! Command-line surface: one function per subcommand. `src/main.rs` only calls [`main`].
//!
//! stdout carries exactly what scripts read (the `listening on …` line, the owner connection
//! string of `init`); logs go to stderr through `tracing` (`RUST_LOG`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::app::{open_state, Application};
use crate::clock::SystemClock;
use crate::config::{Config, Overrides};
use crate::errors::error_chain;

/// provisiond — device provisioning and credential vault for IoT fleets.
#[derive(Debug, Parser)]
#[command(name = "provisiond", version, about)]
struct Cli {
    /// Data directory (config, master key, SQLite database, CA files).
    #[arg(long, global = true, value_name = "D")]
    data_dir: Option<PathBuf>,
    /// Where CA keys live: file or pkcs11.
    #[arg(long, global = true, value_name = "STORE")]
    ca_key_store: Option<crate::config::CaKeyStore>,
    /// PKCS#11 module (.so).
    #[arg(long, global = true, value_name = "F")]
    pkcs11_module: Option<PathBuf>,
    /// PKCS#11 token label.
    #[arg(long, global = true, value_name = "L")]
    pkcs11_token_label: Option<String>,
    /// File holding the token's user PIN (PROVISIOND_PKCS11_PIN wins over it).
    #[arg(long, global = true, value_name = "F")]
    pkcs11_pin_file: Option<PathBuf>,
    /// How the master key ring is stored: none or pkcs11.
    #[arg(long, global = true, value_name = "WRAP")]
    master_key_wrap: Option<crate::config::MasterKeyWrap>,
    /// Label of the token AES key wrapping the master key ring.
    #[arg(long, global = true, value_name = "L")]
    pkcs11_wrap_key_label: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create config, master key, database, CA and default policies; print the owner
    /// connection string once (or write it to --credentials-out).
    Init {
        /// Write the owner connection string to this file (mode 0600) instead of stdout.
        #[arg(long, value_name = "F")]
        credentials_out: Option<PathBuf>,
        /// The URL devices and brokers reach this service at (absolute https://, no query):
        /// CRL and OCSP pointers in every certificate use it, and its host is a SAN of the
        /// server certificate. Default https://{host_name}:{bound port}.
        #[arg(long, value_name = "URL")]
        public_url: Option<String>,
        /// An extra DNS name or IP address for the server certificate (repeatable).
        #[arg(long = "tls-name", value_name = "NAME")]
        tls_names: Vec<String>,
        /// Offline root: an intermediate certificate signed by --root-cert (PEM).
        #[arg(long, value_name = "F", requires_all = ["intermediate_key", "root_cert"])]
        intermediate_cert: Option<PathBuf>,
        /// Offline root: the intermediate's PKCS#8 private key (PEM).
        #[arg(long, value_name = "F", requires_all = ["intermediate_cert", "root_cert"])]
        intermediate_key: Option<PathBuf>,
        /// Offline root: the root certificate (PEM); its key never touches provisiond.
        #[arg(long, value_name = "F", requires_all = ["intermediate_cert", "intermediate_key"])]
        root_cert: Option<PathBuf>,
        /// Adopt this existing token key pair as the root CA key (ca_key_store = pkcs11).
        #[arg(long, value_name = "L", conflicts_with = "root_cert")]
        root_key_label: Option<String>,
        /// Adopt this existing token key pair as the intermediate CA key (ca_key_store = pkcs11).
        #[arg(long, value_name = "L", conflicts_with = "root_cert")]
        intermediate_key_label: Option<String>,
    },
    /// Serve the HTTPS API. Initializes the data directory only when it is the default
    /// `./provisiond-data` and does not exist yet, or with --init; otherwise a missing or
    /// uninitialized data directory is an error (run `provisiond init` first).
    Serve {
        /// Address to listen on (default 127.0.0.1:8443; port 0 picks a free port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Initialize the data directory (absent or empty) if it is not initialized yet.
        #[arg(long)]
        init: bool,
        /// MQTT device endpoint (default: the IP of --listen with port 8883, port 0 when
        /// --listen's port is 0; empty = off).
        #[arg(long, value_name = "ADDR")]
        mqtt_listen: Option<String>,
    },
    /// Apply database migrations.
    Migrate,
    /// Write a backup of this deployment to a new file (0600): config, master key, CA chain
    /// and, on SQLite, a consistent snapshot of the database taken while the server runs. On
    /// PostgreSQL it prints the pg_dump / pg_restore commands for the database.
    Backup {
        /// The backup file to create (refused if it exists).
        #[arg(long, value_name = "F")]
        out: PathBuf,
        /// Include the root CA key (it belongs offline: only with this flag).
        #[arg(long)]
        with_root_key: bool,
    },
    /// Restore a backup into an absent or empty data directory (--data-dir).
    Restore {
        /// The backup file.
        #[arg(long, value_name = "F")]
        from: PathBuf,
    },
    /// Rotate the master key: add a new version, re-seal every secret in batches, then retire
    /// the old version. Safe to run while servers run; resumable if interrupted.
    RotateMasterKey {
        /// Rows re-sealed per transaction.
        #[arg(long, default_value_t = 500)]
        batch_size: i64,
        /// Seconds to wait after adding the new key so running servers pick it up.
        #[arg(long, default_value_t = 12)]
        grace_secs: u64,
        /// Testing aid: stop (as if interrupted) after this many batches.
        #[arg(long, hide = true)]
        stop_after_batches: Option<u64>,
    },
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Mint a SAS token offline (for scripts): a policy token or a device token.
    SasToken {
        /// Policy name (token over the host name, `skn` = policy).
        #[arg(long, conflicts_with = "device")]
        policy: Option<String>,
        /// Device id (token over `{host}/devices/{id}`).
        #[arg(long)]
        device: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: i64,
    },
    /// Manage operators (human administrators). Passwords are read from stdin.
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// Export devices as NDJSON (keys only with --with-keys) to a new file, mode 0600.
    Export {
        /// Output file: created new; an existing path or a symlink is refused.
        #[arg(long, value_name = "F")]
        out: PathBuf,
        /// Include SAS keys.
        #[arg(long)]
        with_keys: bool,
    },
    /// Import devices from NDJSON (create or replace; per-line errors do not stop the rest).
    Import {
        /// Input file.
        file: PathBuf,
        /// `admin`: a line whose owner (enrollment group or individual enrollment) does not
        /// exist here is imported as admin-owned instead of failing (409).
        #[arg(long, value_name = "KIND", value_parser = ["admin"])]
        owner: Option<String>,
    },
    #[command(flatten)]
    Admin(crate::admin::AdminCommand),
}

#[derive(Debug, Subcommand)]
enum OperatorCommand {
    /// Create an operator. The password is asked for without echo on a terminal, else read
    /// from stdin (one line), or from --password-file. An existing operator is changed only
    /// with --replace.
    ///
    /// Example: provisiond operator add alice --permission RegistryRead --permission AuditRead
    Add {
        /// User name.
        name: String,
        /// A permission the operator holds (repeat; at least one).
        #[arg(long = "permission", value_name = "P", required = true, value_parser = permission_names())]
        permissions: Vec<String>,
        /// Read the password from the first line of this file instead.
        #[arg(long, value_name = "F")]
        password_file: Option<PathBuf>,
        /// Replace an existing operator's password and permissions (its sessions end).
        #[arg(long)]
        replace: bool,
    },
    /// Change an operator's password, keeping its permissions (its sessions end).
    Passwd {
        /// User name.
        name: String,
        /// Read the password from the first line of this file instead.
        #[arg(long, value_name = "F")]
        password_file: Option<PathBuf>,
    },
    /// Remove an operator (its sessions end).
    Remove {
        /// User name.
        name: String,
    },
    /// List operators and their permissions.
    List,
}

/// Valid permission names, for `--permission` (listed by --help and in errors).
fn permission_names() -> clap::builder::PossibleValuesParser {
    let mut names: Vec<&'static str> =
        crate::auth::Permission::ALL.iter().map(|p| p.as_str()).collect();
    names.push("RegistryWrite");
    clap::builder::PossibleValuesParser::new(names)
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify the hash chain; exit 1 naming the first bad row.
    Verify,
    #[command(flatten)]
    Remote(crate::admin::AuditRemoteCommand),
}

/// Entry point of the `provisiond` binary.
pub fn main() -> ExitCode {
    if let Some(code) = crate::admin::run_remote_local_command() {
        return code;
    }
    let cli = Cli::parse();
    // The log format may be set in provisiond.toml: a quiet first read of the configuration
    // picks it (the real load, after this, reports any problem through the logger).
    let format = Config::load(&Overrides { data_dir: cli.data_dir.clone(), ..Default::default() })
        .map(|c| c.log_format)
        .unwrap_or_default();
    init_tracing(format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (stdout carries only what scripts read), as text — coloured only on a
/// terminal, never escape codes in a log file — or as one JSON object per line.
fn init_tracing(format: crate::config::LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        crate::config::LogFormat::Json => builder.json().flatten_event(true).try_init(),
        crate::config::LogFormat::Text => {
            builder.with_ansi(std::io::stderr().is_terminal()).try_init()
        }
    };
}

async fn dispatch(cli: Cli) -> Result<ExitCode, String> {
    // Remote commands: no local config load, no data dir pass.
    if let Command::Admin(command) = cli.command {
        return Ok(crate::admin::run(command, cli.data_dir).await);
    }
    if let Command::Audit { command: AuditCommand::Remote(command) } = cli.command {
        return Ok(crate::admin::audit(command, cli.data_dir).await);
    }
    let (listen, mqtt_listen) = match &cli.command {
        Command::Serve { listen, mqtt_listen, .. } => (listen.clone(), mqtt_listen.clone()),
        _ => (None, None),
    };
    let explicit_data_dir =
        cli.data_dir.is_some() || std::env::var_os("PROVISIOND_DATA_DIR").is_some();
    let (public_url, tls_names) = match &cli.command {
        Command::Init { public_url, tls_names, .. } => (public_url.clone(), tls_names.clone()),
        _ => (None, Vec::new()),
    };
    let overrides = Overrides {
        data_dir: cli.data_dir.clone(),
        listen,
        mqtt_listen,
        public_url,
        tls_names,
        ca_key_store: cli.ca_key_store,
        pkcs11_module: cli.pkcs11_module.clone(),
        pkcs11_token_label: cli.pkcs11_token_label.clone(),
        pkcs11_pin_file: cli.pkcs11_pin_file.clone(),
        master_key_wrap: cli.master_key_wrap,
        pkcs11_wrap_key_label: cli.pkcs11_wrap_key_label.clone(),
    };
    let config = Config::load(&overrides).map_err(|e| e.to_string())?;
    if !matches!(cli.command, Command::Init { .. }) {
        tighten_data_dir(&config)?;
    }
    match cli.command {
        Command::Init {
            credentials_out,
            intermediate_cert,
            intermediate_key,
            root_cert,
            root_key_label,
            intermediate_key_label,
            ..
        } => {
            let adopt = crate::usecase::init::AdoptLabels {
                root: root_key_label,
                intermediate: intermediate_key_label,
            };
            let external = match (intermediate_cert, intermediate_key, root_cert) {
                (Some(c), Some(k), Some(r)) => {
                    let read = |p: &PathBuf| {
                        std::fs::read_to_string(p)
                            .map_err(|e| format!("cannot read {}: {e}", p.display()))
                    };
                    Some(crate::usecase::init::ExternalCa {
                        root_cert_pem: read(&r)?,
                        intermediate_cert_pem: read(&c)?,
                        intermediate_key_pem: zeroize::Zeroizing::new(read(&k)?),
                    })
                }
                _ => None,
            };
            init(config, credentials_out, external, adopt).await
        }
        Command::Serve { init, .. } => serve(config, explicit_data_dir, init).await,
        Command::Migrate => migrate(config).await,
        Command::Backup { out, with_root_key } => backup(config, out, with_root_key).await,
        Command::Restore { from } => restore(config, from),
        Command::RotateMasterKey { batch_size, grace_secs, stop_after_batches } => {
            let opts = crate::usecase::rotate_master_key::RotateOptions {
                batch_size: batch_size.clamp(1, 10_000),
                grace: std::time::Duration::from_secs(grace_secs),
                stop_after_batches,
            };
            rotate_master_key(config, opts).await
        }
        Command::Audit { command: AuditCommand::Verify } => audit_verify(config).await,
        Command::Audit { command: AuditCommand::Remote(command) } => {
            Ok(crate::admin::audit(command, cli.data_dir).await)
        }
        Command::SasToken { policy, device, ttl_secs } => {
            sas_token(config, policy, device, ttl_secs).await
        }
        Command::Operator { command } => operator(config, command).await,
        Command::Export { out, with_keys } => export(config, out, with_keys).await,
        Command::Import { file, owner } => import(config, file, owner.is_some()).await,
        Command::Admin(command) => Ok(crate::admin::run(command, cli.data_dir).await),
    }
}

/// Every local command starts by making the data dir 0700 and its files 0600 (API.md A25), so a
/// dir that existed before with looser modes, or files another tool wrote, do not stay readable;
/// each change is logged. `init` needs no pass: it accepts only an absent or empty dir.
fn tighten_data_dir(config: &Config) -> Result<(), String> {
    let changed = crate::fsutil::tighten_data_dir(&config.data_dir)
        .map_err(|e| format!("cannot make the data dir private (0700 dir, 0600 files): {e}"))?;
    for c in changed {
        tracing::warn!(
            path = %c.path.display(),
            was = %format!("{:o}", c.was),
            now = %format!("{:o}", c.now),
            "data dir entry was readable by others; mode tightened"
        );
    }
    Ok(())
}

/// `provisiond init`
#[allow(clippy::print_stdout)]
async fn init(
    config: Config,
    credentials_out: Option<PathBuf>,
    external: Option<crate::usecase::init::ExternalCa>,
    adopt: crate::usecase::init::AdoptLabels,
) -> Result<ExitCode, String> {
    let done = crate::usecase::init::initialize(config, &SystemClock, external, adopt)
        .await
        .map_err(|e| error_chain(&e))?;
    let line = format!("{}\n", &*done.owner_connection_string);
    match credentials_out {
        Some(path) => crate::fsutil::write_private(&path, line.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        None => print!("{line}"),
    }
    eprintln!("initialized {}", done.config.data_dir.display());
    Ok(ExitCode::SUCCESS)
}

/// `provisiond serve`
#[allow(clippy::print_stdout)]
async fn serve(mut config: Config, explicit: bool, init: bool) -> Result<ExitCode, String> {
    if !config.file_path().exists() {
        // Only the README's one command initializes by itself: the default directory, absent.
        // Anything else (a typo, the wrong working directory) would silently make a second PKI.
        if !init && (explicit || config.data_dir.exists()) {
            eprintln!(
                "error: {} is not an initialized provisiond data directory: run \
                 `provisiond init --data-dir {0}` first, or `provisiond serve --init` to \
                 initialize it now",
                config.data_dir.display()
            );
            return Ok(ExitCode::from(2));
        }
        let listen = config.listen.clone();
        let mqtt_listen = config.mqtt_listen.clone();
        let done = crate::usecase::init::initialize(config, &SystemClock, None, Default::default())
            .await
            .map_err(|e| error_chain(&e))?;
        let path = done.config.data_dir.join("owner-credentials.txt");
        crate::fsutil::write_private(
            &path,
            format!("{}\n", &*done.owner_connection_string).as_bytes(),
        )
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        tracing::info!(path = %path.display(), "first run: initialized; the owner connection string is in this file");
        config = done.config;
        config.listen = listen;
        config.mqtt_listen = mqtt_listen;
    }
    let app = Application::build(config).await.map_err(|e| error_chain(&e))?;
    // Every listener accepts before the HTTPS line, which scripts wait for (API.md A30).
    if let Some(mqtt) = app.mqtt_addr() {
        println!("mqtt listening on mqtts://{mqtt}");
    }
    println!("listening on https://{}", app.local_addr());
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    app.run_until_stopped().await.map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// `provisiond backup`
async fn backup(config: Config, out: PathBuf, with_root_key: bool) -> Result<ExitCode, String> {
    let store =
        crate::store::Store::connect(&config.database(), 2).await.map_err(|e| error_chain(&e))?;
    let report = crate::usecase::backup::backup(&config, &store, &out, with_root_key)
        .await
        .map_err(|e| error_chain(&e))?;
    eprintln!("wrote {} ({})", out.display(), report.entries.join(", "));
    if !report.database_included {
        let url = config.database().masked();
        eprintln!(
            "the PostgreSQL database is not in the file; back it up with:\n  \
             pg_dump --format=custom --file=provisiond.dump '{url}'\n\
             and restore it into an empty database with:\n  \
             pg_restore --no-owner --dbname='<new database url>' provisiond.dump"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `provisiond restore`
fn restore(config: Config, from: PathBuf) -> Result<ExitCode, String> {
    let restored =
        crate::usecase::backup::restore(&from, &config.data_dir).map_err(|e| error_chain(&e))?;
    eprintln!("restored {} into {}", restored.join(", "), config.data_dir.display());
    Ok(ExitCode::SUCCESS)
}

/// `provisiond migrate`
async fn migrate(config: Config) -> Result<ExitCode, String> {
    let store =
        crate::store::Store::connect(&config.database(), 2).await.map_err(|e| error_chain(&e))?;
    store.migrate().await.map_err(|e| error_chain(&e))?;
    eprintln!("migrations applied");
    Ok(ExitCode::SUCCESS)
}

/// `provisiond rotate-master-key`
async fn rotate_master_key(
    config: Config,
    opts: crate::usecase::rotate_master_key::RotateOptions,
) -> Result<ExitCode, String> {
    let store =
        crate::store::Store::connect(&config.database(), 2).await.map_err(|e| error_chain(&e))?;
    store.migrate().await.map_err(|e| error_chain(&e))?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("re-sealing {bar:40} {pos}/{len} rows")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let token = crate::pkcs11::open_configured(&config).map_err(|e| error_chain(&e))?;
    let ring_file =
        crate::pkcs11::RingFile::new(&config, token.as_ref()).map_err(|e| error_chain(&e))?;
    let result = crate::usecase::rotate_master_key::rotate(
        &store,
        &config.master_key_path(),
        &ring_file,
        &opts,
        &progress,
    )
    .await;
    bar.finish_and_clear();
    let done = result.map_err(|e| error_chain(&e))?;
    eprintln!("master key rotated to version {} ({} rows re-sealed)", done.version, done.resealed);
    Ok(ExitCode::SUCCESS)
}

/// `provisiond audit verify`
#[allow(clippy::print_stdout)]
async fn audit_verify(config: Config) -> Result<ExitCode, String> {
    let state = open_state(config, Arc::new(SystemClock)).await.map_err(|e| error_chain(&e))?;
    let report =
        crate::audit::verify(&state.store, &state.audit_key).await.map_err(|e| error_chain(&e))?;
    if report.ok {
        println!("audit chain OK: {} rows verified", report.checked);
        Ok(ExitCode::SUCCESS)
    } else {
        let seq = report.first_bad_seq.unwrap_or(0);
        println!("audit chain BROKEN: first bad row seq={seq} ({} rows checked)", report.checked);
        Ok(ExitCode::from(1))
    }
}

fn cli_actor() -> crate::usecase::Actor {
    crate::usecase::Actor { name: "cli".into(), addr: None }
}

/// `provisiond sas-token`
#[allow(clippy::print_stdout)]
async fn sas_token(
    config: Config,
    policy: Option<String>,
    device: Option<String>,
    ttl: i64,
) -> Result<ExitCode, String> {
    if !(1..=crate::usecase::sas::MAX_TTL_SECS).contains(&ttl) {
        return Err(format!(
            "--ttl-secs must be between 1 and {}",
            crate::usecase::sas::MAX_TTL_SECS
        ));
    }
    let state = open_state(config, Arc::new(SystemClock)).await.map_err(|e| error_chain(&e))?;
    let now = state.now();
    let token = match (policy, device) {
        (Some(name), None) => {
            let p = crate::usecase::policies::get(&state.store, &state.ring(), &name)
                .await
                .map_err(|e| error_chain(&e))?;
            ca::sas::SasToken::build(&state.config.host_name, &p.primary, now + ttl, Some(&name))
        }
        (None, Some(id)) => {
            crate::usecase::sas::mint(
                &state.store,
                &state.ring(),
                &state.config.host_name,
                &id,
                ttl,
                now,
            )
            .await
            .map_err(|e| error_chain(&e))?
            .0
        }
        _ => return Err("give exactly one of --policy NAME or --device ID".into()),
    };
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// The password: from `file` (first line), a prompt without echo on a terminal, or one line of
/// stdin. Nothing else depends on whether stdin is a terminal.
fn read_password(
    file: Option<&std::path::Path>,
) -> Result<crate::auth::password::Password, String> {
    use std::io::IsTerminal as _;
    let pw = match file {
        Some(path) => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
            );
            text.lines().next().unwrap_or_default().to_owned()
        }
        None if std::io::stdin().is_terminal() => rpassword::prompt_password("password: ")
            .map_err(|e| format!("cannot read the password: {e}"))?,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    Ok(crate::auth::password::Password::new(pw))
}

/// `provisiond operator add|passwd|remove`
async fn operator(config: Config, command: OperatorCommand) -> Result<ExitCode, String> {
    let state = open_state(config, Arc::new(SystemClock)).await.map_err(|e| error_chain(&e))?;
    let rc = crate::state::RequestCtx::for_actor(&state, cli_actor());
    let cx = rc.cx(&state);
    match command {
        OperatorCommand::Add { name, permissions, password_file, replace } => {
            crate::ids::validate("operator name", &name).map_err(|e| e.to_string())?;
            let perms = crate::auth::PermissionSet::parse(permissions.iter().map(String::as_str))
                .map_err(|bad| format!("unknown permission `{bad}`"))?;
            let exists = crate::usecase::operators::get(&state.store, &name)
                .await
                .map_err(|e| error_chain(&e))?
                .is_some();
            if exists && !replace {
                eprintln!(
                    "error: operator {name} exists: add --replace to change its password and \
                     permissions, or use `provisiond operator passwd {name}`"
                );
                return Ok(ExitCode::from(5));
            }
            let password = read_password(password_file.as_deref())?;
            crate::usecase::operators::put(&state.store, &cx, &name, password, &perms, false)
                .await
                .map_err(|e| error_chain(&e))?;
            eprintln!("operator {name} {}", if exists { "replaced" } else { "created" });
        }
        OperatorCommand::List => {
            let (rows, _) = crate::usecase::operators::list(&state.store, "", 1000)
                .await
                .map_err(|e| error_chain(&e))?;
            let mut out = String::new();
            for r in rows {
                let names: Vec<String> = serde_json::from_str(&r.permissions).unwrap_or_default();
                out.push_str(&format!("{}\t{}\n", r.name, names.join(",")));
            }
            print_stdout(&out);
        }
        OperatorCommand::Passwd { name, password_file } => {
            let row = {
                let mut conn = state.store.conn().await.map_err(|e| error_chain(&e))?;
                crate::store::operators::get(&mut conn, &name).await.map_err(|e| error_chain(&e))?
            }
            .ok_or_else(|| format!("no operator named {name}"))?;
            let names: Vec<String> = serde_json::from_str(&row.permissions).unwrap_or_default();
            let perms = crate::auth::PermissionSet::parse(names.iter().map(String::as_str))
                .unwrap_or_default();
            let password = read_password(password_file.as_deref())?;
            crate::usecase::operators::put(&state.store, &cx, &name, password, &perms, false)
                .await
                .map_err(|e| error_chain(&e))?;
            eprintln!("password of {name} changed");
        }
        OperatorCommand::Remove { name } => {
            crate::usecase::operators::delete(&state.store, &cx, &name)
                .await
                .map_err(|e| error_chain(&e))?;
            eprintln!("operator {name} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a command's result to stdout (what scripts read).
#[allow(clippy::print_stdout)]
fn print_stdout(text: &str) {
    print!("{text}");
}

fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!("{what} {{bar:40}} {{pos}}/{{len}}"))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// `provisiond export`: the output file is created new, 0600, never through a symlink (API.md
/// A25); an existing path is refused and left as it was. If the export fails halfway, the
/// partial file is removed.
async fn export(config: Config, out: PathBuf, with_keys: bool) -> Result<ExitCode, String> {
    let state = open_state(config, Arc::new(SystemClock)).await.map_err(|e| error_chain(&e))?;
    let file = crate::fsutil::create_new_private(&out).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => format!(
            "refusing to write {}: it already exists (export creates a new file and never \
             overwrites one or follows a symlink); remove it or choose another path",
            out.display()
        ),
        _ if e.raw_os_error() == Some(libc::ELOOP) => {
            format!("refusing to write {}: it is a symlink", out.display())
        }
        _ => format!("cannot create {}: {e}", out.display()),
    })?;
    match write_export(&state, std::io::BufWriter::new(file), with_keys).await {
        Ok(n) => {
            eprintln!("exported {n} devices to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&out);
            Err(e)
        }
    }
}

async fn write_export(
    state: &crate::state::AppState,
    mut file: std::io::BufWriter<std::fs::File>,
    with_keys: bool,
) -> Result<u64, String> {
    use std::io::Write as _;
    let ring = state.ring();
    let mut conn = state.store.conn().await.map_err(|e| error_chain(&e))?;
    let bar = progress(0, "exporting");
    let mut cursor = String::new();
    let mut n = 0u64;
    loop {
        let rows = crate::store::devices::page(&mut conn, &cursor, None, None, 1000)
            .await
            .map_err(|e| error_chain(&e))?;
        let Some(last) = rows.last().map(|r| r.device_id.clone()) else { break };
        for row in rows {
            let d = crate::usecase::devices::open(&ring, row).map_err(|e| error_chain(&e))?;
            let line = crate::repr::device_json(&d, with_keys).to_string();
            writeln!(file, "{line}").map_err(|e| e.to_string())?;
            n += 1;
        }
        bar.set_position(n);
        cursor = last;
    }
    file.flush().map_err(|e| e.to_string())?;
    file.get_ref().sync_all().map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    Ok(n)
}

/// `provisiond import`
async fn import(config: Config, file: PathBuf, admin_if_missing: bool) -> Result<ExitCode, String> {
    use std::io::BufRead as _;
    let state = open_state(config, Arc::new(SystemClock)).await.map_err(|e| error_chain(&e))?;
    let open =
        || std::fs::File::open(&file).map_err(|e| format!("cannot read {}: {e}", file.display()));
    // Two passes over the file, never holding it in memory: count (for the progress bar), then
    // import in batches of one transaction each (5-7x faster than one per line); a batch that
    // fails as a whole is replayed line by line so good lines still land and each bad line is
    // reported.
    let total = std::io::BufReader::new(open()?).lines().count() as u64;
    let bar = progress(total, "importing");
    let actor = cli_actor();
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut lines = std::io::BufReader::new(open()?).lines().enumerate();
    loop {
        let mut chunk: Vec<(usize, String)> = Vec::with_capacity(500);
        for (i, line) in lines.by_ref() {
            let line = line.map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            if !line.trim().is_empty() {
                chunk.push((i, line));
            }
            if chunk.len() == 500 {
                break;
            }
        }
        if chunk.is_empty() {
            break;
        }
        let rc = crate::state::RequestCtx::for_actor(&state, actor.clone());
        let cx = rc.cx(&state);
        let mut items = Vec::with_capacity(chunk.len());
        let mut parsed_lines = Vec::with_capacity(chunk.len());
        for (i, line) in &chunk {
            match crate::repr::parse_import_line(line, admin_if_missing) {
                Ok(item) => {
                    items.push(item);
                    parsed_lines.push((*i, line));
                }
                Err(e) => {
                    failed += 1;
                    bar.suspend(|| eprintln!("line {}: {e}", i + 1));
                }
            }
        }
        let n = items.len() as u64;
        match crate::usecase::devices::put_many(&state.store, &cx, items).await {
            Ok(_) => ok += n,
            Err(_) => {
                for (i, line) in parsed_lines {
                    match crate::repr::import_line(&state.store, &cx, line, admin_if_missing).await
                    {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            failed += 1;
                            bar.suspend(|| eprintln!("line {}: {e}", i + 1));
                        }
                    }
                }
            }
        }
        bar.set_position(chunk.last().map_or(0, |(i, _)| *i as u64 + 1));
    }
    bar.finish_and_clear();
    // Leave the write-ahead log folded into the database for the server that reads it next.
    if let Err(e) = state.store.checkpoint().await {
        eprintln!("note: WAL checkpoint after import failed: {e}");
    }
    eprintln!("imported {ok} devices, {failed} lines failed");
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
