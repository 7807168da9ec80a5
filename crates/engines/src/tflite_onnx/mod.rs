//! TFLite files on ONNX Runtime: the flatbuffer rewritten, operator by operator, as the ONNX
//! graph that computes the same thing, so a `.tflite` model runs on ONNX Runtime's kernels
//! (its integer ones for an INT8 file) instead of tract's.
//!
//! - Quantized tensors become ONNX's QDQ form, as `rtserve optimize quantize` writes it: each
//!   operator works on `DequantizeLinear` outputs and its result goes through a
//!   `QuantizeLinear` with the tensor's scale and zero point, which ONNX Runtime fuses into
//!   integer kernels (QLinearConv, QLinearAdd, …). Weights stay int8 (per-axis scales kept);
//!   activations are held as uint8 with the zero point moved by 128 (the same real values:
//!   the layout ONNX Runtime's x86 kernels prefer); int8 graph inputs and outputs keep int8.
//! - Layout: TFLite is NHWC, ONNX's convolutions and pools NCHW. A 4-D tensor made by a
//!   convolution or pool stays NCHW until an operator needs the file's layout (a reshape, a
//!   fully connected layer, a graph output), where a `Transpose` is put.
//! - Fused activations become Relu/Clip, left out where the output's quantization already
//!   clamps to the same range.
//!
//! What is converted is in `ops.rs`; any other operator fails the conversion with its name,
//! and such a model stays on tract (docs/edge.md).

mod blocks;
mod onnx;
mod ops;
mod tensors;

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use rtserve_core::EngineError;
use tract_onnx::pb::tensor_proto::DataType;
use tract_tflite::tflite::{self, ActivationFunctionType, BuiltinOperator, Model, SubGraph};

use self::onnx::Onnx;
use self::tensors::{onnx_type, Facts, Quant};
use crate::panic::panic_message;

/// Reads the TFLite file at `path` and returns the encoded ONNX model that computes the same.
///
/// Peak memory, measured (`rtserve run` of INT8 MobileNetV2, whose own peak is ONNX Runtime's
/// session being made): with glibc, freeing a large buffer raises its adaptive mmap threshold,
/// and what is allocated after it stays on the heap. Reading the file twice (the engine
/// choice's `check`, then here) or freeing it before the encoded copy is made each left the
/// load 4–6 MiB higher (59.5–61.3 MiB against 55.6). So `check` hands its bytes to this
/// conversion, and they are freed last.
pub(crate) fn convert(path: &Path) -> Result<Vec<u8>, EngineError> {
    let file = read(path)?;
    let onnx = convert_bytes(&file.data, Onnx::default()).map_err(|e| cannot(path, e))?;
    Ok(onnx.encode(PRODUCER))
}

/// Whether the TFLite file at `path` converts, and if not why: the conversion without keeping
/// the weights (what the engine choice asks before the load converts it for real). The bytes
/// of a file that converts are kept for that conversion.
pub(crate) fn check(path: &Path) -> Result<(), EngineError> {
    let file = read(path)?;
    convert_bytes(&file.data, Onnx::without_data()).map_err(|e| cannot(path, e))?;
    *CHECKED.lock().unwrap_or_else(PoisonError::into_inner) = Some(file);
    Ok(())
}

/// The file `check` last found convertible, for the `convert` that follows it.
static CHECKED: Mutex<Option<File>> = Mutex::new(None);

/// A file's bytes, with what tells a later version of it apart.
struct File {
    path: PathBuf,
    stamp: (u64, Option<SystemTime>),
    data: Vec<u8>,
}

/// The file's bytes: those `check` kept when they are of this file as it is now, else read.
fn read(path: &Path) -> Result<File, EngineError> {
    let unreadable = |e: std::io::Error| EngineError::new(format!("cannot read {}: {e}", path.display()));
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    let stamp = (meta.len(), meta.modified().ok());
    let kept = CHECKED.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(file) = kept.filter(|f| f.path == path && f.stamp == stamp) {
        return Ok(file);
    }
    let data = std::fs::read(path).map_err(unreadable)?;
    Ok(File { path: path.to_path_buf(), stamp, data })
}

