//! Structured pruning: whole channels of each dependency group are removed, by the norm of the
//! weights that produce them (or the BatchNorm scale, or a score measured on data), within each
//! group or across all of them, giving a smaller dense model.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::groups::{analyse, Dependencies, Edit, Group, Layout, Role};
use super::magnitude::Scope;
use crate::error::{OptimizeError, Result};
use crate::graph::validate;
use crate::model::{float_tensor, float_values};
use crate::onnx::{GraphProto, ModelProto};

/// How a channel's importance is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Criterion {
    /// Sum of absolute producer weights.
    L1,
    /// Euclidean norm of the producer weights.
    L2,
    /// |scale| of the BatchNorm that follows the producer (L1 where there is none).
    BatchNorm,
    /// The loss change removing the channel is estimated to cause, measured on training data
    /// ([`taylor_scores`](super::taylor::taylor_scores), given as [`ChannelOptions::scores`]).
    Taylor,
}

impl std::str::FromStr for Criterion {
    type Err = OptimizeError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "l1" => Ok(Criterion::L1),
            "l2" => Ok(Criterion::L2),
            "bn" | "batchnorm" => Ok(Criterion::BatchNorm),
            "taylor" => Ok(Criterion::Taylor),
            _ => Err(OptimizeError::Option(format!("unknown criterion '{s}' (l1, l2, bn, taylor)"))),
        }
    }
}

/// Measured importance of each channel, by group root.
pub type Scores = HashMap<usize, Vec<f64>>;

/// Options of channel pruning.
#[derive(Debug, Clone)]
pub struct ChannelOptions {
    /// Fraction of the channels removed, in (0, 1): of each group's (`Scope::PerLayer`) or of all
    /// prunable channels, wherever they matter least (`Scope::Global`).
    pub sparsity: f64,
    pub criterion: Criterion,
    pub scope: Scope,
    /// Keep a multiple of this many channels per group (SIMD-friendly widths); 1 = exact.
    pub round_to: usize,
    /// The measured scores `Criterion::Taylor` ranks by.
    pub scores: Option<Arc<Scores>>,
}

impl ChannelOptions {
    /// Each group loses `sparsity` of its channels by `criterion`, widths exact.
    pub fn new(sparsity: f64, criterion: Criterion) -> ChannelOptions {
        ChannelOptions { sparsity, criterion, scope: Scope::PerLayer, round_to: 1, scores: None }
    }
}

/// What was removed, per group.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupReport {
    /// The tensors that produce the group's channels.
    pub producers: Vec<String>,
    pub channels: usize,
    pub kept: usize,
    /// Why it was left whole, when it was.
    pub blocked: Option<String>,
}

/// The channels to keep in each group (by root space), sorted.
pub type Selection = HashMap<usize, Vec<usize>>;

/// Checks a sparsity value for any pruning method.
pub fn check_sparsity(sparsity: f64) -> Result<()> {
    if sparsity > 0.0 && sparsity < 1.0 {
        Ok(())
    } else {
        Err(OptimizeError::Option(format!("sparsity {sparsity} must be between 0 and 1 (exclusive)")))
    }
}

fn graph(model: &ModelProto) -> Result<&GraphProto> {
    model.graph.as_ref().ok_or_else(|| OptimizeError::model("the model has no graph"))
}

fn slices(values: &[f32], dims: &[i64], axis: usize) -> Vec<Vec<f32>> {
    let n = dims.get(axis).copied().unwrap_or(1).max(0) as usize;
    let inner: usize = dims.iter().skip(axis + 1).map(|&d| d.max(0) as usize).product();
    let mut out = vec![Vec::new(); n];
    for (i, v) in values.iter().enumerate() {
        out[(i / inner) % n.max(1)].push(*v);
    }
    out
}

