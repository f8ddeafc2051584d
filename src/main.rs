//! `provisiond`: the command-line entry point. Parses arguments and dispatches to
//! `service::cli`; no logic lives here.

fn main() -> std::process::ExitCode {
    service::cli::main()
}
