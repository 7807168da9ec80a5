//! What a failed request is: the kinds reports count, and how HTTP statuses, gRPC codes and
//! transport failures map onto them.

use std::error::Error as _;

use serde::{Deserialize, Serialize};

/// The kind of a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// HTTP 429, gRPC RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED from the server: the server
    /// refused or shed the request (overload, predicted SLO miss).
    Rejected,
    /// Any other 4xx, or the gRPC codes a client causes (INVALID_ARGUMENT, NOT_FOUND, ...).
    Client,
    /// 5xx, or gRPC INTERNAL, UNAVAILABLE (from the server), UNKNOWN, ...
    Server,
    /// No answer within `--timeout`.
    Timeout,
    /// The connection failed: refused, reset, closed mid-reply, a broken stream.
    Transport,
    /// Open loop only: `--max-inflight` requests were already in flight at the request's
    /// scheduled time, so it was never sent.
    Dropped,
}

impl ErrorKind {
    /// The short label of tables: `429`, `4xx`, `5xx`, `timeout`, `transport`, `dropped`.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Rejected => "429",
            ErrorKind::Client => "4xx",
            ErrorKind::Server => "5xx",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Transport => "transport",
            ErrorKind::Dropped => "dropped",
        }
    }
}

/// A failed request: its kind and what the server or the connection said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub kind: ErrorKind,
    pub message: String,
}

impl RequestError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RequestError { kind, message: message.into() }
    }
}

/// The kind of an HTTP answer with `status`; `None` for success (2xx).
pub fn classify_http_status(status: u16) -> Option<ErrorKind> {
    match status {
        200..=299 => None,
        429 => Some(ErrorKind::Rejected),
        500..=599 => Some(ErrorKind::Server),
        // 1xx and 3xx are not answers to an infer call either; count them with the client's.
        _ => Some(ErrorKind::Client),
    }
}

/// The kind of a gRPC status. `from_transport` is set when the status was made on this side
/// from a connection failure rather than sent by the server.
pub fn classify_grpc(code: tonic::Code, from_transport: bool) -> ErrorKind {
    use tonic::Code;
    match code {
        _ if from_transport => ErrorKind::Transport,
        Code::ResourceExhausted | Code::DeadlineExceeded => ErrorKind::Rejected,
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unimplemented => ErrorKind::Client,
        Code::Cancelled => ErrorKind::Transport,
        Code::Ok | Code::Unknown | Code::Aborted | Code::Internal | Code::Unavailable | Code::DataLoss => {
            ErrorKind::Server
        }
    }
}

/// A gRPC status as a request error.
pub fn from_status(status: &tonic::Status) -> RequestError {
    // tonic attaches the underlying error to statuses it makes from connection failures; a
    // status the server sent has none.
    let from_transport = status.source().is_some();
    RequestError::new(
        classify_grpc(status.code(), from_transport),
        format!("{:?}: {}", status.code(), status.message()),
    )
}

/// The kind of an error that ModelStreamInfer reports in `error_message`. The stream carries
/// text only, so the kind is read from the wording of rtserve's (and Triton's) messages;
/// anything not recognised counts as the client's.
pub fn classify_stream_message(message: &str) -> ErrorKind {
    let m = message.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| m.contains(n));
    if any(&[
        "cannot take the request now",
        "deadline passed",
        "queue is full",
        "exceeds maximum queue size",
        "resource exhausted",
        "too many requests",
    ]) {
        ErrorKind::Rejected
    } else if any(&["internal error", "is not available", "shutting down", "is not ready", "engine failure"])
    {
        ErrorKind::Server
    } else {
        ErrorKind::Client
    }
}

/// A reqwest failure as a request error: its timeout, or the connection's failure.
pub fn from_reqwest(error: &reqwest::Error) -> RequestError {
    let kind = if error.is_timeout() { ErrorKind::Timeout } else { ErrorKind::Transport };
    RequestError::new(kind, error_chain(error))
}

/// An error and its sources, `a: b: c`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

/// Failed requests by kind. Field names are the JSON and CSV names (`errors_` prefixed in CSV).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    pub rejected_429: u64,
    pub client_4xx: u64,
    pub server_5xx: u64,
    pub timeout: u64,
    pub transport: u64,
    pub dropped: u64,
}

impl ErrorCounts {
    pub fn add(&mut self, kind: ErrorKind, n: u64) {
        *self.slot(kind) += n;
    }

