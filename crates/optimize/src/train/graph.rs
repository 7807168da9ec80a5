//! A trainable view of an ONNX graph: float initializers become candle variables, nodes become
//! parsed operators run in order, and the trained values are written back into the same graph.
//! A [`Tap`] may rewrite values as the forward pass produces them (fake quantization).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::Rng;

use super::kernels;
use super::ops::{self, Op};
use crate::error::{OptimizeError, Result};
use crate::graph::validate;
use crate::model::{float_tensor, float_values, int64_values};
use crate::onnx::{tensor_proto::DataType as OnnxType, ModelProto, NodeProto, TensorProto};

/// What a float initializer is to the trainer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// Learned by gradient descent (weights, biases, BatchNorm scale and shift).
    Trainable,
    /// BatchNorm running mean or variance: updated from batch statistics, not by gradients.
    RunningStat,
    /// A constant operand (Clip bounds...): never changed.
    Constant,
    /// A quantization range learned beside the weights ([`TrainGraph::add_range`]): trained,
    /// kept with the best checkpoint, never written into the model.
    Range,
}

/// Rewrites values as the forward pass produces them: graph inputs, parameters and node
/// outputs, by tensor name. Quantization-aware training fake-quantizes through one.
pub trait Tap: std::fmt::Debug + Send + Sync {
    /// The value the graph goes on with in place of `value`, the tensor called `name`.
    fn value(&self, name: &str, value: Tensor) -> Result<Tensor>;
}

/// One float initializer of the graph.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub dims: Vec<i64>,
    pub kind: ParamKind,
    pub var: Var,
}

/// Whether the forward pass trains (batch statistics, dropout) or infers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// One running-statistics update produced by a training forward pass.
#[derive(Debug, Clone)]
pub struct RunningUpdate {
    pub mean: usize,
    pub var: usize,
    pub momentum: f64,
    pub batch_mean: Tensor,
    pub batch_var: Tensor,
}

/// The result of a forward pass.
pub struct Forward {
    /// Every value the pass computed, by tensor name (graph outputs among them).
    pub values: HashMap<String, Tensor>,
    pub running: Vec<RunningUpdate>,
}

#[derive(Debug, Clone)]
struct Node {
    proto_index: usize,
    op: Op,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// An ONNX model ready to train.
#[derive(Debug, Clone)]
pub struct TrainGraph {
    model: ModelProto,
    nodes: Vec<Node>,
    params: Vec<Param>,
    by_name: HashMap<String, usize>,
    ints: HashMap<String, Vec<i64>>,
    inputs: Vec<String>,
    outputs: Vec<String>,
    dtype: DType,
    tap: Option<Arc<dyn Tap>>,
}

fn kind_of(name: &str, graph_nodes: &[NodeProto]) -> ParamKind {
    let mut kind = ParamKind::Trainable;
    for node in graph_nodes {
        for (i, input) in node.input.iter().enumerate() {
            if input != name {
                continue;
            }
            match (node.op_type.as_str(), i) {
                ("BatchNormalization", 3 | 4) => return ParamKind::RunningStat,
                ("Clip", 1 | 2) | ("Reshape", 1) => kind = ParamKind::Constant,
                _ => {}
            }
        }
    }
    kind
}

impl TrainGraph {
    /// Builds the trainable view in float32. Errors name the node with an unsupported
    /// operator, and a model with no float weights.
    pub fn new(model: &ModelProto) -> Result<TrainGraph> {
        Self::with_dtype(model, DType::F32)
    }

