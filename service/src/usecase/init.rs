//! `provisiond init`: config, master key, database, CA, default policies, audit and JWT keys.
//!
//! Invariants: a second init (same data dir, or an already initialized database) fails and
//! changes nothing; the root key goes to a 0600 file, never into the database (with
//! `ca_key_store = "pkcs11"` both CA keys are generated in, or adopted from, the token and no CA
//! key is written anywhere); every other secret is sealed; the owner key leaves this function
//! exactly once, to the caller.

use std::path::PathBuf;
use std::sync::Arc;

use ca::authority::{
    create_intermediate, create_intermediate_with, create_root, create_root_with, CaKeyAlgorithm,
    Issuer,
};
use ca::SasKey;
use rand::RngCore as _;
use zeroize::Zeroizing;

use crate::audit::{self, AuditKey, Entry};
use crate::auth::{Permission, PermissionSet};
use crate::clock::Clock;
use crate::config::Config;
use crate::fsutil;
use crate::seal::{KeyRing, SealContext};
use crate::store::issuers::IssuerRow;
use crate::store::policies::PolicyRow;
use crate::store::{meta, Store, StoreError};

const YEAR: i64 = 365 * 86_400;

/// Why init failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The data dir or the database is already initialized.
    #[error("{0} is already initialized; nothing was changed")]
    AlreadyInitialized(String),
    /// The data dir exists and holds files: init needs an absent or empty directory.
    #[error(
        "{0} is not empty: `provisiond init` needs an absent or empty directory; nothing was \
         changed"
    )]
    NotEmpty(String),
    /// Storage failed.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// file
        path: PathBuf,
        /// cause
        #[source]
        source: std::io::Error,
    },
    /// CA creation failed.
    #[error("CA: {0}")]
    Authority(#[from] ca::AuthorityError),
    /// Key generation failed.
    #[error("key generation: {0}")]
    Issue(#[from] ca::IssueError),
    /// The PKCS#11 token refused (module, token, PIN, key label).
    #[error("{0}")]
    Token(#[from] crate::pkcs11::TokenError),
    /// Creating a CA key in the token failed.
    #[error("CA key in the token: {0}")]
    TokenCa(#[from] crate::usecase::intermediate::CaAdminError),
}

/// Existing token keys to adopt (`init --root-key-label L --intermediate-key-label L`).
#[derive(Debug, Default, Clone)]
pub struct AdoptLabels {
    /// label of the root CA key pair
    pub root: Option<String>,
    /// label of the intermediate CA key pair
    pub intermediate: Option<String>,
}

/// An externally signed intermediate (offline root): the root key never touches provisiond.
pub struct ExternalCa {
    /// the root certificate (PEM)
    pub root_cert_pem: String,
    /// the intermediate certificate (PEM), signed by the root
    pub intermediate_cert_pem: String,
    /// the intermediate's PKCS#8 key (PEM)
    pub intermediate_key_pem: Zeroizing<String>,
}

/// What init hands back (once).
pub struct Initialized {
    /// `HostName=…;SharedAccessKeyName=owner;SharedAccessKey=…`
    pub owner_connection_string: Zeroizing<String>,
    /// the config as written
    pub config: Config,
}

/// The default policies of DESIGN.md.
pub fn default_policies() -> Vec<(&'static str, PermissionSet)> {
    vec![
        ("owner", PermissionSet::all()),
        ("registryRead", [Permission::RegistryRead].into_iter().collect()),
        ("registryReadWrite", [Permission::RegistryReadWrite].into_iter().collect()),
        ("service", [Permission::ServiceConnect].into_iter().collect()),
        ("device", [Permission::DeviceConnect].into_iter().collect()),
    ]
}

/// A fresh ID scope: `0ne` + 8 upper-case hex digits.
pub fn new_id_scope() -> String {
    let mut b = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("0ne{}", hex::encode_upper(b))
}

/// Initializes `config.data_dir` and the database.
pub async fn initialize(
    config: Config,
    clock: &dyn Clock,
    external: Option<ExternalCa>,
    adopt: AdoptLabels,
) -> Result<Initialized, InitError> {
    let dir = config.data_dir.clone();
    let shown = dir.display().to_string();
    if config.file_path().exists() || config.master_key_path().exists() {
        return Err(InitError::AlreadyInitialized(shown));
    }
    if config.ca_key_store == crate::config::CaKeyStore::File
        && (adopt.root.is_some() || adopt.intermediate.is_some())
    {
        return Err(InitError::Token(crate::pkcs11::TokenError::Config(
            "--root-key-label / --intermediate-key-label need ca_key_store = \"pkcs11\"".into(),
        )));
    }
    // The token first: a wrong PIN or label fails before anything is written.
    let token = crate::pkcs11::open_configured(&config)?;
    let ca_token =
        token.clone().filter(|_| config.ca_key_store == crate::config::CaKeyStore::Pkcs11);
    let ring_file = crate::pkcs11::RingFile::new(&config, token.as_ref())?;
    ring_file.ensure_wrap_key()?;
    let created_dir = match std::fs::read_dir(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(source) => return Err(InitError::Io { path: dir, source }),
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(InitError::NotEmpty(shown));
            }
            false
        }
    };
    create_dir(&dir)?;
    let mut written = Vec::new();
    let result = match Store::connect(&config.database(), 2).await {
        Ok(store) => {
            let r = populate(
                &store,
                config,
                clock,
                external,
                &adopt,
                ca_token,
                &ring_file,
                &mut written,
            )
            .await;
            store.close().await;
            r
        }
        Err(e) => Err(e.into()),
    };
    if result.is_err() {
        // The dir was absent or empty: whatever is in it now, this call wrote.
        if created_dir {
            let _ = std::fs::remove_dir_all(&dir);
        } else if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        for f in written {
            let _ = std::fs::remove_file(f);
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn populate(
    store: &Store,
    mut config: Config,
    clock: &dyn Clock,
    external: Option<ExternalCa>,
    adopt: &AdoptLabels,
    ca_token: Option<Arc<crate::pkcs11::Token>>,
    ring_file: &crate::pkcs11::RingFile,
    written: &mut Vec<PathBuf>,
) -> Result<Initialized, InitError> {
    store.migrate().await?;
    {
        let mut conn = store.conn().await?;
        if meta::get(&mut conn, "initialized").await?.is_some() {
            return Err(InitError::AlreadyInitialized("the database".into()));
        }
    }
    if config.id_scope.is_empty() {
        config.id_scope = new_id_scope();
    }
    let now = clock.now();
    let ring = KeyRing::generate();
    // Either a fresh hierarchy (root key to a 0600 file) or an imported intermediate whose root
    // stays offline.
    let (root, root_der, root_info, inter) = match (&external, &ca_token) {
        (None, Some(token)) => {
            let (root, inter) = token_hierarchy(token, adopt, &config.id_scope, now)?;
            let (der, info) = ca::authority::ca_cert_info(&root.cert_pem())?;
            (Some(root), der, info, inter)
        }
        (None, None) => {
            let root = create_root(
                &format!("provisiond Root CA {}", config.id_scope),
                CaKeyAlgorithm::P256,
                now,
                20 * YEAR,
            )?;
            let inter = create_intermediate(
                &root,
                &format!("provisiond Intermediate CA {}", config.id_scope),
                CaKeyAlgorithm::P256,
                now,
                5 * YEAR,
            )?;
            let (der, info) = ca::authority::ca_cert_info(&root.cert_pem())?;
            (Some(root), der, info, inter)
        }
        (Some(ext), _) => {
            let (der, info) = ca::authority::ca_cert_info(&ext.root_cert_pem)?;
            if !info.self_signed {
                return Err(InitError::Authority(ca::AuthorityError::NotSignedByRoot));
            }
            let inter = ca::authority::import_intermediate(
                &ext.intermediate_cert_pem,
                &ext.intermediate_key_pem,
                &ext.root_cert_pem,
            )?;
            (None, der, info, inter)
        }
    };
    let owner_key = SasKey::generate();

    let mut tx = store.begin().await?;
    match meta::insert(&mut tx, "initialized", &now.to_string()).await {
        Err(StoreError::Conflict { .. }) => {
            return Err(InitError::AlreadyInitialized("the database".into()))
        }
        other => other?,
    }
    meta::insert(&mut tx, "id_scope", &config.id_scope).await?;
    let root_label = root.as_ref().and_then(|r| r.signer().key_label().map(str::to_owned));
    store_issuers(&mut tx, &ring, (&root_der, &root_info, root_label), &inter, now).await?;
    for (name, permissions) in default_policies() {
        let primary = if name == "owner" { owner_key.clone_secret() } else { SasKey::generate() };
        insert_policy(&mut tx, &ring, name, &permissions, &primary, &SasKey::generate(), now)
            .await?;
    }
    let mut audit_bytes = Zeroizing::new(vec![0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut audit_bytes);
    insert_secret(&mut tx, &ring, "audit_key", &audit_bytes, now).await?;
    let (jwt_key, _) = ca::issue::generate_key(ca::KeyType::P256)?;
    insert_secret(&mut tx, &ring, "jwt_signing_key", jwt_key.expose_secret(), now).await?;
    let key = AuditKey::new(audit_bytes);
    audit::append(
        &mut tx,
        store.dialect(),
        &key,
        &Entry::success("system", "system.init", &config.id_scope, None),
        now,
    )
    .await?;

    // Files last-but-one: if any write fails the transaction rolls back and the caller removes
    // what was written, so a retry starts clean.
    write_files(&config, ring_file, &ring, root.as_ref(), &root_der, &inter, written)?;
    tx.commit().await.map_err(StoreError::from)?;
    let owner = owner_key.to_base64();
    let owner_connection_string = Zeroizing::new(format!(
        "HostName={};SharedAccessKeyName=owner;SharedAccessKey={}",
        config.host_name, &*owner
    ));
    Ok(Initialized { owner_connection_string, config })
}

/// Root and intermediate with keys in the token: adopted by label, or generated there
/// (non-extractable, sensitive) and named `provisiond-{root|intermediate}-{issuer_id}`.
fn token_hierarchy(
    token: &Arc<crate::pkcs11::Token>,
    adopt: &AdoptLabels,
    id_scope: &str,
    now: i64,
) -> Result<(Issuer, Issuer), InitError> {
    use crate::usecase::intermediate::create_in_token;
    let root_name = format!("provisiond Root CA {id_scope}");
    let inter_name = format!("provisiond Intermediate CA {id_scope}");
    let root = match &adopt.root {
        Some(label) => {
            create_root_with(&root_name, Arc::new(token.signer(label)?), now, 20 * YEAR)?
        }
        None => create_in_token(token, "root", CaKeyAlgorithm::P256, |s| {
            create_root_with(&root_name, s, now, 20 * YEAR)
        })?,
    };
    let inter = match &adopt.intermediate {
        Some(label) => create_intermediate_with(
            &root,
            &inter_name,
            Arc::new(token.signer(label)?),
            now,
            5 * YEAR,
        )?,
        None => create_in_token(token, "intermediate", CaKeyAlgorithm::P256, |s| {
            create_intermediate_with(&root, &inter_name, s, now, 5 * YEAR)
        })?,
    };
    Ok((root, inter))
}

fn create_dir(dir: &std::path::Path) -> Result<(), InitError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt as _;
            // An existing empty dir keeps its mode otherwise.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(fsutil::DIR_MODE))
        })
        .map_err(|source| InitError::Io { path: dir.to_path_buf(), source })
}

fn write_files(
    config: &Config,
    ring_file: &crate::pkcs11::RingFile,
    ring: &KeyRing,
    root: Option<&Issuer>,
    root_der: &[u8],
    inter: &Issuer,
    written: &mut Vec<PathBuf>,
) -> Result<(), InitError> {
    // Every file new and 0600 (API.md A25), the public chain included.
    let mut create = |path: PathBuf, bytes: &[u8]| {
        fsutil::create_private(&path, bytes)
            .map(|()| written.push(path.clone()))
            .map_err(|source| InitError::Io { path, source })
    };
    create(config.master_key_path(), ring_file.text(ring)?.as_bytes())?;
    // A root key in a token has no file.
    if let Some(key) = root.and_then(Issuer::private_key) {
        create(config.root_key_path(), key.to_pkcs8_pem().as_bytes())?;
    }
    create(
        config.data_dir.join("ca-chain.pem"),
        ca::authority::chain_pem([inter.cert_der(), root_der]).as_bytes(),
    )?;
    config.write_file().map_err(|source| InitError::Io { path: config.file_path(), source })
}

async fn store_issuers(
    tx: &mut crate::store::Conn,
    ring: &KeyRing,
    (root_der, root, root_label): (&[u8], &ca::authority::CaCertInfo, Option<String>),
    inter: &Issuer,
    now: i64,
) -> Result<(), StoreError> {
    crate::store::issuers::insert(
        tx,
        &IssuerRow {
            id: root.id.clone(),
            cert_der: root_der.to_vec(),
            is_root: 1,
            active: 0,
            key_version: None,
            private_key: None,
            key_label: root_label,
            not_after: root.not_after,
            created_at: now,
        },
    )
    .await?;
    let id = inter.id();
    let (key_version, private_key, key_label) = crate::authority::key_columns(inter, ring);
    crate::store::issuers::insert(
        tx,
        &IssuerRow {
            id: id.clone(),
            cert_der: inter.cert_der().to_vec(),
            is_root: 0,
            active: 1,
            key_version,
            private_key,
            key_label,
            not_after: inter.not_after(),
            created_at: now,
        },
    )
    .await
}

/// Inserts a policy with sealed keys.
pub async fn insert_policy(
    tx: &mut crate::store::Conn,
    ring: &KeyRing,
    name: &str,
    permissions: &PermissionSet,
    primary: &SasKey,
    secondary: &SasKey,
    now: i64,
) -> Result<(), StoreError> {
    let ctx = |column| SealContext { table: "policies", column, row_id: name };
    let row = PolicyRow {
        name: name.to_owned(),
        permissions: serde_json::to_string(&permissions.names()).unwrap_or_else(|_| "[]".into()),
        scope: None,
        key_version: i64::from(ring.current_version()),
        primary_key: ring.seal(ctx("primary_key"), primary.expose_secret()),
        secondary_key: ring.seal(ctx("secondary_key"), secondary.expose_secret()),
        created_at: now,
        updated_at: now,
    };
    crate::store::policies::insert(tx, &row).await
}

async fn insert_secret(
    tx: &mut crate::store::Conn,
    ring: &KeyRing,
    name: &str,
    plaintext: &[u8],
    now: i64,
) -> Result<(), StoreError> {
    let sealed =
        ring.seal(SealContext { table: "secrets", column: "value", row_id: name }, plaintext);
    meta::insert_secret(tx, name, ring.current_version(), &sealed, now).await
}
