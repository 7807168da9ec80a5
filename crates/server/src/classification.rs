//! Post-processing: Triton's classification extension (an output requested with
//! `parameters: {"classification": K}` comes back as the top K, as BYTES strings
//! `"score:index:label"`), labels from the model folder's `labels.txt`, optional softmax.

use std::path::Path;

use bytes::Bytes;
use half::f16;
use rtserve_core::wire::Element;
use rtserve_core::{DataType, NamedTensor, Parameter, Tensor, TensorData};

use crate::ServerError;

/// The labels file in a model folder, one class name a line, in index order (Triton's layout).
pub const LABELS_FILE: &str = "labels.txt";

/// Reads `<dir>/labels.txt`, if there is one.
pub fn read_labels(dir: &Path) -> Result<Option<Vec<String>>, String> {
    let path = dir.join(LABELS_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(text.lines().map(|l| l.trim_end_matches('\r').to_string()).collect()))
}

/// One output to classify.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    pub output: String,
    /// How many classes to return, highest score first.
    pub k: usize,
    /// Scores are softmax probabilities rather than the raw values.
    pub softmax: bool,
}

/// One class of a top-k answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub index: usize,
    pub score: f32,
}

/// The `k` highest scores, highest first (ties: lower index first), softmaxed first if asked.
pub fn top_k(scores: &[f32], k: usize, softmax: bool) -> Vec<Scored> {
    let values = if softmax { softmax_of(scores) } else { scores.to_vec() };
    let mut order: Vec<usize> = (0..values.len()).collect();
    let by_score = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    let k = k.min(order.len());
    if k < order.len() && k > 0 {
        order.select_nth_unstable_by(k - 1, by_score);
    }
    order.truncate(k);
    order.sort_unstable_by(by_score);
    order.into_iter().map(|index| Scored { index, score: values[index] }).collect()
}