    /// Builds the trainable view with values of `dtype` (F64 for gradient checks).
    pub fn with_dtype(model: &ModelProto, dtype: DType) -> Result<TrainGraph> {
        let graph = model.graph.as_ref().ok_or_else(|| OptimizeError::model("the model has no graph"))?;
        validate(graph)?;
        let mut nodes = Vec::new();
        let mut ints: HashMap<String, Vec<i64>> = HashMap::new();
        let mut constant_nodes: Vec<(String, TensorProto)> = Vec::new();
        for (proto_index, node) in graph.node.iter().enumerate() {
            if node.op_type == "Constant" {
                let value =
                    crate::graph::attribute(node, "value").and_then(|a| a.t.clone()).ok_or_else(|| {
                        OptimizeError::node(node, "only Constant nodes with a tensor `value` are supported")
                    })?;
                let out = node.output.first().cloned().unwrap_or_default();
                constant_nodes.push((out, value));
                continue;
            }
            nodes.push(Node {
                proto_index,
                op: Op::parse(node)?,
                inputs: node.input.clone(),
                outputs: node.output.clone(),
            });
        }
        let mut params = Vec::new();
        let mut by_name = HashMap::new();
        let sources = graph.initializer.iter().map(|t| (t.name.clone(), t.clone(), true));
        let sources = sources.chain(constant_nodes.into_iter().map(|(n, t)| (n, t, false)));
        for (name, tensor, is_initializer) in sources {
            if tensor.data_type == OnnxType::Int64 as i32 {
                ints.insert(name, int64_values(&tensor)?);
            } else if tensor.data_type == OnnxType::Float as i32 {
                let values = float_values(&tensor)?;
                let shape: Vec<usize> = tensor.dims.iter().map(|&d| d as usize).collect();
                let t = Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype)?;
                let kind = if is_initializer { kind_of(&name, &graph.node) } else { ParamKind::Constant };
                by_name.insert(name.clone(), params.len());
                params.push(Param { name, dims: tensor.dims.clone(), kind, var: Var::from_tensor(&t)? });
            }
        }
        if !params.iter().any(|p| p.kind == ParamKind::Trainable) {
            return Err(OptimizeError::model("the model has no float weights to train"));
        }
        let initializer_names: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs = graph
            .input
            .iter()
            .filter(|i| !initializer_names.contains(i.name.as_str()))
            .map(|i| i.name.clone())
            .collect();
        let outputs = graph.output.iter().map(|o| o.name.clone()).collect();
        Ok(TrainGraph {
            model: model.clone(),
            nodes,
            params,
            by_name,
            ints,
            inputs,
            outputs,
            dtype,
            tap: None,
        })
    }

    /// The graph inputs that are fed (initializers listed as inputs left out).
    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The parameter with this initializer name.
    pub fn param(&self, name: &str) -> Option<&Param> {
        self.by_name.get(name).map(|&i| &self.params[i])
    }

    /// The number of trainable values, and how many of them are not zero.
    pub fn weight_counts(&self) -> Result<(usize, usize)> {
        let (mut total, mut nonzero) = (0, 0);
        for p in self.params.iter().filter(|p| p.kind == ParamKind::Trainable) {
            let v = p.var.as_tensor().flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            total += v.len();
            nonzero += v.iter().filter(|x| **x != 0.0).count();
        }
        Ok((total, nonzero))
    }

    /// The variables that gradient descent updates (weights and learned ranges).
    pub fn trainable_vars(&self) -> Vec<Var> {
        self.params
            .iter()
            .filter(|p| matches!(p.kind, ParamKind::Trainable | ParamKind::Range))
            .map(|p| p.var.clone())
            .collect()
    }

    /// Adds a scalar [`ParamKind::Range`] variable called `name` (a name no tensor of the graph
    /// has) and returns it.
    pub fn add_range(&mut self, name: &str, value: f32) -> Result<Var> {
        let taken = self.by_name.contains_key(name)
            || self
                .model
                .graph
                .as_ref()
                .is_some_and(|g| g.node.iter().any(|n| n.output.iter().any(|o| o == name)));
        if taken {
            return Err(OptimizeError::model(format!("a tensor is already called '{name}'")));
        }
        let var = Var::from_tensor(&Tensor::new(value, &Device::Cpu)?.to_dtype(self.dtype)?)?;
        self.by_name.insert(name.to_string(), self.params.len());
        self.params.push(Param {
            name: name.to_string(),
            dims: vec![],
            kind: ParamKind::Range,
            var: var.clone(),
        });
        Ok(var)
    }

    /// Runs every forward pass through `tap` from now on.
    pub fn set_tap(&mut self, tap: Arc<dyn Tap>) {
        self.tap = Some(tap);
    }

    fn tapped(&self, name: &str, value: Tensor) -> Result<Tensor> {
        match &self.tap {
            Some(tap) => tap.value(name, value),
            None => Ok(value),
        }
    }