    fn slot(&mut self, kind: ErrorKind) -> &mut u64 {
        match kind {
            ErrorKind::Rejected => &mut self.rejected_429,
            ErrorKind::Client => &mut self.client_4xx,
            ErrorKind::Server => &mut self.server_5xx,
            ErrorKind::Timeout => &mut self.timeout,
            ErrorKind::Transport => &mut self.transport,
            ErrorKind::Dropped => &mut self.dropped,
        }
    }

    /// Every kind with its count, in the order of tables.
    pub fn by_kind(&self) -> [(ErrorKind, u64); 6] {
        [
            (ErrorKind::Rejected, self.rejected_429),
            (ErrorKind::Client, self.client_4xx),
            (ErrorKind::Server, self.server_5xx),
            (ErrorKind::Timeout, self.timeout),
            (ErrorKind::Transport, self.transport),
            (ErrorKind::Dropped, self.dropped),
        ]
    }

    pub fn total(&self) -> u64 {
        self.by_kind().iter().map(|(_, n)| n).sum()
    }

    pub fn merge(&mut self, other: &ErrorCounts) {
        for (kind, n) in other.by_kind() {
            self.add(kind, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn http_statuses() {
        assert_eq!(classify_http_status(200), None);
        assert_eq!(classify_http_status(204), None);
        assert_eq!(classify_http_status(429), Some(ErrorKind::Rejected));
        assert_eq!(classify_http_status(400), Some(ErrorKind::Client));
        assert_eq!(classify_http_status(404), Some(ErrorKind::Client));
        assert_eq!(classify_http_status(413), Some(ErrorKind::Client));
        assert_eq!(classify_http_status(500), Some(ErrorKind::Server));
        assert_eq!(classify_http_status(503), Some(ErrorKind::Server));
        assert_eq!(classify_http_status(302), Some(ErrorKind::Client));
    }

    #[test]
    fn grpc_codes_follow_the_http_mapping_of_the_protocol() {
        assert_eq!(classify_grpc(Code::ResourceExhausted, false), ErrorKind::Rejected);
        assert_eq!(classify_grpc(Code::DeadlineExceeded, false), ErrorKind::Rejected);
        assert_eq!(classify_grpc(Code::InvalidArgument, false), ErrorKind::Client);
        assert_eq!(classify_grpc(Code::NotFound, false), ErrorKind::Client);
        assert_eq!(classify_grpc(Code::Internal, false), ErrorKind::Server);
        assert_eq!(classify_grpc(Code::Unavailable, false), ErrorKind::Server);
        assert_eq!(classify_grpc(Code::Unavailable, true), ErrorKind::Transport);
        assert_eq!(classify_grpc(Code::Cancelled, false), ErrorKind::Transport);
    }

    #[test]
    fn a_status_made_from_a_connection_failure_is_transport() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let status = tonic::Status::from_error(Box::new(io));
        assert_eq!(from_status(&status).kind, ErrorKind::Transport);
        let sent = tonic::Status::unavailable("model 'm' is not available");
        assert_eq!(from_status(&sent).kind, ErrorKind::Server);
        assert!(from_status(&sent).message.contains("not available"));
    }

    #[test]
    fn stream_messages_by_wording() {
        let rejected = "model 'cnn' cannot take the request now: predicted to miss its deadline";
        assert_eq!(classify_stream_message(rejected), ErrorKind::Rejected);
        assert_eq!(
            classify_stream_message("model 'm': the request's deadline passed after 3 ms in the queue"),
            ErrorKind::Rejected
        );
        assert_eq!(classify_stream_message("internal error; see the server log"), ErrorKind::Server);
        assert_eq!(classify_stream_message("the server is shutting down"), ErrorKind::Server);
        assert_eq!(classify_stream_message("unknown model 'x'"), ErrorKind::Client);
        assert_eq!(classify_stream_message("input 'a': expected FP32"), ErrorKind::Client);
    }

    #[test]
    fn counts_add_up_by_kind() {
        let mut counts = ErrorCounts::default();
        counts.add(ErrorKind::Rejected, 2);
        counts.add(ErrorKind::Dropped, 1);
        let mut total = ErrorCounts::default();
        total.merge(&counts);
        total.merge(&counts);
        assert_eq!((total.rejected_429, total.dropped, total.total()), (4, 2, 6));
        let labels: Vec<&str> = total.by_kind().iter().map(|(k, _)| k.label()).collect();
        assert_eq!(labels, ["429", "4xx", "5xx", "timeout", "transport", "dropped"]);
    }
}
