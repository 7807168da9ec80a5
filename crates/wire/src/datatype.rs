//! The tensor element types of the KServe v2 protocol.

use std::fmt;
use std::str::FromStr;

/// A tensor element type, named as in KServe v2 (`FP32`) and Triton configs (`TYPE_FP32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// Variable-length byte strings.
    Bytes,
}

impl DataType {
    /// Every data type, in protocol order. The prediction cache stores a data type as its index
    /// here: add new types at the end.
    pub const ALL: [DataType; 13] = [
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

    /// The KServe v2 name, e.g. `FP32`.
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

    /// The Triton model-config name, e.g. `TYPE_FP32` (`TYPE_STRING` for BYTES).
    pub fn config_name(self) -> String {
        match self {
            DataType::Bytes => "TYPE_STRING".to_string(),
            other => format!("TYPE_{}", other.as_str()),
        }
    }

    /// The kind of values it holds, as JSON and gRPC typed contents carry them.
    pub fn kind(self) -> ValueKind {
        match self {
            DataType::Bool => ValueKind::Bool,
            DataType::Uint8 | DataType::Uint16 | DataType::Uint32 | DataType::Uint64 => ValueKind::Uint,
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => ValueKind::Int,
            DataType::Fp16 | DataType::Fp32 | DataType::Fp64 => ValueKind::Float,
            DataType::Bytes => ValueKind::Bytes,
        }
    }

    /// Size of one element in bytes; `None` for variable-length BYTES.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
            DataType::Bytes => return None,
        })
    }
}

/// The kind of values a data type holds: what a JSON tensor or a gRPC typed-contents field
/// carries before it is narrowed to the element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Bool,
    Int,
    Uint,
    Float,
    Bytes,
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a name that is no data type.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown datatype '{0}' (expected one of BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES)")]
pub struct UnknownDataType(pub String);

impl FromStr for DataType {
    type Err = UnknownDataType;

    /// Accepts the KServe name (`FP32`) and the Triton config name (`TYPE_FP32`, `TYPE_STRING`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bare = s.strip_prefix("TYPE_").unwrap_or(s);
        if bare == "STRING" {
            return Ok(DataType::Bytes);
        }
        DataType::ALL.into_iter().find(|d| d.as_str() == bare).ok_or_else(|| UnknownDataType(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(d.as_str().parse::<DataType>().ok(), Some(d));
            assert_eq!(d.config_name().parse::<DataType>().ok(), Some(d));
        }
        assert!("FLOAT".parse::<DataType>().is_err());
        assert_eq!("TYPE_STRING".parse::<DataType>().ok(), Some(DataType::Bytes));
        assert!("BF16".parse::<DataType>().is_err());
    }

    #[test]
    fn kinds_agree_with_sizes() {
        for d in DataType::ALL {
            assert_eq!(d.size().is_none(), d.kind() == ValueKind::Bytes, "{d}");
        }
        assert_eq!(DataType::Uint16.kind(), ValueKind::Uint);
        assert_eq!(DataType::Fp16.kind(), ValueKind::Float);
    }
}
