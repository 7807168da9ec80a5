//! The synchronous engine trait: how a model file becomes instances that run inferences.

use std::path::Path;

use crate::{NamedTensor, TensorSpec};

/// An engine failure: loading a model or running it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct EngineError(pub String);

impl EngineError {
    pub fn new(message: impl Into<String>) -> Self {
        EngineError(message.into())
    }
}

/// The inputs and outputs a model file declares. A `-1` dimension is dynamic.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSignature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// How to load one instance.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Threads one inference may use; 0 lets the engine decide.
    pub intra_op_threads: usize,
}

/// An inference engine (tract, ONNX Runtime, ...). Shared by all the models it loads.
pub trait Engine: Send + Sync {
    /// Short name, as in configs and logs (`tract`, `onnxruntime`).
    fn name(&self) -> &'static str;

    /// Reads the inputs and outputs a model file declares, full shapes with the batch dimension.
    fn signature(&self, path: &Path) -> Result<ModelSignature, EngineError>;

    /// Loads one instance of a model.
    fn load(&self, path: &Path, options: &LoadOptions) -> Result<Box<dyn ModelInstance>, EngineError>;
}

/// One loaded model instance. It is owned by one thread and runs one inference at a time.
pub trait ModelInstance: Send {
    /// Runs the model. `outputs` names the outputs to return, in that order.
    fn infer(&mut self, inputs: &[NamedTensor], outputs: &[String]) -> Result<Vec<NamedTensor>, EngineError>;
}
