//! What the scheduler itself costs a request: one request at a time (a closed loop of one
//! client) through `Scheduler::infer` on an instance that only copies its input, so the figure
//! is the hand-offs between threads and the planning, not the engine. With batching off, and
//! with `dynamic_batching { max_queue_delay_microseconds: 500 }`, where a lone request must not
//! wait for company that is not coming.
//!
//! ```sh
//! cargo bench -p rtserve-core --bench scheduler
//! ```
//!
//! Figures: `docs/scheduling.md` (issue 16, item 4).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use rtserve_core::scheduler::{Scheduler, SchedulerOptions};
use rtserve_core::{
    DataType, DynamicBatching, EngineError, InferRequest, ModelConfig, ModelInstance, NamedTensor, Tensor,
    TensorSpec,
};

/// Answers `y` with its input `x`.
struct Echo;

impl ModelInstance for Echo {
    fn infer(
        &mut self,
        inputs: &[NamedTensor],
        _outputs: &[String],
    ) -> Result<Vec<NamedTensor>, EngineError> {
        let x = inputs.first().ok_or_else(|| EngineError::new("no input"))?;
        Ok(vec![NamedTensor { name: "y".into(), tensor: x.tensor.clone() }])
    }
}

fn config(dynamic_batching: Option<DynamicBatching>) -> ModelConfig {
    let spec = |name: &str| TensorSpec { name: name.into(), data_type: DataType::Fp32, dims: vec![4] };
    ModelConfig {
        name: "echo".into(),
        max_batch_size: 8,
        inputs: vec![spec("x")],
        outputs: vec![spec("y")],
        dynamic_batching,
        ..ModelConfig::default()
    }
}

fn lone_requests(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let tensor = Tensor::from_f32(vec![1, 4], &[1.0, 2.0, 3.0, 4.0]).expect("a valid tensor");
    let request =
        InferRequest { inputs: vec![NamedTensor { name: "x".into(), tensor }], ..InferRequest::default() };
    let delayed = DynamicBatching { max_queue_delay_microseconds: 500, ..DynamicBatching::default() };
    for (name, batching) in [("batching off", None), ("max_queue_delay 500 us", Some(delayed))] {
        let options = SchedulerOptions { warm_up_rounds: 0, ..SchedulerOptions::default() };
        let scheduler = runtime
            .block_on(async { Scheduler::start(&config(batching), vec![Box::new(Echo)], &options) })
            .expect("the scheduler starts");
        c.bench_function(&format!("scheduler/lone request, {name}"), |b| {
            b.iter(|| {
                let answer = runtime.block_on(scheduler.infer(request.clone(), vec!["y".into()], None));
                black_box(answer.expect("answered"))
            })
        });
    }
}

criterion_group!(benches, lone_requests);
criterion_main!(benches);
