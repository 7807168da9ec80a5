//! The one error type of the optimize crate.

use std::path::PathBuf;

/// Why an optimize step failed. Errors about a graph name the node or tensor involved.
#[derive(Debug, thiserror::Error)]
pub enum OptimizeError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is not an ONNX model: {source}")]
    Decode { path: PathBuf, source: prost::DecodeError },
    /// The model is malformed or uses something this tool does not handle.
    #[error("{0}")]
    Model(String),
    /// A node of the graph is malformed or unsupported.
    #[error("node '{node}' ({op_type}): {message}")]
    Node { node: String, op_type: String, message: String },
    /// Calibration or evaluation data is malformed or does not fit the model.
    #[error("{0}")]
    Data(String),
    #[error("engine: {0}")]
    Engine(#[from] rtserve_core::EngineError),
    /// A tensor operation of the trainer failed (shapes that do not fit, mostly).
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    #[error("invalid option: {0}")]
    Option(String),
}

impl OptimizeError {
    pub fn model(message: impl Into<String>) -> Self {
        OptimizeError::Model(message.into())
    }

    pub fn data(message: impl Into<String>) -> Self {
        OptimizeError::Data(message.into())
    }

    pub fn node(node: &crate::onnx::NodeProto, message: impl Into<String>) -> Self {
        OptimizeError::Node {
            node: crate::graph::node_label(node),
            op_type: node.op_type.clone(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = OptimizeError> = std::result::Result<T, E>;
