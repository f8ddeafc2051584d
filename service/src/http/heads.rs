//! Request heads on kept-alive connections (API.md A25, A30: "headers within 10 s").
//!
//! actix-http times the head of a connection's *first* request only (`client_request_timeout`);
//! once a response went out, the keep-alive timer runs until the next byte arrives and then no
//! timer runs at all, so a client could trickle its second head forever. [`Watchdog`] closes
//! such connections: each connection's clock starts when its last response was finished
//! (the response body dropped) and stops when the next request reaches the application (its
//! head complete); a connection whose clock passes keep-alive + header timeout is shut down.
//! An idle kept-alive connection is closed by actix's keep-alive timer first.
//!
//! Cost: one `dup` of each connection's socket (to shut it down from outside; closed with the
//! connection), one weak reference in the watchdog's list, a sweep per second.

use std::any::Any;
use std::net::Shutdown;
use std::os::fd::AsFd as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Extensions, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::Error;

/// `awaiting` value while a request is being handled.
const IN_REQUEST: u64 = u64::MAX;

/// One connection's clock.
#[derive(Debug)]
pub struct Connection {
    socket: std::net::TcpStream,
    /// milliseconds (since the watchdog started) when the connection began waiting for a head
    awaiting: AtomicU64,
    epoch: Instant,
}

impl Connection {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(IN_REQUEST - 1)
    }

    fn request_started(&self) {
        self.awaiting.store(IN_REQUEST, Ordering::Release);
    }

    fn response_finished(&self) {
        self.awaiting.store(self.now(), Ordering::Release);
    }

    /// Whether it has waited for a head longer than `limit`.
    fn overdue(&self, limit: Duration) -> bool {
        let since = self.awaiting.load(Ordering::Acquire);
        since != IN_REQUEST && self.now().saturating_sub(since) > limit.as_millis() as u64
    }
}

/// The connection handle kept in each connection's data.
#[derive(Debug, Clone)]
pub struct ConnectionClock(Arc<Connection>);

/// Every open connection's clock.
#[derive(Debug)]
pub struct Watchdog {
    connections: Mutex<Vec<Weak<Connection>>>,
    limit: Duration,
    epoch: Instant,
}

impl Watchdog {
    /// A watchdog closing connections that wait longer than `limit` for a request head after
    /// their last response.
    pub fn new(limit: Duration) -> Self {
        Self { connections: Mutex::new(Vec::new()), limit, epoch: Instant::now() }
    }

    fn list(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Connection>>> {
        match self.connections.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// `HttpServer::on_connect`: starts the clock of a new TLS connection.
    pub fn on_connect(&self, conn: &dyn Any, ext: &mut Extensions) {
        type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
        let Some(tls) = conn.downcast_ref::<Tls>() else { return };
        let Ok(fd) = tls.get_ref().0.as_fd().try_clone_to_owned() else { return };
        let connection = Arc::new(Connection {
            socket: std::net::TcpStream::from(fd),
            awaiting: AtomicU64::new(0),
            epoch: self.epoch,
        });
        connection.response_finished();
        self.list().push(Arc::downgrade(&connection));
        ext.insert(ConnectionClock(connection));
    }

    /// Shuts down every connection overdue for a head and forgets closed ones; returns how
    /// many it shut down.
    pub fn sweep(&self) -> usize {
        let mut closed = 0;
        self.list().retain(|weak| {
            let Some(conn) = weak.upgrade() else { return false };
            if conn.overdue(self.limit) {
                let _ = conn.socket.shutdown(Shutdown::Both);
                closed += 1;
                return false;
            }
            true
        });
        closed
    }
}

/// Middleware: stops a connection's clock while its request is handled and restarts it when
/// the response is finished.
pub async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let clock = req.conn_data::<ConnectionClock>().cloned();
    if let Some(c) = &clock {
        c.0.request_started();
    }
    let res = next.call(req).await?.map_into_boxed_body();
    Ok(match clock {
        Some(clock) => res.map_body(|_, body| BoxBody::new(Finished { body, clock })),
        None => res,
    })
}

/// A response body that restarts its connection's clock when dropped (sent or abandoned).
struct Finished {
    body: BoxBody,
    clock: ConnectionClock,
}

impl Drop for Finished {
    fn drop(&mut self) {
        self.clock.0.response_finished();
    }
}

impl MessageBody for Finished {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(epoch: Instant) -> (Arc<Connection>, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let c = Arc::new(Connection { socket: server, awaiting: AtomicU64::new(0), epoch });
        (c, client)
    }

    #[test]
    fn a_connection_waiting_too_long_for_a_head_is_shut_down_one_in_a_request_is_not() {
        let dog = Watchdog::new(Duration::from_millis(50));
        let (waiting, mut waiting_client) = connection(dog.epoch);
        let (busy, _busy_client) = connection(dog.epoch);
        waiting.response_finished();
        busy.request_started();
        dog.list().push(Arc::downgrade(&waiting));
        dog.list().push(Arc::downgrade(&busy));
        assert_eq!(dog.sweep(), 0, "not overdue yet");
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(dog.sweep(), 1);
        use std::io::Read as _;
        let mut buf = [0u8; 1];
        assert_eq!(waiting_client.read(&mut buf).unwrap(), 0, "the client sees the close");
        assert_eq!(dog.list().len(), 1, "the shut connection is forgotten");
        drop(busy);
        dog.sweep();
        assert!(dog.list().is_empty(), "closed connections are forgotten");
    }
}
