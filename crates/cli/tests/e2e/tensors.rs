//! Tensors as the tests see them, the stored NumPy reference, and the tolerance they are held to.

use std::path::Path;

use rtserve_server::proto::InferTensorContents;
use serde_json::{json, Value};

/// Every model of the example repository; each has `tests/data/expected/<model>.json`.
pub const MODELS: [&str; 5] = ["mlp", "cnn", "two_io", "int_bool", "dynamic_seq"];

/// Absolute tolerance for FP32 outputs.
///
/// The reference is an independent NumPy forward pass over the same weights; the engines sum in
/// FP32 in their own order (784-term dot products in the MLP), so results differ from NumPy by a
/// few ULPs of the partial sums. `|got - want| <= ATOL + RTOL * |want|` admits that and nothing
/// like a wrong weight, layout or activation. INT64 and BOOL outputs must match exactly.
pub const ATOL: f32 = 1e-5;
/// Relative tolerance for FP32 outputs; see [`ATOL`].
pub const RTOL: f32 = 1e-4;

/// The element values of a tensor, in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Fp32(Vec<f32>),
    Int64(Vec<i64>),
    Bool(Vec<bool>),
    Int8(Vec<i8>),
}

/// A named tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub values: Values,
}

impl Tensor {
    /// Reads `{"name", "datatype", "shape", "data"}` (a KServe v2 JSON tensor).
    pub fn from_json(value: &Value) -> Tensor {
        let name = value["name"].as_str().expect("tensor name").to_string();
        let datatype = value["datatype"].as_str().expect("tensor datatype").to_string();
        let shape = value["shape"]
            .as_array()
            .expect("tensor shape")
            .iter()
            .map(|d| d.as_i64().expect("integer dimension"))
            .collect();
        let data = value["data"].as_array().unwrap_or_else(|| panic!("tensor '{name}' has no data array"));
        let values = match datatype.as_str() {
            "FP32" => Values::Fp32(data.iter().map(|v| v.as_f64().expect("number") as f32).collect()),
            "INT64" => Values::Int64(data.iter().map(|v| v.as_i64().expect("integer")).collect()),
            "BOOL" => Values::Bool(data.iter().map(|v| v.as_bool().expect("boolean")).collect()),
            "INT8" => Values::Int8(
                data.iter().map(|v| i8::try_from(v.as_i64().expect("integer")).expect("int8")).collect(),
            ),
            other => panic!("tensor '{name}': datatype {other} is not used by the test models"),
        };
        Tensor { name, datatype, shape, values }
    }

    /// Reads packed little-endian elements (binary extension, `raw_output_contents`).
    pub fn from_raw(name: &str, datatype: &str, shape: Vec<i64>, raw: &[u8]) -> Tensor {
        let values = match datatype {
            "FP32" => Values::Fp32(
                raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect(),
            ),
            "INT64" => Values::Int64(
                raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
            ),
            "BOOL" => Values::Bool(
                raw.iter()
                    .map(|&b| {
                        assert!(b <= 1, "tensor '{name}': BOOL byte {b} is neither 0 nor 1");
                        b == 1
                    })
                    .collect(),
            ),
            "INT8" => Values::Int8(raw.iter().map(|&b| b as i8).collect()),
            other => panic!("tensor '{name}': datatype {other} is not used by the test models"),
        };
        let tensor = Tensor { name: name.to_string(), datatype: datatype.to_string(), shape, values };
        assert_eq!(
            tensor.to_raw().len(),
            raw.len(),
            "tensor '{name}': {} raw bytes do not split evenly",
            raw.len()
        );
        tensor
    }

    /// The tensor as a JSON input: `{"name", "datatype", "shape", "data"}`.
    pub fn to_json(&self) -> Value {
        let data = match &self.values {
            Values::Fp32(v) => json!(v),
            Values::Int64(v) => json!(v),
            Values::Bool(v) => json!(v),
            Values::Int8(v) => json!(v),
        };
        json!({ "name": self.name, "datatype": self.datatype, "shape": self.shape, "data": data })
    }

    /// Packed little-endian elements.
    pub fn to_raw(&self) -> Vec<u8> {
        match &self.values {
            Values::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Values::Int64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Values::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
            Values::Int8(v) => v.iter().map(|&x| x as u8).collect(),
        }
    }

