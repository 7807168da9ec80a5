//! Instance threads: one OS thread per model instance, each taking jobs from a shared queue, so
//! no tokio worker ever runs inference. The scheduler feeds them batches.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;

use crate::{BatchInput, EngineError, ModelInstance, NamedTensor};

/// Starts one named OS thread per instance; each takes jobs from `receiver` until every sender
/// is gone and hands them to `handle` with the instance it owns. Threads that cannot start are
/// logged and left out.
pub(crate) fn spawn_instance_threads<J: Send + 'static>(
    model: &str,
    instances: Vec<Box<dyn ModelInstance>>,
    receiver: &flume::Receiver<J>,
    handle: fn(&str, &mut dyn ModelInstance, J),
) -> Vec<JoinHandle<()>> {
    instances
        .into_iter()
        .enumerate()
        .filter_map(|(index, mut instance)| {
            let receiver = receiver.clone();
            let name = format!("{model}#{index}");
            let spawned = std::thread::Builder::new().name(name.clone()).spawn({
                let name = name.clone();
                move || {
                    while let Ok(job) = receiver.recv() {
                        handle(&name, instance.as_mut(), job);
                    }
                }
            });
            spawned.map_err(|e| tracing::error!(instance = %name, "cannot start instance thread: {e}")).ok()
        })
        .collect()
}

/// Runs one inference, turning a panic in the engine into an error so the instance survives.
pub(crate) fn infer_caught(
    name: &str,
    instance: &mut dyn ModelInstance,
    inputs: &[NamedTensor],
    outputs: &[String],
) -> Result<Vec<NamedTensor>, EngineError> {
    caught(name, || instance.infer(inputs, outputs))
}

/// Runs one batch whose inputs the engine joins itself, as [`infer_caught`] runs one request.
pub(crate) fn infer_batch_caught(
    name: &str,
    instance: &mut dyn ModelInstance,
    inputs: &[BatchInput<'_>],
    outputs: &[String],
) -> Result<Vec<NamedTensor>, EngineError> {
    caught(name, || instance.infer_batch(inputs, outputs))
}

fn caught(
    name: &str,
    run: impl FnOnce() -> Result<Vec<NamedTensor>, EngineError>,
) -> Result<Vec<NamedTensor>, EngineError> {
    let result =
        catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|_| Err(EngineError::new("the engine panicked")));
    if let Err(e) = &result {
        tracing::error!(instance = %name, "inference failed: {e}");
    }
    result
}
