//! A batch's inputs before they are joined: each model input as the requests' own tensors, in
//! order along dim 0. An engine reads them straight into the buffer it runs on (one copy per
//! element); [`BatchInput::concat`] joins them for an engine that cannot.

use bytes::{Bytes, BytesMut};
use rtserve_wire::Element;

use crate::{DataType, NamedTensor, Tensor, TensorData};

/// Why tensors could not be batched or unbatched.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    #[error("no requests to batch")]
    Empty,
    #[error("request {request} has no input '{name}'")]
    MissingInput { request: usize, name: String },
    #[error("input '{name}' of request {request} does not match the first request's datatype or shape apart from the batch dimension")]
    Mismatch { request: usize, name: String },
    #[error("tensor '{name}' has no batch dimension")]
    NoBatchDimension { name: String },
    #[error("output '{name}' has {actual} rows but the batch has {expected}")]
    RowCount { name: String, expected: usize, actual: usize },
    #[error("tensor '{name}': {message}")]
    Tensor { name: String, message: String },
}

/// One model input across the requests of a batch. Invariant (kept by [`batch_inputs`] and
/// [`BatchInput::single`]): every part has the datatype, and the shape apart from dim 0, of the
/// first; `shape` is theirs with the rows summed.
#[derive(Debug, Clone)]
pub struct BatchInput<'a> {
    pub name: &'a str,
    datatype: DataType,
    shape: Vec<usize>,
    parts: Vec<&'a Tensor>,
}

impl<'a> BatchInput<'a> {
    /// One request's inputs, each as a batch of one: how an engine that implements
    /// [`crate::ModelInstance::infer_batch`] runs a lone request through it.
    pub fn singles(inputs: &'a [NamedTensor]) -> Vec<BatchInput<'a>> {
        inputs.iter().map(BatchInput::single).collect()
    }

    /// One request's input, as a batch of one.
    pub fn single(input: &'a NamedTensor) -> Self {
        BatchInput {
            name: &input.name,
            datatype: input.tensor.datatype(),
            shape: input.tensor.shape().to_vec(),
            parts: vec![&input.tensor],
        }
    }

    pub fn datatype(&self) -> DataType {
        self.datatype
    }

    /// The shape of the joined tensor.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The tensor itself when the batch holds one request: nothing to join.
    pub fn as_single(&self) -> Option<&'a Tensor> {
        match self.parts.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// The little-endian bytes of each part, in order (none for BYTES).
    pub fn raw_parts(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.parts.iter().filter_map(|t| t.raw()).map(Bytes::as_ref)
    }

    /// The BYTES elements of every part, in order.
    pub fn strings(&self) -> impl Iterator<Item = &'a Bytes> + '_ {
        self.parts.iter().flat_map(|t| match t.data() {
            TensorData::Strings(items) => items.as_slice(),
            TensorData::Raw(_) => &[],
        })
    }

    /// The elements of every part as `T`, in one vector: the only copy an engine that takes
    /// typed buffers needs.
    pub fn decode<T: Element>(&self) -> Vec<T> {
        let mut values = Vec::with_capacity(self.parts.iter().map(|t| t.len()).sum());
        for raw in self.raw_parts() {
            values.extend(T::decode_iter(raw));
        }
        values
    }

    /// The parts joined into one tensor (the bytes copied once; a single part is shared).
    pub fn concat(&self) -> Result<Tensor, BatchError> {
        if let Some(one) = self.as_single() {
            return Ok(one.clone());
        }
        let data = if self.datatype == DataType::Bytes {
            TensorData::Strings(self.strings().cloned().collect())
        } else {
            let mut joined = BytesMut::with_capacity(self.raw_parts().map(<[u8]>::len).sum());
            for raw in self.raw_parts() {
                joined.extend_from_slice(raw);
            }
            TensorData::Raw(joined.freeze())
        };
        Tensor::new(self.datatype, self.shape.clone(), data)
            .map_err(|e| BatchError::Tensor { name: self.name.to_string(), message: e.to_string() })
    }
}

/// The inputs of several requests as a batch, input by input in the order of the first
/// request's inputs; each later request's inputs are matched by name and must agree in
/// datatype and shape apart from dim 0.
pub fn batch_inputs<'a>(requests: &[&'a [NamedTensor]]) -> Result<Vec<BatchInput<'a>>, BatchError> {
    let (first, rest) = requests.split_first().ok_or(BatchError::Empty)?;
    first
        .iter()
        .map(|input| {
            let Some((_, row_shape)) = input.tensor.shape().split_first() else {
                return Err(BatchError::NoBatchDimension { name: input.name.clone() });
            };
            let mut batch = BatchInput::single(input);
            for (index, request) in rest.iter().enumerate() {
                let found = request.iter().find(|i| i.name == input.name).ok_or_else(|| {
                    BatchError::MissingInput { request: index + 1, name: input.name.clone() }
                })?;
                let same_kind = found.tensor.datatype() == input.tensor.datatype()
                    && found.tensor.shape().split_first().is_some_and(|(_, rows)| rows == row_shape);
                if !same_kind {
                    return Err(BatchError::Mismatch { request: index + 1, name: input.name.clone() });
                }
                batch.shape[0] += found.tensor.shape()[0];
                batch.parts.push(&found.tensor);
            }
            Ok(batch)
        })
        .collect()
}

