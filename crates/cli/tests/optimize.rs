//! `rtserve optimize` end to end: the real binary quantizes, converts and evaluates the example
//! models (tract engine, so nothing needs installing), and refuses malformed files with a clear
//! error. The model zoo and ONNX Runtime cases are in tests/python/test_optimize.py.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rtserve_optimize::graph::{int_attribute, node};
use rtserve_optimize::model::{self, float_tensor, float_values, tensor_value_info};
use rtserve_optimize::onnx::attribute_proto::AttributeType;
use rtserve_optimize::onnx::tensor_shape_proto::{dimension, Dimension};
use rtserve_optimize::onnx::{
    tensor_proto::DataType, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorShapeProto, ValueInfoProto,
};
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

/// `n` seeded pseudo-random values in [0, 1).
fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// A `.npy` file of `n` seeded pseudo-random samples of shape `shape` in [0, 1).
fn write_npy(path: &Path, n: usize, shape: &[usize]) {
    let per: usize = shape.iter().product();
    let dims: Vec<usize> = std::iter::once(n).chain(shape.iter().copied()).collect();
    write_npy_values(path, &dims, &pseudo_random(n * per, 0));
}

/// A float32 `.npy` file of the given shape and values.
fn write_npy_values(path: &Path, dims: &[usize], values: &[f32]) {
    let dims: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 { format!("{},", dims[0]) } else { dims.join(", ") };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({shape}), }}");
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

fn evaluate(reference: &Path, candidate: &Path, data: &Path, engine: &str, extra: &[&str]) -> Value {
    let mut args = vec![
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
    ];
    args.extend(extra);
    serde_json::from_str(&ok(&rtserve(&args))).expect("evaluate --json")
}

fn quantize(model: &Path, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "quantize",
        "--engine",
        "tract",
        "--model",
        model.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
        "--json",
    ];
    args.extend(extra);
    serde_json::from_str(&ok(&rtserve(&args))).expect("report")
}

#[test]
fn quantizes_the_cnn_and_stays_close_to_float() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data.npy");
    write_npy(&data, 24, &[1, 28, 28]);
    let int8 = dir.path().join("cnn_int8.onnx");
    let report = quantize(&example("cnn"), &int8, &["--calibration", data.to_str().expect("utf-8")]);
    // Conv ×2, MaxPool ×2 and Gemm quantized, both Relus folded into the Conv output ranges.
    assert_eq!(report["nodes_quantized"], 5, "{report}");
    assert_eq!(report["activations_fused"], 2, "{report}");
    let q = model::load(&int8).expect("load int8");
    let g = q.graph.as_ref().expect("graph");
    let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
    assert!(ops.contains(&"QuantizeLinear") && ops.contains(&"DequantizeLinear"), "{ops:?}");
    // The Gemm writes the graph's output in float, from dequantized inputs (runtimes fuse that
    // into an integer kernel with a float output).
    let gemm = producer_of(g, &g.output[0].name);
    assert_eq!(gemm.op_type, "Gemm", "{gemm:?}");
    assert_eq!(producer_of(g, &gemm.input[0]).op_type, "DequantizeLinear");
    assert_eq!(producer_of(g, &gemm.input[1]).op_type, "DequantizeLinear");
    assert_everything_read(g);
    let e = evaluate(&example("cnn"), &int8, &data, "tract", &[]);
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
    quantize(&mlp, &int8, &["--dynamic"]);
    let e = evaluate(&mlp, &int8, &data, "tract", &[]);
    assert!(e["agreement"]["mean_cosine"].as_f64().expect("cosine") > 0.99, "{e}");
}

/// "onnxruntime" when its library is found; `None` (a skip, with a note) otherwise, unless
/// `RTSERVE_E2E_REQUIRE_ONNXRUNTIME` is set.
fn ort_or_skip() -> Option<&'static str> {
    match rtserve_engines::Engines::new(rtserve_engines::EngineChoice::OnnxRuntime, None) {
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
        Some(engine) => evaluate(&example("cnn"), &fp16, &data, engine, &[]),
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
    let path = dir.path().join("broken.onnx");
    save_graph(
        &path,
        GraphProto {
            node: vec![node("MatMul", "the_matmul", &["x", "nowhere"], &["y"])],
            input: vec![tensor_value_info("x", DataType::Float)],
            output: vec![tensor_value_info("y", DataType::Float)],
            initializer: vec![float_tensor("w", &[1], &[1.0])],
            ..GraphProto::default()
        },
    );
    for args in [vec!["fp16"], vec!["quantize", "--dynamic"]] {
        let mut full = args.clone();
        full.extend(["--model", path.to_str().expect("utf-8"), "--out", "/dev/null"]);
        let out = rtserve(&full);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("node 'the_matmul' (MatMul)") && stderr.contains("'nowhere'"), "{stderr}");
    }
}

