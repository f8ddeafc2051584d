//! AWS IoT fleet provisioning over MQTT (API.md A26, A30): the device protocol of AWS's device
//! SDKs (`IotIdentityClient`), with a claim certificate as the TLS client certificate. The
//! CONNECT's client id and username are free (the SDKs send `?SDK=…&Version=…`); the claim
//! certificate must chain to a claim CA of an enabled `aws_claim` group, which becomes the
//! connection's group.
//!
//! Requests: `$aws/certificates/create-from-csr/{json|cbor}` (CreateCertificateFromCsr),
//! `$aws/certificates/create/{json|cbor}` (CreateKeysAndCertificate: the private key is made
//! here and sent only on this connection) and
//! `$aws/provisioning-templates/{template_name}/provision/{json|cbor}` (RegisterThing, through
//! the registration core as door `aws`); each answered on its `/accepted` or `/rejected`
//! subtopic, in the request's format, with AWS's member names. Those six reply topics are the
//! only filters the connection may subscribe to and the three request topics (two formats) the
//! only ones it may publish to; anything else closes it.
//!
//! Certificates are held until RegisterThing: see [`crate::usecase::aws`].

use std::collections::BTreeMap;
use std::sync::Arc;

use mqttbytes::v4::{Connect, ConnectReturnCode};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::Reply;
use crate::http::problem::ApiError;
use crate::state::AppState;
use crate::usecase::aws::{self as held, AwsError, TokenRefusal};
use crate::usecase::groups::{Attestation, AwsClaim, Group};
use crate::usecase::register::{RegisterError, RegistrationRequest};
use crate::usecase::Actor;

/// Certificates one connection may create (a device needs one; a retry or two more).
pub const MAX_CERTIFICATES_PER_CONNECTION: u32 = 8;

/// An authenticated claim-certificate connection.
pub struct Session {
    group_id: String,
    template_name: String,
    /// random, per connection: ownership tokens are bound to it
    connection_id: String,
    /// the claim certificate chain presented at CONNECT, checked again on every request
    chain: Vec<CertificateDer<'static>>,
    addr: Option<String>,
    created: u32,
}

/// The three operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// CreateCertificateFromCsr
    CreateFromCsr,
    /// CreateKeysAndCertificate
    CreateKeys,
    /// RegisterThing
    RegisterThing,
}

/// Payload format of a request and its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON
    Json,
    /// CBOR (RFC 8949)
    Cbor,
}

/// Parses a request topic of a connection whose template is `template_name`.
pub fn parse_topic(topic: &str, template_name: &str) -> Option<(Operation, Format)> {
    let (path, format) = match topic.rsplit_once('/')? {
        (p, "json") => (p, Format::Json),
        (p, "cbor") => (p, Format::Cbor),
        _ => return None,
    };
    let op = match path {
        "$aws/certificates/create-from-csr" => Operation::CreateFromCsr,
        "$aws/certificates/create" => Operation::CreateKeys,
        _ => {
            let name =
                path.strip_prefix("$aws/provisioning-templates/")?.strip_suffix("/provision")?;
            if name != template_name {
                return None;
            }
            Operation::RegisterThing
        }
    };
    Some((op, format))
}

/// May a connection of template `template_name` subscribe to `filter`? Only the exact
/// `/accepted` and `/rejected` topics of its operations: no wildcard, no other template.
pub fn may_subscribe(filter: &str, template_name: &str) -> bool {
    filter
        .strip_suffix("/accepted")
        .or_else(|| filter.strip_suffix("/rejected"))
        .is_some_and(|request| parse_topic(request, template_name).is_some())
}