fn cannot(path: &Path, reason: String) -> EngineError {
    EngineError::new(format!("{}: cannot convert this TFLite file to ONNX: {reason}", path.display()))
}

/// The encoded ONNX model that computes what the TFLite flatbuffer `bytes` computes, or why
/// there is none. A panic is not caught here (the fuzz target `tflite_model` looks for them);
/// loads go through `convert`, which catches them.
pub fn rewrite(bytes: &[u8]) -> Result<Vec<u8>, String> {
    write_graph(bytes, Onnx::default()).map(|onnx| onnx.encode(PRODUCER))
}

/// The model's `producer_name`.
const PRODUCER: &str = "rtserve tflite";

/// The ONNX graph of a TFLite flatbuffer, written into `onnx`; a panic on a file no test
/// foresaw becomes an error.
fn convert_bytes(bytes: &[u8], onnx: Onnx) -> Result<Onnx, String> {
    catch_unwind(AssertUnwindSafe(|| write_graph(bytes, onnx))).unwrap_or_else(|panic| {
        Err(format!("the rewrite failed on this file ({})", panic_message(panic.as_ref())))
    })
}

fn write_graph(bytes: &[u8], onnx: Onnx) -> Result<Onnx, String> {
    let model = tflite::root_as_model(bytes).map_err(|e| format!("not a TFLite flatbuffer ({e})"))?;
    let graph = model
        .subgraphs()
        .filter(|graphs| graphs.len() == 1)
        .map(|graphs| graphs.get(0))
        .ok_or("only files with one subgraph are converted")?;
    let mut converter = Converter::new(model, graph, onnx);
    converter.inputs()?;
    let operators = graph.operators().map(|ops| ops.iter().collect::<Vec<_>>()).unwrap_or_default();
    for (index, operator) in operators.into_iter().enumerate() {
        let code = converter.code(&operator)?;
        converter.operator(code, &operator).map_err(|e| {
            let name = code.variant_name().map_or_else(|| format!("operator {}", code.0), str::to_string);
            format!("{name} (operator {index}): {e}")
        })?;
    }
    converter.outputs()?;
    Ok(converter.onnx)
}

/// How a 4-D tensor is laid out in the ONNX graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// As in the TFLite file (NHWC for images).
    Native,
    /// NHWC held as NCHW.
    Channels,
}

/// The quantization of a value held as integers: the names of its scale and zero point.
#[derive(Debug, Clone)]
struct Params {
    scale: String,
    zero_point: String,
    axis: Option<i64>,
}

/// What holds a TFLite tensor in the ONNX graph.
#[derive(Debug, Clone)]
enum Stored {
    Float(String),
    Quantized { data: String, params: Params },
}

#[derive(Debug, Clone)]
struct Value {
    stored: Stored,
    layout: Layout,
    rank: usize,
}

struct Converter<'a> {
    model: Model<'a>,
    graph: SubGraph<'a>,
    onnx: Onnx,
    values: HashMap<i32, Value>,
    /// The `DequantizeLinear` output made for each quantized value, by the value's name.
    dequantized: HashMap<String, String>,
    graph_outputs: HashSet<i32>,
    /// DEQUANTIZE operators of constants (float16 or int8 weights): output → input. Their
    /// outputs are constants too.
    constant_sources: HashMap<i32, i32>,
}

