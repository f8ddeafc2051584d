//! # service — provisiond's HTTP API, storage, authentication and audit
//!
//! # Layout
//! - [`app`]: `Application::build`, the one composition root (shared by `serve` and tests);
//! - [`cli`]: one function per subcommand;
//! - [`config`]: defaults → TOML → `PROVISIOND_*` → flags;
//! - [`http`]: routes, THE route→permission table, THE error→HTTP mapping, handlers;
//! - [`usecase`]: operations over the store, each owning its transaction;
//! - [`store`]: sqlx `AnyPool` over SQLite or PostgreSQL, one SQL text per query;
//! - [`seal`]: AES-256-GCM sealing of secret columns under the master key ring;
//! - [`auth`]: principals, permissions, SAS authentication, rate limiting;
//! - [`audit`]: the HMAC-chained audit trail;
//! - [`authority`]: the loaded CA hierarchy; [`tls`]: rustls configuration;
//! - [`clock`], [`metrics`], [`state`], [`fsutil`]: plumbing.

pub mod app;
pub mod audit;
pub mod auth;
pub mod authority;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dps;
pub mod fsutil;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod mqtt;
pub mod mtls;
pub mod seal;
pub mod state;
pub mod store;
pub mod tls;
pub mod usecase;
