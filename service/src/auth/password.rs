//! Operator passwords: argon2id (PHC strings), on the blocking pool, never on the async workers.
//! Unknown users are checked against a dummy hash so they cost the same time as known ones.
//!
//! Bounds (API.md A25, A30): at most one argon2 computation per core at a time (a semaphore of
//! `available_parallelism()` permits), each on a memory block that belongs to its permit and is
//! reused by the next computation (`hash_password_into_with_memory`), so hashing never holds
//! more than cores × 19 MiB however many logins arrive. Blocks unused for
//! [`IDLE_RELEASE`] are given back ([`release_idle`]), so memory returns to its level before a
//! burst. Logins are admitted ([`admit`]) only while at most [`WAITING_PER_CORE`] per core wait
//! for a permit; beyond that the caller answers 503 with `Retry-After: 1`.
//!
//! The pool is one per process, like the CPU cores it shares out (a second pool in the same
//! process would only oversubscribe them).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore as _};
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use zeroize::Zeroizing;

/// Logins that may wait for a hashing permit, per core.
pub const WAITING_PER_CORE: usize = 64;
/// A memory block unused this long is freed.
pub const IDLE_RELEASE: Duration = Duration::from_secs(20);
/// Largest argon2 memory (KiB = blocks) a stored hash may ask for: 64 MiB.
const MAX_BLOCKS: u32 = 64 * 1024;

/// A password in memory: zeroized on drop, never printed.
pub struct Password(Zeroizing<String>);

impl Password {
    /// Wraps a password.
    pub fn new(p: String) -> Self {
        Self(Zeroizing::new(p))
    }

    /// Length in characters.
    pub fn len(&self) -> usize {
        self.0.chars().count()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[secret elided]")
    }
}

/// Hashing failed (only on resource exhaustion).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed")]
pub struct HashError;

/// The process's hashing capacity.
struct Pool {
    permits: tokio::sync::Semaphore,
    cores: usize,
    admitted: AtomicUsize,
    /// blocks not in use, with when they were last used; at most `cores` exist in all
    idle: Mutex<Vec<(Vec<Block>, Instant)>>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Pool {
            permits: tokio::sync::Semaphore::new(cores),
            cores,
            admitted: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
        }
    })
}

impl Pool {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(Vec<Block>, Instant)>> {
        match self.idle.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Runs `f` on the blocking pool with a memory block, one per permit.
    async fn run<T: Send + 'static>(
        &'static self,
        f: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = self.permits.acquire().await.map_err(|_| HashError)?;
        tokio::task::spawn_blocking(move || {
            // The permit and the block live in this closure: a caller that goes away does not
            // free the permit while its computation still runs.
            let _permit = permit;
            let mut block = self.idle().pop().map(|(b, _)| b).unwrap_or_default();
            let out = f(&mut block);
            self.idle().push((block, Instant::now()));
            out
        })
        .await
        .map_err(|_| HashError)
    }
}

/// A login's place in the hashing queue; dropping it leaves the queue.
#[derive(Debug)]
pub struct Admission(&'static AtomicUsize);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A place in the queue for one login, or `None` when cores × (1 + [`WAITING_PER_CORE`]) logins
/// are already hashing or waiting (answer 503).
pub fn admit() -> Option<Admission> {
    let pool = pool();
    let max = pool.cores * (1 + WAITING_PER_CORE);
    pool.admitted
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
        .ok()
        .map(|_| Admission(&pool.admitted))
}

/// Frees memory blocks unused for [`IDLE_RELEASE`]; returns how many it freed.
pub fn release_idle() -> usize {
    let mut idle = pool().idle();
    let before = idle.len();
    idle.retain(|(_, used)| used.elapsed() < IDLE_RELEASE);
    before - idle.len()
}

/// Bytes of argon2 memory blocks held now (idle ones; in-use ones are at most cores × 19 MiB).
pub fn idle_block_bytes() -> usize {
    pool().idle().iter().map(|(b, _)| b.len() * Block::SIZE).sum()
}

/// argon2 into `out` with the caller's memory block (grown to what `params` need).
fn compute(
    alg: Algorithm,
    version: Version,
    params: Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
    block: &mut Vec<Block>,
) -> Result<(), HashError> {
    if params.m_cost() > MAX_BLOCKS {
        return Err(HashError);
    }
    let count = params.block_count();
    if block.len() < count {
        block.resize(count, Block::default());
    }
    Argon2::new(alg, version, params)
        .hash_password_into_with_memory(password, salt, out, &mut block[..count])
        .map_err(|_| HashError)
}

/// A PHC string for `password` with argon2id default parameters and a fresh salt.
fn hash_with(password: &[u8], block: &mut Vec<Block>) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    let params = Params::default();
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    compute(Algorithm::Argon2id, Version::V0x13, params.clone(), password, &salt, &mut out, block)?;
    let salt = SaltString::encode_b64(&salt).map_err(|_| HashError)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|_| HashError)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|_| HashError)?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `phc`.
