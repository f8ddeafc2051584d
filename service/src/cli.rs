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
use crate::http::problem::error_chain;

/// provisiond — device provisioning and credential vault for IoT fleets.
#[derive(Debug, Parser)]
#[command(name = "provisiond", version, about)]
struct Cli {
    /// Data directory (config, master key, SQLite database, CA files).
    #[arg(long, global = true, value_name = "D")]
    data_dir: Option<PathBuf>,
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
        /// Offline root: an intermediate certificate signed by --root-cert (PEM).
        #[arg(long, value_name = "F", requires_all = ["intermediate_key", "root_cert"])]
        intermediate_cert: Option<PathBuf>,
        /// Offline root: the intermediate's PKCS#8 private key (PEM).
        #[arg(long, value_name = "F", requires_all = ["intermediate_cert", "root_cert"])]
        intermediate_key: Option<PathBuf>,
        /// Offline root: the root certificate (PEM); its key never touches provisiond.
        #[arg(long, value_name = "F", requires_all = ["intermediate_cert", "intermediate_key"])]
        root_cert: Option<PathBuf>,
    },
    /// Serve the HTTPS API (initializes the data directory on first run).
    Serve {
        /// Address to listen on (default 127.0.0.1:8443; port 0 picks a free port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// MQTT device endpoint (default: the IP of --listen with port 8883, port 0 when
        /// --listen's port is 0; empty = off).
        #[arg(long, value_name = "ADDR")]
        mqtt_listen: Option<String>,
    },
    /// Apply database migrations.
    Migrate,
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
    /// Export devices as NDJSON (keys only with --with-keys; the file is then mode 0600).
    Export {
        /// Output file.
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
    },
}

#[derive(Debug, Subcommand)]
enum OperatorCommand {
    /// Create an operator (password from stdin).
    Add {
        /// User name.
        name: String,
        /// Permission (repeat).
        #[arg(long = "permission", value_name = "P")]
        permissions: Vec<String>,
    },
    /// Change an operator's password (from stdin), keeping its permissions.
    Passwd {
        /// User name.
        name: String,
    },
    /// Remove an operator.
    Remove {
        /// User name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify the hash chain; exit 1 naming the first bad row.
    Verify,
}

/// Entry point of the `provisiond` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
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

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

async fn dispatch(cli: Cli) -> Result<ExitCode, String> {
    let (listen, mqtt_listen) = match &cli.command {
        Command::Serve { listen, mqtt_listen } => (listen.clone(), mqtt_listen.clone()),
        _ => (None, None),
    };
    let overrides = Overrides { data_dir: cli.data_dir.clone(), listen, mqtt_listen };
    let config = Config::load(&overrides).map_err(|e| e.to_string())?;
    match cli.command {
        Command::Init { credentials_out, intermediate_cert, intermediate_key, root_cert } => {
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
            init(config, credentials_out, external).await
        }
        Command::Serve { .. } => serve(config).await,
        Command::Migrate => migrate(config).await,
        Command::RotateMasterKey { batch_size, grace_secs, stop_after_batches } => {
            let opts = crate::usecase::rotate_master_key::RotateOptions {
                batch_size: batch_size.clamp(1, 10_000),
                grace: std::time::Duration::from_secs(grace_secs),
                stop_after_batches,
            };
            rotate_master_key(config, opts).await
        }
        Command::Audit { command: AuditCommand::Verify } => audit_verify(config).await,
        Command::SasToken { policy, device, ttl_secs } => {
            sas_token(config, policy, device, ttl_secs).await
        }
        Command::Operator { command } => operator(config, command).await,
        Command::Export { out, with_keys } => export(config, out, with_keys).await,
        Command::Import { file } => import(config, file).await,
    }
}

/// `provisiond init`
#[allow(clippy::print_stdout)]
async fn init(
    config: Config,
    credentials_out: Option<PathBuf>,
    external: Option<crate::usecase::init::ExternalCa>,
) -> Result<ExitCode, String> {
    let done = crate::usecase::init::initialize(config, &SystemClock, external)
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
async fn serve(mut config: Config) -> Result<ExitCode, String> {
    if !config.file_path().exists() {
        let listen = config.listen.clone();
        let mqtt_listen = config.mqtt_listen.clone();
        let done = crate::usecase::init::initialize(config, &SystemClock, None)
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
    let result = crate::usecase::rotate_master_key::rotate(
        &store,
        &config.master_key_path(),
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

fn read_password() -> Result<crate::auth::password::Password, String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    let pw = line.trim_end_matches(['\r', '\n']).to_owned();
    if pw.chars().count() < crate::http::operators::MIN_PASSWORD_LEN {
        return Err(format!(
            "the password must be at least {} characters",
            crate::http::operators::MIN_PASSWORD_LEN
        ));
    }
    Ok(crate::auth::password::Password::new(pw))
}

/// `provisiond operator add|passwd|remove`
async fn operator(config: Config, command: OperatorCommand) -> Result<ExitCode, String> {
    let state = open_state(config, Arc::new(SystemClock)).await.map_err(|e| error_chain(&e))?;
    let rc = crate::http::respond::RequestCtx::for_actor(&state, cli_actor());
    let cx = rc.cx(&state);
    match command {
        OperatorCommand::Add { name, permissions } => {
            crate::ids::validate("operator name", &name).map_err(|e| e.to_string())?;
            let perms = crate::auth::PermissionSet::parse(permissions.iter().map(String::as_str))
                .map_err(|bad| format!("unknown permission `{bad}`"))?;
            crate::usecase::operators::put(&state.store, &cx, &name, read_password()?, &perms)
                .await
                .map_err(|e| error_chain(&e))?;
            eprintln!("operator {name} saved");
        }
        OperatorCommand::Passwd { name } => {
            let row = {
                let mut conn = state.store.conn().await.map_err(|e| error_chain(&e))?;
                crate::store::operators::get(&mut conn, &name).await.map_err(|e| error_chain(&e))?
            }
            .ok_or_else(|| format!("no operator named {name}"))?;
            let names: Vec<String> = serde_json::from_str(&row.permissions).unwrap_or_default();
            let perms = crate::auth::PermissionSet::parse(names.iter().map(String::as_str))
                .unwrap_or_default();
            crate::usecase::operators::put(&state.store, &cx, &name, read_password()?, &perms)
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

fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!("{what} {{bar:40}} {{pos}}/{{len}}"))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// `provisiond export`
async fn export(config: Config, out: PathBuf, with_keys: bool) -> Result<ExitCode, String> {
    use std::io::Write as _;
    let state = open_state(config, Arc::new(SystemClock)).await.map_err(|e| error_chain(&e))?;
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mode = if with_keys { 0o600 } else { 0o644 };
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&out)
    }
    .map(std::io::BufWriter::new)
    .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
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
            let line = crate::http::devices::device_json(&d, with_keys).to_string();
            writeln!(file, "{line}").map_err(|e| e.to_string())?;
            n += 1;
        }
        bar.set_position(n);
        cursor = last;
    }
    file.flush().map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    eprintln!("exported {n} devices to {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// `provisiond import`
async fn import(config: Config, file: PathBuf) -> Result<ExitCode, String> {
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
        let rc = crate::http::respond::RequestCtx::for_actor(&state, actor.clone());
        let cx = rc.cx(&state);
        let mut items = Vec::with_capacity(chunk.len());
        let mut parsed_lines = Vec::with_capacity(chunk.len());
        for (i, line) in &chunk {
            match crate::http::devices::parse_import_line(line) {
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
                    match crate::http::devices::import_line(&state.store, &cx, line).await {
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
