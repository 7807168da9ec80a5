//! A model whose output names the file that computed it: `y = x + stamp`, with `stamp` a
//! constant stored in the file. Files that differ only in the stamp have the same size, so
//! replacing one by another in place changes only its bytes and modification time.

use std::path::Path;

use rtserve_optimize::model::{float_tensor, save, tensor_value_info};
use rtserve_optimize::onnx::tensor_proto::DataType;
use rtserve_optimize::onnx::tensor_shape_proto::{dimension, Dimension};
use rtserve_optimize::onnx::{
    type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto, ValueInfoProto,
};

use crate::tensors::{Tensor, Values};

/// Elements per row.
pub const WIDTH: usize = 4;

/// A config.pbtxt for the model named `name`, with the prediction cache on.
pub fn config(name: &str) -> String {
    format!(
        "name: \"{name}\"\nmax_batch_size: 8\n\
         input [ {{ name: \"x\" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]\n\
         output [ {{ name: \"y\" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]\n\
         dynamic_batching {{ max_queue_delay_microseconds: 500 }}\n\
         response_cache {{ enable: true }}\n"
    )
}

/// The same config in Triton's JSON form, as a load request's `config` parameter carries it.
pub fn config_json(name: &str) -> String {
    serde_json::json!({
        "name": name,
        "max_batch_size": 8,
        "input": [{ "name": "x", "data_type": "TYPE_FP32", "dims": [WIDTH.to_string()] }],
        "output": [{ "name": "y", "data_type": "TYPE_FP32", "dims": [WIDTH] }],
        "response_cache": { "enable": true },
    })
    .to_string()
}

fn batch_by_width(name: &str) -> ValueInfoProto {
    let mut info = tensor_value_info(name, DataType::Float);
    if let Some(type_proto::Value::TensorType(tensor)) = info.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        let dim = |value| Dimension { value: Some(value), denotation: String::new() };
        tensor.shape = Some(TensorShapeProto {
            dim: vec![
                dim(dimension::Value::DimParam("batch".into())),
                dim(dimension::Value::DimValue(WIDTH as i64)),
            ],
        });
    }
    info
}

/// The ONNX model `y = x + stamp`.
pub fn model(stamp: f32) -> ModelProto {
    let add = NodeProto {
        op_type: "Add".into(),
        name: "add_stamp".into(),
        input: vec!["x".into(), "stamp".into()],
        output: vec!["y".into()],
        ..NodeProto::default()
    };
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 13 }],
        graph: Some(GraphProto {
            name: "stamp".into(),
            node: vec![add],
            initializer: vec![float_tensor("stamp", &[1], &[stamp])],
            input: vec![batch_by_width("x")],
            output: vec![batch_by_width("y")],
            ..GraphProto::default()
        }),
        ..ModelProto::default()
    }
}

/// Writes the model with `stamp` to `path`.
pub fn write(path: &Path, stamp: f32) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create the version folder");
    }
    save(&model(stamp), path).expect("write the stamp model");
}

/// A model folder `name` in `repository` with config.pbtxt and version 1 stamped `stamp`.
pub fn add(repository: &Path, name: &str, stamp: f32) {
    let dir = repository.join(name);
    write(&dir.join("1/model.onnx"), stamp);
    std::fs::write(dir.join("config.pbtxt"), config(name)).expect("write config.pbtxt");
}

/// Makes the model `name` serve every version on disk (Triton's default serves the latest).
pub fn serve_all_versions(repository: &Path, name: &str) {
    let config = format!("{}version_policy {{ all {{ }} }}\n", config(name));
    std::fs::write(repository.join(name).join("config.pbtxt"), config).expect("write config.pbtxt");
}

/// Input row `i`: `[i, i+1, ...]`, one row in a batch.
pub fn input(i: usize) -> Tensor {
    let values = (0..WIDTH).map(|j| (i + j) as f32).collect();
    Tensor {
        name: "x".into(),
        datatype: "FP32".into(),
        shape: vec![1, WIDTH as i64],
        values: Values::Fp32(values),
    }
}

/// The stamp of the file that computed `output` from `input`; an error when the elements
/// disagree (a reply not computed wholly by one file).
pub fn stamp_of(input: &Tensor, output: &Tensor) -> Result<f32, String> {
    let (Values::Fp32(x), Values::Fp32(y)) = (&input.values, &output.values) else {
        return Err(format!("not FP32: {output:?}"));
    };
    if x.len() != y.len() {
        return Err(format!("{} outputs for {} inputs", y.len(), x.len()));
    }
    let stamps: Vec<f32> = x.iter().zip(y).map(|(x, y)| y - x).collect();
    match stamps.first() {
        Some(&first) if stamps.iter().all(|&s| s == first) => Ok(first),
        _ => Err(format!("mixed stamps {stamps:?}")),
    }
}
