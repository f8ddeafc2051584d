//! Enrollment groups and individual enrollments: configuration of who may register and what
//! they receive. Group keys are sealed; for `symmetric_key` attestation they are the attestation
//! secret, and whenever the credential includes `sas` device keys are derived from them.

use std::collections::BTreeSet;

use ca::{KeyType, SasKey};
use serde_json::{Map, Value};

use super::{random_hex, Ctx};
use crate::auth::jwt::{Claims, JwtKeys, ENROLLMENT_AUDIENCE};
use crate::seal::{KeyRing, SealContext, SealError};
use crate::store::enrollment::{self as rows, GroupRow};
use crate::store::{Store, StoreError};

/// Longest accepted registration id pattern.
pub const MAX_PATTERN_LEN: usize = 512;

/// Why a group operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// invalid input
    #[error("{0}")]
    Invalid(String),
    /// unknown group / enrollment
    #[error("not found")]
    NotFound,
    /// the registration id is a device another owner holds
    #[error("{0}")]
    Conflict(String),
    /// storage
    #[error(transparent)]
    Store(#[from] StoreError),
    /// sealed key did not open
    #[error(transparent)]
    Seal(#[from] SealError),
    /// token signing
    #[error("token signing failed")]
    Sign,
}

/// How devices prove who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attestation {
    /// AWS IoT fleet provisioning: a claim certificate chaining to one of the group's claim CAs
    /// (groups only; MQTT only)
    AwsClaim(AwsClaim),
    /// a key derived from (group) or equal to (individual) the enrollment's symmetric key
    SymmetricKey,
    /// a one-time enrollment JWT
    Token,
    /// a manufacturer certificate chaining to one of these CAs (PEM)
    X509Ca(Vec<String>),
}

impl Attestation {
    /// Wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Attestation::AwsClaim(_) => "aws_claim",
            Attestation::SymmetricKey => "symmetric_key",
            Attestation::Token => "token",
            Attestation::X509Ca(_) => "x509_ca",
        }
    }
}

/// An `aws_claim` group's fleet provisioning template (API.md A26): its claim CAs, the template
/// name devices publish under, and which RegisterThing parameters become the registration id
/// and tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsClaim {
    /// claim CA certificates (PEM, one certificate each)
    pub ca_certificates: Vec<String>,
    /// `$aws/provisioning-templates/{template_name}/provision/…`
    pub template_name: String,
    /// parameter mapping
    pub parameters: AwsParameters,
}

/// Which RegisterThing `parameters` a registration takes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsParameters {
    /// the parameter whose value is the registration id (= thingName)
    pub registration_id: String,
    /// parameters copied into the device's tags (name → value), when present
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The stored form of an [`AwsClaim`] besides its CAs (`enrollment_groups.aws_claim`).
#[derive(serde::Serialize, serde::Deserialize)]
struct AwsTemplate {
    template_name: String,
    parameters: AwsParameters,
}

/// Longest template name (AWS's limit), and the most tag parameters a template maps.
pub const MAX_TEMPLATE_NAME: usize = 36;
/// The most tag parameters a template maps.
pub const MAX_TAG_PARAMETERS: usize = 64;

