//! Fixed-size elements as the wire carries them: packed little-endian bytes, BOOL as one byte
//! (any non-zero byte is true), FP16 as its IEEE bits.

use half::f16;

use crate::DataType;

/// A Rust type that holds one fixed-size element of a [`DataType`].
pub trait Element: Copy + Sized + 'static {
    /// The data type whose elements this type holds.
    const DATATYPE: DataType;
    /// Bytes per element on the wire.
    const SIZE: usize;

    /// The whole elements in `bytes`, in order; a trailing partial element is ignored.
    fn decode_iter(bytes: &[u8]) -> impl ExactSizeIterator<Item = Self> + '_;

    /// Appends the element's wire bytes to `out`.
    fn put(self, out: &mut Vec<u8>);

    /// The whole elements in `bytes` (a trailing partial element is dropped).
    fn decode(bytes: &[u8]) -> Vec<Self> {
        Self::decode_iter(bytes).collect()
    }

    /// The wire bytes of `values`.
    fn encode(values: &[Self]) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * Self::SIZE);
        for &value in values {
            value.put(&mut out);
        }
        out
    }
}

macro_rules! number {
    ($($t:ty => $datatype:ident),* $(,)?) => {$(
        impl Element for $t {
            const DATATYPE: DataType = DataType::$datatype;
            const SIZE: usize = size_of::<$t>();

            fn decode_iter(bytes: &[u8]) -> impl ExactSizeIterator<Item = Self> + '_ {
                let (chunks, _) = bytes.as_chunks::<{ size_of::<$t>() }>();
                chunks.iter().map(|c| <$t>::from_le_bytes(*c))
            }

            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}

number!(
    u8 => Uint8, u16 => Uint16, u32 => Uint32, u64 => Uint64,
    i8 => Int8, i16 => Int16, i32 => Int32, i64 => Int64,
    f32 => Fp32, f64 => Fp64,
);

impl Element for f16 {
    const DATATYPE: DataType = DataType::Fp16;
    const SIZE: usize = 2;

    fn decode_iter(bytes: &[u8]) -> impl ExactSizeIterator<Item = Self> + '_ {
        let (chunks, _) = bytes.as_chunks::<2>();
        chunks.iter().map(|c| f16::from_le_bytes(*c))
    }

    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Element for bool {
    const DATATYPE: DataType = DataType::Bool;
    const SIZE: usize = 1;

    fn decode_iter(bytes: &[u8]) -> impl ExactSizeIterator<Item = Self> + '_ {
        bytes.iter().map(|&b| b != 0)
    }

    fn put(self, out: &mut Vec<u8>) {
        out.push(u8::from(self));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_little_endian() {
        let values = [1.5f32, -0.25, f32::MAX];
        let bytes = f32::encode(&values);
        assert_eq!(&bytes[..4], &1.5f32.to_le_bytes());
        assert_eq!(f32::decode(&bytes), values);

        let values = [i64::MIN, -1, 0, 7];
        assert_eq!(i64::decode(&i64::encode(&values)), values);
        assert_eq!(u16::encode(&[u16::MAX, 1]), vec![0xff, 0xff, 0x01, 0x00]);
        assert_eq!(i8::decode(&[0xff, 0x80]), vec![-1, i8::MIN]);
    }

    #[test]
    fn half_and_bool() {
        let values = [f16::from_f32(1.0), f16::from_f32(-2.5)];
        let bytes = f16::encode(&values);
        assert_eq!(bytes, vec![0x00, 0x3c, 0x00, 0xc1]);
        assert_eq!(f16::decode(&bytes), values);

        assert_eq!(bool::decode(&[0, 1, 2]), vec![false, true, true]);
        assert_eq!(bool::encode(&[true, false]), vec![1, 0]);
    }

    #[test]
    fn partial_elements_are_dropped() {
        assert_eq!(u32::decode(&[1, 0, 0, 0, 9]), vec![1]);
        assert_eq!(u32::decode_iter(&[1, 0, 0, 0, 9]).len(), 1);
    }

    #[test]
    fn sizes_match_the_data_types() {
        fn check<T: Element>() {
            assert_eq!(T::DATATYPE.size(), Some(T::SIZE), "{}", T::DATATYPE);
        }
        check::<bool>();
        check::<u8>();
        check::<u16>();
        check::<u32>();
        check::<u64>();
        check::<i8>();
        check::<i16>();
        check::<i32>();
        check::<i64>();
        check::<f16>();
        check::<f32>();
        check::<f64>();
    }
}