/// The importance of each channel of a group: the producers' norms, each producer's scaled by
/// its mean so that layers of different magnitudes count alike (Torch-Pruning's "mean" norm).
fn importance(
    deps: &Dependencies,
    group: &Group,
    graph: &GraphProto,
    options: &ChannelOptions,
) -> Result<Vec<f64>> {
    let criterion = options.criterion;
    if criterion == Criterion::Taylor {
        let scores = options.scores.as_ref().ok_or_else(|| {
            OptimizeError::Option("the taylor criterion needs scores measured on training data".into())
        })?;
        return scores.get(&group.root).filter(|s| s.len() == group.size).cloned().ok_or_else(|| {
            OptimizeError::model(format!(
                "no Taylor score for the group of {}: no trainable weight reads its channels",
                producer_names(deps, group).join(", ")
            ))
        });
    }
    let inits: HashMap<&str, _> = graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut score = vec![0f64; group.size];
    let bn_scales: HashSet<&str> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "BatchNormalization")
        .filter_map(|n| n.input.get(1).map(String::as_str))
        .collect();
    let member = |e: &Edit| e.layout.spaces.len() == 1 && group.spaces.contains(&e.layout.spaces[0]);
    let use_bn = criterion == Criterion::BatchNorm
        && deps
            .edits
            .iter()
            .any(|e| member(e) && e.role == Role::Carried && bn_scales.contains(e.tensor.as_str()));
    for edit in deps.edits.iter().filter(|e| member(e)) {
        let wanted = if use_bn {
            edit.role == Role::Carried && bn_scales.contains(edit.tensor.as_str())
        } else {
            edit.role == Role::Producer
        };
        if !wanted {
            continue;
        }
        let Some(t) = inits.get(edit.tensor.as_str()) else { continue };
        let values = float_values(t)?;
        let norms: Vec<f64> = slices(&values, &t.dims, edit.axis)
            .iter()
            .map(|s| {
                if criterion == Criterion::L2 {
                    s.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt()
                } else {
                    // L1, and the BatchNorm scale's absolute value.
                    s.iter().map(|v| v.abs() as f64).sum()
                }
            })
            .collect();
        let mean = norms.iter().sum::<f64>() / norms.len().max(1) as f64;
        for (s, n) in score.iter_mut().zip(&norms) {
            *s += if mean > 0.0 { n / mean } else { 0.0 };
        }
    }
    // Mean 1 in every group, so that global ranking compares channels within their own group's
    // scale (Torch-Pruning's "mean" normalizer).
    let mean = score.iter().sum::<f64>() / score.len().max(1) as f64;
    if mean > 0.0 {
        score.iter_mut().for_each(|s| *s /= mean);
    }
    Ok(score)
}

fn producer_names(deps: &Dependencies, group: &Group) -> Vec<String> {
    deps.edits
        .iter()
        .filter(|e| e.role == Role::Producer && e.layout.spaces.iter().any(|s| group.spaces.contains(s)))
        .map(|e| e.tensor.clone())
        .collect()
}

/// How many channels a group of `size` keeps when `remove` are chosen to go.
fn kept_count(size: usize, remove: usize, round_to: usize) -> usize {
    let round = round_to.max(1);
    ((size - remove.min(size)).div_ceil(round) * round).clamp(1, size)
}

/// How many channels each group loses: `sparsity` of each, or of all of them together where
/// their scores are lowest (every group keeping at least one).
fn removals(scored: &[(&Group, Vec<f64>)], options: &ChannelOptions) -> Vec<usize> {
    match options.scope {
        Scope::PerLayer => {
            scored.iter().map(|(g, _)| (g.size as f64 * options.sparsity).floor() as usize).collect()
        }
        Scope::Global => {
            let total: usize = scored.iter().map(|(g, _)| g.size).sum();
            let mut ranked: Vec<(f64, usize)> =
                scored.iter().enumerate().flat_map(|(i, (_, s))| s.iter().map(move |&v| (v, i))).collect();
            ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let mut remove = vec![0usize; scored.len()];
            let mut left = (total as f64 * options.sparsity).floor() as usize;
            for (_, i) in ranked {
                if left == 0 {
                    break;
                }
                if remove[i] + 1 < scored[i].0.size {
                    remove[i] += 1;
                    left -= 1;
                }
            }
            remove
        }
    }
}

