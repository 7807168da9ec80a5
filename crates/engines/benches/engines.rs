//! Guards against an inference latency regression in either engine, tract or ONNX Runtime, on
//! the example models: one loaded instance, no server, batch 1 and 8, 1 and 2 intra-op threads.
//!
//! ```sh
//! cargo bench -p rtserve-engines --bench engines            # all cases, about a minute
//! cargo bench -p rtserve-engines --bench engines -- cnn/    # one model (or engine, batch...)
//! ```
//!
//! Cases are named `{model}/{engine}/batch={batch}/threads={threads}`. Both engines get the same
//! inputs: uniform in [0, 1) from a fixed seed. tract does not use `intra_op_threads`, so its two
//! thread counts differ only by noise. Without ONNX Runtime on the machine (see
//! `rtserve_engines::onnxruntime::locate_library`) only tract is measured, with a note on stderr.
//! Figures and the machine they come from: `docs/benchmarks/engines.md`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rtserve_core::{DataType, Engine, LoadOptions, ModelSignature, NamedTensor, Tensor};
use rtserve_engines::tract::TractEngine;

const MODELS: [&str; 2] = ["mlp", "cnn"];
const BATCHES: [usize; 2] = [1, 8];
const THREADS: [usize; 2] = [1, 2];
const SEED: u64 = 0x5eed_2024;

fn model_path(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/model_repository")
        .join(model)
        .join("1/model.onnx")
}

/// ONNX Runtime, if this build has the engine and the machine has the library.
#[cfg(feature = "onnxruntime")]
fn onnxruntime() -> Option<Box<dyn Engine>> {
    use rtserve_engines::onnxruntime::{OrtEngine, OrtOptions};
    match OrtEngine::new(&OrtOptions { library: None }) {
        Ok(engine) => {
            eprintln!("onnxruntime from {} at {}", engine.found_by(), engine.library().display());
            Some(Box::new(engine))
        }
        Err(e) => {
            eprintln!("note: benchmarking tract only: {e}");
            None
        }
    }
}

#[cfg(not(feature = "onnxruntime"))]
fn onnxruntime() -> Option<Box<dyn Engine>> {
    eprintln!("note: benchmarking tract only: built without the `onnxruntime` feature");
    None
}

/// SplitMix64: a fixed algorithm, so the inputs stay the same whatever crate versions change.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), on the 2^-24 grid that an f32 represents exactly.
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u32 << 24) as f32
    }
}

/// One random FP32 tensor per declared input, dynamic dimensions set to `batch`.
fn random_inputs(signature: &ModelSignature, batch: usize, rng: &mut SplitMix64) -> Vec<NamedTensor> {
    signature
        .inputs
        .iter()
        .map(|spec| {
            assert_eq!(
                spec.data_type,
                DataType::Fp32,
                "input '{}': only FP32 inputs are generated",
                spec.name
            );
            let shape: Vec<usize> = spec.dims.iter().map(|&d| usize::try_from(d).unwrap_or(batch)).collect();
            let values: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| rng.next_f32()).collect();
            let tensor =
                Tensor::from_f32(shape, &values).unwrap_or_else(|e| panic!("input '{}': {e}", spec.name));
            NamedTensor { name: spec.name.clone(), tensor }
        })
        .collect()
}

fn engines(c: &mut Criterion) {
    let mut engines: Vec<Box<dyn Engine>> = vec![Box::new(TractEngine)];
    engines.extend(onnxruntime());
    let mut rng = SplitMix64(SEED);
    for model in MODELS {
        let path = model_path(model);
        let signature = TractEngine.signature(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut group = c.benchmark_group(model);
        for batch in BATCHES {
            let inputs = random_inputs(&signature, batch, &mut rng);
            group.throughput(Throughput::Elements(batch as u64));
            for engine in &engines {
                for threads in THREADS {
                    let mut instance = engine
                        .load(
                            &path,
                            &LoadOptions {
                                intra_op_threads: threads,
                                allow_spinning: false,
                                ..LoadOptions::default()
                            },
                        )
                        .unwrap_or_else(|e| panic!("{model} on {}: {e}", engine.name()));
                    let id = BenchmarkId::new(engine.name(), format!("batch={batch}/threads={threads}"));
                    group.bench_function(id, |b| {
                        b.iter(|| {
                            instance
                                .infer(black_box(&inputs), &[])
                                .unwrap_or_else(|e| panic!("{model} on {}: {e}", engine.name()))
                        })
                    });
                }
            }
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    // 16 cases at about 4 s each keep the whole run near a minute.
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = engines
}
criterion_main!(benches);
