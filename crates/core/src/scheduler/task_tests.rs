//! Scheduler tests with a fake instance. Instances are held at a gate so that queue contents
//! are known when a batch forms; no test asserts anything about time.

use std::time::Duration;

use tokio::sync::mpsc;

use super::*;
use crate::{DataType, DynamicBatching, EngineError, Parameter, QueuePolicy, Tensor, TensorSpec};

/// Records each call's batch size, waits for a permit, then returns `y = 2x` and `z = x + 1`.
struct Fake {
    batches: Arc<Mutex<Vec<usize>>>,
    entered: mpsc::UnboundedSender<usize>,
    permits: Option<flume::Receiver<()>>,
    panics: bool,
}

impl ModelInstance for Fake {
    fn infer(&mut self, inputs: &[NamedTensor], outputs: &[String]) -> Result<Vec<NamedTensor>, EngineError> {
        let x = &inputs[0].tensor;
        let rows = x.shape()[0];
        let _ = self.entered.send(rows);
        if let Some(permits) = &self.permits {
            permits.recv().map_err(|_| EngineError::new("test over"))?;
        }
        self.batches.lock().expect("not poisoned").push(rows);
        if self.panics {
            panic!("boom");
        }
        let values = x.to_f32().ok_or_else(|| EngineError::new("not fp32"))?;
        outputs
            .iter()
            .map(|name| {
                let f: fn(f32) -> f32 = if name == "y" { |v| v * 2.0 } else { |v| v + 1.0 };
                let mapped: Vec<f32> = values.iter().map(|&v| f(v)).collect();
                let tensor = Tensor::from_f32(x.shape().to_vec(), &mapped)
                    .map_err(|e| EngineError::new(e.to_string()))?;
                Ok(NamedTensor { name: name.clone(), tensor })
            })
            .collect()
    }
}

struct Harness {
    scheduler: Arc<Scheduler>,
    batches: Arc<Mutex<Vec<usize>>>,
    entered: mpsc::UnboundedReceiver<usize>,
    permits: flume::Sender<()>,
}

fn config(batching: Option<DynamicBatching>) -> ModelConfig {
    let spec = |name: &str| TensorSpec { name: name.into(), data_type: DataType::Fp32, dims: vec![2] };
    ModelConfig {
        name: "m".into(),
        max_batch_size: 8,
        inputs: vec![spec("x")],
        outputs: vec![spec("y"), spec("z")],
        dynamic_batching: batching,
        ..ModelConfig::default()
    }
}

fn start(config: &ModelConfig, instances: usize, panics: bool) -> Harness {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let (entered_tx, entered) = mpsc::unbounded_channel();
    let (permits, permits_rx) = flume::unbounded();
    let fakes: Vec<Box<dyn ModelInstance>> = (0..instances)
        .map(|_| {
            Box::new(Fake {
                batches: batches.clone(),
                entered: entered_tx.clone(),
                permits: Some(permits_rx.clone()),
                panics,
            }) as Box<dyn ModelInstance>
        })
        .collect();
    let options = SchedulerOptions { warm_up_rounds: 0, ..SchedulerOptions::default() };
    let scheduler = Arc::new(Scheduler::start(config, fakes, &options).expect("started"));
    Harness { scheduler, batches, entered, permits }
}

fn request(values: &[f32]) -> InferRequest {
    let tensor = Tensor::from_f32(vec![values.len() / 2, 2], values).expect("valid");
    InferRequest { inputs: vec![NamedTensor { name: "x".into(), tensor }], ..InferRequest::default() }
}

type Answer = tokio::task::JoinHandle<Result<Vec<NamedTensor>, InferError>>;

fn spawn_infer(scheduler: &Arc<Scheduler>, request: InferRequest, outputs: &[&str]) -> Answer {
    let scheduler = scheduler.clone();
    let outputs = outputs.iter().map(|s| s.to_string()).collect();
    tokio::spawn(async move { scheduler.infer(request, outputs, None).await.map(|s| s.outputs) })
}

/// Yields until the stats satisfy `ready` (synchronisation, not a timing assertion).
async fn until(scheduler: &Scheduler, ready: impl Fn(&SchedulerStats) -> bool) {
    while !ready(&scheduler.stats()) {
        tokio::task::yield_now().await;
    }
}

