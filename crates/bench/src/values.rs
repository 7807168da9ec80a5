//! Tensor datatypes and element values, and their two encodings: little-endian raw bytes
//! (HTTP binary data, gRPC `raw_input_contents`) and JSON arrays.

use rtserve_wire::{join_bytes_elements, Element};
pub use rtserve_wire::{DataType, ValueKind};
use serde_json::Value;

use crate::rng::SplitMix64;

/// Flat, row-major element values of one kind, wide enough for every datatype of that kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Bool(Vec<bool>),
    Int(Vec<i64>),
    Uint(Vec<u64>),
    Float(Vec<f64>),
    Bytes(Vec<Vec<u8>>),
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::Bool(v) => v.len(),
            Values::Int(v) => v.len(),
            Values::Uint(v) => v.len(),
            Values::Float(v) => v.len(),
            Values::Bytes(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn kind(&self) -> ValueKind {
        match self {
            Values::Bool(_) => ValueKind::Bool,
            Values::Int(_) => ValueKind::Int,
            Values::Uint(_) => ValueKind::Uint,
            Values::Float(_) => ValueKind::Float,
            Values::Bytes(_) => ValueKind::Bytes,
        }
    }

    /// `n` seeded random values for `datatype`: floats uniform in [0, 1), integers in 0..=9,
    /// booleans fair, BYTES short decimal strings.
    pub fn random(datatype: DataType, n: usize, rng: &mut SplitMix64) -> Values {
        match datatype.kind() {
            ValueKind::Bool => Values::Bool((0..n).map(|_| rng.next_u64() & 1 == 1).collect()),
            ValueKind::Int => Values::Int((0..n).map(|_| rng.below(10) as i64).collect()),
            ValueKind::Uint => Values::Uint((0..n).map(|_| rng.below(10)).collect()),
            ValueKind::Float => Values::Float((0..n).map(|_| rng.next_f64()).collect()),
            ValueKind::Bytes => {
                Values::Bytes((0..n).map(|_| rng.below(1_000_000).to_string().into_bytes()).collect())
            }
        }
    }

    /// Values of `datatype` from a flat list of JSON values (numbers, booleans or strings).
    pub fn from_json(datatype: DataType, items: &[Value]) -> Result<Values, String> {
        let wrong = |i: usize, item: &Value| format!("element {i} is {item}, not a {datatype} value");
        Ok(match datatype.kind() {
            ValueKind::Bool => Values::Bool(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        Value::Bool(b) => Ok(*b),
                        Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
                        Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
                        _ => Err(wrong(i, v)),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            ValueKind::Int => Values::Int(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v.as_i64().ok_or_else(|| wrong(i, v)))
                    .collect::<Result<_, _>>()?,
            ),
            ValueKind::Uint => Values::Uint(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v.as_u64().ok_or_else(|| wrong(i, v)))
                    .collect::<Result<_, _>>()?,
            ),
            ValueKind::Float => Values::Float(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v.as_f64().ok_or_else(|| wrong(i, v)))
                    .collect::<Result<_, _>>()?,
            ),
            ValueKind::Bytes => Values::Bytes(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v.as_str().map(|s| s.as_bytes().to_vec()).ok_or_else(|| wrong(i, v)))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    /// Appends `other` (of the same kind) after these values.
    pub fn extend_from(&mut self, other: &Values) -> Result<(), String> {
        match (self, other) {
            (Values::Bool(a), Values::Bool(b)) => a.extend_from_slice(b),
            (Values::Int(a), Values::Int(b)) => a.extend_from_slice(b),
            (Values::Uint(a), Values::Uint(b)) => a.extend_from_slice(b),
            (Values::Float(a), Values::Float(b)) => a.extend_from_slice(b),
            (Values::Bytes(a), Values::Bytes(b)) => a.extend_from_slice(b),
            (a, b) => return Err(format!("cannot join {:?} values to {:?} values", b.kind(), a.kind())),
        }
        Ok(())
    }

    /// Elements `start..end` (in range: the caller slices by a shape it checked).
    pub fn slice(&self, start: usize, end: usize) -> Values {
        match self {
            Values::Bool(v) => Values::Bool(v[start..end].to_vec()),
            Values::Int(v) => Values::Int(v[start..end].to_vec()),
            Values::Uint(v) => Values::Uint(v[start..end].to_vec()),
            Values::Float(v) => Values::Float(v[start..end].to_vec()),
            Values::Bytes(v) => Values::Bytes(v[start..end].to_vec()),
        }
    }

    /// Little-endian raw bytes as `datatype`; BYTES elements get a 4-byte length prefix. Fails
    /// when the kinds differ or a value does not fit the datatype.
    pub fn to_raw(&self, datatype: DataType) -> Result<Vec<u8>, String> {
        /// The wire bytes of `values` narrowed to `U`.
        fn fit<T: Copy + std::fmt::Display, U: Element + TryFrom<T>>(
            values: &[T],
        ) -> Result<Vec<u8>, String> {
            let mut out = Vec::with_capacity(values.len() * U::SIZE);
            for &v in values {
                let narrowed =
                    U::try_from(v).map_err(|_| format!("value {v} does not fit {}", U::DATATYPE))?;
                narrowed.put(&mut out);
            }
            Ok(out)
        }
        /// The wire bytes of `values` converted to `U`.
        fn convert<T: Copy, U: Element>(values: &[T], to: impl Fn(T) -> U) -> Vec<u8> {
            let mut out = Vec::with_capacity(values.len() * U::SIZE);
            for &v in values {
                to(v).put(&mut out);
            }
            out
        }
        match (self, datatype) {
            (Values::Bool(v), DataType::Bool) => Ok(bool::encode(v)),
            (Values::Int(v), DataType::Int8) => fit::<_, i8>(v),
            (Values::Int(v), DataType::Int16) => fit::<_, i16>(v),
            (Values::Int(v), DataType::Int32) => fit::<_, i32>(v),
            (Values::Int(v), DataType::Int64) => Ok(i64::encode(v)),
            (Values::Uint(v), DataType::Uint8) => fit::<_, u8>(v),
            (Values::Uint(v), DataType::Uint16) => fit::<_, u16>(v),
            (Values::Uint(v), DataType::Uint32) => fit::<_, u32>(v),
            (Values::Uint(v), DataType::Uint64) => Ok(u64::encode(v)),
            (Values::Float(v), DataType::Fp16) => Ok(convert(v, half::f16::from_f64)),
            (Values::Float(v), DataType::Fp32) => Ok(convert(v, |x| x as f32)),
            (Values::Float(v), DataType::Fp64) => Ok(f64::encode(v)),
            (Values::Bytes(v), DataType::Bytes) => {
                join_bytes_elements(v.iter().map(Vec::as_slice)).map_err(|e| e.to_string())
            }
            (values, datatype) => Err(format!("{:?} values given for a {datatype} tensor", values.kind())),
        }
    }

    /// A flat JSON array, as the `data` of a KServe v2 JSON tensor. Non-finite floats become
    /// `null` (JSON has no NaN).
    pub fn to_json(&self) -> Value {
        match self {
            Values::Bool(v) => Value::from(v.clone()),
            Values::Int(v) => Value::from(v.clone()),
            Values::Uint(v) => Value::from(v.clone()),
            Values::Float(v) => Value::Array(
                v.iter()
                    .map(|&x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number))
                    .collect(),
            ),
            Values::Bytes(v) => Value::Array(
                v.iter().map(|e| Value::String(String::from_utf8_lossy(e).into_owned())).collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn raw_encoding_is_little_endian_per_datatype() {
        assert_eq!(
            Values::Float(vec![1.0, -2.0]).to_raw(DataType::Fp32),
            Ok([1.0f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat())
        );
        assert_eq!(Values::Float(vec![1.0]).to_raw(DataType::Fp16), Ok(vec![0x00, 0x3c]));
        assert_eq!(Values::Int(vec![-1, 2]).to_raw(DataType::Int16), Ok(vec![0xff, 0xff, 2, 0]));
        assert_eq!(Values::Bool(vec![true, false]).to_raw(DataType::Bool), Ok(vec![1, 0]));
        assert_eq!(
            Values::Bytes(vec![b"ab".to_vec()]).to_raw(DataType::Bytes),
            Ok(vec![2, 0, 0, 0, b'a', b'b'])
        );
        assert_eq!(Values::Int(vec![300]).to_raw(DataType::Int8), Err("value 300 does not fit INT8".into()));
        assert!(Values::Float(vec![1.0]).to_raw(DataType::Int64).is_err());
    }

    #[test]
    fn json_values_are_checked_against_the_datatype() {
        assert_eq!(
            Values::from_json(DataType::Fp32, &[json!(1), json!(0.5)]),
            Ok(Values::Float(vec![1.0, 0.5]))
        );
        assert_eq!(
            Values::from_json(DataType::Bool, &[json!(true), json!(0)]),
            Ok(Values::Bool(vec![true, false]))
        );
        assert_eq!(
            Values::from_json(DataType::Int64, &[json!(1), json!(1.5)]),
            Err("element 1 is 1.5, not a INT64 value".into())
        );
        assert!(Values::from_json(DataType::Uint8, &[json!(-1)]).is_err());
        assert_eq!(Values::Float(vec![0.5, f64::NAN]).to_json(), json!([0.5, null]));
    }

    #[test]
    fn random_values_follow_the_documented_ranges() {
        let mut rng = SplitMix64::new(1);
        let Values::Int(ints) = Values::random(DataType::Int32, 1000, &mut rng) else { panic!("not ints") };
        assert!(ints.iter().all(|v| (0..10).contains(v)));
        let Values::Float(floats) = Values::random(DataType::Fp32, 1000, &mut rng) else {
            panic!("not floats")
        };
        assert!(floats.iter().all(|v| (0.0..1.0).contains(v)));
        let Values::Bool(bools) = Values::random(DataType::Bool, 1000, &mut rng) else { panic!("not bools") };
        assert!(bools.iter().any(|&b| b) && bools.iter().any(|&b| !b));
    }
}
