//! Which requests can share a batch, and the batch's outputs split back into the requests'
//! (their inputs are joined by the engine: [`crate::batch_input`]).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use crate::batch_input::BatchError;
use crate::{DataType, NamedTensor, Tensor, TensorData};

/// A hash of what decides whether requests can share a batch: each input's name, datatype and
/// shape apart from the batch dimension, in name order.
pub fn batch_group(inputs: &[NamedTensor]) -> u64 {
    let mut signature: Vec<(&str, DataType, &[usize])> = inputs
        .iter()
        .map(|i| (i.name.as_str(), i.tensor.datatype(), i.tensor.shape().get(1..).unwrap_or(&[])))
        .collect();
    signature.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut hasher = DefaultHasher::new();
    signature.hash(&mut hasher);
    hasher.finish()
}

/// The rows a request carries: the batch dimension of its first input.
pub fn batch_rows(inputs: &[NamedTensor]) -> usize {
    inputs.first().and_then(|i| i.tensor.shape().first().copied()).unwrap_or(1)
}

/// Splits each batch output along dim 0 into consecutive pieces of `rows` rows; returns one
/// list of outputs per piece. Raw data is shared with the batch output, not copied.
pub fn split_rows(outputs: &[NamedTensor], rows: &[usize]) -> Result<Vec<Vec<NamedTensor>>, BatchError> {
    let total: usize = rows.iter().sum();
    let mut pieces: Vec<Vec<NamedTensor>> = rows.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
    for output in outputs {
        let name = &output.name;
        let Some((&actual, row_shape)) = output.tensor.shape().split_first() else {
            return Err(BatchError::NoBatchDimension { name: name.clone() });
        };
        if actual != total {
            return Err(BatchError::RowCount { name: name.clone(), expected: total, actual });
        }
        let per_row: usize = row_shape.iter().product();
        let mut start = 0;
        for (piece, &count) in pieces.iter_mut().zip(rows) {
            let (from, to) = (start * per_row, (start + count) * per_row);
            start += count;
            let data = match output.tensor.data() {
                TensorData::Raw(bytes) => {
                    let size = output.tensor.datatype().size().unwrap_or(1);
                    TensorData::Raw(bytes.slice(from * size..to * size))
                }
                TensorData::Strings(items) => TensorData::Strings(items[from..to].to_vec()),
            };
            let shape = std::iter::once(count).chain(row_shape.iter().copied()).collect();
            let tensor = Tensor::new(output.tensor.datatype(), shape, data)
                .map_err(|e| BatchError::Tensor { name: name.clone(), message: e.to_string() })?;
            piece.push(NamedTensor { name: name.clone(), tensor });
        }
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch_input::concat_rows;
    use crate::batch_input::tests::{fp32, strings};

    #[test]
    fn split_undoes_concat() {
        let a = vec![fp32("x", vec![1, 3], 0.0), strings("s", &["a"])];
        // Inputs in another order: matched by name.
        let b = vec![strings("s", &["b", "c"]), fp32("x", vec![2, 3], 10.0)];
        let c = vec![fp32("x", vec![3, 3], 100.0), strings("s", &["d", "e", "f"])];
        let requests: Vec<&[NamedTensor]> = vec![&a, &b, &c];
        let batch = concat_rows(&requests).expect("batched");
        assert_eq!(batch[0].tensor.shape(), &[6, 3]);
        let mut expected: Vec<f32> = (0..3).map(|i| i as f32).collect();
        expected.extend((0..6).map(|i| 10.0 + i as f32));
        expected.extend((0..9).map(|i| 100.0 + i as f32));
        assert_eq!(batch[0].tensor.to_f32(), Some(expected));
        assert_eq!(batch[1].tensor.shape(), &[6, 1]);

        let pieces = split_rows(&batch, &[1, 2, 3]).expect("split");
        assert_eq!(pieces[0], a);
        assert_eq!(pieces[1], vec![b[1].clone(), b[0].clone()]);
        assert_eq!(pieces[2], c);
    }

    #[test]
    fn refuses_what_cannot_be_split() {
        let out = vec![fp32("y", vec![4, 2], 0.0)];
        assert_eq!(
            split_rows(&out, &[1, 2]),
            Err(BatchError::RowCount { name: "y".into(), expected: 3, actual: 4 })
        );
        let scalar = vec![fp32("y", vec![], 0.0)];
        assert_eq!(split_rows(&scalar, &[1]), Err(BatchError::NoBatchDimension { name: "y".into() }));
    }

    #[test]
    fn group_ignores_rows_and_input_order() {
        let a = vec![fp32("x", vec![1, 3], 0.0), strings("s", &["a"])];
        let b = vec![strings("s", &["b", "c"]), fp32("x", vec![2, 3], 5.0)];
        let wide = vec![fp32("x", vec![1, 4], 0.0), strings("s", &["a"])];
        assert_eq!(batch_group(&a), batch_group(&b));
        assert_ne!(batch_group(&a), batch_group(&wide));
        assert_eq!((batch_rows(&a), batch_rows(&b)), (1, 2));
    }
}
