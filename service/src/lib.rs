//! # service — provisiond's HTTP API, storage and authentication
//!
//! Placeholder until issue 2 lands: only the command-line surface exists.

pub mod cli;
