//! The error of the inference path, as the front ends map it to HTTP and gRPC statuses.

use crate::EngineError;

/// Why an inference did not produce a response.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The request does not fit the model (400 / INVALID_ARGUMENT); the text names the field.
    #[error("{0}")]
    InvalidInput(String),
    /// No capacity now (429 / RESOURCE_EXHAUSTED).
    #[error("model '{0}' is overloaded: its queue is full")]
    Overloaded(String),
    /// The model is shutting down or not loaded (503 / UNAVAILABLE).
    #[error("model '{0}' is not available")]
    Unavailable(String),
    /// The engine failed (500 / INTERNAL); details are logged, not sent.
    #[error("engine failure: {0}")]
    Engine(#[from] EngineError),
}