impl<'a> Converter<'a> {
    fn new(model: Model<'a>, graph: SubGraph<'a>, onnx: Onnx) -> Self {
        let graph_outputs = graph.outputs().map(|o| o.iter().collect()).unwrap_or_default();
        let mut converter = Converter {
            model,
            graph,
            onnx,
            values: HashMap::new(),
            dequantized: HashMap::new(),
            graph_outputs,
            constant_sources: HashMap::new(),
        };
        for operator in graph.operators().iter().flat_map(|ops| ops.iter()) {
            let (Ok(code), Some(inputs), Some(outputs)) =
                (converter.code(&operator), operator.inputs(), operator.outputs())
            else {
                continue;
            };
            if code == BuiltinOperator::DEQUANTIZE && inputs.len() == 1 && outputs.len() == 1 {
                let input = inputs.get(0);
                if converter.facts(input).is_ok_and(|f| f.data.is_some()) {
                    converter.constant_sources.insert(outputs.get(0), input);
                }
            }
        }
        converter
    }

    fn code(&self, operator: &tflite::Operator<'a>) -> Result<BuiltinOperator, String> {
        let codes = self.model.operator_codes().ok_or("the file has no operator codes")?;
        let index = operator.opcode_index() as usize;
        if index >= codes.len() {
            return Err(format!("operator code {index} does not exist"));
        }
        let code = codes.get(index);
        let deprecated = i32::from(code.deprecated_builtin_code());
        Ok(if deprecated == BuiltinOperator::PLACEHOLDER_FOR_GREATER_OP_CODES.0 {
            code.builtin_code()
        } else {
            BuiltinOperator(deprecated)
        })
    }

