//! The admin CLI: `provisiond device|group|enrollment|token|bundle|cert|policy|ca|login|logout`,
//! `audit tail|checkpoint`, and `audit …` / `operator …` with `--url`.
//!
//! Invariants: this module is a pure HTTPS client of the public `/v1` REST API (API.md); it
//! shares no code with the server handlers (it imports none of the server's HTTP, store or
//! use-case modules; CI greps for that seam). Every command ends in one exit code of API.md A30: 0 ok, 1 verification failed,
//! 2 usage or config, 3 for 401/403, 4 for 404, 5 for 409/410/412, 6 other 4xx, 7 server error
//! or unreachable. stdout carries only the result (a table or the server's JSON); errors go to
//! stderr.

mod auth;
mod client;
mod commands;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use commands::{
    AttestationSet, AuditRemoteCommand, AuditUrlCommand, BundleCommand, CaCommand, CertCommand,
    DeviceCommand, DeviceSet, EnrollmentCommand, EnrollmentSet, GroupCommand, GroupSet, LoginArgs,
    OperatorRemoteCommand, Paging, PolicyCommand, PolicySet, TailOpts, TokenCommand, WhichKey,
};

/// Where the server is, who we are, whom we trust and how to print: shared by every admin
/// subcommand (global, so the flags may follow the subcommand).
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// Server base URL (default: public_url of --data-dir, else https://{HostName}:8443 of the
    /// connection string, else the URL of the `provisiond login` session).
    #[arg(
        long,
        global = true,
        env = "PROVISIOND_URL",
        value_name = "URL",
        help_heading = "Connection"
    )]
    pub url: Option<String>,
    /// Credentials: `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…` (the owner-credentials
    /// format); without it the `provisiond login` session is used.
    #[arg(
        long,
        global = true,
        env = "PROVISIOND_CONNECTION_STRING",
        hide_env_values = true,
        value_name = "CS",
        help_heading = "Connection"
    )]
    pub connection_string: Option<String>,
    /// PEM file of the CA chain to trust (default: ca-chain.pem of --data-dir, else the system
    /// roots).
    #[arg(long, global = true, value_name = "F", help_heading = "Connection")]
    pub ca_file: Option<PathBuf>,
    /// Output format: human tables, or the server's JSON (pretty) for scripts.
    #[arg(
        long,
        short = 'o',
        global = true,
        value_enum,
        default_value_t = Output::Table,
        help_heading = "Connection"
    )]
    pub output: Output,
}

/// Output format of the admin CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// The server's JSON, pretty-printed, members in the server's order.
    Json,
    /// Aligned columns (lists) or `member  value` lines (single objects).
    Table,
}

