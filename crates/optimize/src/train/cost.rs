//! Multiply-adds per sample of a graph (the FLOP comparison of distillation): each Conv, Gemm and
//! MatMul counted from the shapes of one forward pass — output elements times the products that
//! make each one (a Conv's input channels per group times its kernel cells, a Gemm's or MatMul's
//! inner dimension). Element-wise operators, pooling and normalisation are not counted.

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::data::Dataset;
use super::graph::{Mode, TrainGraph};
use super::ops::Op;
use crate::error::{OptimizeError, Result};

/// Multiply-adds of `graph` for one sample: the first of `data`, fed to its first input.
pub fn multiply_adds(graph: &TrainGraph, data: &Dataset) -> Result<u64> {
    let input = graph.inputs().first().ok_or_else(|| OptimizeError::model("the graph has no input"))?;
    let (sample, _) = data.batch(&[0])?;
    let pass = graph.forward(&[(input.clone(), sample)], Mode::Eval, &mut StdRng::seed_from_u64(0))?;
    let dims = |name: Option<&String>| name.and_then(|n| pass.values.get(n)).map(|t| t.dims().to_vec());
    let mut total = 0;
    for (proto, op) in graph.nodes() {
        let outputs = dims(proto.output.first()).map(|d| d.iter().product::<usize>());
        let per_output = match op {
            // Weights [M, C / group, kH, kW]: each output sums C / group × kH × kW products.
            Op::Conv { .. } => dims(proto.input.get(1)).map(|w| w.iter().skip(1).product::<usize>()),
            Op::Gemm { trans_a, .. } => {
                dims(proto.input.first()).and_then(|a| a.get(usize::from(!*trans_a)).copied())
            }
            Op::MatMul => dims(proto.input.first()).and_then(|a| a.last().copied()),
            _ => None,
        };
        if let (Some(outputs), Some(products)) = (outputs, per_output) {
            total += (outputs * products) as u64;
        }
    }
    Ok(total)
}