fn softmax_of(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f64> = scores.iter().map(|s| f64::from(s - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|e| (e / sum) as f32).collect()
}

/// An output's values, one row per batch item (one row when `batched` is false).
pub fn score_rows(tensor: &NamedTensor, batched: bool) -> Result<Vec<Vec<f32>>, ServerError> {
    let t = &tensor.tensor;
    let TensorData::Raw(raw) = t.data() else {
        return Err(not_scores(tensor));
    };
    let values: Vec<f32> = match t.datatype() {
        DataType::Fp32 => f32::decode(raw),
        DataType::Fp16 => f16::decode_iter(raw).map(f16::to_f32).collect(),
        DataType::Fp64 => f64::decode_iter(raw).map(|v| v as f32).collect(),
        _ => return Err(not_scores(tensor)),
    };
    let rows = if batched { t.shape().first().copied().unwrap_or(1).max(1) } else { 1 };
    let per_row = values.len() / rows;
    Ok(values.chunks(per_row.max(1)).map(<[f32]>::to_vec).collect())
}

fn not_scores(tensor: &NamedTensor) -> ServerError {
    ServerError::BadRequest(format!(
        "output '{}' is {}; classification needs FP32, FP16 or FP64 scores",
        tensor.name,
        tensor.tensor.datatype()
    ))
}

/// Replaces each classified output by its top K as BYTES `"score:index:label"` (`"score:index"`
/// past the end of the labels), shape `[batch, K]` (`[K]` when the model does not batch).
pub fn classify(
    outputs: &mut [NamedTensor],
    requested: &[Classification],
    labels: Option<&[String]>,
    batched: bool,
) -> Result<(), ServerError> {
    for wanted in requested {
        let Some(output) = outputs.iter_mut().find(|o| o.name == wanted.output) else {
            return Err(ServerError::BadRequest(format!(
                "classification asked for output '{}', which the request does not return",
                wanted.output
            )));
        };
        let rows = score_rows(output, batched)?;
        let mut strings = Vec::new();
        let mut k = 0;
        for row in &rows {
            let top = top_k(row, wanted.k, wanted.softmax);
            k = top.len();
            strings.extend(top.into_iter().map(|s| Bytes::from(entry(&s, labels))));
        }
        let shape = if batched { vec![rows.len(), k] } else { vec![k] };
        output.tensor = Tensor::new(DataType::Bytes, shape, TensorData::Strings(strings))
            .map_err(|e| ServerError::Internal(format!("classification output: {e}")))?;
    }
    Ok(())
}

/// `"score:index:label"`, the score printed as C's `%f` (Triton's format).
fn entry(scored: &Scored, labels: Option<&[String]>) -> String {
    match labels.and_then(|l| l.get(scored.index)) {
        Some(label) => format!("{:.6}:{}:{label}", scored.score, scored.index),
        None => format!("{:.6}:{}", scored.score, scored.index),
    }
}

/// The output parameter that asks for classification (Triton's name).
pub const CLASSIFICATION_PARAMETER: &str = "classification";
/// rtserve's output parameter that turns the scores into softmax probabilities.
pub const SOFTMAX_PARAMETER: &str = "softmax";

/// The classification an output's parameters ask for, if any.
pub fn requested<'a>(
    output: &str,
    mut parameter: impl FnMut(&str) -> Option<&'a Parameter>,
) -> Result<Option<Classification>, ServerError> {
    let k = match parameter(CLASSIFICATION_PARAMETER) {
        None => return Ok(None),
        Some(Parameter::Int(k)) if *k > 0 => usize::try_from(*k).unwrap_or(usize::MAX),
        Some(other) => {
            return Err(ServerError::BadRequest(format!(
                "output '{output}': parameter 'classification' must be a positive integer, not {other:?}"
            )))
        }
    };
    let softmax = match parameter(SOFTMAX_PARAMETER) {
        None => false,
        Some(Parameter::Bool(b)) => *b,
        Some(other) => {
            return Err(ServerError::BadRequest(format!(
                "output '{output}': parameter 'softmax' must be true or false, not {other:?}"
            )))
        }
    };
    Ok(Some(Classification { output: output.to_string(), k, softmax }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_score_then_index() {
        let top = top_k(&[0.1, 3.0, -1.0, 3.0, 2.0], 3, false);
        let indices: Vec<usize> = top.iter().map(|s| s.index).collect();
        assert_eq!(indices, [1, 3, 4]);
        assert_eq!(top_k(&[1.0, 2.0], 10, false).len(), 2);
        assert!(top_k(&[1.0, 2.0], 0, false).is_empty());
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let top = top_k(&[1.0, 2.0, 3.0], 3, true);
        let sum: f32 = top.iter().map(|s| s.score).sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert!((top[0].score - 0.665_240_9).abs() < 1e-6);
        assert_eq!(top[0].index, 2);
    }

    #[test]
    fn classifies_a_batch_into_triton_strings() {
        let labels = vec!["cat".to_string(), "dog".to_string()];
        let tensor = Tensor::from_f32(vec![2, 3], &[0.5, 1.5, 0.0, 2.0, 1.0, 0.25]).expect("valid");
        let mut outputs = vec![NamedTensor { name: "logits".into(), tensor }];
        let wanted = [Classification { output: "logits".into(), k: 2, softmax: false }];
        classify(&mut outputs, &wanted, Some(&labels), true).expect("classifies");
        assert_eq!(outputs[0].tensor.shape(), [2, 2]);
        let TensorData::Strings(items) = outputs[0].tensor.data() else { panic!("BYTES") };
        let items: Vec<&[u8]> = items.iter().map(|b| b.as_ref()).collect();
        assert_eq!(items, [&b"1.500000:1:dog"[..], b"0.500000:0:cat", b"2.000000:0:cat", b"1.000000:1:dog"]);
        let missing = [Classification { output: "probs".into(), k: 1, softmax: false }];
        let err = classify(&mut outputs, &missing, None, true).expect_err("missing").to_string();
        assert!(err.contains("output 'probs'"), "{err}");
    }

    #[test]
    fn label_indices_past_the_file_have_no_label() {
        let tensor = Tensor::from_f32(vec![3], &[0.0, 0.0, 9.0]).expect("valid");
        let mut outputs = vec![NamedTensor { name: "y".into(), tensor }];
        let wanted = [Classification { output: "y".into(), k: 1, softmax: false }];
        classify(&mut outputs, &wanted, Some(&["a".to_string()]), false).expect("classifies");
        assert_eq!(outputs[0].tensor.data(), &TensorData::Strings(vec![Bytes::from("9.000000:2")]));
    }
}
