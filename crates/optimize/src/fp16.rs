//! FP16 conversion: float weights and compute to float16, with Cast nodes where a tensor crosses
//! between float16 and float32 (graph inputs and outputs by default, and ops kept in float32).

use std::collections::{HashMap, HashSet};

use crate::error::{OptimizeError, Result};
use crate::graph::{self, int_attribute, node, NameGenerator};
use crate::model::{self, float_values};
use crate::onnx::{
    attribute_proto::AttributeType, tensor_proto::DataType, ModelProto, NodeProto, TensorProto,
};

/// Ops known to compute in the type of their float inputs; only these are converted.
const CONVERTIBLE: &[&str] = &[
    "Abs",
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Conv",
    "ConvTranspose",
    "Div",
    "Dropout",
    "Elu",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Gather",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "InstanceNormalization",
    "LayerNormalization",
    "LeakyRelu",
    "Log",
    "LogSoftmax",
    "MatMul",
    "Max",
    "MaxPool",
    "Mean",
    "Min",
    "Mul",
    "Neg",
    "Pad",
    "Pow",
    "PRelu",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Selu",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Softplus",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "Tile",
    "Transpose",
    "Unsqueeze",
    "Where",
];

/// Ops kept in float32 by default: their results overflow or lose too much in float16.
pub const DEFAULT_KEEP_FP32: &[&str] = &[
    "Exp",
    "Log",
    "Pow",
    "Range",
    "ReduceL2",
    "ReduceLogSumExp",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "Resize",
    "Softplus",
    "CumSum",
    "TopK",
    "NonMaxSuppression",
    "RoiAlign",
];

/// Ops whose outputs are never float whatever their inputs.
const NON_FLOAT_OUTPUT: &[&str] = &[
    "Shape",
    "Size",
    "ArgMax",
    "ArgMin",
    "NonZero",
    "Equal",
    "Less",
    "LessOrEqual",
    "Greater",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
    "Not",
    "IsNaN",
    "IsInf",
];

/// Options of [`convert_fp16`].
#[derive(Debug, Clone)]
pub struct Fp16Options {
    /// Keep graph inputs and outputs float32, with Casts at the edges (default).
    pub keep_io_types: bool,
    /// Op types and node names kept in float32 behind Casts.
    pub keep_fp32: Vec<String>,
}

