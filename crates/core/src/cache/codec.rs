//! The shared tier's value format: a list of named tensors in a compact, self-describing binary
//! form.
//!
//! ```text
//! "RTC1"                      magic and format version
//! u32 count                   number of tensors
//! per tensor:
//!   u32 len, name bytes       UTF-8
//!   u8 datatype               index into DataType::ALL
//!   u32 rank, u64 dims[rank]
//!   fixed-size types: u64 len, element bytes (little-endian)
//!   BYTES:            per element (count from the shape): u32 len, bytes
//! ```
//! All integers are little-endian. Decoding checks every length against what is left, builds each
//! tensor through [`Tensor::new`] (which checks data against type and shape), rejects trailing
//! bytes, and never panics or allocates more than the input's size on garbage.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{DataType, NamedTensor, Tensor, TensorData};

const MAGIC: &[u8; 4] = b"RTC1";

/// Why a stored value could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cached value is malformed: {0}")]
pub struct CodecError(&'static str);

/// Encodes tensors into the shared-tier format.
pub fn encode_tensors(tensors: &[NamedTensor]) -> Vec<u8> {
    let size: usize = 8 + tensors.iter().map(encoded_size).sum::<usize>();
    let mut out = BytesMut::with_capacity(size);
    out.put_slice(MAGIC);
    out.put_u32_le(len_u32(tensors.len()));
    for t in tensors {
        out.put_u32_le(len_u32(t.name.len()));
        out.put_slice(t.name.as_bytes());
        out.put_u8(datatype_code(t.tensor.datatype()));
        out.put_u32_le(len_u32(t.tensor.shape().len()));
        for &dim in t.tensor.shape() {
            out.put_u64_le(dim as u64);
        }
        match t.tensor.data() {
            TensorData::Raw(bytes) => {
                out.put_u64_le(bytes.len() as u64);
                out.put_slice(bytes);
            }
            TensorData::Strings(items) => {
                for item in items {
                    out.put_u32_le(len_u32(item.len()));
                    out.put_slice(item);
                }
            }
        }
    }
    out.to_vec()
}

/// Decodes the shared-tier format; element buffers share `input`'s memory.
pub fn decode_tensors(input: Bytes) -> Result<Vec<NamedTensor>, CodecError> {
    let mut r = Reader { buf: input, pos: 0 };
    if r.take(4)?.as_ref() != MAGIC {
        return Err(CodecError("bad magic"));
    }
    let count = r.u32()? as usize;
    // Each tensor takes at least 13 bytes (name length, datatype, rank, one empty BYTES element).
    let mut tensors = Vec::with_capacity(count.min(r.remaining() / 13));
    for _ in 0..count {
        let name_len = r.u32()? as usize;
        let name =
            String::from_utf8(r.take(name_len)?.to_vec()).map_err(|_| CodecError("name is not UTF-8"))?;
        let code = r.u8()?;
        let datatype = *DataType::ALL.get(usize::from(code)).ok_or(CodecError("unknown datatype"))?;
        let rank = r.u32()? as usize;
        if rank > r.remaining() / 8 {
            return Err(CodecError("rank longer than the value"));
        }
        let mut shape = Vec::with_capacity(rank);
        for _ in 0..rank {
            shape.push(usize::try_from(r.u64()?).map_err(|_| CodecError("dimension too large"))?);
        }
        let data = if datatype.size().is_some() {
            let len = usize::try_from(r.u64()?).map_err(|_| CodecError("data length too large"))?;
            TensorData::Raw(r.take(len)?)
        } else {
            let elements = crate::tensor::element_count(&shape).ok_or(CodecError("shape overflows"))?;
            // Each element takes at least its 4-byte length.
            if elements > r.remaining() / 4 {
                return Err(CodecError("more elements than the value holds"));
            }
            let mut items = Vec::with_capacity(elements);
            for _ in 0..elements {
                let len = r.u32()? as usize;
                items.push(r.take(len)?);
            }
            TensorData::Strings(items)
        };
        let tensor = Tensor::new(datatype, shape, data)
            .map_err(|_| CodecError("data does not match type and shape"))?;
        tensors.push(NamedTensor { name, tensor });
    }
    if r.remaining() != 0 {
        return Err(CodecError("trailing bytes"));
    }
    Ok(tensors)
}

fn encoded_size(t: &NamedTensor) -> usize {
    let data = match t.tensor.data() {
        TensorData::Raw(bytes) => 8 + bytes.len(),
        TensorData::Strings(items) => items.iter().map(|i| 4 + i.len()).sum(),
    };
    4 + t.name.len() + 1 + 4 + 8 * t.tensor.shape().len() + data
}

fn datatype_code(datatype: DataType) -> u8 {
    DataType::ALL.iter().position(|&d| d == datatype).and_then(|i| u8::try_from(i).ok()).unwrap_or(u8::MAX)
}

/// Lengths in the format are u32 where a larger one cannot occur in practice (names, ranks,
/// BYTES elements); a larger one is clamped, which makes the value fail to decode rather than
/// decode wrongly.
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<Bytes, CodecError> {
        if n > self.remaining() {
            return Err(CodecError("truncated"));
        }
        let out = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&bytes);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<NamedTensor> {
        let strings = vec![Bytes::from_static(b"hello"), Bytes::new(), Bytes::from_static(b"\xff\x00")];
        vec![
            NamedTensor {
                name: "probs".into(),
                tensor: Tensor::from_f32(vec![2, 2], &[0.1, 0.2, 0.3, 0.4]).expect("valid"),
            },
            NamedTensor {
                name: "labels".into(),
                tensor: Tensor::new(DataType::Bytes, vec![3], TensorData::Strings(strings)).expect("valid"),
            },
            NamedTensor {
                name: "scalar".into(),
                tensor: Tensor::new(
                    DataType::Int64,
                    vec![],
                    TensorData::Raw(Bytes::from(7i64.to_le_bytes().to_vec())),
                )
                .expect("valid"),
            },
            NamedTensor {
                name: "empty".into(),
                tensor: Tensor::new(DataType::Fp16, vec![0, 5], TensorData::Raw(Bytes::new()))
                    .expect("valid"),
            },
        ]
    }

    #[test]
    fn round_trip() {
        let tensors = sample();
        let encoded = encode_tensors(&tensors);
        assert_eq!(encoded.len(), 8 + tensors.iter().map(encoded_size).sum::<usize>());
        assert_eq!(decode_tensors(Bytes::from(encoded)).expect("decodes"), tensors);
        assert_eq!(decode_tensors(Bytes::from(encode_tensors(&[]))).expect("decodes"), vec![]);
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_rejected() {
        let encoded = encode_tensors(&sample());
        for cut in 0..encoded.len() {
            assert!(decode_tensors(Bytes::copy_from_slice(&encoded[..cut])).is_err(), "cut at {cut}");
        }
        let mut longer = encoded.clone();
        longer.push(0);
        assert!(decode_tensors(Bytes::from(longer)).is_err());
    }

    /// A small xorshift generator so the garbage is the same on every run.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn garbage_never_panics() {
        let valid = encode_tensors(&sample());
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for round in 0..20_000 {
            let input = if round % 2 == 0 {
                // Valid values with a few bytes corrupted: exercises the deep paths.
                let mut v = valid.clone();
                for _ in 0..1 + rng.next() % 4 {
                    let at = (rng.next() as usize) % v.len();
                    v[at] = rng.next() as u8;
                }
                v
            } else {
                // Random bytes behind a valid header, with huge counts likely.
                let len = (rng.next() % 64) as usize;
                let mut v = MAGIC.to_vec();
                v.extend((0..len).map(|_| rng.next() as u8));
                v
            };
            if let Ok(tensors) = decode_tensors(Bytes::from(input.clone())) {
                // Whatever decodes must re-encode to exactly the same bytes.
                assert_eq!(encode_tensors(&tensors), input);
            }
        }
    }
}