/// Declares the argument struct of one admin subcommand: its global flags and its verbs.
macro_rules! with_remote {
    ($(#[$doc:meta])* $name:ident, $command:ty) => {
        $(#[$doc])*
        #[derive(Debug, Args)]
        pub struct $name {
            #[command(flatten)]
            remote: Remote,
            #[command(subcommand)]
            command: $command,
        }
    };
}

with_remote!(
    /// `provisiond bundle …`
    BundleArgs, BundleCommand);
with_remote!(
    /// `provisiond ca …`
    CaArgs, CaCommand);
with_remote!(
    /// `provisiond cert …`
    CertArgs, CertCommand);
with_remote!(
    /// `provisiond device …`
    DeviceArgs, DeviceCommand);
with_remote!(
    /// `provisiond enrollment …`
    EnrollmentArgs, EnrollmentCommand);
with_remote!(
    /// `provisiond group …`
    GroupArgs, GroupCommand);
with_remote!(
    /// `provisiond policy …`
    PolicyArgs, PolicyCommand);
with_remote!(
    /// `provisiond token …`
    TokenArgs, TokenCommand);
with_remote!(
    /// `provisiond audit …` (remote)
    AuditArgs, AuditUrlCommand);
with_remote!(
    /// `provisiond operator …` (remote)
    OperatorArgs, OperatorRemoteCommand);

/// The admin subcommands (flattened into the top-level command list of `provisiond`).
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Credential bundles: create, show, list, cancel, redeem.
    #[command(after_help = "Example:\n  provisiond bundle create --device sensor-1 \
                            --credential x509 --format json")]
    Bundle(BundleArgs),
    /// The CA: chain, CRL, issuers.
    #[command(after_help = "Example:\n  provisiond ca chain > ca-chain.pem")]
    Ca(CaArgs),
    /// Issued certificates: list, show, revoke.
    #[command(after_help = "Example:\n  provisiond cert list --device sensor-1")]
    Cert(CertArgs),
    /// Devices of the registry: create, show, list, update, delete, rotate-key.
    #[command(after_help = "Example:\n  provisiond device create sensor-1 --tag site=berlin")]
    Device(DeviceArgs),
    /// Individual enrollments: create, show, list, delete.
    #[command(after_help = "Example:\n  provisiond enrollment create sensor-9 \
                            --attestation symmetric_key --credential sas")]
    Enrollment(EnrollmentArgs),
    /// Enrollment groups: create, show, list, update, delete.
    #[command(
        name = "group",
        after_help = "Example:\n  provisiond group create line-1 --attestation token"
    )]
    EnrollmentGroup(GroupArgs),
    /// Log in as an operator: keeps a short-lived token in a 0600 session file
    /// ($XDG_CONFIG_HOME/provisiond/session or ~/.config/provisiond/session).
    #[command(after_help = "Example:\n  provisiond login alice --url https://prov.example:8443")]
    Login(LoginArgs),
    /// Forget the operator session of `provisiond login`.
    #[command(after_help = "Example:\n  provisiond logout")]
    Logout,
    /// Access policies (SAS keys): create, show, list, update, delete, rotate-key.
    #[command(after_help = "Example:\n  provisiond policy create station-7 \
                            --permission RegistryRead --scope-prefix station-7-")]
    Policy(PolicyArgs),
    /// One-time enrollment tokens: mint.
    #[command(after_help = "Example:\n  provisiond token mint --group line-1 --count 10")]
    Token(TokenArgs),
}

/// Runs an admin subcommand; `data_dir` is the global `--data-dir`, if given.
pub async fn run(command: AdminCommand, data_dir: Option<PathBuf>) -> ExitCode {
    let outcome = match command {
        AdminCommand::Bundle(g) => commands::bundle(g.command, &g.remote, data_dir).await,
        AdminCommand::Ca(g) => commands::ca(g.command, &g.remote, data_dir).await,
        AdminCommand::Cert(g) => commands::cert(g.command, &g.remote, data_dir).await,
        AdminCommand::Device(g) => commands::device(g.command, &g.remote, data_dir).await,
        AdminCommand::Enrollment(g) => commands::enrollment(g.command, &g.remote, data_dir).await,
        AdminCommand::EnrollmentGroup(g) => commands::group(g.command, &g.remote, data_dir).await,
        AdminCommand::Login(args) => commands::login(args, data_dir).await,
        AdminCommand::Logout => commands::logout(),
        AdminCommand::Policy(g) => commands::policy(g.command, &g.remote, data_dir).await,
        AdminCommand::Token(g) => commands::token(g.command, &g.remote, data_dir).await,
    };
    finish(outcome)
}

/// `provisiond audit tail|checkpoint` (always remote).
pub async fn audit(command: AuditRemoteCommand, data_dir: Option<PathBuf>) -> ExitCode {
    finish(commands::audit(command, data_dir).await)
}

/// The command line of `audit …` / `operator …` when `--url` is given: those act on a server
/// (API.md A30), and are parsed here so the local subcommands stay as they are.
#[derive(Debug, Parser)]
#[command(name = "provisiond")]
struct RemoteLocalCli {
    /// Data directory (its public_url and ca-chain.pem are defaults).
    #[arg(long, global = true, value_name = "D")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: RemoteLocalCommand,
}

