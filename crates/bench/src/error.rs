//! What stops a benchmark before it measures anything. Failed requests are results, not errors.

use std::path::PathBuf;

/// A setup failure: bad options, an unreachable server, an unknown model, unreadable input data.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Options that contradict each other or are out of range.
    #[error("{0}")]
    Config(String),
    /// No connection to the server.
    #[error("cannot reach the server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The server answered that it does not serve the model (or version).
    #[error("the server at {url} does not serve model '{model}': {reason}")]
    UnknownModel { url: String, model: String, reason: String },
    /// The model's metadata could not be read or does not describe a usable model.
    #[error("metadata of model '{model}': {reason}")]
    Metadata { model: String, reason: String },
    /// An input data file that cannot be read or does not fit the model.
    #[error("input data {}: {reason}", path.display())]
    InputData { path: PathBuf, reason: String },
    /// Inputs that cannot be built for the model (shapes, datatypes).
    #[error("inputs: {0}")]
    Inputs(String),
    /// `--metrics-url` given but not readable.
    #[error("server metrics at {url}: {reason}")]
    Metrics { url: String, reason: String },
    /// `--server-pid` names no readable process.
    #[error("--server-pid {pid}: {reason}")]
    ServerPid { pid: u32, reason: String },
    /// A matrix file that cannot be read or is not a valid matrix.
    #[error("matrix {}: {reason}", path.display())]
    Matrix { path: PathBuf, reason: String },
    /// A chart could not be drawn or written.
    #[error("cannot plot to {}: {reason}", path.display())]
    Plot { path: PathBuf, reason: String },
    /// A result file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}