/// Chooses the channels to keep in every prunable group.
pub fn select(
    model: &ModelProto,
    options: &ChannelOptions,
) -> Result<(Dependencies, Selection, Vec<GroupReport>)> {
    check_sparsity(options.sparsity)?;
    let g = graph(model)?;
    validate(g)?;
    let deps = analyse(g);
    let groups = deps.groups();
    let prunable = |group: &Group| group.blocked.is_none() && group.size > 1;
    let scored = groups
        .iter()
        .filter(|group| prunable(group))
        .map(|group| Ok((group, importance(&deps, group, g, options)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut selection = Selection::new();
    for ((group, score), remove) in scored.iter().zip(removals(&scored, options)) {
        let kept = kept_count(group.size, remove, options.round_to);
        let mut order: Vec<usize> = (0..group.size).collect();
        order.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
        let mut keep: Vec<usize> = order.into_iter().take(kept).collect();
        keep.sort_unstable();
        selection.insert(group.root, keep);
    }
    let reports = groups
        .iter()
        .map(|group| GroupReport {
            producers: producer_names(&deps, group),
            channels: group.size,
            kept: selection.get(&group.root).map_or(group.size, Vec::len),
            blocked: group.blocked.clone(),
        })
        .collect();
    if selection.is_empty() {
        return Err(OptimizeError::model(
            "no channel group of this model can be pruned (every one reaches a graph output or an operator \
             the analysis does not follow)",
        ));
    }
    Ok((deps, selection, reports))
}

/// The (group root, channel) that each position along an edited axis follows.
pub(super) fn channel_positions(
    deps: &Dependencies,
    layout: &Layout,
    axis_len: usize,
) -> Result<Vec<(usize, usize)>> {
    let channels = deps.channels(layout);
    let block = if layout.flattened { axis_len / channels.max(1) } else { 1 };
    if channels * block != axis_len {
        return Err(OptimizeError::model(format!(
            "an axis of {axis_len} does not follow {channels} channels"
        )));
    }
    let mut positions = Vec::with_capacity(axis_len);
    for &space in &layout.spaces {
        let root = deps.root(space);
        for c in 0..deps.sizes[space] {
            positions.extend(std::iter::repeat_n((root, c), block));
        }
    }
    Ok(positions)
}

/// The positions along an edited axis that survive, in order.
pub(super) fn kept_positions(
    deps: &Dependencies,
    layout: &Layout,
    selection: &Selection,
    axis_len: usize,
) -> Result<Vec<usize>> {
    let kept: HashMap<usize, HashSet<usize>> =
        selection.iter().map(|(root, keep)| (*root, keep.iter().copied().collect())).collect();
    Ok(channel_positions(deps, layout, axis_len)?
        .into_iter()
        .enumerate()
        .filter(|(_, (root, c))| kept.get(root).is_none_or(|k| k.contains(c)))
        .map(|(i, _)| i)
        .collect())
}

fn gather(values: &[f32], dims: &[i64], axis: usize, keep: &[usize]) -> (Vec<f32>, Vec<i64>) {
    let outer: usize = dims[..axis].iter().map(|&d| d as usize).product();
    let n = dims[axis] as usize;
    let inner: usize = dims[axis + 1..].iter().map(|&d| d as usize).product();
    let mut out = Vec::with_capacity(outer * keep.len() * inner);
    for o in 0..outer {
        for &k in keep {
            let start = (o * n + k) * inner;
            out.extend_from_slice(&values[start..start + inner]);
        }
    }
    let mut new_dims = dims.to_vec();
    new_dims[axis] = keep.len() as i64;
    (out, new_dims)
}

/// Removes the unselected channels: a smaller dense model.
pub fn remove(model: &ModelProto, deps: &Dependencies, selection: &Selection) -> Result<ModelProto> {
    let mut model = model.clone();
    let g = model.graph.as_mut().ok_or_else(|| OptimizeError::model("the model has no graph"))?;
    let mut done: HashSet<(String, usize)> = HashSet::new();
    for edit in &deps.edits {
        if !done.insert((edit.tensor.clone(), edit.axis)) {
            continue;
        }
        let Some(t) = g.initializer.iter_mut().find(|t| t.name == edit.tensor) else { continue };
        let values = float_values(t)?;
        let len = t.dims.get(edit.axis).copied().unwrap_or(0) as usize;
        let keep = kept_positions(deps, &edit.layout, selection, len)
            .map_err(|e| OptimizeError::model(format!("tensor '{}': {e}", edit.tensor)))?;
        if keep.len() == len {
            continue;
        }
        let (values, dims) = gather(&values, &t.dims, edit.axis, &keep);
        let mut fresh = float_tensor(&t.name, &dims, &values);
        fresh.doc_string = std::mem::take(&mut t.doc_string);
        *t = fresh;
    }
    for (index, layout) in &deps.depthwise {
        let channels = kept_positions(deps, layout, selection, deps.channels(layout))?.len() as i64;
        if let Some(a) = g.node[*index].attribute.iter_mut().find(|a| a.name == "group") {
            a.i = channels;
        }
    }
    // Intermediate shapes changed; engines infer them again.
    g.value_info.clear();
    validate(g)?;
    Ok(model)
}

/// The same model with the unselected channels silenced where they are read (the consumers'
/// weights for them set to zero): it computes what [`remove`]'s model computes, at full size.
pub fn mask_consumers(model: &ModelProto, deps: &Dependencies, selection: &Selection) -> Result<ModelProto> {
    let mut model = model.clone();
    let g = model.graph.as_mut().ok_or_else(|| OptimizeError::model("the model has no graph"))?;
    for edit in deps.edits.iter().filter(|e| e.role == Role::Consumer) {
        let Some(t) = g.initializer.iter_mut().find(|t| t.name == edit.tensor) else { continue };
        let mut values = float_values(t)?;
        let len = t.dims[edit.axis] as usize;
        let keep: HashSet<usize> = kept_positions(deps, &edit.layout, selection, len)?.into_iter().collect();
        let inner: usize = t.dims[edit.axis + 1..].iter().map(|&d| d as usize).product();
        for (i, v) in values.iter_mut().enumerate() {
            if !keep.contains(&((i / inner) % len)) {
                *v = 0.0;
            }
        }
        *t = float_tensor(&t.name, &t.dims.clone(), &values);
    }
    Ok(model)
}

/// Prunes channels: [`select`] then [`remove`].
pub fn prune_channels(
    model: &ModelProto,
    options: &ChannelOptions,
) -> Result<(ModelProto, Vec<GroupReport>)> {
    let (deps, selection, reports) = select(model, options)?;
    Ok((remove(model, &deps, &selection)?, reports))
}
