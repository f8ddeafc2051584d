//! Shared application state, built once by `Application::build` (the composition root).

use std::sync::{Arc, RwLock};

use crate::audit::AuditKey;
use crate::auth::ratelimit::FailureLimiter;
use crate::authority::Authority;
use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::seal::KeyRing;
use crate::store::Store;

/// Everything a request handler may need.
pub struct AppState {
    /// configuration in effect
    pub config: Config,
    /// the database
    pub store: Store,
    /// master key ring (re-read from the key file while running, for online rotation)
    pub ring: RwLock<Arc<KeyRing>>,
    /// time source
    pub clock: Arc<dyn Clock>,
    /// audit chain key
    pub audit_key: Arc<AuditKey>,
    /// JWT signing / verification (operator sessions, enrollment tokens)
    pub jwt: crate::auth::jwt::JwtKeys,
    /// the CA hierarchy (replaced on intermediate rotation)
    pub authority: RwLock<Arc<Authority>>,
    /// failed-authentication limiter
    pub limiter: FailureLimiter,
    /// Prometheus metrics
    pub metrics: Metrics,
    /// single registrations waiting for their group commit
    pub registrations: crate::usecase::register::Queue,
    /// verified policies (SQLite only; see `PolicyCache`)
    pub policy_cache: crate::auth::sas::PolicyCache,
    /// decoded enabled enrollment groups for device attestation (see `GroupCache`)
    pub enrollment_groups: crate::auth::enrollments::GroupCache,
    /// the PKCS#11 token, when CA keys or the master key wrap live in one
    pub token: Option<Arc<crate::pkcs11::Token>>,
    /// how the master key file is read (in clear, or unwrapped by the token)
    pub ring_file: crate::pkcs11::RingFile,
}

impl AppState {
    /// The token new CA keys go to (`ca_key_store = "pkcs11"`); None for file keys.
    pub fn ca_token(&self) -> Option<&Arc<crate::pkcs11::Token>> {
        match self.config.ca_key_store {
            crate::config::CaKeyStore::Pkcs11 => self.token.as_ref(),
            crate::config::CaKeyStore::File => None,
        }
    }

