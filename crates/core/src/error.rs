//! The error of the inference path, as the front ends map it to HTTP and gRPC statuses.

use std::time::Duration;

use crate::scheduler::RejectReason;
use crate::EngineError;

/// Why an inference did not produce a response.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The request does not fit the model (400 / INVALID_ARGUMENT); the text names the field.
    #[error("{0}")]
    InvalidInput(String),
    /// Refused at once by the scheduler: full queue, or a predicted deadline miss
    /// (429 with `Retry-After` / RESOURCE_EXHAUSTED).
    #[error("model '{model}' cannot take the request now: {reason}")]
    Rejected { model: String, reason: RejectReason, retry_after: Duration },
    /// While it waited, the request's deadline (timeout, SLO under REJECT, caller deadline)
    /// passed or came too close to run it in time; it was not run (429 / DEADLINE_EXCEEDED).
    #[error(
        "model '{model}': after {} ms in the queue the request could no longer finish before its deadline (SLO, timeout or client deadline); it was not run",
        waited.as_millis()
    )]
    DeadlineExceeded { model: String, waited: Duration },
    /// The model is shutting down or not loaded (503 / UNAVAILABLE).
    #[error("model '{0}' is not available")]
    Unavailable(String),
    /// The engine failed (500 / INTERNAL); details are logged, not sent.
    #[error("engine failure: {0}")]
    Engine(#[from] EngineError),
}

impl InferError {
    /// How long a refused client should wait before trying again, for the `Retry-After`
    /// header; `None` for errors that are no overload.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            InferError::Rejected { retry_after, .. } => Some(*retry_after),
            InferError::DeadlineExceeded { .. } => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}
