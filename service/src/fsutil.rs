//! Small file helpers for secrets on disk, and the modes of the data dir.
//!
//! Invariants (API.md A25): the data dir is 0700 and every file in it 0600, also when the dir
//! existed before with looser modes ([`tighten_data_dir`], run by every local command at start);
//! files are created new, never through a symlink ([`create_new_private`]).

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Mode of the data dir (and of any directory inside it).
pub const DIR_MODE: u32 = 0o700;

/// Mode of every file in the data dir.
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` new for writing with mode 0600. Fails when anything is already there — a
/// file, or a symlink even a dangling one (`O_EXCL` refuses symlinks; `O_NOFOLLOW` says the same
/// for the last component) — so it never overwrites nor writes through a link.
pub fn create_new_private(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Writes `bytes` to a new file with mode 0600; fails if the file exists (never overwrites a
/// key by accident).
pub fn create_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = create_new_private(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Atomically replaces `path` with `bytes` (mode 0600) via a temporary file and rename.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    create_private(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// A mode [`tighten_data_dir`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tightened {
    /// the file or directory
    pub path: PathBuf,
    /// its permission bits before
    pub was: u32,
    /// its permission bits now
    pub now: u32,
}

/// Sets `dir` (and every directory below it) to 0700 and every regular file below it to 0600,
/// never following a symlink (a link's target may be shared, e.g. a master key on a tmpfs: it is
/// left alone). Returns what changed; an absent `dir` changes nothing. Stops at the first entry
/// whose mode cannot be set, naming it.
pub fn tighten_data_dir(dir: &Path) -> std::io::Result<Vec<Tightened>> {
    let mut changed = Vec::new();
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(changed),
        Err(e) => return Err(named(dir, e)),
        Ok(_) => {}
    }
    // The directory given may itself be a symlink (a data dir on another volume): its target is
    // the data dir, so it is followed once, here, and never below.
    tighten_dir(dir, &mut changed)?;
    Ok(changed)
}

fn tighten_dir(dir: &Path, changed: &mut Vec<Tightened>) -> std::io::Result<()> {
    set_mode(dir, &std::fs::metadata(dir).map_err(|e| named(dir, e))?, DIR_MODE, changed)?;
    for entry in std::fs::read_dir(dir).map_err(|e| named(dir, e))? {
        let path = entry.map_err(|e| named(dir, e))?.path();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Removed meanwhile (a SQLite -wal or -shm a closing connection deleted).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(named(&path, e)),
        };
        if meta.file_type().is_dir() {
            tighten_dir(&path, changed)?;
        } else if meta.file_type().is_file() {
            set_mode(&path, &meta, FILE_MODE, changed)?;
        }
    }
    Ok(())
}

fn set_mode(
    path: &Path,
    meta: &std::fs::Metadata,
    mode: u32,
    changed: &mut Vec<Tightened>,
) -> std::io::Result<()> {
    let was = meta.permissions().mode() & 0o7777;
    if was == mode {
        return Ok(());
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(named(path, e)),
    }
    changed.push(Tightened { path: path.to_path_buf(), was, now: mode });
    Ok(())
}

fn named(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn tightening_makes_the_dir_0700_and_its_files_0600_without_following_links() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        let outside = tmp.path().join("shared.key");
        std::fs::write(&outside, b"x").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&outside, d.join("link.key")).unwrap();
        for (p, m) in [(d.join("a.db"), 0o644), (d.join("sub/b"), 0o666)] {
            std::fs::write(&p, b"x").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
        }
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();

        let changed = tighten_data_dir(&d).unwrap();

        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join("sub")), 0o700);
        assert_eq!(mode(&d.join("a.db")), 0o600);
        assert_eq!(mode(&d.join("sub/b")), 0o600);
        assert_eq!(mode(&outside), 0o644, "a link's target is left alone");
        assert!(changed.contains(&Tightened { path: d.join("a.db"), was: 0o644, now: 0o600 }));
        assert!(changed.contains(&Tightened { path: d.clone(), was: 0o755, now: 0o700 }));
        assert!(tighten_data_dir(&d).unwrap().is_empty(), "nothing left to change");
        assert!(tighten_data_dir(&tmp.path().join("absent")).unwrap().is_empty());
    }

    #[test]
    fn creating_new_refuses_an_existing_file_and_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        let err = create_new_private(&target).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create_new_private(&link).is_err());
        let dangling = tmp.path().join("dangling");
        std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).unwrap();
        assert!(create_new_private(&dangling).is_err());
        assert!(!tmp.path().join("nowhere").exists(), "nothing created through the link");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        create_new_private(&tmp.path().join("fresh")).unwrap();
        assert_eq!(mode(&tmp.path().join("fresh")), 0o600);
    }
}