impl AwsClaim {
    /// Checks the template as a PUT gives it: at least one PEM CA certificate (one certificate
    /// per entry), a template name that is a safe MQTT topic level (AWS's pattern
    /// `[0-9A-Za-z_-]{1,36}`), parameter names of 1–128 characters from `[A-Za-z0-9_.:-]`, tag
    /// parameters distinct and at most [`MAX_TAG_PARAMETERS`]. Errors name the member.
    pub fn validate(&self) -> Result<(), String> {
        if self.ca_certificates.is_empty() {
            return Err(
                "attestation.aws_claim.ca_certificates must list at least one CA certificate"
                    .into(),
            );
        }
        for (i, pem) in self.ca_certificates.iter().enumerate() {
            let ders = ca::authority::certs_from_pem(pem).unwrap_or_default();
            let ok = ders.len() == 1
                && x509_parser::parse_x509_certificate(&ders[0]).is_ok_and(|(_, c)| c.is_ca());
            if !ok {
                return Err(format!(
                    "attestation.aws_claim.ca_certificates[{i}] is not a PEM CA certificate"
                ));
            }
        }
        let t = &self.template_name;
        if t.is_empty()
            || t.len() > MAX_TEMPLATE_NAME
            || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "attestation.aws_claim.template_name must be 1–{MAX_TEMPLATE_NAME} characters \
                 of A–Z, a–z, 0–9, `_` and `-`"
            ));
        }
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.len() <= 128
                && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
        };
        if !name_ok(&self.parameters.registration_id) {
            return Err("attestation.aws_claim.parameters.registration_id must be a parameter \
                 name of 1–128 characters of A–Z, a–z, 0–9, `_`, `.`, `:` and `-`"
                .into());
        }
        let tags = &self.parameters.tags;
        if tags.len() > MAX_TAG_PARAMETERS {
            return Err(format!(
                "attestation.aws_claim.parameters.tags lists more than {MAX_TAG_PARAMETERS} names"
            ));
        }
        for (i, t) in tags.iter().enumerate() {
            if !name_ok(t) {
                return Err(format!(
                    "attestation.aws_claim.parameters.tags[{i}] is not a parameter name"
                ));
            }
            if tags[..i].contains(t) {
                return Err(format!("attestation.aws_claim.parameters.tags[{i}] is repeated"));
            }
        }
        Ok(())
    }

    /// The claim CAs, DER (entries that do not parse are left out).
    pub fn anchors(&self) -> Vec<Vec<u8>> {
        self.ca_certificates
            .iter()
            .filter_map(|p| ca::authority::certs_from_pem(p).ok())
            .flatten()
            .collect()
    }
}

/// What a registration receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// a certificate from the CSR
    X509,
    /// derived SAS keys
    Sas,
    /// both
    Both,
}

impl Credential {
    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "x509" => Some(Credential::X509),
            "sas" => Some(Credential::Sas),
            "both" => Some(Credential::Both),
            _ => None,
        }
    }

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::X509 => "x509",
            Credential::Sas => "sas",
            Credential::Both => "both",
        }
    }

    /// Issues a certificate?
    pub fn x509(self) -> bool {
        matches!(self, Credential::X509 | Credential::Both)
    }

    /// Issues SAS keys?
    pub fn sas(self) -> bool {
        matches!(self, Credential::Sas | Credential::Both)
    }
}

/// Reprovisioning policy for a registration id that registered before with another CSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reprovisioning {
    /// issue a new certificate, revoke the previous one, reset tags to the group's
    Reissue,
    /// issue a new certificate, keep the device as it is (previous certificate stays valid)
    Keep,
    /// refuse (409)
    Deny,
}

impl Reprovisioning {
    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reissue" => Some(Reprovisioning::Reissue),
            "keep" => Some(Reprovisioning::Keep),
            "deny" => Some(Reprovisioning::Deny),
            _ => None,
        }
    }

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reprovisioning::Reissue => "reissue",
            Reprovisioning::Keep => "keep",
            Reprovisioning::Deny => "deny",
        }
    }
}

/// An enrollment group or individual enrollment, keys unsealed.
#[derive(Debug)]
pub struct Group {
    /// group id, or registration id for an individual enrollment
    pub id: String,
    /// individual enrollment?
    pub individual: bool,
    /// attestation
    pub attestation: Attestation,
    /// credential issued
    pub credential: Credential,
    /// provisioning enabled?
    pub enabled: bool,
    /// certificate lifetime
    pub validity_days: i64,
    /// accepted device key types
    pub allowed_keys: BTreeSet<KeyType>,
    /// registration id pattern (anchored, compiled once)
    pub pattern: Option<RegistrationPattern>,
    /// tags every device starts with
    pub initial_tags: Map<String, Value>,
    /// reprovisioning policy
    pub reprovisioning: Reprovisioning,
    /// primary symmetric key
    pub primary: SasKey,
    /// secondary symmetric key
    pub secondary: SasKey,
    /// etag
    pub etag: String,
    /// created
    pub created_at: i64,
    /// updated
    pub updated_at: i64,
}

