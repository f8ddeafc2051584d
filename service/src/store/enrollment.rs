//! Enrollment tables: groups, individual enrollments, one-time tokens, registrations.

use sqlx::AnyConnection;

use super::StoreError;

/// An enrollment group (or, with `id` = registration id, an individual enrollment).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GroupRow {
    /// group id / registration id
    pub id: String,
    /// symmetric_key | x509_ca | token
    pub attestation_type: String,
    /// JSON array of PEM
    pub ca_certificates: Option<String>,
    /// x509 | sas | both
    pub credential: String,
    /// enabled | disabled
    pub provisioning_status: String,
    /// days
    pub certificate_validity_days: i64,
    /// JSON array
    pub allowed_key_types: String,
    /// regex
    pub registration_id_pattern: Option<String>,
    /// JSON object
    pub initial_tags: String,
    /// reissue | keep | deny
    pub reprovisioning: String,
    /// master key version
    pub key_version: i64,
    /// sealed group primary key
    pub primary_key: Vec<u8>,
    /// sealed group secondary key
    pub secondary_key: Vec<u8>,
    /// etag
    pub etag: String,
    /// created
    pub created_at: i64,
    /// updated
    pub updated_at: i64,
    /// `aws_claim` groups: JSON `{"template_name", "parameters"}` (NULL otherwise)
    pub aws_claim: Option<String>,
}

/// Every column of `enrollment_groups`, in `GroupRow` order (the order `from_sqlite` decodes
/// and the upsert binds): the one list the group statements are built from.
macro_rules! group_columns {
    () => {
        "id, attestation_type, ca_certificates, credential, provisioning_status, \
         certificate_validity_days, allowed_key_types, registration_id_pattern, initial_tags, \
         reprovisioning, key_version, primary_key, secondary_key, etag, created_at, updated_at, \
         aws_claim"
    };
}

/// `SELECT` of one group by id.
const SELECT_GROUP: &str =
    concat!("SELECT ", group_columns!(), " FROM enrollment_groups WHERE id = $1");

/// Reads a group.
pub async fn group(conn: &mut AnyConnection, id: &str) -> Result<Option<GroupRow>, StoreError> {
    Ok(sqlx::query_as::<_, GroupRow>(SELECT_GROUP).bind(id).fetch_optional(conn).await?)
}

/// Reads one committed group outside any transaction: hop-free on SQLite (every registration
/// reads its group), a pooled connection otherwise.
pub async fn lookup_group(store: &super::Store, id: &str) -> Result<Option<GroupRow>, StoreError> {
    match store.direct().and_then(|d| d.row(SELECT_GROUP, [id], GroupRow::from_sqlite)) {
        Some(found) => Ok(found),
        None => group(&mut *store.conn().await?, id).await,
    }
}

impl GroupRow {
    /// Decodes a row of `SELECT_GROUP` read by [`super::direct`].
    fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            attestation_type: r.get(1)?,
            ca_certificates: r.get(2)?,
            credential: r.get(3)?,
            provisioning_status: r.get(4)?,
            certificate_validity_days: r.get(5)?,
            allowed_key_types: r.get(6)?,
            registration_id_pattern: r.get(7)?,
            initial_tags: r.get(8)?,
            reprovisioning: r.get(9)?,
            key_version: r.get(10)?,
            primary_key: r.get(11)?,
            secondary_key: r.get(12)?,
            etag: r.get(13)?,
            created_at: r.get(14)?,
            updated_at: r.get(15)?,
            aws_claim: r.get(16)?,
        })
    }
}

