//! One conformance suite for every engine: the example model repository against its expected
//! outputs (computed independently with NumPy by `scripts/make_test_models.py`), generated
//! identity models for every element type, output selection, bad requests and bad files, and
//! instances of one prepared model running on their own threads.
//!
//! Each test runs on tract, then on ONNX Runtime where this machine has its library (without
//! one, a note says that half was skipped).

#[path = "support/onnx_writer.rs"]
mod onnx_writer;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use half::f16;
use onnx_writer::{elem, identity_model, Dim, Io};
use rtserve_core::{
    DataType, Device, Engine, GpuPlacement, LoadOptions, ModelInstance, NamedTensor, Tensor, TensorData,
    TensorSpec,
};
use rtserve_engines::tract::TractEngine;
use serde_json::Value;

/// tract, and ONNX Runtime where this build has it and this machine has its library (else a note).
fn engines() -> Vec<Arc<dyn Engine>> {
    let mut engines: Vec<Arc<dyn Engine>> = vec![Arc::new(TractEngine)];
    match onnxruntime() {
        Ok(engine) => engines.push(engine),
        Err(reason) => eprintln!("skipping the ONNX Runtime half: {reason}"),
    }
    engines
}

#[cfg(feature = "onnxruntime")]
fn onnxruntime() -> Result<Arc<dyn Engine>, String> {
    use rtserve_engines::onnxruntime::{locate_library, OrtEngine, OrtOptions};
    locate_library(None).map_err(|e| format!("no ONNX Runtime library here ({e})"))?;
    let engine = OrtEngine::new(&OrtOptions::default()).expect("the library was found, so it must load");
    Ok(Arc::new(engine))
}

#[cfg(not(feature = "onnxruntime"))]
fn onnxruntime() -> Result<Arc<dyn Engine>, String> {
    Err("built without the onnxruntime feature".to_string())
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model_path(model: &str) -> PathBuf {
    repo_root().join(format!("examples/model_repository/{model}/1/model.onnx"))
}

fn expected(model: &str) -> Value {
    read_json(&repo_root().join(format!("tests/data/expected/{model}.json")))
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("valid JSON")
}

/// A tensor from the expected-output JSON format: `{name, datatype, shape, data}`.
fn tensor_from_json(v: &Value) -> NamedTensor {
    let name = v["name"].as_str().expect("name").to_string();
    let datatype = DataType::from_str(v["datatype"].as_str().expect("datatype")).expect("known datatype");
    let shape: Vec<usize> =
        v["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim") as usize).collect();
    let data = v["data"].as_array().expect("data");
    let mut bytes = Vec::new();
    for x in data {
        match datatype {
            DataType::Fp32 => bytes.extend((x.as_f64().expect("number") as f32).to_le_bytes()),
            DataType::Int64 => bytes.extend(x.as_i64().expect("integer").to_le_bytes()),
            DataType::Bool => bytes.push(u8::from(x.as_bool().expect("bool"))),
            DataType::Int8 => {
                bytes.extend(i8::try_from(x.as_i64().expect("integer")).expect("int8").to_le_bytes())
            }
            other => panic!("the expected files use FP32, INT64, INT8 and BOOL, not {other}"),
        }
    }
    let tensor = Tensor::new(datatype, shape, TensorData::Raw(bytes.into())).expect("consistent tensor");
    NamedTensor { name, tensor }
}

/// Element values as f64, for comparing any numeric type.
fn values(t: &Tensor) -> Vec<f64> {
    let raw = t.raw().expect("fixed-size tensor");
    match t.datatype() {
        DataType::Fp32 => {
            raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect()
        }
        DataType::Int64 => {
            raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64).collect()
        }
        DataType::Bool => raw.iter().map(|&b| f64::from(b)).collect(),
        DataType::Int8 => raw.iter().map(|&b| f64::from(b as i8)).collect(),
        other => panic!("no comparison for {other}"),
    }
}