fn ints_attribute(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..AttributeProto::default()
    }
}

fn with_attributes(mut n: NodeProto, attributes: Vec<AttributeProto>) -> NodeProto {
    n.attribute = attributes;
    n
}

/// A two-branch image model with seeded weights: x [1,3,16,16] → conv_a → Relu → MaxPool 2×2
/// and x → conv_b (stride 2), concatenated → GlobalAveragePool → Flatten → y [1,8]; conv_b's
/// output b is a second graph output.
fn pool_concat_model(path: &Path) {
    let weights = |name: &str, seed: u64| {
        float_tensor(
            name,
            &[4, 3, 3, 3],
            &pseudo_random(108, seed).iter().map(|v| v - 0.5).collect::<Vec<_>>(),
        )
    };
    let graph = GraphProto {
        name: "pool_concat".into(),
        node: vec![
            with_attributes(
                node("Conv", "conv_a", &["x", "wa", "ba"], &["a"]),
                vec![ints_attribute("pads", &[1; 4])],
            ),
            node("Relu", "relu_a", &["a"], &["ar"]),
            with_attributes(
                node("MaxPool", "pool_a", &["ar"], &["ap"]),
                vec![ints_attribute("kernel_shape", &[2, 2]), ints_attribute("strides", &[2, 2])],
            ),
            with_attributes(
                node("Conv", "conv_b", &["x", "wb"], &["b"]),
                vec![ints_attribute("pads", &[1; 4]), ints_attribute("strides", &[2, 2])],
            ),
            with_attributes(node("Concat", "concat", &["ap", "b"], &["c"]), vec![int_attribute("axis", 1)]),
            node("GlobalAveragePool", "gap", &["c"], &["g"]),
            node("Flatten", "flatten", &["g"], &["y"]),
        ],
        initializer: vec![
            weights("wa", 1),
            float_tensor("ba", &[4], &[0.1, -0.1, 0.2, 0.0]),
            weights("wb", 2),
        ],
        input: vec![float_input("x", &[1, 3, 16, 16])],
        output: vec![tensor_value_info("y", DataType::Float), tensor_value_info("b", DataType::Float)],
        ..GraphProto::default()
    };
    save_graph(path, graph);
}

/// A float graph input of a fixed shape.
fn float_input(name: &str, dims: &[i64]) -> ValueInfoProto {
    let mut x = tensor_value_info(name, DataType::Float);
    if let Some(type_proto::Value::TensorType(t)) = x.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        let dim = |d: i64| Dimension { value: Some(dimension::Value::DimValue(d)), ..Dimension::default() };
        t.shape = Some(TensorShapeProto { dim: dims.iter().copied().map(dim).collect() });
    }
    x
}

/// Saves `graph` as an opset-17 model.
fn save_graph(path: &Path, graph: GraphProto) {
    let onnx = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(graph),
        ..ModelProto::default()
    };
    model::save(&onnx, path).expect("save");
}

fn producer_of<'a>(graph: &'a GraphProto, tensor: &str) -> &'a NodeProto {
    graph
        .node
        .iter()
        .find(|n| n.output.iter().any(|o| o == tensor))
        .unwrap_or_else(|| panic!("no node writes {tensor}"))
}

/// Every node output is read by a node or is a graph output (no Q/DQ pair left dangling).
fn assert_everything_read(graph: &GraphProto) {
    for n in &graph.node {
        for o in &n.output {
            let read =
                graph.node.iter().any(|m| m.input.contains(o)) || graph.output.iter().any(|x| &x.name == o);
            assert!(read, "node {} writes {o}, which nothing reads", n.name);
        }
    }
}

/// The scale initializer read by the node producing `tensor` (a QuantizeLinear or DequantizeLinear).
fn scale_of(graph: &GraphProto, tensor: &str) -> f32 {
    let producer = producer_of(graph, tensor);
    let scale = graph.initializer.iter().find(|t| t.name == producer.input[1]).expect("scale");
    float_values(scale).expect("float scale")[0]
}

