//! What lands on disk (API.md A25): data dir and file modes, `export`'s output file, and what
//! master-key rotation leaves behind in the database's files.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::helpers::{command, fresh_database, spawn_with, DataDir, TestApp};

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

/// A seal context (table, column, row id).
type Ctx = (String, String, String);

/// The contexts of every sealed value the database holds now, and the blob lengths seen (a value
/// re-sealed keeps its length).
async fn live_contexts(app: &TestApp) -> (Vec<Ctx>, BTreeSet<usize>) {
    let store = crate::helpers::store(&app.data).await;
    let mut conn = store.conn().await.unwrap();
    let (mut ctxs, mut lens) = (Vec::new(), BTreeSet::new());
    for t in service::store::sealed::SEALED {
        let rows = service::store::sealed::below(&mut conn, t, i64::MAX, 100_000).await.unwrap();
        for row in rows {
            for (column, blob) in t.columns.iter().zip(&row.blobs) {
                if let Some(b) = blob {
                    ctxs.push((t.table.to_owned(), (*column).to_owned(), row.id.clone()));
                    lens.insert(b.len());
                }
            }
        }
    }
    drop(conn);
    store.close().await;
    (ctxs, lens)
}

/// How many (offset, length, context) candidates in `bytes` open under `ring`'s `version`:
/// every offset where the blob header (the version, u32 big-endian; service/src/seal.rs) occurs,
/// every length seen, every context.
fn openings(
    ring: &service::seal::KeyRing,
    version: u32,
    bytes: &[u8],
    ctxs: &[Ctx],
    lens: &BTreeSet<usize>,
) -> Vec<String> {
    let header = version.to_be_bytes();
    let mut found = Vec::new();
    for i in 0..bytes.len().saturating_sub(4) {
        if bytes[i..i + 4] != header {
            continue;
        }
        for len in lens {
            let Some(blob) = bytes.get(i..i + len) else { continue };
            for (table, column, row_id) in ctxs {
                let ctx = service::seal::SealContext { table, column, row_id };
                if ring.open(ctx, blob).is_ok() {
                    found.push(format!("{table}:{column}:{row_id} at offset {i}"));
                }
            }
        }
    }
    found
}

/// The bytes to scan, by where they come from: every SQLite file (database, WAL, shared
/// memory), or a plain `pg_dump` with each bytea value (`\x…` hex) decoded, plus — when the
/// PostgreSQL server runs on this machine and its files are readable, as in CI — the data files
/// (heap and TOAST) of every sealed table after a checkpoint: `pg_dump` shows live rows only,
/// the files also hold dead row versions.
async fn database_parts(app: &TestApp) -> Vec<(String, Vec<u8>)> {
    if let Some(url) = &*app.data.database_url {
        let out = std::process::Command::new("pg_dump").arg(url).output().unwrap();
        assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
        let mut decoded = Vec::new();
        let text = String::from_utf8_lossy(&out.stdout);
        for piece in text.split("\\x").skip(1) {
            let hex: String = piece.chars().take_while(char::is_ascii_hexdigit).collect();
            if let Ok(raw) = hex::decode(&hex[..hex.len() & !1]) {
                decoded.extend(raw);
            }
        }
        let mut parts = vec![("pg_dump".to_owned(), out.stdout), ("pg_dump bytea".into(), decoded)];
        parts.extend(postgres_table_files(app).await);
        parts
    } else {
        ["provisiond.db", "provisiond.db-wal", "provisiond.db-shm"]
            .iter()
            .map(|f| {
                let bytes = std::fs::read(app.data.path().join(f)).unwrap_or_default();
                ((*f).to_owned(), bytes)
            })
            .collect()
    }
}

/// [`openings`] over every part, each found value labelled with its part.
fn openings_in(
    ring: &service::seal::KeyRing,
    parts: &[(String, Vec<u8>)],
    ctxs: &[Ctx],
    lens: &BTreeSet<usize>,
) -> Vec<String> {
    parts
        .iter()
        .flat_map(|(name, bytes)| {
            openings(ring, 1, bytes, ctxs, lens).into_iter().map(move |o| format!("{name}: {o}"))
        })
        .collect()
}