/// Authenticates a claim-certificate CONNECT. Refusal: 0x05 (counted toward the failure
/// limiter and audited, API.md A21, A30).
pub async fn connect(
    state: &AppState,
    connect: &Connect,
    chain: &[CertificateDer<'static>],
    addr: Option<String>,
) -> Result<Session, (&'static str, ConnectReturnCode)> {
    match crate::auth::device::attest_claim(state, chain).await {
        Ok(group) => match &group.attestation {
            Attestation::AwsClaim(claim) => Ok(Session {
                group_id: group.id.clone(),
                template_name: claim.template_name.clone(),
                connection_id: crate::usecase::random_hex(16),
                chain: chain.to_vec(),
                addr,
                created: 0,
            }),
            _ => Err(("aws", ConnectReturnCode::NotAuthorized)),
        },
        Err(e) => {
            let target: String =
                format!("mqtt:aws:{}", connect.client_id).chars().take(256).collect();
            let _ = crate::http::extract::refuse_at(state, addr, &target, e).await;
            Err(("aws", ConnectReturnCode::NotAuthorized))
        }
    }
}

impl Session {
    /// See [`may_subscribe`].
    pub fn may_subscribe(&self, filter: &str) -> bool {
        may_subscribe(filter, &self.template_name)
    }

    /// Answers one PUBLISH: a request → its reply on `{topic}/accepted` or `{topic}/rejected`;
    /// any other topic closes the connection.
    pub async fn publish(&mut self, state: &AppState, topic: &str, payload: &[u8]) -> Reply {
        let Some((op, format)) = parse_topic(topic, &self.template_name) else {
            return Reply::Close("foreign topic");
        };
        let before_core = |rejection: Rejection| {
            if op == Operation::RegisterThing {
                // Refused before the registration core (which counts its own outcomes).
                state.metrics.registrations.with_label_values(&["aws", "failure"]).inc();
            }
            encode(format, &rejection)
        };
        let answer: Result<Vec<u8>, Vec<u8>> = match self.current_group(state).await {
            Err(rejection) => Err(before_core(rejection)),
            Ok((group, claim)) => match op {
                Operation::CreateFromCsr | Operation::CreateKeys => self
                    .create(state, &group, op, format, payload)
                    .await
                    .map_err(|r| encode(format, &r)),
                Operation::RegisterThing => {
                    match self.register(state, group, &claim, format, payload).await {
                        Ok(from_core) => from_core,
                        Err(rejection) => Err(before_core(rejection)),
                    }
                }
            },
        };
        let (suffix, body) = match answer {
            Ok(body) => ("accepted", body),
            Err(body) => ("rejected", body),
        };
        Reply::Publish(vec![(format!("{topic}/{suffix}"), body)])
    }

    /// The connection's group as it is now: still enabled, still `aws_claim`, same template,
    /// and its claim certificate still chains to one of the group's claim CAs (a CA removed
    /// after a leak cuts off connections already open, not only new ones).
    async fn current_group(&self, state: &AppState) -> Result<(Arc<Group>, AwsClaim), Rejection> {
        let snapshot = state
            .enrollment_groups
            .snapshot(&state.store, &state.ring())
            .await
            .map_err(|e| Rejection::internal(&e))?;
        let group = snapshot
            .aws
            .iter()
            .find(|x| x.group.id == self.group_id)
            .filter(|x| crate::mtls::validate(&self.chain, &x.anchors, &[], state.now()).is_ok())
            .map(|x| x.group.clone());
        match group {
            Some(g) => match &g.attestation {
                Attestation::AwsClaim(c) if g.enabled && c.template_name == self.template_name => {
                    let claim = c.clone();
                    Ok((g, claim))
                }
                _ => Err(Rejection::new(
                    404,
                    "ResourceNotFound",
                    "the provisioning template changed",
                )),
            },
            None => Err(Rejection::new(
                403,
                "Forbidden",
                "provisioning is disabled for this enrollment group, or its claim CAs no longer \
                 include this claim certificate",
            )),
        }
    }

    /// CreateCertificateFromCsr / CreateKeysAndCertificate.
    async fn create(
        &mut self,
        state: &AppState,
        group: &Group,
        op: Operation,
        format: Format,
        payload: &[u8],
    ) -> Result<Vec<u8>, Rejection> {
        let (key, private_key) = match op {
            Operation::CreateFromCsr => {
                let body: CreateFromCsrRequest = decode(format, payload)?;
                let policy =
                    ca::CsrPolicy::key_only().with_allowed_keys(group.allowed_keys.iter().copied());
                let csr =
                    ca::VerifiedCsr::parse(body.certificate_signing_request.as_bytes(), &policy)
                        .map_err(|e| {
                            Rejection::new(400, "InvalidPayload", &format!("CSR rejected: {e}"))
                        })?;
                (csr.subject_key().clone(), None)
            }
            _ => {
                if !payload.iter().all(u8::is_ascii_whitespace) {
                    let _: CreateKeysRequest = decode(format, payload)?;
                }
                let Some(key_type) = [ca::KeyType::P256, ca::KeyType::P384, ca::KeyType::Ed25519]
                    .into_iter()
                    .find(|k| group.allowed_keys.contains(k))
                else {
                    return Err(Rejection::new(
                        400,
                        "InvalidPayload",
                        "this fleet's allowed_key_types holds no key type the server generates \
                         (p256, p384, ed25519): use CreateCertificateFromCsr",
                    ));
                };
                let (private, public) =
                    ca::issue::generate_key(key_type).map_err(|e| Rejection::internal(&e))?;
                (public, Some(private))
            }
        };
        if self.created >= MAX_CERTIFICATES_PER_CONNECTION {
            return Err(Rejection::new(
                429,
                "Throttled",
                "this connection created its certificates: reconnect to create more",
            ));
        }
        let actor = Actor { name: format!("aws-claim:{}", group.id), addr: self.addr.clone() };
        let ring = state.ring();
        let cx = crate::usecase::Ctx {
            ring: &ring,
            audit_key: &state.audit_key,
            now: state.now(),
            actor: &actor,
        };
        let authority = state.authority();
        let issued = held::create_certificate(
            &state.store,
            &cx,
            &authority,
            &state.config.public_base_url(),
            group,
            &key,
            &self.connection_id,
        )
        .await
        .map_err(Rejection::from_create)?;
        self.created += 1;
        let certificate_pem = format!(
            "{}{}",
            issued.cert.pem(),
            ca::authority::to_pem("CERTIFICATE", &issued.issuer_der)
        );
        let private_pem = private_key.as_ref().map(|k| k.to_pkcs8_pem());
        let accepted = CreateAccepted {
            certificate_id: &issued.cert.serial,
            certificate_pem: &certificate_pem,
            certificate_ownership_token: issued.token.expose_secret(),
            private_key: private_pem.as_ref().map(|p| p.as_str()),
        };
        Ok(encode(format, &accepted))
    }

    /// RegisterThing: `Ok(Ok(accepted))` or a rejection from the core (`Ok(Err)`, already
    /// counted by it); `Err` for a rejection before the core.
    async fn register(
        &mut self,
        state: &AppState,
        group: Arc<Group>,
        claim: &AwsClaim,
        format: Format,
        payload: &[u8],
    ) -> Result<Result<Vec<u8>, Vec<u8>>, Rejection> {
        let body: RegisterThingRequest = decode(format, payload)?;
        let token = Zeroizing::new(body.certificate_ownership_token);
        if token.is_empty() {
            return Err(Rejection::token("certificateOwnershipToken is empty"));
        }
        let now = state.now();
        let authority = state.authority();
        let held =
            match held::held_for_token(
                &state.store,
                &authority,
                &self.group_id,
                &self.connection_id,
                &token,
                now,
            )
            .await
            {
                Ok(Ok(h)) => h,
                Ok(Err(TokenRefusal::Invalid)) => return Err(Rejection::token(
                    "the certificate ownership token is unknown, spent, expired, or was issued \
                     to another connection",
                )),
                Ok(Err(TokenRefusal::NotHeld)) => {
                    return Err(Rejection::new(
                        409,
                        "Conflict",
                        "the certificate of this ownership token was revoked: create a new one",
                    ))
                }
                Err(e) => return Err(Rejection::internal(&e)),
            };
        let parameters = body.parameters.map(|p| p.0).unwrap_or_default();
        let Some(registration_id) = parameters.get(&claim.parameters.registration_id) else {
            return Err(Rejection::new(
                400,
                "InvalidPayload",
                &format!(
                    "parameters.{} (the registration id) is required by template {}",
                    claim.parameters.registration_id, claim.template_name
                ),
            ));
        };
        let tags: serde_json::Map<String, serde_json::Value> = claim
            .parameters
            .tags
            .iter()
            .filter_map(|name| {
                parameters.get(name).map(|v| (name.clone(), serde_json::Value::from(v.as_str())))
            })
            .collect();
        let request = RegistrationRequest {
            registration_id: registration_id.clone(),
            csr: None,
            tags: (!tags.is_empty()).then_some(tags),
            payload: None,
            held: Some(held),
        };
        let actor = Actor { name: format!("device:{registration_id}"), addr: self.addr.clone() };
        let door = crate::state::Door::device("aws");
        Ok(match state.register(door, actor, group, None, request).await {
            Ok(r) => Ok(encode(
                format,
                &RegisterAccepted {
                    thing_name: &r.device_id,
                    device_configuration: BTreeMap::new(),
                },
            )),
            Err(e) => Err(encode(format, &Rejection::from_register(e))),
        })
    }
}

/// A `/rejected` body.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Rejection {
    status_code: u16,
    error_code: &'static str,
    error_message: String,
}