#[test]
fn quantizes_pooling_and_concatenation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (float, int8, data) =
        (dir.path().join("f.onnx"), dir.path().join("q.onnx"), dir.path().join("d.npy"));
    pool_concat_model(&float);
    write_npy(&data, 16, &[3, 16, 16]);
    let report = quantize(&float, &int8, &["--calibration", data.to_str().expect("utf-8")]);
    // Both Convs, the MaxPool, the Concat and the pooling; the Relu folded into conv_a's range.
    assert_eq!(report["nodes_quantized"], 5, "{report}");
    assert_eq!(report["activations_fused"], 1, "{report}");
    let q = model::load(&int8).expect("load");
    let g = q.graph.as_ref().expect("graph");
    let by_op = |op: &str| g.node.iter().find(|n| n.op_type == op).expect(op);
    let (pool, concat) = (by_op("MaxPool"), by_op("Concat"));
    // The MaxPool reads a dequantized tensor and its output is quantized with the same scale.
    let pool_out_q = g.node.iter().find(|n| n.op_type == "QuantizeLinear" && n.input[0] == pool.output[0]);
    let pool_out_q = pool_out_q.expect("QuantizeLinear after MaxPool");
    assert_eq!(scale_of(g, &pool.input[0]), scale_of(g, &pool_out_q.output[0]));
    for input in &concat.input {
        assert_eq!(producer_of(g, input).op_type, "DequantizeLinear", "Concat input {input}");
    }
    // conv_b's output is also the graph's: the DequantizeLinear writes it and conv_b a new name,
    // so that no float copy stops conv_b's fusion.
    let conv_b = g.node.iter().find(|n| n.name == "conv_b").expect("conv_b");
    assert_ne!(conv_b.output[0], "b");
    assert_eq!(producer_of(g, "b").op_type, "DequantizeLinear");
    assert_everything_read(g);
    let e = evaluate(&float, &int8, &data, "tract", &[]);
    assert!(e["agreement"]["mean_cosine"].as_f64().expect("cosine") > 0.99, "{e}");
    if let Some(engine) = ort_or_skip() {
        let e = evaluate(&float, &int8, &data, engine, &[]);
        assert!(e["agreement"]["mean_cosine"].as_f64().expect("cosine") > 0.99, "{e}");
    }
}

#[test]
fn calibration_methods_exclusions_and_image_folders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (float, data) = (dir.path().join("f.onnx"), dir.path().join("d.npy"));
    pool_concat_model(&float);
    write_npy(&data, 16, &[3, 16, 16]);
    let data_arg = data.to_str().expect("utf-8");
    for method in [
        ["--calibration-method", "percentile", "--percentile", "99.9"].as_slice(),
        &["--calibration-method", "entropy"],
    ] {
        let int8 = dir.path().join(format!("{}.onnx", method[1]));
        let mut args = vec!["--calibration", data_arg];
        args.extend(method);
        quantize(&float, &int8, &args);
        let e = evaluate(&float, &int8, &data, "tract", &[]);
        assert!(e["agreement"]["mean_cosine"].as_f64().expect("cosine") > 0.98, "{method:?}: {e}");
    }

    // --exclude by node name keeps that Conv's weight in float.
    let int8 = dir.path().join("exclude.onnx");
    let report = quantize(&float, &int8, &["--calibration", data_arg, "--exclude", "conv_b"]);
    assert_eq!(report["nodes_excluded"], 1, "{report}");
    assert_eq!(report["nodes_quantized"], 4, "{report}");
    let q = model::load(&int8).expect("load");
    let g = q.graph.as_ref().expect("graph");
    let conv_b = g.node.iter().find(|n| n.name == "conv_b").expect("conv_b");
    assert_eq!(conv_b.input[1], "wb", "{conv_b:?}");
    assert!(g.initializer.iter().any(|t| t.name == "wb" && t.data_type == DataType::Float as i32));

    // A folder of images, resized and cropped to the input by the flags.
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).expect("mkdir");
    for i in 0..4u8 {
        let img = image::RgbImage::from_fn(40, 24, |x, y| {
            image::Rgb([(x as u8).wrapping_mul(6 + i), (y as u8).wrapping_mul(9), 40 * i])
        });
        img.save(photos.join(format!("p{i}.png"))).expect("png");
    }
    let int8 = dir.path().join("images.onnx");
    let photos_arg = photos.to_str().expect("utf-8");
    quantize(&float, &int8, &["--calibration", photos_arg, "--resize", "20", "--crop", "16"]);
    let e = evaluate(&float, &int8, &photos, "tract", &["--resize", "20", "--crop", "16"]);
    assert_eq!(e["agreement"]["samples"], 4, "{e}");
    assert!(e["agreement"]["mean_cosine"].as_f64().expect("cosine") > 0.98, "{e}");
}