fn values(outputs: &[NamedTensor], name: &str) -> Vec<f32> {
    let output = outputs.iter().find(|o| o.name == name).expect("output present");
    output.tensor.to_f32().expect("fp32")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_requests_run_as_one_batch_and_get_their_own_rows() {
    let mut h = start(&config(Some(DynamicBatching::default())), 1, false);
    let first = spawn_infer(&h.scheduler, request(&[0.0, 0.0]), &["y"]);
    assert_eq!(h.entered.recv().await, Some(1));
    // While the instance is busy, three requests queue up: 1 + 2 + 1 rows, wanting different outputs.
    let a = spawn_infer(&h.scheduler, request(&[1.0, 2.0]), &["y"]);
    let b = spawn_infer(&h.scheduler, request(&[3.0, 4.0, 5.0, 6.0]), &["z", "y"]);
    let c = spawn_infer(&h.scheduler, request(&[7.0, 8.0]), &["z"]);
    until(&h.scheduler, |s| s.queue_depth == 3).await;
    h.permits.send(()).expect("permit");
    assert_eq!(h.entered.recv().await, Some(4), "one engine call for all three");
    h.permits.send(()).expect("permit");

    assert_eq!(values(&first.await.expect("join").expect("ok"), "y"), vec![0.0, 0.0]);
    let a = a.await.expect("join").expect("ok");
    assert_eq!((a.len(), values(&a, "y")), (1, vec![2.0, 4.0]));
    let b = b.await.expect("join").expect("ok");
    assert_eq!(b.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), vec!["z", "y"], "in the order asked");
    assert_eq!(values(&b, "y"), vec![6.0, 8.0, 10.0, 12.0]);
    assert_eq!(values(&b, "z"), vec![4.0, 5.0, 6.0, 7.0]);
    assert_eq!(b[0].tensor.shape(), &[2, 2]);
    let c = c.await.expect("join").expect("ok");
    assert_eq!((c.len(), values(&c, "z")), (1, vec![8.0, 9.0]));
    assert_eq!(*h.batches.lock().expect("not poisoned"), vec![1, 4]);

    until(&h.scheduler, |s| s.completed == 4).await;
    let stats = h.scheduler.stats();
    let counts: Vec<(usize, u64)> = stats.batches.iter().map(|(&rows, b)| (rows, b.count)).collect();
    assert_eq!(counts, [(1, 1), (4, 1)]);
    assert_eq!(
        (stats.queue_wait.count, stats.executions().count, stats.rows(), stats.queue_depth),
        (4, 2, 5, 0)
    );
    assert_eq!(stats.profile.iter().map(|p| p.rows).collect::<Vec<_>>(), vec![1, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_dynamic_batching_each_request_runs_alone() {
    let mut h = start(&config(None), 1, false);
    let first = spawn_infer(&h.scheduler, request(&[0.0, 0.0]), &["y"]);
    assert_eq!(h.entered.recv().await, Some(1));
    let rest: Vec<Answer> =
        (0..3).map(|i| spawn_infer(&h.scheduler, request(&[i as f32, 1.0]), &["y"])).collect();
    until(&h.scheduler, |s| s.queue_depth == 3).await;
    for _ in 0..4 {
        h.permits.send(()).expect("permit");
    }
    assert!(first.await.expect("join").is_ok());
    for (i, answer) in rest.into_iter().enumerate() {
        assert_eq!(values(&answer.await.expect("join").expect("ok"), "y"), vec![2.0 * i as f32, 2.0]);
    }
    assert_eq!(*h.batches.lock().expect("not poisoned"), vec![1, 1, 1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_run_batches_at_the_same_time() {
    let mut h = start(&config(None), 2, false);
    let answers: Vec<Answer> =
        (0..2).map(|_| spawn_infer(&h.scheduler, request(&[1.0, 1.0]), &["y"])).collect();
    // Both are inside an engine call before either is allowed to finish.
    assert_eq!(h.entered.recv().await, Some(1));
    assert_eq!(h.entered.recv().await, Some(1));
    h.permits.send(()).expect("permit");
    h.permits.send(()).expect("permit");
    for answer in answers {
        assert!(answer.await.expect("join").is_ok());
    }
    assert_eq!(h.scheduler.instances(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_refused_at_once() {
    let batching = DynamicBatching {
        default_queue_policy: Some(QueuePolicy { max_queue_size: 2, ..QueuePolicy::default() }),
        ..DynamicBatching::default()
    };
    let mut h = start(&config(Some(batching)), 1, false);
    let running = spawn_infer(&h.scheduler, request(&[0.0, 0.0]), &["y"]);
    assert_eq!(h.entered.recv().await, Some(1));
    let queued: Vec<Answer> =
        (0..2).map(|_| spawn_infer(&h.scheduler, request(&[1.0, 1.0]), &["y"])).collect();
    until(&h.scheduler, |s| s.queue_depth == 2).await;
    let refused = h.scheduler.infer(request(&[2.0, 2.0]), vec!["y".into()], None).await;
    match refused {
        Err(InferError::Rejected { model, reason: RejectReason::QueueFull { capacity: 2 }, retry_after }) => {
            assert_eq!(model, "m");
            assert!(retry_after > Duration::ZERO);
        }
        other => panic!("expected a full queue, got {other:?}"),
    }
    assert_eq!(h.scheduler.stats().rejections.get("queue_full"), Some(&1));
    for _ in 0..2 {
        h.permits.send(()).expect("permit");
    }
    assert!(running.await.expect("join").is_ok());
    for answer in queued {
        assert!(answer.await.expect("join").is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_is_dropped_before_batching() {
    let mut h = start(&config(Some(DynamicBatching::default())), 1, false);
    let running = spawn_infer(&h.scheduler, request(&[0.0, 0.0]), &["y"]);
    assert_eq!(h.entered.recv().await, Some(1));
    let gone = spawn_infer(&h.scheduler, request(&[1.0, 1.0]), &["y"]);
    let stays = spawn_infer(&h.scheduler, request(&[2.0, 2.0]), &["y"]);
    until(&h.scheduler, |s| s.queue_depth == 2).await;
    gone.abort();
    until(&h.scheduler, |s| s.cancelled == 1 && s.queue_depth == 1).await;
    h.permits.send(()).expect("permit");
    h.permits.send(()).expect("permit");
    assert!(running.await.expect("join").is_ok());
    assert_eq!(values(&stays.await.expect("join").expect("ok"), "y"), vec![4.0, 4.0]);
    assert_eq!(*h.batches.lock().expect("not poisoned"), vec![1, 1], "the cancelled row never ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_timeout_passes_in_the_queue_is_not_run() {
    let mut h = start(&config(Some(DynamicBatching::default())), 1, false);
    let running = spawn_infer(&h.scheduler, request(&[0.0, 0.0]), &["y"]);
    assert_eq!(h.entered.recv().await, Some(1));
    let mut late = request(&[1.0, 1.0]);
    late.parameters.insert("timeout".into(), Parameter::Int(50_000));
    let answer = h.scheduler.infer(late, vec!["y".into()], None).await;
    assert!(matches!(answer, Err(InferError::DeadlineExceeded { .. })), "{answer:?}");
    h.permits.send(()).expect("permit");
    assert!(running.await.expect("join").is_ok());
    assert_eq!(*h.batches.lock().expect("not poisoned"), vec![1]);
    assert_eq!(h.scheduler.stats().expired, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_and_oversized_requests_are_invalid_input() {
    let h = start(&config(Some(DynamicBatching::default())), 1, false);
    let mut bad = request(&[1.0, 1.0]);
    bad.parameters.insert("priority".into(), Parameter::String("high".into()));
    let err = h.scheduler.infer(bad, vec!["y".into()], None).await.expect_err("invalid");
    assert!(matches!(&err, InferError::InvalidInput(m) if m.contains("parameter 'priority'")), "{err}");
    let big = request(&[0.0; 18]);
    let err = h.scheduler.infer(big, vec!["y".into()], None).await.expect_err("9 rows");
    assert!(matches!(&err, InferError::InvalidInput(m) if m.contains("batch size 9")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_panic_answers_every_caller_and_the_instance_survives() {
    let mut h = start(&config(Some(DynamicBatching::default())), 1, true);
    let first = spawn_infer(&h.scheduler, request(&[0.0, 0.0]), &["y"]);
    assert_eq!(h.entered.recv().await, Some(1));
    let queued: Vec<Answer> =
        (0..2).map(|_| spawn_infer(&h.scheduler, request(&[1.0, 1.0]), &["y"])).collect();
    until(&h.scheduler, |s| s.queue_depth == 2).await;
    h.permits.send(()).expect("permit");
    h.permits.send(()).expect("permit");
    assert!(matches!(first.await.expect("join"), Err(InferError::Engine(_))));
    for answer in queued {
        assert!(matches!(answer.await.expect("join"), Err(InferError::Engine(_))));
    }
    assert_eq!(*h.batches.lock().expect("not poisoned"), vec![1, 2]);
    until(&h.scheduler, |s| s.failed == 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_seeds_the_profile() {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let (entered, _entered_rx) = mpsc::unbounded_channel();
    let fake = Fake { batches: batches.clone(), entered, permits: None, panics: false };
    let options = SchedulerOptions { warm_up_rounds: 2, ..SchedulerOptions::default() };
    let mut config = config(Some(DynamicBatching::default()));
    config.max_batch_size = 4;
    let scheduler = Scheduler::start(&config, vec![Box::new(fake)], &options).expect("started");
    assert_eq!(*batches.lock().expect("not poisoned"), vec![4, 1, 1, 2, 2, 4, 4]);
    let points: Vec<usize> = scheduler.stats().profile.iter().map(|p| p.rows).collect();
    assert_eq!(points, vec![1, 2, 4]);
}

#[test]
fn start_needs_a_runtime_and_a_valid_config() {
    let err = Scheduler::start(&config(None), Vec::new(), &SchedulerOptions::default()).err();
    assert!(matches!(err, Some(SchedulerError::NoRuntime)), "{err:?}");
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let _guard = runtime.enter();
    let mut bad =
        config(Some(DynamicBatching { preferred_batch_size: vec![9], ..DynamicBatching::default() }));
    let err = Scheduler::start(&bad, Vec::new(), &SchedulerOptions::default()).err();
    assert!(
        matches!(&err, Some(SchedulerError::Config { message, .. }) if message.contains("preferred_batch_size 9"))
    );
    bad.dynamic_batching = None;
    let err = Scheduler::start(&bad, Vec::new(), &SchedulerOptions::default()).err();
    assert!(matches!(err, Some(SchedulerError::NoInstances(_))));
}
