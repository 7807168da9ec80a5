//! The model under test, as its metadata describes it, and the shape each input is sent with.

use serde_json::Value;

use crate::config::ShapeOverride;
use crate::values::DataType;
use crate::BenchError;

/// One input or output of the model.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    /// -1 marks a dynamic dimension.
    pub shape: Vec<i64>,
}

/// What the model's metadata says (`GET /v2/models/M` or gRPC ModelMetadata).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl ModelInfo {
    /// Builds the model from metadata fields, refusing what cannot be sent.
    pub fn new(
        name: String,
        inputs: Vec<(String, String, Vec<i64>)>,
        outputs: Vec<(String, String, Vec<i64>)>,
    ) -> Result<ModelInfo, BenchError> {
        let model = name.clone();
        let spec = |(name, datatype, shape): (String, String, Vec<i64>)| {
            let datatype = datatype.parse::<DataType>().map_err(|_| BenchError::Metadata {
                model: model.clone(),
                reason: format!("tensor '{name}' has datatype '{datatype}', which this tool cannot send"),
            })?;
            if let Some(d) = shape.iter().find(|&&d| d < -1) {
                return Err(BenchError::Metadata {
                    model: model.clone(),
                    reason: format!("tensor '{name}' has dimension {d}"),
                });
            }
            Ok(TensorSpec { name, datatype, shape })
        };
        let inputs = inputs.into_iter().map(spec).collect::<Result<Vec<_>, _>>()?;
        // Outputs are only named in reports; an exotic output datatype does not matter.
        let outputs = outputs
            .into_iter()
            .map(|(name, datatype, shape)| TensorSpec {
                name,
                datatype: datatype.parse().unwrap_or(DataType::Bytes),
                shape,
            })
            .collect();
        if inputs.is_empty() {
            return Err(BenchError::Metadata { model, reason: "the model declares no inputs".into() });
        }
        Ok(ModelInfo { name, inputs, outputs })
    }

    /// Reads the KServe v2 JSON metadata object.
    pub fn from_json(model: &str, metadata: &Value) -> Result<ModelInfo, BenchError> {
        let bad = |reason: String| BenchError::Metadata { model: model.to_string(), reason };
        let tensors = |key: &str| -> Result<Vec<(String, String, Vec<i64>)>, BenchError> {
            let Some(list) = metadata.get(key) else { return Ok(Vec::new()) };
            let list = list.as_array().ok_or_else(|| bad(format!("'{key}' is not a list")))?;
            list.iter()
                .map(|t| {
                    let name =
                        t["name"].as_str().ok_or_else(|| bad(format!("an entry of '{key}' has no name")))?;
                    let datatype = t["datatype"]
                        .as_str()
                        .ok_or_else(|| bad(format!("tensor '{name}' has no datatype")))?;
                    let shape = t["shape"]
                        .as_array()
                        .and_then(|dims| dims.iter().map(Value::as_i64).collect::<Option<Vec<i64>>>())
                        .ok_or_else(|| bad(format!("tensor '{name}' has no integer shape")))?;
                    Ok((name.to_string(), datatype.to_string(), shape))
                })
                .collect()
        };
        let name = metadata["name"].as_str().unwrap_or(model).to_string();
        ModelInfo::new(name, tensors("inputs")?, tensors("outputs")?)
    }

    /// Whether the model batches: every input's first dimension is dynamic, which is how
    /// Triton-style servers report the batch dimension of a model with `max_batch_size` > 0.
    pub fn batching(&self) -> bool {
        self.inputs.iter().all(|i| i.shape.first() == Some(&-1))
    }

    /// The shape of one sample of `input`: its dimensions after the batch dimension (all of
    /// them when the model does not batch), dynamic ones from `--shape` or else 1.
    pub fn sample_shape(
        &self,
        input: &TensorSpec,
        shapes: &[ShapeOverride],
    ) -> Result<Vec<usize>, BenchError> {
        let dims = if self.batching() { &input.shape[1..] } else { &input.shape[..] };
        let Some(given) = shapes.iter().find(|s| s.name == input.name) else {
            return Ok(dims.iter().map(|&d| usize::try_from(d).unwrap_or(1)).collect());
        };
        check_shape(dims, &given.dims)
            .map_err(|e| BenchError::Inputs(format!("--shape {}: {e}", input.name)))?;
        Ok(given.dims.clone())
    }

    /// The full shape sent for `sample_shape`, with the batch dimension when the model batches.
    pub fn request_shape(&self, batch: usize, sample_shape: &[usize]) -> Vec<i64> {
        let batch_dim = self.batching().then_some(batch);
        batch_dim.into_iter().chain(sample_shape.iter().copied()).map(|d| d as i64).collect()
    }

    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|i| i.name == name)
    }

    /// The input names, for messages.
    pub fn input_names(&self) -> String {
        self.inputs.iter().map(|i| format!("'{}'", i.name)).collect::<Vec<_>>().join(", ")
    }
}

/// Whether `actual` fits the model's `declared` sample dimensions (-1 matches any size).
pub fn check_shape(declared: &[i64], actual: &[usize]) -> Result<(), String> {
    let fits = declared.len() == actual.len()
        && declared.iter().zip(actual).all(|(&d, &a)| d == -1 || usize::try_from(d).ok() == Some(a));
    if fits {
        Ok(())
    } else {
        Err(format!(
            "shape {actual:?} does not fit the model's {declared:?} (-1 is any size; \
             without the batch dimension when the model batches)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn model(shapes: &[(&str, &[i64])]) -> ModelInfo {
        let inputs = shapes.iter().map(|(n, s)| (n.to_string(), "FP32".to_string(), s.to_vec())).collect();
        ModelInfo::new("m".into(), inputs, vec![]).expect("valid model")
    }

    #[test]
    fn reads_v2_metadata() {
        let metadata = json!({"name": "mlp", "versions": ["1"], "platform": "onnxruntime_onnx",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 784]}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]});
        let model = ModelInfo::from_json("mlp", &metadata).expect("valid");
        assert_eq!(
            model.inputs[0],
            TensorSpec { name: "input".into(), datatype: DataType::Fp32, shape: vec![-1, 784] }
        );
        assert!(model.batching());
        let bad = json!({"name": "x", "inputs": [{"name": "t", "datatype": "BF16", "shape": [1]}]});
        assert!(ModelInfo::from_json("x", &bad).is_err_and(|e| e.to_string().contains("BF16")));
        assert!(ModelInfo::from_json("x", &json!({"name": "x", "inputs": []})).is_err());
    }

    #[test]
    fn sample_shapes_fill_dynamic_dimensions() {
        let seq = model(&[("tokens", &[-1, -1, 8])]);
        let spec = &seq.inputs[0];
        assert_eq!(seq.sample_shape(spec, &[]).expect("ok"), vec![1, 8]);
        let given = [ShapeOverride { name: "tokens".into(), dims: vec![5, 8] }];
        assert_eq!(seq.sample_shape(spec, &given).expect("ok"), vec![5, 8]);
        assert_eq!(seq.request_shape(4, &[5, 8]), vec![4, 5, 8]);
        let wrong = [ShapeOverride { name: "tokens".into(), dims: vec![5, 9] }];
        assert!(seq.sample_shape(spec, &wrong).is_err());

        let fixed = model(&[("a", &[2, -1]), ("b", &[-1])]);
        assert!(!fixed.batching());
        assert_eq!(fixed.sample_shape(&fixed.inputs[0], &[]).expect("ok"), vec![2, 1]);
        assert_eq!(fixed.request_shape(1, &[2, 1]), vec![2, 1]);
    }
}