#[test]
fn a_relu_after_a_gemm_that_writes_the_graph_output_is_kept() {
    // The Gemm keeps its graph output float, so the Relu cannot be folded into a uint8 range.
    let dir = tempfile::tempdir().expect("tempdir");
    let (float, int8, data) =
        (dir.path().join("f.onnx"), dir.path().join("q.onnx"), dir.path().join("d.npy"));
    let w: Vec<f32> = pseudo_random(64, 3).iter().map(|v| v - 0.5).collect();
    save_graph(
        &float,
        GraphProto {
            name: "gemm_relu".into(),
            node: vec![node("Gemm", "gemm", &["x", "w"], &["g"]), node("Relu", "relu", &["g"], &["y"])],
            initializer: vec![float_tensor("w", &[16, 4], &w)],
            input: vec![float_input("x", &[1, 16])],
            output: vec![tensor_value_info("y", DataType::Float)],
            ..GraphProto::default()
        },
    );
    write_npy(&data, 16, &[16]);
    let report = quantize(&float, &int8, &["--calibration", data.to_str().expect("utf-8")]);
    assert_eq!(report["activations_fused"], 0, "{report}");
    let q = model::load(&int8).expect("load");
    let g = q.graph.as_ref().expect("graph");
    assert_eq!(producer_of(g, "y").op_type, "Relu");
    assert_everything_read(g);
    let e = evaluate(&float, &int8, &data, "tract", &[]);
    assert!(e["agreement"]["mean_cosine"].as_f64().expect("cosine") > 0.99, "{e}");
}

/// `n` labels (0..10) as a float32 `.npy`, the way a labels file may come.
fn write_labels(path: &Path, n: usize) {
    let labels: Vec<f32> = (0..n).map(|i| (i % 10) as f32).collect();
    write_npy_values(path, &[n], &labels);
}

/// Runs `rtserve optimize <command...> --model model --out out <common...>` and reads its JSON.
fn optimize_json(command: &[&str], model: &Path, out: &Path, common: &[&str]) -> Value {
    let mut args = command.to_vec();
    args.extend(["--model", model.to_str().expect("utf-8"), "--out", out.to_str().expect("utf-8")]);
    args.extend(common);
    serde_json::from_str(&ok(&rtserve(&args))).expect("json")
}

fn initializer_dims(path: &Path, name: &str) -> Vec<i64> {
    let m = model::load(path).expect("load");
    m.graph.expect("graph").initializer.into_iter().find(|t| t.name == name).expect("initializer").dims
}

