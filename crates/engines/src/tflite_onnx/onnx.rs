//! The ONNX graph the conversion writes: nodes, initializers, fresh names, and the encoded
//! model (prost types of `tract-onnx`, the same ONNX schema).

use prost::Message;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::type_proto::{self, Tensor as TensorType};
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};

/// The ONNX opset written: DequantizeLinear per axis (13), HardSwish (14).
const OPSET: i64 = 14;
/// The IR version that goes with opset 14.
const IR_VERSION: i64 = 7;

/// An ONNX graph being written.
#[derive(Default)]
pub(super) struct Onnx {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    next: usize,
    /// Whether initializers keep their data (not when only checking that a file converts).
    without_data: bool,
}

impl Onnx {
    /// A graph whose initializers are dropped as they come: for checking that a file converts
    /// without holding its weights.
    pub fn without_data() -> Self {
        Onnx { without_data: true, ..Onnx::default() }
    }

    /// Whether initializers keep their data: when not, a caller need not make it.
    pub fn keeps_data(&self) -> bool {
        !self.without_data
    }

    /// A name no other value of the graph has (every name the graph makes goes through here;
    /// the file's own names are kept only for the graph's inputs and outputs, which end in
    /// `:N` or are plain words, never `~N`).
    pub fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{hint}~{}", self.next)
    }

    /// Adds a node with one output of a fresh name, and returns that name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        let output = self.fresh(op);
        self.node_into(op, inputs, attributes, output)
    }

    /// Adds a node whose one output is `output`, and returns that name.
    pub fn node_into(
        &mut self,
        op: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
        output: String,
    ) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            name: output.clone(),
            op_type: op.to_string(),
            attribute: attributes,
            ..NodeProto::default()
        });
        output
    }

    /// Adds an initializer from raw little-endian bytes, and returns its name.
    pub fn constant(&mut self, hint: &str, data_type: DataType, dims: &[i64], raw: Vec<u8>) -> String {
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: data_type as i32,
            name: name.clone(),
            raw_data: if self.without_data { Vec::new() } else { raw },
            ..TensorProto::default()
        });
        name
    }

    pub fn floats(&mut self, hint: &str, dims: &[i64], values: &[f32]) -> String {
        self.constant(hint, DataType::Float, dims, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    pub fn int64s(&mut self, hint: &str, values: &[i64]) -> String {
        let dims = [values.len() as i64];
        self.constant(hint, DataType::Int64, &dims, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// Declares a graph input; `dims` of -1 are run-time (named `batch`).
    pub fn input(&mut self, name: &str, data_type: DataType, dims: &[i64]) {
        self.inputs.push(value_info(name, data_type, dims));
    }

    pub fn output(&mut self, name: &str, data_type: DataType, dims: &[i64]) {
        self.outputs.push(value_info(name, data_type, dims));
    }

    /// The encoded model.
    pub fn encode(self, producer: &str) -> Vec<u8> {
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
            producer_name: producer.to_string(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: "tflite".to_string(),
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..GraphProto::default()
            }),
            ..ModelProto::default()
        }
        .encode_to_vec()
    }
}

fn value_info(name: &str, data_type: DataType, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            value: Some(if d < 0 {
                dimension::Value::DimParam("batch".into())
            } else {
                dimension::Value::DimValue(d)
            }),
            ..Dimension::default()
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(TensorType {
                elem_type: data_type as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    }
}

pub(super) fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: value,
        ..AttributeProto::default()
    }
}

pub(super) fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..AttributeProto::default()
    }
}

pub(super) fn text(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: value.as_bytes().to_vec(),
        ..AttributeProto::default()
    }
}
