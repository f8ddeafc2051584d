//! Request bodies on a clock, and the error answers actix writes itself in our formats
//! (API.md A10, A25, A30).
//!
//! [`bodies`] wraps every request's payload ([`TimedPayload`]): while the server waits to read,
//! each chunk must arrive within the idle timeout, and a whole body (except an NDJSON stream)
//! within the total timeout, both `request_body_timeout_secs` (default 30 s). Time the server
//! spends not reading (a handler busy, an NDJSON answer waiting to be read, a read that only
//! peeks with `now_or_never`) does not count toward the idle timeout. On
//! expiry the read fails with an I/O `TimedOut` error ([`is_body_timeout`]) and, when the answer
//! has not started yet, it becomes 408 and the connection closes.
//!
//! It also renders error answers that actix makes without our error type — a body over the
//! `web::Bytes` limit (413), a body read that failed — as
//! problem+json, or as DPS's error body on the DPS routes (`/{id_scope}/registrations/…`).
//!
//! What cannot be rendered here: actix-http's HTTP/1 codec answers a request head over 128 KiB
//! (or with more than 96 headers) with an empty 431, and a head that does not arrive within
//! `client_request_timeout` (10 s) with an empty 408, both before any routing, and closes the
//! connection; a malformed head gets an empty 400. actix's head timer covers the first request
//! of a connection; `http::heads` closes a connection whose later head is late.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{web, Error, HttpMessage as _, ResponseError as _};
use futures_util::Stream;
use tokio::time::Sleep;

use super::problem::{ApiError, PROBLEM_JSON};
use crate::state::AppState;

/// What `Payload::Stream` holds (actix-http's `BoxedPayloadStream`).
type BoxedStream = Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>;

/// A request payload whose reads time out.
pub struct TimedPayload {
    inner: Payload,
    idle: Duration,
    total: Option<Duration>,
    /// armed by the first read
    deadline: Option<Pin<Box<Sleep>>>,
    /// armed while a read waits for data (with that reader's waker), cleared when data arrives
    waiting: Option<(Pin<Box<Sleep>>, std::task::Waker)>,
    timed_out: Arc<AtomicBool>,
    done: bool,
}

impl TimedPayload {
    /// Wraps `inner`: each chunk within `idle` of the read that waits for it, the whole body
    /// within `total` (if any) of the first read; `timed_out` is set when either expires.
    pub fn new(
        inner: Payload,
        idle: Duration,
        total: Option<Duration>,
        timed_out: Arc<AtomicBool>,
    ) -> Self {
        Self { inner, idle, total, deadline: None, waiting: None, timed_out, done: false }
    }
}

impl Stream for TimedPayload {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let (None, Some(total)) = (&this.deadline, this.total) {
            this.deadline = Some(Box::pin(tokio::time::sleep(total)));
        }
        if let Poll::Ready(item) = Pin::new(&mut this.inner).poll_next(cx) {
            this.waiting = None;
            this.done = item.is_none();
            return Poll::Ready(item);
        }
        // The idle clock runs while one reader waits: armed by a read that found nothing,
        // restarted when another waker reads (the reader had not been waiting in between),
        // never armed by a peek (`now_or_never`, a no-op waker), which does not wait at all.
        let waker = cx.waker();
        let peek = futures_util::task::noop_waker_ref().will_wake(waker);
        let idle_over = if peek {
            this.waiting = None;
            false
        } else {
            let same_reader = this.waiting.as_ref().is_some_and(|(_, w)| w.will_wake(waker));
            if !same_reader {
                this.waiting = Some((Box::pin(tokio::time::sleep(this.idle)), waker.clone()));
            }
            this.waiting.as_mut().is_some_and(|(sleep, _)| sleep.as_mut().poll(cx).is_ready())
        };
        let total_over = this.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
        if idle_over || total_over {
            this.done = true;
            this.timed_out.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request body timed out",
            )))));
        }
        Poll::Pending
    }
}

/// Whether a payload error is [`TimedPayload`]'s timeout (for handlers that stream a body, such
/// as NDJSON: end the answer and let the connection close).
pub fn is_body_timeout(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// Middleware: body timeouts, and error answers in the format of their route.
pub async fn bodies(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let secs = req
        .app_data::<web::Data<AppState>>()
        .map_or(30, |s| s.config.request_body_timeout_secs.max(1));
    let timeout = Duration::from_secs(secs);
    let streaming =
        req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
            ct.trim_start().to_ascii_lowercase().starts_with("application/x-ndjson")
        });
    let timed_out = Arc::new(AtomicBool::new(false));
    let payload = req.take_payload();
    let total = (!streaming).then_some(timeout);
    let timed = TimedPayload::new(payload, timeout, total, timed_out.clone());
    req.set_payload(Payload::from(Box::pin(timed) as BoxedStream));
    // An `Err` comes from the guard (an `ApiError`, problem+json already) before any body read;
    // the request cannot be kept to render it here (routing needs it unshared).
    let res = next.call(req).await?.map_into_boxed_body();
    Ok(render(res, timed_out.load(Ordering::Acquire), secs))
}

