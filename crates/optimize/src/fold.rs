//! BatchNormalization folded into the Conv before it, as runtimes do for float models: the
//! Conv's weights and bias absorb the normalisation, and the BatchNormalization node goes.
//! Quantization does this first, so that the Conv's output is quantized once, after the
//! normalisation, and the Relu after it can fold into that range (without it, the Conv's output
//! gets a Q/DQ pair of its own and BatchNormalization runs in float between two pairs).

use std::collections::{HashMap, HashSet};

use crate::error::{OptimizeError, Result};
use crate::graph::{self, NameGenerator};
use crate::model;
use crate::onnx::{GraphProto, ModelProto, NodeProto, TensorProto};

/// `model` with every foldable BatchNormalization folded into its Conv, and how many were.
///
/// Folded: an inference-mode BatchNormalization (one output) whose input is the first output of
/// a Conv read by nothing else (and not a graph output), with float initializers for the Conv's
/// weight (and bias, if any) and for the scale, B, mean and variance, one value per output
/// channel. Anything else is left as it is.
pub fn batch_norms(model: &ModelProto) -> Result<(ModelProto, usize)> {
    let mut out = model.clone();
    let Some(graph) = out.graph.as_mut() else {
        return Err(OptimizeError::model("the model has no graph"));
    };
    graph::validate(graph)?;
    let mut names = NameGenerator::new(graph);
    let mut removed: HashSet<usize> = HashSet::new();
    let mut new_inits: Vec<TensorProto> = Vec::new();
    let consumers = graph::consumers(graph);
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let producer: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.output.first().map(|o| (o.as_str(), i)))
        .collect();
    let mut rewrites: Vec<(usize, usize, Folded)> = Vec::new();
    {
        let inits = graph::initializers(graph);
        for (b, bn) in graph.node.iter().enumerate() {
            if bn.op_type != "BatchNormalization" || bn.output.iter().skip(1).any(|o| !o.is_empty()) {
                continue;
            }
            let x = bn.input.first().map(String::as_str).unwrap_or("");
            let Some(&c) = producer.get(x) else { continue };
            let conv = &graph.node[c];
            let single_reader = consumers.get(x).is_some_and(|readers| readers.len() == 1);
            if conv.op_type != "Conv" || !single_reader || outputs.contains(x) {
                continue;
            }
            if let Some(folded) = fold(conv, bn, &inits)? {
                rewrites.push((c, b, folded));
            }
        }
    }
    let count = rewrites.len();
    // The initializers the folded nodes read: dropped below where nothing reads them any more.
    let replaced: HashSet<String> = rewrites
        .iter()
        .flat_map(|&(c, b, _)| graph.node[c].input.iter().skip(1).chain(graph.node[b].input.iter().skip(1)))
        .cloned()
        .collect();
    for (c, b, folded) in rewrites {
        let bn_output = graph.node[b].output[0].clone();
        let conv = &mut graph.node[c];
        let weight = names.fresh(&format!("{}_bn_folded", conv.input[1]));
        let bias = names.fresh(&format!("{}_bias_bn_folded", node_base(conv)));
        new_inits.push(model::float_tensor(&weight, &folded.weight_dims, &folded.weight));
        new_inits.push(model::float_tensor(&bias, &[folded.bias.len() as i64], &folded.bias));
        conv.input.resize(3, String::new());
        conv.input[1] = weight;
        conv.input[2] = bias;
        let conv_output = std::mem::replace(&mut conv.output[0], bn_output);
        graph.value_info.retain(|v| v.name != conv_output);
        removed.insert(b);
    }
    let nodes = std::mem::take(&mut graph.node);
    graph.node =
        nodes.into_iter().enumerate().filter(|(i, _)| !removed.contains(i)).map(|(_, n)| n).collect();
    graph.initializer.extend(new_inits);
    drop_unread(graph, &replaced);
    Ok((out, count))
}

/// The folded weight and bias of one Conv.
struct Folded {
    weight: Vec<f32>,
    weight_dims: Vec<i64>,
    bias: Vec<f32>,
}

/// `W·f` and `(b − mean)·f + B` per output channel, `f = scale / √(var + ε)`; `None` when an
/// input is not a float initializer of the expected length.
fn fold(conv: &NodeProto, bn: &NodeProto, inits: &HashMap<String, &TensorProto>) -> Result<Option<Folded>> {
    let float = |name: Option<&String>| -> Result<Option<Vec<f32>>> {
        match name.filter(|n| !n.is_empty()).and_then(|n| inits.get(n)) {
            Some(t) if t.data_type == crate::onnx::tensor_proto::DataType::Float as i32 => {
                Ok(Some(model::float_values(t)?))
            }
            _ => Ok(None),
        }
    };
    let Some(weight) = float(conv.input.get(1))? else { return Ok(None) };
    let Some(w) = inits.get(&conv.input[1]) else { return Ok(None) };
    let channels = match w.dims.first() {
        Some(&m) if m > 0 && w.dims.len() >= 3 => m as usize,
        _ => return Ok(None),
    };
    let params: Option<Vec<Vec<f32>>> = (1..5).map(|i| float(bn.input.get(i))).collect::<Result<_>>()?;
    let Some(params) = params else { return Ok(None) };
    if params.iter().any(|p| p.len() != channels) {
        return Ok(None);
    }
    let bias = match conv.input.get(2).filter(|n| !n.is_empty()) {
        Some(name) => match float(Some(name))? {
            Some(b) if b.len() == channels => b,
            _ => return Ok(None),
        },
        None => vec![0.0; channels],
    };
    let epsilon = f64::from(graph::float_attr(bn, "epsilon", 1e-5));
    let (scale, shift, mean, var) = (&params[0], &params[1], &params[2], &params[3]);
    let factor: Vec<f64> =
        (0..channels).map(|m| f64::from(scale[m]) / (f64::from(var[m]) + epsilon).sqrt()).collect();
    let per_channel = weight.len() / channels;
    let weight =
        weight.iter().enumerate().map(|(i, &v)| (f64::from(v) * factor[i / per_channel]) as f32).collect();
    let bias = (0..channels)
        .map(|m| ((f64::from(bias[m]) - f64::from(mean[m])) * factor[m] + f64::from(shift[m])) as f32)
        .collect();
    Ok(Some(Folded { weight, weight_dims: w.dims.clone(), bias }))
}

/// The node's name, or its first output when it has none (for naming new initializers).
fn node_base(node: &NodeProto) -> String {
    if node.name.is_empty() {
        node.output.first().cloned().unwrap_or_default()
    } else {
        node.name.clone()
    }
}

/// Removes the `replaced` initializers that no node reads any more and that are not graph
/// inputs or outputs; every other initializer stays, as `quantize` leaves them.
fn drop_unread(graph: &mut GraphProto, replaced: &HashSet<String>) {
    let read: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .chain(graph.input.iter().chain(&graph.output).map(|v| v.name.as_str()))
        .collect();
    let unread: HashSet<String> = replaced.iter().filter(|n| !read.contains(n.as_str())).cloned().collect();
    graph.initializer.retain(|t| !unread.contains(&t.name));
}
