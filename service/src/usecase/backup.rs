//! Backup and restore of a deployment (API.md A30 *Backup*).
//!
//! A backup is one tar file, created new with mode 0600 (never through a symlink), holding what
//! a data dir needs to serve again: `provisiond.toml`, `master.key`, `ca-chain.pem`, the
//! root key only when asked (`--with-root-key`: it belongs offline), and on SQLite a
//! consistent online snapshot of the database (`VACUUM INTO`, taken while the server runs).
//! On PostgreSQL the database is not in the file: the caller prints the `pg_dump` /
//! `pg_restore` commands for it. A restore unpacks into an absent or empty directory only, with
//! the directory 0700 and every file 0600.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::store::{Dialect, Store, StoreError};

/// Files of a data dir a backup carries (besides the database snapshot).
const FILES: [&str; 3] = ["provisiond.toml", "master.key", "ca-chain.pem"];
/// The root key's name inside a backup.
const ROOT_KEY: &str = "root-ca.key";
/// The SQLite snapshot's name inside a backup (the data dir's database file name).
const DATABASE: &str = "provisiond.db";

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// a file could not be read or written
    #[error("{path}: {source}")]
    Io {
        /// the file
        path: PathBuf,
        /// cause
        #[source]
        source: std::io::Error,
    },
    /// the output exists already (a backup never overwrites or follows a symlink)
    #[error("{0} exists: a backup is always written to a new file")]
    Exists(PathBuf),
    /// restore target is not empty
    #[error("{0} is not empty: restore into an absent or empty directory")]
    TargetNotEmpty(PathBuf),
    /// the file is not a provisiond backup
    #[error("{0} is not a provisiond backup (no provisiond.toml and master.key)")]
    NotABackup(PathBuf),
    /// the root key was asked for but is not in the data dir
    #[error("--with-root-key: {0} does not exist (moved offline?)")]
    RootKeyMissing(PathBuf),
    /// the database snapshot failed
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a backup holds.
#[derive(Debug)]
pub struct BackupReport {
    /// files in the archive
    pub entries: Vec<String>,
    /// whether the database is in it (SQLite) or must be dumped separately (PostgreSQL)
    pub database_included: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.to_owned(), source }
}

/// Writes a backup of `config`'s deployment to `out` (new file, 0600).
pub async fn backup(
    config: &Config,
    store: &Store,
    out: &Path,
    with_root_key: bool,
) -> Result<BackupReport, BackupError> {
    // New, 0600, never through a symlink (O_EXCL and O_NOFOLLOW).
    let file = crate::fsutil::create_new_private(out).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => BackupError::Exists(out.to_owned()),
        _ => BackupError::Io { path: out.to_owned(), source: e },
    })?;
    let mut tar = tar::Builder::new(file);
    let mut entries = Vec::new();
    let mut add = |name: &str, bytes: &[u8]| -> Result<(), BackupError> {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes).map_err(io(out))?;
        entries.push(name.to_owned());
        Ok(())
    };
    let paths = [config.file_path(), config.master_key_path(), config.data_dir.join(FILES[2])];
    for (name, path) in FILES.iter().zip(&paths) {
        add(name, &std::fs::read(path).map_err(io(path))?)?;
    }
    if with_root_key {
        let path = config.root_key_path();
        if !path.exists() {
            return Err(BackupError::RootKeyMissing(path));
        }
        add(ROOT_KEY, &std::fs::read(&path).map_err(io(&path))?)?;
    }
    let database_included = store.dialect() == Dialect::Sqlite;
    if database_included {
        let dir = tempfile::tempdir().map_err(io(out))?;
        let snapshot = dir.path().join(DATABASE);
        store.snapshot_to(&snapshot).await?;
        add(DATABASE, &std::fs::read(&snapshot).map_err(io(&snapshot))?)?;
    }
    tar.into_inner().and_then(|f| f.sync_all()).map_err(io(out))?;
    Ok(BackupReport { entries, database_included })
}

/// Unpacks a backup into `data_dir` (absent or empty): directory 0700, files 0600. Only the
/// known file names are taken from the archive (no path in it reaches outside the directory).
pub fn restore(from: &Path, data_dir: &Path) -> Result<Vec<String>, BackupError> {
    if data_dir.exists() {
        let mut entries = std::fs::read_dir(data_dir).map_err(io(data_dir))?;
        if entries.next().is_some() {
            return Err(BackupError::TargetNotEmpty(data_dir.to_owned()));
        }
    }
    let mut archive = tar::Archive::new(std::fs::File::open(from).map_err(io(from))?);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in archive.entries().map_err(io(from))? {
        let mut entry = entry.map_err(io(from))?;
        let name = entry.path().map_err(io(from))?.to_string_lossy().into_owned();
        let known = FILES.contains(&name.as_str()) || name == ROOT_KEY || name == DATABASE;
        if !known {
            continue;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(io(from))?;
        files.push((name, bytes));
    }
    let has = |n: &str| files.iter().any(|(f, _)| f == n);
    if !has(FILES[0]) || !has(FILES[1]) {
        return Err(BackupError::NotABackup(from.to_owned()));
    }
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(io(data_dir))?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(data_dir))?;
    }
    let mut restored = Vec::new();
    for (name, bytes) in files {
        let path = data_dir.join(&name);
        crate::fsutil::create_private(&path, &bytes).map_err(io(&path))?;
        restored.push(name);
    }
    Ok(restored)
}
