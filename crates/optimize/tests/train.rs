//! The trainer and the pruners against independent references: each operator's forward pass
//! against ONNX Runtime (and tract), gradients against finite differences, exported models
//! reloaded in both engines, structured pruning against the masked model it must equal;
//! distillation from a teacher run on the engine; quantization-aware training against the QDQ
//! model it exports (run on ONNX Runtime) and against `quantize`'s layout; BatchNormalization
//! folded into its Conv against the unfolded model on both engines.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rtserve_core::{Engine, LoadOptions, NamedTensor};
use rtserve_engines::{EngineChoice, Engines};
use rtserve_optimize::fold;
use rtserve_optimize::graph::{int_attribute, node};
use rtserve_optimize::model::{self, float_tensor, float_values, tensor_value_info};
use rtserve_optimize::onnx::attribute_proto::AttributeType;
use rtserve_optimize::onnx::tensor_shape_proto::{dimension, Dimension};
use rtserve_optimize::onnx::{
    tensor_proto::DataType, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto,
};
use rtserve_optimize::prune::channels::{self, ChannelOptions, Criterion};
use rtserve_optimize::prune::gradual::GradualChannels;
use rtserve_optimize::prune::groups::{Dependencies, Role};
use rtserve_optimize::prune::magnitude::{MagnitudeOptions, MagnitudePruner, Scope, SparsitySchedule};
use rtserve_optimize::prune::taylor::taylor_scores;
use rtserve_optimize::qat::{self, QatOptions};
use rtserve_optimize::quantize::{quantize_static, QuantizeOptions};
use rtserve_optimize::train::data::Dataset;
use rtserve_optimize::train::distill::{self, DistillOptions, Distillation};
use rtserve_optimize::train::trainer::{self, CrossEntropy, Hook, Objective, Plugins, TrainOptions};
use rtserve_optimize::train::{Mode, ParamKind, TrainGraph};

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

fn float_attr(name: &str, value: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Float as i32, f: value, ..Default::default() }
}

fn with(mut n: NodeProto, attributes: Vec<AttributeProto>) -> NodeProto {
    n.attribute = attributes;
    n
}

fn random(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale).collect()
}

fn weight(rng: &mut StdRng, name: &str, dims: &[i64]) -> TensorProto {
    let n = dims.iter().product::<i64>() as usize;
    let fan_in = dims.iter().skip(1).product::<i64>().max(1) as f32;
    float_tensor(name, dims, &random(rng, n, (3.0 / fan_in).sqrt()))
}

/// BatchNorm parameters `{p}.scale/.bias/.mean/.var` with non-trivial values.
fn batch_norm(rng: &mut StdRng, p: &str, c: usize) -> Vec<TensorProto> {
    let positive: Vec<f32> = random(rng, c, 0.5).iter().map(|v| 1.0 + v).collect();
    vec![
        float_tensor(&format!("{p}.scale"), &[c as i64], &positive),
        float_tensor(&format!("{p}.bias"), &[c as i64], &random(rng, c, 0.2)),
        float_tensor(&format!("{p}.mean"), &[c as i64], &random(rng, c, 0.2)),
        float_tensor(&format!("{p}.var"), &[c as i64], &positive.iter().map(|v| v * 0.8).collect::<Vec<_>>()),
    ]
}

fn bn_node(p: &str, x: &str, y: &str) -> NodeProto {
    let inputs: Vec<String> = ["scale", "bias", "mean", "var"].iter().map(|s| format!("{p}.{s}")).collect();
    let mut all = vec![x];
    all.extend(inputs.iter().map(String::as_str));
    node("BatchNormalization", p, &all, &[y])
}

fn onnx(nodes: Vec<NodeProto>, initializer: Vec<TensorProto>, inputs: &[&str], output: &str) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(GraphProto {
            node: nodes,
            input: inputs.iter().map(|i| tensor_value_info(i, DataType::Float)).collect(),
            output: vec![tensor_value_info(output, DataType::Float)],
            initializer,
            ..GraphProto::default()
        }),
        ..ModelProto::default()
    }
}

/// A CNN with every structure pruning must respect: a BatchNorm'd stem, a residual Add, a
/// depthwise convolution, a Concat of two branches, HardSwish and a Gemm head.
fn cnn(seed: u64) -> ModelProto {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut init = vec![
        weight(&mut rng, "stem.w", &[8, 3, 3, 3]),
        float_tensor("stem.b", &[8], &random(&mut rng, 8, 0.1)),
    ];
    init.extend(batch_norm(&mut rng, "stem_bn", 8));
    init.push(weight(&mut rng, "a.w", &[8, 8, 3, 3]));
    init.extend(batch_norm(&mut rng, "a_bn", 8));
    init.push(weight(&mut rng, "dw.w", &[8, 1, 3, 3]));
    init.push(float_tensor("dw.b", &[8], &random(&mut rng, 8, 0.1)));
    init.push(weight(&mut rng, "b1.w", &[6, 8, 1, 1]));
    init.push(weight(&mut rng, "b2.w", &[4, 8, 3, 3]));
    init.push(float_tensor("scale", &[1, 10, 1, 1], &random(&mut rng, 10, 1.0)));
    init.push(weight(&mut rng, "fc.w", &[5, 10]));
    init.push(float_tensor("fc.b", &[5], &random(&mut rng, 5, 0.1)));
    let p1 = ints("pads", &[1, 1, 1, 1]);
    let nodes = vec![
        with(
            node("Conv", "stem", &["x", "stem.w", "stem.b"], &["s0"]),
            vec![p1.clone(), ints("strides", &[2, 2])],
        ),
        bn_node("stem_bn", "s0", "s1"),
        node("Relu", "stem_relu", &["s1"], &["s2"]),
        with(node("Conv", "a", &["s2", "a.w"], &["a0"]), vec![p1.clone()]),
        bn_node("a_bn", "a0", "a1"),
        node("Add", "residual", &["a1", "s2"], &["r0"]),
        node("Relu", "r_relu", &["r0"], &["r1"]),
        with(
            node("Conv", "dw", &["r1", "dw.w", "dw.b"], &["d0"]),
            vec![p1.clone(), int_attribute("group", 8)],
        ),
        node("HardSwish", "d_act", &["d0"], &["d1"]),
        with(node("Conv", "b1", &["d1", "b1.w"], &["c1"]), vec![]),
        with(node("Conv", "b2", &["d1", "b2.w"], &["c2"]), vec![p1]),
        with(node("Concat", "cat", &["c1", "c2"], &["c"]), vec![int_attribute("axis", 1)]),
        node("Mul", "channel_scale", &["c", "scale"], &["m"]),
        with(
            node("MaxPool", "pool", &["m"], &["p"]),
            vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
        ),
        node("GlobalAveragePool", "gap", &["p"], &["g"]),
        node("Flatten", "flatten", &["g"], &["f"]),
        with(node("Gemm", "fc", &["f", "fc.w", "fc.b"], &["y"]), vec![int_attribute("transB", 1)]),
    ];
    onnx(nodes, init, &["x"], "y")
}