/// The DPS routes answer DPS's error body, every other route problem+json.
fn is_dps_route(pattern: Option<&str>) -> bool {
    pattern.is_some_and(|p| p.starts_with("/{id_scope}/registrations/"))
}

/// `timeout`: the body timeout in seconds, named in a 408's detail.
fn render(
    res: ServiceResponse<BoxBody>,
    timed_out: bool,
    timeout: u64,
) -> ServiceResponse<BoxBody> {
    let status = if timed_out { StatusCode::REQUEST_TIMEOUT } else { res.status() };
    if !status.is_client_error() && !status.is_server_error() {
        return res;
    }
    let dps = is_dps_route(res.request().match_pattern().as_deref());
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let right_format = if dps {
        content_type.starts_with("application/json")
    } else {
        content_type.starts_with(PROBLEM_JSON)
    };
    if right_format && !timed_out {
        return res;
    }
    let detail = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "request body too large".to_owned(),
        StatusCode::REQUEST_TIMEOUT => ApiError::RequestTimeout(timeout).to_string(),
        other => other.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let mut answer = if dps {
        super::registrations::dps_error(status, u32::from(status.as_u16()) * 1000 + 1, &detail)
    } else if timed_out {
        ApiError::RequestTimeout(timeout).error_response()
    } else {
        let title = status.canonical_reason().unwrap_or("Error");
        let slug = title.to_ascii_lowercase().replace(' ', "-");
        super::problem::problem(status, &slug, title, &detail)
    };
    // Keep what the original answer said about retrying and authenticating.
    for name in [header::RETRY_AFTER, header::WWW_AUTHENTICATE, header::ALLOW] {
        if let Some(v) = res.headers().get(&name) {
            answer.headers_mut().insert(name, v.clone());
        }
    }
    if timed_out {
        answer.head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
        answer.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res.into_response(answer.map_into_boxed_body())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;

    fn stalled() -> Payload {
        let s: BoxedStream = Box::pin(futures_util::stream::pending());
        Payload::from(s)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_times_out_after_the_idle_timeout() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut p = TimedPayload::new(stalled(), Duration::from_secs(30), None, flag.clone());
        let started = tokio::time::Instant::now();
        let item = p.next().await.unwrap();
        assert!(is_body_timeout(&item.unwrap_err()));
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert!(flag.load(Ordering::Acquire));
        assert!(p.next().await.is_none(), "ends after the timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_body_times_out_after_the_total_timeout() {
        // One byte every 10 s never trips the idle timeout, but the whole body must arrive
        // within 25 s.
        let trickle = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Some((Ok::<_, PayloadError>(Bytes::from_static(b"{")), ()))
        });
        let s: BoxedStream = Box::pin(trickle);
        let flag = Arc::new(AtomicBool::new(false));
        let mut p = TimedPayload::new(
            Payload::from(s),
            Duration::from_secs(30),
            Some(Duration::from_secs(25)),
            flag,
        );
        let started = tokio::time::Instant::now();
        let mut chunks = 0;
        while let Some(item) = p.next().await {
            match item {
                Ok(_) => chunks += 1,
                Err(e) => {
                    assert!(is_body_timeout(&e));
                    break;
                }
            }
        }
        assert_eq!(chunks, 2);
        assert_eq!(started.elapsed(), Duration::from_secs(25));
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_server_spends_not_reading_does_not_count() {
        let chunks = futures_util::stream::iter([
            Ok::<_, PayloadError>(Bytes::from_static(b"a\n")),
            Ok(Bytes::from_static(b"b\n")),
        ]);
        let s: BoxedStream = Box::pin(chunks);
        let flag = Arc::new(AtomicBool::new(false));
        let mut p = TimedPayload::new(Payload::from(s), Duration::from_secs(30), None, flag);
        assert!(p.next().await.unwrap().is_ok());
        // The handler is busy (answers waiting to be read) for longer than the idle timeout.
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(p.next().await.unwrap().is_ok());
        assert!(p.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_peek_does_not_start_the_idle_clock() {
        use futures_util::FutureExt as _;
        // NDJSON: the handler peeks for more input, then waits a long time for the client to
        // read its answers, then reads again; the body is still alive.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, PayloadError>>();
        let rx =
            futures_util::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|i| (i, rx)) });
        let s: BoxedStream = Box::pin(rx);
        let flag = Arc::new(AtomicBool::new(false));
        let mut p = TimedPayload::new(Payload::from(s), Duration::from_secs(30), None, flag);
        assert!(p.next().now_or_never().is_none(), "nothing yet");
        tokio::time::sleep(Duration::from_secs(120)).await;
        // The next line arrives a second after the handler reads again.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send(Ok(Bytes::from_static(b"x\n"))).unwrap();
        });
        assert!(p.next().await.unwrap().is_ok());
        assert!(p.next().await.is_none());
    }

    #[test]
    fn dps_routes_are_recognized_by_their_template() {
        assert!(is_dps_route(Some("/{id_scope}/registrations/{registration_id}/register")));
        assert!(is_dps_route(Some("/{id_scope}/registrations/{registration_id}")));
        assert!(!is_dps_route(Some("/v1/registrations/{registration_id}")));
        assert!(!is_dps_route(None));
    }
}