impl Rejection {
    fn new(status_code: u16, error_code: &'static str, message: &str) -> Self {
        Self { status_code, error_code, error_message: message.to_owned() }
    }

    fn token(message: &str) -> Self {
        Self::new(400, "InvalidCertificateOwnershipToken", message)
    }

    /// A fixed message; the error goes to the log.
    fn internal(e: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %crate::http::problem::error_chain(e), "aws fleet provisioning failed");
        Self::new(500, "InternalError", "internal error")
    }

    /// The AWS rendering of an API error (the one error → status mapping).
    fn from_api(e: ApiError) -> Self {
        use actix_web::ResponseError as _;
        let status = e.status_code().as_u16();
        let code = match status {
            400 => "InvalidPayload",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "ResourceNotFound",
            409 => "Conflict",
            429 => "Throttled",
            503 => "ServiceUnavailable",
            _ => "InternalError",
        };
        if status >= 500 {
            let _ = e.to_problem_value(); // logs the chain
            return Self::new(status, code, "internal error");
        }
        Self::new(status, code, &e.to_string())
    }

    fn from_register(e: RegisterError) -> Self {
        match e {
            RegisterError::TokenUsed => {
                Self::token("the certificate ownership token was spent or expired meanwhile")
            }
            other => Self::from_api(other.into()),
        }
    }

    fn from_create(e: AwsError) -> Self {
        match e {
            AwsError::Csr(c) => Self::new(400, "InvalidPayload", &format!("CSR rejected: {c}")),
            AwsError::KeyCompromised => {
                Self::new(409, "Conflict", &AwsError::KeyCompromised.to_string())
            }
            AwsError::TooManyPending => {
                Self::new(429, "Throttled", &AwsError::TooManyPending.to_string())
            }
            AwsError::Issue(i) => {
                Self::from_api(ApiError::from(crate::usecase::register::RegisterError::Issue(i)))
            }
            AwsError::Store(s) => Self::from_api(ApiError::from(s)),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateFromCsrRequest {
    certificate_signing_request: String,
}

/// CreateKeysAndCertificate takes an empty object (members are ignored).
#[derive(Deserialize)]
struct CreateKeysRequest {}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterThingRequest {
    certificate_ownership_token: String,
    parameters: Option<Parameters>,
}

/// RegisterThing `parameters`: string → string, a repeated name refused (which value would
/// name the device is otherwise up to the parser).
struct Parameters(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Parameters {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Parameters;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of string parameters")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Parameters, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = m.next_entry::<String, String>()? {
                    if out.insert(k, v).is_some() {
                        return Err(serde::de::Error::custom("a parameter is repeated"));
                    }
                }
                Ok(Parameters(out))
            }
        }
        d.deserialize_map(Visitor)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateAccepted<'a> {
    certificate_id: &'a str,
    certificate_pem: &'a str,
    certificate_ownership_token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    private_key: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RegisterAccepted<'a> {
    thing_name: &'a str,
    device_configuration: BTreeMap<String, String>,
}

