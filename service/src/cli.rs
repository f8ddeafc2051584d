//! Command-line surface.

/// Prints usage. The subcommands arrive with the service (issue 2).
#[allow(clippy::print_stdout)]
pub fn main() {
    println!("provisiond — device provisioning and credential vault\n\nUSAGE: provisiond <init|serve|migrate|rotate-master-key|audit|import|export|sas-token> [--data-dir D]");
}
