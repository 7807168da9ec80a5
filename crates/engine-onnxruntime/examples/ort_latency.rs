//! Single-request latency of one model instance on ONNX Runtime, without the server.
//!
//! ```sh
//! cargo run --release -p rtserve-engine-onnxruntime --example ort_latency -- \
//!     [model.onnx (default: the example mlp)] [batch (default 1)] [intra-op threads (default 1)]
//! ```
//!
//! Every input gets zeros of its declared shape, with dynamic dimensions set to the batch size.

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rtserve_core::{Engine, LoadOptions, NamedTensor, Tensor, TensorData};
use rtserve_engine_onnxruntime::{OrtEngine, OrtOptions};

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let model = args.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/model_repository/mlp/1/model.onnx")
    });
    let batch: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1);
    let threads: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1);

    let engine = OrtEngine::new(&OrtOptions::default())?;
    println!("onnxruntime from {} at {}", engine.found_by(), engine.library().display());
    let signature = engine.signature(&model)?;
    let mut inputs = Vec::new();
    for spec in &signature.inputs {
        let shape: Vec<usize> = spec.dims.iter().map(|&d| usize::try_from(d).unwrap_or(batch)).collect();
        let size = spec.data_type.size().ok_or("BYTES inputs are not supported here")?;
        let bytes = vec![0u8; shape.iter().product::<usize>() * size];
        let tensor = Tensor::new(spec.data_type, shape, TensorData::Raw(bytes.into()))?;
        inputs.push(NamedTensor { name: spec.name.clone(), tensor });
    }
    let mut instance = engine.load(&model, &LoadOptions { intra_op_threads: threads })?;
    for _ in 0..200 {
        instance.infer(&inputs, &[])?;
    }
    let mut times: Vec<Duration> = Vec::with_capacity(5000);
    let start = Instant::now();
    while times.len() < 5000 && start.elapsed() < Duration::from_secs(10) {
        let t = Instant::now();
        instance.infer(&inputs, &[])?;
        times.push(t.elapsed());
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "{} batch {batch}, {threads} intra-op thread(s), {} runs: mean {mean:?}, p50 {:?}, p99 {:?}",
        model.display(),
        times.len(),
        at(0.5),
        at(0.99)
    );
    Ok(())
}
