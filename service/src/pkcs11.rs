//! CA keys in a PKCS#11 token (`ca_key_store = "pkcs11"`, API.md A27).
//!
//! [`Token`] owns the module: it loads it, finds the token by label, logs in with the PIN and
//! keeps a pool of sessions (one per signing thread at most; signatures run on tokio's
//! blocking pool, see [`crate::signing`]). Keys are found by label and their handles cached.
//! When the token fails (removed, module error, handle gone) the connection is dropped and the
//! next use re-initializes the module (`C_Finalize` / `C_Initialize`) and logs in again — at
//! most once every [`RETRY_SECS`] seconds; until then every signature answers
//! [`SignError::Unavailable`] (→ 503) and `/readyz` is 503.
//!
//! [`TokenSigner`] is the `ca` crate's [`Signer`] for one key label. ECDSA uses `CKM_ECDSA` on
//! a hash computed here (every token has it; `CKM_ECDSA_SHA256` is optional) and converts the
//! raw r‖s to DER; RSA uses `CKM_SHA256_RSA_PKCS` (X.509) and `CKM_SHA256_RSA_PKCS_PSS` (JWS).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ca::signer::{ecdsa_raw_to_der, SignError, SignatureScheme, Signer};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::Digest as _;

/// Least time between two attempts to re-initialize the module after a token error.
pub const RETRY_SECS: u64 = 5;

/// Idle sessions kept open (tokio's default blocking pool has 512 threads).
const MAX_IDLE_SESSIONS: usize = 512;

const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_OID: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// Why the token could not be used.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The module file cannot be loaded.
    #[error("cannot load the PKCS#11 module {module}: {reason}")]
    Module {
        /// module path
        module: String,
        /// loader error
        reason: String,
    },
    /// No slot holds a token with this label.
    #[error("no PKCS#11 token labelled `{0}` is present")]
    TokenMissing(String),
    /// The PIN was refused.
    #[error("the PKCS#11 token `{0}` refused the PIN (wrong PIN, or PIN locked)")]
    WrongPin(String),
    /// The token is reachable but has no key with this label.
    #[error("the PKCS#11 token has no key labelled `{0}`")]
    KeyMissing(String),
    /// The token cannot do what is needed.
    #[error("the PKCS#11 token does not support {0}")]
    Unsupported(String),
    /// The configuration is incomplete (module, token label or PIN missing).
    #[error("PKCS#11 configuration: {0}")]
    Config(String),
    /// Another token error (the text is the PKCS#11 return value).
    #[error("PKCS#11: {0}")]
    Token(String),
}

impl From<TokenError> for SignError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::KeyMissing(label) => SignError::KeyMissing(label),
            TokenError::Unsupported(what) => SignError::Unsupported(what),
            other => SignError::Unavailable(other.to_string()),
        }
    }
}

/// How to reach the token.
#[derive(Clone)]
pub struct TokenConfig {
    /// the module (`.so`)
    pub module: PathBuf,
    /// `CKA_LABEL` of the token
    pub token_label: String,
    /// user PIN
    pub pin: SecretString,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .finish_non_exhaustive()
    }
}

struct Conn {
    ctx: Pkcs11,
    slot: Slot,
    idle: Mutex<Vec<Session>>,
    keys: Mutex<HashMap<(String, u64), ObjectHandle>>,
}

