//! Pruning to a speed target: channels are pruned in steps of 10 %, each step's model timed at
//! batch 1 on the serving engine, until the latency or speed-up asked for is reached. The
//! engine decides, not a FLOP count.

use rtserve_core::{Engine, LoadOptions, NamedTensor};

use super::channels::{prune_channels, ChannelOptions};
use crate::error::{OptimizeError, Result};
use crate::evaluate::median_latency;
use crate::model::save;
use crate::onnx::ModelProto;
use crate::train::data::Dataset;

/// What the pruned model must reach at batch 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SpeedTarget {
    LatencyMs(f64),
    Speedup(f64),
}

/// One measured step.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    pub sparsity: f64,
    pub latency_ms: f64,
    pub speedup: f64,
}

/// The result of [`search`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Search {
    /// The first sparsity that met the target, or the largest tried.
    pub sparsity: f64,
    pub met: bool,
    pub steps: Vec<Step>,
}

const RUNS: usize = 30;

fn latency(model: &ModelProto, engine: &dyn Engine, sample: &[NamedTensor]) -> Result<f64> {
    let dir = tempfile::tempdir().map_err(|e| OptimizeError::model(format!("temporary folder: {e}")))?;
    let path = dir.path().join("model.onnx");
    save(model, &path)?;
    let outputs: Vec<String> = engine.signature(&path)?.outputs.into_iter().map(|o| o.name).collect();
    let mut instance = engine.load(&path, &LoadOptions::default())?;
    median_latency(instance.as_mut(), &[sample.to_vec()], 1, &outputs, RUNS)
}

/// Prunes `model` at 10 %, 20 %, ... up to `options.sparsity`, timing each step on `engine`
/// with the first sample of `data` fed to `input`, and stops at the first that meets `target`.
pub fn search(
    model: &ModelProto,
    options: &ChannelOptions,
    engine: &dyn Engine,
    data: &Dataset,
    input: &str,
    target: SpeedTarget,
) -> Result<Search> {
    let sample = data.engine_batch(&[0], input)?;
    let dense = latency(model, engine, &sample)?;
    let mut steps = Vec::new();
    let tenths = (options.sparsity * 10.0).floor() as usize;
    let mut candidates: Vec<f64> = (1..=tenths).map(|t| t as f64 / 10.0).collect();
    if candidates.last().is_none_or(|s| (s - options.sparsity).abs() > 1e-9) {
        candidates.push(options.sparsity);
    }
    for sparsity in candidates {
        let (pruned, _) = prune_channels(model, &ChannelOptions { sparsity, ..options.clone() })?;
        let ms = latency(&pruned, engine, &sample)?;
        let step = Step { sparsity, latency_ms: ms, speedup: dense / ms };
        tracing::info!(sparsity, latency_ms = ms, speedup = step.speedup, "pruning step");
        let met = match target {
            SpeedTarget::LatencyMs(t) => ms <= t,
            SpeedTarget::Speedup(x) => step.speedup >= x,
        };
        steps.push(step);
        if met {
            return Ok(Search { sparsity, met: true, steps });
        }
    }
    Ok(Search { sparsity: options.sparsity, met: false, steps })
}