#[test]
fn trains_and_prunes_the_cnn_with_the_real_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, labels) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
    write_npy(&data, 40, &[1, 28, 28]);
    write_labels(&labels, 40);
    let (d, l) = (data.to_str().expect("utf-8"), labels.to_str().expect("utf-8"));
    let cnn = example("cnn");
    let common =
        ["--data", d, "--labels", l, "--epochs", "1", "--batch-size", "8", "--heldout", "0.25", "--json"];
    let trained = dir.path().join("trained.onnx");
    let report = optimize_json(&["train"], &cnn, &trained, &common);
    assert_eq!(report["training"]["epochs"].as_array().map(Vec::len), Some(1), "{report}");
    assert!(report["heldout_accuracy"].as_f64().is_some(), "{report}");
    // Same names and shapes; the engines still run it.
    let conv = initializer_dims(&cnn, "conv1.weight");
    assert_eq!(initializer_dims(&trained, "conv1.weight"), conv);
    evaluate(&cnn, &trained, &data, "tract", &[]);
    // --no-shuffle: the samples in their order, so the seed (which would only shuffle them in
    // this model without Dropout) changes nothing.
    let in_order = |seed: &str| {
        let out = dir.path().join(format!("in_order_{seed}.onnx"));
        let mut args = common.to_vec();
        args.extend(["--no-shuffle", "--seed", seed]);
        optimize_json(&["train"], &cnn, &out, &args);
        std::fs::read(out).expect("read")
    };
    assert_eq!(in_order("1"), in_order("2"));

    let small = dir.path().join("channels.onnx");
    let report = optimize_json(&["prune", "--method", "channels"], &cnn, &small, &common);
    assert!(report["params_after"].as_u64() < report["params_before"].as_u64(), "{report}");
    let one_shot_params = report["params_after"].clone();
    assert_eq!(initializer_dims(&small, "conv1.weight")[0], conv[0] / 2, "{report}");
    evaluate(&cnn, &small, &data, "tract", &[]);
    // Gradually: the same smaller shapes, through the whole model's fine-tuning.
    let gradual = dir.path().join("gradual.onnx");
    let report = optimize_json(
        &["prune", "--method", "channels", "--sparsity-schedule", "polynomial"],
        &cnn,
        &gradual,
        &common,
    );
    assert_eq!(
        initializer_dims(&gradual, "conv1.weight"),
        initializer_dims(&small, "conv1.weight"),
        "{report}"
    );
    assert_eq!(report["params_after"], one_shot_params, "{report}");
    evaluate(&cnn, &gradual, &data, "tract", &[]);
    // Measured on the data, ranked across groups: half of all prunable channels go.
    let taylor = dir.path().join("taylor.onnx");
    let report = optimize_json(
        &["prune", "--method", "channels", "--criterion", "taylor", "--scope", "global"],
        &cnn,
        &taylor,
        &common,
    );
    let groups = report["groups"].as_array().expect("groups");
    let count = |key: &str| -> u64 {
        groups.iter().filter(|g| g["blocked"].is_null()).map(|g| g[key].as_u64().expect("count")).sum()
    };
    assert_eq!(count("kept"), count("channels") - count("channels") / 2, "{report}");
    evaluate(&cnn, &taylor, &data, "tract", &[]);

    let sparse = dir.path().join("magnitude.onnx");
    let report = optimize_json(&["prune", "--method", "magnitude"], &cnn, &sparse, &common);
    assert!(report["gzip_bytes_after"].as_u64() < report["gzip_bytes_before"].as_u64(), "{report}");
    let zeros: u64 =
        report["layers"].as_array().expect("layers").iter().map(|l| l["zeros"].as_u64().expect("z")).sum();
    let values: u64 =
        report["layers"].as_array().expect("layers").iter().map(|l| l["values"].as_u64().expect("v")).sum();
    assert!((zeros as f64 / values as f64 - 0.5).abs() < 0.01, "{report}");
}

/// A model with an operator the trainer does not have: node 'the_lrn' (LRN).
fn save_lrn_model(path: &Path) {
    save_graph(
        path,
        GraphProto {
            node: vec![node("MatMul", "mm", &["x", "w"], &["t"]), node("LRN", "the_lrn", &["t"], &["y"])],
            input: vec![tensor_value_info("x", DataType::Float)],
            output: vec![tensor_value_info("y", DataType::Float)],
            initializer: vec![float_tensor("w", &[1, 1], &[1.0])],
            ..GraphProto::default()
        },
    );
}

