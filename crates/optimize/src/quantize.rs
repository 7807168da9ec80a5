//! INT8 post-training quantization: static (QDQ format, calibrated activations) and dynamic
//! (int8 weights, activations quantized at run time).

use std::collections::{HashMap, HashSet};

use rtserve_core::Engine;

use crate::calibrate::{calibrate, CalibrationMethod, Range};
use crate::data::Sample;
use crate::error::{OptimizeError, Result};
use crate::graph::{self, int_attribute, node, NameGenerator};
use crate::model::{self, float_values, int32_tensor, int8_tensor, uint8_tensor};
use crate::onnx::{tensor_proto::DataType, GraphProto, ModelProto, NodeProto, TensorProto};
use crate::quantize_math::{activation_params, quantize_bias, quantize_weights, ActivationType};

/// The operators static quantization wraps in QuantizeLinear/DequantizeLinear by default.
pub const DEFAULT_STATIC_OPS: &[&str] =
    &["Conv", "MatMul", "Gemm", "Add", "GlobalAveragePool", "AveragePool", "MaxPool", "Concat"];

/// Options of `quantize`.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub method: CalibrationMethod,
    /// Activations: uint8 (default) or int8.
    pub activation_type: ActivationType,
    /// Per-output-channel weight scales (default); per-tensor otherwise.
    pub per_channel: bool,
    /// 7-bit weights (±63), for CPUs without VNNI where u8×s8 products can saturate.
    pub reduce_range: bool,
    /// Node names or op types to keep in float.
    pub exclude: Vec<String>,
    /// The op types to quantize (static mode).
    pub op_types: Vec<String>,
    /// Fold a Relu or Clip(0, max) that follows a quantized node into its output range.
    pub fuse_activations: bool,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            method: CalibrationMethod::MinMax,
            activation_type: ActivationType::Uint8,
            per_channel: true,
            reduce_range: false,
            exclude: Vec::new(),
            op_types: DEFAULT_STATIC_OPS.iter().map(|s| s.to_string()).collect(),
            fuse_activations: true,
        }
    }
}

/// What a quantization did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QuantizeReport {
    /// Nodes now running on quantized inputs.
    pub nodes_quantized: usize,
    /// Activation tensors given a QuantizeLinear/DequantizeLinear pair (static) .
    pub activations_quantized: usize,
    /// Weight initializers stored as int8.
    pub weights_quantized: usize,
    /// Relu/Clip nodes folded into the range of the node before them.
    pub activations_fused: usize,
    /// Nodes kept in float by `exclude`.
    pub nodes_excluded: usize,
    /// BatchNormalization nodes folded into their Conv before planning ([`crate::fold`]; set by
    /// the caller that folded).
    pub batch_norms_folded: usize,
}

fn excluded(node: &NodeProto, exclude: &[String]) -> bool {
    exclude.iter().any(|e| *e == node.name || *e == node.op_type)
}

fn check_quantizable(model: &ModelProto) -> Result<&GraphProto> {
    let graph = model.graph.as_ref().ok_or_else(|| OptimizeError::model("the model has no graph"))?;
    graph::validate(graph)?;
    let opset = model::default_opset(model).unwrap_or(0);
    if opset < 13 {
        return Err(OptimizeError::model(format!(
            "the model imports ai.onnx opset {opset}; quantization needs opset 13 or later \
             (per-axis DequantizeLinear)"
        )));
    }
    if let Some(n) = graph.node.iter().find(|n| {
        matches!(
            n.op_type.as_str(),
            "QuantizeLinear" | "DynamicQuantizeLinear" | "QLinearConv" | "MatMulInteger"
        )
    }) {
        return Err(OptimizeError::node(n, "the model is already quantized"));
    }
    Ok(graph)
}

/// How one node's inputs are treated. Its output gets a Q/DQ pair too, unless it is a Gemm's or
/// MatMul's graph output.
struct NodePlan {
    /// Input positions that are activations (get a Q/DQ pair).
    activations: Vec<usize>,
    /// Input positions that are float weight initializers, with the per-channel axis.
    weights: Vec<(usize, Option<usize>)>,
    /// Input position of a bias to store as int32 (needs input 0 and weight 1 quantized).
    bias: Option<usize>,
    /// Whether the output's Q/DQ pair takes the scale and zero point of input 0 instead of its
    /// own range (MaxPool: runtimes then drop the pair and pool the 8-bit values directly).
    output_shares_input_range: bool,
}

