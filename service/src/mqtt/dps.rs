//! Azure DPS over MQTT (API.md A26): the device protocol of Azure's device SDKs. CONNECT client
//! id = registration id, username `{id_scope}/registrations/{id}/api-version=…[&ClientVersion=…]`,
//! password = the SAS token the HTTPS DPS API accepts (or an enrollment JWT `Bearer …`), or no
//! password and a TLS client certificate. Requests and their answers are those of
//! [`crate::dps`], the one DPS implementation behind both doors.

use mqttbytes::v4::{Connect, ConnectReturnCode};
use rustls_pki_types::CertificateDer;

use super::{query_pairs, Reply};
use crate::auth::device::{self, Attested};
use crate::state::AppState;

/// The only filter a DPS connection may subscribe to.
pub const RESPONSE_FILTER: &str = "$dps/registrations/res/#";
const REGISTER: &str = "$dps/registrations/PUT/iotdps-register/";
const OPERATION: &str = "$dps/registrations/GET/iotdps-get-operationstatus/";
/// Oldest DPS API version served.
const MIN_API_VERSION: &str = "2019-03-31";

/// An authenticated DPS connection. It keeps the credential it connected with and attests
/// again on every request, like the HTTPS door: a group disabled, deleted or re-keyed, or a
/// SAS token expired, after CONNECT refuses the next request (the group cache is at most 1 s
/// old), instead of serving the enrollment as it was at CONNECT for the life of the connection.
pub struct Session {
    registration_id: String,
    resource: String,
    password: Option<zeroize::Zeroizing<String>>,
    chain: Option<Vec<CertificateDer<'static>>>,
    addr: Option<String>,
}

impl Session {
    async fn attest(&self, state: &AppState) -> Result<Attested, crate::auth::AuthError> {
        let password = self.password.as_deref().map(String::as_str);
        device::attest(
            state,
            password,
            self.chain.as_deref(),
            &self.resource,
            &self.registration_id,
        )
        .await
    }
}

/// A DPS request, from its PUBLISH topic.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// register (body = the HTTPS register body)
    Register {
        /// request id, echoed in the answer's topic
        rid: String,
    },
    /// operation status
    Status {
        /// request id
        rid: String,
        /// operation id
        operation_id: String,
    },
}

/// Parses a DPS request topic; `None` for any other topic.
pub fn parse_topic(topic: &str) -> Option<Request> {
    let (path, query) = topic.split_once('?')?;
    let pairs = query_pairs(query)?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let rid = get("$rid").filter(|r| valid_rid(r))?;
    match path {
        REGISTER => Some(Request::Register { rid }),
        OPERATION => {
            let operation_id = get("operationId").filter(|o| !o.is_empty() && o.len() <= 256)?;
            Some(Request::Status { rid, operation_id })
        }
        _ => None,
    }
}

/// A request id is echoed into a topic name: short, printable, no wildcard or separator.
fn valid_rid(rid: &str) -> bool {
    !rid.is_empty()
        && rid.len() <= 128
        && rid.chars().all(|c| c.is_ascii_graphic() && !matches!(c, '+' | '#' | '/' | '&' | '?'))
}

/// Parses the CONNECT username: `(id_scope, registration_id)`.
pub fn parse_username(username: &str) -> Option<(&str, &str)> {
    let (scope, rest) = username.split_once("/registrations/")?;
    let (id, query) = rest.split_once('/')?;
    let pairs = query_pairs(query)?;
    let version = pairs.iter().find(|(k, _)| k == "api-version").map(|(_, v)| v.as_str())?;
    let date = version.get(..10)?;
    (date.len() == 10 && date >= MIN_API_VERSION).then_some((scope, id))
}

/// May a DPS connection subscribe to `filter`?
pub fn may_subscribe(filter: &str) -> bool {
    filter == RESPONSE_FILTER
}