#[test]
fn training_and_pruning_refuse_bad_input_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, labels, flat) =
        (dir.path().join("x.npy"), dir.path().join("y.npy"), dir.path().join("flat.npy"));
    let twelve = dir.path().join("y12.npy");
    write_npy(&data, 12, &[1, 28, 28]);
    write_npy(&flat, 12, &[784]);
    write_labels(&labels, 10);
    write_labels(&twelve, 12);
    let cnn = example("cnn");
    let run = |extra: &[&str]| {
        let mut args =
            vec!["train", "--model", cnn.to_str().expect("utf-8"), "--out", "/dev/null", "--epochs", "1"];
        args.extend(extra);
        let out = rtserve(&args);
        assert!(!out.status.success(), "{extra:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    };
    let (d, l, f) =
        (data.to_str().expect("utf-8"), labels.to_str().expect("utf-8"), flat.to_str().expect("utf-8"));
    let err = run(&["--data", d, "--labels", l]);
    assert!(err.contains("12 samples but 10 labels"), "{err}");
    let err = run(&["--data", f, "--labels", twelve.to_str().expect("utf-8")]);
    assert!(err.contains("do not fit model input"), "{err}");
    let mut args =
        vec!["prune", "--sparsity", "1.5", "--model", cnn.to_str().expect("utf-8"), "--out", "/dev/null"];
    args.extend(["--data", d, "--labels", l]);
    let out = rtserve(&args);
    assert!(String::from_utf8_lossy(&out.stderr).contains("between 0 and 1"), "{out:?}");
    let mut args =
        vec!["prune", "--method", "channels", "--criterion", "taylor", "--sparsity-schedule", "polynomial"];
    let t = twelve.to_str().expect("utf-8");
    args.extend(["--model", cnn.to_str().expect("utf-8"), "--out", "/dev/null", "--data", d, "--labels", t]);
    let out = rtserve(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("measured once"), "{stderr}");

    let unsupported = dir.path().join("lrn.onnx");
    save_lrn_model(&unsupported);
    let out = rtserve(&[
        "train",
        "--model",
        unsupported.to_str().expect("utf-8"),
        "--out",
        "/dev/null",
        "--data",
        d,
        "--labels",
        l,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("node 'the_lrn' (LRN)") && stderr.contains("not supported"),
        "{stderr}"
    );
}

/// `n` random `[1, 28, 28]` samples (`x.npy`) and their labels (`y.npy`) in `dir`.
fn labelled_data(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    let (data, labels) = (dir.join("x.npy"), dir.join("y.npy"));
    write_npy(&data, n, &[1, 28, 28]);
    write_labels(&labels, n);
    (data, labels)
}

fn op_types(path: &Path) -> Vec<String> {
    model::load(path).expect("load").graph.expect("graph").node.into_iter().map(|n| n.op_type).collect()
}

#[test]
fn distills_and_trains_quantization_aware_with_the_real_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, labels) = labelled_data(dir.path(), 40);
    let (d, l) = (data.to_str().expect("utf-8"), labels.to_str().expect("utf-8"));
    let cnn = example("cnn");
    let teacher = cnn.to_str().expect("utf-8");
    let common = ["--epochs", "1", "--batch-size", "8", "--heldout", "0.25", "--engine", "tract", "--json"];
    let path = |name: &str| dir.path().join(name);
    let run = |args: &[&str]| -> Value {
        let mut all = args.to_vec();
        all.extend(common);
        serde_json::from_str(&ok(&rtserve(&all))).expect("json")
    };

    // A student half as wide as the teacher, with labels.
    let student = path("student.onnx");
    let s = student.to_str().expect("utf-8");
    let report = run(&[
        "distill",
        "--teacher",
        teacher,
        "--student-width",
        "0.5",
        "--out",
        s,
        "--data",
        d,
        "--labels",
        l,
    ]);
    assert_eq!(report["alpha"].as_f64(), Some(0.7), "{report}");
    assert_eq!(report["unlabelled"].as_bool(), Some(false), "{report}");
    assert!(report["student_params"].as_u64() < report["teacher_params"].as_u64(), "{report}");
    // Half the channels everywhere: well under half the multiply-adds (crates/optimize's tests
    // check the count itself against counts by hand).
    let (student_macs, teacher_macs) =
        (report["student_multiply_adds"].as_u64(), report["teacher_multiply_adds"].as_u64());
    assert!(matches!((student_macs, teacher_macs), (Some(s), Some(t)) if s > 0 && 2 * s < t), "{report}");
    assert_eq!(report["fit"]["training"]["epochs"].as_array().map(Vec::len), Some(1), "{report}");
    let conv = initializer_dims(&cnn, "conv1.weight");
    assert_eq!(initializer_dims(&student, "conv1.weight")[0], conv[0] / 2);
    evaluate(&cnn, &student, &data, "tract", &[]);

    // The student file trained again, without labels: pure distillation.
    let again = path("again.onnx");
    let report = run(&[
        "distill",
        "--teacher",
        teacher,
        "--student",
        s,
        "--out",
        again.to_str().expect("utf-8"),
        "--data",
        d,
    ]);
    assert_eq!(
        (report["alpha"].as_f64(), report["unlabelled"].as_bool()),
        (Some(1.0), Some(true)),
        "{report}"
    );
    assert!(report["fit"]["heldout_accuracy"].as_f64().is_some(), "{report}");

    // QAT: the same Q/DQ layout as `quantize` calibrated on the same samples.
    let qat = path("qat.onnx");
    let report = run(&[
        "qat",
        "--model",
        teacher,
        "--out",
        qat.to_str().expect("utf-8"),
        "--data",
        d,
        "--labels",
        l,
        "--lr",
        "0.001",
    ]);
    assert!(report["quantize"]["nodes_quantized"].as_u64() > Some(0), "{report}");
    let ptq = path("ptq.onnx");
    quantize(&cnn, &ptq, &["--calibration", d, "--calibration-limit", "30"]);
    assert_eq!(op_types(&qat), op_types(&ptq));
    evaluate(&cnn, &qat, &data, "tract", &[]);

    // QAT distilling from the float model, on data without labels, held-out data without labels
    // too (the teacher's predictions stand in for them).
    let self_distilled = path("self.onnx");
    let report = run(&[
        "qat",
        "--model",
        teacher,
        "--teacher",
        teacher,
        "--out",
        self_distilled.to_str().expect("utf-8"),
        "--data",
        d,
        "--heldout-data",
        d,
        "--lr",
        "0.001",
    ]);
    assert_eq!(report["alpha"].as_f64(), Some(1.0), "{report}");
    assert!(report["fit"]["heldout_accuracy"].as_f64() > Some(0.5), "{report}");
    assert_eq!(op_types(&self_distilled), op_types(&ptq));
}

