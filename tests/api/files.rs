//! What lands on disk (API.md A25): data dir and file modes, `export`'s output file.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::helpers::{command, fresh_database, spawn_with, DataDir};

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Every entry below `dir` with its mode.
fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push((p.clone(), mode(&p)));
        if p.is_dir() {
            out.extend(modes(&p));
        }
    }
    out
}

fn assert_private(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "data dir {}", dir.display());
    let entries = modes(dir);
    assert!(entries.len() >= 4, "config, key, chain, database: {entries:?}");
    for (p, m) in entries {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(m, want, "{} is {m:o}", p.display());
    }
}

#[tokio::test]
async fn init_into_an_absent_or_an_empty_dir_leaves_a_0700_dir_of_0600_files() {
    // Absent.
    let data = DataDir::init().await;
    assert_private(&data.path());

    // Empty, created beforehand with a looser mode.
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("empty");
    std::fs::create_dir(&d).unwrap();
    chmod(&d, 0o755);
    let db = fresh_database().await;
    let out = command(&db)
        .args(["init", "--credentials-out"])
        .arg(tmp.path().join("owner"))
        .arg("--data-dir")
        .arg(&d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_private(&d);
}

#[tokio::test]
async fn init_refuses_a_dir_that_is_not_empty_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("used");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("notes.txt"), b"mine").unwrap();
    chmod(&d, 0o755);
    let db = fresh_database().await;
    let out = command(&db).args(["init", "--data-dir"]).arg(&d).output().unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no key printed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not empty") && err.contains(&*d.to_string_lossy()), "{err}");
    let names: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["notes.txt"]);
    assert_eq!(mode(&d), 0o755);
}

#[tokio::test]
async fn serve_tightens_a_data_dir_whose_modes_were_loosened() {
    let data = DataDir::init().await;
    let d = data.path();
    for (p, _) in modes(&d) {
        chmod(&p, 0o644);
    }
    chmod(&d, 0o755);

    let app = spawn_with(data, &[]).await;
    // Some writes, so SQLite's -wal and -shm exist while it serves.
    assert_eq!(app.put_device("modes-1", json!({})).await.status(), 201);

    assert_private(&d);
    if app.data.database_url.is_none() {
        for f in ["provisiond.db", "provisiond.db-wal", "provisiond.db-shm"] {
            assert_eq!(mode(&d.join(f)), 0o600, "{f}");
        }
    }
    let logs = app.logs();
    assert!(
        logs.contains("mode tightened") && logs.contains("master.key") && logs.contains("755"),
        "the warning names what changed: {logs}"
    );
}

#[tokio::test]
async fn export_creates_its_file_new_and_refuses_an_existing_path_or_a_symlink() {
    let app = crate::helpers::spawn_app().await;
    assert_eq!(app.put_device("exp-1", json!({})).await.status(), 201);
    let tmp = app.data.dir.path();
    let export = |out: &Path| {
        command(&app.data.database_url)
            .args(["export", "--with-keys", "--out"])
            .arg(out)
            .arg("--data-dir")
            .arg(app.data.path())
            .output()
            .unwrap()
    };

    let existing = tmp.join("existing.ndjson");
    std::fs::write(&existing, b"keep me\n").unwrap();
    chmod(&existing, 0o644);
    let o = export(&existing);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&*existing.to_string_lossy()) && err.contains("exists"), "{err}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me\n", "left as it was");
    assert_eq!(mode(&existing), 0o644);

    let target = tmp.join("target.txt");
    std::fs::write(&target, b"target\n").unwrap();
    let link = tmp.join("link.ndjson");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let o = export(&link);
    assert!(!o.status.success(), "a symlink is refused");
    assert!(String::from_utf8_lossy(&o.stderr).contains(&*link.to_string_lossy()));
    assert_eq!(std::fs::read(&target).unwrap(), b"target\n", "the link's target is unchanged");
    let dangling = tmp.join("dangling.ndjson");
    std::os::unix::fs::symlink(tmp.join("created-through-link"), &dangling).unwrap();
    assert!(!export(&dangling).status.success());
    assert!(!tmp.join("created-through-link").exists(), "nothing written through a link");

    let fresh = tmp.join("fresh.ndjson");
    let o = export(&fresh);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode(&fresh), 0o600);
    assert!(std::fs::read_to_string(&fresh).unwrap().contains("exp-1"));
}
