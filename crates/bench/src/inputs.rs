//! The requests of a run: input tensors from seeded random values or from data files, built
//! once before the load starts and cycled round-robin while it runs.

use std::path::Path;

use crate::config::{InputPlan, InputSource};
use crate::npy::parse_npy;
use crate::rng::SplitMix64;
use crate::samples::{parse_perf_analyzer_json, Sample, SampleTensor, SampleValues};
use crate::target::{check_shape, ModelInfo};
use crate::values::{DataType, Values};
use crate::BenchError;

/// Past this many bytes of input data, a random pool gets fewer distinct requests.
pub const POOL_BYTES_LIMIT: usize = 256 << 20;

/// One input tensor of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct InputTensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    pub values: Values,
}

/// The inputs of one request, in the model's input order.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestInputs {
    pub tensors: Vec<InputTensor>,
}

/// Samples read from the input data files, and where they came from (for messages).
#[derive(Debug, Clone)]
pub struct SampleSet {
    pub origin: String,
    pub samples: Vec<Sample>,
}

/// Reads the files `source` names; `None` for random data.
pub fn load_samples(source: &InputSource) -> Result<Option<SampleSet>, BenchError> {
    match source {
        InputSource::Random => Ok(None),
        InputSource::Json(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| input_error(path, e.to_string()))?;
            let samples = parse_perf_analyzer_json(&text).map_err(|e| input_error(path, e))?;
            Ok(Some(SampleSet { origin: path.display().to_string(), samples }))
        }
        InputSource::Npy(files) => {
            let mut columns = Vec::new();
            for (name, path) in files {
                let bytes = std::fs::read(path).map_err(|e| input_error(path, e.to_string()))?;
                let array = parse_npy(&bytes).map_err(|e| input_error(path, e))?;
                let Some((&rows, row_shape)) = array.shape.split_first() else {
                    return Err(input_error(
                        path,
                        "a scalar array has no samples; its first axis indexes samples".into(),
                    ));
                };
                if rows == 0 {
                    return Err(input_error(path, "the array has no samples (first axis is 0)".into()));
                }
                let per_row = row_shape.iter().product::<usize>();
                let tensors: Vec<SampleTensor> = (0..rows)
                    .map(|r| SampleTensor {
                        name: name.clone(),
                        shape: Some(row_shape.to_vec()),
                        values: SampleValues::Typed(array.values.slice(r * per_row, (r + 1) * per_row)),
                    })
                    .collect();
                columns.push((path.clone(), tensors));
            }
            let rows = columns.first().map_or(0, |(_, t)| t.len());
            if let Some((path, t)) = columns.iter().find(|(_, t)| t.len() != rows) {
                return Err(input_error(
                    path,
                    format!(
                        "{} samples, but another .npy file has {rows}: all need the same first axis",
                        t.len()
                    ),
                ));
            }
            let mut samples: Vec<Sample> = (0..rows).map(|_| Sample { tensors: Vec::new() }).collect();
            for (_, tensors) in columns.iter_mut() {
                for (sample, tensor) in samples.iter_mut().zip(tensors.drain(..)) {
                    sample.tensors.push(tensor);
                }
            }
            let origin = files.iter().map(|(_, p)| p.display().to_string()).collect::<Vec<_>>().join(", ");
            Ok(Some(SampleSet { origin, samples }))
        }
    }
}

fn input_error(path: &Path, reason: String) -> BenchError {
    BenchError::InputData { path: path.to_path_buf(), reason }
}

/// One sample's tensor, checked and typed for the model: its shape and values.
type TypedTensor = (Vec<usize>, Values);

/// Builds the requests of the pool one at a time, so that only their encoded form is kept.
#[derive(Debug)]
pub struct RequestFactory<'m> {
    model: &'m ModelInfo,
    /// Samples per request: the batch when the model batches, else 1.
    rows: usize,
    /// Per model input: the shape of one random sample.
    sample_shapes: Vec<Vec<usize>>,
    /// Per sample, per model input: the file's tensor, or `None` for random values.
    samples: Vec<Vec<Option<TypedTensor>>>,
    count: usize,
    rng: SplitMix64,
}