/// The heap and TOAST files of the sealed tables, if this process can read them.
async fn postgres_table_files(app: &TestApp) -> Vec<(String, Vec<u8>)> {
    use sqlx::Connection as _;
    let url = app.data.database_url.clone().unwrap();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("CHECKPOINT").execute(&mut conn).await.unwrap();
    let dir: String = sqlx::query_scalar("SELECT current_setting('data_directory')")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let mut parts = Vec::new();
    for t in service::store::sealed::SEALED {
        let sql = format!(
            "SELECT pg_relation_filepath(c.oid) FROM pg_class c WHERE c.relname = '{0}' \
             UNION ALL SELECT pg_relation_filepath(c.reltoastrelid) FROM pg_class c \
             WHERE c.relname = '{0}' AND c.reltoastrelid <> 0",
            t.table
        );
        let files: Vec<Option<String>> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(&mut conn).await.unwrap();
        for f in files.into_iter().flatten() {
            match std::fs::read(Path::new(&dir).join(&f)) {
                Ok(bytes) => parts.push((format!("{} file {f}", t.table), bytes)),
                Err(e) => println!("PostgreSQL data files not scanned ({f}: {e})"),
            }
        }
    }
    parts
}

#[tokio::test]
async fn after_master_key_rotation_nothing_in_the_database_opens_under_the_retired_key() {
    let app = crate::helpers::spawn_app().await;
    let owner = app.owner_token();
    // Secrets of every kind, some replaced or deleted before the rotation.
    for i in 0..6 {
        assert_eq!(app.put_device(&format!("rot-{i}"), json!({})).await.status(), 201);
    }
    let r = app.post_json("/v1/devices/rot-1/keys/rotate", &owner, json!({"key": "primary"})).await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let r = app.client.delete(app.url("/v1/devices/rot-2")).header("Authorization", &owner);
    assert!(r.send().await.unwrap().status().is_success());
    let r = app.client.put(app.url("/v1/policies/line-1")).header("Authorization", &owner);
    let r = r.json(&json!({"permissions": ["RegistryRead"]})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let r = app.post_json("/v1/policies/line-1/keys/rotate", &owner, json!({"key": "swap"})).await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    app.put_group("g-sym", json!({"attestation": {"type": "symmetric_key"}})).await;
    let r = app.client.put(app.url("/v1/enrollments/e-1")).header("Authorization", &owner);
    let r = r.json(&json!({"attestation": {"type": "symmetric_key"}})).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    let retired_key = app.data.dir.path().join("retired.key");
    std::fs::copy(app.data.path().join("master.key"), &retired_key).unwrap();
    let retired = service::seal::KeyRing::load(&retired_key).unwrap();
    assert_eq!(retired.versions(), [1]);
    let (mut ctxs, lens) = live_contexts(&app).await;
    for column in ["primary_key", "secondary_key"] {
        ctxs.push(("devices".into(), column.into(), "rot-2".into()));
    }
    // The scan finds what is there: before the rotation, every live secret opens.
    let before = openings_in(&retired, &database_parts(&app).await, &ctxs, &lens);
    assert!(!before.is_empty(), "the scan finds the sealed values before rotation");
    println!("{} candidates open under the key before rotation", before.len());

    let out = command(&app.data.database_url)
        .args(["rotate-master-key", "--grace-secs", "0", "--data-dir"])
        .arg(app.data.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let now = std::fs::read_to_string(app.data.path().join("master.key")).unwrap();
    assert!(!now.contains("v1:"), "the old version is retired");

    let left = openings_in(&retired, &database_parts(&app).await, &ctxs, &lens);
    println!("{} candidates open under the retired key after rotation", left.len());
    assert!(left.is_empty(), "{} values open under the retired key: {left:?}", left.len());
    // And the server serves with the new key once it re-read the key file (every 5 s; the
    // rotation ran with no grace period).
    let mut status = 0;
    for _ in 0..60 {
        status = app.get_as("/v1/devices/rot-1", &owner).await.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(status, 200);
}