/// Runs `model`, loaded with `options`, on the expected inputs and compares every output within
/// `1e-4` (relative for large values).
fn check_against_expected(engine: &dyn Engine, model: &str, options: &LoadOptions) {
    check_file(engine, &model_path(model), &expected(model), options, 0.0);
}

/// A case's `inputs` or `outputs` (`key`) as tensors.
fn tensors(case: &Value, key: &str) -> Vec<NamedTensor> {
    case[key].as_array().unwrap_or_else(|| panic!("{key}")).iter().map(tensor_from_json).collect()
}

/// Runs the model file on a case's inputs and compares every output within `1e-4` (relative
/// for large values) plus `steps` (for integer outputs: quantization steps).
fn check_file(engine: &dyn Engine, path: &Path, case: &Value, options: &LoadOptions, steps: f64) {
    let model = path.display();
    let inputs = tensors(case, "inputs");
    let wanted = tensors(case, "outputs");
    let names: Vec<String> = wanted.iter().map(|t| t.name.clone()).collect();

    let mut instance = engine.load(path, options).expect("load");
    let got = instance.infer(&inputs, &names).expect("infer");
    compare(&got, &wanted, &format!("{}: {model}", engine.name()), steps);
}

/// Every output of `got` against `wanted` within `1e-4` (relative for large values) plus `steps`.
fn compare(got: &[NamedTensor], wanted: &[NamedTensor], model: &str, steps: f64) {
    assert_eq!(got.len(), wanted.len(), "{model}");
    for (g, w) in got.iter().zip(wanted) {
        assert_eq!(g.name, w.name, "{model}");
        assert_eq!(g.tensor.datatype(), w.tensor.datatype(), "{model}/{}", w.name);
        assert_eq!(g.tensor.shape(), w.tensor.shape(), "{model}/{}", w.name);
        for (i, (a, b)) in values(&g.tensor).iter().zip(values(&w.tensor)).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0) + steps,
                "{model}/{}[{i}]: got {a}, expected {b}",
                w.name
            );
        }
    }
}

/// A model answers from the file it was loaded from: a file renamed over it afterwards (as a
/// deployment replaces a model) is never read for a later run. With `LoadOptions::batches` a
/// batch runs as loaded; without it, a batch runs as loaded or is refused, naming the change
/// (tract makes its plan for batches on the first one, from the file).
#[test]
fn a_file_replaced_after_the_load_is_not_read() {
    for engine in engines() {
        for batches in [true, false] {
            a_file_replaced_after_the_load_is_not_read_on(engine.as_ref(), batches);
        }
    }
}