fn candle_input(values: &[f32], dims: &[usize], dtype: DType) -> Tensor {
    Tensor::from_vec(values.to_vec(), dims.to_vec(), &Device::Cpu)
        .expect("tensor")
        .to_dtype(dtype)
        .expect("dtype")
}

fn trainer_output(model: &ModelProto, inputs: &[(&str, &[f32], &[usize])]) -> Vec<f32> {
    let g = TrainGraph::new(model).expect("train graph");
    let feeds: Vec<(String, Tensor)> =
        inputs.iter().map(|(n, v, d)| (n.to_string(), candle_input(v, d, DType::F32))).collect();
    let out = g.outputs()[0].clone();
    let f = g.forward(&feeds, Mode::Eval, &mut StdRng::seed_from_u64(0)).expect("forward");
    f.values[&out].flatten_all().expect("flat").to_vec1::<f32>().expect("values")
}

/// Declares the shape of the graph input `name` (`None`: a symbolic batch dimension).
fn set_input_shape(model: &mut ModelProto, name: &str, dims: &[Option<usize>]) {
    for info in model.graph.as_mut().expect("graph").input.iter_mut().filter(|i| i.name == name) {
        if let Some(type_proto::Value::TensorType(t)) = info.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            let dim = |d: Option<usize>| Dimension {
                value: Some(match d {
                    Some(d) => dimension::Value::DimValue(d as i64),
                    None => dimension::Value::DimParam("N".into()),
                }),
                ..Dimension::default()
            };
            t.shape = Some(TensorShapeProto { dim: dims.iter().copied().map(dim).collect() });
        }
    }
}

/// Runs `model` on an engine, its inputs given the shapes of `inputs` (tract needs them).
fn engine_output(engine: &dyn Engine, model: &ModelProto, inputs: &[(&str, &[f32], &[usize])]) -> Vec<f32> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.onnx");
    let mut model = model.clone();
    for (name, _, dims) in inputs {
        set_input_shape(&mut model, name, &dims.iter().copied().map(Some).collect::<Vec<_>>());
    }
    model::save(&model, &path).expect("save");
    run_file(engine, &path, inputs)
}

/// [`cnn`] with its input declared `[N, 3, 16, 16]`, for the engines to run on any batch.
fn shaped_cnn(seed: u64) -> ModelProto {
    let mut model = cnn(seed);
    set_input_shape(&mut model, "x", &[None, Some(3), Some(16), Some(16)]);
    model
}

fn run_file(engine: &dyn Engine, path: &Path, inputs: &[(&str, &[f32], &[usize])]) -> Vec<f32> {
    let mut instance = engine
        .load(path, &LoadOptions { intra_op_threads: 1, allow_spinning: false, ..LoadOptions::default() })
        .expect("load");
    let feeds: Vec<NamedTensor> = inputs
        .iter()
        .map(|(n, v, d)| NamedTensor {
            name: n.to_string(),
            tensor: rtserve_core::Tensor::from_f32(d.to_vec(), v).expect("tensor"),
        })
        .collect();
    let out = engine.signature(path).expect("signature").outputs[0].name.clone();
    let result = instance.infer(&feeds, &[out]).expect("infer");
    result[0].tensor.to_f32().expect("f32")
}

/// ONNX Runtime when its library is found; a skip (with a note) otherwise, unless
/// `RTSERVE_E2E_REQUIRE_ONNXRUNTIME` is set.
fn ort() -> Option<Arc<dyn Engine>> {
    match Engines::new(EngineChoice::OnnxRuntime, None) {
        Ok(e) => Some(e.default_engine()),
        Err(e) if std::env::var_os("RTSERVE_E2E_REQUIRE_ONNXRUNTIME").is_some() => {
            panic!("RTSERVE_E2E_REQUIRE_ONNXRUNTIME is set but ONNX Runtime is missing: {e}")
        }
        Err(e) => {
            eprintln!("skipped: ONNX Runtime is missing ({e})");
            None
        }
    }
}

fn tract() -> Arc<dyn Engine> {
    Engines::new(EngineChoice::Tract, None).expect("tract").default_engine()
}

fn assert_close(got: &[f32], want: &[f32], rel: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= rel * scale, "{what}: value {i}: {g} vs {w} (scale {scale})");
    }
}