impl NodePlan {
    /// Quantized activations at `activations` (and the output); no weights.
    fn activations_only(activations: Vec<usize>) -> Self {
        NodePlan { activations, weights: vec![], bias: None, output_shares_input_range: false }
    }
}

fn is_float_initializer(inits: &HashMap<String, &TensorProto>, name: &str) -> bool {
    inits.get(name).is_some_and(|t| t.data_type == DataType::Float as i32)
}

fn plan_node(node: &NodeProto, inits: &HashMap<String, &TensorProto>, per_channel: bool) -> Option<NodePlan> {
    let input = |i: usize| node.input.get(i).map(String::as_str).unwrap_or("");
    let rank = |name: &str| inits.get(name).map(|t| t.dims.len()).unwrap_or(0);
    let axis = |a: usize| if per_channel { Some(a) } else { None };
    match node.op_type.as_str() {
        "Conv" if is_float_initializer(inits, input(1)) && !inits.contains_key(input(0)) => Some(NodePlan {
            weights: vec![(1, axis(0))],
            bias: (is_float_initializer(inits, input(2)) && rank(input(2)) == 1).then_some(2),
            ..NodePlan::activations_only(vec![0])
        }),
        "MatMul" => {
            let (a, b) = (input(0), input(1));
            if inits.contains_key(a) {
                return None;
            }
            if is_float_initializer(inits, b) {
                let ax = if rank(b) == 2 { axis(1) } else { None };
                Some(NodePlan { weights: vec![(1, ax)], ..NodePlan::activations_only(vec![0]) })
            } else if inits.contains_key(b) {
                None
            } else {
                Some(NodePlan::activations_only(vec![0, 1]))
            }
        }
        "Gemm" => {
            let (a, b, c) = (input(0), input(1), input(2));
            if inits.contains_key(a) || !is_float_initializer(inits, b) || rank(b) != 2 {
                return None;
            }
            let trans_b = graph::int_attr(node, "transB", 0) != 0;
            let unit =
                graph::float_attr(node, "alpha", 1.0) == 1.0 && graph::float_attr(node, "beta", 1.0) == 1.0;
            let bias = (unit && is_float_initializer(inits, c) && rank(c) == 1).then_some(2);
            Some(NodePlan {
                weights: vec![(1, axis(if trans_b { 0 } else { 1 }))],
                bias,
                ..NodePlan::activations_only(vec![0])
            })
        }
        "Add" if !inits.contains_key(input(0)) && !inits.contains_key(input(1)) => {
            Some(NodePlan::activations_only(vec![0, 1]))
        }
        "GlobalAveragePool" | "AveragePool" => Some(NodePlan::activations_only(vec![0])),
        "MaxPool" if node.output.len() == 1 && !inits.contains_key(input(0)) => {
            Some(NodePlan { output_shares_input_range: true, ..NodePlan::activations_only(vec![0]) })
        }
        "Concat"
            if !node.input.is_empty()
                && node.input.iter().all(|i| !i.is_empty() && !inits.contains_key(i)) =>
        {
            Some(NodePlan::activations_only((0..node.input.len()).collect()))
        }
        _ => None,
    }
}

/// Whether `node` is a Relu, or a Clip whose lower bound is 0 (so that a uint8 range starting at
/// 0 reproduces it).
fn is_foldable_activation(node: &NodeProto, inits: &HashMap<String, &TensorProto>) -> bool {
    match node.op_type.as_str() {
        "Relu" => true,
        "Clip" => {
            let min = match node.input.get(1).filter(|s| !s.is_empty()) {
                Some(name) => {
                    inits.get(name).and_then(|t| float_values(t).ok()).and_then(|v| v.first().copied())
                }
                None => graph::attribute(node, "min").map(|a| a.f),
            };
            min == Some(0.0)
        }
        _ => false,
    }
}

