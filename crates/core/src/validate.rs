//! Checks a decoded request against its model's configuration, naming the field at fault.

use std::collections::HashSet;

use crate::{InferError, InferRequest, ModelConfig, TensorSpec};

/// Checks inputs (names, datatypes, shapes, batch size) and requested outputs.
/// Element counts were already checked when the tensors were built.
pub fn validate_request(config: &ModelConfig, request: &InferRequest) -> Result<(), InferError> {
    let invalid = |msg: String| Err(InferError::InvalidInput(msg));
    let mut seen = HashSet::new();
    let mut batch: Option<(usize, &str)> = None;
    for input in &request.inputs {
        let Some(spec) = config.input(&input.name) else {
            return invalid(format!(
                "unknown input '{}' for model '{}' (expected {})",
                input.name,
                config.name,
                names(&config.inputs)
            ));
        };
        if !seen.insert(input.name.as_str()) {
            return invalid(format!("input '{}' is given more than once", input.name));
        }
        let tensor = &input.tensor;
        if tensor.datatype() != spec.data_type {
            return invalid(format!(
                "input '{}' has datatype {} but the model expects {}",
                input.name,
                tensor.datatype(),
                spec.data_type
            ));
        }
        let expected = config.full_dims(spec);
        let shape = tensor.shape();
        let fits = shape.len() == expected.len()
            && shape.iter().zip(&expected).all(|(&got, &want)| want < 0 || got as i64 == want);
        if !fits {
            return invalid(format!(
                "input '{}' has shape {:?} but the model expects {}",
                input.name,
                shape,
                format_dims(&expected)
            ));
        }
        if config.max_batch_size > 0 {
            let size = shape[0];
            if size == 0 || size > config.max_batch_size as usize {
                return invalid(format!(
                    "input '{}' has batch size {} but model '{}' accepts 1 to {}",
                    input.name, size, config.name, config.max_batch_size
                ));
            }
            match batch {
                Some((first, first_name)) if first != size => {
                    return invalid(format!(
                        "input '{}' has batch size {} but input '{}' has {}",
                        input.name, size, first_name, first
                    ));
                }
                _ => batch = Some((size, &input.name)),
            }
        }
    }
    if let Some(missing) = config.inputs.iter().find(|s| !seen.contains(s.name.as_str())) {
        return invalid(format!(
            "missing input '{}' ({} {}) for model '{}'",
            missing.name,
            missing.data_type,
            format_dims(&config.full_dims(missing)),
            config.name
        ));
    }
    if let Some(unknown) = request.outputs.iter().find(|o| config.output(o).is_none()) {
        return invalid(format!(
            "unknown output '{}' requested from model '{}' (expected {})",
            unknown,
            config.name,
            names(&config.outputs)
        ));
    }
    Ok(())
}

fn names(specs: &[TensorSpec]) -> String {
    let list: Vec<String> = specs.iter().map(|s| format!("'{}'", s.name)).collect();
    format!("one of {}", list.join(", "))
}

/// `[-1, 784]` reads as `[N, 784]`: any size where the model is dynamic.
fn format_dims(dims: &[i64]) -> String {
    let parts: Vec<String> =
        dims.iter().map(|&d| if d < 0 { "any".to_string() } else { d.to_string() }).collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DataType, NamedTensor, Tensor, TensorData};

    fn config() -> ModelConfig {
        ModelConfig {
            name: "m".into(),
            max_batch_size: 4,
            inputs: vec![
                TensorSpec { name: "a".into(), data_type: DataType::Fp32, dims: vec![3] },
                TensorSpec { name: "b".into(), data_type: DataType::Int64, dims: vec![-1] },
            ],
            outputs: vec![TensorSpec { name: "y".into(), data_type: DataType::Fp32, dims: vec![3] }],
            ..ModelConfig::default()
        }
    }

    fn tensor(name: &str, datatype: DataType, shape: Vec<usize>) -> NamedTensor {
        let bytes = shape.iter().product::<usize>() * datatype.size().unwrap_or(1);
        let tensor = Tensor::new(datatype, shape, TensorData::Raw(vec![0u8; bytes].into())).expect("valid");
        NamedTensor { name: name.into(), tensor }
    }

    fn check(inputs: Vec<NamedTensor>, outputs: &[&str]) -> Result<(), String> {
        let request = InferRequest {
            inputs,
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            ..InferRequest::default()
        };
        validate_request(&config(), &request).map_err(|e| e.to_string())
    }

    #[test]
    fn accepts_valid_request() {
        let ok = check(
            vec![tensor("a", DataType::Fp32, vec![2, 3]), tensor("b", DataType::Int64, vec![2, 7])],
            &["y"],
        );
        assert_eq!(ok, Ok(()));
    }

    #[test]
    fn names_what_is_wrong() {
        let b = || tensor("b", DataType::Int64, vec![1, 1]);
        let cases: Vec<(Vec<NamedTensor>, &[&str], &str)> = vec![
            (vec![tensor("a", DataType::Fp32, vec![1, 3])], &[], "missing input 'b'"),
            (
                vec![tensor("a", DataType::Fp32, vec![1, 3]), b(), tensor("c", DataType::Fp32, vec![1])],
                &[],
                "unknown input 'c'",
            ),
            (
                vec![tensor("a", DataType::Fp64, vec![1, 3]), b()],
                &[],
                "input 'a' has datatype FP64 but the model expects FP32",
            ),
            (
                vec![tensor("a", DataType::Fp32, vec![1, 4]), b()],
                &[],
                "input 'a' has shape [1, 4] but the model expects [any, 3]",
            ),
            (vec![tensor("a", DataType::Fp32, vec![3]), b()], &[], "input 'a' has shape [3]"),
            (
                vec![tensor("a", DataType::Fp32, vec![5, 3]), tensor("b", DataType::Int64, vec![5, 1])],
                &[],
                "batch size 5 but model 'm' accepts 1 to 4",
            ),
            (
                vec![tensor("a", DataType::Fp32, vec![2, 3]), b()],
                &[],
                "input 'b' has batch size 1 but input 'a' has 2",
            ),
            (
                vec![tensor("a", DataType::Fp32, vec![1, 3]), b(), b()],
                &[],
                "input 'b' is given more than once",
            ),
            (vec![tensor("a", DataType::Fp32, vec![1, 3]), b()], &["z"], "unknown output 'z'"),
        ];
        for (inputs, outputs, expected) in cases {
            let err = check(inputs, outputs).expect_err(expected);
            assert!(err.contains(expected), "'{err}' should contain '{expected}'");
        }
    }
}
