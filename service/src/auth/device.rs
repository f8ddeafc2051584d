//! How a device proves itself to a registration door, whatever carries the credential (an HTTP
//! `Authorization` header, an MQTT CONNECT password, a TLS client certificate): (a) a SAS token
//! signed with an individual enrollment key or a key derived from an enabled `symmetric_key`
//! group, (b) a one-time enrollment JWT (`Bearer`), (c) a manufacturer certificate chaining to
//! an `x509_ca` enrollment's CA; and, for AWS IoT fleet provisioning over MQTT only, (d) a claim
//! certificate chaining to an `aws_claim` group's claim CA. Shared by the HTTP and MQTT doors so they cannot drift apart.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;

use super::enrollments::GroupCacheError;
use super::jwt::ENROLLMENT_AUDIENCE;
use super::AuthError;
use crate::state::AppState;
use crate::usecase::groups::{self, Attestation, Group};

/// How a device proved itself.
pub struct Attested {
    /// the enrollment (group, or individual enrollment as a group of one)
    pub group: Arc<Group>,
    /// the one-time token's id, when a token was the credential
    pub jti: Option<String>,
}

/// Finds the enrollment whose key signed `token` for `registration_id`: the individual
/// enrollment of that id, else each enabled `symmetric_key` group from the decoded-group cache
/// (no per-attempt decoding, whatever the number of groups).
pub async fn attest_sas(
    state: &AppState,
    token: &str,
    resource: &str,
    registration_id: &str,
) -> Result<Option<Arc<Group>>, GroupCacheError> {
    let Ok(t) = ca::sas::SasToken::parse(token) else { return Ok(None) };
    let validity = ca::sas::Validity {
        now: state.now(),
        skew_secs: state.config.sas_skew_secs,
        max_ahead_secs: crate::auth::sas::MAX_AHEAD_SECS,
    };
    if t.check_expiry(validity).is_err() || !t.resource().eq_ignore_ascii_case(resource) {
        return Ok(None);
    }
    if t.key_name().is_some_and(|k| k != "registration") {
        return Ok(None);
    }
    let ring = state.ring();
    match groups::get(&state.store, &ring, registration_id, true).await {
        Ok(g) if g.attestation == Attestation::SymmetricKey => {
            let ok =
                t.check_signature(&g.primary).is_ok() | t.check_signature(&g.secondary).is_ok();
            if ok {
                return Ok(Some(Arc::new(g)));
            }
            // Not the individual key: a group's derived key is still a valid credential (the
            // registration rule then decides whether that group may touch this id).
        }
        Ok(_) | Err(groups::GroupError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    let snapshot = state.enrollment_groups.snapshot(&state.store, &ring).await?;
    for g in &snapshot.symmetric {
        let (p, s) = g.device_keys(registration_id);
        if t.check_signature(&p).is_ok() | t.check_signature(&s).is_ok() {
            return Ok(Some(Arc::clone(g)));
        }
    }
    Ok(None)
}

/// Attests `registration_id` by `authorization` (`SharedAccessSignature …` or `Bearer …`), or,
/// without one, by the presented TLS client `chain`.
pub async fn attest(
    state: &AppState,
    authorization: Option<&str>,
    chain: Option<&[CertificateDer<'static>]>,
    resource: &str,
    registration_id: &str,
) -> Result<Attested, AuthError> {
    let invalid = || AuthError::Invalid { claimed: Some(registration_id.to_owned()) };
    match authorization {
        None => match chain {
            Some(chain) => attest_chain(state, chain, registration_id)
                .await
                .map(|group| Attested { group, jti: None }),
            None => Err(AuthError::Missing),
        },
        Some(h) if h.starts_with("SharedAccessSignature ") => {
            match attest_sas(state, h, resource, registration_id).await {
                Ok(Some(group)) => Ok(Attested { group, jti: None }),
                _ => Err(invalid()),
            }
        }
        Some(h) if h.starts_with("Bearer ") => {
            let claims = state
                .jwt
                .verify(h["Bearer ".len()..].trim(), ENROLLMENT_AUDIENCE, state.now(), 0)
                .map_err(|_| invalid())?;
            // A token minted for one id is no credential for another.
            if claims.sub.as_deref().is_some_and(|sub| sub != registration_id) {
                return Err(invalid());
            }
            let group_id = claims.grp.ok_or(AuthError::Invalid { claimed: None })?;
            let group = groups::get(&state.store, &state.ring(), &group_id, false)
                .await
                .map_err(|_| invalid())?;
            Ok(Attested { group: Arc::new(group), jti: Some(claims.jti) })
        }
        Some(_) => Err(AuthError::UnsupportedScheme),
    }
}

/// Manufacturer-certificate attestation: the presented chain must lead to the CA of an enabled
/// `x509_ca` enrollment (individual first, then groups from the decoded-group cache) and its CN
/// must equal the registration id.
pub async fn attest_chain(
    state: &AppState,
    chain: &[CertificateDer<'static>],
    registration_id: &str,
) -> Result<Arc<Group>, AuthError> {
    let refused = || AuthError::Invalid { claimed: Some(registration_id.to_owned()) };
    let ring = state.ring();
    let mut candidates: Vec<(Arc<Group>, Vec<Vec<u8>>)> = Vec::new();
    if let Ok(g) = groups::get(&state.store, &ring, registration_id, true).await {
        if let Attestation::X509Ca(pems) = &g.attestation {
            let anchors = pems
                .iter()
                .filter_map(|p| ca::authority::certs_from_pem(p).ok())
                .flatten()
                .collect();
            candidates.push((Arc::new(g), anchors));
        }
    }
    if let Ok(snapshot) = state.enrollment_groups.snapshot(&state.store, &ring).await {
        candidates.extend(snapshot.x509.iter().map(|x| (Arc::clone(&x.group), x.anchors.clone())));
    }
    for (g, anchors) in candidates {
        if !g.enabled {
            continue;
        }
        if let Ok(identity) = crate::mtls::validate(chain, &anchors, &[], state.now()) {
            if identity.common_name.as_deref() != Some(registration_id) {
                return Err(refused());
            }
            return Ok(g);
        }
    }
    Err(refused())
}

/// AWS claim-certificate attestation (MQTT only): the presented chain must lead to a claim CA
/// of an enabled `aws_claim` group (from the decoded-group cache, in group id order: the first
/// group whose CA validates the chain is the connection's group). The claim certificate names
/// no device, so its CN is not checked; it is the `claimed` principal of a refusal.
pub async fn attest_claim(
    state: &AppState,
    chain: &[CertificateDer<'static>],
) -> Result<Arc<Group>, AuthError> {
    let claimed = chain.first().and_then(|leaf| {
        let (_, c) = x509_parser::parse_x509_certificate(leaf).ok()?;
        let cn = c.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
        Some(format!("aws-claim:{cn}"))
    });
    let refused = || AuthError::Invalid { claimed: claimed.clone() };
    let snapshot =
        state.enrollment_groups.snapshot(&state.store, &state.ring()).await.map_err(|e| {
            tracing::warn!(error = %e, "enrollment groups unreadable");
            refused()
        })?;
    let now = state.now();
    snapshot
        .aws
        .iter()
        .find(|x| x.group.enabled && crate::mtls::validate(chain, &x.anchors, &[], now).is_ok())
        .map(|x| Arc::clone(&x.group))
        .ok_or_else(refused)
}
