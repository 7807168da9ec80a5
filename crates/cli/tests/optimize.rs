//! `rtserve optimize` end to end: the real binary quantizes, converts and evaluates the example
//! models (tract engine, so nothing needs installing), and refuses malformed files with a clear
//! error. The model zoo and ONNX Runtime cases are in tests/python/test_optimize.py.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rtserve_optimize::graph::node;
use rtserve_optimize::model::{self, float_tensor, tensor_value_info};
use rtserve_optimize::onnx::{tensor_proto::DataType, GraphProto, ModelProto, OperatorSetIdProto};
use serde_json::Value;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../examples/model_repository/{name}/1/model.onnx"))
}

fn rtserve(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rtserve"))
        .args(["optimize"])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run rtserve optimize")
}

fn ok(output: &Output) -> String {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A `.npy` file of `n` seeded pseudo-random samples of shape `shape` in [0, 1).
fn write_npy(path: &Path, n: usize, shape: &[usize]) {
    let per: usize = shape.iter().product();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let values: Vec<f32> = (0..n * per)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    let dims: Vec<String> = std::iter::once(n).chain(shape.iter().copied()).map(|d| d.to_string()).collect();
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}", dims.join(", "));
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).expect("write npy");
}

fn evaluate(reference: &Path, candidate: &Path, data: &Path, engine: &str) -> Value {
    let out = ok(&rtserve(&[
        "evaluate",
        "--engine",
        engine,
        "--reference",
        reference.to_str().expect("utf-8"),
        "--candidate",
        candidate.to_str().expect("utf-8"),
        "--data",
        data.to_str().expect("utf-8"),
        "--latency-runs",
        "2",
        "--json",
    ]));
    serde_json::from_str(&out).expect("evaluate --json")
}

#[test]
fn quantizes_the_cnn_and_stays_close_to_float() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data.npy");
    write_npy(&data, 24, &[1, 28, 28]);
    let int8 = dir.path().join("cnn_int8.onnx");
    let report = ok(&rtserve(&[
        "quantize",
        "--engine",
        "tract",
        "--model",
        example("cnn").to_str().expect("utf-8"),
        "--out",
        int8.to_str().expect("utf-8"),
        "--calibration",
        data.to_str().expect("utf-8"),
        "--json",
    ]));
    let report: Value = serde_json::from_str(&report).expect("report");
    // Conv ×2 and Gemm quantized, both Relus folded into the Conv output ranges.
    assert_eq!(report["nodes_quantized"], 3, "{report}");
    assert_eq!(report["activations_fused"], 2, "{report}");
    let q = model::load(&int8).expect("load int8");
    let ops: Vec<&str> = q.graph.as_ref().expect("graph").node.iter().map(|n| n.op_type.as_str()).collect();
    assert!(ops.contains(&"QuantizeLinear") && ops.contains(&"DequantizeLinear"), "{ops:?}");
    let e = evaluate(&example("cnn"), &int8, &data, "tract");
    let agreement = &e["agreement"];
    assert!(agreement["mean_cosine"].as_f64().expect("cosine") > 0.99, "{e}");
    assert!(agreement["top1"].as_f64().expect("top1") >= 0.9, "{e}");
    let (r, c) = (e["reference"]["file_bytes"].as_f64(), e["candidate"]["file_bytes"].as_f64());
    assert!(c.expect("size") < 0.4 * r.expect("size"), "{e}");
}

#[test]
fn quantizes_the_mlp_dynamically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data.npy");
    write_npy(&data, 8, &[784]);
    let int8 = dir.path().join("mlp_dynamic.onnx");
    let mlp = example("mlp");
    ok(&rtserve(&[
        "quantize",
        "--dynamic",
        "--model",
        mlp.to_str().expect("utf-8"),
        "--out",
        int8.to_str().expect("utf-8"),
    ]));
    let e = evaluate(&mlp, &int8, &data, "tract");
    assert!(e["agreement"]["mean_cosine"].as_f64().expect("cosine") > 0.99, "{e}");
}

/// "onnxruntime" when its library is found; `None` (a skip, with a note) otherwise, unless
/// `RTSERVE_E2E_REQUIRE_ONNXRUNTIME` is set.
fn ort_or_skip() -> Option<&'static str> {
    match rtserve_optimize::engine::create(rtserve_optimize::engine::EngineChoice::OnnxRuntime, None) {
        Ok(_) => Some("onnxruntime"),
        Err(e) if std::env::var_os("RTSERVE_E2E_REQUIRE_ONNXRUNTIME").is_some() => {
            panic!("RTSERVE_E2E_REQUIRE_ONNXRUNTIME is set but ONNX Runtime is missing: {e}")
        }
        Err(e) => {
            eprintln!("skipped: ONNX Runtime is missing ({e})");
            None
        }
    }
}

#[test]
fn fp16_stays_within_1e_2_relative() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data.npy");
    write_npy(&data, 8, &[1, 28, 28]);
    let fp16 = dir.path().join("cnn_fp16.onnx");
    ok(&rtserve(&[
        "fp16",
        "--model",
        example("cnn").to_str().expect("utf-8"),
        "--out",
        fp16.to_str().expect("utf-8"),
    ]));
    // tract 0.23 cannot type a float16 Gemm: ONNX Runtime when present (CI), else skip.
    let e = match ort_or_skip() {
        Some(engine) => evaluate(&example("cnn"), &fp16, &data, engine),
        None => return,
    };
    assert!(e["agreement"]["max_relative_error"].as_f64().expect("rel") < 1e-2, "{e}");
    assert_eq!(e["agreement"]["top1"].as_f64(), Some(1.0), "{e}");
}

#[test]
fn malformed_files_fail_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"\xff\xff\xff\xff not protobuf").expect("write");
    let out = rtserve(&["fp16", "--model", garbage.to_str().expect("utf-8"), "--out", "/dev/null"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not an ONNX model"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A node reading a tensor nothing defines: the error names the node.
    let broken = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(GraphProto {
            node: vec![node("MatMul", "the_matmul", &["x", "nowhere"], &["y"])],
            input: vec![tensor_value_info("x", DataType::Float)],
            output: vec![tensor_value_info("y", DataType::Float)],
            initializer: vec![float_tensor("w", &[1], &[1.0])],
            ..GraphProto::default()
        }),
        ..ModelProto::default()
    };
    let path = dir.path().join("broken.onnx");
    model::save(&broken, &path).expect("save");
    for args in [vec!["fp16"], vec!["quantize", "--dynamic"]] {
        let mut full = args.clone();
        full.extend(["--model", path.to_str().expect("utf-8"), "--out", "/dev/null"]);
        let out = rtserve(&full);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("node 'the_matmul' (MatMul)") && stderr.contains("'nowhere'"), "{stderr}");
    }
}
