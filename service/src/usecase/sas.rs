//! Device SAS tokens: minting for a device, and introspection for brokers and backends.

use ca::sas::{SasToken, Validity};

use super::devices::{self, Authentication, DeviceError};
use crate::auth::sas::MAX_AHEAD_SECS;
use crate::seal::KeyRing;
use crate::store::Store;

/// Largest `ttl_secs` for a minted token (366 days).
pub const MAX_TTL_SECS: i64 = 31_622_400;

/// Result of verifying a device token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// good for `device_id` until `expires_at`
    Valid {
        /// the device
        device_id: String,
        /// `se`
        expires_at: i64,
    },
    /// refused, with a reason safe to show
    Invalid(&'static str),
}

/// The resource a device token must name.
pub fn device_resource(host_name: &str, device_id: &str) -> String {
    format!("{host_name}/devices/{device_id}")
}

/// Mints a token for `device_id` signed with its primary key.
pub async fn mint(
    store: &Store,
    ring: &KeyRing,
    host_name: &str,
    device_id: &str,
    ttl_secs: i64,
    now: i64,
) -> Result<(String, i64), DeviceError> {
    let device = devices::get(store, ring, device_id).await?;
    let Authentication::Sas { primary, .. } = &device.auth else {
        return Err(DeviceError::Invalid("the device does not authenticate with SAS keys".into()));
    };
    if device.row.status != "enabled" {
        return Err(DeviceError::Disabled);
    }
    let expiry = now + ttl_secs;
    Ok((SasToken::build(&device_resource(host_name, device_id), primary, expiry, None), expiry))
}

/// Verifies a device token (either key, enabled device, bounded expiry). A device outside the
/// caller's `scope` is answered exactly as an unknown one.
#[allow(clippy::too_many_arguments)]
pub async fn verify(
    store: &Store,
    ring: &KeyRing,
    scope: Option<&crate::auth::Scope>,
    host_name: &str,
    token: &str,
    now: i64,
    skew_secs: i64,
) -> Result<Verdict, DeviceError> {
    let Ok(t) = SasToken::parse(token) else {
        return Ok(Verdict::Invalid("malformed token"));
    };
    if t.key_name().is_some() {
        return Ok(Verdict::Invalid("not a device token (skn present)"));
    }
    let validity = Validity { now, skew_secs, max_ahead_secs: MAX_AHEAD_SECS };
    match t.check_expiry(validity) {
        Err(ca::sas::SasError::Expired) => return Ok(Verdict::Invalid("expired")),
        Err(_) => return Ok(Verdict::Invalid("expiry too far in the future")),
        Ok(()) => {}
    }
    let resource = t.resource();
    let Some((host, rest)) = resource.split_once('/') else {
        return Ok(Verdict::Invalid("resource is not a device"));
    };
    let Some(path) = rest.strip_prefix("devices/") else {
        return Ok(Verdict::Invalid("resource is not a device"));
    };
    let device_id = path.split('/').next().unwrap_or_default();
    if !host.eq_ignore_ascii_case(host_name)
        || crate::ids::validate("device id", device_id).is_err()
    {
        return Ok(Verdict::Invalid("resource does not name a device of this hub"));
    }
    let device = match devices::get(store, ring, device_id).await {
        Ok(d) => d,
        Err(DeviceError::NotFound) => return Ok(Verdict::Invalid("unknown device")),
        Err(e) => return Err(e),
    };
    if scope.is_some_and(|s| !s.covers_device(device_id, device.row.owner_group())) {
        return Ok(Verdict::Invalid("unknown device"));
    }
    if device.row.status != "enabled" {
        return Ok(Verdict::Invalid("device is disabled"));
    }
    let Authentication::Sas { primary, secondary } = &device.auth else {
        return Ok(Verdict::Invalid("device does not use SAS keys"));
    };
    let ok_p = t.check_signature(primary).is_ok();
    let ok_s = t.check_signature(secondary).is_ok();
    if ok_p | ok_s {
        Ok(Verdict::Valid { device_id: device_id.to_owned(), expires_at: t.expiry() })
    } else {
        Ok(Verdict::Invalid("signature does not match"))
    }
}