fn decode<T: for<'de> Deserialize<'de>>(format: Format, payload: &[u8]) -> Result<T, Rejection> {
    let r = match format {
        Format::Json => serde_json::from_slice(payload).map_err(|e| e.to_string()),
        Format::Cbor => ciborium::from_reader(payload).map_err(|e| e.to_string()),
    };
    r.map_err(|e| Rejection::new(400, "InvalidPayload", &format!("invalid payload: {e}")))
}

/// Encodes a reply. The buffer is sized up front so that a reply carrying a private key is
/// written once, not copied by reallocation, and handed on (and zeroized after sending, see
/// the connection loop) as is.
fn encode(format: Format, body: &impl Serialize) -> Vec<u8> {
    let mut out = Zeroizing::new(Vec::with_capacity(8 * 1024));
    let ok = match format {
        Format::Json => serde_json::to_writer(&mut *out, body).is_ok(),
        Format::Cbor => ciborium::into_writer(body, &mut *out).is_ok(),
    };
    if !ok {
        out.clear();
    }
    std::mem::take(&mut *out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_topics() {
        let t = "fleet-1";
        assert_eq!(
            parse_topic("$aws/certificates/create-from-csr/json", t),
            Some((Operation::CreateFromCsr, Format::Json))
        );
        assert_eq!(
            parse_topic("$aws/certificates/create/cbor", t),
            Some((Operation::CreateKeys, Format::Cbor))
        );
        assert_eq!(
            parse_topic("$aws/provisioning-templates/fleet-1/provision/json", t),
            Some((Operation::RegisterThing, Format::Json))
        );
        for foreign in [
            "$aws/provisioning-templates/other/provision/json",
            "$aws/provisioning-templates/fleet-1/provision/xml",
            "$aws/provisioning-templates/fleet-1/x/provision/json",
            "$aws/certificates/create/json/accepted",
            "$aws/things/x/shadow/update",
            "$dps/registrations/PUT/iotdps-register/?$rid=1",
            "json",
            "",
        ] {
            assert_eq!(parse_topic(foreign, t), None, "{foreign}");
        }
    }

    #[test]
    fn only_exact_reply_topics_may_be_subscribed() {
        let t = "fleet-1";
        for ok in [
            "$aws/certificates/create-from-csr/json/accepted",
            "$aws/certificates/create-from-csr/cbor/rejected",
            "$aws/certificates/create/json/accepted",
            "$aws/provisioning-templates/fleet-1/provision/cbor/accepted",
        ] {
            assert!(may_subscribe(ok, t), "{ok}");
        }
        for no in [
            "#",
            "$aws/#",
            "$aws/certificates/+/json/accepted",
            "$aws/certificates/create/json/+",
            "$aws/certificates/create/json",
            "$aws/provisioning-templates/other/provision/json/accepted",
            "$aws/provisioning-templates/+/provision/json/accepted",
            "$dps/registrations/res/#",
        ] {
            assert!(!may_subscribe(no, t), "{no}");
        }
    }

    #[test]
    fn payloads_in_both_formats_and_repeated_parameters() {
        let json = br#"{"certificateOwnershipToken":"t","parameters":{"SerialNumber":"a"}}"#;
        let r: RegisterThingRequest = decode(Format::Json, json).ok().unwrap();
        assert_eq!(r.parameters.unwrap().0["SerialNumber"], "a");
        let dup = br#"{"certificateOwnershipToken":"t","parameters":{"S":"a","S":"b"}}"#;
        assert!(decode::<RegisterThingRequest>(Format::Json, dup).is_err());
        let mut cbor = Vec::new();
        ciborium::into_writer(
            &serde_json::json!({"certificateOwnershipToken": "t", "parameters": {"S": "b"}}),
            &mut cbor,
        )
        .unwrap();
        let r: RegisterThingRequest = decode(Format::Cbor, &cbor).ok().unwrap();
        assert_eq!(r.certificate_ownership_token, "t");
        assert!(decode::<RegisterThingRequest>(Format::Cbor, b"\xff\x00garbage").is_err());
        let not_strings = br#"{"certificateOwnershipToken":"t","parameters":{"S":1}}"#;
        assert!(decode::<RegisterThingRequest>(Format::Json, not_strings).is_err());
        let reply = encode(
            Format::Cbor,
            &RegisterAccepted { thing_name: "d", device_configuration: BTreeMap::new() },
        );
        let v: serde_json::Value = ciborium::from_reader(reply.as_slice()).unwrap();
        assert_eq!(v, serde_json::json!({"thingName": "d", "deviceConfiguration": {}}));
    }
}