fn a_file_replaced_after_the_load_is_not_read_on(engine: &dyn Engine, batches: bool) {
    // Two rows: a batch.
    let case = expected("mlp");
    let inputs = tensors(&case, "inputs");
    let wanted = tensors(&case, "outputs");
    let names: Vec<String> = wanted.iter().map(|t| t.name.clone()).collect();
    let dir = std::env::temp_dir().join(format!(
        "rtserve-{}-replaced-{batches}-{}",
        engine.name(),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("model.onnx");
    std::fs::copy(model_path("mlp"), &path).expect("copy");
    let prepared = engine.prepare(&path).expect("prepare");
    let mut instance =
        prepared.instance(&LoadOptions { batches, ..LoadOptions::default() }).expect("instance");

    // An identity with the same input and output, renamed over the file.
    let io = |name: &str| Io {
        name: name.into(),
        elem_type: elem::FLOAT,
        dims: vec![Dim::Symbol("N"), Dim::Fixed(784)],
    };
    let staging = dir.join("model.onnx.partial");
    std::fs::write(&staging, identity_model(&[(io("input"), io("output"))])).expect("write");
    std::fs::rename(&staging, &path).expect("rename");

    let model = format!("{} (batches {batches})", engine.name());
    match instance.infer(&inputs, &names) {
        Ok(got) => compare(&got, &wanted, &model, 0.0),
        Err(e) if !batches => assert!(e.0.contains("has changed since"), "{model}: {e}"),
        Err(e) => panic!("{model}: {e}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn spec(name: &str, data_type: DataType, dims: &[i64]) -> TensorSpec {
    TensorSpec { name: name.into(), data_type, dims: dims.to_vec() }
}

#[test]
fn signatures_of_example_models() {
    for engine in engines() {
        signatures_of_example_models_on(engine.as_ref());
    }
}

fn signatures_of_example_models_on(engine: &dyn Engine) {
    let fp32 = DataType::Fp32;
    let cases = [
        ("mlp", vec![spec("input", fp32, &[-1, 784])], vec![spec("output", fp32, &[-1, 10])]),
        ("cnn", vec![spec("input", fp32, &[-1, 1, 28, 28])], vec![spec("logits", fp32, &[-1, 10])]),
        (
            "two_io",
            vec![spec("a", fp32, &[-1, 4]), spec("b", fp32, &[-1, 4])],
            vec![spec("sum", fp32, &[-1, 4]), spec("product", fp32, &[-1, 4])],
        ),
        (
            "int_bool",
            vec![spec("x", DataType::Int64, &[-1, 3]), spec("mask", DataType::Bool, &[-1, 3])],
            vec![spec("y", DataType::Int64, &[-1, 3]), spec("positive", DataType::Bool, &[-1, 3])],
        ),
        ("dynamic_seq", vec![spec("tokens", fp32, &[-1, -1, 8])], vec![spec("pooled", fp32, &[-1, 4])]),
    ];
    for (model, inputs, outputs) in cases {
        let signature = engine.signature(&model_path(model)).expect(model);
        assert_eq!(signature.inputs, inputs, "{}: {model}", engine.name());
        assert_eq!(signature.outputs, outputs, "{}: {model}", engine.name());
        let prepared = engine.prepare(&model_path(model)).expect(model);
        assert_eq!(prepared.signature(), &signature, "{}: {model}", engine.name());
    }
}

#[test]
fn outputs_match_numpy_reference() {
    for engine in engines() {
        for model in ["mlp", "two_io", "int_bool", "dynamic_seq", "cnn"] {
            check_against_expected(engine.as_ref(), model, &LoadOptions::default());
        }
    }
}

#[test]
fn thread_settings_change_speed_not_answers() {
    for engine in engines() {
        for (intra_op_threads, allow_spinning) in [(1, false), (2, false), (2, true)] {
            for model in ["mlp", "cnn"] {
                let options = LoadOptions { intra_op_threads, allow_spinning, ..LoadOptions::default() };
                check_against_expected(engine.as_ref(), model, &options);
            }
        }
    }
}

/// On a host without a GPU (or a GPU build of ONNX Runtime) an instance asked for on a GPU is
/// an error that says so, from both engines; never a panic, never a silent CPU instance.
#[test]
fn a_gpu_instance_without_a_gpu_is_an_error() {
    for engine in engines() {
        if engine.gpus().is_ok() {
            eprintln!("{}: this host has a usable GPU; skipping", engine.name());
            continue;
        }
        let prepared = engine.prepare(&model_path("mlp")).expect("prepare");
        let options = LoadOptions { device: Device::Gpu(GpuPlacement::default()), ..LoadOptions::default() };
        let err = prepared.instance(&options).err().expect("a GPU instance must fail here");
        let text = err.to_string();
        let expected = if engine.name() == "tract" { "runs on the CPU only" } else { "CUDA" };
        assert!(text.contains(expected), "{}: {text}", engine.name());
        assert!(!text.contains("panicked"), "{text}");
    }
}

#[test]
fn output_selection_order_and_repeats() {
    for engine in engines() {
        output_selection_order_and_repeats_on(engine.as_ref());
    }
}

fn output_selection_order_and_repeats_on(engine: &dyn Engine) {
    let case = expected("two_io");
    let inputs = tensors(&case, "inputs");
    let mut instance = engine
        .load(
            &model_path("two_io"),
            &LoadOptions { intra_op_threads: 1, allow_spinning: false, ..LoadOptions::default() },
        )
        .expect("load");
    let names = |out: &[NamedTensor]| out.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    let ask = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let all = instance.infer(&inputs, &[]).expect("all outputs");
    assert_eq!(names(&all), ["sum", "product"]);
    // A subset, then the same subset again (cached run options), then a different one.
    for _ in 0..2 {
        let one = instance.infer(&inputs, &ask(&["product"])).expect("one output");
        assert_eq!(one, vec![all[1].clone()]);
    }
    let one = instance.infer(&inputs, &ask(&["sum"])).expect("the other output");
    assert_eq!(one, vec![all[0].clone()]);
    let reordered = instance.infer(&inputs, &ask(&["product", "sum", "product"])).expect("repeats");
    assert_eq!(names(&reordered), ["product", "sum", "product"]);
    assert_eq!(reordered[2], all[1]);
}

#[test]
fn bad_requests_are_errors() {
    for engine in engines() {
        bad_requests_are_errors_on(engine.as_ref());
    }
}

fn bad_requests_are_errors_on(engine: &dyn Engine) {
    let mut instance = engine.load(&model_path("mlp"), &LoadOptions::default()).expect("load");
    let good = NamedTensor {
        name: "input".into(),
        tensor: Tensor::from_f32(vec![1, 784], &[0.5; 784]).expect("tensor"),
    };
    assert_eq!(instance.infer(std::slice::from_ref(&good), &[]).expect("ok")[0].tensor.shape(), [1, 10]);

    let renamed = NamedTensor { name: "nope".into(), ..good.clone() };
    let err = instance.infer(&[renamed], &[]).expect_err("unknown input");
    assert!(err.0.contains("'nope'") && err.0.contains("input"), "{err}");

    let err = instance.infer(std::slice::from_ref(&good), &["nope".to_string()]).expect_err("unknown output");
    assert!(err.0.contains("'nope'"), "{err}");

    let wrong_shape = NamedTensor {
        name: "input".into(),
        tensor: Tensor::from_f32(vec![1, 783], &[0.5; 783]).expect("tensor"),
    };
    assert!(instance.infer(&[wrong_shape], &[]).is_err());

    let fp64 = Tensor::new(DataType::Fp64, vec![1, 784], TensorData::Raw(vec![0u8; 784 * 8].into()))
        .expect("tensor");
    let err =
        instance.infer(&[NamedTensor { name: "input".into(), tensor: fp64 }], &[]).expect_err("wrong type");
    assert!(err.0.contains("input"), "{}: {err}", engine.name());

    let err = instance.infer(&[], &[]).expect_err("missing input");
    assert!(err.0.contains("'input' is missing"), "{err}");
    // The instance still works after errors.
    assert!(instance.infer(&[good], &[]).is_ok());
}

#[test]
fn bad_model_files_are_errors() {
    for engine in engines() {
        bad_model_files_are_errors_on(engine.as_ref());
    }
}

fn bad_model_files_are_errors_on(engine: &dyn Engine) {
    let missing = repo_root().join("examples/model_repository/none/1/model.onnx");
    assert!(engine.signature(&missing).is_err());
    assert!(engine.load(&missing, &LoadOptions::default()).is_err());

    let dir = std::env::temp_dir().join(format!("rtserve-{}-bad-{}", engine.name(), std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let junk = dir.join("junk.onnx");
    std::fs::write(&junk, b"this is not a protobuf").expect("write");
    let err = engine.signature(&junk).expect_err("junk");
    assert!(err.0.contains("junk.onnx"), "{err}");

    // bfloat16 has no KServe datatype: refused at signature and load time (ONNX Runtime names
    // the input; tract cannot read the file at all and names the file and the element type).
    let bf16 = dir.join("bf16.onnx");
    let io = |name: &str| Io { name: name.into(), elem_type: elem::BFLOAT16, dims: vec![Dim::Fixed(2)] };
    std::fs::write(&bf16, identity_model(&[(io("x"), io("y"))])).expect("write");
    let err = engine.signature(&bf16).expect_err("bf16");
    assert!(err.0.to_lowercase().contains("bf16") || err.0.contains("Bfloat16"), "{err}");
    assert!(err.0.contains("'x'") || err.0.contains("bf16.onnx"), "{err}");
    assert!(engine.load(&bf16, &LoadOptions::default()).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The raw bytes of `values` as a tensor of `datatype`.
fn raw(datatype: DataType, shape: Vec<usize>, bytes: Vec<u8>) -> Tensor {
    Tensor::new(datatype, shape, TensorData::Raw(bytes.into())).expect("consistent tensor")
}

#[test]
fn every_datatype_round_trips() {
    for engine in engines() {
        every_datatype_round_trips_on(engine.as_ref());
    }
}

fn every_datatype_round_trips_on(engine: &dyn Engine) {
    let f16s: Vec<u8> =
        [1.0f32, -2.5, 65504.0, 0.1].iter().flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes()).collect();
    let le = |vals: &[i64], size: usize| -> Vec<u8> {
        vals.iter().flat_map(|v| v.to_le_bytes()[..size].to_vec()).collect()
    };
    let cases: Vec<(u64, Tensor)> = vec![
        (elem::BOOL, raw(DataType::Bool, vec![2, 2], vec![1, 0, 0, 1])),
        (elem::UINT8, raw(DataType::Uint8, vec![2, 2], vec![0, 1, 254, 255])),
        (elem::UINT16, raw(DataType::Uint16, vec![2, 2], le(&[0, 1, 0x1234, 0xffff], 2))),
        (elem::UINT32, raw(DataType::Uint32, vec![2, 2], le(&[0, 1, 0x1234_5678, 0xffff_ffff], 4))),
        (
            elem::UINT64,
            raw(
                DataType::Uint64,
                vec![2, 2],
                [0u64, 1, u64::MAX - 1, u64::MAX].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        ),
        (elem::INT8, raw(DataType::Int8, vec![2, 2], le(&[-128, -1, 0, 127], 1))),
        (elem::INT16, raw(DataType::Int16, vec![2, 2], le(&[-32768, -1, 0, 32767], 2))),
        (elem::INT32, raw(DataType::Int32, vec![2, 2], le(&[i32::MIN as i64, -1, 0, i32::MAX as i64], 4))),
        (elem::INT64, raw(DataType::Int64, vec![2, 2], le(&[i64::MIN, -1, 0, i64::MAX], 8))),
        (elem::FLOAT16, raw(DataType::Fp16, vec![2, 2], f16s)),
        (
            elem::FLOAT,
            raw(
                DataType::Fp32,
                vec![2, 2],
                [1.5f32, -0.0, f32::MAX, f32::MIN_POSITIVE].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        ),
        (
            elem::DOUBLE,
            raw(
                DataType::Fp64,
                vec![2, 2],
                [1.5f64, -0.0, f64::MAX, 1e-300].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        ),
        (
            elem::STRING,
            Tensor::new(
                DataType::Bytes,
                vec![2, 2],
                TensorData::Strings(
                    ["", "hello", "ünïcode", "a b c"].iter().map(|s| Bytes::from(*s)).collect(),
                ),
            )
            .expect("strings"),
        ),
    ];
    let pairs: Vec<(Io, Io)> = cases
        .iter()
        .enumerate()
        .map(|(i, (ty, _))| {
            let io = |name: String| Io { name, elem_type: *ty, dims: vec![Dim::Symbol("N"), Dim::Fixed(2)] };
            (io(format!("in{i}")), io(format!("out{i}")))
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("rtserve-{}-types-{}", engine.name(), std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("identity.onnx");
    std::fs::write(&path, identity_model(&pairs)).expect("write model");

    let signature = engine.signature(&path).expect("signature");
    for (i, (_, tensor)) in cases.iter().enumerate() {
        assert_eq!(signature.inputs[i], spec(&format!("in{i}"), tensor.datatype(), &[-1, 2]));
        assert_eq!(signature.outputs[i], spec(&format!("out{i}"), tensor.datatype(), &[-1, 2]));
    }

    let mut instance = engine.load(&path, &LoadOptions::default()).expect("load");
    let inputs: Vec<NamedTensor> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, tensor))| NamedTensor { name: format!("in{i}"), tensor: tensor.clone() })
        .collect();
    let outputs = instance.infer(&inputs, &[]).expect("infer");
    for (i, (_, tensor)) in cases.iter().enumerate() {
        assert_eq!(outputs[i].name, format!("out{i}"));
        assert_eq!(&outputs[i].tensor, tensor, "{}", tensor.datatype());
    }

    // A NUL byte cannot cross into an ONNX Runtime string: there, an error, not a panic; tract
    // keeps it.
    let mut with_nul = inputs.clone();
    with_nul[12].tensor = Tensor::new(
        DataType::Bytes,
        vec![1, 2],
        TensorData::Strings(vec![Bytes::from_static(b"a\0b"), Bytes::new()]),
    )
    .expect("strings");
    for input in with_nul.iter_mut().take(12) {
        let tensor = &input.tensor;
        let half_len = tensor.raw().expect("raw").len() / 2;
        input.tensor = raw(tensor.datatype(), vec![1, 2], tensor.raw().expect("raw")[..half_len].to_vec());
    }
    match instance.infer(&with_nul, &[]) {
        Err(err) => assert!(engine.name() == "onnxruntime" && err.0.contains("in12"), "{err}"),
        Ok(outputs) => {
            assert_eq!(engine.name(), "tract");
            assert_eq!(outputs[12].tensor, with_nul[12].tensor);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn instances_run_on_their_own_threads() {
    for engine in engines() {
        instances_run_on_their_own_threads_on(engine.as_ref());
    }
}

fn instances_run_on_their_own_threads_on(engine: &dyn Engine) {
    let case = expected("mlp");
    let inputs = tensors(&case, "inputs");
    let reference = engine
        .load(&model_path("mlp"), &LoadOptions::default())
        .expect("load")
        .infer(&inputs, &[])
        .expect("infer");
    // Three instances of one prepared model, each on its own thread.
    let prepared = engine.prepare(&model_path("mlp")).expect("prepare");
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let mut instance: Box<dyn ModelInstance> = prepared
                .instance(&LoadOptions {
                    intra_op_threads: 1,
                    allow_spinning: false,
                    ..LoadOptions::default()
                })
                .expect("instance");
            let inputs = inputs.clone();
            std::thread::spawn(move || (0..20).map(|_| instance.infer(&inputs, &[]).expect("infer")).last())
        })
        .collect();
    for handle in handles {
        let last = handle.join().expect("thread").expect("ran");
        assert_eq!(last, reference, "{}", engine.name());
    }
}

#[cfg(feature = "onnxruntime")]
#[test]
fn onnxruntime_engines_share_the_process_runtime() {
    use rtserve_engines::onnxruntime::{locate_library, OrtEngine, OrtOptions};
    if let Err(e) = locate_library(None) {
        eprintln!("skipping: no ONNX Runtime library here ({e})");
        return;
    }
    let first = OrtEngine::new(&OrtOptions::default()).expect("first engine");
    let second = OrtEngine::new(&OrtOptions::default()).expect("second engine");
    assert_eq!(second.library(), first.library());
}

fn edge_model(name: &str) -> PathBuf {
    repo_root().join("examples/edge").join(name)
}

/// A float TFLite file (a Keras CNN converted by TensorFlow, `scripts/edge/tflite_zoo.py`) on
/// tract and on ONNX Runtime (rewritten as ONNX), against Google's interpreter (LiteRT) on the
/// same file and input.
#[test]
fn tflite_float_matches_litert() {
    let path = edge_model("fashion_cnn_float.tflite");
    let case = read_json(&edge_model("refs/fashion_cnn_float.expected.json"));
    for engine in engines() {
        let signature = engine.signature(&path).expect("signature");
        assert_eq!(signature.inputs, vec![spec("serving_default_image:0", DataType::Fp32, &[1, 28, 28, 1])]);
        // Outputs keep the file's tensor names, as LiteRT reports them.
        assert_eq!(signature.outputs, vec![spec("StatefulPartitionedCall_1:0", DataType::Fp32, &[1, 10])]);
        check_file(engine.as_ref(), &path, &case, &LoadOptions::default(), 0.0);
    }
}

/// The same CNN converted to full INT8 (int8 input and output, per-channel int8 weights): tract
/// runs it on its quantized operators, ONNX Runtime on its integer kernels (QDQ), and both
/// answer within one quantization step of LiteRT.
#[test]
fn tflite_int8_matches_litert() {
    let path = edge_model("fashion_cnn_int8.tflite");
    let case = read_json(&edge_model("refs/fashion_cnn_int8.expected.json"));
    for engine in engines() {
        let signature = engine.signature(&path).expect("signature");
        assert_eq!(signature.inputs, vec![spec("serving_default_image:0", DataType::Int8, &[1, 28, 28, 1])]);
        assert_eq!(signature.outputs, vec![spec("StatefulPartitionedCall_1:0", DataType::Int8, &[1, 10])]);
        check_file(engine.as_ref(), &path, &case, &LoadOptions::default(), 1.0);
    }
}

/// A real-world file from a registry package (MediaPipe's face detector: fp16 weights behind
/// DEQUANTIZE, PAD, CONCATENATION, two outputs) loads and runs on both engines, which agree;
/// its values are checked against LiteRT by tests/python/test_tflite.py, which reads the
/// reference arrays.
#[test]
fn tflite_face_detector_runs() {
    let path = edge_model("face_detection_short_range.tflite");
    // A fixed image: each value a function of its index.
    let pixels: Vec<f32> = (0..128 * 128 * 3).map(|i| ((i % 251) as f32 / 125.0) - 1.0).collect();
    let image: Vec<u8> = pixels.iter().flat_map(|v| v.to_le_bytes()).collect();
    let input = NamedTensor {
        name: "input".into(),
        tensor: Tensor::new(DataType::Fp32, vec![1, 128, 128, 3], TensorData::Raw(image.into()))
            .expect("tensor"),
    };
    let mut answers = Vec::new();
    for engine in engines() {
        let signature = engine.signature(&path).expect("signature");
        assert_eq!(signature.inputs, vec![spec("input", DataType::Fp32, &[1, 128, 128, 3])]);
        let outputs = engine
            .load(&path, &LoadOptions::default())
            .expect("load")
            .infer(std::slice::from_ref(&input), &[])
            .expect("infer");
        let shapes: Vec<(&str, &[usize])> =
            outputs.iter().map(|o| (o.name.as_str(), o.tensor.shape())).collect();
        assert_eq!(shapes, vec![("regressors", &[1, 896, 16][..]), ("classificators", &[1, 896, 1][..])]);
        answers.push(outputs.iter().map(|o| values(&o.tensor)).collect::<Vec<_>>());
    }
    for other in answers.iter().skip(1) {
        for (a, b) in answers[0].iter().flatten().zip(other.iter().flatten()) {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "tract {a}, ONNX Runtime {b}");
        }
    }
}

/// The CNN converted with a run-time batch (`shape_signature` -1; Flatten's shape computed at
/// run time with SHAPE, STRIDED_SLICE `shrink_axis_mask` and PACK, which the vendored reader
/// decodes): a symbolic batch dimension, and eight examples in one batch within one step of
/// LiteRT, which ran them one by one.
#[test]
fn tflite_run_time_batch_matches_litert() {
    let engine = TractEngine;
    let path = edge_model("fashion_cnn_int8_dynamic_batch.tflite");
    let signature = engine.signature(&path).expect("signature");
    assert_eq!(signature.inputs, vec![spec("serving_default_image:0", DataType::Int8, &[-1, 28, 28, 1])]);
    assert_eq!(signature.outputs, vec![spec("StatefulPartitionedCall_1:0", DataType::Int8, &[-1, 10])]);
    let case = read_json(&edge_model("refs/fashion_cnn_int8_dynamic_batch.expected.json"));
    assert_eq!(case["inputs"][0]["shape"][0], 8, "the reference is a batch of eight");
    check_file(&engine, &path, &case, &LoadOptions::default(), 1.0);
}

/// TFLite files an engine cannot run are load errors that name the file and what failed, not
/// panics: an operator neither has (CUMSUM, `tflite_zoo.py unsupported`), a truncated
/// flatbuffer, and on ONNX Runtime an operator the rewrite to ONNX lacks (SHAPE, in the file
/// with a run-time batch, which tract runs).
#[test]
fn tflite_files_an_engine_cannot_run_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("rtserve-tflite-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let bytes = std::fs::read(edge_model("fashion_cnn_float.tflite")).expect("read");
    let truncated = dir.join("truncated.tflite");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).expect("write");
    for engine in engines() {
        let file = "cumsum.tflite";
        let err = engine.prepare(&edge_model(file)).err().expect("CUMSUM is not supported");
        assert!(err.0.contains(file) && err.0.contains("CUMSUM"), "{err}");
        let err = engine.prepare(&truncated).err().expect("truncated");
        assert!(err.0.contains("truncated.tflite"), "{err}");
        if engine.name() == "onnxruntime" {
            let file = "fashion_cnn_int8_dynamic_batch.tflite";
            let err = engine.prepare(&edge_model(file)).err().expect("SHAPE is not rewritten");
            assert!(err.0.contains(file) && err.0.contains("SHAPE"), "{err}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TFLite file goes to ONNX Runtime when it converts, and to tract when it does not (whatever
/// `--engine` says) or when the config's `backend` or `--engine` says tract.
#[test]
fn the_engine_for_a_tflite_file() {
    use rtserve_core::ModelConfig;
    use rtserve_engines::{EngineChoice, Engines};
    if let Err(reason) = onnxruntime() {
        eprintln!("skipped: {reason}");
        return;
    }
    let config = |backend: Option<&str>| ModelConfig {
        name: "m".into(),
        platform: "tensorflowlite".into(),
        backend: backend.map(str::to_string),
        default_model_filename: "model.tflite".into(),
        ..ModelConfig::default()
    };
    let converts = edge_model("fashion_cnn_int8.tflite");
    let does_not = edge_model("fashion_cnn_int8_dynamic_batch.tflite");
    let auto = Engines::new(EngineChoice::Auto, None).expect("auto");
    assert_eq!(auto.for_model(&config(None), &converts).name(), "onnxruntime");
    assert_eq!(auto.for_model(&config(Some("tflite")), &converts).name(), "onnxruntime");
    assert_eq!(auto.for_model(&config(Some("tract")), &converts).name(), "tract");
    assert_eq!(auto.for_model(&config(None), &does_not).name(), "tract");
    let onnxruntime = Engines::new(EngineChoice::OnnxRuntime, None).expect("onnxruntime");
    assert_eq!(onnxruntime.for_model(&config(None), &converts).name(), "onnxruntime");
    assert_eq!(onnxruntime.for_model(&config(None), &does_not).name(), "tract");
    let tract = Engines::new(EngineChoice::Tract, None).expect("tract");
    assert_eq!(tract.for_model(&config(None), &converts).name(), "tract");
}

/// A small mobile classifier (`tflite_zoo.py mobile`: strided, 1x1 and depthwise convolutions,
/// one with a depth multiplier of 2, a residual ADD, AveragePool and CONCATENATION, hard-swish, a
/// squeeze-and-excitation gate, MEAN, SOFTMAX; two outputs), float and full INT8, on ONNX
/// Runtime through the rewrite to ONNX, against LiteRT on the same file and input.
#[test]
fn tflite_mobile_block_on_onnxruntime_matches_litert() {
    let engine = match onnxruntime() {
        Ok(engine) => engine,
        Err(reason) => return eprintln!("skipped: {reason}"),
    };
    for (stem, steps) in [("mobile_block_float", 0.0), ("mobile_block_int8", 1.0)] {
        let path = edge_model(&format!("{stem}.tflite"));
        let case = read_json(&edge_model(&format!("refs/{stem}.expected.json")));
        check_file(engine.as_ref(), &path, &case, &LoadOptions::default(), steps);
    }
}
