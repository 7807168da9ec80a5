//! Structured pruning: whole channels of each dependency group are removed, by the norm of the
//! weights that produce them (or the BatchNorm scale), giving a smaller dense model.

use std::collections::{HashMap, HashSet};

use super::groups::{analyse, Dependencies, Edit, Group, Layout, Role};
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
}

impl std::str::FromStr for Criterion {
    type Err = OptimizeError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "l1" => Ok(Criterion::L1),
            "l2" => Ok(Criterion::L2),
            "bn" | "batchnorm" => Ok(Criterion::BatchNorm),
            _ => Err(OptimizeError::Option(format!("unknown criterion '{s}' (l1, l2, bn)"))),
        }
    }
}

/// Options of channel pruning.
#[derive(Debug, Clone)]
pub struct ChannelOptions {
    /// Fraction of each group's channels removed, in (0, 1).
    pub sparsity: f64,
    pub criterion: Criterion,
    /// Keep a multiple of this many channels per group (SIMD-friendly widths); 1 = exact.
    pub round_to: usize,
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
    criterion: Criterion,
) -> Result<Vec<f64>> {
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
            .map(|s| match criterion {
                Criterion::L2 => s.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt(),
                Criterion::L1 | Criterion::BatchNorm => s.iter().map(|v| v.abs() as f64).sum(),
            })
            .collect();
        let mean = norms.iter().sum::<f64>() / norms.len().max(1) as f64;
        for (s, n) in score.iter_mut().zip(&norms) {
            *s += if mean > 0.0 { n / mean } else { 0.0 };
        }
    }
    Ok(score)
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
    let mut selection = Selection::new();
    let mut reports = Vec::new();
    for group in deps.groups() {
        let producers: Vec<String> = deps
            .edits
            .iter()
            .filter(|e| e.role == Role::Producer && e.layout.spaces.iter().any(|s| group.spaces.contains(s)))
            .map(|e| e.tensor.clone())
            .collect();
        let mut kept = group.size;
        if group.blocked.is_none() && group.size > 1 {
            let remove = (group.size as f64 * options.sparsity).floor() as usize;
            let round = options.round_to.max(1);
            kept = (group.size - remove).div_ceil(round) * round;
            kept = kept.clamp(1, group.size);
            let score = importance(&deps, &group, g, options.criterion)?;
            let mut order: Vec<usize> = (0..group.size).collect();
            order.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
            let mut keep: Vec<usize> = order.into_iter().take(kept).collect();
            keep.sort_unstable();
            selection.insert(group.root, keep);
        }
        reports.push(GroupReport { producers, channels: group.size, kept, blocked: group.blocked.clone() });
    }
    if selection.is_empty() {
        return Err(OptimizeError::model(
            "no channel group of this model can be pruned (every one reaches a graph output or an operator \
             the analysis does not follow)",
        ));
    }
    Ok((deps, selection, reports))
}

/// The positions along an edited axis that survive, in order.
pub(super) fn kept_positions(
    deps: &Dependencies,
    layout: &Layout,
    selection: &Selection,
    axis_len: usize,
) -> Result<Vec<usize>> {
    let channels = deps.channels(layout);
    let block = if layout.flattened { axis_len / channels.max(1) } else { 1 };
    if channels * block != axis_len {
        return Err(OptimizeError::model(format!(
            "an axis of {axis_len} does not follow {channels} channels"
        )));
    }
    let mut keep = Vec::new();
    let mut offset = 0;
    for &space in &layout.spaces {
        let size = deps.sizes[space];
        let root = deps.root(space);
        let all: Vec<usize>;
        let chosen = match selection.get(&root) {
            Some(k) => k,
            None => {
                all = (0..size).collect();
                &all
            }
        };
        for &c in chosen {
            keep.extend((0..block).map(|b| (offset + c) * block + b));
        }
        offset += size;
    }
    Ok(keep)
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
