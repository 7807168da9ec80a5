//! The instance pool: N OS threads, each owning one model instance, fed by one bounded queue.
//!
//! Async callers hand a job to the queue and await a oneshot reply; no tokio worker ever runs
//! inference. A full queue is answered at once with [`InferError::Overloaded`]. A job whose
//! caller has gone away is dropped before it runs.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::{EngineError, InferError, ModelInstance, NamedTensor};

/// Sizes of a pool.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Jobs that may wait for a free instance; more are rejected as overload.
    pub queue_capacity: usize,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions { queue_capacity: 256 }
    }
}

type Reply = oneshot::Sender<Result<Vec<NamedTensor>, EngineError>>;

struct Job {
    inputs: Vec<NamedTensor>,
    outputs: Vec<String>,
    reply: Reply,
}

/// A running pool for one model version. Dropping it lets the threads finish the queued jobs
/// and exit.
pub struct InstancePool {
    model: String,
    sender: flume::Sender<Job>,
    threads: Vec<JoinHandle<()>>,
}

impl InstancePool {
    /// Starts one thread per instance. `model` names the pool in logs and errors.
    pub fn start(model: &str, instances: Vec<Box<dyn ModelInstance>>, options: &PoolOptions) -> Self {
        let (sender, receiver) = flume::bounded::<Job>(options.queue_capacity.max(1));
        let threads = spawn_instance_threads(model, instances, &receiver, run_job);
        InstancePool { model: model.to_string(), sender, threads }
    }

    /// Number of instance threads running.
    pub fn instances(&self) -> usize {
        self.threads.len()
    }

    /// Jobs waiting for an instance.
    pub fn queue_depth(&self) -> usize {
        self.sender.len()
    }

    /// Runs one inference on the next free instance.
    pub async fn infer(
        &self,
        inputs: Vec<NamedTensor>,
        outputs: Vec<String>,
    ) -> Result<Vec<NamedTensor>, InferError> {
        let (reply, receive) = oneshot::channel();
        self.sender.try_send(Job { inputs, outputs, reply }).map_err(|e| match e {
            flume::TrySendError::Full(_) => InferError::Overloaded(self.model.clone()),
            flume::TrySendError::Disconnected(_) => InferError::Unavailable(self.model.clone()),
        })?;
        match receive.await {
            Ok(result) => result.map_err(InferError::Engine),
            Err(_) => Err(InferError::Unavailable(self.model.clone())),
        }
    }
}

fn run_job(name: &str, instance: &mut dyn ModelInstance, job: Job) {
    if job.reply.is_closed() {
        tracing::debug!(instance = %name, "caller went away; job dropped");
        return;
    }
    let result = infer_caught(name, instance, &job.inputs, &job.outputs);
    // The caller may have gone away meanwhile; nothing to do then.
    let _ = job.reply.send(result);
}

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
    let result = catch_unwind(AssertUnwindSafe(|| instance.infer(inputs, outputs)))
        .unwrap_or_else(|_| Err(EngineError::new("the engine panicked")));
    if let Err(e) = &result {
        tracing::error!(instance = %name, "inference failed: {e}");
    }
    result
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    use super::*;
    use crate::Tensor;

    /// Holds an instance inside `infer`: it reports that it entered, then waits for the test.
    struct Gate {
        entered: tokio::sync::mpsc::UnboundedSender<()>,
        release: Arc<Barrier>,
    }

    /// Doubles its one FP32 input and counts its calls.
    struct Doubler {
        calls: Arc<AtomicUsize>,
        gate: Option<Gate>,
    }

    impl ModelInstance for Doubler {
        fn infer(
            &mut self,
            inputs: &[NamedTensor],
            _outputs: &[String],
        ) -> Result<Vec<NamedTensor>, EngineError> {
            if let Some(gate) = &self.gate {
                let _ = gate.entered.send(());
                gate.release.wait();
            }
            self.calls.fetch_add(1, Ordering::SeqCst);
            let values = inputs[0].tensor.to_f32().ok_or_else(|| EngineError::new("not fp32"))?;
            let doubled: Vec<f32> = values.iter().map(|v| v * 2.0).collect();
            let tensor = Tensor::from_f32(inputs[0].tensor.shape().to_vec(), &doubled)
                .map_err(|e| EngineError::new(e.to_string()))?;
            Ok(vec![NamedTensor { name: "y".into(), tensor }])
        }
    }

    struct Panicker;

    impl ModelInstance for Panicker {
        fn infer(&mut self, _: &[NamedTensor], _: &[String]) -> Result<Vec<NamedTensor>, EngineError> {
            panic!("boom")
        }
    }

    fn input(values: &[f32]) -> Vec<NamedTensor> {
        vec![NamedTensor {
            name: "x".into(),
            tensor: Tensor::from_f32(vec![values.len()], values).expect("valid"),
        }]
    }

    #[tokio::test]
    async fn runs_on_instances() {
        let calls = Arc::new(AtomicUsize::new(0));
        let instances: Vec<Box<dyn ModelInstance>> = (0..2)
            .map(|_| Box::new(Doubler { calls: calls.clone(), gate: None }) as Box<dyn ModelInstance>)
            .collect();
        let pool = InstancePool::start("m", instances, &PoolOptions::default());
        assert_eq!(pool.instances(), 2);
        let out = pool.infer(input(&[1.0, 2.0]), vec![]).await.expect("inference");
        assert_eq!(out[0].tensor.to_f32(), Some(vec![2.0, 4.0]));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_queue_is_overload() {
        let release = Arc::new(Barrier::new(2));
        let (entered, mut entered_rx) = tokio::sync::mpsc::unbounded_channel();
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Gate { entered, release: release.clone() };
        let instance = Box::new(Doubler { calls: calls.clone(), gate: Some(gate) });
        let pool = Arc::new(InstancePool::start("m", vec![instance], &PoolOptions { queue_capacity: 1 }));
        // The first job occupies the instance (held at the gate), the second fills the queue.
        let first = tokio::spawn({
            let pool = pool.clone();
            async move { pool.infer(input(&[1.0]), vec![]).await }
        });
        entered_rx.recv().await.expect("instance entered");
        let second = tokio::spawn({
            let pool = pool.clone();
            async move { pool.infer(input(&[2.0]), vec![]).await }
        });
        while pool.queue_depth() == 0 {
            tokio::task::yield_now().await;
        }
        let third = pool.infer(input(&[3.0]), vec![]).await;
        assert!(matches!(third, Err(InferError::Overloaded(m)) if m == "m"));
        release.wait();
        entered_rx.recv().await.expect("instance entered again");
        release.wait();
        assert!(first.await.expect("join").is_ok());
        assert!(second.await.expect("join").is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn panic_becomes_engine_error_and_instance_survives() {
        let pool = InstancePool::start("m", vec![Box::new(Panicker)], &PoolOptions::default());
        for _ in 0..2 {
            let result = pool.infer(input(&[1.0]), vec![]).await;
            assert!(matches!(result, Err(InferError::Engine(_))));
        }
    }
}