impl<'m> RequestFactory<'m> {
    pub fn new(model: &'m ModelInfo, plan: &InputPlan, set: Option<SampleSet>) -> Result<Self, BenchError> {
        if !model.batching() && plan.batch > 1 {
            return Err(BenchError::Inputs(format!(
                "--batch {}: model '{}' does not batch (not every input's first dimension is -1)",
                plan.batch, model.name
            )));
        }
        if let Some(unknown) = plan.shapes.iter().find(|s| model.input(&s.name).is_none()) {
            return Err(BenchError::Inputs(format!(
                "--shape names '{}', which is not an input of '{}' (inputs: {})",
                unknown.name,
                model.name,
                model.input_names()
            )));
        }
        let rows = if model.batching() { plan.batch } else { 1 };
        let sample_shapes = model
            .inputs
            .iter()
            .map(|i| model.sample_shape(i, &plan.shapes))
            .collect::<Result<Vec<_>, _>>()?;
        let mut factory = RequestFactory {
            model,
            rows,
            sample_shapes,
            samples: Vec::new(),
            count: plan.distinct,
            rng: SplitMix64::new(plan.seed),
        };
        match set {
            None => {
                let bytes = factory.request_bytes().max(1);
                if plan.distinct.saturating_mul(bytes) > POOL_BYTES_LIMIT {
                    factory.count = (POOL_BYTES_LIMIT / bytes).max(1);
                    tracing::warn!(
                        "--distinct {}: {} requests of {bytes} bytes exceed {} MiB; using {} distinct requests",
                        plan.distinct,
                        plan.distinct,
                        POOL_BYTES_LIMIT >> 20,
                        factory.count
                    );
                }
            }
            Some(set) => {
                factory.samples = type_samples(model, &factory.sample_shapes, &set)?;
                factory.count = factory.samples.len().div_ceil(rows);
            }
        }
        Ok(factory)
    }

    /// How many distinct requests the pool holds.
    pub fn count(&self) -> usize {
        self.count
    }

    /// About how many bytes of input data one random request carries.
    fn request_bytes(&self) -> usize {
        self.model
            .inputs
            .iter()
            .zip(&self.sample_shapes)
            .map(|(input, shape)| {
                shape.iter().product::<usize>() * self.rows * input.datatype.size().unwrap_or(10)
            })
            .sum()
    }

    /// Request `index` of the pool (`0..count()`): samples `index × rows ..` of the data,
    /// cycled, or fresh random values.
    pub fn make(&mut self, index: usize) -> Result<RequestInputs, BenchError> {
        let mut tensors = Vec::with_capacity(self.model.inputs.len());
        for (k, input) in self.model.inputs.iter().enumerate() {
            let from_file = self.samples.first().is_some_and(|s| s[k].is_some());
            let (sample_shape, values) = if from_file {
                self.join_samples(index, k, &input.name)?
            } else {
                let n = self.sample_shapes[k].iter().product::<usize>() * self.rows;
                (self.sample_shapes[k].clone(), Values::random(input.datatype, n, &mut self.rng))
            };
            tensors.push(InputTensor {
                name: input.name.clone(),
                datatype: input.datatype,
                shape: self.model.request_shape(self.rows, &sample_shape),
                values,
            });
        }
        Ok(RequestInputs { tensors })
    }

    /// The `rows` samples of request `index` for input `k`, joined along the batch dimension.
    fn join_samples(&self, index: usize, k: usize, name: &str) -> Result<TypedTensor, BenchError> {
        let n = self.samples.len();
        let mut joined: Option<TypedTensor> = None;
        for r in 0..self.rows {
            let i = (index * self.rows + r) % n;
            let Some((shape, values)) = &self.samples[i][k] else {
                return Err(BenchError::Inputs(format!("sample {i} has no input '{name}' but sample 0 has")));
            };
            match &mut joined {
                None => joined = Some((shape.clone(), values.clone())),
                Some((first, all)) if first == shape => {
                    all.extend_from(values).map_err(BenchError::Inputs)?
                }
                Some((first, _)) => {
                    return Err(BenchError::Inputs(format!(
                        "input '{name}': samples of shapes {first:?} and {shape:?} cannot share a batch"
                    )))
                }
            }
        }
        joined.ok_or_else(|| BenchError::Inputs("no samples".into()))
    }
}