/// Single-operator (or small) models covering every supported operator and attribute form.
fn operator_cases() -> Vec<(&'static str, ModelProto, Vec<usize>)> {
    let mut rng = StdRng::seed_from_u64(3);
    let mut cases = Vec::new();
    let conv =
        |name: &'static str, attrs: Vec<AttributeProto>, w: &[i64], with_bias: bool, rng: &mut StdRng| {
            let mut init = vec![weight(rng, "w", w)];
            let mut inputs = vec!["x", "w"];
            if with_bias {
                init.push(float_tensor("b", &[w[0]], &random(rng, w[0] as usize, 0.5)));
                inputs.push("b");
            }
            (
                name,
                onnx(vec![with(node("Conv", name, &inputs, &["y"]), attrs)], init, &["x"], "y"),
                vec![2, 4, 9, 9],
            )
        };
    cases.push(conv("conv_plain", vec![], &[6, 4, 3, 3], true, &mut rng));
    cases.push(conv(
        "conv_strided_asymmetric",
        vec![ints("strides", &[2, 2]), ints("pads", &[0, 1, 1, 0])],
        &[6, 4, 3, 3],
        true,
        &mut rng,
    ));
    cases.push(conv(
        "conv_groups",
        vec![int_attribute("group", 2), ints("pads", &[1, 1, 1, 1])],
        &[6, 2, 3, 3],
        false,
        &mut rng,
    ));
    cases.push(conv(
        "conv_depthwise",
        vec![int_attribute("group", 4), ints("pads", &[1, 1, 1, 1])],
        &[4, 1, 3, 3],
        true,
        &mut rng,
    ));
    cases.push(conv(
        "conv_dilated",
        vec![ints("dilations", &[2, 2]), ints("pads", &[2, 2, 2, 2])],
        &[3, 4, 3, 3],
        true,
        &mut rng,
    ));
    let mut same = AttributeProto {
        name: "auto_pad".into(),
        r#type: AttributeType::String as i32,
        ..Default::default()
    };
    same.s = b"SAME_UPPER".to_vec();
    cases.push(conv("conv_same_upper", vec![same, ints("strides", &[2, 2])], &[3, 4, 3, 3], false, &mut rng));
    let unary = |op: &'static str, attrs: Vec<AttributeProto>| {
        (
            op,
            onnx(
                vec![with(node(op, op, &["x"], &["t"]), attrs), node("Mul", "mul", &["t", "k"], &["y"])],
                vec![float_tensor("k", &[1], &[1.5])],
                &["x"],
                "y",
            ),
            vec![2, 3, 4, 4],
        )
    };
    cases.push(unary("Relu", vec![]));
    cases.push(unary("Sigmoid", vec![]));
    cases.push(unary("HardSigmoid", vec![float_attr("alpha", 0.3)]));
    cases.push(unary("HardSwish", vec![]));
    cases.push(unary("GlobalAveragePool", vec![]));
    cases.push(unary("Dropout", vec![]));
    cases.push(unary("Identity", vec![]));
    cases.push(unary("Softmax", vec![int_attribute("axis", 1)]));
    cases.push(unary("Transpose", vec![ints("perm", &[0, 2, 3, 1])]));
    cases.push(unary("Flatten", vec![int_attribute("axis", 2)]));
    cases.push(unary(
        "MaxPool",
        vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1])],
    ));
    cases.push(unary(
        "AveragePool",
        vec![ints("kernel_shape", &[3, 3]), ints("strides", &[1, 1]), ints("pads", &[1, 1, 1, 1])],
    ));
    let pools = onnx(
        vec![
            with(node("Conv", "conv", &["x", "w"], &["c"]), vec![]),
            with(
                node("MaxPool", "max", &["c"], &["m"]),
                vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1])],
            ),
            with(
                node("AveragePool", "avg", &["m"], &["y"]),
                vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])],
            ),
        ],
        vec![weight(&mut rng, "w", &[3, 3, 1, 1])],
        &["x"],
        "y",
    );
    cases.push(("Conv/MaxPool 3x3 s2/AveragePool 3x3 s1 (gradient through both)", pools, vec![2, 3, 9, 9]));
    let clip = onnx(
        vec![node("Clip", "relu6", &["x", "lo", "hi"], &["y"])],
        vec![
            float_tensor("lo", &[], &[0.0]),
            float_tensor("hi", &[], &[0.5]),
            weight(&mut rng, "unused", &[1, 1]),
        ],
        &["x"],
        "y",
    );
    cases.push(("Clip", clip, vec![2, 3, 4, 4]));
    let bn = onnx(vec![bn_node("bn", "x", "y")], batch_norm(&mut rng, "bn", 3), &["x"], "y");
    cases.push(("BatchNormalization", bn, vec![2, 3, 4, 4]));
    let gemm = onnx(
        vec![with(
            node("Gemm", "gemm", &["x", "w", "c"], &["y"]),
            vec![int_attribute("transB", 1), float_attr("alpha", 0.5), float_attr("beta", 2.0)],
        )],
        vec![weight(&mut rng, "w", &[7, 12]), float_tensor("c", &[7], &random(&mut rng, 7, 1.0))],
        &["x"],
        "y",
    );
    cases.push(("Gemm", gemm, vec![3, 12]));
    let shape = TensorProto {
        name: "shape".into(),
        data_type: DataType::Int64 as i32,
        dims: vec![3],
        int64_data: vec![0, -1, 4],
        ..Default::default()
    };
    let arith = onnx(
        vec![
            node("MatMul", "mm", &["x", "w"], &["a"]),
            node("Add", "add", &["a", "b"], &["b1"]),
            node("Sub", "sub", &["b1", "c"], &["b2"]),
            node("Div", "div", &["b2", "d"], &["b3"]),
            node("Reshape", "reshape", &["b3", "shape"], &["b4"]),
            with(node("Concat", "concat", &["b4", "b4"], &["y"]), vec![int_attribute("axis", -1)]),
        ],
        vec![
            weight(&mut rng, "w", &[12, 8]),
            float_tensor("b", &[8], &random(&mut rng, 8, 1.0)),
            float_tensor("c", &[1], &[0.25]),
            float_tensor("d", &[8], &random(&mut rng, 8, 1.0).iter().map(|v| 2.0 + v).collect::<Vec<_>>()),
            shape,
        ],
        &["x"],
        "y",
    );
    cases.push(("MatMul/Add/Sub/Div/Reshape/Concat", arith, vec![3, 12]));
    cases.push(("cnn", cnn(1), vec![2, 3, 16, 16]));
    cases
}

#[test]
fn forward_matches_onnx_runtime_and_tract_on_every_operator() {
    let ort = ort();
    let tract = tract();
    let mut rng = StdRng::seed_from_u64(11);
    for (name, model, dims) in operator_cases() {
        let x = random(&mut rng, dims.iter().product(), 2.0);
        let inputs = [("x", x.as_slice(), dims.as_slice())];
        let ours = trainer_output(&model, &inputs);
        if let Some(ort) = &ort {
            assert_close(
                &ours,
                &engine_output(ort.as_ref(), &model, &inputs),
                1e-4,
                &format!("{name} vs ONNX Runtime"),
            );
        }
        assert_close(
            &ours,
            &engine_output(tract.as_ref(), &model, &inputs),
            1e-4,
            &format!("{name} vs tract"),
        );
    }
}

/// Sum of outputs weighted by fixed random values: a loss whose gradient reaches everything.
fn weighted_loss(g: &TrainGraph, x: &Tensor, r: &Tensor) -> Tensor {
    let f =
        g.forward(&[("x".into(), x.clone())], Mode::Train, &mut StdRng::seed_from_u64(0)).expect("forward");
    let y = &f.values[&g.outputs()[0]];
    (y.flatten_all().expect("flat") * r).expect("mul").sum_all().expect("sum")
}

/// Checks `analytic` (the gradient of the weighted loss) against central differences at a few
/// entries of `values`, which `set` writes into the graph.
fn check_gradient(what: &str, values: &[f64], analytic: &[f64], mut loss_with: impl FnMut(Vec<f64>) -> f64) {
    for k in [0, values.len() / 3, values.len() / 2, values.len() - 1] {
        let h = 1e-5;
        let mut eval = |delta: f64| {
            let mut v = values.to_vec();
            v[k] += delta;
            loss_with(v)
        };
        let numeric = (eval(h) - eval(-h)) / (2.0 * h);
        let tol = 1e-5 + 1e-4 * numeric.abs().max(analytic[k].abs());
        assert!(
            (numeric - analytic[k]).abs() <= tol,
            "{what}[{k}]: analytic {} vs numeric {numeric}",
            analytic[k]
        );
    }
}

