//! Black-box suite: starts the real `provisiond` binary per test and talks HTTPS to it.
//! Runs on SQLite by default and on PostgreSQL with `PROVISIOND_TEST_DB=postgres`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]
#![allow(unreachable_pub)]

mod abuse;
mod admin_cli;
mod audit;
mod auth;
mod aws;
mod azure_sdk;
mod bundles;
mod canary;
mod cli;
mod cluster;
mod console;
mod devices;
mod enrollment;
mod faults;
mod files;
mod helpers;
mod lists;
mod mosquitto;
mod mqtt;
mod mtls;
mod ops;
mod pkcs11;
mod policies;
mod revocation;
mod storage;
mod tls;
mod trust;
