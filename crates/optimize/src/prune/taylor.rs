//! Data-driven channel importance (Molchanov et al., "Importance Estimation for Neural Network
//! Pruning", 2019): the first-order Taylor estimate of how much the loss changes when a channel
//! is removed. Removing a channel is zeroing every weight that reads it (the consumers' input
//! slices, as [`mask_consumers`](super::channels::mask_consumers) does), so a channel's score is
//! `(Σ w·∂L/∂w)²` over those slices, summed per minibatch and averaged over minibatches of the
//! training data. Scores are in units of loss, so they compare across groups as they are.

use std::collections::HashSet;

use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::channels::{channel_positions, Scores};
use super::groups::{analyse, Role};
use crate::error::{OptimizeError, Result};
use crate::onnx::ModelProto;
use crate::train::data::Dataset;
use crate::train::trainer::{cross_entropy, logits, output_name, single_input};
use crate::train::{Mode, ParamKind, TrainGraph};

/// Minibatches the scores are averaged over (fewer when the data set is smaller).
pub const BATCHES: usize = 32;

/// The Taylor score of every channel of every group that has weights reading it, by group root.
pub fn taylor_scores(
    model: &ModelProto,
    data: &Dataset,
    batch_size: usize,
    seed: u64,
    output: Option<&str>,
) -> Result<Scores> {
    let g = model.graph.as_ref().ok_or_else(|| OptimizeError::model("the model has no graph"))?;
    let deps = analyse(g);
    let graph = TrainGraph::new(model)?;
    let (input, output) = (single_input(&graph)?, output_name(&graph, output)?);
    // Each consumer weight: its parameter, axis, and the (group, channel) of every position.
    let mut readers = Vec::new();
    let mut seen = HashSet::new();
    for edit in deps.edits.iter().filter(|e| e.role == Role::Consumer) {
        let Some(param) = graph.params().iter().find(|p| p.name == edit.tensor) else { continue };
        if param.kind != ParamKind::Trainable || !seen.insert((edit.tensor.clone(), edit.axis)) {
            continue;
        }
        let len = param.dims.get(edit.axis).copied().unwrap_or(0).max(0) as usize;
        let inner: usize = param.dims.iter().skip(edit.axis + 1).map(|&d| d.max(0) as usize).product();
        readers.push((param, len, inner, channel_positions(&deps, &edit.layout, len)?));
    }
    let mut scores = Scores::new();
    for &(root, _) in readers.iter().flat_map(|(_, _, _, positions)| positions) {
        scores.entry(root).or_insert_with(|| vec![0.0; deps.sizes[root]]);
    }
    let zero = scores.clone();
    let mut rng = StdRng::seed_from_u64(seed);
    let batches: Vec<Vec<usize>> =
        data.minibatches(batch_size, Some(&mut rng)).into_iter().take(BATCHES).collect();
    for indices in &batches {
        let (x, labels) = data.batch(indices)?;
        let (y, _) = logits(&graph, &input, &output, x, Mode::Train, &mut rng)?;
        let grads = cross_entropy(&y, &labels)?.backward()?;
        let mut sums = zero.clone();
        for (param, len, inner, positions) in &readers {
            let w = param.var.as_tensor();
            let Some(grad) = grads.get(w) else { continue };
            // Σ w·g along the axis first (no element is there unless every dimension is > 0),
            // then each position into its channel.
            let mut by_position = vec![0f64; *len];
            for (i, p) in flat(&(w * grad)?)?.iter().enumerate() {
                by_position[(i / inner) % len] += p;
            }
            for (&(root, channel), s) in positions.iter().zip(&by_position) {
                if let Some(channels) = sums.get_mut(&root) {
                    channels[channel] += s;
                }
            }
        }
        for (root, channel_sums) in sums {
            if let Some(total) = scores.get_mut(&root) {
                total.iter_mut().zip(&channel_sums).for_each(|(t, s)| *t += s * s);
            }
        }
    }
    let n = batches.len().max(1) as f64;
    scores.values_mut().for_each(|s| s.iter_mut().for_each(|v| *v /= n));
    Ok(scores)
}

fn flat(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}
