//! Enabled enrollment groups, decoded once, for device attestation (API.md A25: a failed
//! self-registration costs about what a successful one does, whatever the number of groups).
//!
//! A SAS self-registration does not say which group derived its key, so every enabled
//! `symmetric_key` group must be tried; an X.509 attestation likewise tries every enabled
//! `x509_ca` group's CAs, and an AWS claim certificate every enabled `aws_claim` group's claim CAs. Reading and decoding those groups on every attempt (unsealing their
//! keys, compiling their id patterns, parsing their CA PEMs) made one failed attempt cost ~1 ms
//! per group. Here they are decoded once and kept as a snapshot:
//! - valid while no group write committed through this process since it was read
//!   ([`Store::group_generation`]), and
//! - never older than [`MAX_AGE`], so a group that another instance (PostgreSQL) or an offline
//!   command changed is served stale for at most that long (API.md A30 "at once").
//!
//! A refresh re-reads the rows (one query per attestation type) but decodes only groups whose
//! etag changed (every write gives a group a new etag), and one caller refreshes while the
//! others wait for its result.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::seal::KeyRing;
use crate::store::{Store, StoreError};
use crate::usecase::groups::{self, Attestation, Group, GroupError};

/// Oldest snapshot served.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// An enabled `x509_ca` (or `aws_claim`) group with its CA certificates parsed.
#[derive(Debug)]
pub struct X509Group {
    /// the group
    pub group: Arc<Group>,
    /// its CA certificates, DER
    pub anchors: Vec<Vec<u8>>,
}

/// The enabled groups at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// enabled `symmetric_key` groups, by id
    pub symmetric: Vec<Arc<Group>>,
    /// enabled `x509_ca` groups, by id
    pub x509: Vec<Arc<X509Group>>,
    /// enabled `aws_claim` groups with their claim CAs parsed, by id
    pub aws: Vec<Arc<X509Group>>,
    generation: u64,
    loaded_at: Option<Instant>,
}

impl Snapshot {
    fn fresh(&self, generation: u64) -> bool {
        self.generation == generation && self.loaded_at.is_some_and(|t| t.elapsed() < MAX_AGE)
    }
}

/// The cache (one per server, in `AppState`).
#[derive(Default)]
pub struct GroupCache {
    current: RwLock<Arc<Snapshot>>,
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for GroupCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupCache([keys elided])")
    }
}

/// Why the groups could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GroupCacheError {
    /// storage
    #[error(transparent)]
    Store(#[from] StoreError),
    /// a stored group did not decode
    #[error(transparent)]
    Group(#[from] GroupError),
}

impl GroupCache {
    fn read(&self) -> Arc<Snapshot> {
        match self.current.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The enabled groups, at most [`MAX_AGE`] old and newer than any group write this process
    /// committed.
    pub async fn snapshot(
        &self,
        store: &Store,
        ring: &KeyRing,
    ) -> Result<Arc<Snapshot>, GroupCacheError> {
        let snapshot = self.read();
        if snapshot.fresh(store.group_generation()) {
            return Ok(snapshot);
        }
        let _one_refresh = self.refreshing.lock().await;
        // Sampled before the read: a snapshot read while a write commits is already stale.
        let generation = store.group_generation();
        let snapshot = self.read();
        if snapshot.fresh(generation) {
            return Ok(snapshot);
        }
        let next = Arc::new(load(store, ring, &snapshot, generation).await?);
        match self.current.write() {
            Ok(mut w) => *w = next.clone(),
            Err(poisoned) => *poisoned.into_inner() = next.clone(),
        }
        Ok(next)
    }
}

/// Reads the enabled groups, decoding only those whose etag is not in `previous`.
async fn load(
    store: &Store,
    ring: &KeyRing,
    previous: &Snapshot,
    generation: u64,
) -> Result<Snapshot, GroupCacheError> {
    let (sym_rows, x509_rows, aws_rows) = {
        let mut conn = store.conn().await?;
        let sym =
            crate::store::enrollment::groups_by_attestation(&mut conn, "symmetric_key").await?;
        let x509 = crate::store::enrollment::groups_by_attestation(&mut conn, "x509_ca").await?;
        let aws = crate::store::enrollment::groups_by_attestation(&mut conn, "aws_claim").await?;
        (sym, x509, aws)
    };
    // Decoded groups by (id, etag): a group whose etag did not change is the same group.
    let known_sym: HashMap<(&str, &str), &Arc<Group>> =
        previous.symmetric.iter().map(|g| ((g.id.as_str(), g.etag.as_str()), g)).collect();
    let known_x509: HashMap<(&str, &str), &Arc<X509Group>> = previous
        .x509
        .iter()
        .chain(&previous.aws)
        .map(|x| ((x.group.id.as_str(), x.group.etag.as_str()), x))
        .collect();
    let mut next = Snapshot { generation, loaded_at: Some(Instant::now()), ..Snapshot::default() };
    for row in sym_rows {
        match known_sym.get(&(row.id.as_str(), row.etag.as_str())) {
            Some(g) => next.symmetric.push(Arc::clone(g)),
            _ => next.symmetric.push(Arc::new(groups::decode(ring, row, false)?)),
        }
    }
    for (row, aws) in
        x509_rows.into_iter().map(|r| (r, false)).chain(aws_rows.into_iter().map(|r| (r, true)))
    {
        let list = if aws { &mut next.aws } else { &mut next.x509 };
        match known_x509.get(&(row.id.as_str(), row.etag.as_str())) {
            Some(x) => list.push(Arc::clone(x)),
            _ => {
                // As before this cache: an undecodable x509 group is skipped, not fatal.
                let group = match groups::decode(ring, row, false) {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::warn!(error = %e, "certificate enrollment group skipped");
                        continue;
                    }
                };
                let anchors = match &group.attestation {
                    Attestation::X509Ca(pems) => pems
                        .iter()
                        .filter_map(|p| ca::authority::certs_from_pem(p).ok())
                        .flatten()
                        .collect(),
                    Attestation::AwsClaim(claim) => claim.anchors(),
                    _ => Vec::new(),
                };
                list.push(Arc::new(X509Group { group: Arc::new(group), anchors }));
            }
        }
    }
    Ok(next)
}
