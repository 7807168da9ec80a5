//! Tensor datatypes and element values, and their two encodings: little-endian raw bytes
//! (HTTP binary data, gRPC `raw_input_contents`) and JSON arrays.

use serde_json::Value;

use crate::rng::SplitMix64;

/// A protocol datatype (`FP32`, `INT64`, ...). BF16 is not supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
}

/// The kind of values a datatype holds; [`Values`] has one variant per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Bool,
    Int,
    Uint,
    Float,
    Bytes,
}

impl DataType {
    const ALL: [DataType; 13] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// The protocol name (`"FP32"`), or `None` for a datatype this tool does not send.
    pub fn parse(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Bytes per element; BYTES elements are variable (4-byte length prefix + content).
    pub fn element_size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => Some(1),
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 => Some(2),
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes => None,
        }
    }

    pub fn kind(self) -> ValueKind {
        match self {
            DataType::Bool => ValueKind::Bool,
            DataType::Uint8 | DataType::Uint16 | DataType::Uint32 | DataType::Uint64 => ValueKind::Uint,
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => ValueKind::Int,
            DataType::Fp16 | DataType::Fp32 | DataType::Fp64 => ValueKind::Float,
            DataType::Bytes => ValueKind::Bytes,
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
        fn fit<T, U: TryFrom<T>>(
            values: &[T],
            datatype: DataType,
            le: impl Fn(U) -> Vec<u8>,
        ) -> Result<Vec<u8>, String>
        where
            T: Copy + std::fmt::Display,
        {
            let mut out = Vec::with_capacity(values.len() * datatype.element_size().unwrap_or(1));
            for &v in values {
                let narrowed = U::try_from(v).map_err(|_| format!("value {v} does not fit {datatype}"))?;
                out.extend_from_slice(&le(narrowed));
            }
            Ok(out)
        }
        match (self, datatype) {
            (Values::Bool(v), DataType::Bool) => Ok(v.iter().map(|&b| u8::from(b)).collect()),
            (Values::Int(v), DataType::Int8) => fit(v, datatype, |x: i8| x.to_le_bytes().to_vec()),
            (Values::Int(v), DataType::Int16) => fit(v, datatype, |x: i16| x.to_le_bytes().to_vec()),
            (Values::Int(v), DataType::Int32) => fit(v, datatype, |x: i32| x.to_le_bytes().to_vec()),
            (Values::Int(v), DataType::Int64) => fit(v, datatype, |x: i64| x.to_le_bytes().to_vec()),
            (Values::Uint(v), DataType::Uint8) => fit(v, datatype, |x: u8| x.to_le_bytes().to_vec()),
            (Values::Uint(v), DataType::Uint16) => fit(v, datatype, |x: u16| x.to_le_bytes().to_vec()),
            (Values::Uint(v), DataType::Uint32) => fit(v, datatype, |x: u32| x.to_le_bytes().to_vec()),
            (Values::Uint(v), DataType::Uint64) => fit(v, datatype, |x: u64| x.to_le_bytes().to_vec()),
            (Values::Float(v), DataType::Fp16) => {
                Ok(v.iter().flat_map(|&x| half::f16::from_f64(x).to_le_bytes()).collect())
            }
            (Values::Float(v), DataType::Fp32) => {
                Ok(v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect())
            }
            (Values::Float(v), DataType::Fp64) => Ok(v.iter().flat_map(|&x| x.to_le_bytes()).collect()),
            (Values::Bytes(v), DataType::Bytes) => {
                let mut out = Vec::with_capacity(v.iter().map(|e| e.len() + 4).sum());
                for element in v {
                    let length = u32::try_from(element.len())
                        .map_err(|_| "a BYTES element is over 4 GiB".to_string())?;
                    out.extend_from_slice(&length.to_le_bytes());
                    out.extend_from_slice(element);
                }
                Ok(out)
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
    fn datatype_names_round_trip() {
        for datatype in DataType::ALL {
            assert_eq!(DataType::parse(datatype.as_str()), Some(datatype));
        }
        assert_eq!(DataType::parse("BF16"), None);
    }

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
