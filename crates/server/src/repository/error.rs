//! Why a model did not load: what the repository reports in its index and answers a load
//! request with (400, the reason in the message).

use rtserve_core::{EngineError, SchedulerError};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Where the model sits: unreadable folders, no version folder, a name in two repositories,
    /// a version policy that selects nothing.
    #[error("{0}")]
    Layout(String),
    /// `config.pbtxt` / `config.toml` cannot be read or is invalid.
    #[error("{0}")]
    Config(String),
    /// `labels.txt` cannot be read.
    #[error("{0}")]
    Labels(String),
    /// A model parameter (threads, spinning, preprocessing) with a value it cannot take.
    #[error("{0}")]
    Parameter(String),
    /// An instance group that cannot be placed (no GPU, no GPU provider, a missing library).
    #[error("{0}")]
    Placement(String),
    /// The config declares what the graph does not have.
    #[error("{0}")]
    Mismatch(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// One version of several failed.
    #[error("version {version}: {source}")]
    Version { version: u64, source: Box<LoadError> },
    #[error("loading panicked: {0}")]
    Panicked(String),
}
