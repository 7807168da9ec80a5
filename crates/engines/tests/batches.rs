//! Both engines read a batch straight from the requests' own tensors
//! ([`ModelInstance::infer_batch`]); that must answer exactly as running the joined tensor
//! ([`concat_rows`] then [`ModelInstance::infer`]), for every example model whose inputs all
//! have a batch dimension, with uneven request sizes.
//!
//! The ONNX Runtime half prints a note and passes where this machine has no ONNX Runtime.

use std::path::{Path, PathBuf};

use rtserve_core::wire::Element;
use rtserve_core::{
    batch_inputs, concat_rows, DataType, Engine, LoadOptions, NamedTensor, Tensor, TensorData,
};
use rtserve_engines::tract::TractEngine;

fn model_path(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../examples/model_repository/{model}/1/model.onnx"))
}

/// `rows` rows of every input the model declares, with values that differ per request.
fn request(engine: &dyn Engine, model: &str, rows: usize, seed: usize) -> Vec<NamedTensor> {
    let signature = engine.signature(&model_path(model)).expect("signature");
    signature
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = std::iter::once(rows)
                .chain(spec.dims[1..].iter().map(|&d| usize::try_from(d).unwrap_or(3)))
                .collect();
            let n: usize = shape.iter().product();
            let pattern = |i: usize| (i * 7 + seed * 13) % 11;
            let raw = match spec.data_type {
                DataType::Fp32 => {
                    f32::encode(&(0..n).map(|i| pattern(i) as f32 / 4.0 - 1.0).collect::<Vec<_>>())
                }
                DataType::Int64 => i64::encode(&(0..n).map(|i| pattern(i) as i64 - 5).collect::<Vec<_>>()),
                DataType::Int32 => i32::encode(&(0..n).map(|i| pattern(i) as i32 - 5).collect::<Vec<_>>()),
                DataType::Bool => bool::encode(&(0..n).map(|i| pattern(i) % 2 == 0).collect::<Vec<_>>()),
                other => panic!("{model}: add values for {other} inputs to this test"),
            };
            let tensor =
                Tensor::new(spec.data_type, shape, TensorData::Raw(raw.into())).expect("sized to its shape");
            NamedTensor { name: spec.name.clone(), tensor }
        })
        .collect()
}

fn check(engine: &dyn Engine) {
    let mut checked = 0;
    for model in ["mlp", "two_io", "int_bool", "dynamic_seq", "cnn"] {
        let signature = engine.signature(&model_path(model)).expect("signature");
        if signature.inputs.iter().any(|spec| spec.dims.first() != Some(&-1)) {
            continue;
        }
        let mut instance = engine.load(&model_path(model), &LoadOptions::default()).expect("loads");
        let requests: Vec<Vec<NamedTensor>> =
            [1, 3, 2].iter().enumerate().map(|(seed, &rows)| request(engine, model, rows, seed)).collect();
        let parts: Vec<&[NamedTensor]> = requests.iter().map(Vec::as_slice).collect();
        let joined = concat_rows(&parts).expect("joins");
        let expected = instance.infer(&joined, &[]).expect("runs the joined batch");
        let batch = batch_inputs(&parts).expect("batches");
        let got = instance.infer_batch(&batch, &[]).expect("runs the batch from its parts");
        assert_eq!(got, expected, "{} on {model}", engine.name());
        assert_eq!(got[0].tensor.shape()[0], 6, "{model}: the rows of the three requests");
        checked += 1;
    }
    assert!(checked >= 2, "{}: only {checked} example models have a batch dimension", engine.name());
}

#[test]
fn tract_reads_batches_from_the_requests() {
    check(&TractEngine);
}

#[cfg(feature = "onnxruntime")]
#[test]
fn onnxruntime_reads_batches_from_the_requests() {
    use rtserve_engines::onnxruntime::{locate_library, OrtEngine, OrtOptions};
    if let Err(e) = locate_library(None) {
        eprintln!("skipping: no ONNX Runtime library here ({e})");
        return;
    }
    check(&OrtEngine::new(&OrtOptions::default()).expect("the library was found, so it must load"));
}