impl Default for Fp16Options {
    fn default() -> Self {
        Fp16Options {
            keep_io_types: true,
            keep_fp32: DEFAULT_KEEP_FP32.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// What a conversion did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Fp16Report {
    pub nodes_converted: usize,
    pub nodes_kept_fp32: usize,
    pub initializers_converted: usize,
    pub casts_inserted: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Precision {
    F32,
    F16,
}

fn float_tensor_attr(node: &NodeProto) -> bool {
    graph::attribute(node, "value")
        .and_then(|a| a.t.as_ref())
        .is_some_and(|t| t.data_type == DataType::Float as i32)
}

/// The float tensors of the graph: float inputs, initializers and value infos, then the outputs
/// of nodes that keep a float input's type.
fn float_tensors(g: &crate::onnx::GraphProto) -> HashSet<String> {
    let f = DataType::Float as i32;
    let mut float: HashSet<String> = HashSet::new();
    let mut typed: HashMap<&str, i32> = HashMap::new();
    for v in g.input.iter().chain(&g.output).chain(&g.value_info) {
        if let Some(t) = model::elem_type(v) {
            typed.insert(v.name.as_str(), t);
        }
    }
    float.extend(g.initializer.iter().filter(|t| t.data_type == f).map(|t| t.name.clone()));
    float.extend(g.input.iter().filter(|v| model::elem_type(v) == Some(f)).map(|v| v.name.clone()));
    for n in &g.node {
        let any_float_input = n.input.iter().any(|i| float.contains(i));
        let out_float = match n.op_type.as_str() {
            "Cast" => graph::int_attr(n, "to", 0) == f as i64,
            "Constant" => float_tensor_attr(n),
            "ConstantOfShape" => float_tensor_attr(n) || graph::attribute(n, "value").is_none(),
            op if NON_FLOAT_OUTPUT.contains(&op) => false,
            _ => any_float_input,
        };
        for (k, o) in n.output.iter().enumerate() {
            let known = typed.get(o.as_str()).map(|t| *t == f);
            // TopK, MaxPool, Dropout...: only the first output follows the input type.
            let first_only = matches!(n.op_type.as_str(), "TopK" | "MaxPool" | "Dropout") && k > 0;
            if known.unwrap_or(out_float && !first_only) && !o.is_empty() {
                float.insert(o.clone());
            }
        }
    }
    float
}

/// Converts a float32 model to float16. Graph inputs and outputs stay float32 unless
/// `keep_io_types` is off.
pub fn convert_fp16(model: &ModelProto, options: &Fp16Options) -> Result<(ModelProto, Fp16Report)> {
    let g = model.graph.as_ref().ok_or_else(|| OptimizeError::model("the model has no graph"))?;
    graph::validate(g)?;
    if let Some(n) = g.node.iter().find(|n| {
        n.attribute
            .iter()
            .any(|a| a.r#type == AttributeType::Graph as i32 || a.g.is_some() || !a.graphs.is_empty())
    }) {
        return Err(OptimizeError::node(
            n,
            "nodes with subgraphs (If, Loop, Scan) are not supported by fp16 conversion",
        ));
    }
    if let Some(n) = g.node.iter().find(|n| n.op_type.contains("Quantize") || n.op_type.contains("Integer")) {
        return Err(OptimizeError::node(
            n,
            "the model is quantized; convert the float model to fp16 instead",
        ));
    }
    let float = float_tensors(g);
    let keep = |n: &NodeProto| options.keep_fp32.iter().any(|k| *k == n.op_type || *k == n.name);
    let converted: Vec<bool> = g
        .node
        .iter()
        .map(|n| {
            !keep(n)
                && (CONVERTIBLE.contains(&n.op_type.as_str())
                    || (n.op_type == "Cast" && graph::int_attr(n, "to", 0) == DataType::Float as i64)
                    || (n.op_type == "Constant" && float_tensor_attr(n)))
        })
        .collect();
    let consumers = graph::consumers(g);
    let mut names = NameGenerator::new(g);
    let mut report = Fp16Report::default();
    let mut versions: HashMap<String, HashMap<Precision, String>> = HashMap::new();
    let graph_outputs: HashSet<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
    let io_precision = if options.keep_io_types { Precision::F32 } else { Precision::F16 };

    let mut out_model = model.clone();
    let og = out_model.graph.as_mut().ok_or_else(|| OptimizeError::model("the model has no graph"))?;
    for init in og.initializer.iter_mut().filter(|t| t.data_type == DataType::Float as i32) {
        let all_fp16 = consumers.get(&init.name).is_some_and(|c| c.iter().all(|&i| converted[i]));
        if all_fp16 && !graph_outputs.contains(init.name.as_str()) {
            let values = float_values(init)?;
            *init = TensorProto {
                doc_string: init.doc_string.clone(),
                ..model::float16_tensor(&init.name, &init.dims, &values)
            };
            versions.insert(init.name.clone(), HashMap::from([(Precision::F16, init.name.clone())]));
            report.initializers_converted += 1;
        } else {
            versions.insert(init.name.clone(), HashMap::from([(Precision::F32, init.name.clone())]));
        }
    }
    for input in og.input.iter_mut() {
        if !float.contains(&input.name) || versions.contains_key(&input.name) {
            continue;
        }
        if io_precision == Precision::F16 {
            model::set_elem_type(input, DataType::Float16);
        }
        versions.insert(input.name.clone(), HashMap::from([(io_precision, input.name.clone())]));
    }

    let mut nodes: Vec<NodeProto> = Vec::new();
    let cast =
        |nodes: &mut Vec<NodeProto>, names: &mut NameGenerator, from: &str, to: &str, prec: Precision| {
            let suffix = if prec == Precision::F16 { "to_fp16" } else { "to_fp32" };
            let mut c = node("Cast", &names.fresh(&format!("{from}_{suffix}")), &[from], &[to]);
            let t = if prec == Precision::F16 { DataType::Float16 } else { DataType::Float };
            c.attribute.push(int_attribute("to", t as i64));
            nodes.push(c);
        };
    for (i, original) in g.node.iter().enumerate() {
        let mut n = original.clone();
        let want = if converted[i] { Precision::F16 } else { Precision::F32 };
        for input in n.input.iter_mut().filter(|s| !s.is_empty()) {
            let Some(v) = versions.get_mut(input.as_str()) else { continue };
            if let Some(name) = v.get(&want) {
                *input = name.clone();
                continue;
            }
            let Some(source) = v.values().next().cloned() else { continue };
            let target =
                names.fresh(&format!("{input}_{}", if want == Precision::F16 { "fp16" } else { "fp32" }));
            cast(&mut nodes, &mut names, &source, &target, want);
            report.casts_inserted += 1;
            v.insert(want, target.clone());
            *input = target;
        }
        if converted[i] {
            report.nodes_converted += 1;
            match n.op_type.as_str() {
                "Cast" => {
                    n.attribute.retain(|a| a.name != "to");
                    n.attribute.push(int_attribute("to", DataType::Float16 as i64));
                }
                "Constant" => {
                    for a in n.attribute.iter_mut().filter(|a| a.name == "value") {
                        if let Some(t) = a.t.as_mut() {
                            let values =
                                float_values(t).map_err(|e| OptimizeError::node(original, e.to_string()))?;
                            *t = model::float16_tensor(&t.name, &t.dims, &values);
                        }
                    }
                }
                _ => {}
            }
        } else if float.iter().any(|f| original.input.contains(f) || original.output.contains(f)) {
            report.nodes_kept_fp32 += 1;
        }
        for out in n.output.iter_mut().filter(|o| float.contains(o.as_str())) {
            let original_name = out.clone();
            if graph_outputs.contains(original_name.as_str()) && want != io_precision {
                *out = names.fresh(&format!(
                    "{original_name}_{}",
                    if want == Precision::F16 { "fp16" } else { "fp32" }
                ));
            }
            versions.insert(original_name, HashMap::from([(want, out.clone())]));
        }
        nodes.push(n);
    }
    for output in og.output.iter_mut().filter(|o| float.contains(&o.name)) {
        let available = versions.get(&output.name).cloned().unwrap_or_default();
        if available.get(&io_precision) != Some(&output.name) {
            if let Some(source) = available.values().next() {
                cast(&mut nodes, &mut names, source, &output.name, io_precision);
                report.casts_inserted += 1;
            }
        }
        if io_precision == Precision::F16 {
            model::set_elem_type(output, DataType::Float16);
        }
    }
    og.node = nodes;
    for info in og.value_info.iter_mut() {
        if versions.get(&info.name).is_some_and(|v| v.get(&Precision::F16) == Some(&info.name)) {
            model::set_elem_type(info, DataType::Float16);
        }
    }
    Ok((out_model, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{float_tensor, tensor_value_info};
    use crate::onnx::{GraphProto, OperatorSetIdProto};

    fn tiny() -> ModelProto {
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
            graph: Some(GraphProto {
                node: vec![
                    node("MatMul", "mm", &["x", "w"], &["h"]),
                    node("Exp", "exp", &["h"], &["e"]),
                    node("Relu", "relu", &["e"], &["y"]),
                ],
                input: vec![tensor_value_info("x", DataType::Float)],
                output: vec![tensor_value_info("y", DataType::Float)],
                initializer: vec![float_tensor("w", &[2, 2], &[1.0, 2.0, 3.0, 4.0])],
                ..GraphProto::default()
            }),
            ..ModelProto::default()
        }
    }

    fn ops(m: &ModelProto) -> Vec<String> {
        m.graph.as_ref().map(|g| g.node.iter().map(|n| n.op_type.clone()).collect()).unwrap_or_default()
    }

    #[test]
    fn casts_at_the_edges_and_around_kept_ops() {
        let (m, report) = convert_fp16(&tiny(), &Fp16Options::default()).expect("convert");
        // x→fp16, MatMul, h→fp32, Exp (kept), e→fp16, Relu, y_fp16→y (fp32).
        assert_eq!(ops(&m), ["Cast", "MatMul", "Cast", "Exp", "Cast", "Relu", "Cast"]);
        assert_eq!(report.nodes_converted, 2);
        assert_eq!(report.nodes_kept_fp32, 1);
        assert_eq!(report.casts_inserted, 4);
        let g = m.graph.as_ref().expect("graph");
        assert_eq!(g.initializer[0].data_type, DataType::Float16 as i32);
        assert_eq!(model::elem_type(&g.input[0]), Some(DataType::Float as i32));
        assert_eq!(g.node.last().map(|n| n.output[0].as_str()), Some("y"));
        graph::validate(g).expect("still valid");
    }

    #[test]
    fn io_types_can_become_fp16() {
        let options = Fp16Options { keep_io_types: false, keep_fp32: vec![] };
        let (m, report) = convert_fp16(&tiny(), &options).expect("convert");
        assert_eq!(ops(&m), ["MatMul", "Exp", "Relu"]);
        assert_eq!(report.casts_inserted, 0);
        let g = m.graph.as_ref().expect("graph");
        assert_eq!(model::elem_type(&g.input[0]), Some(DataType::Float16 as i32));
        assert_eq!(model::elem_type(&g.output[0]), Some(DataType::Float16 as i32));
    }
}