impl Conn {
    fn open(cfg: &TokenConfig) -> Result<Self, TokenError> {
        let module = cfg.module.display().to_string();
        let ctx = Pkcs11::new(&cfg.module)
            .map_err(|e| TokenError::Module { module: module.clone(), reason: e.to_string() })?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(TokenError::Module { module, reason: e.to_string() }),
        }
        let slots = ctx.get_slots_with_token().map_err(token_err)?;
        let slot = slots
            .into_iter()
            .find(|s| ctx.get_token_info(*s).is_ok_and(|i| i.label().trim_end() == cfg.token_label))
            .ok_or_else(|| TokenError::TokenMissing(cfg.token_label.clone()))?;
        let conn =
            Conn { ctx, slot, idle: Mutex::new(Vec::new()), keys: Mutex::new(HashMap::new()) };
        let session = conn.ctx.open_rw_session(slot).map_err(token_err)?;
        let pin = AuthPin::from(cfg.pin.expose_secret().to_owned());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(
                RvError::PinIncorrect
                | RvError::PinInvalid
                | RvError::PinLocked
                | RvError::PinLenRange,
                _,
            )) => return Err(TokenError::WrongPin(cfg.token_label.clone())),
            Err(e) => return Err(token_err(e)),
        }
        conn.put(session);
        Ok(conn)
    }

    fn take(&self) -> Result<Session, TokenError> {
        let idle = lock(&self.idle).pop();
        match idle {
            Some(s) => Ok(s),
            None => self.ctx.open_rw_session(self.slot).map_err(token_err),
        }
    }

    fn put(&self, session: Session) {
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE_SESSIONS {
            idle.push(session);
        }
    }

    fn find(
        &self,
        session: &Session,
        label: &str,
        class: ObjectClass,
    ) -> Result<ObjectHandle, TokenError> {
        let key = (label.to_owned(), class_id(class));
        if let Some(h) = lock(&self.keys).get(&key) {
            return Ok(*h);
        }
        let found = session
            .find_objects(&[Attribute::Class(class), Attribute::Label(label.as_bytes().to_vec())])
            .map_err(token_err)?;
        let handle = *found.first().ok_or_else(|| TokenError::KeyMissing(label.to_owned()))?;
        lock(&self.keys).insert(key, handle);
        Ok(handle)
    }
}

