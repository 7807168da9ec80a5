//! A model's configuration, validated, whatever file it came from (config.pbtxt, config.toml or
//! the ONNX graph itself). Later stages (batching, cache, SLO) read their settings from here.

use std::collections::BTreeMap;

use crate::{DataType, GpuAcceleration};

/// The name, type and shape of one model input or output. When the model batches
/// (`max_batch_size > 0`) the dims leave out the batch dimension, as in Triton. `-1` is dynamic.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub data_type: DataType,
    pub dims: Vec<i64>,
}

/// Where instances run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InstanceKind {
    #[default]
    Auto,
    Cpu,
    Gpu,
    Model,
}

impl InstanceKind {
    /// The Triton name, e.g. `KIND_CPU`.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceKind::Auto => "KIND_AUTO",
            InstanceKind::Cpu => "KIND_CPU",
            InstanceKind::Gpu => "KIND_GPU",
            InstanceKind::Model => "KIND_MODEL",
        }
    }
}

/// A group of identical model instances.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceGroup {
    /// Instances per device: per listed GPU for `KIND_GPU`.
    pub count: u32,
    pub kind: InstanceKind,
    /// `KIND_GPU`: the GPUs to place `count` instances on each of; empty: every GPU (or the
    /// server's `--gpus`).
    pub gpus: Vec<u32>,
}

/// What a queued request whose timeout expires gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeoutAction {
    #[default]
    Reject,
    Delay,
}

/// Triton's queue policy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueuePolicy {
    pub timeout_action: TimeoutAction,
    pub default_timeout_microseconds: u64,
    pub allow_timeout_override: bool,
    /// 0 means unbounded in Triton; rtserve always bounds its queues.
    pub max_queue_size: u32,
}

/// Triton's `dynamic_batching` block.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DynamicBatching {
    pub preferred_batch_size: Vec<u32>,
    pub max_queue_delay_microseconds: u64,
    pub preserve_ordering: bool,
    pub priority_levels: u32,
    pub default_priority_level: u32,
    pub default_queue_policy: Option<QueuePolicy>,
}

/// Which versions of a model are served.
#[derive(Debug, Clone, PartialEq)]
pub enum VersionPolicy {
    Latest(u32),
    All,
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// The versions to serve out of those present, highest first.
    pub fn select(&self, available: &[u64]) -> Vec<u64> {
        let mut sorted = available.to_vec();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        sorted.dedup();
        match self {
            VersionPolicy::Latest(n) => sorted.into_iter().take(*n as usize).collect(),
            VersionPolicy::All => sorted,
            VersionPolicy::Specific(wanted) => sorted.into_iter().filter(|v| wanted.contains(v)).collect(),
        }
    }
}

/// A model's configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelConfig {
    pub name: String,
    /// Triton platform string, e.g. `onnxruntime_onnx`.
    pub platform: String,
    /// Engine asked for (`onnxruntime`, `tract`); `None` follows the server default.
    pub backend: Option<String>,
    /// 0: the model does not batch and the dims are full shapes.
    pub max_batch_size: u32,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub instance_group: Vec<InstanceGroup>,
    pub dynamic_batching: Option<DynamicBatching>,
    pub response_cache: bool,
    pub parameters: BTreeMap<String, String>,
    pub version_policy: VersionPolicy,
    /// File name inside each version folder.
    pub default_model_filename: String,
    /// `optimization { execution_accelerators { gpu_execution_accelerator ... } }`.
    pub gpu: GpuAcceleration,
}

impl ModelConfig {
    /// Total instances over all groups, at least one.
    pub fn instance_count(&self) -> usize {
        let total: u32 = self.instance_group.iter().map(|g| g.count).sum();
        total.max(1) as usize
    }

    /// The full shape of a tensor as the engine sees it: `[-1] + dims` when the model batches.
    pub fn full_dims(&self, spec: &TensorSpec) -> Vec<i64> {
        if self.max_batch_size > 0 {
            std::iter::once(-1).chain(spec.dims.iter().copied()).collect()
        } else {
            spec.dims.clone()
        }
    }

    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|s| s.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_policy_selects() {
        let available = [1, 3, 2];
        assert_eq!(VersionPolicy::Latest(1).select(&available), vec![3]);
        assert_eq!(VersionPolicy::Latest(2).select(&available), vec![3, 2]);
        assert_eq!(VersionPolicy::All.select(&available), vec![3, 2, 1]);
        assert_eq!(VersionPolicy::Specific(vec![1, 7]).select(&available), vec![1]);
    }
}
