//! Azure IoT Hub / DPS shared access signatures.
//!
//! Wire format: `SharedAccessSignature sr={resource}&sig={url-encoded base64 HMAC-SHA256}&se={unix
//! expiry}[&skn={policy}]`, fields in any order. The signed string is the `sr` value **exactly as it
//! appears in the token**, a newline, and `se`: Azure's Python SDK url-encodes the resource while
//! its Node SDK sends it raw, and both must verify. The url-decoded `sr` names the resource; a
//! token is good for that resource and those below it. Tokens built here url-encode `sr`.
//!
//! Parsing is strict: missing, duplicate, unknown or malformed fields are distinct [`SasError`]s.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::Sha256;

use crate::secret::SasKey;

type HmacSha256 = Hmac<Sha256>;

/// The scheme word that starts every token.
pub const SCHEME: &str = "SharedAccessSignature";

/// Longest token accepted by the parser; Azure tokens are far below this.
const MAX_TOKEN_LEN: usize = 4096;

/// Characters that `urllib.parse.quote(s, safe="")` leaves alone: RFC 3986 unreserved.
const QUOTE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Why a token was refused. Never carries key or signature bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum SasError {
    /// The same field appears twice.
    #[error("field `{0}` appears more than once")]
    DuplicateField(&'static str),
    /// `se` lies in the past (beyond the allowed clock skew).
    #[error("token expired")]
    Expired,
    /// `se` lies further ahead than the verifier accepts.
    #[error("token expiry is too far in the future")]
    ExpiryTooFar,
    /// A field is not `name=value`, or its value is not valid for that field.
    #[error("field `{0}` is malformed")]
    MalformedField(&'static str),
    /// The token does not start with `SharedAccessSignature `.
    #[error("not a SharedAccessSignature token")]
    MissingScheme,
    /// A required field (`sr`, `sig`, `se`) is absent.
    #[error("field `{0}` is missing")]
    MissingField(&'static str),
    /// The token names a different resource than the one being accessed.
    #[error("token is not valid for this resource")]
    ResourceMismatch,
    /// The HMAC does not match.
    #[error("signature does not match")]
    SignatureMismatch,
    /// The token is longer than any legitimate token.
    #[error("token too long")]
    TooLong,
    /// A field name other than `sr`, `sig`, `se`, `skn`.
    #[error("unknown field in token")]
    UnknownField,
}

/// A parsed (not yet verified) shared access signature.
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken {
    /// `sr` exactly as transmitted (what the signature covers).
    sr_raw: String,
    /// `sr` url-decoded: the resource name.
    resource: String,
    /// Decoded HMAC bytes.
    signature: Vec<u8>,
    /// `se`, unix seconds.
    expiry: i64,
    /// `skn`, url-decoded, when present.
    key_name: Option<String>,
}

impl std::fmt::Debug for SasToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The signature is a bearer credential for its lifetime: never print it.
        f.debug_struct("SasToken")
            .field("resource", &self.resource)
            .field("expiry", &self.expiry)
            .field("key_name", &self.key_name)
            .finish_non_exhaustive()
    }
}

/// Clock and lifetime bounds for [`SasToken::verify`].
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Current unix time.
    pub now: i64,
    /// Accepted clock skew in seconds (a token expired less than this long ago still passes).
    pub skew_secs: i64,
    /// Tokens whose `se` lies further ahead than this are refused.
    pub max_ahead_secs: i64,
}