fn class_id(class: ObjectClass) -> u64 {
    if class == ObjectClass::PRIVATE_KEY {
        1
    } else if class == ObjectClass::PUBLIC_KEY {
        2
    } else {
        3
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn token_err(e: CkError) -> TokenError {
    match e {
        CkError::Pkcs11(RvError::MechanismInvalid | RvError::MechanismParamInvalid, f) => {
            TokenError::Unsupported(format!("the mechanism ({f})"))
        }
        other => TokenError::Token(other.to_string()),
    }
}

/// Whether an error means the key handle is stale (look it up again) rather than the token gone.
fn stale_handle(e: &CkError) -> bool {
    matches!(e, CkError::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _))
}

/// The PKCS#11 token holding the CA keys: one per process, shared by every [`TokenSigner`].
pub struct Token {
    cfg: TokenConfig,
    conn: Mutex<Option<Arc<Conn>>>,
    last_attempt: Mutex<Option<Instant>>,
    last_error: Mutex<Option<TokenError>>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Token {
    /// Opens the token and logs in; errors are the clear start-up errors (module, token label,
    /// PIN).
    pub fn open(cfg: TokenConfig) -> Result<Arc<Self>, TokenError> {
        let conn = Conn::open(&cfg)?;
        Ok(Arc::new(Self {
            cfg,
            conn: Mutex::new(Some(Arc::new(conn))),
            // The retry interval spaces re-initializations; the first may come at once.
            last_attempt: Mutex::new(None),
            last_error: Mutex::new(None),
        }))
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.cfg.token_label
    }

    /// The live connection, re-initializing the module when it is down and the last attempt
    /// is at least [`RETRY_SECS`] old.
    fn conn(&self) -> Result<Arc<Conn>, TokenError> {
        if let Some(c) = lock(&self.conn).as_ref() {
            return Ok(c.clone());
        }
        {
            let mut last = lock(&self.last_attempt);
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(RETRY_SECS)) {
                return Err(lock(&self.last_error)
                    .clone()
                    .unwrap_or_else(|| TokenError::Token("token unavailable".into())));
            }
            *last = Some(Instant::now());
        }
        match Conn::open(&self.cfg) {
            Ok(c) => {
                let c = Arc::new(c);
                *lock(&self.conn) = Some(c.clone());
                *lock(&self.last_error) = None;
                tracing::info!(token = %self.cfg.token_label, "PKCS#11 token reachable again");
                Ok(c)
            }
            Err(e) => {
                *lock(&self.last_error) = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Forgets the connection after a token error: sessions close, the module is finalized,
    /// and the next use re-initializes it.
    fn fail(&self, failed: &Arc<Conn>, error: TokenError) {
        let mut slot = lock(&self.conn);
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, failed)) {
            tracing::warn!(token = %self.cfg.token_label, %error, "PKCS#11 token failed; will re-initialize");
            if let Some(conn) = slot.take() {
                lock(&conn.idle).clear();
                let ctx = conn.ctx.clone();
                drop(conn);
                // Ends every session of this process; in-flight signatures fail and retry.
                let _ = ctx.finalize();
            }
            *lock(&self.last_error) = Some(error);
            *lock(&self.last_attempt) = Some(Instant::now());
        }
    }

    /// Runs `op` with a session; on a token error the connection is dropped and `op` retried
    /// once on a fresh one (when the retry interval allows).
    fn with_session<T>(
        &self,
        op: impl Fn(&Conn, &Session) -> Result<T, CkError>,
    ) -> Result<T, TokenError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let conn = self.conn()?;
            let session = conn.take()?;
            match op(&conn, &session) {
                Ok(v) => {
                    conn.put(session);
                    return Ok(v);
                }
                Err(e) if stale_handle(&e) && attempt == 1 => {
                    lock(&conn.keys).clear();
                    conn.put(session);
                }
                Err(CkError::Pkcs11(
                    RvError::MechanismInvalid | RvError::MechanismParamInvalid,
                    f,
                )) => {
                    conn.put(session);
                    return Err(TokenError::Unsupported(format!("the mechanism ({f})")));
                }
                Err(e) => {
                    drop(session);
                    self.fail(&conn, token_err(e));
                    if attempt >= 2 {
                        return Err(lock(&self.last_error)
                            .clone()
                            .unwrap_or_else(|| TokenError::Token("token unavailable".into())));
                    }
                }
            }
        }
    }

    /// Checks that the token answers and (when given) still holds `label`, for `/readyz`.
    pub fn check(&self, label: Option<&str>) -> Result<(), TokenError> {
        let probe = || {
            self.with_session(|conn, session| {
                conn.ctx.get_token_info(conn.slot)?;
                session.get_session_info()?;
                let Some(label) = label else { return Ok(Ok(())) };
                lock(&conn.keys).remove(&(label.to_owned(), class_id(ObjectClass::PRIVATE_KEY)));
                Ok(conn.find(session, label, ObjectClass::PRIVATE_KEY).map(|_| ()))
            })?
        };
        self.unless_vanished(probe)
    }

    /// Runs `op`; when it finds a key missing, re-initializes the module once (within the
    /// retry interval) and runs it again. SoftHSM2, for one, keeps serving a token whose files
    /// are gone from memory, minus its objects: a key that vanishes is as likely a token that
    /// went away as a deleted key, and only a fresh `C_Initialize` tells them apart.
    fn unless_vanished<T>(&self, op: impl Fn() -> Result<T, TokenError>) -> Result<T, TokenError> {
        match op() {
            Err(TokenError::KeyMissing(label)) => match self.refresh() {
                Ok(true) => op(),
                Ok(false) => Err(TokenError::KeyMissing(label)),
                Err(e) => Err(e),
            },
            other => other,
        }
    }

    /// Drops the connection and opens a new one, unless the last attempt is too recent
    /// (then `Ok(false)`).
    fn refresh(&self) -> Result<bool, TokenError> {
        let current = lock(&self.conn).clone();
        if lock(&self.last_attempt).is_some_and(|t| t.elapsed() < Duration::from_secs(RETRY_SECS)) {
            return Ok(false);
        }
        if let Some(conn) = current {
            self.fail(&conn, TokenError::Token("re-checking the token".into()));
        }
        *lock(&self.last_attempt) = None;
        self.conn().map(|_| true)
    }

    /// A signer for the private key labelled `label`, reading its public key from the token.
    pub fn signer(self: &Arc<Self>, label: &str) -> Result<TokenSigner, TokenError> {
        let (scheme, public) = self.public_key(label)?;
        Ok(TokenSigner { token: self.clone(), label: label.to_owned(), scheme, public })
    }

    /// A signer for `label` whose public key is already known (from the CA certificate); the
    /// key is looked up when it first signs, so a token that is down does not stop start-up
    /// from loading older intermediates.
    pub fn signer_for(
        self: &Arc<Self>,
        label: &str,
        scheme: SignatureScheme,
        public: Vec<u8>,
    ) -> TokenSigner {
        TokenSigner { token: self.clone(), label: label.to_owned(), scheme, public }
    }

    /// Whether a private key with this label exists (a token error is an error).
    pub fn has_key(&self, label: &str) -> Result<bool, TokenError> {
        match self
            .with_session(|conn, s| Ok(conn.find(s, label, ObjectClass::PRIVATE_KEY).map(|_| ())))?
        {
            Ok(()) => Ok(true),
            Err(TokenError::KeyMissing(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn public_key(&self, label: &str) -> Result<(SignatureScheme, Vec<u8>), TokenError> {
        let found = self.with_session(|conn, s| {
            let private = match conn.find(s, label, ObjectClass::PRIVATE_KEY) {
                Ok(h) => h,
                Err(e) => return Ok(Err(e)),
            };
            let public = match conn.find(s, label, ObjectClass::PUBLIC_KEY) {
                Ok(h) => h,
                Err(e) => return Ok(Err(e)),
            };
            let kt = s.get_attributes(private, &[AttributeType::KeyType])?;
            let attrs = s.get_attributes(
                public,
                &[
                    AttributeType::EcParams,
                    AttributeType::EcPoint,
                    AttributeType::Modulus,
                    AttributeType::PublicExponent,
                ],
            )?;
            Ok(Ok((kt, attrs)))
        })??;
        let (kt, attrs) = found;
        let key_type = kt.iter().find_map(|a| match a {
            Attribute::KeyType(k) => Some(*k),
            _ => None,
        });
        let get = |t: AttributeType| {
            attrs.iter().find_map(|a| match (a, t) {
                (Attribute::EcParams(v), AttributeType::EcParams)
                | (Attribute::EcPoint(v), AttributeType::EcPoint)
                | (Attribute::Modulus(v), AttributeType::Modulus)
                | (Attribute::PublicExponent(v), AttributeType::PublicExponent) => Some(v.clone()),
                _ => None,
            })
        };
        match key_type {
            Some(k) if k == KeyType::EC => {
                let params = get(AttributeType::EcParams).unwrap_or_default();
                let scheme = if params == P256_OID {
                    SignatureScheme::EcdsaP256Sha256
                } else if params == P384_OID {
                    SignatureScheme::EcdsaP384Sha384
                } else {
                    return Err(TokenError::Unsupported(format!("the curve of key `{label}`")));
                };
                let point = get(AttributeType::EcPoint)
                    .ok_or_else(|| TokenError::Token(format!("key `{label}` has no EC point")))?;
                Ok((scheme, ec_point(&point, scheme)))
            }
            Some(k) if k == KeyType::RSA => {
                let (n, e) = get(AttributeType::Modulus)
                    .zip(get(AttributeType::PublicExponent))
                    .ok_or_else(|| TokenError::Token(format!("key `{label}` has no modulus")))?;
                Ok((SignatureScheme::RsaPkcs1Sha256, rsa_public_key(&n, &e)?))
            }
            _ => Err(TokenError::Unsupported(format!("the key type of `{label}`"))),
        }
    }

    /// Generates a non-extractable, sensitive EC key pair on the token under `label`.
    pub fn generate_ec(
        self: &Arc<Self>,
        label: &str,
        scheme: SignatureScheme,
    ) -> Result<TokenSigner, TokenError> {
        let params = match scheme {
            SignatureScheme::EcdsaP256Sha256 => P256_OID,
            SignatureScheme::EcdsaP384Sha384 => P384_OID,
            _ => return Err(TokenError::Unsupported("generating RSA CA keys".into())),
        };
        let id = sha2::Sha256::digest(label.as_bytes())[..16].to_vec();
        let label_attr = Attribute::Label(label.as_bytes().to_vec());
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::EcParams(params.to_vec()),
            label_attr.clone(),
            Attribute::Id(id.clone()),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            label_attr,
            Attribute::Id(id),
        ];
        self.with_session(|_, s| {
            s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private).map(|_| ())
        })?;
        self.signer(label)
    }

    /// Renames a key pair (both halves) from `from` to `to`.
    pub fn relabel(&self, from: &str, to: &str) -> Result<(), TokenError> {
        self.with_session(|conn, s| {
            for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
                let found = s.find_objects(&[
                    Attribute::Class(class),
                    Attribute::Label(from.as_bytes().to_vec()),
                ])?;
                for h in found {
                    s.update_attributes(h, &[Attribute::Label(to.as_bytes().to_vec())])?;
                }
            }
            lock(&conn.keys).clear();
            Ok(())
        })
    }

    fn sign_raw(
        &self,
        label: &str,
        mechanism: &Mechanism<'_>,
        data: &[u8],
    ) -> Result<Vec<u8>, SignError> {
        let once = || {
            self.with_session(|conn, s| {
                let key = match conn.find(s, label, ObjectClass::PRIVATE_KEY) {
                    Ok(k) => k,
                    Err(e) => return Ok(Err(e)),
                };
                s.sign(mechanism, key, data).map(Ok)
            })?
        };
        Ok(self.unless_vanished(once)?)
    }

    /// AES-GCM under the token's secret key `label` (the master-key wrap): encrypts, or
    /// decrypts when `decrypt` is set. `iv` must never repeat for one key (it is random).
    pub fn aes_gcm(
        &self,
        label: &str,
        iv: &[u8; 12],
        data: &[u8],
        decrypt: bool,
    ) -> Result<Vec<u8>, TokenError> {
        self.with_session(|conn, s| {
            let key = match conn.find(s, label, ObjectClass::SECRET_KEY) {
                Ok(k) => k,
                Err(e) => return Ok(Err(e)),
            };
            let mut iv = *iv;
            let params = cryptoki::mechanism::aead::GcmParams::new(
                &mut iv,
                b"provisiond master key ring",
                128u64.into(),
            )?;
            let mechanism = Mechanism::AesGcm(params);
            if decrypt {
                s.decrypt(&mechanism, key, data).map(Ok)
            } else {
                s.encrypt(&mechanism, key, data).map(Ok)
            }
        })?
    }

    /// Generates a non-extractable AES-256 key under `label` (master-key wrap).
    pub fn generate_aes(&self, label: &str) -> Result<(), TokenError> {
        let template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::ValueLen(32u64.into()),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        self.with_session(|_, s| s.generate_key(&Mechanism::AesKeyGen, &template).map(|_| ()))
    }
}

/// A CA key in the token, as the `ca` crate's [`Signer`].
pub struct TokenSigner {
    token: Arc<Token>,
    label: String,
    scheme: SignatureScheme,
    public: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner").field("label", &self.label).finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// This signer under another label (after [`Token::relabel`]).
    pub fn relabelled(self, label: &str) -> Self {
        Self { label: label.to_owned(), ..self }
    }
}

impl Signer for TokenSigner {
    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }

    fn public_key(&self) -> &[u8] {
        &self.public
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignError> {
        match self.scheme {
            SignatureScheme::EcdsaP256Sha256 => {
                let raw = self.token.sign_raw(
                    &self.label,
                    &Mechanism::Ecdsa,
                    &sha2::Sha256::digest(msg),
                )?;
                ecdsa_raw_to_der(&raw)
                    .ok_or_else(|| SignError::Failed("bad ECDSA signature".into()))
            }
            SignatureScheme::EcdsaP384Sha384 => {
                let raw = self.token.sign_raw(
                    &self.label,
                    &Mechanism::Ecdsa,
                    &sha2::Sha384::digest(msg),
                )?;
                ecdsa_raw_to_der(&raw)
                    .ok_or_else(|| SignError::Failed("bad ECDSA signature".into()))
            }
            _ => self.token.sign_raw(&self.label, &Mechanism::Sha256RsaPkcs, msg),
        }
    }

    fn sign_jws(&self, msg: &[u8]) -> Result<Vec<u8>, SignError> {
        match self.scheme {
            SignatureScheme::EcdsaP256Sha256 => {
                self.token.sign_raw(&self.label, &Mechanism::Ecdsa, &sha2::Sha256::digest(msg))
            }
            SignatureScheme::EcdsaP384Sha384 => {
                self.token.sign_raw(&self.label, &Mechanism::Ecdsa, &sha2::Sha384::digest(msg))
            }
            _ => {
                let params = PkcsPssParams {
                    hash_alg: MechanismType::SHA256,
                    mgf: PkcsMgfType::MGF1_SHA256,
                    s_len: 32u64.into(),
                };
                self.token.sign_raw(&self.label, &Mechanism::Sha256RsaPkcsPss(params), msg)
            }
        }
    }

    fn key_label(&self) -> Option<&str> {
        Some(&self.label)
    }
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the point on most tokens, the bare point on some.
fn ec_point(value: &[u8], scheme: SignatureScheme) -> Vec<u8> {
    let bare = 1 + 2 * scheme.ecdsa_scalar_len().unwrap_or(32);
    if value.len() == bare {
        value.to_vec()
    } else {
        value[value.len().saturating_sub(bare)..].to_vec()
    }
}

fn rsa_public_key(n: &[u8], e: &[u8]) -> Result<Vec<u8>, TokenError> {
    use der::Encode as _;
    let bad = |_| TokenError::Token("RSA public key does not encode".into());
    let mut body = Vec::new();
    der::asn1::UintRef::new(n).map_err(bad)?.encode_to_vec(&mut body).map_err(bad)?;
    der::asn1::UintRef::new(e).map_err(bad)?.encode_to_vec(&mut body).map_err(bad)?;
    der::asn1::AnyRef::new(der::Tag::Sequence, &body).map_err(bad)?.to_der().map_err(bad)
}

/// How the master key ring file is read and written: in clear, or wrapped by a token AES key
/// (`master_key_wrap = "pkcs11"`), in which case the file alone opens nothing.
#[derive(Clone)]
pub struct RingFile {
    wrap: Option<(Arc<Token>, String)>,
}

const WRAPPED_PREFIX: &str = "wrapped-pkcs11-aes-gcm:";

impl RingFile {
    /// The ring file as configured; `token` must be open when the wrap is `pkcs11`.
    pub fn new(
        config: &crate::config::Config,
        token: Option<&Arc<Token>>,
    ) -> Result<Self, TokenError> {
        if config.master_key_wrap != crate::config::MasterKeyWrap::Pkcs11 {
            return Ok(Self { wrap: None });
        }
        let token =
            token.ok_or_else(|| TokenError::Config("master_key_wrap needs a token".into()))?;
        Ok(Self { wrap: Some((token.clone(), wrap_label(config))) })
    }

    /// Creates the wrapping key in the token unless it exists (init).
    pub fn ensure_wrap_key(&self) -> Result<(), TokenError> {
        let Some((token, label)) = &self.wrap else { return Ok(()) };
        if token.with_session(|conn, s| Ok(conn.find(s, label, ObjectClass::SECRET_KEY).is_ok()))? {
            return Ok(());
        }
        token.generate_aes(label)
    }

    /// Reads the ring.
    pub fn load(&self, path: &Path) -> Result<crate::seal::KeyRing, crate::seal::SealError> {
        use crate::seal::{KeyRing, SealError};
        let Some((token, label)) = &self.wrap else { return KeyRing::load(path) };
        let shown = path.display().to_string();
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                SealError::MissingKeyFile(shown.clone())
            } else {
                SealError::Io { path: shown.clone(), reason: e.to_string() }
            }
        })?);
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(WRAPPED_PREFIX))
            .ok_or_else(|| SealError::MalformedKeyFile(format!("{shown} (not wrapped)")))?;
        let (iv, ct) =
            line.split_once(':').ok_or_else(|| SealError::MalformedKeyFile(shown.clone()))?;
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let iv: [u8; 12] = b64
            .decode(iv)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| SealError::MalformedKeyFile(shown.clone()))?;
        let ct = b64.decode(ct).map_err(|_| SealError::MalformedKeyFile(shown.clone()))?;
        let plain = zeroize::Zeroizing::new(token.aes_gcm(label, &iv, &ct, true).map_err(|e| {
            SealError::Io { path: shown.clone(), reason: format!("unwrapping: {e}") }
        })?);
        let text =
            std::str::from_utf8(&plain).map_err(|_| SealError::MalformedKeyFile(shown.clone()))?;
        KeyRing::parse_text(text).ok_or(SealError::MalformedKeyFile(shown))
    }

    /// The file text for `ring` (wrapped when configured so).
    pub fn text(
        &self,
        ring: &crate::seal::KeyRing,
    ) -> Result<zeroize::Zeroizing<String>, TokenError> {
        let plain = ring.to_file_text();
        let Some((token, label)) = &self.wrap else { return Ok(plain) };
        use base64::Engine as _;
        use rand::RngCore as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut iv = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut iv);
        let ct = token.aes_gcm(label, &iv, plain.as_bytes(), false)?;
        Ok(zeroize::Zeroizing::new(format!(
            "# provisiond master key ring, wrapped (AES-GCM) by the PKCS#11 key `{label}` of token \
             `{}`: useless without the token. Keep it backed up.\n{WRAPPED_PREFIX}{}:{}\n",
            token.label(),
            b64.encode(iv),
            b64.encode(ct)
        )))
    }

    /// Writes `ring` to `path` (mode 0600).
    pub fn write(&self, path: &Path, ring: &crate::seal::KeyRing) -> std::io::Result<()> {
        let text = self.text(ring).map_err(std::io::Error::other)?;
        crate::fsutil::write_private(path, text.as_bytes())
    }
}

