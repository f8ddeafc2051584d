//! Who the admin CLI is: an owner-format connection string (a policy SAS token minted per run)
//! or the operator session that `provisiond login` keeps in a 0600 file.
//!
//! Invariants: the policy key and the session token never reach stdout, stderr or a `Debug`
//! line; the session file is created new and renamed into place (never written through a
//! symlink), mode 0600, in a directory this user owns; a session is only sent to the server it
//! was issued by.

use std::path::PathBuf;

use ca::sas::SasToken;
use ca::SasKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::AdminError;
use crate::clock::{Clock as _, SystemClock};

/// Lifetime of the policy token minted for one CLI run.
const TOKEN_TTL_SECS: i64 = 3600;

/// The expected format, named in every connection-string error.
pub(crate) const CONNECTION_STRING_FORMAT: &str =
    "HostName=<host>;SharedAccessKeyName=<policy>;SharedAccessKey=<base64 key>";

/// A parsed policy connection string.
pub(crate) struct ConnectionString {
    /// `HostName`: the SAS resource of policy tokens.
    pub(crate) host: String,
    /// `SharedAccessKeyName`: the policy.
    pub(crate) policy: String,
    key: SasKey,
}

impl std::fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host", &self.host)
            .field("policy", &self.policy)
            .field("key", &"[secret elided]")
            .finish()
    }
}

impl ConnectionString {
    /// Parses `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…` (any order, each once).
    pub(crate) fn parse(text: &str) -> Result<Self, AdminError> {
        let bad = |why: &str| {
            AdminError::Config(format!(
                "invalid connection string ({why}); expected {CONNECTION_STRING_FORMAT}"
            ))
        };
        let (mut host, mut policy, mut key) = (None, None, None);
        for part in text.trim().split(';').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| bad("a part lacks '='"))?;
            let slot = match name {
                "HostName" => &mut host,
                "SharedAccessKeyName" => &mut policy,
                "SharedAccessKey" => &mut key,
                _ => return Err(bad(&format!("unknown part {name:?}"))),
            };
            if slot.replace(value.to_owned()).is_some() {
                return Err(bad(&format!("{name} given twice")));
            }
        }
        let host = host.filter(|h| !h.is_empty()).ok_or_else(|| bad("no HostName"))?;
        let policy =
            policy.filter(|p| !p.is_empty()).ok_or_else(|| bad("no SharedAccessKeyName"))?;
        let key = Zeroizing::new(key.ok_or_else(|| bad("no SharedAccessKey"))?);
        let key = SasKey::from_base64(&key).map_err(|_| bad("SharedAccessKey is not a key"))?;
        Ok(Self { host, policy, key })
    }

    /// A policy token valid for this run (`sr` = host, `skn` = policy).
    #[tracing::instrument(skip_all, fields(policy = %self.policy))]
    pub(crate) fn token(&self) -> Zeroizing<String> {
        let expiry = SystemClock.now() + TOKEN_TTL_SECS;
        Zeroizing::new(SasToken::build(&self.host, &self.key, expiry, Some(&self.policy)))
    }
}

/// The file `provisiond login` writes.
#[derive(Serialize, Deserialize)]
pub(crate) struct Session {
    /// The server that issued the token (the only one it is sent to).
    pub(crate) url: String,
    /// The operator.
    pub(crate) username: String,
    /// The bearer token.
    pub(crate) access_token: String,
    /// When it stops working (RFC 3339, as the server said).
    pub(crate) expires_at: String,
    /// The trust anchor used at login, reused when no other is given.
    pub(crate) ca_file: Option<PathBuf>,
}

impl Drop for Session {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.access_token);
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("access_token", &"[secret elided]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// `$XDG_CONFIG_HOME/provisiond/session`, else `~/.config/provisiond/session`.
pub(crate) fn session_path() -> Result<PathBuf, AdminError> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })
        .ok_or_else(|| {
            AdminError::Config("neither XDG_CONFIG_HOME nor HOME is set: no session file".into())
        })?;
    Ok(base.join("provisiond").join("session"))
}

/// The stored session, if there is one (a symlinked or group/world-readable file is refused).
pub(crate) fn load_session() -> Result<Option<Session>, AdminError> {
    use std::os::unix::fs::MetadataExt as _;
    let path = session_path()?;
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AdminError::Config(format!("cannot read {}: {e}", path.display()))),
    };
    if !meta.file_type().is_file() || meta.mode() & 0o077 != 0 {
        return Err(AdminError::Config(format!(
            "{} is not a private regular file (mode 0600): remove it and run `provisiond login`",
            path.display()
        )));
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(&path)
            .map_err(|e| AdminError::Config(format!("cannot read {}: {e}", path.display())))?,
    );
    serde_json::from_str(&text).map(Some).map_err(|_| {
        AdminError::Config(format!(
            "{} is not a provisiond session: remove it and run `provisiond login`",
            path.display()
        ))
    })
}

/// Writes the session file: a new 0600 file renamed over the old one.
#[tracing::instrument(skip_all)]
pub(crate) fn store_session(session: &Session) -> Result<PathBuf, AdminError> {
    use std::os::unix::fs::DirBuilderExt as _;
    let path = session_path()?;
    let fail =
        |e: std::io::Error| AdminError::Config(format!("cannot write {}: {e}", path.display()));
    let dir = path.parent().ok_or_else(|| AdminError::Config("no session directory".into()))?;
    if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        return Err(fail(e));
    }
    let dir_meta = std::fs::symlink_metadata(dir).map_err(fail)?;
    if !dir_meta.file_type().is_dir() {
        return Err(AdminError::Config(format!("{} is not a directory", dir.display())));
    }
    let text = Zeroizing::new(serde_json::to_string(session).map_err(|e| fail(e.into()))?);
    let tmp = dir.join(format!(".session.{}.tmp", uuid::Uuid::new_v4().simple()));
    crate::fsutil::create_private(&tmp, text.as_bytes()).map_err(fail)?;
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })?;
    Ok(path)
}

/// Removes the session file; true when there was one.
pub(crate) fn remove_session() -> Result<bool, AdminError> {
    let path = session_path()?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(AdminError::Config(format!("cannot remove {}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_string_parses_and_its_key_never_shows_in_debug() {
        let cs = ConnectionString::parse(
            "HostName=prov.example;SharedAccessKeyName=owner;SharedAccessKey=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .unwrap();
        assert_eq!((cs.host.as_str(), cs.policy.as_str()), ("prov.example", "owner"));
        assert!(!format!("{cs:?}").contains("AAAA"));
        assert!(cs.token().starts_with("SharedAccessSignature sr=prov.example&sig="));
    }

    #[test]
    fn malformed_connection_strings_name_the_expected_format() {
        for bad in [
            "",
            "HostName=h",
            "HostName=h;SharedAccessKeyName=p",
            "HostName=h;SharedAccessKeyName=p;SharedAccessKey=not-base64!",
            "HostName=h;DeviceId=d;SharedAccessKey=AAAAAAAAAAAAAAAAAAAAAA==",
            "garbage",
        ] {
            let e = ConnectionString::parse(bad).unwrap_err();
            assert!(e.to_string().contains(CONNECTION_STRING_FORMAT), "{bad:?}: {e}");
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }
}
