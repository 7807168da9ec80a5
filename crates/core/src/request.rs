//! One inference request and its response, independent of the protocol that carried them.

use std::collections::BTreeMap;

use crate::NamedTensor;

/// A request or tensor parameter (KServe v2 `parameters`).
#[derive(Debug, Clone, PartialEq)]
pub enum Parameter {
    Bool(bool),
    Int(i64),
    Double(f64),
    String(String),
}

/// A decoded inference request.
#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    /// Client-chosen id, echoed in the response.
    pub id: String,
    pub inputs: Vec<NamedTensor>,
    /// The outputs the client asked for; empty means all of them.
    pub outputs: Vec<String>,
    pub parameters: BTreeMap<String, Parameter>,
    /// When the server received it (before decoding): timeouts and the SLO count from here.
    /// `None`: from when the scheduler sees it.
    pub received: Option<std::time::Instant>,
}

/// The outputs of one inference.
#[derive(Debug, Clone, Default)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub outputs: Vec<NamedTensor>,
}