/// The inputs of several requests concatenated along dim 0 (see [`batch_inputs`]).
pub fn concat_rows(requests: &[&[NamedTensor]]) -> Result<Vec<NamedTensor>, BatchError> {
    join_inputs(&batch_inputs(requests)?)
}

/// Each input of a batch joined into one tensor ([`BatchInput::concat`]).
pub fn join_inputs(inputs: &[BatchInput<'_>]) -> Result<Vec<NamedTensor>, BatchError> {
    inputs
        .iter()
        .map(|input| Ok(NamedTensor { name: input.name.to_string(), tensor: input.concat()? }))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn fp32(name: &str, shape: Vec<usize>, start: f32) -> NamedTensor {
        let values: Vec<f32> = (0..shape.iter().product::<usize>()).map(|i| start + i as f32).collect();
        NamedTensor { name: name.into(), tensor: Tensor::from_f32(shape, &values).expect("valid") }
    }

    pub(crate) fn strings(name: &str, items: &[&str]) -> NamedTensor {
        let data = TensorData::Strings(items.iter().map(|s| Bytes::copy_from_slice(s.as_bytes())).collect());
        NamedTensor {
            name: name.into(),
            tensor: Tensor::new(DataType::Bytes, vec![items.len(), 1], data).expect("valid"),
        }
    }

    #[test]
    fn parts_decode_and_join_alike() {
        let a = vec![fp32("x", vec![1, 3], 0.0), strings("s", &["a"])];
        // Inputs in another order: matched by name.
        let b = vec![strings("s", &["b", "c"]), fp32("x", vec![2, 3], 10.0)];
        let batch = batch_inputs(&[&a, &b]).expect("batched");
        assert_eq!((batch[0].name, batch[0].shape()), ("x", &[3, 3][..]));
        let mut expected: Vec<f32> = (0..3).map(|i| i as f32).collect();
        expected.extend((0..6).map(|i| 10.0 + i as f32));
        assert_eq!(batch[0].decode::<f32>(), expected);
        assert_eq!(batch[0].concat().expect("joins").to_f32(), Some(expected));
        let joined: Vec<&[u8]> = batch[1].strings().map(Bytes::as_ref).collect();
        assert_eq!(joined, [&b"a"[..], b"b", b"c"]);
        assert_eq!(batch[1].concat().expect("joins").shape(), &[3, 1]);
        assert!(batch[0].as_single().is_none());
        assert_eq!(BatchInput::single(&a[0]).as_single(), Some(&a[0].tensor));
    }

    #[test]
    fn refuses_what_cannot_be_batched() {
        let a = vec![fp32("x", vec![1, 3], 0.0)];
        let wide = vec![fp32("x", vec![1, 4], 0.0)];
        let other = vec![fp32("y", vec![1, 3], 0.0)];
        let scalar = vec![fp32("x", vec![], 0.0)];
        assert_eq!(concat_rows(&[&a, &wide]), Err(BatchError::Mismatch { request: 1, name: "x".into() }));
        assert_eq!(concat_rows(&[&a, &scalar]), Err(BatchError::Mismatch { request: 1, name: "x".into() }));
        assert_eq!(
            concat_rows(&[&a, &other]),
            Err(BatchError::MissingInput { request: 1, name: "x".into() })
        );
        assert_eq!(concat_rows(&[&scalar, &a]), Err(BatchError::NoBatchDimension { name: "x".into() }));
        assert_eq!(concat_rows(&[]), Err(BatchError::Empty));
    }
}