    fn facts(&self, index: i32) -> Result<Facts<'a>, String> {
        let index = *self.constant_sources.get(&index).unwrap_or(&index);
        Facts::read(&self.model, &self.graph, index)
    }

    /// The graph's inputs: float as they are; int8/uint8 as their integers, int8 moved to
    /// uint8 (exactly) for the operators after it.
    fn inputs(&mut self) -> Result<(), String> {
        let inputs: Vec<i32> = self.graph.inputs().map(|i| i.iter().collect()).unwrap_or_default();
        for index in inputs {
            let facts = self.facts(index)?;
            let name = facts.name().to_string();
            let element = onnx_type(facts.element_type())
                .ok_or_else(|| format!("input '{name}' is {:?}", facts.element_type()))?;
            self.onnx.input(&name, element, &facts.shape);
            let value = match (&facts.quant, facts.is_quantized()) {
                (Some(quant), true) => {
                    let params = self.params(quant, element, None)?;
                    let mut stored = Stored::Quantized { data: name, params };
                    if element == DataType::Int8 {
                        let real = self.dequantize(&stored);
                        stored = self.quantize_into(&real, quant, DataType::Uint8)?;
                    }
                    Value { stored, layout: Layout::Native, rank: facts.shape.len() }
                }
                _ => Value { stored: Stored::Float(name), layout: Layout::Native, rank: facts.shape.len() },
            };
            self.values.insert(index, value);
        }
        Ok(())
    }

    /// The graph's outputs, under the file's names.
    fn outputs(&mut self) -> Result<(), String> {
        let outputs: Vec<i32> = self.graph.outputs().map(|o| o.iter().collect()).unwrap_or_default();
        for index in outputs {
            let facts = self.facts(index)?;
            let element = onnx_type(facts.element_type())
                .ok_or_else(|| format!("output '{}' is {:?}", facts.name(), facts.element_type()))?;
            if !self.values.contains_key(&index) {
                return Err(format!("output '{}' is not computed by any operator", facts.name()));
            }
            self.onnx.output(facts.name(), element, &facts.shape);
        }
        Ok(())
    }

    /// A tensor as the operators before have left it; a constant becomes an initializer.
    fn value(&mut self, index: i32) -> Result<Value, String> {
        if let Some(value) = self.values.get(&index) {
            return Ok(value.clone());
        }
        let facts = self.facts(index)?;
        if facts.data.is_none() {
            return Err(format!("tensor '{}' is used before it is computed", facts.name()));
        }
        let dims = &facts.shape;
        // Integers with one scale stay integers; weights behind a DEQUANTIZE, per-axis constants
        // (which an activation cannot hold) and float constants become float.
        let stored = match &facts.quant {
            Some(quant)
                if facts.is_quantized()
                    && quant.scales.len() == 1
                    && !self.constant_sources.contains_key(&index) =>
            {
                let element = onnx_type(facts.element_type()).ok_or("unsupported constant type")?;
                let raw = facts.data.unwrap_or_default().to_vec();
                let data = self.onnx.constant("constant", element, dims, raw);
                Stored::Quantized { data, params: self.params(quant, element, None)? }
            }
            _ => Stored::Float(self.onnx.floats("constant", dims, &facts.floats()?)),
        };
        let value = Value { stored, layout: Layout::Native, rank: dims.len() };
        self.values.insert(index, value.clone());
        Ok(value)
    }

    /// The tensor in `layout` (a `Transpose` of its stored form when a 4-D tensor is held the
    /// other way).
    fn value_in(&mut self, index: i32, layout: Layout) -> Result<Value, String> {
        let value = self.value(index)?;
        Ok(self.relayout(value, layout))
    }

    fn relayout(&mut self, value: Value, layout: Layout) -> Value {
        if value.rank != 4 || value.layout == layout {
            return value;
        }
        let perm: &[i64] = match layout {
            Layout::Channels => &[0, 3, 1, 2],
            Layout::Native => &[0, 2, 3, 1],
        };
        let mut moved = self.on_data(&value, "Transpose", &[], vec![onnx::ints("perm", perm)]);
        moved.layout = layout;
        moved
    }

    /// An operator that only moves elements (Transpose, Reshape) applied to the stored form,
    /// integers included, so the next operator still reads a `DequantizeLinear`.
    fn on_data(
        &mut self,
        value: &Value,
        op: &str,
        extra: &[&str],
        attributes: Vec<tract_onnx::pb::AttributeProto>,
    ) -> Value {
        let data = match &value.stored {
            Stored::Float(name) | Stored::Quantized { data: name, .. } => name.clone(),
        };
        let mut inputs = vec![data.as_str()];
        inputs.extend_from_slice(extra);
        let moved = self.onnx.node(op, &inputs, attributes);
        let stored = match &value.stored {
            Stored::Float(_) => Stored::Float(moved),
            Stored::Quantized { params, .. } => Stored::Quantized { data: moved, params: params.clone() },
        };
        Value { stored, ..value.clone() }
    }

    /// The real values of a stored tensor (a `DequantizeLinear`, made once).
    fn dequantize(&mut self, stored: &Stored) -> String {
        match stored {
            Stored::Float(name) => name.clone(),
            Stored::Quantized { data, params } => {
                if let Some(real) = self.dequantized.get(data) {
                    return real.clone();
                }
                let attributes = params.axis.map(|axis| vec![onnx::int("axis", axis)]).unwrap_or_default();
                let inputs = [data.as_str(), &params.scale, &params.zero_point];
                let real = self.onnx.node("DequantizeLinear", &inputs, attributes);
                self.dequantized.insert(data.clone(), real.clone());
                real
            }
        }
    }

    fn real(&mut self, value: &Value) -> String {
        self.dequantize(&value.stored)
    }

    /// `real` quantized as `quant` into `element` (uint8 for an int8 quantization: the zero
    /// point moves by 128).
    fn quantize_into(&mut self, real: &str, quant: &Quant, element: DataType) -> Result<Stored, String> {
        let params = self.params(quant, element, None)?;
        let data = self.onnx.node("QuantizeLinear", &[real, &params.scale, &params.zero_point], Vec::new());
        Ok(Stored::Quantized { data, params })
    }

    /// Initializers for a quantization's scale and zero point, the zero point of type `element`
    /// (int8 zero points moved by 128 for uint8); `axis` is the ONNX axis of per-axis scales.
    fn params(&mut self, quant: &Quant, element: DataType, axis: Option<i64>) -> Result<Params, String> {
        let per_axis = quant.scales.len() > 1;
        if per_axis && axis.is_none() {
            return Err("per-axis quantization of an activation is not converted".into());
        }
        let dims: Vec<i64> = if per_axis { vec![quant.scales.len() as i64] } else { Vec::new() };
        let scales = if per_axis { quant.scales.clone() } else { vec![quant.scales[0]] };
        let zero_points = &quant.zero_points[..scales.len().min(quant.zero_points.len())];
        let raw: Vec<u8> = match element {
            DataType::Int8 => zero_points.iter().map(|&z| z as i8 as u8).collect(),
            DataType::Uint8 => zero_points.iter().map(|&z| (z + 128).clamp(0, 255) as u8).collect(),
            DataType::Int32 => zero_points.iter().flat_map(|&z| (z as i32).to_le_bytes()).collect(),
            other => return Err(format!("{other:?} is not a quantized type")),
        };
        let scale = self.onnx.floats("scale", &dims, &scales);
        let zero_point = self.onnx.constant("zero_point", element, &dims, raw);
        Ok(Params { scale, zero_point, axis: if per_axis { axis } else { None } })
    }

    /// The result `raw` (real values) of an operator for tensor `output`, with the operator's
    /// fused activation, quantized if the tensor is.
    fn produce(
        &mut self,
        output: i32,
        raw: String,
        layout: Layout,
        activation: ActivationFunctionType,
    ) -> Result<Value, String> {
        let facts = self.facts(output)?;
        let rank = facts.shape.len();
        let stored = match (&facts.quant, facts.is_quantized()) {
            (Some(quant), true) => {
                if quant.scales.len() != 1 {
                    return Err(format!("'{}' has per-axis scales; activations need one", facts.name()));
                }
                let element = if self.graph_outputs.contains(&output) {
                    onnx_type(facts.element_type()).ok_or("unsupported output type")?
                } else {
                    DataType::Uint8
                };
                let (qmin, qmax) =
                    if facts.element_type() == tflite::TensorType::INT8 { (-128, 127) } else { (0, 255) };
                let range = (quant.scales[0], quant.zero_points[0], qmin, qmax);
                let activated = self.activate(raw, activation, Some(range))?;
                self.quantize_into(&activated, quant, element)?
            }
            _ => Stored::Float(self.activate(raw, activation, None)?),
        };
        Ok(Value { stored, layout, rank })
    }

    /// Records `value` as tensor `output`; a graph output gets the file's layout and name.
    fn define(&mut self, output: i32, value: Value) -> Result<(), String> {
        let value = if self.graph_outputs.contains(&output) {
            let value = self.relayout(value, Layout::Native);
            let name = self.facts(output)?.name().to_string();
            let data = match &value.stored {
                Stored::Float(name) | Stored::Quantized { data: name, .. } => name.clone(),
            };
            let named = self.onnx.node_into("Identity", &[&data], Vec::new(), name);
            let stored = match value.stored {
                Stored::Float(_) => Stored::Float(named),
                Stored::Quantized { params, .. } => Stored::Quantized { data: named, params },
            };
            Value { stored, ..value }
        } else {
            value
        };
        self.values.insert(output, value);
        Ok(())
    }

    fn finish(
        &mut self,
        output: i32,
        raw: String,
        layout: Layout,
        activation: ActivationFunctionType,
    ) -> Result<(), String> {
        let value = self.produce(output, raw, layout, activation)?;
        self.define(output, value)
    }

    /// A fused activation on real values. `range` (scale, zero point, qmin, qmax) is the
    /// output's quantization: a Relu or Clip that it makes redundant is left out.
    fn activate(
        &mut self,
        raw: String,
        activation: ActivationFunctionType,
        range: Option<(f32, i64, i64, i64)>,
    ) -> Result<String, String> {
        let (low, high) = match activation {
            ActivationFunctionType::NONE => return Ok(raw),
            ActivationFunctionType::RELU => (0.0, f32::INFINITY),
            ActivationFunctionType::RELU6 => (0.0, 6.0),
            ActivationFunctionType::RELU_N1_TO_1 => (-1.0, 1.0),
            ActivationFunctionType::TANH => return Ok(self.onnx.node("Tanh", &[&raw], Vec::new())),
            other => return Err(format!("fused activation {other:?} is not converted")),
        };
        if let Some((scale, zero_point, qmin, qmax)) = range {
            let to_q = |x: f32| (x / scale).round_ties_even() as i64 + zero_point;
            if to_q(low) <= qmin && (high.is_infinite() || to_q(high) >= qmax) {
                return Ok(raw);
            }
        }
        if high.is_infinite() && low == 0.0 {
            return Ok(self.onnx.node("Relu", &[&raw], Vec::new()));
        }
        let low = self.onnx.floats("min", &[], &[low]);
        let high = self.onnx.floats("max", &[], &[high]);
        Ok(self.onnx.node("Clip", &[&raw, &low, &high], Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use prost::Message;
    use tract_onnx::pb::{ModelProto, NodeProto};

    fn nodes_of(file: &str) -> Vec<NodeProto> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/edge").join(file);
        let bytes = super::convert(&path).expect("converts");
        ModelProto::decode(bytes.as_slice()).expect("ONNX").graph.expect("graph").node
    }

    /// What ONNX Runtime needs to run an INT8 file on integer kernels: every Conv, Gemm and Add
    /// reads only DequantizeLinear outputs and feeds one QuantizeLinear (a fused activation the
    /// output's quantization makes redundant is left out, so nothing stands between them).
    #[test]
    fn int8_operators_sit_between_dequantize_and_quantize() {
        let nodes = nodes_of("mobile_block_int8.tflite");
        let producer: HashMap<&str, &str> = nodes
            .iter()
            .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n.op_type.as_str())))
            .collect();
        let consumers = |name: &str| -> Vec<&str> {
            nodes.iter().filter(|n| n.input.iter().any(|i| i == name)).map(|n| n.op_type.as_str()).collect()
        };
        let mut checked = 0;
        for node in nodes.iter().filter(|n| ["Conv", "Gemm", "Add"].contains(&n.op_type.as_str())) {
            for input in &node.input {
                assert_eq!(
                    producer.get(input.as_str()),
                    Some(&"DequantizeLinear"),
                    "{} input {input}",
                    node.name
                );
            }
            let after = consumers(&node.output[0]);
            assert!(
                after == ["QuantizeLinear"] || after == ["Relu"] || after == ["Clip"],
                "{}: {after:?}",
                node.name
            );
            checked += 1;
        }
        assert_eq!(checked, 4 + 2 + 3 + 1, "4 convolutions, 2 depthwise, 3 fully connected, 1 ADD");
        // The stride-2 stem over three channels runs over 2×2 blocks (blocks.rs).
        let stem = nodes.iter().find(|n| n.op_type == "SpaceToDepth").expect("SpaceToDepth");
        assert_eq!(consumers(&stem.output[0]), ["DequantizeLinear"]);
        assert_eq!(nodes.iter().filter(|n| n.op_type == "SpaceToDepth").count(), 1);
        // The CNN's fused RELUs end in an output quantization with zero point -128: redundant.
        let fashion = nodes_of("fashion_cnn_int8.tflite");
        assert!(!fashion.iter().any(|n| n.op_type == "Relu" || n.op_type == "Clip"));
        assert_eq!(fashion.iter().filter(|n| n.op_type == "Conv").count(), 2);
        // The float CNN keeps them.
        assert_eq!(nodes_of("fashion_cnn_float.tflite").iter().filter(|n| n.op_type == "Relu").count(), 2);
    }

    /// An operator the rewrite lacks is named, with its place in the file.
    #[test]
    fn an_operator_not_converted_is_named() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/edge/cumsum.tflite");
        let err = super::check(&path).expect_err("CUMSUM");
        assert!(err.0.contains("CUMSUM (operator 0)") && err.0.contains("cumsum.tflite"), "{err}");
    }
}
