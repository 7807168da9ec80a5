//! Unstructured magnitude pruning, as TensorFlow Model Optimization's `prune_low_magnitude`:
//! the smallest weights of Conv/Gemm/MatMul kernels are set to zero, their share raised over
//! fine-tuning by a schedule (constant, or the polynomial decay of Zhu & Gupta), and kept at zero
//! after every optimizer step. The model keeps its shape: it compresses, it does not run faster
//! on dense kernels.

use std::io::Write;

use candle_core::{DType, Tensor};

use super::channels::check_sparsity;
use crate::error::{OptimizeError, Result};
use crate::onnx::ModelProto;
use crate::train::ops::Op;
use crate::train::trainer::Hook;
use crate::train::{ParamKind, TrainGraph};

/// Whether what is pruned is ranked across the whole model or within each layer (magnitude: one
/// threshold for all weights or one per layer; channels: across all groups or within each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    PerLayer,
}

/// How the sparsity rises during fine-tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparsitySchedule {
    /// The final sparsity from the first step (TF-MOT's `ConstantSparsity`).
    Constant,
    /// `s_f·(1 - (1 - t/T)³)` over the first 70 % of the steps, updated 20 times (TF-MOT's
    /// `PolynomialDecay` from 0); the rest fine-tunes at the final sparsity.
    Polynomial,
}

/// Options of magnitude pruning.
#[derive(Debug, Clone)]
pub struct MagnitudeOptions {
    pub sparsity: f64,
    pub scope: Scope,
    pub schedule: SparsitySchedule,
}

/// The sparsity reached by one pruned weight.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerSparsity {
    pub weight: String,
    pub values: usize,
    pub zeros: usize,
}

/// Keeps the masks of the pruned weights; a trainer [`Hook`].
pub struct MagnitudePruner {
    options: MagnitudeOptions,
    /// Indices (in `TrainGraph::params`) of the weights pruned.
    targets: Vec<usize>,
    masks: Vec<Tensor>,
    total_steps: usize,
    current: f64,
}

/// The kernels that magnitude pruning thins: the weights of Conv, Gemm and MatMul nodes.
fn targets(graph: &TrainGraph) -> Vec<usize> {
    let mut names: Vec<&str> = Vec::new();
    for (node, op) in graph.nodes() {
        if matches!(op, Op::Conv { .. } | Op::Gemm { .. } | Op::MatMul) {
            if let Some(w) = node.input.get(1) {
                names.push(w.as_str());
            }
        }
    }
    graph
        .params()
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            p.kind == ParamKind::Trainable && p.dims.len() >= 2 && names.contains(&p.name.as_str())
        })
        .map(|(i, _)| i)
        .collect()
}

/// Zhu & Gupta's schedule as TF-MOT's `PolynomialDecay` from 0: the sparsity at `step` of
/// `total`, rising as `final·(1 - (1 - t/T)³)` over the first 70 % of the steps in 20 updates,
/// then `final` to the end.
pub(crate) fn polynomial_sparsity(final_sparsity: f64, step: usize, total: usize) -> f64 {
    let end = ((total as f64) * 0.7).ceil().max(1.0);
    let every = (end / 20.0).ceil().max(1.0);
    let t = ((step as f64 / every).floor() * every).min(end);
    final_sparsity * (1.0 - (1.0 - t / end).powi(3))
}

/// The magnitude below which `sparsity` of `values` lie (the k-th smallest |value|).
fn threshold(mut magnitudes: Vec<f32>, sparsity: f64) -> Option<f32> {
    let k = (magnitudes.len() as f64 * sparsity).floor() as usize;
    if k == 0 {
        return None;
    }
    let (_, kth, _) = magnitudes.select_nth_unstable_by(k - 1, f32::total_cmp);
    Some(*kth)
}

