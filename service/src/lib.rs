//! # service — provisiond's HTTP API, storage, authentication and audit
//!
//! # Layout
//! - [`admin`]: the admin CLI, a pure HTTPS client of the public `/v1` API;
//! - [`app`]: `Application::build`, the one composition root (shared by `serve` and tests);
//! - [`cli`]: one function per subcommand;
//! - [`config`]: defaults → TOML → `PROVISIOND_*` → flags;
//! - [`http`]: routes, THE route→permission table, THE error→HTTP mapping, handlers;
//! - [`usecase`]: operations over the store, each owning its transaction;
//! - [`store`]: sqlx `AnyPool` over SQLite or PostgreSQL, one SQL text per query;
//! - [`pkcs11`]: CA keys (and the master key wrap) in a PKCS#11 token;
//! - [`seal`]: AES-256-GCM sealing of secret columns under the master key ring;
//! - [`auth`]: principals, permissions, SAS authentication, rate limiting;
//! - [`audit`]: the HMAC-chained audit trail;
//! - [`authority`]: the loaded CA hierarchy; [`signing`]: CA signatures off the async workers;
//! - [`tls`]: rustls configuration;
//! - [`clock`], [`metrics`], [`state`], [`fsutil`], [`spool`]: plumbing.

pub mod admin;
pub mod app;
pub mod audit;
pub mod auth;
pub mod authority;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dps;
pub mod errors;
pub mod fsutil;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod mqtt;
pub mod mtls;
pub mod pkcs11;
pub mod repr;
pub mod seal;
pub mod signing;
pub mod spool;
pub mod state;
pub mod store;
pub mod tls;
pub mod usecase;
