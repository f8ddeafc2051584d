//! `provisiond rotate-master-key`: online master key rotation.
//!
//! 1. Add a new key version to the key file (old versions stay, so everything still opens).
//!    Running servers re-read the file within [`crate::app::KEY_RELOAD_SECS`] and seal new
//!    values with the new version from then on; rotation waits that long before re-sealing.
//! 2. Re-seal every row of every sealed column below the new version, in batches of one
//!    transaction each, each row updated only if still at its old version.
//! 3. When no row is left below the new version, erase the replaced ciphertexts from the
//!    database's storage ([`sealed::scrub`]: SQLite `VACUUM` and a truncated WAL, the rewriting
//!    connections having `secure_delete` on; PostgreSQL `VACUUM FULL` of the sealed tables),
//!    then retire the old versions from the key file.
//!
//! Interrupted at any point, running it again resumes: the key file still holds both versions,
//! the highest is the target, and step 2 picks up the rows not yet re-sealed.

use std::path::Path;
use std::time::Duration;

use crate::seal::{SealContext, SealError};
use crate::store::sealed::{self, SEALED};
use crate::store::{Store, StoreError};

/// Why rotation stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotateError {
    /// key file problem
    #[error(transparent)]
    Seal(#[from] SealError),
    /// storage problem
    #[error(transparent)]
    Store(#[from] StoreError),
    /// key file could not be written
    #[error("cannot write the master key file: {0}")]
    Io(#[from] std::io::Error),
    /// every row was re-sealed, but the old ciphertexts could not be erased from the database
    /// files; the old key version is kept, and a re-run erases again, then retires it
    #[error(
        "every secret was re-sealed, but the old ciphertexts could not be erased from the \
         database ({0}); the old master key version is kept: run rotate-master-key again to \
         finish"
    )]
    Scrub(#[source] StoreError),
    /// stopped on request after N batches (testing aid); run again to resume
    #[error("stopped after {0} batches as requested; run rotate-master-key again to resume")]
    Stopped(u64),
}

/// Tuning of a run.
#[derive(Debug, Clone)]
pub struct RotateOptions {
    /// rows per transaction
    pub batch_size: i64,
    /// wait after adding the key so running servers switch to it
    pub grace: Duration,
    /// stop (as if interrupted) after this many batches
    pub stop_after_batches: Option<u64>,
}

/// Summary of a completed rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// the version now in use
    pub version: u32,
    /// rows re-sealed in this run
    pub resealed: u64,
}

/// Runs (or resumes) a rotation. `progress` is told each re-sealed batch's row count.
pub async fn rotate(
    store: &Store,
    key_file: &Path,
    ring_file: &crate::pkcs11::RingFile,
    opts: &RotateOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<Rotated, RotateError> {
    let mut ring = ring_file.load(key_file)?;
    if ring.versions().len() == 1 {
        ring.add_version();
        ring_file.write(key_file, &ring)?;
        tracing::info!(version = ring.current_version(), "new master key version added");
        tokio::time::sleep(opts.grace).await;
    } else {
        tracing::info!(version = ring.current_version(), "resuming an interrupted rotation");
    }
    let target = ring.current_version();
    let target_i = i64::from(target);
    let total = {
        let mut conn = store.conn().await?;
        sealed::count_below(&mut conn, target_i).await?
    } as u64;
    let (mut done, mut batches) = (0u64, 0u64);
    progress(0, total);
    // A server that had not switched to the new key yet may seal a row with an old version
    // while a pass runs; passes repeat until none is left.
    for _pass in 0..5 {
        for t in SEALED {
            loop {
                if opts.stop_after_batches.is_some_and(|n| batches >= n) {
                    return Err(RotateError::Stopped(batches));
                }
                let mut tx = store.begin().await?;
                sealed::secure_delete(&mut tx).await?;
                let rows = sealed::below(&mut tx, t, target_i, opts.batch_size).await?;
                if rows.is_empty() {
                    break;
                }
                for row in &rows {
                    let mut blobs = Vec::with_capacity(row.blobs.len());
                    for (column, blob) in t.columns.iter().zip(&row.blobs) {
                        let ctx = SealContext { table: t.table, column, row_id: &row.id };
                        blobs.push(match blob {
                            Some(b) => Some(ring.seal(ctx, &ring.open(ctx, b)?)),
                            None => None,
                        });
                    }
                    sealed::update(&mut tx, t, &row.id, row.key_version, target_i, &blobs).await?;
                }
                tx.commit().await.map_err(StoreError::from)?;
                batches += 1;
                done += rows.len() as u64;
                progress(done, total);
            }
        }
        let mut conn = store.conn().await?;
        if sealed::count_below(&mut conn, target_i).await? == 0 {
            break;
        }
    }
    let left = {
        let mut conn = store.conn().await?;
        sealed::count_below(&mut conn, target_i).await?
    };
    if left == 0 {
        // Before the old versions leave the key file: if erasing fails, the rotation stays
        // unfinished (both versions kept) and a re-run scrubs again, then retires.
        let scrubbed = {
            let mut conn = store.conn().await?;
            sealed::scrub(&mut conn).await.map_err(RotateError::Scrub)?
        };
        for (table, why) in &scrubbed.unsupported {
            tracing::warn!(
                table,
                reason = %why,
                "this database engine has no VACUUM FULL: dead rows of this table may keep \
                 ciphertexts under the retired master key until the engine compacts them"
            );
        }
        ring.retire_below(target);
        ring_file.write(key_file, &ring)?;
        tracing::info!(version = target, "old master key versions retired");
    }
    Ok(Rotated { version: target, resealed: done })
}