#[test]
fn gradients_match_finite_differences() {
    let mut rng = StdRng::seed_from_u64(5);
    for (name, model, dims) in operator_cases() {
        let g = TrainGraph::with_dtype(&model, DType::F64).expect("graph");
        let x = candle_core::Var::from_tensor(&candle_input(
            &random(&mut rng, dims.iter().product(), 2.0),
            &dims,
            DType::F64,
        ))
        .expect("var");
        let probe = g
            .forward(&[("x".into(), x.as_tensor().clone())], Mode::Train, &mut StdRng::seed_from_u64(0))
            .expect("probe");
        let out_len = probe.values[&g.outputs()[0]].elem_count();
        let r = candle_input(&random(&mut rng, out_len, 1.0), &[out_len], DType::F64);
        let grads = weighted_loss(&g, x.as_tensor(), &r).backward().expect("backward");
        let as_vec = |t: &Tensor| t.flatten_all().expect("flat").to_vec1::<f64>().expect("values");
        // The input's gradient: what every operator passes back to the layers before it.
        let input_values = as_vec(x.as_tensor());
        let input_grad = as_vec(grads.get(x.as_tensor()).expect("the input has a gradient"));
        check_gradient(&format!("{name}: d/dx"), &input_values, &input_grad, |v| {
            let t = Tensor::from_vec(v, dims.as_slice(), &Device::Cpu).expect("t");
            weighted_loss(&g, &t, &r).to_scalar::<f64>().expect("loss")
        });
        for p in g.params().iter().filter(|p| p.kind == ParamKind::Trainable) {
            let Some(grad) = grads.get(p.var.as_tensor()) else { continue };
            let original = p.var.as_tensor().copy().expect("copy");
            check_gradient(&format!("{name}: d/d {}", p.name), &as_vec(&original), &as_vec(grad), |v| {
                p.var.set(&Tensor::from_vec(v, original.dims(), &Device::Cpu).expect("t")).expect("set");
                weighted_loss(&g, x.as_tensor(), &r).to_scalar::<f64>().expect("loss")
            });
            p.var.set(&original).expect("restore");
        }
    }
}

/// A labelled toy set for a `[n, 3, 16, 16]`-input model: the class is decided by which third
/// of the channels is brightest.
fn toy_data(n: usize, seed: u64) -> Dataset {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for _ in 0..n {
        let class = rng.random_range(0..5u32);
        for c in 0..3 {
            for _ in 0..256 {
                let base = if c as u32 == class % 3 { 0.8 } else { 0.0 };
                features.push(base + rng.random::<f32>() * 0.5 - 0.25 + class as f32 * 0.05);
            }
        }
        labels.push(class);
    }
    Dataset::new(vec![3, 16, 16], features, labels).expect("dataset")
}

fn quiet_train(
    g: &TrainGraph,
    data: &Dataset,
    options: &TrainOptions,
    hooks: Vec<&mut dyn rtserve_optimize::train::trainer::Hook>,
) {
    train_with(g, data, options, &mut CrossEntropy, hooks);
}

fn train_with(
    g: &TrainGraph,
    data: &Dataset,
    options: &TrainOptions,
    objective: &mut dyn Objective,
    hooks: Vec<&mut dyn rtserve_optimize::train::trainer::Hook>,
) {
    let stop = AtomicBool::new(false);
    let plugins = Plugins { objective, hooks, stop: &stop, on_event: &mut |_| {} };
    trainer::train(g, data, None, options, plugins).expect("train");
}

fn short_run() -> TrainOptions {
    TrainOptions { epochs: 2, batch_size: 16, learning_rate: 0.02, seed: 9, ..TrainOptions::default() }
}

fn initializer_bytes(m: &ModelProto) -> Vec<Vec<f32>> {
    m.graph
        .as_ref()
        .expect("graph")
        .initializer
        .iter()
        .filter(|t| t.data_type == DataType::Float as i32)
        .map(|t| float_values(t).expect("values"))
        .collect()
}

#[test]
fn without_shuffling_the_minibatches_follow_the_data_order_whatever_the_seed() {
    let data = toy_data(96, 1);
    let run = |seed: u64, shuffle: bool| {
        let g = TrainGraph::new(&cnn(2)).expect("graph");
        quiet_train(&g, &data, &TrainOptions { seed, shuffle, ..short_run() }, Vec::new());
        initializer_bytes(&g.to_model().expect("export"))
    };
    let in_order = run(9, false);
    // The model has no dropout: the seed only orders the samples, so without shuffling it
    // changes nothing, and the order the data has is not the order a shuffle gives.
    assert_eq!(in_order, run(10, false));
    assert_ne!(in_order, run(9, true));
}

#[test]
fn the_same_seed_gives_the_same_weights_and_training_lowers_the_loss() {
    let data = toy_data(96, 1);
    let run = |seed: u64| {
        let g = TrainGraph::new(&cnn(2)).expect("graph");
        quiet_train(&g, &data, &TrainOptions { seed, ..short_run() }, Vec::new());
        g.to_model().expect("export")
    };
    // Several runs: the kernels' parallel sums must not depend on how rayon splits the work.
    let a = run(9);
    for _ in 0..3 {
        assert_eq!(initializer_bytes(&a), initializer_bytes(&run(9)));
    }
    assert_ne!(initializer_bytes(&a), initializer_bytes(&run(10)));
    let before = TrainGraph::new(&cnn(2)).expect("graph");
    let after = TrainGraph::new(&a).expect("graph");
    let loss = |g: &TrainGraph| {
        let (x, labels) = data.batch(&(0..data.len()).collect::<Vec<_>>()).expect("batch");
        let (y, _) =
            trainer::logits(g, "x", "y", x, Mode::Eval, &mut StdRng::seed_from_u64(0)).expect("logits");
        trainer::cross_entropy(&y, &labels).expect("loss").to_scalar::<f32>().expect("scalar")
    };
    assert!(loss(&after) < loss(&before), "{} !< {}", loss(&after), loss(&before));
}

#[test]
fn a_trained_model_reloads_in_both_engines_with_the_trainers_outputs() {
    let data = toy_data(48, 2);
    let g = TrainGraph::new(&cnn(3)).expect("graph");
    quiet_train(&g, &data, &short_run(), Vec::new());
    let trained = g.to_model().expect("export");
    let original = cnn(3);
    let (og, tg) = (original.graph.as_ref().expect("g"), trained.graph.as_ref().expect("g"));
    assert_eq!(og.node, tg.node);
    assert_eq!(og.input, tg.input);
    assert_eq!(original.opset_import, trained.opset_import);
    let names =
        |g: &GraphProto| g.initializer.iter().map(|t| (t.name.clone(), t.dims.clone())).collect::<Vec<_>>();
    assert_eq!(names(og), names(tg));
    let (x, _) = data.batch(&[0, 1, 2]).expect("batch");
    let values = x.flatten_all().expect("flat").to_vec1::<f32>().expect("x");
    let inputs = [("x", values.as_slice(), &[3usize, 3, 16, 16][..])];
    let ours = trainer_output(&trained, &inputs);
    assert_close(&ours, &engine_output(tract().as_ref(), &trained, &inputs), 1e-4, "trained vs tract");
    if let Some(ort) = ort() {
        assert_close(&ours, &engine_output(ort.as_ref(), &trained, &inputs), 1e-4, "trained vs ONNX Runtime");
    }
}