/// Static quantization: calibrates activation ranges on `samples` with `engine`, then inserts
/// QuantizeLinear/DequantizeLinear pairs on the activations of the chosen operators and stores
/// their weights as int8 (biases as int32), so that runtimes fuse them into integer kernels.
pub fn quantize_static(
    model: &ModelProto,
    samples: &[Sample],
    engine: &dyn Engine,
    options: &QuantizeOptions,
    progress: &dyn Fn(),
) -> Result<(ModelProto, QuantizeReport)> {
    let plan = plan_static(model, options)?;
    let ranges = calibrate(model, plan.activations(), samples, engine, options.method, progress)?;
    write_static(model, &plan, &ranges, options)
}

/// Where static quantization puts its Q/DQ pairs in a model: the nodes quantized and how, the
/// Relu/Clip folded into them, the activations that get a pair and the weights stored as int8.
/// Quantization-aware training fake-quantizes the same tensors.
pub struct StaticPlan {
    nodes: HashMap<usize, NodePlan>,
    removed: HashSet<usize>,
    renamed_output: HashMap<usize, String>,
    activations: Vec<String>,
    weights: Vec<(String, Option<usize>)>,
    shared_ranges: Vec<(String, String)>,
    report: QuantizeReport,
}

impl StaticPlan {
    /// The activation tensors that get a Q/DQ pair, in graph order.
    pub fn activations(&self) -> &[String] {
        &self.activations
    }

    /// The weight initializers stored as int8, each with its per-channel axis (`None`: one
    /// scale for the tensor).
    pub fn weights(&self) -> &[(String, Option<usize>)] {
        &self.weights
    }

    /// `(output, input)` pairs whose output takes the input's range (MaxPool).
    pub fn shared_ranges(&self) -> &[(String, String)] {
        &self.shared_ranges
    }
}

/// Plans static quantization of `model` (nothing calibrated, nothing written yet).
pub fn plan_static(model: &ModelProto, options: &QuantizeOptions) -> Result<StaticPlan> {
    let graph = check_quantizable(model)?;
    let inits = graph::initializers(graph);
    let consumers = graph::consumers(graph);
    let graph_outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let float_inputs: HashSet<&str> = graph
        .input
        .iter()
        .filter(|i| model::elem_type(i).is_none_or(|t| t == DataType::Float as i32))
        .map(|i| i.name.as_str())
        .collect();
    let mut report = QuantizeReport::default();

    // 1. Which nodes, how, and which Relu/Clip fold into them.
    let mut plans: HashMap<usize, NodePlan> = HashMap::new();
    let mut removed: HashSet<usize> = HashSet::new();
    let mut renamed_output: HashMap<usize, String> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        if !options.op_types.contains(&n.op_type) {
            continue;
        }
        if excluded(n, &options.exclude) {
            report.nodes_excluded += 1;
            continue;
        }
        let Some(plan) = plan_node(n, &inits, options.per_channel) else { continue };
        if plan.activations.iter().any(|&a| {
            let name = n.input[a].as_str();
            graph.input.iter().any(|g| g.name == name) && !float_inputs.contains(name)
        }) {
            continue;
        }
        if options.fuse_activations
            && options.activation_type == ActivationType::Uint8
            && n.output.len() == 1
            && !plan.output_shares_input_range
        {
            let out = &n.output[0];
            if let Some([j]) = consumers.get(out).map(Vec::as_slice) {
                let next = &graph.node[*j];
                // Not into a graph output: a Gemm or MatMul leaves that float (below), which
                // would drop the clamp.
                if !graph_outputs.contains(out.as_str())
                    && is_foldable_activation(next, &inits)
                    && !excluded(next, &options.exclude)
                    && next.output.len() == 1
                    && next.output.first().is_some_and(|o| !graph_outputs.contains(o.as_str()))
                {
                    removed.insert(*j);
                    renamed_output.insert(i, next.output[0].clone());
                    report.activations_fused += 1;
                }
            }
        }
        plans.insert(i, plan);
    }
    report.nodes_quantized = plans.len();

    // 2. The activation tensors to calibrate.
    let mut tensors: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut add = |name: &str| {
        if seen.insert(name.to_string()) {
            tensors.push(name.to_string());
        }
    };
    let mut by_index: Vec<_> = plans.iter().collect();
    by_index.sort_by_key(|(i, _)| **i);
    for (&i, plan) in &by_index {
        let n = &graph.node[i];
        for &a in &plan.activations {
            add(&n.input[a]);
        }
        // A Gemm or MatMul whose output is the graph's keeps it float: runtimes fuse
        // DequantizeLinear → Gemm/MatMul with a float output into an integer kernel, and a Q/DQ
        // pair there would only lose precision (the logits' top-1 on EfficientNet-Lite0).
        let output = renamed_output.get(&i).unwrap_or(&n.output[0]);
        if !(graph_outputs.contains(output.as_str()) && matches!(n.op_type.as_str(), "Gemm" | "MatMul")) {
            add(output);
        }
    }
    if tensors.is_empty() {
        return Err(OptimizeError::model(format!(
            "no node to quantize: none of the op types {:?} with float weights was found (or all are excluded)",
            options.op_types
        )));
    }
    let mut weights: Vec<(String, Option<usize>)> = Vec::new();
    let mut shared_ranges = Vec::new();
    for (&i, plan) in &by_index {
        let n = &graph.node[i];
        for &(w, axis) in &plan.weights {
            let key = (n.input[w].clone(), axis);
            if !weights.contains(&key) {
                weights.push(key);
            }
        }
        if plan.output_shares_input_range {
            shared_ranges.push((n.output[0].clone(), n.input[0].clone()));
        }
    }
    Ok(StaticPlan {
        nodes: plans,
        removed,
        renamed_output,
        activations: tensors,
        weights,
        shared_ranges,
        report,
    })
}

