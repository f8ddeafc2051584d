//! JWTs signed by provisiond (ES256 only — the algorithm is pinned on verification).
//!
//! Two audiences that never substitute for each other: `provisiond-operator` (login sessions)
//! and `provisiond-enrollment` (one-time enrollment tokens). The signing key is a P-256 key
//! created by `init` and sealed in `secrets`.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Audience of operator session tokens.
pub const OPERATOR_AUDIENCE: &str = "provisiond-operator";
/// Audience of one-time enrollment tokens.
pub const ENROLLMENT_AUDIENCE: &str = "provisiond-enrollment";

/// Claims of every provisiond JWT.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// audience
    pub aud: String,
    /// subject (operator name), absent for enrollment tokens
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// enrollment group (enrollment tokens)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grp: Option<String>,
    /// the operator's credential generation (operator sessions): the session ends when it
    /// changes
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gen: Option<String>,
    /// unique id
    pub jti: String,
    /// issued at
    pub iat: i64,
    /// expiry
    pub exp: i64,
}

/// Signing and verification keys.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys([secret elided])")
    }
}

/// Why a JWT was refused or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// the key is not a P-256 PKCS#8 key
    #[error("JWT signing key is invalid")]
    BadKey,
    /// signing failed
    #[error("JWT signing failed")]
    Sign,
    /// the token is invalid (signature, alg, audience, expiry, format)
    #[error("invalid token")]
    Invalid,
}

impl JwtKeys {
    /// From the sealed P-256 PKCS#8 key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, JwtError> {
        let pair = rcgen::KeyPair::try_from(der).map_err(|_| JwtError::BadKey)?;
        if pair.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(JwtError::BadKey);
        }
        Ok(Self {
            encoding: EncodingKey::from_ec_der(der),
            decoding: DecodingKey::from_ec_der(pair.public_key_raw()),
        })
    }

    /// Signs `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, JwtError> {
        encode(&Header::new(Algorithm::ES256), claims, &self.encoding).map_err(|_| JwtError::Sign)
    }

    /// Verifies signature (ES256 only), audience and expiry (no leeway beyond `leeway_secs`).
    pub fn verify(
        &self,
        token: &str,
        audience: &str,
        now: i64,
        leeway_secs: u64,
    ) -> Result<Claims, JwtError> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&[audience]);
        v.leeway = leeway_secs;
        // Expiry is checked against our clock below, not the library's.
        v.validate_exp = false;
        v.set_required_spec_claims(&["exp", "aud"]);
        let claims =
            decode::<Claims>(token, &self.decoding, &v).map_err(|_| JwtError::Invalid)?.claims;
        if claims.exp.saturating_add(leeway_secs as i64) <= now || claims.aud != audience {
            return Err(JwtError::Invalid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeys {
        let (k, _) = ca::issue::generate_key(ca::KeyType::P256).unwrap();
        JwtKeys::from_pkcs8(k.expose_secret()).unwrap()
    }

    fn claims(aud: &str, exp: i64) -> Claims {
        Claims {
            aud: aud.into(),
            sub: Some("alice".into()),
            grp: None,
            gen: None,
            jti: "j".into(),
            iat: 0,
            exp,
        }
    }

    #[test]
    fn audience_expiry_signature_and_alg_are_enforced() {
        let k = keys();
        let t = k.sign(&claims(OPERATOR_AUDIENCE, 1000)).unwrap();
        assert_eq!(k.verify(&t, OPERATOR_AUDIENCE, 900, 0).unwrap().sub.as_deref(), Some("alice"));
        assert!(k.verify(&t, ENROLLMENT_AUDIENCE, 900, 0).is_err(), "audiences do not substitute");
        assert!(k.verify(&t, OPERATOR_AUDIENCE, 1000, 0).is_err(), "expired");
        assert!(keys().verify(&t, OPERATOR_AUDIENCE, 900, 0).is_err(), "other key");
        // alg=none and HS256 forgeries are refused.
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let body = t.split('.').nth(1).unwrap();
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), body);
        assert!(k.verify(&none, OPERATOR_AUDIENCE, 900, 0).is_err());
        let hs = format!("{}.{}.AAAA", b64(r#"{"alg":"HS256","typ":"JWT"}"#), body);
        assert!(k.verify(&hs, OPERATOR_AUDIENCE, 900, 0).is_err());
    }
}
