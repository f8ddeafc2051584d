//! The NDJSON stream pipeline of a factory line's batch, whatever frames it: the door sends
//! chunks of raw lines ([`Input`]) as they arrive and renders each chunk's [`LineOutcome`]s.
//! Two stages: each chunk's CPU work (parse, CSR proof of possession, signing) starts on the
//! blocking pool as soon as the chunk is complete; the committer stores chunks in order, one
//! transaction each, and hands their outcomes on only after the commit. So the next chunks are
//! verified and signed while the current one commits. Two chunks commit at a time; a [`Turn`]
//! decides how far they overlap (on PostgreSQL one inserts its rows while the one before takes
//! the audit head and commits; on SQLite, one writer, the second waits for the first).
//!
//! The pipeline takes explicit handles ([`Handles`]), not the server's state.

use futures_util::StreamExt as _;

use super::*;
use crate::clock::Clock;

/// What the pipeline uses of the server.
#[derive(Clone)]
pub struct Handles {
    /// the database
    pub store: Store,
    /// the audit chain key
    pub audit_key: Arc<AuditKey>,
    /// time
    pub clock: Arc<dyn Clock>,
    /// the master key ring in effect when a chunk commits (rotations apply to later chunks)
    pub ring: Arc<dyn Fn() -> Arc<KeyRing> + Send + Sync>,
}

/// A door's line parser: the request, or the line's registration id (if it can tell) and why
/// the line is unreadable.
pub type ParseLine = fn(&[u8]) -> Result<RegistrationRequest, (Option<String>, String)>;

/// One batch: its enrollment, who sends it, and how lines are read.
pub struct Batch {
    /// server handles
    pub handles: Handles,
    /// the CA as of the request (every line is signed by the same intermediate)
    pub authority: Arc<Authority>,
    /// the enrollment group
    pub group: Arc<Group>,
    /// who sends the batch
    pub actor: Actor,
    /// the caller's scope (lines outside it are refused)
    pub scope: Option<Arc<Scope>>,
    /// base of the certificates' CRL / OCSP URLs
    pub base_url: String,
    /// the door's line parser
    pub parse: ParseLine,
}

/// What the door sends: a chunk of lines, or the end of the batch with a reason (`T`, the
/// door's own error) that is handed back after the lines before it.
pub enum Input<T> {
    /// raw lines, in order
    Lines(Vec<Vec<u8>>),
    /// the batch ends here
    Stop(T),
}

/// The outcome of one line, in input order.
pub enum LineOutcome<T> {
    /// registered (or a retry answered with the stored registration)
    Registered(Box<Registered>, String),
    /// refused; nothing stored for this line
    Refused(RegisterError, String),
    /// not a registration line
    Unreadable(Option<String>, String),
    /// the pipeline itself failed (a worker panicked, say); the batch stops
    Failed(String),
    /// the door's stop reason, after every line before it
    Stop(T),
}

/// One line after the CPU stage.
// Nearly every line is a `Request`: boxing it would only add an allocation per line.
#[allow(clippy::large_enum_variant)]
enum PreparedLine {
    Unreadable(Option<String>, String),
    Request(String, Result<Prepared, RegisterError>),
}

enum Preparing<T> {
    Lines(Vec<tokio::task::JoinHandle<Vec<PreparedLine>>>),
    Stop(T),
}