/// Writes the QDQ model of `plan` with the activation `ranges` (by tensor name; a missing
/// range quantizes over [0, 0]), its weights quantized from their values in `model`.
pub fn write_static(
    model: &ModelProto,
    plan: &StaticPlan,
    ranges: &HashMap<String, Range>,
    options: &QuantizeOptions,
) -> Result<(ModelProto, QuantizeReport)> {
    let graph = check_quantizable(model)?;
    let inits = graph::initializers(graph);
    let graph_outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let StaticPlan { nodes: plans, removed, renamed_output, activations: tensors, .. } = plan;
    let mut report = plan.report.clone();
    let mut ranges = ranges.clone();
    for (output, input) in &plan.shared_ranges {
        if let Some(&range) = ranges.get(input) {
            ranges.insert(output.clone(), range);
        }
    }

    let mut out_model = model.clone();
    let out_graph = out_model.graph.as_mut().ok_or_else(|| OptimizeError::model("the model has no graph"))?;
    let mut names = NameGenerator::new(graph);
    let mut new_inits: Vec<TensorProto> = Vec::new();
    let mut dequantized: HashMap<String, String> = HashMap::new();
    let mut scales: HashMap<String, f32> = HashMap::new();
    let mut qdq_after: HashMap<String, Vec<NodeProto>> = HashMap::new();
    // Any other quantized graph output keeps its name on the DequantizeLinear and its producer
    // writes a new name, so that no float copy has to survive beside the quantized one (which
    // would stop runtimes from fusing the producer, a Conv say, into an integer kernel).
    let mut float_output: HashMap<String, String> = HashMap::new();
    let graph_inputs: HashSet<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
    for name in tensors {
        let range = ranges.get(name).copied().unwrap_or(Range { min: 0.0, max: 0.0 });
        let (scale, zp) = activation_params(range.min, range.max, options.activation_type);
        let scale_name = names.fresh(&format!("{name}_scale"));
        let zp_name = names.fresh(&format!("{name}_zero_point"));
        let q_name = names.fresh(&format!("{name}_quantized"));
        let (quantized_from, dq_name) =
            if graph_outputs.contains(name.as_str()) && !graph_inputs.contains(name.as_str()) {
                let float = names.fresh(&format!("{name}_float"));
                float_output.insert(name.clone(), float.clone());
                (float, name.clone())
            } else {
                (name.clone(), names.fresh(&format!("{name}_dequantized")))
            };
        new_inits.push(model::float_tensor(&scale_name, &[], &[scale]));
        new_inits.push(match options.activation_type {
            ActivationType::Uint8 => uint8_tensor(&zp_name, &[], &[zp as u8]),
            ActivationType::Int8 => int8_tensor(&zp_name, &[], &[zp as i8]),
        });
        let q = node(
            "QuantizeLinear",
            &names.fresh(&format!("{name}_QuantizeLinear")),
            &[&quantized_from, &scale_name, &zp_name],
            &[&q_name],
        );
        let dq = node(
            "DequantizeLinear",
            &names.fresh(&format!("{name}_DequantizeLinear")),
            &[&q_name, &scale_name, &zp_name],
            &[&dq_name],
        );
        qdq_after.insert(name.clone(), vec![q, dq]);
        dequantized.insert(name.clone(), dq_name);
        scales.insert(name.clone(), scale);
        report.activations_quantized += 1;
    }

    let qmax = if options.reduce_range { 63 } else { 127 };
    let mut weight_cache: HashMap<(String, Option<usize>), (String, Vec<f32>)> = HashMap::new();
    let mut replaced_weights: HashSet<String> = HashSet::new();
    let mut new_nodes: Vec<NodeProto> = Vec::new();
    for input in &graph.input {
        if let Some(pair) = qdq_after.remove(&input.name) {
            new_nodes.extend(pair);
        }
    }
    for (i, original) in graph.node.iter().enumerate() {
        if removed.contains(&i) {
            continue;
        }
        let mut n = original.clone();
        if let Some(out) = renamed_output.get(&i) {
            n.output[0] = out.clone();
        }
        let mut weight_scales: Option<Vec<f32>> = None;
        if let Some(plan) = plans.get(&i) {
            for &(w, axis) in &plan.weights {
                let wname = n.input[w].clone();
                let key = (wname.clone(), axis);
                if !weight_cache.contains_key(&key) {
                    let tensor = inits.get(&wname).ok_or_else(|| {
                        OptimizeError::node(original, format!("weight '{wname}' is not an initializer"))
                    })?;
                    let values =
                        float_values(tensor).map_err(|e| OptimizeError::node(original, e.to_string()))?;
                    let q = quantize_weights(&values, &tensor.dims, axis, qmax);
                    let q_name = names.fresh(&format!("{wname}_quantized"));
                    let s_name = names.fresh(&format!("{wname}_scale"));
                    let zp_name = names.fresh(&format!("{wname}_zero_point"));
                    let dq_name = names.fresh(&format!("{wname}_dequantized"));
                    let channels = q.scales.len() as i64;
                    let sdims: Vec<i64> = if axis.is_some() { vec![channels] } else { vec![] };
                    new_inits.push(int8_tensor(&q_name, &tensor.dims, &q.values));
                    new_inits.push(model::float_tensor(&s_name, &sdims, &q.scales));
                    new_inits.push(int8_tensor(&zp_name, &sdims, &vec![0i8; q.scales.len()]));
                    let mut dq = node(
                        "DequantizeLinear",
                        &names.fresh(&format!("{wname}_DequantizeLinear")),
                        &[&q_name, &s_name, &zp_name],
                        &[&dq_name],
                    );
                    if let Some(a) = axis {
                        dq.attribute.push(int_attribute("axis", a as i64));
                    }
                    new_nodes.push(dq);
                    weight_cache.insert(key.clone(), (dq_name, q.scales));
                    replaced_weights.insert(wname.clone());
                    report.weights_quantized += 1;
                }
                let (dq_name, s) = &weight_cache[&key];
                n.input[w] = dq_name.clone();
                weight_scales = Some(s.clone());
            }
            if let (Some(b), Some(ws)) = (plan.bias, weight_scales.as_ref()) {
                let bname = n.input[b].clone();
                if let (Some(&in_scale), Some(tensor)) = (scales.get(&original.input[0]), inits.get(&bname)) {
                    let values =
                        float_values(tensor).map_err(|e| OptimizeError::node(original, e.to_string()))?;
                    if ws.len() == 1 || ws.len() == values.len() {
                        let (q, s) = quantize_bias(&values, in_scale, ws);
                        let q_name = names.fresh(&format!("{bname}_quantized"));
                        let s_name = names.fresh(&format!("{bname}_scale"));
                        let zp_name = names.fresh(&format!("{bname}_zero_point"));
                        let dq_name = names.fresh(&format!("{bname}_dequantized"));
                        let sdims: Vec<i64> = if s.len() > 1 { vec![s.len() as i64] } else { vec![] };
                        new_inits.push(int32_tensor(&q_name, &tensor.dims, &q));
                        new_inits.push(model::float_tensor(&s_name, &sdims, &s));
                        new_inits.push(int32_tensor(&zp_name, &sdims, &vec![0; s.len()]));
                        let mut dq = node(
                            "DequantizeLinear",
                            &names.fresh(&format!("{bname}_DequantizeLinear")),
                            &[&q_name, &s_name, &zp_name],
                            &[&dq_name],
                        );
                        if s.len() > 1 {
                            dq.attribute.push(int_attribute("axis", 0));
                        }
                        new_nodes.push(dq);
                        replaced_weights.insert(bname.clone());
                        n.input[b] = dq_name;
                    }
                }
            }
        }
        for input in n.input.iter_mut() {
            if let Some(dq) = dequantized.get(input.as_str()) {
                *input = dq.clone();
            }
        }
        let outputs = n.output.clone();
        for out in n.output.iter_mut() {
            if let Some(float) = float_output.get(out.as_str()) {
                *out = float.clone();
            }
        }
        new_nodes.push(n);
        for out in &outputs {
            if let Some(pair) = qdq_after.remove(out) {
                new_nodes.extend(pair);
            }
        }
    }
    // Float initializers still read by a node stay; the ones only the quantized copies replace go.
    let still_read: HashSet<&str> =
        new_nodes.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
    // So do the Clip bounds of folded Clips.
    let read_by_removed: HashSet<&str> =
        removed.iter().flat_map(|&j| graph.node[j].input.iter().map(String::as_str)).collect();
    out_graph.initializer.retain(|t| {
        let dropped = replaced_weights.contains(&t.name) || read_by_removed.contains(t.name.as_str());
        !dropped || still_read.contains(t.name.as_str()) || graph_outputs.contains(t.name.as_str())
    });
    out_graph.initializer.extend(new_inits);
    out_graph.node = new_nodes;
    let removed_outputs: HashSet<&str> =
        removed.iter().flat_map(|&j| graph.node[j].input.iter().map(String::as_str)).collect();
    out_graph.value_info.retain(|v| !removed_outputs.contains(v.name.as_str()));
    Ok((out_model, report))
}