    /// The current CA hierarchy.
    pub fn authority(&self) -> Arc<Authority> {
        match self.authority.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The current master key ring.
    pub fn ring(&self) -> Arc<KeyRing> {
        match self.ring.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the master key file; keeps the old ring when the file cannot be read.
    pub fn reload_ring(&self) {
        match self.ring_file.load(&self.config.master_key_path()) {
            Ok(new) if new.versions() != self.ring().versions() => {
                tracing::info!(versions = ?new.versions(), "master key ring reloaded");
                match self.ring.write() {
                    Ok(mut r) => *r = Arc::new(new),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(new),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "master key file not reloaded"),
        }
    }

    /// Re-reads the CA hierarchy from the database (after a rotation here or elsewhere).
    pub async fn reload_authority(&self) -> Result<(), crate::store::StoreError> {
        let rows = {
            let mut conn = self.store.conn().await?;
            crate::store::issuers::list(&mut conn).await?
        };
        if rows.len() == self.authority().entries().len() {
            return Ok(());
        }
        match Authority::load(rows, &self.ring(), self.token.as_ref()) {
            Ok(a) => match self.authority.write() {
                Ok(mut w) => *w = Arc::new(a),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(a),
            },
            Err(e) => tracing::warn!(error = %e, "CA hierarchy not reloaded"),
        }
        Ok(())
    }

    /// Current unix time.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }
}

impl AppState {
    /// Validates the request's client certificate against provisiond's own CA.
    pub fn own_client(
        &self,
        req: &actix_web::HttpRequest,
    ) -> Result<crate::mtls::ClientIdentity, crate::mtls::MtlsError> {
        let chain = crate::mtls::presented(req).ok_or(crate::mtls::MtlsError::Missing)?;
        let authority = self.authority();
        let intermediates: Vec<Vec<u8>> =
            authority.entries().iter().filter(|e| !e.is_root).map(|e| e.cert_der.clone()).collect();
        crate::mtls::validate(
            &chain.0,
            &[authority.root().cert_der.clone()],
            &intermediates,
            self.now(),
        )
    }
}

/// Which door a single registration came through (the metric label, API.md A30) and the
/// caller's scope (factory lines; devices have none).
#[derive(Debug, Clone, Copy)]
pub struct Door<'a> {
    /// `json`, `self`, `dps_http`, `est`, …
    pub name: &'static str,
    /// the calling policy's scope
    pub scope: Option<&'a crate::auth::Scope>,
}

impl Door<'_> {
    /// A device door (no caller scope).
    pub fn device(name: &'static str) -> Door<'static> {
        Door { name, scope: None }
    }
}

impl AppState {
    /// Registers one device: the CPU work (CSR proof of possession, signing) here, the storing
    /// in the next group commit of [`run_registration_queue`]; counts the outcome by door.
    pub async fn register(
        &self,
        door: Door<'_>,
        actor: crate::usecase::Actor,
        group: Arc<crate::usecase::groups::Group>,
        jti: Option<String>,
        request: crate::usecase::register::RegistrationRequest,
    ) -> Result<crate::usecase::register::Registered, crate::usecase::register::RegisterError> {
        let base_url = self.config.public_base_url();
        let authority = self.authority();
        let now = self.now();
        let prepared = if authority.active().signer().key_label().is_none() {
            crate::usecase::register::prepare(
                &group, &authority, &base_url, door.scope, request, now,
            )
        } else {
            // The key is in a token: sign on the blocking pool, not on this worker.
            let (group, scope) = (group.clone(), door.scope.cloned());
            tokio::task::spawn_blocking(move || {
                crate::usecase::register::prepare(
                    &group,
                    &authority,
                    &base_url,
                    scope.as_ref(),
                    request,
                    now,
                )
            })
            .await
            .unwrap_or_else(|e| {
                Err(ca::IssueError::Sign(ca::SignError::Failed(format!("signing task: {e}")))
                    .into())
            })
        };
        let result = match prepared {
            Ok(p) => self.registrations.register(group, actor, jti, p).await,
            Err(e) => Err(e),
        };
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.metrics.registrations.with_label_values(&[door.name, outcome]).inc();
        result
    }
}

/// The handles the registration core's stream pipeline takes (`register::stream`): the store,
/// the audit key, the clock and the key ring in effect.
pub fn registration_handles(
    state: &actix_web::web::Data<AppState>,
) -> crate::usecase::register::stream::Handles {
    let ring_of = state.clone();
    crate::usecase::register::stream::Handles {
        store: state.store.clone(),
        audit_key: state.audit_key.clone(),
        clock: state.clock.clone(),
        ring: Arc::new(move || ring_of.ring()),
    }
}

/// The committer of single registrations ([`crate::usecase::register::Queue`]); runs for the
/// life of the server.
pub async fn run_registration_queue(state: actix_web::web::Data<AppState>) {
    let Some(rx) = state.registrations.take_receiver() else { return };
    let shared = || (state.ring(), state.authority(), state.now());
    crate::usecase::register::Queue::run(rx, &state.store, shared, &state.audit_key).await;
}

/// What a writing request (HTTP handler, CLI command) hands to its use case: the ring snapshot,
/// the time and the actor. `crate::http::respond` adds the constructor from an HTTP request.
pub struct RequestCtx {
    ring: std::sync::Arc<crate::seal::KeyRing>,
    now: i64,
    actor: crate::usecase::Actor,
}

impl RequestCtx {
    /// Who acts.
    pub fn actor(&self) -> &crate::usecase::Actor {
        &self.actor
    }

    /// The request's time.
    pub fn now(&self) -> i64 {
        self.now
    }

    /// A context for an actor that is not a policy or operator (a device, a bundle, the CLI).
    pub fn for_actor(state: &AppState, actor: crate::usecase::Actor) -> Self {
        Self { ring: state.ring(), now: state.now(), actor }
    }

    /// The use-case context.
    pub fn cx<'a>(&'a self, state: &'a AppState) -> crate::usecase::Ctx<'a> {
        crate::usecase::Ctx {
            ring: &self.ring,
            audit_key: &state.audit_key,
            now: self.now,
            actor: &self.actor,
        }
    }
}
