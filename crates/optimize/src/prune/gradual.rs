//! Gradual structured pruning: whole channels are silenced during fine-tuning, their share raised
//! by the magnitude pruner's polynomial schedule, before they are removed. Each update chooses the
//! channels to keep as [`select`] does, from the weights as they are then (a silenced channel has
//! no weight left, so it stays silenced); every tensor slice that removing the channel would cut
//! (the producers' weights and biases, BatchNorm's scale and shift, the consumers' input weights)
//! is held at zero after each optimizer step. The model the last update leaves computes what the
//! smaller model [`GradualChannels::finish`] cuts out of it computes.

use candle_core::Tensor;

use super::channels::{kept_positions, prune_channels, select, ChannelOptions, Criterion, GroupReport};
use super::magnitude::{apply_mask, polynomial_sparsity};
use crate::error::{OptimizeError, Result};
use crate::onnx::ModelProto;
use crate::train::trainer::Hook;
use crate::train::{ParamKind, TrainGraph};

/// Silences channels during training; a trainer [`Hook`].
pub struct GradualChannels {
    options: ChannelOptions,
    total_steps: usize,
    current: f64,
    /// (index in `TrainGraph::params`, 0/1 mask of its shape).
    masks: Vec<(usize, Tensor)>,
}

impl GradualChannels {
    /// Refuses a criterion that cannot follow the schedule: Taylor scores are measured once, on
    /// the model before pruning.
    pub fn check_criterion(criterion: Criterion) -> Result<()> {
        if criterion == Criterion::Taylor {
            return Err(OptimizeError::Option(
                "the taylor criterion is measured once, on the model before pruning: prune gradually by l2, l1 or bn, \
                 or at once (--sparsity-schedule constant)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// A pruner that will reach `options.sparsity`; fails now if the model has no prunable group
    /// or the criterion cannot follow the schedule.
    pub fn new(graph: &TrainGraph, options: ChannelOptions) -> Result<GradualChannels> {
        Self::check_criterion(options.criterion)?;
        select(&graph.to_model()?, &options)?;
        Ok(GradualChannels { options, total_steps: 0, current: 0.0, masks: Vec::new() })
    }

    /// The sparsity the schedule asks for at `step`.
    pub fn sparsity_at(&self, step: usize) -> f64 {
        polynomial_sparsity(self.options.sparsity, step, self.total_steps)
    }

    /// Chooses the channels to keep at `sparsity` from the current weights, and silences the rest.
    pub fn prune_to(&mut self, graph: &TrainGraph, sparsity: f64) -> Result<()> {
        self.masks.clear();
        self.current = sparsity;
        if sparsity <= 0.0 {
            return Ok(());
        }
        let (deps, selection, _) =
            select(&graph.to_model()?, &ChannelOptions { sparsity, ..self.options.clone() })?;
        for edit in &deps.edits {
            let Some(index) = graph.params().iter().position(|p| p.name == edit.tensor) else { continue };
            let param = &graph.params()[index];
            if param.kind != ParamKind::Trainable || self.masks.iter().any(|(i, _)| *i == index) {
                continue;
            }
            let dims: Vec<usize> = param.dims.iter().map(|&d| d.max(0) as usize).collect();
            let len = dims.get(edit.axis).copied().unwrap_or(0);
            let keep = kept_positions(&deps, &edit.layout, &selection, len)?;
            if keep.len() == len {
                continue;
            }
            let mut kept = vec![false; len];
            keep.iter().for_each(|&k| kept[k] = true);
            let inner: usize = dims[edit.axis + 1..].iter().product();
            let count: usize = dims.iter().product();
            let values: Vec<f32> =
                (0..count).map(|i| if kept[(i / inner.max(1)) % len] { 1.0 } else { 0.0 }).collect();
            let weights = param.var.as_tensor();
            let mask = Tensor::from_vec(values, dims, weights.device())?.to_dtype(weights.dtype())?;
            self.masks.push((index, mask));
        }
        self.apply(graph)
    }

    fn apply(&self, graph: &TrainGraph) -> Result<()> {
        for (index, mask) in &self.masks {
            apply_mask(graph, *index, mask)?;
        }
        Ok(())
    }

    /// The smaller model: the silenced channels cut out of the trained one.
    pub fn finish(&self, graph: &TrainGraph) -> Result<(ModelProto, Vec<GroupReport>)> {
        prune_channels(&graph.to_model()?, &self.options)
    }
}

impl Hook for GradualChannels {
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
        self.apply(graph)
    }

    /// Only weights at the final sparsity are a model worth keeping.
    fn settled(&self) -> bool {
        self.current >= self.options.sparsity
    }
}
