//! What both front ends share: the repository, limits and the server's life cycle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::metrics::Metrics;
use crate::repository::ModelRepository;

/// Shared server state.
pub struct ServerState {
    pub repository: Arc<ModelRepository>,
    /// Largest request body or message accepted, in bytes.
    pub max_request_bytes: usize,
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
    shutting_down: AtomicBool,
}

impl ServerState {
    pub fn new(repository: Arc<ModelRepository>, max_request_bytes: usize, metrics: Arc<Metrics>) -> Self {
        ServerState {
            repository,
            max_request_bytes,
            metrics,
            ready: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Ready once start-up loading is done, until shutdown begins.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.shutting_down.load(Ordering::Acquire)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }
}

/// The server's name and version, as `GET /v2` and ServerMetadata report them.
pub const SERVER_NAME: &str = "rtserve";
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Protocol extensions that work end to end.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data", "model_repository", "statistics"];
