//! # ca — provisiond's credential logic
//!
//! Pure functions and types for everything provisiond issues or checks:
//!
//! - [`authority`]: the root → intermediate hierarchy (create, import, chain export);
//! - [`csr`]: PKCS#10 parsing, proof-of-possession and the request profile;
//! - [`issue`]: certificate profiles (device client, service/broker server) and key generation;
//! - [`revocation`]: CRL v2 and OCSP (RFC 6960) responses;
//! - [`sas`]: Azure IoT Hub shared access signatures and group key derivation;
//! - [`secret`]: secret newtypes that zeroize on drop and never print;
//! - [`signer`]: the one seam every CA signature goes through (software key or secure hardware).
//!
//! What this crate never does: I/O, async, reading a clock (every function that depends on time
//! takes `now` as unix seconds), or talking to a database. Randomness comes from the operating
//! system's CSPRNG through `ring`/`rand`. The crypto provider is `ring`, shared with rustls and
//! rcgen in the rest of the workspace.
#![deny(missing_docs)]

pub mod authority;
pub mod csr;
pub mod est;
pub mod issue;
pub mod revocation;
pub mod sas;
pub mod secret;
pub mod signer;
mod time;

pub use authority::{AuthorityError, CaKeyAlgorithm, Issuer};
pub use csr::{CsrError, CsrPolicy, KeyType, VerifiedCsr};
pub use issue::{IssueError, IssuedCertificate};
pub use secret::{PrivateKey, SasKey};
pub use signer::{SignError, SignatureScheme, Signer, SoftwareSigner};