    /// The ONNX node of each parsed operator, with its operator (for the pruners).
    pub fn nodes(&self) -> impl Iterator<Item = (&NodeProto, &Op)> {
        let graph = self.model.graph.as_ref();
        self.nodes
            .iter()
            .filter_map(move |n| graph.and_then(|g| g.node.get(n.proto_index)).map(|p| (p, &n.op)))
    }

    /// Runs the graph. `feeds` are the graph inputs by name; `rng` draws dropout masks in
    /// [`Mode::Train`].
    pub fn forward(&self, feeds: &[(String, Tensor)], mode: Mode, rng: &mut StdRng) -> Result<Forward> {
        let mut values: HashMap<String, Tensor> = HashMap::new();
        for name in &self.inputs {
            let (_, t) = feeds
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| OptimizeError::data(format!("no data for model input '{name}'")))?;
            values.insert(name.clone(), self.tapped(name, t.to_dtype(self.dtype)?)?);
        }
        for p in &self.params {
            values.insert(p.name.clone(), self.tapped(&p.name, p.var.as_tensor().clone())?);
        }
        let mut running = Vec::new();
        let graph = self.model.graph.as_ref().ok_or_else(|| OptimizeError::model("no graph"))?;
        for node in &self.nodes {
            let proto = &graph.node[node.proto_index];
            let out = self
                .run_node(node, &values, mode, rng, &mut running)
                .and_then(|out| match node.outputs.first() {
                    Some(name) => Ok(Some((name.clone(), self.tapped(name, out)?))),
                    None => Ok(None),
                })
                .map_err(|e| match e {
                    OptimizeError::Candle(e) => OptimizeError::node(proto, e.to_string()),
                    OptimizeError::Model(m) | OptimizeError::Data(m) => OptimizeError::node(proto, m),
                    other => other,
                })?;
            if let Some((name, out)) = out {
                values.insert(name, out);
            }
        }
        Ok(Forward { values, running })
    }

    fn input<'a>(&self, node: &Node, values: &'a HashMap<String, Tensor>, i: usize) -> Result<&'a Tensor> {
        let name = node
            .inputs
            .get(i)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| OptimizeError::model(format!("input {i} is missing")))?;
        values.get(name).ok_or_else(|| OptimizeError::model(format!("input '{name}' is not a float tensor")))
    }

    fn optional<'a>(&self, node: &Node, values: &'a HashMap<String, Tensor>, i: usize) -> Option<&'a Tensor> {
        node.inputs.get(i).filter(|n| !n.is_empty()).and_then(|n| values.get(n))
    }

    fn run_node(
        &self,
        node: &Node,
        values: &HashMap<String, Tensor>,
        mode: Mode,
        rng: &mut StdRng,
        running: &mut Vec<RunningUpdate>,
    ) -> Result<Tensor> {
        let x = |i| self.input(node, values, i);
        let y = match &node.op {
            Op::Conv { strides, dilations, padding, group } => ops::conv(
                x(0)?,
                x(1)?,
                self.optional(node, values, 2),
                *strides,
                *dilations,
                padding,
                *group,
            )?,
            Op::Gemm { alpha, beta, trans_a, trans_b } => {
                ops::gemm(x(0)?, x(1)?, self.optional(node, values, 2), *alpha, *beta, *trans_a, *trans_b)?
            }
            Op::MatMul => x(0)?.broadcast_matmul(x(1)?)?,
            Op::Add => x(0)?.broadcast_add(x(1)?)?,
            Op::Sub => x(0)?.broadcast_sub(x(1)?)?,
            Op::Mul => x(0)?.broadcast_mul(x(1)?)?,
            Op::Div => x(0)?.broadcast_div(x(1)?)?,
            Op::Relu => kernels::relu(x(0)?)?,
            Op::Clip { min, max } => {
                let bound = |i, attr: &Option<f32>| -> Result<Option<f32>> {
                    match self.optional(node, values, i) {
                        Some(t) => Ok(Some(ops::scalar(t)?)),
                        None => Ok(*attr),
                    }
                };
                let mut t = x(0)?.clone();
                if let Some(lo) = bound(1, min)? {
                    t = t.maximum(lo as f64)?;
                }
                if let Some(hi) = bound(2, max)? {
                    t = t.minimum(hi as f64)?;
                }
                t
            }
            Op::Sigmoid => candle_nn::ops::sigmoid(x(0)?)?,
            Op::HardSigmoid { alpha, beta } => ops::hard_sigmoid(x(0)?, *alpha, *beta)?,
            Op::HardSwish => (x(0)? * ops::hard_sigmoid(x(0)?, 1.0 / 6.0, 0.5)?)?,
            Op::BatchNorm { epsilon, momentum } => {
                let (scale, bias) = (x(1)?, x(2)?);
                match mode {
                    Mode::Eval => ops::batch_norm_eval(x(0)?, scale, bias, x(3)?, x(4)?, *epsilon)?,
                    Mode::Train => {
                        let (y, batch_mean, batch_var) = ops::batch_norm_train(x(0)?, scale, bias, *epsilon)?;
                        let index = |i: usize| {
                            self.by_name.get(&node.inputs[i]).copied().ok_or_else(|| {
                                OptimizeError::model(format!(
                                    "running statistic '{}' is not an initializer",
                                    node.inputs[i]
                                ))
                            })
                        };
                        running.push(RunningUpdate {
                            mean: index(3)?,
                            var: index(4)?,
                            momentum: *momentum,
                            batch_mean,
                            batch_var,
                        });
                        y
                    }
                }
            }
            Op::MaxPool { kernel, strides, padding } => ops::max_pool(x(0)?, *kernel, *strides, padding)?,
            Op::AveragePool { kernel, strides, padding, count_include_pad } => {
                ops::average_pool(x(0)?, *kernel, *strides, padding, *count_include_pad)?
            }
            Op::GlobalAveragePool => x(0)?.mean_keepdim(3)?.mean_keepdim(2)?,
            Op::Flatten { axis } => {
                let t = x(0)?;
                let a = if *axis == t.rank() as i64 { t.rank() } else { ops::axis(*axis, t.rank())? };
                let outer: usize = t.dims()[..a].iter().product();
                t.reshape((outer, t.elem_count() / outer.max(1)))?
            }
            Op::Reshape { allow_zero } => {
                let name = node.inputs.get(1).map(String::as_str).unwrap_or("");
                let shape = self.ints.get(name).ok_or_else(|| {
                    OptimizeError::model(format!("the shape '{name}' must be a constant INT64 tensor"))
                })?;
                let t = x(0)?;
                let dims = ops::reshape_dims(t.dims(), shape, *allow_zero).map_err(OptimizeError::model)?;
                t.reshape(dims)?
            }
            Op::Transpose { perm } => {
                let t = x(0)?;
                let perm = perm.clone().unwrap_or_else(|| (0..t.rank()).rev().collect());
                t.permute(perm)?
            }
            Op::Concat { axis } => {
                let parts: Vec<Tensor> =
                    (0..node.inputs.len()).map(|i| x(i).cloned()).collect::<Result<_>>()?;
                let rank = parts.first().map(|p| p.rank()).unwrap_or(1);
                Tensor::cat(&parts, ops::axis(*axis, rank)?)?
            }
            Op::Softmax { axis } => ops::softmax(x(0)?, *axis)?,
            Op::Dropout { ratio } => {
                let t = x(0)?;
                if mode == Mode::Train && *ratio > 0.0 && *ratio < 1.0 {
                    let keep = 1.0 - *ratio as f64;
                    let mask: Vec<f32> = (0..t.elem_count())
                        .map(|_| if rng.random::<f64>() < keep { (1.0 / keep) as f32 } else { 0.0 })
                        .collect();
                    let mask = Tensor::from_vec(mask, t.dims(), t.device())?.to_dtype(t.dtype())?;
                    (t * mask)?
                } else {
                    t.clone()
                }
            }
            Op::Identity => x(0)?.clone(),
        };
        Ok(y)
    }

    /// Moves each BatchNorm's running statistics towards a training batch's.
    pub fn apply_running(&self, updates: &[RunningUpdate]) -> Result<()> {
        for u in updates {
            for (index, batch) in [(u.mean, &u.batch_mean), (u.var, &u.batch_var)] {
                let var = &self.params[index].var;
                let next = ((var.as_tensor() * u.momentum)? + (batch * (1.0 - u.momentum))?)?;
                var.set(&next)?;
            }
        }
        Ok(())
    }

    /// A copy of every parameter's current value (for best-checkpoint keeping).
    pub fn snapshot(&self) -> Result<Vec<Tensor>> {
        Ok(self.params.iter().map(|p| p.var.as_tensor().copy()).collect::<candle_core::Result<_>>()?)
    }

    /// Restores values taken by [`TrainGraph::snapshot`].
    pub fn restore(&self, snapshot: &[Tensor]) -> Result<()> {
        for (p, t) in self.params.iter().zip(snapshot) {
            p.var.set(t)?;
        }
        Ok(())
    }

    /// The model with the trained values written into its initializers (same names, shapes,
    /// order), everything else as it was.
    pub fn to_model(&self) -> Result<ModelProto> {
        let mut model = self.model.clone();
        let graph = model.graph.as_mut().ok_or_else(|| OptimizeError::model("no graph"))?;
        for init in graph.initializer.iter_mut() {
            let Some(p) = self.param(&init.name) else { continue };
            let values = p.var.as_tensor().flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            let mut fresh = float_tensor(&init.name, &init.dims, &values);
            fresh.doc_string = std::mem::take(&mut init.doc_string);
            *init = fresh;
        }
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::node;
    use crate::model::tensor_value_info;
    use crate::onnx::GraphProto;
    use rand::SeedableRng;

    fn model(nodes: Vec<NodeProto>, initializer: Vec<TensorProto>) -> ModelProto {
        ModelProto {
            graph: Some(GraphProto {
                node: nodes,
                input: vec![tensor_value_info("x", OnnxType::Float)],
                output: vec![tensor_value_info("y", OnnxType::Float)],
                initializer,
                ..GraphProto::default()
            }),
            ..ModelProto::default()
        }
    }

    #[test]
    fn a_model_without_float_weights_is_refused() {
        let m = model(vec![node("Relu", "r", &["x"], &["y"])], vec![]);
        let err = TrainGraph::new(&m).expect_err("no weights").to_string();
        assert!(err.contains("no float weights"), "{err}");
    }

    #[test]
    fn export_keeps_names_shapes_and_order() {
        let m = model(
            vec![node("MatMul", "mm", &["x", "w"], &["t"]), node("Add", "add", &["t", "b"], &["y"])],
            vec![float_tensor("w", &[2, 2], &[1.0, 2.0, 3.0, 4.0]), float_tensor("b", &[2], &[0.5, 0.5])],
        );
        let g = TrainGraph::new(&m).expect("graph");
        let w = g.param("w").expect("w");
        w.var.set(&(w.var.as_tensor() * 2.0).expect("mul")).expect("set");
        let out = g.to_model().expect("export");
        let inits = &out.graph.as_ref().expect("graph").initializer;
        assert_eq!(inits.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["w", "b"]);
        assert_eq!(float_values(&inits[0]).expect("w"), vec![2.0, 4.0, 6.0, 8.0]);
        assert_eq!(inits[0].dims, vec![2, 2]);
        let x = Tensor::from_vec(vec![1f32, 1.0], (1, 2), &Device::Cpu).expect("x");
        let mut rng = StdRng::seed_from_u64(0);
        let y = g.forward(&[("x".into(), x)], Mode::Eval, &mut rng).expect("forward");
        assert_eq!(y.values["y"].to_vec2::<f32>().expect("y"), vec![vec![8.5, 12.5]]);
    }

    #[test]
    fn a_missing_input_is_named() {
        let m =
            model(vec![node("MatMul", "mm", &["x", "w"], &["y"])], vec![float_tensor("w", &[1, 1], &[1.0])]);
        let g = TrainGraph::new(&m).expect("graph");
        let mut rng = StdRng::seed_from_u64(0);
        let err = g.forward(&[], Mode::Eval, &mut rng).err().expect("missing").to_string();
        assert!(err.contains("'x'"), "{err}");
    }
}