fn verify_with(phc: &str, password: &[u8], block: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else { return false };
    let (Ok(alg), Ok(params), Some(salt), Some(expected)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
        parsed.salt,
        parsed.hash,
    ) else {
        return false;
    };
    let version = parsed.version.map_or(Ok(Version::V0x13), Version::try_from);
    let Ok(version) = version else { return false };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else { return false };
    let mut out = Zeroizing::new(vec![0u8; expected.len()]);
    if compute(alg, version, params, password, salt, &mut out, block).is_err() {
        return false;
    }
    // `Output` compares in constant time.
    Output::new(&out).is_ok_and(|o| o == expected)
}

fn dummy_hash(block: &mut Vec<Block>) -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_with(b"provisiond dummy password for unknown users", block).unwrap_or_default()
    })
}

/// Hashes with argon2id default parameters, waiting for a hashing permit.
pub async fn hash(password: Password) -> Result<String, HashError> {
    pool().run(move |block| hash_with(password.expose_secret().as_bytes(), block)).await?
}

/// Verifies `password` against `phc` (or the dummy hash when `phc` is None), waiting for a
/// hashing permit. Always spends one argon2 verification.
pub async fn verify(phc: Option<String>, password: Password) -> bool {
    pool()
        .run(move |block| {
            let known = phc.is_some();
            let phc = phc.unwrap_or_else(|| dummy_hash(block).to_owned());
            verify_with(&phc, password.expose_secret().as_bytes(), block) && known
        })
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_wrong_passwords_do_not() {
        let phc = hash(Password::new("correct horse".into())).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify(Some(phc.clone()), Password::new("correct horse".into())).await);
        assert!(!verify(Some(phc), Password::new("wrong".into())).await);
        assert!(!verify(None, Password::new("anything".into())).await, "unknown user");
    }

    #[test]
    fn hashes_made_by_the_argon2_crate_verify_with_reused_memory() {
        use argon2::password_hash::PasswordHasher as _;
        let salt = SaltString::generate(&mut OsRng);
        let phc = Argon2::default().hash_password(b"pw", &salt).unwrap().to_string();
        let mut block = Vec::new();
        assert!(verify_with(&phc, b"pw", &mut block));
        assert!(!verify_with(&phc, b"pW", &mut block));
        assert_eq!(block.len(), 19 * 1024, "one 19 MiB block, reused");
        assert!(!verify_with(
            "$argon2id$v=19$m=999999,t=2,p=1$c2FsdHNhbHQ$aGFzaA",
            b"pw",
            &mut block
        ));
    }

    #[tokio::test]
    async fn at_most_one_block_per_core_exists_however_many_hash_at_once() {
        let tasks: Vec<_> =
            (0..8).map(|i| tokio::spawn(verify(None, Password::new(format!("p{i}"))))).collect();
        for t in tasks {
            assert!(!t.await.unwrap());
        }
        let cores = pool().cores;
        assert!(idle_block_bytes() <= cores * 19 * 1024 * 1024, "{}", idle_block_bytes());
    }

    #[test]
    fn admission_is_bounded_and_released_on_drop() {
        let max = pool().cores * (1 + WAITING_PER_CORE);
        let held: Vec<_> = std::iter::from_fn(admit).take(max + 10).collect();
        // Other tests may hold a few places at the same time.
        assert!(held.len() <= max);
        assert!(admit().is_none());
        drop(held);
        assert!(admit().is_some());
    }
}