impl Batch {
    /// Runs the batch: reads `input` until it ends, hands each chunk's outcomes to `sink` in
    /// order (`sink` returns false when nobody listens any more, which stops the batch).
    pub async fn run<T: Send + 'static>(
        self: Arc<Self>,
        mut input: tokio::sync::mpsc::Receiver<Input<T>>,
        mut sink: impl FnMut(Vec<LineOutcome<T>>) -> bool,
    ) {
        // At most two chunks in the CPU stage ahead of the committer.
        let (jobs, queue) = tokio::sync::mpsc::channel::<Preparing<T>>(2);
        let preparer = self.clone();
        tokio::spawn(async move {
            while let Some(next) = input.recv().await {
                let job = match next {
                    Input::Lines(lines) => preparer.prepare(lines),
                    Input::Stop(t) => Preparing::Stop(t),
                };
                if jobs.send(job).await.is_err() {
                    return;
                }
            }
        });
        let mut turns = Turns::default();
        let chunks = futures_util::stream::unfold(queue, |mut queue| async move {
            queue.recv().await.map(|chunk| (chunk, queue))
        });
        // Each commit is its own task, so it goes on while outcomes wait to be taken.
        let mut committed = std::pin::pin!(chunks
            .map(|chunk| {
                let (batch, turn) = (self.clone(), turns.next_turn());
                tokio::spawn(async move { batch.commit(chunk, turn).await })
            })
            .buffered(2));
        while let Some(done) = committed.next().await {
            let outcomes = done.unwrap_or_else(|e| vec![LineOutcome::Failed(e.to_string())]);
            let stop =
                outcomes.iter().any(|o| matches!(o, LineOutcome::Stop(_) | LineOutcome::Failed(_)));
            if !sink(outcomes) || stop {
                return;
            }
        }
    }

    /// Starts the CPU stage of a chunk, split across the cores.
    fn prepare<T>(&self, lines: Vec<Vec<u8>>) -> Preparing<T> {
        let parts = std::thread::available_parallelism().map_or(2, usize::from).clamp(1, 8);
        let per_part = lines.len().div_ceil(parts).max(1);
        let now = self.handles.clock.now();
        let mut handles = Vec::new();
        let mut lines = lines.into_iter().peekable();
        while lines.peek().is_some() {
            let part: Vec<Vec<u8>> = lines.by_ref().take(per_part).collect();
            let (group, authority) = (self.group.clone(), self.authority.clone());
            let (base_url, scope, parse) = (self.base_url.clone(), self.scope.clone(), self.parse);
            handles.push(tokio::task::spawn_blocking(move || {
                part.iter()
                    .map(|line| match parse(line) {
                        Ok(req) => {
                            let id = req.registration_id.clone();
                            let scope = scope.as_deref();
                            PreparedLine::Request(
                                id,
                                prepare(&group, &authority, &base_url, scope, req, now),
                            )
                        }
                        Err((id, why)) => PreparedLine::Unreadable(id, why),
                    })
                    .collect()
            }));
        }
        Preparing::Lines(handles)
    }

    /// Stores a prepared chunk in one group-committed transaction, in `turn`; one outcome per
    /// input line, in order, made only after the commit.
    async fn commit<T>(&self, chunk: Preparing<T>, turn: Turn) -> Vec<LineOutcome<T>> {
        let handles = match chunk {
            Preparing::Lines(h) => h,
            Preparing::Stop(t) => return vec![LineOutcome::Stop(t)],
        };
        let mut prepared = Vec::new();
        for h in handles {
            match h.await {
                Ok(part) => prepared.extend(part),
                Err(e) => return vec![LineOutcome::Failed(format!("registration worker: {e}"))],
            }
        }
        let mut out: Vec<Option<LineOutcome<T>>> = Vec::with_capacity(prepared.len());
        let mut slots = Vec::new();
        let mut items = Vec::new();
        for (i, line) in prepared.into_iter().enumerate() {
            match line {
                PreparedLine::Unreadable(id, why) => {
                    out.push(Some(LineOutcome::Unreadable(id, why)))
                }
                PreparedLine::Request(id, item) => {
                    out.push(None);
                    slots.push((i, id));
                    items.push(item);
                }
            }
        }
        let ring = (self.handles.ring)();
        let bx = BatchCtx {
            ring: &ring,
            audit_key: &self.handles.audit_key,
            now: self.handles.clock.now(),
        };
        let items = items
            .into_iter()
            .map(|prepared| BatchItem {
                group: &self.group,
                actor: &self.actor,
                jti: None,
                prepared,
            })
            .collect();
        let results =
            register_batch_in_turn(&self.handles.store, &bx, &self.authority, items, turn).await;
        for ((i, id), result) in slots.into_iter().zip(results) {
            out[i] = Some(match result {
                Ok(r) => LineOutcome::Registered(Box::new(r), id),
                Err(e) => LineOutcome::Refused(e, id),
            });
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| LineOutcome::Failed("line was not processed".into())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    //! The pipeline with explicit handles: a real SQLite store, a stopped clock, no server.

    use super::*;
    use crate::clock::FixedClock;
    use crate::usecase::groups::{self, Attestation, Credential, Reprovisioning};

    const T0: i64 = 1_900_000_000;

    fn parse(line: &[u8]) -> Result<RegistrationRequest, (Option<String>, String)> {
        #[derive(serde::Deserialize)]
        struct Line {
            registration_id: String,
        }
        serde_json::from_slice::<Line>(line)
            .map(|l| RegistrationRequest {
                registration_id: l.registration_id,
                ..Default::default()
            })
            .map_err(|e| (None, e.to_string()))
    }

    async fn batch_at(dir: &std::path::Path, clock: Arc<FixedClock>) -> (Arc<Batch>, Store) {
        let overrides =
            crate::config::Overrides { data_dir: Some(dir.join("data")), ..Default::default() };
        let config = crate::config::Config::load(&overrides).unwrap();
        let done =
            crate::usecase::init::initialize(config, clock.as_ref(), None, Default::default())
                .await
                .unwrap();
        let state = crate::app::open_state(done.config, clock.clone()).await.unwrap();
        let ring = state.ring();
        let actor = Actor { name: "factory".into(), addr: None };
        let cx = Ctx { ring: &ring, audit_key: &state.audit_key, now: T0, actor: &actor };
        let group = groups::Group {
            id: "line-1".into(),
            individual: false,
            attestation: Attestation::SymmetricKey,
            credential: Credential::Sas,
            enabled: true,
            validity_days: 30,
            allowed_keys: Default::default(),
            pattern: None,
            initial_tags: Default::default(),
            reprovisioning: Reprovisioning::Reissue,
            primary: SasKey::generate(),
            secondary: SasKey::generate(),
            etag: String::new(),
            created_at: T0,
            updated_at: T0,
        };
        let (group, _) = groups::put(&state.store, &cx, group, (None, None)).await.unwrap();
        let ring_now = ring.clone();
        let batch = Batch {
            handles: Handles {
                store: state.store.clone(),
                audit_key: state.audit_key.clone(),
                clock,
                ring: Arc::new(move || ring_now.clone()),
            },
            authority: state.authority(),
            group: Arc::new(group),
            actor,
            scope: None,
            base_url: "https://provisiond.test".into(),
            parse,
        };
        (Arc::new(batch), state.store.clone())
    }

    #[tokio::test]
    async fn lines_commit_in_order_at_the_injected_time_and_a_stop_comes_last() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(FixedClock::new(T0));
        let (batch, store) = batch_at(dir.path(), clock).await;
        let (input, rx) = tokio::sync::mpsc::channel(1);
        let feed = tokio::spawn(async move {
            let line = |id: &str| format!(r#"{{"registration_id":"{id}"}}"#).into_bytes();
            input.send(Input::Lines(vec![line("dev-1"), b"{not json".to_vec()])).await.ok();
            input.send(Input::Lines(vec![line("dev-2"), line("dev-1")])).await.ok();
            input.send(Input::Stop("body ended early")).await.ok();
        });
        let mut seen = Vec::new();
        batch
            .run(rx, |chunk| {
                seen.push(chunk);
                true
            })
            .await;
        feed.await.unwrap();
        let lines: Vec<String> = seen
            .into_iter()
            .flatten()
            .map(|o| match o {
                LineOutcome::Registered(r, id) => format!("ok {id} created={}", r.created),
                LineOutcome::Refused(e, id) => format!("refused {id}: {e}"),
                LineOutcome::Unreadable(_, _) => "unreadable".into(),
                LineOutcome::Failed(why) => format!("failed {why}"),
                LineOutcome::Stop(t) => format!("stop {t}"),
            })
            .collect();
        assert_eq!(
            lines,
            [
                "ok dev-1 created=true",
                "unreadable",
                "ok dev-2 created=true",
                "ok dev-1 created=false",
                "stop body ended early"
            ]
        );
        // The rows carry the injected clock's time (2030), not the wall clock's.
        let mut conn = store.conn().await.unwrap();
        for id in ["dev-1", "dev-2"] {
            let row = crate::store::enrollment::registration(&mut conn, id).await.unwrap();
            assert_eq!(row.map(|r| r.created_at), Some(T0), "{id}");
        }
    }

    #[tokio::test]
    async fn a_sink_that_stops_listening_stops_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(FixedClock::new(T0));
        let (batch, store) = batch_at(dir.path(), clock).await;
        let (input, rx) = tokio::sync::mpsc::channel(1);
        let feed = tokio::spawn(async move {
            for i in 0..50 {
                let line = format!(r#"{{"registration_id":"dev-{i}"}}"#).into_bytes();
                if input.send(Input::<()>::Lines(vec![line])).await.is_err() {
                    return i;
                }
            }
            50
        });
        let mut chunks = 0;
        batch
            .run(rx, |_| {
                chunks += 1;
                false
            })
            .await;
        assert_eq!(chunks, 1, "nothing is handed on after the sink said stop");
        assert!(feed.await.unwrap() < 50, "the feeder sees the batch stop");
        let mut conn = store.conn().await.unwrap();
        assert!(crate::store::enrollment::registration(&mut conn, "dev-49")
            .await
            .unwrap()
            .is_none());
    }
}
