//! Input data read from files: samples (one data entry each) to build requests from.

use serde_json::Value;

use crate::values::Values;

/// One data entry: values for some of the model's inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub tensors: Vec<SampleTensor>,
}

/// One input of one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleTensor {
    pub name: String,
    /// The sample's shape (no batch dimension when the model batches), when the file says.
    pub shape: Option<Vec<usize>>,
    pub values: SampleValues,
}

/// Values as the file holds them: JSON (typed by the model's datatype later) or typed (.npy).
#[derive(Debug, Clone, PartialEq)]
pub enum SampleValues {
    Json(Vec<Value>),
    Typed(Values),
}

impl SampleValues {
    pub fn len(&self) -> usize {
        match self {
            SampleValues::Json(v) => v.len(),
            SampleValues::Typed(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads perf_analyzer's input data format:
/// `{"data": [{"INPUT0": [1, 2, 3], "INPUT1": {"content": [..], "shape": [..]}}, ...]}`.
/// Each entry of `data` is one sample; nested arrays are flattened row-major.
pub fn parse_perf_analyzer_json(text: &str) -> Result<Vec<Sample>, String> {
    let root: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let data = root
        .get("data")
        .and_then(Value::as_array)
        .ok_or("expected an object with a \"data\" list (perf_analyzer's --input-data format)")?;
    if data.is_empty() {
        return Err("\"data\" is empty".into());
    }
    data.iter()
        .enumerate()
        .map(|(i, entry)| {
            let entry = entry.as_object().ok_or_else(|| {
                format!("data[{i}] is not an object of inputs (sequence streams are not supported)")
            })?;
            let tensors = entry
                .iter()
                .map(|(name, value)| sample_tensor(name, value).map_err(|e| format!("data[{i}].{name}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Sample { tensors })
        })
        .collect()
}

fn sample_tensor(name: &str, value: &Value) -> Result<SampleTensor, String> {
    let (content, shape) = match value {
        Value::Array(_) => (value, None::<Vec<usize>>),
        Value::Object(o) if o.contains_key("b64") => {
            return Err("base64 (\"b64\") content is not supported; give \"content\" as a list".into())
        }
        Value::Object(o) => {
            let content = o.get("content").ok_or("expected a list, or an object with \"content\"")?;
            let shape = match o.get("shape") {
                None => None,
                Some(s) => Some(
                    s.as_array()
                        .and_then(|dims| {
                            dims.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect()
                        })
                        .ok_or("\"shape\" must be a list of non-negative integers")?,
                ),
            };
            (content, shape)
        }
        other => (other, None),
    };
    let mut flat = Vec::new();
    flatten(content, &mut flat);
    if let Some(shape) = &shape {
        let expected: usize = shape.iter().product();
        if expected != flat.len() {
            return Err(format!(
                "shape {shape:?} holds {expected} elements but the content has {}",
                flat.len()
            ));
        }
    }
    Ok(SampleTensor { name: name.to_string(), shape, values: SampleValues::Json(flat) })
}

fn flatten(value: &Value, out: &mut Vec<Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        scalar => out.push(scalar.clone()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_both_entry_forms() {
        let text = r#"{"data": [
            {"a": [1, 2, 3, 4], "b": {"content": [[1, 2], [3, 4]], "shape": [2, 2]}},
            {"a": [5, 6, 7, 8], "b": {"content": ["x", "y", "z", "w"], "shape": [4]}}
        ]}"#;
        let samples = parse_perf_analyzer_json(text).expect("valid");
        assert_eq!(samples.len(), 2);
        let a = &samples[0].tensors[0];
        assert_eq!((a.name.as_str(), &a.shape), ("a", &None));
        assert_eq!(a.values, SampleValues::Json(vec![json!(1), json!(2), json!(3), json!(4)]));
        let b = &samples[0].tensors[1];
        assert_eq!(b.shape, Some(vec![2, 2]));
        assert_eq!(b.values, SampleValues::Json(vec![json!(1), json!(2), json!(3), json!(4)]));
        assert_eq!(samples[1].tensors[1].values.len(), 4);
    }

    #[test]
    fn rejects_what_it_cannot_read_with_the_place() {
        let err = |text: &str| parse_perf_analyzer_json(text).expect_err(text);
        assert!(err("[1, 2]").contains("\"data\" list"));
        assert!(err(r#"{"data": []}"#).contains("empty"));
        assert!(err(r#"{"data": [[{"a": [1]}]]}"#).contains("sequence"));
        assert!(err(r#"{"data": [{"a": {"b64": "AAAA"}}]}"#).contains("data[0].a: base64"));
        assert!(err(r#"{"data": [{"a": {"content": [1, 2, 3], "shape": [2]}}]}"#)
            .contains("shape [2] holds 2 elements but the content has 3"));
        assert!(err(r#"{"data": [{"a": {"content": [1], "shape": [-1]}}]}"#).contains("non-negative"));
        assert!(err("{").contains("not valid JSON"));
    }
}