/// Dynamic quantization: MatMul and Gemm with a 2-D float weight become
/// DynamicQuantizeLinear → MatMulInteger (uint8 × int8) → Cast → Mul by the two scales (→ Add
/// bias), the pattern ONNX Runtime fuses into one dynamically quantized MatMul. No calibration.
pub fn quantize_dynamic(
    model: &ModelProto,
    options: &QuantizeOptions,
) -> Result<(ModelProto, QuantizeReport)> {
    let graph = check_quantizable(model)?;
    if model::default_opset(model).unwrap_or(0) < 11 {
        return Err(OptimizeError::model("dynamic quantization needs opset 11 or later"));
    }
    let inits = graph::initializers(graph);
    let mut names = NameGenerator::new(graph);
    let mut report = QuantizeReport::default();
    let mut new_nodes = Vec::new();
    let mut new_inits = Vec::new();
    let mut replaced: HashSet<String> = HashSet::new();
    let qmax = if options.reduce_range { 63 } else { 127 };
    for original in &graph.node {
        let is_target = matches!(original.op_type.as_str(), "MatMul" | "Gemm");
        if is_target && excluded(original, &options.exclude) {
            report.nodes_excluded += 1;
        }
        let weight = original
            .input
            .get(1)
            .and_then(|b| inits.get(b))
            .filter(|t| t.data_type == DataType::Float as i32 && t.dims.len() == 2);
        let (Some(weight), true, false) = (weight, is_target, excluded(original, &options.exclude)) else {
            new_nodes.push(original.clone());
            continue;
        };
        let gemm = original.op_type == "Gemm";
        if gemm
            && (graph::int_attr(original, "transA", 0) != 0
                || graph::float_attr(original, "alpha", 1.0) != 1.0)
        {
            new_nodes.push(original.clone());
            continue;
        }
        let mut values = float_values(weight).map_err(|e| OptimizeError::node(original, e.to_string()))?;
        let mut dims = weight.dims.clone();
        if gemm && graph::int_attr(original, "transB", 0) != 0 {
            let (n, k) = (dims[0] as usize, dims[1] as usize);
            let mut t = vec![0f32; values.len()];
            for r in 0..n {
                for c in 0..k {
                    t[c * n + r] = values[r * k + c];
                }
            }
            values = t;
            dims = vec![k as i64, n as i64];
        }
        let axis = options.per_channel.then_some(1);
        let q = quantize_weights(&values, &dims, axis, qmax);
        let base = original.output[0].clone();
        let w = &original.input[1];
        let (wq, ws, wzp) = (
            names.fresh(&format!("{w}_quantized")),
            names.fresh(&format!("{w}_scale")),
            names.fresh(&format!("{w}_zero_point")),
        );
        let sdims: Vec<i64> = if axis.is_some() { vec![q.scales.len() as i64] } else { vec![] };
        new_inits.push(int8_tensor(&wq, &dims, &q.values));
        new_inits.push(model::float_tensor(&ws, &sdims, &q.scales));
        new_inits.push(int8_tensor(&wzp, &sdims, &vec![0i8; q.scales.len()]));
        replaced.insert(w.clone());
        let (aq, as_, azp) = (
            names.fresh(&format!("{base}_input_quantized")),
            names.fresh(&format!("{base}_input_scale")),
            names.fresh(&format!("{base}_input_zero_point")),
        );
        let (acc, accf, scale) = (
            names.fresh(&format!("{base}_int32")),
            names.fresh(&format!("{base}_int32_float")),
            names.fresh(&format!("{base}_output_scale")),
        );
        let label = graph::node_label(original);
        new_nodes.push(node(
            "DynamicQuantizeLinear",
            &names.fresh(&format!("{label}_DynamicQuantizeLinear")),
            &[&original.input[0]],
            &[&aq, &as_, &azp],
        ));
        new_nodes.push(node(
            "MatMulInteger",
            &names.fresh(&format!("{label}_MatMulInteger")),
            &[&aq, &wq, &azp, &wzp],
            &[&acc],
        ));
        let mut cast = node("Cast", &names.fresh(&format!("{label}_Cast")), &[&acc], &[&accf]);
        cast.attribute.push(int_attribute("to", DataType::Float as i64));
        new_nodes.push(cast);
        new_nodes.push(node("Mul", &names.fresh(&format!("{label}_scales_Mul")), &[&as_, &ws], &[&scale]));
        let bias = original.input.get(2).filter(|c| gemm && !c.is_empty());
        match bias {
            None => new_nodes.push(node(
                "Mul",
                &names.fresh(&format!("{label}_output_Mul")),
                &[&accf, &scale],
                &[&base],
            )),
            Some(c) => {
                let beta = graph::float_attr(original, "beta", 1.0);
                let c_name = if beta == 1.0 {
                    c.clone()
                } else {
                    let scaled = names.fresh(&format!("{c}_beta"));
                    let beta_name = names.fresh(&format!("{label}_beta"));
                    new_inits.push(model::float_tensor(&beta_name, &[], &[beta]));
                    new_nodes.push(node(
                        "Mul",
                        &names.fresh(&format!("{label}_beta_Mul")),
                        &[c, &beta_name],
                        &[&scaled],
                    ));
                    scaled
                };
                let mm = names.fresh(&format!("{base}_matmul"));
                new_nodes.push(node(
                    "Mul",
                    &names.fresh(&format!("{label}_output_Mul")),
                    &[&accf, &scale],
                    &[&mm],
                ));
                new_nodes.push(node(
                    "Add",
                    &names.fresh(&format!("{label}_bias_Add")),
                    &[&mm, &c_name],
                    &[&base],
                ));
            }
        }
        report.nodes_quantized += 1;
        report.weights_quantized += 1;
    }
    if report.nodes_quantized == 0 {
        return Err(OptimizeError::model(
            "no MatMul or Gemm with a 2-D float weight initializer to quantize dynamically",
        ));
    }
    let mut out_model = model.clone();
    let out_graph = out_model.graph.as_mut().ok_or_else(|| OptimizeError::model("the model has no graph"))?;
    let still_read: HashSet<&str> =
        new_nodes.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
    out_graph.initializer.retain(|t| !replaced.contains(&t.name) || still_read.contains(t.name.as_str()));
    out_graph.initializer.extend(new_inits);
    out_graph.node = new_nodes;
    Ok((out_model, report))
}
