//! Registration: a device (or a factory line on its behalf) gets its identity from an
//! enrollment. All-or-nothing: device row, certificate row, registration record and audit row
//! commit together, or nothing is stored. Idempotent: the same registration id with the same
//! CSR returns the same certificate and stores nothing new; a different CSR follows the
//! enrollment's reprovisioning policy.
//!
//! One folder, one core (STYLE.md "Registration"): [`types`] (request, result, error),
//! [`prepare`] (CPU), [`rule`] (one registration in a transaction), [`batch`] (many in one),
//! [`commit`] (the group-commit worker) and [`stream`] (the NDJSON pipeline). Every door calls
//! these; none adds a storage path.

mod batch;
mod commit;
mod prepare;
mod rule;
pub mod stream;
mod types;

pub use batch::*;
pub use commit::*;
pub use prepare::*;
pub use rule::*;
pub use types::*;

use ca::csr::{CsrPolicy, VerifiedCsr};
use ca::issue::{issue_device, DeviceProfile, RevocationUrls};
use ca::{CsrError, SasKey};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::certificates::record;
use super::groups::{Group, GroupError, Reprovisioning};
use super::{random_hex, Actor, Ctx};
use crate::audit::AuditKey;
use crate::auth::Scope;
use crate::authority::Authority;
use crate::seal::KeyRing;
use crate::seal::SealContext;
use crate::store::devices::{self as device_rows, DeviceRow};
use crate::store::enrollment::{self as rows, RegistrationRow};
use crate::store::{certificates, Dialect, Store, StoreError, Writes};
use std::sync::Arc;
