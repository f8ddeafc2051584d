//! The group-commit worker for single registrations (JSON, self-registration, DPS over HTTPS and
//! MQTT, EST): whatever waits when a transaction starts shares it.

use super::*;

/// A single registration waiting for the group commit.
pub struct Job {
    /// its enrollment
    pub group: Arc<Group>,
    /// who registers
    pub actor: Actor,
    /// one-time token to consume with it
    pub jti: Option<String>,
    /// the prepared request
    pub prepared: Prepared,
    /// where the result goes
    pub reply: tokio::sync::oneshot::Sender<Result<Registered, RegisterError>>,
}

/// Group commit for single registrations (JSON factory line, self-registration, DPS, EST):
/// whatever requests are waiting when a transaction starts share it, so concurrent clients
/// pay one commit instead of queueing for the single writer one transaction at a time.
#[derive(Debug)]
pub struct Queue {
    tx: tokio::sync::mpsc::Sender<Job>,
    rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Job>>>,
}

impl Default for Queue {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(4 * MAX_GROUP_COMMIT);
        Self { tx, rx: std::sync::Mutex::new(Some(rx)) }
    }
}

/// Most registrations one group commit takes from the queue.
pub const MAX_GROUP_COMMIT: usize = 250;

impl Queue {
    /// Takes the receiving end (once) for the committer task.
    pub fn take_receiver(&self) -> Option<tokio::sync::mpsc::Receiver<Job>> {
        match self.rx.lock() {
            Ok(mut r) => r.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    /// Queues a registration and waits for its group commit.
    pub async fn register(
        &self,
        group: Arc<Group>,
        actor: Actor,
        jti: Option<String>,
        prepared: Prepared,
    ) -> Result<Registered, RegisterError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job { group, actor, jti, prepared, reply };
        if self.tx.send(job).await.is_err() {
            return Err(RegisterError::Store(unavailable()));
        }
        answer.await.unwrap_or_else(|_| Err(RegisterError::Store(unavailable())))
    }

    /// Stores queued registrations, a group commit at a time, until every sender is gone.
    pub async fn run(
        mut rx: tokio::sync::mpsc::Receiver<Job>,
        store: &Store,
        shared: impl Fn() -> (Arc<KeyRing>, Arc<Authority>, i64),
        audit_key: &AuditKey,
    ) {
        let mut jobs = Vec::with_capacity(MAX_GROUP_COMMIT);
        let mut head = None;
        while rx.recv_many(&mut jobs, MAX_GROUP_COMMIT).await > 0 {
            let (ring, authority, now) = shared();
            let bx = BatchCtx { ring: &ring, audit_key, now };
            let mut replies = Vec::with_capacity(jobs.len());
            let mut who = Vec::with_capacity(jobs.len());
            let mut prepared = Vec::with_capacity(jobs.len());
            for job in jobs.drain(..) {
                replies.push(job.reply);
                who.push((job.group, job.actor, job.jti));
                prepared.push(job.prepared);
            }
            let items = who
                .iter()
                .zip(prepared)
                .map(|((group, actor, jti), p)| BatchItem {
                    group,
                    actor,
                    jti: jti.as_deref(),
                    prepared: Ok(p),
                })
                .collect();
            let results = register_batch(store, &bx, &authority, items, &mut head).await;
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
    }
}
