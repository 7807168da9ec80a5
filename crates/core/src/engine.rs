//! The synchronous engine trait: how a model file becomes instances that run inferences.

use std::path::Path;
use std::time::Duration;

use crate::batch_input::join_inputs;
use crate::{BatchInput, Device, GpuPlacement, NamedTensor, TensorSpec};

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

/// How to start one instance of a prepared model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Threads one inference may use; 0 lets the engine decide.
    pub intra_op_threads: usize,
    /// Whether those threads spin (busy-wait for work) between runs: lower latency for
    /// back-to-back runs of an expensive model, at the price of cores kept busy. Engines without
    /// such a thread pool ignore it.
    pub allow_spinning: bool,
    /// Where the instance runs.
    pub device: Device,
    /// Whether runs may carry several rows (a server's batches, or a client's own leading
    /// dimension). An engine that plans per shape then makes every plan at load, so that each
    /// run uses the file as it was when loaded; without it, one made for the first run of several
    /// rows is made then, and refused if the file has changed since (`rtserve run`: one row a
    /// run, no plan it does not use).
    pub batches: bool,
}

/// An inference engine (tract, ONNX Runtime, ...). Shared by all the models it loads.
pub trait Engine: Send + Sync {
    /// Short name, as in configs and logs (`tract`, `onnxruntime`).
    fn name(&self) -> &'static str;

    /// Reads and prepares a model file once (parsing, graph optimization, the weights); its
    /// instances share what was prepared.
    fn prepare(&self, path: &Path) -> Result<Box<dyn PreparedModel>, EngineError>;

    /// Reads the inputs and outputs a model file declares, full shapes with the batch dimension.
    fn signature(&self, path: &Path) -> Result<ModelSignature, EngineError> {
        Ok(self.prepare(path)?.signature().clone())
    }

    /// The GPUs this engine can place instances on (CUDA's indices), or why it has none. By
    /// default an engine runs on the CPU only.
    fn gpus(&self) -> Result<Vec<u32>, EngineError> {
        Err(EngineError::new(format!("the {} engine runs on the CPU only", self.name())))
    }

    /// Checks that an instance can run on `gpu` with what its config asks for (the GPU exists, the
    /// providers are there and load); the error says what is missing.
    fn check_gpu(&self, gpu: &GpuPlacement) -> Result<(), EngineError> {
        let _ = gpu;
        self.gpus().map(drop)
    }

    /// Prepares a model for one instance only, as tools that run a model once do.
    fn load(&self, path: &Path, options: &LoadOptions) -> Result<Box<dyn ModelInstance>, EngineError> {
        self.prepare(path)?.instance(options)
    }
}

/// A model read once by an engine, from which instances start.
pub trait PreparedModel: Send + Sync {
    /// The inputs and outputs the model declares, full shapes with the batch dimension.
    fn signature(&self) -> &ModelSignature;

    /// Starts one instance, owned by one thread.
    fn instance(&self, options: &LoadOptions) -> Result<Box<dyn ModelInstance>, EngineError>;
}

/// Below this time for a one-row run, a model gets one intra-op thread per instance: handing
/// the pieces of so short a run to other threads and waking them costs about what it saves
/// (measured in `docs/scheduling.md`, "Threads per instance").
pub const ONE_THREAD_BELOW: Duration = Duration::from_millis(1);

/// The intra-op threads for an instance of a model whose one-row run takes `one_row`, when
/// `cores` cores are available to each instance: one for a cheap model, all of them otherwise.
pub fn intra_op_threads_for(one_row: Duration, cores: usize) -> usize {
    if one_row < ONE_THREAD_BELOW {
        1
    } else {
        cores.max(1)
    }
}

/// One loaded model instance. It is owned by one thread and runs one inference at a time.
pub trait ModelInstance: Send {
    /// Runs the model. `outputs` names the outputs to return, in that order.
    fn infer(&mut self, inputs: &[NamedTensor], outputs: &[String]) -> Result<Vec<NamedTensor>, EngineError>;

    /// Runs the model on a batch whose inputs are still the requests' own tensors. This default
    /// joins them (one copy) and calls [`ModelInstance::infer`]; an engine that can read the
    /// parts straight into the buffers it runs on overrides it.
    fn infer_batch(
        &mut self,
        inputs: &[BatchInput<'_>],
        outputs: &[String],
    ) -> Result<Vec<NamedTensor>, EngineError> {
        let joined =
            join_inputs(inputs).map_err(|e| EngineError::new(format!("cannot assemble the batch: {e}")))?;
        self.infer(&joined, outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cheap_models_get_one_thread_and_expensive_ones_the_cores() {
        assert_eq!(intra_op_threads_for(Duration::from_micros(40), 4), 1);
        assert_eq!(intra_op_threads_for(ONE_THREAD_BELOW, 4), 4);
        assert_eq!(intra_op_threads_for(Duration::from_millis(60), 2), 2);
        assert_eq!(intra_op_threads_for(Duration::from_millis(60), 0), 1);
    }
}