/// One page of enrollment groups in id order (byte order) after `after`.
pub async fn groups_page(
    conn: &mut AnyConnection,
    after: &str,
    limit: i64,
) -> Result<Vec<GroupRow>, StoreError> {
    Ok(sqlx::query_as::<_, GroupRow>(concat!(
        "SELECT ",
        group_columns!(),
        " FROM enrollment_groups WHERE id > $1 ORDER BY id LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Enabled groups with the given attestation type.
pub async fn groups_by_attestation(
    conn: &mut AnyConnection,
    attestation: &str,
) -> Result<Vec<GroupRow>, StoreError> {
    Ok(sqlx::query_as::<_, GroupRow>(concat!(
        "SELECT ",
        group_columns!(),
        " FROM enrollment_groups \
         WHERE attestation_type = $1 AND provisioning_status = 'enabled' ORDER BY id"
    ))
    .bind(attestation)
    .fetch_all(conn)
    .await?)
}

/// Inserts or replaces a group (one statement, so concurrent creates cannot collide; the
/// caller knows from its own read whether it created).
pub async fn upsert_group(conn: &mut AnyConnection, g: &GroupRow) -> Result<(), StoreError> {
    sqlx::query(concat!(
        "INSERT INTO enrollment_groups (",
        group_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
         ON CONFLICT (id) DO UPDATE SET attestation_type = excluded.attestation_type, \
         ca_certificates = excluded.ca_certificates, credential = excluded.credential, \
         provisioning_status = excluded.provisioning_status, \
         certificate_validity_days = excluded.certificate_validity_days, \
         allowed_key_types = excluded.allowed_key_types, \
         registration_id_pattern = excluded.registration_id_pattern, \
         initial_tags = excluded.initial_tags, reprovisioning = excluded.reprovisioning, \
         key_version = excluded.key_version, primary_key = excluded.primary_key, \
         secondary_key = excluded.secondary_key, etag = excluded.etag, \
         updated_at = excluded.updated_at, aws_claim = excluded.aws_claim"
    ))
    .bind(&g.id)
    .bind(&g.attestation_type)
    .bind(g.ca_certificates.as_deref())
    .bind(&g.credential)
    .bind(&g.provisioning_status)
    .bind(g.certificate_validity_days)
    .bind(&g.allowed_key_types)
    .bind(g.registration_id_pattern.as_deref())
    .bind(&g.initial_tags)
    .bind(&g.reprovisioning)
    .bind(g.key_version)
    .bind(&g.primary_key)
    .bind(&g.secondary_key)
    .bind(&g.etag)
    .bind(g.created_at)
    .bind(g.updated_at)
    .bind(g.aws_claim.as_deref())
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes a group.
pub async fn delete_group(conn: &mut AnyConnection, id: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query("DELETE FROM enrollment_groups WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?
        .rows_affected()
        == 1)
}

/// Reads an individual enrollment (mapped onto the group shape; group-only columns defaulted).
pub async fn enrollment(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Option<GroupRow>, StoreError> {
    Ok(sqlx::query_as::<_, GroupRow>(
        "SELECT registration_id AS id, attestation_type, ca_certificates, credential, provisioning_status, \
         CAST(365 AS BIGINT) AS certificate_validity_days, '[]' AS allowed_key_types, \
         CAST(NULL AS TEXT) AS registration_id_pattern, \
         '{}' AS initial_tags, 'reissue' AS reprovisioning, key_version, primary_key, secondary_key, etag, \
         created_at, updated_at, CAST(NULL AS TEXT) AS aws_claim \
         FROM enrollments WHERE registration_id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// One page of individual enrollments in registration id order (byte order) after `after`.
pub async fn enrollments_page(
    conn: &mut AnyConnection,
    after: &str,
    limit: i64,
) -> Result<Vec<GroupRow>, StoreError> {
    Ok(sqlx::query_as::<_, GroupRow>(
        "SELECT registration_id AS id, attestation_type, ca_certificates, credential, \
         provisioning_status, CAST(365 AS BIGINT) AS certificate_validity_days, \
         '[]' AS allowed_key_types, CAST(NULL AS TEXT) AS registration_id_pattern, \
         '{}' AS initial_tags, 'reissue' AS reprovisioning, key_version, primary_key, \
         secondary_key, etag, created_at, updated_at, CAST(NULL AS TEXT) AS aws_claim \
         FROM enrollments WHERE registration_id > $1 ORDER BY registration_id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Inserts or replaces an individual enrollment (one statement, as [`upsert_group`]).
pub async fn upsert_enrollment(conn: &mut AnyConnection, g: &GroupRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO enrollments (registration_id, attestation_type, ca_certificates, credential, \
         provisioning_status, key_version, primary_key, secondary_key, etag, created_at, \
         updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (registration_id) DO UPDATE SET \
         attestation_type = excluded.attestation_type, ca_certificates = excluded.ca_certificates, \
         credential = excluded.credential, provisioning_status = excluded.provisioning_status, \
         key_version = excluded.key_version, primary_key = excluded.primary_key, \
         secondary_key = excluded.secondary_key, etag = excluded.etag, \
         updated_at = excluded.updated_at",
    )
    .bind(&g.id)
    .bind(&g.attestation_type)
    .bind(g.ca_certificates.as_deref())
    .bind(&g.credential)
    .bind(&g.provisioning_status)
    .bind(g.key_version)
    .bind(&g.primary_key)
    .bind(&g.secondary_key)
    .bind(&g.etag)
    .bind(g.created_at)
    .bind(g.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes an individual enrollment.
pub async fn delete_enrollment(conn: &mut AnyConnection, id: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query("DELETE FROM enrollments WHERE registration_id = $1")
        .bind(id)
        .execute(conn)
        .await?
        .rows_affected()
        == 1)
}

/// Records minted one-time tokens.
pub async fn insert_token(
    conn: &mut AnyConnection,
    jti: &str,
    group_id: &str,
    registration_id: Option<&str>,
    expires_at: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO enrollment_tokens (jti, group_id, registration_id, expires_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(jti)
    .bind(group_id)
    .bind(registration_id)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// What consuming a one-time token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumed {
    /// this call consumed it; `bound` says whether it was minted for this registration id
    Now {
        /// minted for this id (it may re-provision it); else it registers only new ids
        bound: bool,
    },
    /// spent, expired, unknown, of another group, or bound to another id
    Refused,
}

/// Consumes a one-time token for `registration_id`: one conditional UPDATE, so exactly one
/// caller wins, on any instance; a token bound to another id never matches.
pub async fn consume_token(
    conn: &mut AnyConnection,
    jti: &str,
    group_id: &str,
    registration_id: &str,
    now: i64,
) -> Result<Consumed, StoreError> {
    let row = sqlx::query_scalar::<_, Option<String>>(
        "UPDATE enrollment_tokens SET used_at = $3, used_for = $4 \
         WHERE jti = $1 AND group_id = $2 AND used_at IS NULL AND expires_at > $3 \
         AND (registration_id IS NULL OR registration_id = $4) RETURNING registration_id",
    )
    .bind(jti)
    .bind(group_id)
    .bind(now)
    .bind(registration_id)
    .fetch_optional(conn)
    .await?;
    Ok(match row {
        Some(bound) => Consumed::Now { bound: bound.is_some() },
        None => Consumed::Refused,
    })
}

/// The registration id a consumed token registered (None: unknown or not used yet).
pub async fn token_used_for(
    conn: &mut AnyConnection,
    jti: &str,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar::<_, Option<String>>(
        "SELECT used_for FROM enrollment_tokens WHERE jti = $1 AND used_at IS NOT NULL",
    )
    .bind(jti)
    .fetch_optional(conn)
    .await?
    .flatten())
}

/// A completed registration (idempotency record).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RegistrationRow {
    /// registration id (= device id)
    pub registration_id: String,
    /// group (None for individual enrollments)
    pub group_id: Option<String>,
    /// SHA-256 of the CSR DER, hex
    pub csr_sha256: Option<String>,
    /// certificate issued for it
    pub serial: Option<String>,
    /// DPS operation id
    pub operation_id: String,
    /// DPS payload (JSON text)
    pub payload: Option<String>,
    /// first registration
    pub created_at: i64,
    /// last registration
    pub updated_at: i64,
}

/// Reads a registration.
pub async fn registration(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Option<RegistrationRow>, StoreError> {
    Ok(sqlx::query_as::<_, RegistrationRow>(
        "SELECT registration_id, group_id, csr_sha256, serial, operation_id, payload, created_at, updated_at \
         FROM registrations WHERE registration_id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Inserts or replaces a registration record.
pub async fn upsert_registration(
    conn: &mut AnyConnection,
    r: &RegistrationRow,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO registrations (registration_id, group_id, csr_sha256, serial, operation_id, payload, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (registration_id) DO UPDATE SET group_id = $2, csr_sha256 = $3, serial = $4, \
         operation_id = $5, payload = $6, updated_at = $8",
    )
    .bind(&r.registration_id)
    .bind(r.group_id.as_deref())
    .bind(r.csr_sha256.as_deref())
    .bind(r.serial.as_deref())
    .bind(&r.operation_id)
    .bind(r.payload.as_deref())
    .bind(r.created_at)
    .bind(r.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds one multi-row insert of registration records to `w` (nothing for none).
pub fn insert_registrations(w: &mut super::Writes, rows: &[RegistrationRow]) {
    w.insert(
        "registrations",
        "registration_id, group_id, csr_sha256, serial, operation_id, payload, created_at, updated_at",
        rows.len(),
    );
    for r in rows {
        w.bind(&r.registration_id)
            .bind(r.group_id.as_deref())
            .bind(r.csr_sha256.as_deref())
            .bind(r.serial.as_deref())
            .bind(&r.operation_id)
            .bind(r.payload.as_deref())
            .bind(r.created_at)
            .bind(r.updated_at);
    }
}

/// Which of `ids` already exist as a device or a registration (one round trip).
pub async fn known_ids(
    conn: &mut AnyConnection,
    ids: &[&str],
) -> Result<std::collections::HashSet<String>, StoreError> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let dialect = super::dialect_of(conn);
    let sql = format!(
        "SELECT device_id FROM devices WHERE device_id IN ({}) \
         UNION SELECT registration_id FROM registrations WHERE registration_id IN ({})",
        super::placeholders(dialect, 1, ids.len()),
        super::placeholders(dialect, ids.len() + 1, ids.len()),
    );
    let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
    for id in ids.iter().chain(ids) {
        q = q.bind(*id);
    }
    Ok(q.fetch_all(conn).await?.into_iter().collect())
}
