//! The MQTT device endpoint (API.md A26, A30): MQTT 3.1.1 over TLS, an **endpoint, not a
//! broker**. Each connection authenticates for one personality — Azure DPS ([`dps`]: a DPS
//! username) or AWS IoT fleet provisioning ([`aws`]: no DPS username, a claim certificate) —
//! and may then subscribe and publish only that protocol's topics; every answer goes to the connection that asked, nothing is
//! relayed between connections, nothing of a session outlives its connection. A CONNECT that
//! is for no personality is refused with 0x05.
//!
//! Limits: [`MAX_CONNECTIONS`] open connections (more are closed at accept), packets of at most
//! [`codec::MAX_PACKET`] bytes, one request in flight per connection (the next packet is read
//! only once the current one is answered, so a flood waits in the client's TCP window), CONNECT
//! within [`CONNECT_TIMEOUT`] of the TCP accept, and 1.5 × keep-alive without a packet closes an
//! authenticated connection. Any protocol violation — a malformed or oversize packet, a foreign
//! topic, QoS 2, a second CONNECT — closes the connection without an answer.

pub mod aws;
pub mod codec;
pub mod dps;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use bytes::BytesMut;
use mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use mqttbytes::QoS;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{watch, Semaphore};

use crate::state::AppState;

/// Open connections at most; further ones are closed as they are accepted.
pub const MAX_CONNECTIONS: usize = 20_000;
/// TLS handshake and CONNECT must both arrive within this time of the TCP accept.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive used when the client asks for none (0), and the longest one honoured.
const DEFAULT_KEEP_ALIVE_SECS: u64 = 60;
const MAX_KEEP_ALIVE_SECS: u64 = 1_200;
/// A write the client does not take within this time closes the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection sends back for one packet, or that it must be closed.
#[derive(Debug)]
pub enum Reply {
    /// publish these (topic, payload) to this connection, at QoS 0
    Publish(Vec<(String, Vec<u8>)>),
    /// close the connection without an answer (a protocol or topic violation)
    Close(&'static str),
}

/// One authenticated connection's protocol.
enum Session {
    Aws(aws::Session),
    Dps(dps::Session),
}

impl Session {
    fn name(&self) -> &'static str {
        match self {
            Session::Aws(_) => "aws",
            Session::Dps(_) => "dps",
        }
    }

    fn may_subscribe(&self, filter: &str) -> bool {
        match self {
            Session::Aws(s) => s.may_subscribe(filter),
            Session::Dps(_) => dps::may_subscribe(filter),
        }
    }

    async fn publish(&mut self, state: &AppState, topic: &str, payload: &[u8]) -> Reply {
        match self {
            Session::Aws(s) => s.publish(state, topic, payload).await,
            Session::Dps(s) => s.publish(state, topic, payload).await,
        }
    }
}

/// A running MQTT listener.
pub struct Endpoint {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    slots: Arc<Semaphore>,
}

impl Endpoint {
    /// Starts accepting on `listener` (already bound and listening) with the server's TLS
    /// configuration.
    pub fn start(
        state: web::Data<AppState>,
        listener: std::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (shutdown, stop) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::spawn(accept_loop(state, listener, acceptor, slots.clone(), stop));
        Ok(Self { addr, shutdown, slots })
    }

    /// The bound address (the real port when listening on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets every connection finish the request it is answering and close,
    /// waiting at most `grace`.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(grace, self.slots.acquire_many(all)).await;
    }
}

async fn accept_loop(
    state: web::Data<AppState>,
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    state.metrics.mqtt_connects.with_label_values(&["none", "over_limit"]).inc();
                    drop(tcp);
                    continue;
                };
                let (state, acceptor, stop) = (state.clone(), acceptor.clone(), stop.clone());
                tokio::spawn(async move {
                    state.metrics.mqtt_open.inc();
                    serve_connection(&state, &acceptor, tcp, peer, stop).await;
                    state.metrics.mqtt_open.dec();
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "mqtt accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

type Tls = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// One connection's byte stream, cut into packets by [`codec`].
struct Conn {
    io: Tls,
    buf: BytesMut,
    out: BytesMut,
}

#[derive(Debug)]
enum ReadError {
    Closed,
    Malformed(codec::Malformed),
}

impl Conn {
    async fn next(&mut self) -> Result<Packet, ReadError> {
        loop {
            match codec::decode(&mut self.buf) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(ReadError::Malformed(e)),
            }
            if self.buf.capacity() - self.buf.len() < 512 {
                self.buf.reserve(2048);
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Err(ReadError::Closed),
                Ok(_) => {}
            }
        }
    }

    async fn send(&mut self, packets: &[Packet]) -> bool {
        self.out.clear();
        for p in packets {
            if codec::encode(p, &mut self.out).is_err() {
                return false;
            }
        }
        let write = async {
            self.io.write_all(&self.out).await?;
            self.io.flush().await
        };
        let ok = matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())));
        // Idle connections hold no write buffer; what it held (replies may carry a private
        // key) is wiped first.
        zeroize::Zeroize::zeroize(&mut self.out[..]);
        self.out = BytesMut::new();
        ok
    }
}

/// TLS, CONNECT, authentication, then packets until the client leaves, breaks a rule, goes
/// quiet for 1.5 × keep-alive, or the server shuts down.
async fn serve_connection(
    state: &AppState,
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let Ok(Ok(io)) = tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await else {
        return;
    };
    let chain: Option<Vec<CertificateDer<'static>>> = io
        .get_ref()
        .1
        .peer_certificates()
        .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect());
    let mut conn = Conn { io, buf: BytesMut::new(), out: BytesMut::new() };
    run(state, &mut conn, chain, deadline, peer, stop).await;
    // close_notify, so clients see an orderly close rather than a truncated stream
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.io.shutdown()).await;
}