impl SasToken {
    /// Parses a token (with or without surrounding whitespace).
    pub fn parse(text: &str) -> Result<Self, SasError> {
        if text.len() > MAX_TOKEN_LEN {
            return Err(SasError::TooLong);
        }
        let rest = text
            .trim()
            .strip_prefix(SCHEME)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or(SasError::MissingScheme)?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for field in rest.split('&') {
            let (name, value) = field.split_once('=').ok_or(SasError::UnknownField)?;
            let (slot, label) = match name {
                "sr" => (&mut sr, "sr"),
                "sig" => (&mut sig, "sig"),
                "se" => (&mut se, "se"),
                "skn" => (&mut skn, "skn"),
                _ => return Err(SasError::UnknownField),
            };
            if slot.replace(value).is_some() {
                return Err(SasError::DuplicateField(label));
            }
        }
        let sr_raw = sr.ok_or(SasError::MissingField("sr"))?;
        let sig = sig.ok_or(SasError::MissingField("sig"))?;
        let se = se.ok_or(SasError::MissingField("se"))?;

        let resource = decode(sr_raw).ok_or(SasError::MalformedField("sr"))?;
        if resource.is_empty() || resource.chars().any(char::is_control) {
            return Err(SasError::MalformedField("sr"));
        }
        let signature = decode(sig)
            .and_then(|s| STANDARD.decode(s).ok())
            .filter(|s| s.len() == 32)
            .ok_or(SasError::MalformedField("sig"))?;
        if se.is_empty() || se.len() > 12 || !se.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SasError::MalformedField("se"));
        }
        let expiry = se.parse::<i64>().map_err(|_| SasError::MalformedField("se"))?;
        let key_name = match skn {
            None => None,
            Some(raw) => {
                Some(decode(raw).filter(|n| !n.is_empty()).ok_or(SasError::MalformedField("skn"))?)
            }
        };
        Ok(Self { sr_raw: sr_raw.to_owned(), resource, signature, expiry, key_name })
    }

    /// Builds a token for `resource` (url-encoded in `sr`), expiring at `expiry`.
    pub fn build(resource: &str, key: &SasKey, expiry: i64, key_name: Option<&str>) -> String {
        let sr = utf8_percent_encode(resource, QUOTE).to_string();
        let sig = sign(key, &sr, expiry);
        let sig = utf8_percent_encode(&sig, QUOTE);
        match key_name {
            Some(name) => format!(
                "{SCHEME} sr={sr}&sig={sig}&se={expiry}&skn={}",
                utf8_percent_encode(name, QUOTE)
            ),
            None => format!("{SCHEME} sr={sr}&sig={sig}&se={expiry}"),
        }
    }

    /// The url-decoded resource (`sr`).
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The expiry, unix seconds.
    pub fn expiry(&self) -> i64 {
        self.expiry
    }

    /// The policy name (`skn`), if any.
    pub fn key_name(&self) -> Option<&str> {
        self.key_name.as_deref()
    }

    /// Checks expiry bounds, then the HMAC in constant time. Expiry first: an expired token is
    /// refused without spending a MAC on it, and the order leaks nothing about the key.
    pub fn verify(&self, key: &SasKey, validity: Validity) -> Result<(), SasError> {
        self.check_expiry(validity)?;
        self.check_signature(key)
    }

    /// Expiry bounds only (used before looking up keys).
    pub fn check_expiry(&self, v: Validity) -> Result<(), SasError> {
        if self.expiry.saturating_add(v.skew_secs) <= v.now {
            return Err(SasError::Expired);
        }
        if self.expiry > v.now.saturating_add(v.max_ahead_secs) {
            return Err(SasError::ExpiryTooFar);
        }
        Ok(())
    }

    /// HMAC check only, constant time.
    pub fn check_signature(&self, key: &SasKey) -> Result<(), SasError> {
        let mut mac = mac_for(key);
        mac.update(self.sr_raw.as_bytes());
        mac.update(b"\n");
        mac.update(self.expiry.to_string().as_bytes());
        mac.verify_slice(&self.signature).map_err(|_| SasError::SignatureMismatch)
    }

    /// Whether the token's resource is `expected` or a parent of it. The host part (before the
    /// first `/`) compares case-insensitively, as host names do; the path compares exactly,
    /// because device ids are case-sensitive.
    pub fn covers(&self, expected: &str) -> bool {
        let (tok_host, tok_path) = split_host(&self.resource);
        let (exp_host, exp_path) = split_host(expected);
        if !tok_host.eq_ignore_ascii_case(exp_host) {
            return false;
        }
        match (tok_path, exp_path) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(t), Some(e)) => {
                let t = t.trim_end_matches('/');
                e == t || e.strip_prefix(t).is_some_and(|rest| rest.starts_with('/'))
            }
        }
    }

    /// Like [`covers`](Self::covers), as a `Result`.
    pub fn require_resource(&self, expected: &str) -> Result<(), SasError> {
        if self.covers(expected) {
            Ok(())
        } else {
            Err(SasError::ResourceMismatch)
        }
    }
}

