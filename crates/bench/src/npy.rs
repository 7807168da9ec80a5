//! A reader and a writer for NumPy `.npy` files (format versions 1.0 to 3.0, little-endian or
//! byte-sized dtypes, C order): booleans, integers and floats.

use rtserve_wire::{DataType, Element};

use crate::values::Values;

/// An array read from a `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub values: Values,
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// A `.npy` file's array as the wire carries tensors: its datatype, shape and little-endian
/// element bytes (borrowed from the file).
#[derive(Debug, Clone, PartialEq)]
pub struct RawNpy<'a> {
    pub datatype: DataType,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

/// Parses the bytes of a `.npy` file.
pub fn parse_npy(bytes: &[u8]) -> Result<NpyArray, String> {
    let raw = parse_npy_raw(bytes)?;
    Ok(NpyArray { values: decode(raw.datatype, raw.data), shape: raw.shape })
}

/// Parses the bytes of a `.npy` file without decoding the elements.
pub fn parse_npy_raw(bytes: &[u8]) -> Result<RawNpy<'_>, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (bad magic)".into());
    }
    let (header_length, header_start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 => {
            let raw = bytes.get(8..12).ok_or("truncated header")?;
            let length = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
            (usize::try_from(length).map_err(|_| "header too large")?, 12)
        }
        major => return Err(format!("unsupported .npy format version {major}")),
    };
    let header_end = usize::checked_add(header_start, header_length).ok_or("header too large")?;
    let header = bytes.get(header_start..header_end).ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "the header is not text")?;
    let descr = dict_value(header, "descr").ok_or("the header has no 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    if dict_value(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err("Fortran-order arrays are not supported (save with np.ascontiguousarray)".into());
    }
    let shape = parse_shape(dict_value(header, "shape").ok_or("the header has no 'shape'")?)?;
    let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or("shape too large")?;
    let datatype = datatype_of(descr)?;
    let size = datatype.size().ok_or_else(|| format!("unsupported dtype '{descr}'"))?;
    let needed = count.checked_mul(size).ok_or("array too large")?;
    let data = &bytes[header_end..];
    if data.len() < needed {
        return Err(format!(
            "the data holds {} bytes but shape and dtype '{descr}' need {needed}",
            data.len()
        ));
    }
    Ok(RawNpy { datatype, shape, data: &data[..needed] })
}

/// A `.npy` file (format 1.0, as `np.save` writes it) holding `data`, the little-endian
/// elements of a `datatype` tensor of `shape`.
pub fn write_npy(datatype: DataType, shape: &[usize], data: &[u8]) -> Result<Vec<u8>, String> {
    let descr = descr_of(datatype).ok_or_else(|| format!("{datatype} tensors have no .npy dtype"))?;
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = match dims.as_slice() {
        [one] => format!("({one},)"),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // NumPy pads the header with spaces so that the data starts on a 64-byte boundary.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let length = u16::try_from(header.len()).map_err(|_| "the shape is too long for a .npy header")?;
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

/// The wire datatype of a NumPy dtype string.
fn datatype_of(descr: &str) -> Result<DataType, String> {
    let (order, code) = descr.split_at(descr.len().min(1));
    if order == ">" && !code.ends_with('1') {
        return Err(format!("big-endian dtype '{descr}' is not supported"));
    }
    if !matches!(order, "<" | "|" | "=" | ">") {
        return Err(format!("unsupported dtype '{descr}'"));
    }
    Ok(match code {
        "b1" => DataType::Bool,
        "i1" => DataType::Int8,
        "i2" => DataType::Int16,
        "i4" => DataType::Int32,
        "i8" => DataType::Int64,
        "u1" => DataType::Uint8,
        "u2" => DataType::Uint16,
        "u4" => DataType::Uint32,
        "u8" => DataType::Uint64,
        "f2" => DataType::Fp16,
        "f4" => DataType::Fp32,
        "f8" => DataType::Fp64,
        _ => return Err(format!("unsupported dtype '{descr}' (bool, int, uint and float only)")),
    })
}

/// The NumPy dtype string of a wire datatype; `None` for BYTES.
fn descr_of(datatype: DataType) -> Option<&'static str> {
    Some(match datatype {
        DataType::Bool => "|b1",
        DataType::Uint8 => "|u1",
        DataType::Uint16 => "<u2",
        DataType::Uint32 => "<u4",
        DataType::Uint64 => "<u8",
        DataType::Int8 => "|i1",
        DataType::Int16 => "<i2",
        DataType::Int32 => "<i4",
        DataType::Int64 => "<i8",
        DataType::Fp16 => "<f2",
        DataType::Fp32 => "<f4",
        DataType::Fp64 => "<f8",
        DataType::Bytes => return None,
    })
}

/// The text of `key`'s value in the header's Python dict literal, up to the next top-level
/// comma (a tuple's commas are inside parentheses).
fn dict_value<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let start = header.find(&format!("'{key}'")).or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[start + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0usize;
    let end = rest
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ => {}
            }
            (c == ',' || c == '}') && depth == 0
        })
        .map_or(rest.len(), |(i, _)| i);
    Some(rest[..end].trim())
}