/// The wrap key's label (`pkcs11_wrap_key_label`, default `provisiond-master-key-wrap`).
pub fn wrap_label(config: &crate::config::Config) -> String {
    config.pkcs11_wrap_key_label.clone().unwrap_or_else(|| "provisiond-master-key-wrap".into())
}

/// Opens the token named by the configuration when CA keys or the master key wrap use one.
pub fn open_configured(config: &crate::config::Config) -> Result<Option<Arc<Token>>, TokenError> {
    if !config.uses_pkcs11() {
        return Ok(None);
    }
    let module = config
        .pkcs11_module
        .clone()
        .ok_or_else(|| TokenError::Config("pkcs11_module is not set".into()))?;
    let token_label = config
        .pkcs11_token_label
        .clone()
        .ok_or_else(|| TokenError::Config("pkcs11_token_label is not set".into()))?;
    let pin = read_pin(config.pkcs11_pin_file.as_deref()).map_err(TokenError::Config)?;
    Token::open(TokenConfig { module, token_label, pin }).map(Some)
}

/// Reads the PIN: `PROVISIOND_PKCS11_PIN` wins over `pin_file` (trailing newline dropped).
pub fn read_pin(pin_file: Option<&Path>) -> Result<SecretString, String> {
    if let Some(v) = std::env::var("PROVISIOND_PKCS11_PIN").ok().filter(|v| !v.is_empty()) {
        return Ok(SecretString::from(v));
    }
    let path = pin_file
        .ok_or_else(|| "no PKCS#11 PIN: set PROVISIOND_PKCS11_PIN or pkcs11_pin_file".to_owned())?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the PKCS#11 PIN file {}: {e}", path.display()))?;
    Ok(SecretString::from(text.trim_end_matches(['\r', '\n']).to_owned()))
}