#[test]
fn channel_pruning_keeps_groups_consistent_and_equals_the_masked_model() {
    let model = cnn(4);
    let options = ChannelOptions::new(0.5, Criterion::L2);
    let (deps, selection, reports) = channels::select(&model, &options).expect("select");
    // stem+residual (one group: the Add joins them), dw rides along; b1, b2 (Concat parts); the
    // Gemm's output is the graph output: blocked.
    let pruned_groups: Vec<_> = reports.iter().filter(|r| r.kept < r.channels).collect();
    assert_eq!(pruned_groups.len(), 3, "{reports:#?}");
    assert!(
        reports.iter().any(|r| r.producers.contains(&"fc.w".to_string()) && r.blocked.is_some()),
        "{reports:#?}"
    );
    let residual = reports.iter().find(|r| r.producers.contains(&"stem.w".to_string())).expect("stem group");
    assert!(residual.producers.contains(&"a.w".to_string()), "the Add must join stem and a: {residual:?}");
    assert_eq!(residual.kept, 4);
    let pruned = channels::remove(&model, &deps, &selection).expect("remove");
    let masked = channels::mask_consumers(&model, &deps, &selection).expect("mask");
    let dims = |m: &ModelProto, n: &str| {
        m.graph.as_ref().expect("g").initializer.iter().find(|t| t.name == n).expect("init").dims.clone()
    };
    assert_eq!(dims(&pruned, "stem.w"), vec![4, 3, 3, 3]);
    assert_eq!(dims(&pruned, "a.w"), vec![4, 4, 3, 3]);
    assert_eq!(dims(&pruned, "dw.w"), vec![4, 1, 3, 3]);
    assert_eq!(dims(&pruned, "b1.w"), vec![3, 4, 1, 1]);
    assert_eq!(dims(&pruned, "b2.w"), vec![2, 4, 3, 3]);
    assert_eq!(dims(&pruned, "scale"), vec![1, 5, 1, 1]);
    assert_eq!(dims(&pruned, "fc.w"), vec![5, 5]);
    let mut rng = StdRng::seed_from_u64(8);
    let x = random(&mut rng, 2 * 3 * 16 * 16, 1.0);
    let inputs = [("x", x.as_slice(), &[2usize, 3, 16, 16][..])];
    let engines: Vec<Arc<dyn Engine>> = std::iter::once(tract()).chain(ort()).collect();
    for engine in &engines {
        let want = engine_output(engine.as_ref(), &masked, &inputs);
        let got = engine_output(engine.as_ref(), &pruned, &inputs);
        assert_close(&got, &want, 1e-4, &format!("pruned vs masked on {}", engine.name()));
    }
    // The trainer runs the pruned model too, and agrees.
    assert_close(
        &trainer_output(&pruned, &inputs),
        &engine_output(engines[0].as_ref(), &pruned, &inputs),
        1e-4,
        "trainer",
    );
}

#[test]
fn channel_pruning_refuses_a_model_with_nothing_to_prune_and_bad_sparsity() {
    let mut rng = StdRng::seed_from_u64(1);
    let single = onnx(
        vec![with(node("Gemm", "fc", &["x", "w"], &["y"]), vec![int_attribute("transB", 1)])],
        vec![weight(&mut rng, "w", &[3, 4])],
        &["x"],
        "y",
    );
    let options = ChannelOptions::new(0.5, Criterion::L1);
    let err = channels::select(&single, &options).expect_err("nothing").to_string();
    assert!(err.contains("no channel group"), "{err}");
    for s in [0.0, 1.0, -0.5, 1.5] {
        let err = channels::select(&cnn(1), &ChannelOptions { sparsity: s, ..options.clone() })
            .expect_err("bad")
            .to_string();
        assert!(err.contains("between 0 and 1"), "{err}");
    }
}

/// The group root whose channels `producer` computes.
fn root_of(deps: &Dependencies, producer: &str) -> usize {
    let edit =
        deps.edits.iter().find(|e| e.role == Role::Producer && e.tensor == producer).expect("producer");
    deps.root(edit.layout.spaces[0])
}