impl Group {
    /// Checks a registration id against the pattern.
    pub fn admits(&self, registration_id: &str) -> Result<(), GroupError> {
        if let Some(p) = &self.pattern {
            if !p.re.is_match(registration_id) {
                return Err(GroupError::Invalid(format!(
                    "registration id does not match the group's registration_id_pattern `{}`",
                    p.source
                )));
            }
        }
        Ok(())
    }

    /// The device keys a registration receives: derived from the group keys, or the individual
    /// enrollment's own keys.
    pub fn device_keys(&self, registration_id: &str) -> (SasKey, SasKey) {
        if self.individual {
            (self.primary.clone_secret(), self.secondary.clone_secret())
        } else {
            (
                ca::sas::derive_device_key(&self.primary, registration_id),
                ca::sas::derive_device_key(&self.secondary, registration_id),
            )
        }
    }

    fn table(&self) -> &'static str {
        if self.individual {
            "enrollments"
        } else {
            "enrollment_groups"
        }
    }
}

/// A registration id pattern: its text and the anchored regex compiled from it.
#[derive(Debug, Clone)]
pub struct RegistrationPattern {
    source: String,
    re: regex::Regex,
}

impl RegistrationPattern {
    /// Compiles an anchored pattern with bounded size.
    pub fn parse(pattern: &str) -> Result<Self, GroupError> {
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(GroupError::Invalid(format!(
                "registration_id_pattern is longer than {MAX_PATTERN_LEN}"
            )));
        }
        let re = regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(1 << 20)
            .build()
            .map_err(|e| {
                GroupError::Invalid(format!("registration_id_pattern is not a valid regex: {e}"))
            })?;
        Ok(Self { source: pattern.to_owned(), re })
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// Decodes a stored row.
pub fn decode(ring: &KeyRing, row: GroupRow, individual: bool) -> Result<Group, GroupError> {
    let table = if individual { "enrollments" } else { "enrollment_groups" };
    let ctx = |column| SealContext { table, column, row_id: &row.id };
    let primary = SasKey::from_bytes(ring.open(ctx("primary_key"), &row.primary_key)?.to_vec());
    let secondary =
        SasKey::from_bytes(ring.open(ctx("secondary_key"), &row.secondary_key)?.to_vec());
    let corrupt = || GroupError::Invalid("stored enrollment is corrupt".into());
    let pems = || -> Result<Vec<String>, GroupError> {
        serde_json::from_str(row.ca_certificates.as_deref().unwrap_or("[]")).map_err(|_| corrupt())
    };
    let attestation = match row.attestation_type.as_str() {
        "symmetric_key" => Attestation::SymmetricKey,
        "token" => Attestation::Token,
        "aws_claim" => {
            let template: AwsTemplate =
                serde_json::from_str(row.aws_claim.as_deref().unwrap_or(""))
                    .map_err(|_| corrupt())?;
            Attestation::AwsClaim(AwsClaim {
                ca_certificates: pems()?,
                template_name: template.template_name,
                parameters: template.parameters,
            })
        }
        _ => Attestation::X509Ca(pems()?),
    };
    let allowed: Vec<String> =
        serde_json::from_str(&row.allowed_key_types).map_err(|_| corrupt())?;
    let allowed_keys: BTreeSet<KeyType> = if allowed.is_empty() {
        KeyType::ALL.into_iter().collect()
    } else {
        allowed.iter().filter_map(|k| KeyType::parse(k)).collect()
    };
    Ok(Group {
        id: row.id.clone(),
        individual,
        attestation,
        credential: Credential::parse(&row.credential).ok_or_else(corrupt)?,
        enabled: row.provisioning_status == "enabled",
        validity_days: row.certificate_validity_days,
        allowed_keys,
        pattern: row
            .registration_id_pattern
            .as_deref()
            .map(RegistrationPattern::parse)
            .transpose()?,
        initial_tags: serde_json::from_str(&row.initial_tags).map_err(|_| corrupt())?,
        reprovisioning: Reprovisioning::parse(&row.reprovisioning).ok_or_else(corrupt)?,
        primary,
        secondary,
        etag: row.etag,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

fn encode(ring: &KeyRing, g: &Group) -> GroupRow {
    let table = g.table();
    let ctx = |column| SealContext { table, column, row_id: &g.id };
    GroupRow {
        id: g.id.clone(),
        attestation_type: g.attestation.as_str().to_owned(),
        ca_certificates: match &g.attestation {
            Attestation::X509Ca(pems) => Some(Value::from(pems.clone()).to_string()),
            Attestation::AwsClaim(c) => Some(Value::from(c.ca_certificates.clone()).to_string()),
            _ => None,
        },
        aws_claim: match &g.attestation {
            Attestation::AwsClaim(c) => serde_json::to_string(&AwsTemplate {
                template_name: c.template_name.clone(),
                parameters: c.parameters.clone(),
            })
            .ok(),
            _ => None,
        },
        credential: g.credential.as_str().to_owned(),
        provisioning_status: if g.enabled { "enabled" } else { "disabled" }.to_owned(),
        certificate_validity_days: g.validity_days,
        allowed_key_types: Value::from(
            g.allowed_keys.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        )
        .to_string(),
        registration_id_pattern: g.pattern.as_ref().map(|p| p.as_str().to_owned()),
        initial_tags: Value::Object(g.initial_tags.clone()).to_string(),
        reprovisioning: g.reprovisioning.as_str().to_owned(),
        key_version: i64::from(ring.current_version()),
        primary_key: ring.seal(ctx("primary_key"), g.primary.expose_secret()),
        secondary_key: ring.seal(ctx("secondary_key"), g.secondary.expose_secret()),
        etag: g.etag.clone(),
        created_at: g.created_at,
        updated_at: g.updated_at,
    }
}

/// Reads a group.
pub async fn get(
    store: &Store,
    ring: &KeyRing,
    id: &str,
    individual: bool,
) -> Result<Group, GroupError> {
    let row = if individual {
        rows::enrollment(&mut *store.conn().await?, id).await?
    } else {
        rows::lookup_group(store, id).await?
    };
    decode(ring, row.ok_or(GroupError::NotFound)?, individual)
}

/// One page of enrollment groups (or individual enrollments) in id order after `after`, those
/// inside `scope` only. Returns them and whether more follow.
pub async fn list(
    store: &Store,
    ring: &KeyRing,
    scope: Option<&crate::auth::Scope>,
    individual: bool,
    after: &str,
    limit: i64,
) -> Result<(Vec<Group>, bool), GroupError> {
    let (rows, more) = super::page_where(
        after,
        limit,
        |r: &GroupRow| r.id.as_str(),
        |r| {
            scope.is_none_or(|s| {
                if individual {
                    s.covers_enrollment(&r.id)
                } else {
                    s.covers_group(&r.id)
                }
            })
        },
        |after, n| async move {
            let mut conn = store.conn().await?;
            if individual {
                rows::enrollments_page(&mut conn, &after, n).await
            } else {
                rows::groups_page(&mut conn, &after, n).await
            }
        },
    )
    .await?;
    let groups = rows.into_iter().map(|r| decode(ring, r, individual)).collect::<Result<_, _>>()?;
    Ok((groups, more))
}

/// Creates or replaces a group / individual enrollment; true when created. Keys absent from
/// the input are kept (or generated on create).
pub async fn put(
    store: &Store,
    cx: &Ctx<'_>,
    mut g: Group,
    keys: (Option<SasKey>, Option<SasKey>),
) -> Result<(Group, bool), GroupError> {
    let mut tx = store.begin().await?;
    let current = if g.individual {
        rows::enrollment(&mut tx, &g.id).await?
    } else {
        rows::group(&mut tx, &g.id).await?
    };
    let current = current.map(|r| decode(cx.ring, r, g.individual)).transpose()?;
    if g.individual {
        let device = crate::store::devices::get(&mut tx, &g.id).await?;
        if device.is_some_and(|d| d.owner_kind != "enrollment") {
            return Err(GroupError::Conflict(format!(
                "`{}` is a device owned by an admin or an enrollment group: an individual \
                 enrollment cannot take it over",
                g.id
            )));
        }
    }
    let created = current.is_none();
    let (old_p, old_s, created_at) = match current {
        Some(c) => (Some(c.primary), Some(c.secondary), c.created_at),
        None => (None, None, cx.now),
    };
    g.primary = keys.0.or(old_p).unwrap_or_else(SasKey::generate);
    g.secondary = keys.1.or(old_s).unwrap_or_else(SasKey::generate);
    g.created_at = created_at;
    g.updated_at = cx.now;
    g.etag = random_hex(8);
    let row = encode(cx.ring, &g);
    if g.individual {
        rows::upsert_enrollment(&mut tx, &row).await?
    } else {
        rows::upsert_group(&mut tx, &row).await?
    }
    let action = match (g.individual, created) {
        (false, true) => "enrollment_group.create",
        (false, false) => "enrollment_group.update",
        (true, true) => "enrollment.create",
        (true, false) => "enrollment.update",
    };
    cx.audit(&mut tx, store.dialect(), action, &g.id).await?;
    tx.commit().await.map_err(StoreError::from)?;
    store.groups_changed();
    Ok((g, created))
}

/// Deletes a group / individual enrollment (its devices stay registered).
pub async fn delete(
    store: &Store,
    cx: &Ctx<'_>,
    id: &str,
    individual: bool,
) -> Result<(), GroupError> {
    let mut tx = store.begin().await?;
    let gone = if individual {
        rows::delete_enrollment(&mut tx, id).await?
    } else {
        rows::delete_group(&mut tx, id).await?
    };
    if !gone {
        return Err(GroupError::NotFound);
    }
    let action = if individual { "enrollment.delete" } else { "enrollment_group.delete" };
    cx.audit(&mut tx, store.dialect(), action, id).await?;
    tx.commit().await.map_err(StoreError::from)?;
    store.groups_changed();
    Ok(())
}

/// Mints one-time enrollment JWTs for a group, recording each `jti`: `count` unbound tokens
/// (each registers one id that is not registered yet), or one token per id of `bound` (token i
/// registers or re-provisions `bound[i]` only; it is the JWT's `sub`).
pub async fn mint_tokens(
    store: &Store,
    cx: &Ctx<'_>,
    jwt: &JwtKeys,
    group_id: &str,
    count: usize,
    bound: Option<&[String]>,
    ttl_secs: i64,
) -> Result<(Vec<String>, i64), GroupError> {
    let exp = cx.now + ttl_secs;
    let mut tx = store.begin().await?;
    let row = rows::group(&mut tx, group_id).await?.ok_or(GroupError::NotFound)?;
    if let Some(ids) = bound {
        let group = decode(cx.ring, row, false)?;
        for id in ids {
            group.admits(id)?;
        }
    }
    let mut tokens = Vec::with_capacity(count);
    for i in 0..count {
        let sub = bound.and_then(|ids| ids.get(i)).cloned();
        let claims = Claims {
            aud: ENROLLMENT_AUDIENCE.into(),
            sub,
            grp: Some(group_id.to_owned()),
            gen: None,
            jti: random_hex(16),
            iat: cx.now,
            exp,
        };
        rows::insert_token(&mut tx, &claims.jti, group_id, claims.sub.as_deref(), exp).await?;
        tokens.push(jwt.sign(&claims).map_err(|_| GroupError::Sign)?);
    }
    cx.audit(&mut tx, store.dialect(), "enrollment_group.tokens.create", group_id).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok((tokens, exp))
}
