//! The server's one error type, mapped to HTTP statuses and gRPC codes by one `match` each.

use std::time::Duration;

use rtserve_core::InferError;

/// Anything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("unknown model '{0}'")]
    ModelNotFound(String),
    #[error("unknown version '{version}' of model '{model}'")]
    VersionNotFound { model: String, version: String },
    #[error("model '{model}' is not ready: {reason}")]
    ModelNotReady { model: String, reason: String },
    /// Malformed request: the text names the field and what was expected.
    #[error("{0}")]
    BadRequest(String),
    #[error("request body of {size} bytes exceeds the limit of {limit} bytes (--max-request-bytes)")]
    TooLarge { size: usize, limit: usize },
    /// No valid bearer token (401 with `WWW-Authenticate: Bearer`).
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token without the access the endpoint needs.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A load or unload while the model control mode does not allow them (503 /
    /// UNAVAILABLE, as Triton's).
    #[error("{0}")]
    ModelControlDisabled(String),
    #[error(transparent)]
    Infer(#[from] InferError),
    /// A server-side failure; details are logged, clients get a generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServerError {
    /// The HTTP status for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            ServerError::ModelNotFound(_) | ServerError::VersionNotFound { .. } => 404,
            ServerError::BadRequest(_) | ServerError::Infer(InferError::InvalidInput(_)) => 400,
            ServerError::Unauthenticated(_) => 401,
            ServerError::PermissionDenied(_) => 403,
            ServerError::TooLarge { .. } => 413,
            ServerError::Infer(InferError::Rejected { .. } | InferError::DeadlineExceeded { .. }) => 429,
            ServerError::ModelNotReady { .. }
            | ServerError::ShuttingDown
            | ServerError::ModelControlDisabled(_)
            | ServerError::Infer(InferError::Unavailable(_)) => 503,
            ServerError::Infer(InferError::Engine(_)) | ServerError::Internal(_) => 500,
        }
    }

    /// The gRPC status for this error.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            ServerError::ModelNotFound(_) | ServerError::VersionNotFound { .. } => tonic::Code::NotFound,
            ServerError::BadRequest(_) | ServerError::Infer(InferError::InvalidInput(_)) => {
                tonic::Code::InvalidArgument
            }
            ServerError::Unauthenticated(_) => tonic::Code::Unauthenticated,
            ServerError::PermissionDenied(_) => tonic::Code::PermissionDenied,
            ServerError::TooLarge { .. } | ServerError::Infer(InferError::Rejected { .. }) => {
                tonic::Code::ResourceExhausted
            }
            ServerError::Infer(InferError::DeadlineExceeded { .. }) => tonic::Code::DeadlineExceeded,
            ServerError::ModelNotReady { .. }
            | ServerError::ShuttingDown
            | ServerError::ModelControlDisabled(_)
            | ServerError::Infer(InferError::Unavailable(_)) => tonic::Code::Unavailable,
            ServerError::Infer(InferError::Engine(_)) | ServerError::Internal(_) => tonic::Code::Internal,
        }
    }

    /// How long a refused client should wait (HTTP `Retry-After`); `None` unless overloaded.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ServerError::Infer(e) => e.retry_after(),
            _ => None,
        }
    }

    /// The message a client sees: the error itself, except for server-side failures, which are
    /// logged here and answered generically.
    pub fn client_message(&self) -> String {
        match self {
            ServerError::Infer(InferError::Engine(_)) | ServerError::Internal(_) => {
                tracing::error!("{self}");
                "internal error; see the server log".to_string()
            }
            other => other.to_string(),
        }
    }
}

impl From<ServerError> for tonic::Status {
    fn from(e: ServerError) -> Self {
        tonic::Status::new(e.grpc_code(), e.client_message())
    }
}