/// Authenticates a DPS CONNECT. Refusals: 0x04 malformed username, 0x02 client id ≠
/// registration id, 0x05 unknown scope or wrong credential (counted toward the failure
/// limiter and audited, API.md A21, A30).
pub async fn connect(
    state: &AppState,
    connect: &Connect,
    chain: Option<&[CertificateDer<'static>]>,
    addr: Option<String>,
) -> Result<Session, (&'static str, ConnectReturnCode)> {
    let refused = |code| Err(("dps", code));
    let Some(login) = &connect.login else {
        return refused(ConnectReturnCode::BadUserNamePassword);
    };
    let Some((scope, id)) = parse_username(&login.username) else {
        return refused(ConnectReturnCode::BadUserNamePassword);
    };
    let Ok(id) = crate::ids::from_path("registration id", id) else {
        return refused(ConnectReturnCode::BadClientId);
    };
    if connect.client_id != id {
        return refused(ConnectReturnCode::BadClientId);
    }
    let password = Some(login.password.as_str()).filter(|p| !p.is_empty());
    let resource = format!("{scope}/registrations/{id}");
    let attested = if scope == state.config.id_scope {
        device::attest(state, password, chain, &resource, &id).await
    } else {
        Err(crate::auth::AuthError::Invalid { claimed: Some(id.clone()) })
    };
    match attested {
        Ok(_) => Ok(Session {
            registration_id: id,
            resource,
            password: password.map(|p| zeroize::Zeroizing::new(p.to_owned())),
            chain: chain.map(<[_]>::to_vec),
            addr,
        }),
        Err(e) => {
            let target: String = format!("mqtt:{}", login.username).chars().take(256).collect();
            let _ = crate::http::extract::refuse_at(state, addr, &target, e).await;
            refused(ConnectReturnCode::NotAuthorized)
        }
    }
}

impl Session {
    /// Answers one PUBLISH: a DPS request → its answer on the response topic; anything else
    /// closes the connection.
    pub async fn publish(&mut self, state: &AppState, topic: &str, payload: &[u8]) -> Reply {
        let Some(request) = parse_topic(topic) else { return Reply::Close("foreign topic") };
        let Ok(attested) = self.attest(state).await else {
            return Reply::Close("the connection's credential is no longer valid");
        };
        let id = self.registration_id.clone();
        let (rid, answer) = match request {
            Request::Register { rid } => {
                let answer = crate::dps::register(
                    state,
                    "dps_mqtt",
                    self.addr.clone(),
                    attested,
                    id,
                    payload,
                )
                .await;
                (rid, answer)
            }
            Request::Status { rid, operation_id } => {
                (rid, crate::dps::operation(state, &attested, &id, &operation_id).await)
            }
        };
        let mut topic = format!("$dps/registrations/res/{}/?$rid={rid}", answer.status);
        if let Some(s) = answer.retry_after {
            topic.push_str(&format!("&retry-after={s}"));
        }
        Reply::Publish(vec![(topic, answer.body.to_string().into_bytes())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_of_the_sdks() {
        let py = "0ne00000001/registrations/dev-1/api-version=2019-03-31&ClientVersion=azure-iot-device-provisioning%2F2.14.0";
        assert_eq!(parse_username(py), Some(("0ne00000001", "dev-1")));
        let node = "0ne00000001/registrations/dev-1/api-version=2019-03-31&ClientVersion=azure-iot-provisioning-device%2F1.9.1%20(node%20v20)";
        assert_eq!(parse_username(node), Some(("0ne00000001", "dev-1")));
        assert_eq!(parse_username("0ne00000001/registrations/dev-1/api-version=2018-11-01"), None);
        assert_eq!(parse_username("0ne00000001/registrations/dev-1"), None);
    }

    #[test]
    fn request_topics() {
        assert_eq!(
            parse_topic("$dps/registrations/PUT/iotdps-register/?$rid=42"),
            Some(Request::Register { rid: "42".into() })
        );
        assert_eq!(
            parse_topic(
                "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=7&operationId=op-1"
            ),
            Some(Request::Status { rid: "7".into(), operation_id: "op-1".into() })
        );
        assert_eq!(parse_topic("$dps/registrations/PUT/iotdps-register/?$rid=a/b"), None);
        assert_eq!(parse_topic("$dps/registrations/PUT/iotdps-register/"), None);
        assert_eq!(parse_topic("$aws/certificates/create/json"), None);
    }
}