#[test]
fn distillation_and_qat_refuse_bad_input_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, labels) = labelled_data(dir.path(), 12);
    let (d, l) = (data.to_str().expect("utf-8"), labels.to_str().expect("utf-8"));
    let cnn = example("cnn");
    let teacher = cnn.to_str().expect("utf-8");
    let fails = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--out", "/dev/null", "--data", d, "--labels", l, "--epochs", "1", "--engine", "tract"]);
        let out = rtserve(&all);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    };
    let distill = ["distill", "--teacher", teacher, "--student-width", "0.5"];
    let err = fails(&[&distill[..], &["--temperature", "0"]].concat());
    assert!(err.contains("temperature must be a positive number"), "{err}");
    let err = fails(&[&distill[..], &["--temperature=-2"]].concat());
    assert!(err.contains("temperature"), "{err}");
    let err = fails(&[&distill[..], &["--alpha", "1.5"]].concat());
    assert!(err.contains("alpha must be between 0 and 1"), "{err}");
    let err = fails(&["distill", "--teacher", teacher, "--student-width", "1.2"]);
    assert!(err.contains("between 0 and 1"), "{err}");

    // A student with 5 outputs for a teacher with 10.
    let narrow = dir.path().join("narrow.onnx");
    let w: Vec<f32> = (0..784 * 5).map(|i| (i % 7) as f32 * 0.01).collect();
    save_graph(
        &narrow,
        GraphProto {
            node: vec![
                node("Flatten", "flat", &["input"], &["f"]),
                node("MatMul", "mm", &["f", "w"], &["y"]),
            ],
            input: vec![float_input("input", &[-1, 1, 28, 28])],
            output: vec![tensor_value_info("y", DataType::Float)],
            initializer: vec![float_tensor("w", &[784, 5], &w)],
            ..GraphProto::default()
        },
    );
    let err = fails(&["distill", "--teacher", teacher, "--student", narrow.to_str().expect("utf-8")]);
    assert!(err.contains(", 5]") && err.contains(", 10]") && err.contains("must be the same"), "{err}");

    // A student with an operator the trainer does not have.
    let lrn = dir.path().join("lrn.onnx");
    save_lrn_model(&lrn);
    let err = fails(&["distill", "--teacher", teacher, "--student", lrn.to_str().expect("utf-8")]);
    assert!(err.contains("student") && err.contains("node 'the_lrn' (LRN)"), "{err}");
    let err = fails(&["qat", "--model", lrn.to_str().expect("utf-8")]);
    assert!(err.contains("node 'the_lrn' (LRN)"), "{err}");
    // QAT needs labels unless it distils.
    let out = rtserve(&["qat", "--model", teacher, "--out", "/dev/null", "--data", d, "--engine", "tract"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--labels is required"), "{out:?}");
    // Labelled training data wants labelled held-out data.
    let err = fails(&[&distill[..], &["--heldout-data", d]].concat());
    assert!(err.contains("--heldout-labels is required with --heldout-data"), "{err}");
}