/// Each channel's Taylor score is the square of the loss's slope as the weights that read it go
/// to zero: checked against a central difference of the loss (in f64) along that direction, for
/// every channel of the residual group (read through a depthwise conv) and of both Concat parts
/// (read through a Flatten by the Gemm).
#[test]
fn taylor_scores_are_the_squared_slope_of_removing_each_channel() {
    let model = cnn(4);
    let data = toy_data(24, 5);
    let scores = taylor_scores(&model, &data, 32, 0, None).expect("scores");
    let (deps, _, _) = channels::select(&model, &ChannelOptions::new(0.5, Criterion::L2)).expect("select");
    let (x, labels) = data.batch(&(0..24).collect::<Vec<_>>()).expect("batch");
    let x = x.to_dtype(DType::F64).expect("f64");
    let loss = |m: &ModelProto| {
        let g = TrainGraph::with_dtype(m, DType::F64).expect("graph");
        let (y, _) = trainer::logits(&g, "x", "y", x.clone(), Mode::Train, &mut StdRng::seed_from_u64(0))
            .expect("logits");
        trainer::cross_entropy(&y, &labels).expect("loss").to_scalar::<f64>().expect("scalar")
    };
    let mut checked = 0;
    for group in deps.groups().iter().filter(|g| g.blocked.is_none()) {
        for (c, score) in scores[&group.root].iter().enumerate() {
            let selection: channels::Selection =
                [(group.root, (0..group.size).filter(|&k| k != c).collect())].into();
            let masked = channels::mask_consumers(&model, &deps, &selection).expect("mask");
            // The model with channel c's readers scaled by t: t = 1 is the model, t = 0 the cut.
            let scaled = |t: f32| {
                let mut m = model.clone();
                let g = m.graph.as_mut().expect("graph");
                let cut = &masked.graph.as_ref().expect("graph").initializer;
                for (w, z) in g.initializer.iter_mut().zip(cut) {
                    let (wv, zv) = (float_values(w).expect("w"), float_values(z).expect("z"));
                    let values: Vec<f32> = wv.iter().zip(&zv).map(|(a, b)| b + t * (a - b)).collect();
                    *w = float_tensor(&w.name, &w.dims.clone(), &values);
                }
                m
            };
            let h = 1e-2;
            let slope = (loss(&scaled(1.0 + h)) - loss(&scaled(1.0 - h))) / (2.0 * h as f64);
            assert!(
                (score.sqrt() - slope.abs()).abs() <= 0.02 * slope.abs() + 1e-6,
                "group {} channel {c}: score {score} against slope {slope}",
                group.root
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 8 + 6 + 4);
}

/// Global scope removes the lowest scores wherever they are (each group keeping one channel);
/// per-group scope removes half of each group, by the same scores.
#[test]
fn channel_pruning_ranks_globally_or_per_group_by_the_given_scores() {
    let model = cnn(4);
    let (deps, _, _) = channels::select(&model, &ChannelOptions::new(0.5, Criterion::L2)).expect("select");
    let (residual, b1, b2) = (root_of(&deps, "stem.w"), root_of(&deps, "b1.w"), root_of(&deps, "b2.w"));
    let scores: channels::Scores = [
        (residual, (0..8).map(|c| 10.0 + c as f64).collect()),
        (b1, (0..6).map(|c| c as f64).collect()),
        (b2, (0..4).map(|c| 0.5 + c as f64).collect()),
    ]
    .into();
    let options = ChannelOptions {
        scope: Scope::Global,
        scores: Some(Arc::new(scores)),
        ..ChannelOptions::new(0.5, Criterion::Taylor)
    };
    let (deps, selection, _) = channels::select(&model, &options).expect("global");
    // Nine of 18 go: five of b1 and three of b2 (each keeps one), then the residual's lowest.
    assert_eq!(selection[&residual], (1..8).collect::<Vec<_>>());
    assert_eq!(selection[&b1], [5]);
    assert_eq!(selection[&b2], [3]);
    channels::remove(&model, &deps, &selection).expect("a valid model");
    let (_, selection, _) =
        channels::select(&model, &ChannelOptions { scope: Scope::PerLayer, ..options.clone() })
            .expect("layer");
    assert_eq!(selection[&residual], [4, 5, 6, 7]);
    assert_eq!(selection[&b1], [3, 4, 5]);
    assert_eq!(selection[&b2], [2, 3]);

    let err = channels::select(&model, &ChannelOptions::new(0.5, Criterion::Taylor)).expect_err("no scores");
    assert!(err.to_string().contains("needs scores"), "{err}");
    let g = TrainGraph::new(&model).expect("graph");
    let err = GradualChannels::new(&g, options).err().expect("gradual taylor").to_string();
    assert!(err.contains("measured once"), "{err}");
}

/// Gradual channel pruning on the CNN with a residual Add, a depthwise conv and a Concat: the
/// silenced share rises during training and holds; every edited slice of a silenced channel is
/// zero at the end; the smaller model cut out of it computes what the trained, silenced model
/// computes; and no epoch before the final sparsity is kept as the best one.
#[test]
fn gradual_channel_pruning_silences_then_cuts_the_same_channels() {
    let data = toy_data(64, 3);
    let g = TrainGraph::new(&cnn(6)).expect("graph");
    let options = ChannelOptions::new(0.5, Criterion::L2);
    let mut pruner = GradualChannels::new(&g, options.clone()).expect("pruner");
    let run = TrainOptions { epochs: 3, ..short_run() };
    let steps = 3 * 64usize.div_ceil(run.batch_size);
    assert!(!Hook::settled(&pruner), "nothing is silenced before training");
    let stop = AtomicBool::new(false);
    let mut seen = Vec::new();
    let plugins = Plugins {
        objective: &mut CrossEntropy,
        hooks: vec![&mut pruner],
        stop: &stop,
        on_event: &mut |e| {
            if let rtserve_optimize::train::trainer::Event::Epoch(f) = e {
                seen.push(f.epoch)
            }
        },
    };
    let heldout = toy_data(32, 4);
    let report = trainer::train(&g, &data, Some(&heldout), &run, plugins).expect("train");
    assert_eq!(seen, [0, 1, 2]);
    // The ramp ends at 70 % of the 12 steps (after the 9th): epochs 1 and 2 end before it, so
    // only the third may be kept, whatever the held-out accuracies.
    assert_eq!(report.best_epoch, Some(2));
    assert!(Hook::settled(&pruner));
    assert_eq!(pruner.sparsity_at(steps), 0.5);
    assert!(pruner.sparsity_at(steps / 4) > 0.0 && pruner.sparsity_at(steps / 4) < 0.5);

    let trained = g.to_model().expect("model");
    let (pruned, reports) = pruner.finish(&g).expect("finish");
    assert_eq!(reports.iter().filter(|r| r.kept < r.channels).count(), 3, "{reports:#?}");
    // The consumers' weights of the channels the cut removes were zero already.
    let (deps, selection, _) = channels::select(&trained, &options).expect("select");
    let silenced = channels::mask_consumers(&trained, &deps, &selection).expect("mask");
    assert_eq!(initializer_bytes(&silenced), initializer_bytes(&trained), "consumers already silenced");
    let mut rng = StdRng::seed_from_u64(8);
    let x = random(&mut rng, 2 * 3 * 16 * 16, 1.0);
    let inputs = [("x", x.as_slice(), &[2usize, 3, 16, 16][..])];
    assert_close(
        &trainer_output(&pruned, &inputs),
        &trainer_output(&trained, &inputs),
        1e-4,
        "cut vs silenced",
    );
    assert_close(
        &engine_output(tract().as_ref(), &pruned, &inputs),
        &trainer_output(&trained, &inputs),
        1e-4,
        "cut on tract vs silenced in the trainer",
    );
}

#[test]
fn magnitude_pruning_reaches_its_sparsity_and_keeps_it_through_training() {
    let data = toy_data(64, 3);
    for (scope, schedule) in
        [(Scope::Global, SparsitySchedule::Polynomial), (Scope::PerLayer, SparsitySchedule::Constant)]
    {
        let g = TrainGraph::new(&cnn(5)).expect("graph");
        let mut pruner =
            MagnitudePruner::new(&g, MagnitudeOptions { sparsity: 0.5, scope, schedule }).expect("pruner");
        quiet_train(&g, &data, &short_run(), vec![&mut pruner]);
        let layers = pruner.report(&g).expect("report");
        let (values, zeros) = layers.iter().fold((0, 0), |(v, z), l| (v + l.values, z + l.zeros));
        let share = zeros as f64 / values as f64;
        assert!((share - 0.5).abs() < 0.01, "{scope:?}: {share}");
        if scope == Scope::PerLayer {
            for l in &layers {
                let s = l.zeros as f64 / l.values as f64;
                assert!((s - 0.5).abs() <= 1.0 / l.values as f64 + 1e-9, "{}: {s}", l.weight);
            }
        }
        // Biases and BatchNorm are not pruned.
        let bias = g
            .param("fc.b")
            .expect("bias")
            .var
            .as_tensor()
            .flatten_all()
            .expect("f")
            .to_vec1::<f32>()
            .expect("v");
        assert!(bias.iter().all(|v| *v != 0.0));
    }
}

/// The zoo's models (scripts/model_zoo.py fetch) through the trainer's forward pass against
/// ONNX Runtime. Skipped when the zoo is not fetched, unless `RTSERVE_ZOO_REQUIRED` is set.
#[test]
fn zoo_models_forward_matches_onnx_runtime() {
    let zoo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/zoo");
    let Some(ort) = ort() else { return };
    let mut rng = StdRng::seed_from_u64(12);
    for name in ["mobilenetv2", "efficientnet_lite0", "resnet50"] {
        let path = zoo.join(name).join("1/model.onnx");
        if !path.exists() {
            assert!(
                std::env::var_os("RTSERVE_ZOO_REQUIRED").is_none(),
                "RTSERVE_ZOO_REQUIRED is set but {} is missing",
                path.display()
            );
            eprintln!("skipped {name}: {} is missing (python3 scripts/model_zoo.py fetch)", path.display());
            continue;
        }
        let model = model::load(&path).expect("load");
        let dims = [1usize, 3, 224, 224];
        let x = random(&mut rng, dims.iter().product(), 2.0);
        let input = ort.signature(&path).expect("signature").inputs[0].name.clone();
        let inputs = [(input.as_str(), x.as_slice(), &dims[..])];
        let ours = trainer_output(&model, &inputs);
        assert_close(&ours, &run_file(ort.as_ref(), &path, &inputs), 1e-4, name);
    }
}

/// The logits of every sample of `data` from the trainer (inference mode).
fn all_logits(g: &TrainGraph, data: &Dataset) -> Tensor {
    let (x, _) = data.batch(&(0..data.len()).collect::<Vec<_>>()).expect("batch");
    trainer::logits(g, "x", "y", x, Mode::Eval, &mut StdRng::seed_from_u64(0)).expect("logits").0
}

#[test]
fn distillation_brings_a_narrowed_student_towards_its_teacher_run_on_the_engine() {
    let data = toy_data(96, 5);
    let teacher = TrainGraph::new(&shaped_cnn(5)).expect("teacher");
    quiet_train(&teacher, &data, &short_run(), Vec::new());
    // A confident teacher: its head scaled up, so that its soft targets are far from uniform.
    for name in ["fc.w", "fc.b"] {
        let var = &teacher.param(name).expect("head").var;
        var.set(&(var.as_tensor() * 10.0).expect("scale")).expect("set");
    }
    let teacher_model = teacher.to_model().expect("export");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("teacher.onnx");
    model::save(&teacher_model, &path).expect("save");
    let logits = distill::engine_logits(&path, tract().as_ref(), &data, &|_| {}).expect("teacher logits");
    // The engine's logits are the trainer's: the teacher is only a file to the distiller.
    let ours = all_logits(&teacher, &data).flatten_all().expect("flat").to_vec1::<f32>().expect("values");
    assert_eq!(logits.classes, 5);
    assert_close(&logits.values, &ours, 1e-4, "teacher on tract vs trainer");

    let (narrowed, groups) = distill::student_from_teacher(&teacher_model, 0.5).expect("student");
    assert!(groups.iter().any(|g| g.kept * 2 == g.channels), "{groups:#?}");
    let narrowed = TrainGraph::new(&narrowed).expect("narrowed graph");
    assert!(narrowed.weight_counts().expect("counts").0 < teacher.weight_counts().expect("counts").0);
    // Narrowed, the trained teacher is already close to itself: the student to train is the
    // same narrow architecture with untrained weights.
    let (student_model, _) = distill::student_from_teacher(&shaped_cnn(50), 0.5).expect("student");
    let student = TrainGraph::new(&student_model).expect("student graph");
    let options = DistillOptions { temperature: 1.0, alpha: 1.0 };
    let teacher_tensor = Tensor::from_vec(logits.values.clone(), (data.len(), 5), &Device::Cpu).expect("t");
    let soft_loss = |g: &TrainGraph| {
        let labels = Tensor::new(logits.argmax(), &Device::Cpu).expect("labels");
        distill::distillation_loss(&all_logits(g, &data), &teacher_tensor, &labels, &options)
            .expect("loss")
            .to_scalar::<f32>()
            .expect("scalar")
    };
    let before = soft_loss(&student);
    let mut objective = Distillation::new(logits.clone(), options).expect("objective");
    train_with(
        &student,
        &data,
        &TrainOptions { epochs: 8, learning_rate: 0.05, ..short_run() },
        &mut objective,
        Vec::new(),
    );
    let after = soft_loss(&student);
    assert!(after < before * 0.8, "distillation loss {before} -> {after}");
}

#[test]
fn distillation_refuses_a_student_of_another_shape_and_bad_widths() {
    let teacher = cnn(6);
    let mut other = cnn(6);
    let out = &mut other.graph.as_mut().expect("graph").output[0];
    let dim = |d: Option<i64>| Dimension {
        value: d.map(dimension::Value::DimValue).or(Some(dimension::Value::DimParam("N".into()))),
        ..Dimension::default()
    };
    let shaped = |info: &mut rtserve_optimize::onnx::ValueInfoProto, classes: i64| {
        if let Some(type_proto::Value::TensorType(t)) = info.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            t.shape = Some(TensorShapeProto { dim: vec![dim(None), dim(Some(classes))] });
        }
    };
    shaped(out, 7);
    let mut teacher_shaped = teacher.clone();
    shaped(&mut teacher_shaped.graph.as_mut().expect("graph").output[0], 5);
    let err = distill::check_outputs(&teacher_shaped, &other).expect_err("shapes").to_string();
    assert!(err.contains("[?, 5]") && err.contains("[?, 7]") && err.contains("must be the same"), "{err}");
    distill::check_outputs(&teacher_shaped, &teacher).expect("undeclared shapes are not compared");
    for width in [0.0, 1.0, -0.5, f64::NAN] {
        let err = distill::student_from_teacher(&teacher, width).expect_err("width").to_string();
        assert!(err.contains("between 0 and 1"), "{err}");
    }
}

#[test]
fn batch_norms_fold_into_their_convs_and_the_outputs_stay() {
    let model = shaped_cnn(11);
    let (folded, count) = fold::batch_norms(&model).expect("fold");
    // Both Conv + BatchNormalization pairs (one Conv with a bias, one without) fold.
    assert_eq!(count, 2);
    let graph = folded.graph.as_ref().expect("graph");
    assert!(graph.node.iter().all(|n| n.op_type != "BatchNormalization"), "a BatchNormalization is left");
    assert!(graph.initializer.iter().all(|t| !t.name.starts_with("stem_bn.")), "unused BN parameters kept");
    let dims = [2usize, 3, 16, 16];
    let x = random(&mut StdRng::seed_from_u64(12), dims.iter().product(), 1.0);
    let mut engines = vec![tract()];
    engines.extend(ort());
    for engine in engines {
        let want = engine_output(engine.as_ref(), &model, &[("x", &x, &dims)]);
        let got = engine_output(engine.as_ref(), &folded, &[("x", &x, &dims)]);
        assert_close(&got, &want, 1e-5, "folded against unfolded");
    }
    // A Conv whose output is also read elsewhere keeps its BatchNormalization.
    let mut shared = model.clone();
    let g = shared.graph.as_mut().expect("graph");
    g.node.push(node("Identity", "also_reads_s0", &["s0"], &["s0_copy"]));
    g.output.push(tensor_value_info("s0_copy", DataType::Float));
    let (_, count) = fold::batch_norms(&shared).expect("fold");
    assert_eq!(count, 1, "only the second pair folds");
}

fn qat_options() -> QatOptions {
    QatOptions { quantize: QuantizeOptions::default(), learn_ranges: true }
}

fn calibration_samples(data: &Dataset, n: usize) -> Vec<rtserve_optimize::data::Sample> {
    (0..n).map(|i| data.engine_batch(&[i], "x").expect("sample")).collect()
}

/// A node's op type, inputs and outputs.
type NodeLayout = (String, Vec<String>, Vec<String>);
/// An initializer's name, element type and shape.
type InitializerLayout = (String, i32, Vec<i64>);

/// The graph's nodes and initializers, values left out.
fn layout(m: &ModelProto) -> (Vec<NodeLayout>, Vec<InitializerLayout>) {
    let g = m.graph.as_ref().expect("graph");
    (
        g.node.iter().map(|n| (n.op_type.clone(), n.input.clone(), n.output.clone())).collect(),
        g.initializer.iter().map(|t| (t.name.clone(), t.data_type, t.dims.clone())).collect(),
    )
}

#[test]
fn qat_exports_the_layout_quantize_writes_and_its_model_before_training() {
    let data = toy_data(32, 7);
    let model = shaped_cnn(7);
    let samples = calibration_samples(&data, 16);
    for exclude in [vec![], vec!["b2".to_string(), "Add".to_string()]] {
        let quantize = QuantizeOptions { exclude: exclude.clone(), ..QuantizeOptions::default() };
        let (written, report) =
            quantize_static(&model, &samples, tract().as_ref(), &quantize, &|| {}).expect("quantize");
        let mut g = TrainGraph::new(&model).expect("graph");
        let options = QatOptions { quantize, ..qat_options() };
        let q = qat::prepare(&model, &mut g, &samples, tract().as_ref(), &options, &|| {}).expect("prepare");
        // Untrained, the export is exactly what `quantize` writes.
        let (exported, qat_report) = q.export(&g).expect("export");
        assert_eq!(exported, written, "exclude {exclude:?}");
        assert_eq!(qat_report.nodes_excluded, report.nodes_excluded);
        // Trained, the values move and the layout stays.
        quiet_train(&g, &data, &TrainOptions { epochs: 1, learning_rate: 0.01, ..short_run() }, Vec::new());
        let (trained, _) = q.export(&g).expect("export");
        assert_ne!(trained, written);
        assert_eq!(layout(&trained), layout(&written), "exclude {exclude:?}");
        let ops: Vec<&str> =
            trained.graph.as_ref().expect("g").node.iter().map(|n| n.op_type.as_str()).collect();
        assert!(ops.contains(&"QuantizeLinear") && ops.contains(&"DequantizeLinear"), "{ops:?}");
    }
}

/// The largest |Δ| one quantization step of the last quantized activation (the head's input)
/// can make at the head's output: its scale times the largest row sum of |head weights|.
fn one_step_at_the_output(qdq: &ModelProto) -> f32 {
    let g = qdq.graph.as_ref().expect("graph");
    let scale_of = |name: &str| {
        let t = g.initializer.iter().find(|t| t.name == name).expect("scale");
        float_values(t).expect("scale")[0]
    };
    let q = g.node.iter().find(|n| n.op_type == "QuantizeLinear" && n.input[0] == "f").expect("Q of f");
    let fc = g.initializer.iter().find(|t| t.name == "fc.w" && t.data_type == DataType::Float as i32);
    // The head's weights are stored as int8 with a scale per row: dequantize them.
    let (wq, ws) = (
        g.initializer.iter().find(|t| t.name == "fc.w_quantized").expect("fc.w int8"),
        float_values(g.initializer.iter().find(|t| t.name == "fc.w_scale").expect("fc.w scale")).expect("s"),
    );
    assert!(fc.is_none(), "the head's float weights should be gone");
    let cols = wq.dims[1] as usize;
    let row_sums = wq
        .raw_data
        .chunks(cols)
        .zip(&ws)
        .map(|(row, s)| row.iter().map(|b| (*b as i8).unsigned_abs() as f32 * s).sum::<f32>());
    scale_of(&q.input[1]) * row_sums.fold(0f32, f32::max)
}

#[test]
fn the_fake_quantized_forward_is_what_the_exported_qdq_model_computes() {
    let data = toy_data(48, 8);
    let model = shaped_cnn(8);
    let samples = calibration_samples(&data, 24);
    let mut g = TrainGraph::new(&model).expect("graph");
    let q =
        qat::prepare(&model, &mut g, &samples, tract().as_ref(), &qat_options(), &|| {}).expect("prepare");
    let float_ranges = g.params().iter().filter(|p| p.kind == ParamKind::Range).count();
    assert!(float_ranges > 0, "no learned ranges");
    quiet_train(&g, &data, &TrainOptions { epochs: 1, learning_rate: 0.01, ..short_run() }, Vec::new());
    let (exported, _) = q.export(&g).expect("export");
    let (x, _) = data.batch(&(0..8).collect::<Vec<_>>()).expect("batch");
    let values = x.flatten_all().expect("flat").to_vec1::<f32>().expect("x");
    let inputs = [("x", values.as_slice(), &[8usize, 3, 16, 16][..])];
    let feeds = vec![("x".to_string(), x)];
    let ours = g.forward(&feeds, Mode::Eval, &mut StdRng::seed_from_u64(0)).expect("forward").values["y"]
        .flatten_all()
        .expect("flat")
        .to_vec1::<f32>()
        .expect("values");
    let step = one_step_at_the_output(&exported);
    let mut engines: Vec<(&str, Arc<dyn Engine>)> = vec![("tract", tract())];
    engines.extend(ort().map(|e| ("ONNX Runtime", e)));
    for (name, engine) in engines {
        let theirs = engine_output(engine.as_ref(), &exported, &inputs);
        assert_eq!(theirs.len(), ours.len());
        let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(
            worst <= step,
            "{name}: the QDQ model is {worst} from the fake-quantized forward (one step: {step})"
        );
    }
    // And the fake quantization is not a no-op: the float graph computes something else.
    let float = trainer_output(&g.to_model().expect("float"), &inputs);
    assert!(ours.iter().zip(&float).any(|(a, b)| (a - b).abs() > 1e-4));
}

/// Multiply-adds per image of the committed Fashion-MNIST models against their counts by hand
/// (docs/training.md: the teacher's layers `28·28·32·9 + 2·14·14·32·32·9 + 7·7·64·32·9 +
/// 7·7·64·64·9 + 64·10`; fashion_student.py's for the student), and of the width-0.3 student
/// the docs count the same way (10 and 20 channels where the teacher has 32 and 64).
#[test]
fn multiply_adds_are_counted_from_the_shapes() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/optimize");
    let image = Dataset::new(vec![1, 28, 28], vec![0.0; 28 * 28], vec![0]).expect("data");
    let count = |m: &ModelProto| {
        let g = TrainGraph::new(m).expect("graph");
        rtserve_optimize::train::cost::multiply_adds(&g, &image).expect("count")
    };
    let teacher = model::load(&examples.join("fashion_cnn.onnx")).expect("teacher");
    let by_hand = |c: u64| {
        28 * 28 * c * 9 + 2 * 14 * 14 * c * c * 9 + 7 * 7 * 2 * c * c * 9 + 7 * 7 * 4 * c * c * 9 + 2 * c * 10
    };
    assert_eq!(count(&teacher), by_hand(32));
    assert_eq!(by_hand(32), 6_548_608);
    let (narrow, _) = distill::student_from_teacher(&teacher, 0.3).expect("student");
    assert_eq!(count(&narrow), by_hand(10));
    let student = model::load(&examples.join("fashion_student_init.onnx")).expect("student");
    assert_eq!(count(&student), 14 * 14 * 32 * 4 + 7 * 7 * 64 * 32 * 4 + 3136 * 10);
}