async fn run(
    state: &AppState,
    conn: &mut Conn,
    chain: Option<Vec<CertificateDer<'static>>>,
    deadline: tokio::time::Instant,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let connect = match tokio::time::timeout_at(deadline, conn.next()).await {
        Ok(Ok(Packet::Connect(c))) => c,
        Ok(Err(ReadError::Malformed(codec::Malformed::ProtocolLevel))) => {
            let refuse = ConnAck::new(ConnectReturnCode::RefusedProtocolVersion, false);
            conn.send(&[Packet::ConnAck(refuse)]).await;
            return;
        }
        _ => return,
    };
    let addr = Some(peer.ip().to_string());
    let attempt = match connect.login.as_ref() {
        Some(login) if login.username.contains("/registrations/") => {
            // Boxed, like the publish below: a connection's task is as large as its largest
            // await, and the registration core's futures would make every idle one carry them.
            Box::pin(dps::connect(state, &connect, chain.as_deref(), addr.clone()))
                .await
                .map(Session::Dps)
        }
        // No DPS username: a claim certificate (AWS SDKs send any client id, and a username
        // such as `?SDK=PythonV2&Version=…`).
        _ => match chain.as_deref() {
            Some(chain) => {
                Box::pin(aws::connect(state, &connect, chain, addr.clone())).await.map(Session::Aws)
            }
            None => Err(("none", ConnectReturnCode::NotAuthorized)),
        },
    };
    let mut session = match attempt {
        Ok(s) => s,
        Err((personality, code)) => {
            state.metrics.mqtt_connects.with_label_values(&[personality, "refused"]).inc();
            conn.send(&[Packet::ConnAck(ConnAck::new(code, false))]).await;
            return;
        }
    };
    state.metrics.mqtt_connects.with_label_values(&[session.name(), "accepted"]).inc();
    if !conn.send(&[Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false))]).await {
        return;
    }
    let keep_alive = match u64::from(connect.keep_alive) {
        0 => DEFAULT_KEEP_ALIVE_SECS,
        k => k.min(MAX_KEEP_ALIVE_SECS),
    };
    let idle = Duration::from_millis(keep_alive * 1_500);
    loop {
        if *stop.borrow() {
            return;
        }
        let packet = tokio::select! {
            _ = stop.changed() => return,
            p = tokio::time::timeout(idle, conn.next()) => p,
        };
        let Ok(Ok(packet)) = packet else { return };
        let answer = match packet {
            Packet::PingReq => vec![Packet::PingResp],
            Packet::Disconnect => return,
            Packet::PubAck(_) => Vec::new(),
            Packet::Subscribe(s) => {
                if !s.filters.iter().all(|f| session.may_subscribe(&f.path)) {
                    tracing::debug!(%peer, "mqtt: foreign subscription; closing");
                    return;
                }
                let granted = s
                    .filters
                    .iter()
                    .map(|f| {
                        SubscribeReasonCode::Success(match f.qos {
                            QoS::AtMostOnce => QoS::AtMostOnce,
                            _ => QoS::AtLeastOnce,
                        })
                    })
                    .collect();
                vec![Packet::SubAck(SubAck::new(s.pkid, granted))]
            }
            Packet::Unsubscribe(u) => vec![Packet::UnsubAck(UnsubAck::new(u.pkid))],
            Packet::Publish(p) => {
                if p.qos == QoS::ExactlyOnce {
                    return;
                }
                let replies = match Box::pin(session.publish(state, &p.topic, &p.payload)).await {
                    Reply::Publish(r) => r,
                    Reply::Close(why) => {
                        tracing::debug!(%peer, why, "mqtt: closing");
                        return;
                    }
                };
                let mut out = Vec::with_capacity(replies.len() + 1);
                if p.qos == QoS::AtLeastOnce {
                    out.push(Packet::PubAck(PubAck::new(p.pkid)));
                }
                out.extend(replies.into_iter().map(|(topic, payload)| {
                    Packet::Publish(Publish::new(topic, QoS::AtMostOnce, payload))
                }));
                out
            }
            // A second CONNECT, or a packet only a server sends.
            _ => return,
        };
        let sent = answer.is_empty() || conn.send(&answer).await;
        // Replies may carry a private key (CreateKeysAndCertificate): their bytes are wiped
        // once written (the encoded copy in `conn.send`, the payloads here).
        for packet in answer {
            if let Packet::Publish(p) = packet {
                let mut bytes: Vec<u8> = p.payload.into();
                zeroize::Zeroize::zeroize(&mut bytes);
            }
        }
        if !sent {
            return;
        }
        // An idle connection keeps no read buffer (10,000 idle devices, API.md A26 bench).
        if conn.buf.is_empty() {
            conn.buf = BytesMut::new();
        }
    }
}

/// Percent-decodes one query value (`%2F` → `/`); `None` if it is not UTF-8.
fn query_value(v: &str) -> Option<String> {
    percent_encoding::percent_decode_str(v).decode_utf8().ok().map(|c| c.into_owned())
}

/// The `key=value` pairs of a topic's `?…` part, decoded.
pub(crate) fn query_pairs(query: &str) -> Option<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((query_value(k)?, query_value(v)?))
        })
        .collect()
}
