//! The layout of BYTES elements in a raw buffer (HTTP binary data, gRPC `raw_input_contents`
//! and `raw_output_contents`): each element a 4-byte little-endian length, then its bytes.

use bytes::{Buf, Bytes};

/// Why a buffer is not a sequence of BYTES elements, or elements do not fit the layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BytesLayoutError {
    #[error("BYTES element {element} is truncated: {remaining} bytes left, a 4-byte length was expected")]
    Truncated { element: usize, remaining: usize },
    #[error("BYTES element {element} declares {declared} bytes but only {remaining} remain")]
    Overrun { element: usize, declared: usize, remaining: usize },
    #[error("BYTES element {element} has {length} bytes, more than a 4-byte length can declare")]
    TooLong { element: usize, length: usize },
}

/// Splits a raw buffer into its BYTES elements, without copying them.
pub fn split_bytes_elements(mut raw: Bytes) -> Result<Vec<Bytes>, BytesLayoutError> {
    let mut items = Vec::new();
    while raw.has_remaining() {
        let element = items.len();
        if raw.remaining() < 4 {
            return Err(BytesLayoutError::Truncated { element, remaining: raw.remaining() });
        }
        let declared = raw.get_u32_le() as usize;
        if declared > raw.remaining() {
            return Err(BytesLayoutError::Overrun { element, declared, remaining: raw.remaining() });
        }
        items.push(raw.split_to(declared));
    }
    Ok(items)
}

/// Lays out BYTES elements as [`split_bytes_elements`] reads them.
pub fn join_bytes_elements<'a>(
    items: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, BytesLayoutError> {
    let mut out = Vec::new();
    for (element, item) in items.into_iter().enumerate() {
        let length = u32::try_from(item.len())
            .map_err(|_| BytesLayoutError::TooLong { element, length: item.len() })?;
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(item);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_round_trip() {
        let items: [&[u8]; 3] = [b"ab", b"", b"\0c"];
        let raw = join_bytes_elements(items).expect("short elements");
        assert_eq!(raw, b"\x02\0\0\0ab\0\0\0\0\x02\0\0\0\0c");
        let back = split_bytes_elements(raw.into()).expect("valid layout");
        assert_eq!(back, items.map(Bytes::from_static));
        assert_eq!(split_bytes_elements(Bytes::new()), Ok(vec![]));
    }

    #[test]
    fn names_what_is_wrong() {
        let err = split_bytes_elements(Bytes::from_static(b"\x05\0\0\0ab"));
        assert_eq!(err, Err(BytesLayoutError::Overrun { element: 0, declared: 5, remaining: 2 }));
        let err = split_bytes_elements(Bytes::from_static(b"\x01\0\0\0a\x05\0"));
        assert_eq!(err, Err(BytesLayoutError::Truncated { element: 1, remaining: 2 }));
        assert!(err.is_err_and(|e| e.to_string().contains("element 1 is truncated")));
    }
}