    /// The values as gRPC typed contents.
    pub fn to_contents(&self) -> InferTensorContents {
        match &self.values {
            Values::Fp32(v) => InferTensorContents { fp32_contents: v.clone(), ..Default::default() },
            Values::Int64(v) => InferTensorContents { int64_contents: v.clone(), ..Default::default() },
            Values::Bool(v) => InferTensorContents { bool_contents: v.clone(), ..Default::default() },
            Values::Int8(v) => InferTensorContents {
                int_contents: v.iter().map(|&x| i32::from(x)).collect(),
                ..Default::default()
            },
        }
    }
}

/// One model's fixed inputs and the outputs NumPy computed for them.
#[derive(Debug, Clone)]
pub struct Case {
    pub model: String,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
}

/// Loads `tests/data/expected/<model>.json`.
pub fn case(model: &str) -> Case {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/data/expected/{model}.json"));
    case_from_file(model, &path)
}

/// Loads a case in the same format from `path`, for `model`.
pub fn case_from_file(model: &str, path: &Path) -> Case {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let value: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    let tensors = |key: &str| -> Vec<Tensor> {
        value[key]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no {key}", path.display()))
            .iter()
            .map(Tensor::from_json)
            .collect()
    };
    Case { model: model.to_string(), inputs: tensors("inputs"), outputs: tensors("outputs") }
}

/// Every model's case.
pub fn all_cases() -> Vec<Case> {
    MODELS.iter().map(|m| case(m)).collect()
}

fn find<'a>(tensors: &'a [Tensor], name: &str, what: &str) -> &'a Tensor {
    tensors
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("{what}: no output '{name}' in {tensors:?}"))
}

/// Asserts that `got` holds exactly the reference outputs of `case`: same names, datatypes and
/// shapes, FP32 values within [`ATOL`] + [`RTOL`], other values equal. `how` names the path taken.
pub fn assert_matches_reference(case: &Case, got: &[Tensor], how: &str) {
    let what = format!("{} over {how}", case.model);
    assert_eq!(got.len(), case.outputs.len(), "{what}: output count");
    for want in &case.outputs {
        let tensor = find(got, &want.name, &what);
        let label = format!("{what}, output '{}'", want.name);
        assert_eq!(tensor.datatype, want.datatype, "{label}: datatype");
        assert_eq!(tensor.shape, want.shape, "{label}: shape");
        match (&tensor.values, &want.values) {
            (Values::Fp32(got), Values::Fp32(want)) => {
                assert_eq!(got.len(), want.len(), "{label}: element count");
                for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
                    let bound = ATOL + RTOL * w.abs();
                    assert!(
                        (g - w).abs() <= bound,
                        "{label}: element {i} is {g}, reference {w} (allowed ±{bound})"
                    );
                }
            }
            // One quantization step, issue 17's measure against LiteRT.
            (Values::Int8(got), Values::Int8(want)) => {
                assert_eq!(got.len(), want.len(), "{label}: element count");
                for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (i16::from(g) - i16::from(w)).abs() <= 1,
                        "{label}: element {i} is {g}, reference {w}"
                    );
                }
            }
            (got, want) => assert_eq!(got, want, "{label}: values"),
        }
    }
}

/// Asserts that two answers carry bit-identical outputs (same names, datatypes, shapes, bytes).
pub fn assert_bitwise_equal(a: &[Tensor], b: &[Tensor], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: output count");
    for x in a {
        let y = find(b, &x.name, what);
        assert_eq!((&x.datatype, &x.shape), (&y.datatype, &y.shape), "{what}, output '{}'", x.name);
        assert!(x.to_raw() == y.to_raw(), "{what}, output '{}': values differ:\n{x:?}\n{y:?}", x.name);
    }
}

/// `n` distinct one-row MLP inputs: the reference case's two rows, scaled by 1 + 0.1 i.
pub fn mlp_rows(n: usize) -> Vec<Vec<Tensor>> {
    let reference = &case("mlp").inputs[0];
    let Values::Fp32(values) = &reference.values else { panic!("the MLP input is FP32") };
    let width = values.len() / reference.shape[0] as usize;
    (0..n)
        .map(|i| {
            let row = &values[(i % 2) * width..(i % 2 + 1) * width];
            let scale = 1.0 + 0.1 * i as f32;
            let values = Values::Fp32(row.iter().map(|v| v * scale).collect());
            vec![Tensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![1, width as i64],
                values,
            }]
        })
        .collect()
}