fn magnitudes(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.abs()?.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

impl MagnitudePruner {
    pub fn new(graph: &TrainGraph, options: MagnitudeOptions) -> Result<MagnitudePruner> {
        check_sparsity(options.sparsity)?;
        let targets = targets(graph);
        if targets.is_empty() {
            return Err(OptimizeError::model("the model has no Conv/Gemm/MatMul weights to prune"));
        }
        Ok(MagnitudePruner { options, targets, masks: Vec::new(), total_steps: 0, current: 0.0 })
    }

    /// The sparsity the schedule asks for at `step`.
    pub fn sparsity_at(&self, step: usize) -> f64 {
        let s = self.options.sparsity;
        match self.options.schedule {
            SparsitySchedule::Constant => s,
            SparsitySchedule::Polynomial => polynomial_sparsity(s, step, self.total_steps),
        }
    }

    /// Recomputes the masks for `sparsity` from the current weights and applies them.
    pub fn prune_to(&mut self, graph: &TrainGraph, sparsity: f64) -> Result<()> {
        let params = graph.params();
        let global = match self.options.scope {
            Scope::Global => {
                let all: Vec<f32> = self
                    .targets
                    .iter()
                    .map(|&i| magnitudes(params[i].var.as_tensor()))
                    .collect::<Result<Vec<_>>>()?
                    .concat();
                threshold(all, sparsity)
            }
            Scope::PerLayer => None,
        };
        self.masks.clear();
        for &i in &self.targets {
            let w = params[i].var.as_tensor();
            let cut = match self.options.scope {
                Scope::Global => global,
                Scope::PerLayer => threshold(magnitudes(w)?, sparsity),
            };
            let mask = match cut {
                Some(cut) => w.abs()?.gt(cut as f64)?.to_dtype(w.dtype())?,
                None => w.ones_like()?,
            };
            params[i].var.set(&(w * &mask)?)?;
            self.masks.push(mask);
        }
        self.current = sparsity;
        Ok(())
    }

    /// The zeros of each pruned weight now.
    pub fn report(&self, graph: &TrainGraph) -> Result<Vec<LayerSparsity>> {
        self.targets
            .iter()
            .map(|&i| {
                let p = &graph.params()[i];
                let values = magnitudes(p.var.as_tensor())?;
                Ok(LayerSparsity {
                    weight: p.name.clone(),
                    values: values.len(),
                    zeros: values.iter().filter(|v| **v == 0.0).count(),
                })
            })
            .collect()
    }
}

impl Hook for MagnitudePruner {
    fn start(&mut self, graph: &TrainGraph, total_steps: usize) -> Result<()> {
        self.total_steps = total_steps;
        let s = self.sparsity_at(0);
        self.prune_to(graph, s)
    }

    fn after_step(&mut self, graph: &TrainGraph, step: usize) -> Result<()> {
        let wanted = self.sparsity_at(step + 1);
        if wanted != self.current {
            return self.prune_to(graph, wanted);
        }
        for (&i, mask) in self.targets.iter().zip(&self.masks) {
            apply_mask(graph, i, mask)?;
        }
        Ok(())
    }

    /// Only weights at the final sparsity are a model worth keeping.
    fn settled(&self) -> bool {
        self.current >= self.options.sparsity
    }
}

/// Multiplies parameter `index` of `graph` by `mask` (0 where it is pruned): how both pruners hold
/// what they pruned at zero after each optimizer step.
pub(super) fn apply_mask(graph: &TrainGraph, index: usize, mask: &Tensor) -> Result<()> {
    let var = &graph.params()[index].var;
    var.set(&(var.as_tensor() * mask)?)?;
    Ok(())
}

/// The size of a model's file after gzip at its best compression (`gzip -9`), as a file shipped
/// compressed would be.
pub fn gzip_size(model: &ModelProto) -> Result<u64> {
    use prost::Message;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder
        .write_all(&model.encode_to_vec())
        .and_then(|_| encoder.finish())
        .map(|bytes| bytes.len() as u64)
        .map_err(|e| OptimizeError::model(format!("gzip: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_the_kth_smallest_magnitude() {
        assert_eq!(threshold(vec![0.5, 0.1, 0.4, 0.2], 0.5), Some(0.2));
        assert_eq!(threshold(vec![0.5, 0.1], 0.4), None);
    }
}
