//! Use cases: plain async functions over `&Store` (and a clock), each owning its transaction.
//! They know nothing of HTTP.

pub mod crl;
pub mod init;
pub mod rotate_master_key;
pub mod server_cert;
