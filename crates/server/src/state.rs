//! What both front ends share: the repository, limits and the server's life cycle.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::auth::{Access, Auth};
use crate::metrics::{Metrics, Protocol};
use crate::repository::ModelRepository;
use crate::ServerError;

/// Where the server is in its life: each phase only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Phase {
    /// Listening, start-up loading not done: not ready.
    Starting,
    Ready,
    /// A shutdown signal came: not ready, so that balancers take the server out, but serving.
    Draining,
    /// The listeners are closed: requests in flight finish, new ones are refused.
    Stopping,
}

/// Shared server state.
pub struct ServerState {
    pub repository: Arc<ModelRepository>,
    /// Largest request body or message accepted, in bytes.
    pub max_request_bytes: usize,
    pub metrics: Arc<Metrics>,
    /// The bearer tokens (disabled unless a token file is given).
    pub auth: Arc<Auth>,
    /// Log one line per request (`--access-log`).
    pub access_log: bool,
    phase: AtomicU8,
}

impl ServerState {
    pub fn new(repository: Arc<ModelRepository>, max_request_bytes: usize, metrics: Arc<Metrics>) -> Self {
        let auth = Arc::new(Auth::disabled());
        ServerState {
            repository,
            max_request_bytes,
            metrics,
            auth,
            access_log: false,
            phase: AtomicU8::new(Phase::Starting as u8),
        }
    }

    /// The same state, checking bearer tokens with `auth`.
    pub fn with_auth(self, auth: Arc<Auth>) -> Self {
        ServerState { auth, ..self }
    }

    /// The same state, logging one line per request when `on`.
    pub fn with_access_log(self, on: bool) -> Self {
        ServerState { access_log: on, ..self }
    }

    fn phase(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }

    fn advance(&self, to: Phase) {
        self.phase.fetch_max(to as u8, Ordering::AcqRel);
    }

    /// Ready once start-up loading is done, until a shutdown signal.
    pub fn is_ready(&self) -> bool {
        self.phase() == Phase::Ready as u8
    }

    /// From the shutdown signal on: readiness is withdrawn and HTTP/1 replies close their
    /// connection, so that clients and balancers move to other replicas.
    pub fn is_draining(&self) -> bool {
        self.phase() >= Phase::Draining as u8
    }

    pub fn set_ready(&self) {
        self.advance(Phase::Ready);
    }

    pub fn begin_drain(&self) {
        self.advance(Phase::Draining);
    }

    pub fn begin_stop(&self) {
        self.advance(Phase::Stopping);
    }

    /// Once the listeners are closed: requests in flight finish; a new message on a gRPC
    /// stream that is still open is refused, so that the stream (and the shutdown) ends.
    pub fn is_stopping(&self) -> bool {
        self.phase() >= Phase::Stopping as u8
    }

    /// Checks a request's `Authorization` value for `need`: a refusal is counted and logged
    /// (with the token's name, never the token) and returned as 401 / 403.
    pub fn authorize(
        &self,
        protocol: Protocol,
        what: &str,
        need: Access,
        authorization: Option<&[u8]>,
    ) -> Result<(), ServerError> {
        match self.auth.check(need, authorization) {
            Ok(_) => Ok(()),
            Err(refusal) => {
                self.metrics.auth_failure(protocol, refusal.reason());
                match &refusal {
                    crate::auth::Refusal::Forbidden { name, .. } => {
                        tracing::warn!("refused {what}: token '{name}' is not an admin token")
                    }
                    other => tracing::info!("refused {what}: {} token", other.reason()),
                }
                Err(refusal.into())
            }
        }
    }

    /// Whether a model version serves, as ModelReady reports it: not while the server drains.
    pub fn model_ready(&self, model: &str, version: Option<&str>) -> Result<bool, ServerError> {
        match self.repository.get(model, version) {
            Ok(_) => Ok(!self.is_draining()),
            Err(ServerError::ModelNotReady { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The server's name and version, as `GET /v2` and ServerMetadata report them.
pub const SERVER_NAME: &str = "rtserve";
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Protocol extensions that work end to end.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data", "model_repository", "statistics"];
