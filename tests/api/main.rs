//! Black-box suite: starts the real `provisiond` binary per test and talks HTTPS to it.
//! Runs on SQLite by default and on PostgreSQL with `PROVISIOND_TEST_DB=postgres`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]
#![allow(unreachable_pub)]

mod audit;
mod auth;
mod azure_sdk;
mod bundles;
mod canary;
mod cli;
mod cluster;
mod devices;
mod enrollment;
mod faults;
mod helpers;
mod mosquitto;
mod mqtt;
mod mtls;
mod ops;
mod policies;
mod revocation;
mod storage;
mod tls;
mod trust;
