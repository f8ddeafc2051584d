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
    },
    /// Serve the HTTPS API (initializes the data directory on first run).
    Serve {
        /// Address to listen on (default 127.0.0.1:8443; port 0 picks a free port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
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
    let listen = match &cli.command {
        Command::Serve { listen } => listen.clone(),
        _ => None,
    };
    let overrides = Overrides { data_dir: cli.data_dir.clone(), listen };
    let config = Config::load(&overrides).map_err(|e| e.to_string())?;
    match cli.command {
        Command::Init { credentials_out } => init(config, credentials_out).await,
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
    }
}

/// `provisiond init`
#[allow(clippy::print_stdout)]
async fn init(config: Config, credentials_out: Option<PathBuf>) -> Result<ExitCode, String> {
    let done = crate::usecase::init::initialize(config, &SystemClock)
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
        let done = crate::usecase::init::initialize(config, &SystemClock)
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
    }
    let app = Application::build(config).await.map_err(|e| error_chain(&e))?;
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