#[derive(Debug, Subcommand)]
enum RemoteLocalCommand {
    /// The server's audit trail.
    Audit(AuditArgs),
    /// The server's operators (human administrators).
    Operator(OperatorArgs),
}

/// `provisiond audit …` or `provisiond operator …` with `--url`: runs it against the server and
/// returns its exit code; `None` for any other command line (handled by the local parser).
pub fn run_remote_local_command() -> Option<ExitCode> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut rest = args.iter().skip(1).map(|a| a.to_string_lossy());
    let mut subcommand = None;
    while let Some(arg) = rest.next() {
        if arg == "--data-dir" {
            rest.next();
        } else if !arg.starts_with('-') {
            subcommand = Some(arg.into_owned());
            break;
        }
    }
    if !matches!(subcommand.as_deref(), Some("audit" | "operator")) {
        return None;
    }
    if !rest.any(|a| a == "--url" || a.starts_with("--url=")) {
        return None;
    }
    let cli = RemoteLocalCli::try_parse_from(&args).unwrap_or_else(|e| e.exit());
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Some(ExitCode::from(EXIT_UNAVAILABLE));
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            RemoteLocalCommand::Audit(g) => {
                commands::audit_url(g.command, &g.remote, cli.data_dir).await
            }
            RemoteLocalCommand::Operator(g) => {
                commands::operator(g.command, &g.remote, cli.data_dir).await
            }
        }
    });
    Some(finish(outcome))
}

/// Exit code: verification failed (`audit verify`).
pub const EXIT_VERIFY_FAILED: u8 = 1;
/// Exit code: usage or configuration error.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the server refused the credential or the permission (401/403).
pub const EXIT_DENIED: u8 = 3;
/// Exit code: not found (404).
pub const EXIT_NOT_FOUND: u8 = 4;
/// Exit code: conflict, gone or precondition failed (409/410/412).
pub const EXIT_CONFLICT: u8 = 5;
/// Exit code: any other client error (4xx).
pub const EXIT_CLIENT: u8 = 6;
/// Exit code: server error or server unreachable.
pub const EXIT_UNAVAILABLE: u8 = 7;

/// Everything that ends an admin command early.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The server answered with an error status (its problem `detail` when it sent one).
    #[error("{detail} (HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The problem's `detail` or `title`, else the status text.
        detail: String,
    },
    /// A local configuration problem (connection string, files, data dir).
    #[error("{0}")]
    Config(String),
    /// A create found the object already there (a 412 to `If-None-Match: *`, or a GET that
    /// answered 200): it is never silently replaced.
    #[error("{kind} {id} already exists (use {instead})")]
    Exists {
        /// What kind of object.
        kind: &'static str,
        /// Its id.
        id: String,
        /// The command that changes it instead.
        instead: &'static str,
    },
    /// The server could not be reached or sent something that is not HTTP/JSON.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// Why, with its cause chain.
        reason: String,
    },
}

impl AdminError {
    /// The A30 exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Api { status: 401 | 403, .. } => EXIT_DENIED,
            Self::Api { status: 404, .. } => EXIT_NOT_FOUND,
            Self::Api { status: 409 | 410 | 412, .. } | Self::Exists { .. } => EXIT_CONFLICT,
            Self::Api { status: 400..=499, .. } => EXIT_CLIENT,
            Self::Api { .. } | Self::Unreachable { .. } => EXIT_UNAVAILABLE,
            Self::Config(_) => EXIT_USAGE,
        }
    }
}

fn finish(outcome: Result<u8, AdminError>) -> ExitCode {
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_exit_codes_of_a30() {
        let api = |status| AdminError::Api { status, detail: String::new() }.exit_code();
        for (status, code) in [
            (401, 3),
            (403, 3),
            (404, 4),
            (409, 5),
            (410, 5),
            (412, 5),
            (400, 6),
            (415, 6),
            (429, 6),
            (500, 7),
            (503, 7),
        ] {
            assert_eq!(api(status), code, "status {status}");
        }
        assert_eq!(AdminError::Config(String::new()).exit_code(), 2);
    }
}