/// Checks each sample against the model and gives its values the input's datatype.
fn type_samples(
    model: &ModelInfo,
    sample_shapes: &[Vec<usize>],
    set: &SampleSet,
) -> Result<Vec<Vec<Option<TypedTensor>>>, BenchError> {
    let bad = |i: usize, name: &str, e: String| {
        BenchError::Inputs(format!("{} sample {i}, input '{name}': {e}", set.origin))
    };
    let mut typed = Vec::with_capacity(set.samples.len());
    for (i, sample) in set.samples.iter().enumerate() {
        let mut row: Vec<Option<TypedTensor>> = vec![None; model.inputs.len()];
        for tensor in &sample.tensors {
            let k = model.inputs.iter().position(|input| input.name == tensor.name).ok_or_else(|| {
                bad(
                    i,
                    &tensor.name,
                    format!("not an input of '{}' (inputs: {})", model.name, model.input_names()),
                )
            })?;
            let input = &model.inputs[k];
            let values = match &tensor.values {
                SampleValues::Json(items) => {
                    Values::from_json(input.datatype, items).map_err(|e| bad(i, &input.name, e))?
                }
                SampleValues::Typed(values) if values.kind() == input.datatype.kind() => values.clone(),
                SampleValues::Typed(values) => {
                    return Err(bad(
                        i,
                        &input.name,
                        format!("{:?} data for a {} input", values.kind(), input.datatype),
                    ))
                }
            };
            let shape = tensor.shape.clone().unwrap_or_else(|| sample_shapes[k].clone());
            let declared = if model.batching() { &input.shape[1..] } else { &input.shape[..] };
            check_shape(declared, &shape).map_err(|e| bad(i, &input.name, e))?;
            let expected: usize = shape.iter().product();
            if values.len() != expected {
                return Err(bad(
                    i,
                    &input.name,
                    format!("{} elements, but shape {shape:?} holds {expected}", values.len()),
                ));
            }
            row[k] = Some((shape, values));
        }
        if let Some(first) = typed.first() {
            let covered = |r: &Vec<Option<TypedTensor>>| r.iter().map(Option::is_some).collect::<Vec<_>>();
            if covered(first) != covered(&row) {
                return Err(BenchError::Inputs(format!(
                    "{} sample {i} gives other inputs than sample 0; every sample must name the same inputs",
                    set.origin
                )));
            }
        }
        typed.push(row);
    }
    Ok(typed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ShapeOverride;

    fn model(inputs: &[(&str, &str, &[i64])]) -> ModelInfo {
        let inputs = inputs.iter().map(|(n, d, s)| (n.to_string(), d.to_string(), s.to_vec())).collect();
        ModelInfo::new("m".into(), inputs, vec![]).expect("valid")
    }

    fn plan(batch: usize, distinct: usize) -> InputPlan {
        InputPlan { batch, shapes: vec![], source: InputSource::Random, distinct, seed: 5 }
    }

    fn json_set(text: &str) -> SampleSet {
        SampleSet { origin: "in.json".into(), samples: parse_perf_analyzer_json(text).expect("valid json") }
    }

    #[test]
    fn random_requests_have_the_batch_and_are_reproducible() {
        let m = model(&[("x", "FP32", &[-1, 4]), ("mask", "BOOL", &[-1, 4])]);
        let mut f = RequestFactory::new(&m, &plan(3, 16), None).expect("ok");
        assert_eq!(f.count(), 16);
        let first = f.make(0).expect("ok");
        assert_eq!(first.tensors[0].shape, vec![3, 4]);
        assert_eq!(first.tensors[0].values.len(), 12);
        assert_eq!(first.tensors[1].datatype, DataType::Bool);
        let second = f.make(1).expect("ok");
        assert_ne!(first, second);
        let again = RequestFactory::new(&m, &plan(3, 16), None).expect("ok").make(0).expect("ok");
        assert_eq!(first, again);
    }

    #[test]
    fn a_huge_random_pool_is_cut_to_the_memory_limit() {
        let m = model(&[("x", "FP32", &[-1, 1 << 20])]);
        let f = RequestFactory::new(&m, &plan(1, 1024), None).expect("ok");
        assert_eq!(f.count(), POOL_BYTES_LIMIT / (4 << 20));
    }

    #[test]
    fn shapes_and_batches_are_checked() {
        let fixed = model(&[("x", "FP32", &[2, 4])]);
        assert!(RequestFactory::new(&fixed, &plan(2, 1), None)
            .is_err_and(|e| e.to_string().contains("does not batch")));
        let seq = model(&[("tokens", "FP32", &[-1, -1, 8])]);
        let mut p = plan(2, 1);
        p.shapes = vec![ShapeOverride { name: "tokens".into(), dims: vec![5, 8] }];
        let request = RequestFactory::new(&seq, &p, None).expect("ok").make(0).expect("ok");
        assert_eq!(request.tensors[0].shape, vec![2, 5, 8]);
        p.shapes = vec![ShapeOverride { name: "nope".into(), dims: vec![1] }];
        assert!(RequestFactory::new(&seq, &p, None).is_err_and(|e| e.to_string().contains("'nope'")));
    }

    #[test]
    fn file_samples_are_batched_in_order_and_cycled() {
        let m = model(&[("a", "INT64", &[-1, 2]), ("b", "FP32", &[-1, 1])]);
        // Input b is not in the file: it gets random values.
        let set =
            json_set(r#"{"data": [{"a": [1, 2]}, {"a": [3, 4]}, {"a": {"content": [5, 6], "shape": [2]}}]}"#);
        let mut f = RequestFactory::new(&m, &plan(2, 99), Some(set)).expect("ok");
        assert_eq!(f.count(), 2);
        let r0 = f.make(0).expect("ok");
        assert_eq!(r0.tensors[0].shape, vec![2, 2]);
        assert_eq!(r0.tensors[0].values, Values::Int(vec![1, 2, 3, 4]));
        assert_eq!(r0.tensors[1].shape, vec![2, 1]);
        assert_eq!(f.make(1).expect("ok").tensors[0].values, Values::Int(vec![5, 6, 1, 2]));
    }

    #[test]
    fn file_samples_that_do_not_fit_are_named() {
        let m = model(&[("a", "INT64", &[-1, 2])]);
        let err = |text: &str| {
            RequestFactory::new(&m, &plan(1, 1), Some(json_set(text))).expect_err(text).to_string()
        };
        assert!(err(r#"{"data": [{"z": [1, 2]}]}"#).contains("in.json sample 0, input 'z': not an input"));
        assert!(err(r#"{"data": [{"a": [1, 2, 3]}]}"#).contains("3 elements, but shape [2] holds 2"));
        assert!(err(r#"{"data": [{"a": [1.5, 2]}]}"#).contains("not a INT64 value"));
        assert!(err(r#"{"data": [{"a": {"content": [1, 2, 3], "shape": [3]}}]}"#).contains("does not fit"));
        let typed = SampleSet {
            origin: "a.npy".into(),
            samples: vec![Sample {
                tensors: vec![SampleTensor {
                    name: "a".into(),
                    shape: Some(vec![2]),
                    values: SampleValues::Typed(Values::Float(vec![1.0, 2.0])),
                }],
            }],
        };
        let e = RequestFactory::new(&m, &plan(1, 1), Some(typed)).expect_err("float for int").to_string();
        assert!(e.contains("Float data for a INT64 input"), "{e}");
    }

    #[test]
    fn npy_files_split_into_samples_along_the_first_axis() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = format!("{}/testdata/f32_2x3.npy", env!("CARGO_MANIFEST_DIR"));
        let source = InputSource::Npy(vec![("x".into(), src.into())]);
        let set = load_samples(&source).expect("ok").expect("some");
        assert_eq!(set.samples.len(), 2);
        assert_eq!(
            set.samples[1].tensors[0].values,
            SampleValues::Typed(Values::Float(vec![1.5, 2.0, -2.5]))
        );
        let m = model(&[("x", "FP32", &[-1, 3])]);
        let mut f = RequestFactory::new(&m, &plan(2, 1), Some(set)).expect("ok");
        assert_eq!(f.make(0).expect("ok").tensors[0].shape, vec![2, 3]);
        let missing = InputSource::Npy(vec![("x".into(), dir.path().join("none.npy"))]);
        assert!(load_samples(&missing).is_err_and(|e| e.to_string().contains("none.npy")));
    }
}