fn parse_shape(text: &str) -> Result<Vec<usize>, String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("shape {text} is not a tuple"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.trim_end_matches('L').parse().map_err(|_| format!("shape {text} has a bad dimension '{d}'"))
        })
        .collect()
}

/// The elements, widened to the value kind of their datatype.
fn decode(datatype: DataType, data: &[u8]) -> Values {
    /// The array's elements as `T`, widened by `widen`.
    fn read<T: Element, U>(data: &[u8], widen: impl Fn(T) -> U) -> Vec<U> {
        T::decode_iter(data).map(widen).collect()
    }
    match datatype {
        DataType::Bool => Values::Bool(bool::decode(data)),
        DataType::Int8 => Values::Int(read(data, |v: i8| i64::from(v))),
        DataType::Int16 => Values::Int(read(data, |v: i16| i64::from(v))),
        DataType::Int32 => Values::Int(read(data, |v: i32| i64::from(v))),
        DataType::Int64 => Values::Int(i64::decode(data)),
        DataType::Uint8 => Values::Uint(read(data, |v: u8| u64::from(v))),
        DataType::Uint16 => Values::Uint(read(data, |v: u16| u64::from(v))),
        DataType::Uint32 => Values::Uint(read(data, |v: u32| u64::from(v))),
        DataType::Uint64 => Values::Uint(u64::decode(data)),
        DataType::Fp16 => Values::Float(read(data, |v: half::f16| f64::from(v))),
        DataType::Fp32 => Values::Float(read(data, |v: f32| f64::from(v))),
        DataType::Fp64 => Values::Float(f64::decode(data)),
        // `datatype_of` never gives BYTES.
        DataType::Bytes => Values::Bytes(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files written by NumPy 2.4 (`np.save`), so the reader is checked against the real writer:
    /// see `testdata/README.md` for the script.
    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn reads_numpy_written_files() {
        let f32s = parse_npy(&fixture("f32_2x3.npy")).expect("valid");
        assert_eq!(f32s.shape, vec![2, 3]);
        assert_eq!(f32s.values, Values::Float(vec![0.0, 0.5, 1.0, 1.5, 2.0, -2.5]));
        let i64s = parse_npy(&fixture("i64_4.npy")).expect("valid");
        assert_eq!(i64s, NpyArray { shape: vec![4], values: Values::Int(vec![-3, 0, 7, 1 << 40]) });
        let bools = parse_npy(&fixture("bool_2x2.npy")).expect("valid");
        assert_eq!(
            bools,
            NpyArray { shape: vec![2, 2], values: Values::Bool(vec![true, false, false, true]) }
        );
        let u8s = parse_npy(&fixture("u8_3x1.npy")).expect("valid");
        assert_eq!(u8s, NpyArray { shape: vec![3, 1], values: Values::Uint(vec![1, 2, 255]) });
    }

    fn npy(descr: &str, fortran: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn writes_what_numpy_writes_and_reads_it_back() {
        let values: Vec<u8> =
            [0.0f32, 0.5, 1.0, 1.5, 2.0, -2.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(write_npy(DataType::Fp32, &[2, 3], &values), Ok(fixture("f32_2x3.npy")));
        let ints: Vec<u8> = [-3i64, 0, 7, 1 << 40].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(write_npy(DataType::Int64, &[4], &ints), Ok(fixture("i64_4.npy")));
        for (datatype, shape, data) in [
            (DataType::Bool, vec![2, 2], vec![1u8, 0, 0, 1]),
            (DataType::Fp16, vec![], vec![0, 60]),
            (DataType::Uint16, vec![1, 2, 1], vec![1, 0, 2, 0]),
        ] {
            let bytes = write_npy(datatype, &shape, &data).expect("writes");
            let raw = parse_npy_raw(&bytes).expect("reads back");
            assert_eq!(raw, RawNpy { datatype, shape, data: &data });
        }
        assert!(write_npy(DataType::Bytes, &[1], &[]).is_err());
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let err = |bytes: Vec<u8>| parse_npy(&bytes).expect_err("should fail");
        assert!(err(b"PK\x03\x04 not npy".to_vec()).contains("bad magic"));
        assert!(err(npy("<f4", "True", "(1,)", &[0; 4])).contains("Fortran"));
        assert!(err(npy(">f4", "False", "(1,)", &[0; 4])).contains("big-endian"));
        assert!(err(npy("<c8", "False", "(1,)", &[0; 8])).contains("unsupported dtype"));
        assert!(err(npy("<f4", "False", "(2,)", &[0; 4])).contains("need 8"));
        // A scalar has shape () and one element.
        assert_eq!(
            parse_npy(&npy("<i4", "False", "()", &7i32.to_le_bytes())).expect("ok").values,
            Values::Int(vec![7])
        );
    }
}