/// `base64(HMAC-SHA256(group_key, registration_id))`: the per-device key derived from an
/// enrollment group key (Azure DPS group enrollments).
pub fn derive_device_key(group_key: &SasKey, registration_id: &str) -> SasKey {
    let mut mac = mac_for(group_key);
    mac.update(registration_id.as_bytes());
    // The derived key, as DPS defines it, is the *base64 text* of the MAC decoded again; keeping
    // the raw 32 MAC bytes is equivalent and avoids a round trip.
    SasKey::from_bytes(mac.finalize().into_bytes().to_vec())
}

fn sign(key: &SasKey, sr: &str, expiry: i64) -> String {
    let mut mac = mac_for(key);
    mac.update(sr.as_bytes());
    mac.update(b"\n");
    mac.update(expiry.to_string().as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

fn mac_for(key: &SasKey) -> HmacSha256 {
    #[allow(clippy::expect_used)]
    // invariant: HMAC is defined for keys of every length; `new_from_slice` cannot fail for it.
    HmacSha256::new_from_slice(key.expose_secret()).expect("HMAC accepts any key length")
}

fn decode(s: &str) -> Option<String> {
    percent_decode_str(s).decode_utf8().ok().map(|c| c.into_owned())
}

fn split_host(resource: &str) -> (&str, Option<&str>) {
    match resource.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (resource, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: Validity =
        Validity { now: 1_700_000_000, skew_secs: 300, max_ahead_secs: 366 * 86400 };

    fn key() -> SasKey {
        SasKey::from_base64("bXlzZWNyZXRrZXkxMjM0NTY3ODkwYWJjZGVmZ2hpams=").unwrap()
    }

    #[test]
    fn built_tokens_url_encode_sr_and_verify() {
        let t = SasToken::build("host.example/devices/d1", &key(), V.now + 60, None);
        assert!(t.starts_with("SharedAccessSignature sr=host.example%2Fdevices%2Fd1&sig="));
        let p = SasToken::parse(&t).unwrap();
        assert_eq!(p.resource(), "host.example/devices/d1");
        p.verify(&key(), V).unwrap();
    }

    #[test]
    fn raw_sr_as_node_sends_it_verifies_over_the_raw_text() {
        let sr = "0ne00000/registrations/d1";
        let sig = sign(&key(), sr, V.now + 60);
        let sig = utf8_percent_encode(&sig, QUOTE);
        let t =
            format!("SharedAccessSignature sr={sr}&sig={sig}&se={}&skn=registration", V.now + 60);
        let p = SasToken::parse(&t).unwrap();
        p.verify(&key(), V).unwrap();
        assert_eq!(p.key_name(), Some("registration"));
        // Re-encoding sr changes the signed string, so the same sig must not verify.
        let t2 = t.replace(sr, "0ne00000%2Fregistrations%2Fd1");
        assert_eq!(
            SasToken::parse(&t2).unwrap().verify(&key(), V),
            Err(SasError::SignatureMismatch)
        );
    }

    #[test]
    fn fields_in_any_order() {
        let t = SasToken::build("h/devices/d1", &key(), V.now + 60, Some("owner"));
        let body = t.strip_prefix("SharedAccessSignature ").unwrap();
        let mut parts: Vec<&str> = body.split('&').collect();
        parts.reverse();
        let shuffled = format!("SharedAccessSignature {}", parts.join("&"));
        SasToken::parse(&shuffled).unwrap().verify(&key(), V).unwrap();
    }

    #[test]
    fn strict_parsing_names_each_fault() {
        let cases: &[(&str, SasError)] = &[
            ("Bearer x", SasError::MissingScheme),
            ("SharedAccessSignature sig=AAAA&se=1", SasError::MissingField("sr")),
            ("SharedAccessSignature sr=a&se=1", SasError::MissingField("sig")),
            ("SharedAccessSignature sr=a&sr=b&sig=x&se=1", SasError::DuplicateField("sr")),
            ("SharedAccessSignature sr=a&sig=x&se=1&foo=bar", SasError::UnknownField),
            ("SharedAccessSignature sr=a&sig=%%%&se=1", SasError::MalformedField("sig")),
            ("SharedAccessSignature sr=a&sig=AAAA&se=1", SasError::MalformedField("sig")),
            ("SharedAccessSignature garbage", SasError::UnknownField),
        ];
        for (input, want) in cases {
            assert_eq!(SasToken::parse(input).unwrap_err(), *want, "input {input:?}");
        }
        let good_sig = utf8_percent_encode(&STANDARD.encode([0u8; 32]), QUOTE).to_string();
        let bad_se = format!("SharedAccessSignature sr=a&sig={good_sig}&se=-5");
        assert_eq!(SasToken::parse(&bad_se).unwrap_err(), SasError::MalformedField("se"));
    }

    #[test]
    fn expiry_skew_and_lifetime_bounds() {
        let k = key();
        let expired = SasToken::parse(&SasToken::build("h", &k, V.now - 301, None)).unwrap();
        assert_eq!(expired.verify(&k, V), Err(SasError::Expired));
        let in_skew = SasToken::parse(&SasToken::build("h", &k, V.now - 10, None)).unwrap();
        in_skew.verify(&k, V).unwrap();
        let too_far =
            SasToken::parse(&SasToken::build("h", &k, V.now + 367 * 86400, None)).unwrap();
        assert_eq!(too_far.verify(&k, V), Err(SasError::ExpiryTooFar));
    }

    #[test]
    fn extended_expiry_breaks_the_signature() {
        let t = SasToken::build("h/devices/d1", &key(), V.now + 60, None);
        let extended = t.replace(&format!("se={}", V.now + 60), &format!("se={}", V.now + 6000));
        let p = SasToken::parse(&extended).unwrap();
        assert_eq!(p.verify(&key(), V), Err(SasError::SignatureMismatch));
    }

    #[test]
    fn resource_coverage_is_hierarchical_and_case_sensitive_below_the_host() {
        let t =
            SasToken::parse(&SasToken::build("Host.Example", &key(), V.now + 60, None)).unwrap();
        assert!(t.covers("host.example"));
        assert!(t.covers("host.example/devices/x"));
        let d =
            SasToken::parse(&SasToken::build("h/devices/d1", &key(), V.now + 60, None)).unwrap();
        assert!(d.covers("h/devices/d1"));
        assert!(d.covers("H/devices/d1/modules/m"));
        assert!(!d.covers("h/devices/D1"));
        assert!(!d.covers("h/devices/d10"));
        assert!(!d.covers("h"));
    }

    #[test]
    fn derived_key_matches_the_dps_definition() {
        // Recorded with Python: base64.b64encode(hmac.new(b64decode(k), b"dev-001", sha256).digest())
        let group = SasKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        let derived = derive_device_key(&group, "dev-001");
        let mut mac = HmacSha256::new_from_slice(group.expose_secret()).unwrap();
        mac.update(b"dev-001");
        assert_eq!(derived.expose_secret(), mac.finalize().into_bytes().as_slice());
        assert_eq!(derived.to_base64().len(), 44);
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics_on_arbitrary_strings(s in ".{0,600}") {
            let _ = SasToken::parse(&s);
            let _ = SasToken::parse(&format!("SharedAccessSignature {s}"));
        }

        #[test]
        fn parser_never_panics_on_field_soup(
            fields in proptest::collection::vec(("(sr|sig|se|skn|x)", "[A-Za-z0-9%=&+/]{0,40}"), 0..6)
        ) {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = SasToken::parse(&format!("SharedAccessSignature {}", body.join("&")));
        }
    }
}
