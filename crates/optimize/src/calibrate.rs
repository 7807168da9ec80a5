//! Calibration: run sample data through the float model and record the range of chosen tensors.
//!
//! The tensors are exposed by adding them as graph outputs in a temporary copy of the model,
//! which any engine then runs unchanged.

use std::collections::HashMap;

use rtserve_core::{Engine, LoadOptions};

use crate::data::Sample;
use crate::error::{OptimizeError, Result};
use crate::model;
use crate::onnx::{tensor_proto::DataType, ModelProto};

/// How a tensor's observed values become its quantization range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CalibrationMethod {
    /// The smallest and largest value seen.
    MinMax,
    /// The given lower and upper percentiles (e.g. 99.99 clips the 0.01 % tails on each side).
    Percentile(f64),
    /// The clipping threshold that minimises the KL divergence between the value histogram and
    /// its 8-bit quantized version (TensorRT's method; see [`entropy_range`]).
    Entropy,
}

/// A calibrated range; always contains 0 so that 0 is exactly representable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub min: f32,
    pub max: f32,
}

/// At most this many values per tensor are kept for the percentile and entropy methods.
const SAMPLE_CAP: usize = 1 << 18;

#[derive(Default)]
struct Observed {
    min: f32,
    max: f32,
    seen: bool,
    kept: Vec<f32>,
}

/// Runs every sample through `model` on `engine` and returns the range of each of `tensors`.
/// `progress` is called once per sample.
pub fn calibrate(
    model: &ModelProto,
    tensors: &[String],
    samples: &[Sample],
    engine: &dyn Engine,
    method: CalibrationMethod,
    progress: &dyn Fn(),
) -> Result<HashMap<String, Range>> {
    if samples.is_empty() {
        return Err(OptimizeError::data("calibration needs at least one sample"));
    }
    let mut exposed = model.clone();
    let graph = exposed.graph.as_mut().ok_or_else(|| OptimizeError::model("the model has no graph"))?;
    // Graph inputs are read from the samples themselves: an engine need not echo an input
    // listed as an output (ONNX Runtime returns garbage for it).
    let input_names: std::collections::HashSet<String> = graph.input.iter().map(|i| i.name.clone()).collect();
    let (from_inputs, tensors): (Vec<String>, Vec<String>) =
        tensors.iter().cloned().partition(|t| input_names.contains(t));
    let tensors = tensors.as_slice();
    for name in tensors {
        if !graph.output.iter().any(|o| &o.name == name) {
            graph.output.push(model::tensor_value_info(name, DataType::Float));
        }
    }
    let dir =
        tempfile::tempdir().map_err(|source| OptimizeError::Write { path: std::env::temp_dir(), source })?;
    let path = dir.path().join("calibration.onnx");
    model::save(&exposed, &path)?;
    let mut instance = engine.load(&path, &LoadOptions::default())?;

    let keep_values = !matches!(method, CalibrationMethod::MinMax);
    let mut observed: HashMap<String, Observed> =
        tensors.iter().chain(&from_inputs).map(|t| (t.clone(), Observed::default())).collect();
    let per_sample_cap = (SAMPLE_CAP / samples.len()).max(1);
    for sample in samples {
        let mut outputs = if tensors.is_empty() { Vec::new() } else { instance.infer(sample, tensors)? };
        outputs.extend(sample.iter().filter(|t| from_inputs.contains(&t.name)).cloned());
        for out in outputs {
            let values = out.tensor.to_f32().ok_or_else(|| {
                OptimizeError::model(format!(
                    "tensor '{}' is {}, not FP32: it cannot be calibrated (use --exclude on its node)",
                    out.name,
                    out.tensor.datatype()
                ))
            })?;
            let Some(obs) = observed.get_mut(&out.name) else { continue };
            for &v in &values {
                if v.is_finite() {
                    if !obs.seen {
                        (obs.min, obs.max, obs.seen) = (v, v, true);
                    }
                    obs.min = obs.min.min(v);
                    obs.max = obs.max.max(v);
                }
            }
            if keep_values {
                let stride = values.len().div_ceil(per_sample_cap).max(1);
                obs.kept.extend(values.iter().step_by(stride).filter(|v| v.is_finite()));
            }
        }
        progress();
    }
    let mut ranges = HashMap::new();
    for (name, obs) in observed {
        let (min, max) = match method {
            CalibrationMethod::MinMax => (obs.min, obs.max),
            CalibrationMethod::Percentile(p) => percentile_range(obs.kept, p),
            CalibrationMethod::Entropy => entropy_range(&obs.kept),
        };
        ranges.insert(name, Range { min: min.min(0.0), max: max.max(0.0) });
    }
    Ok(ranges)
}

/// The `100 - p` and `p` percentiles of the values.
pub fn percentile_range(mut values: Vec<f32>, p: f64) -> (f32, f32) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    values.sort_by(f32::total_cmp);
    let at = |q: f64| {
        let i = (q / 100.0 * (values.len() - 1) as f64).round() as usize;
        values[i.min(values.len() - 1)]
    };
    (at(100.0 - p), at(p))
}

/// The entropy (KL-divergence) clipping range, TensorRT's method adapted to asymmetric uint8:
/// a tensor with no negative values is clipped at the threshold that loses the least information
/// over 256 levels; one with both signs at a threshold on the magnitudes over 128 levels per side,
/// kept within the observed minimum and maximum.
pub fn entropy_range(values: &[f32]) -> (f32, f32) {
    let (min, max) = values.iter().fold((0f32, 0f32), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    if min >= 0.0 {
        return (0.0, kl_threshold(values, 256));
    }
    let magnitudes: Vec<f32> = values.iter().map(|v| v.abs()).collect();
    let t = kl_threshold(&magnitudes, 128);
    (min.max(-t), max.min(t))
}

/// The threshold among the edges of a 2048-bin histogram of `magnitudes` (from the `levels`-th
/// edge up) at which clipping and quantizing to `levels` levels diverges least from the values:
/// KL(P || Q), where P is the histogram up to the edge with the clipped values added to its last
/// bin, and Q that same part of the histogram without them, merged into `levels` bins and spread
/// back over the bins P holds values in. As in TensorRT, the threshold is never below
/// `levels / 2048` of the largest magnitude.
fn kl_threshold(magnitudes: &[f32], levels: usize) -> f32 {
    const BINS: usize = 2048;
    let max = magnitudes.iter().copied().fold(0f32, f32::max);
    if max <= 0.0 {
        return 0.0;
    }
    let width = max / BINS as f32;
    let mut hist = vec![0f64; BINS];
    for &m in magnitudes {
        hist[((m / width) as usize).min(BINS - 1)] += 1.0;
    }
    // The zeros a ReLU leaves are exact in any range: left in, their spike makes every wide
    // threshold look lossy (its merged level smears it), so it counts as the bin beside it, as
    // NVIDIA's pytorch-quantization does.
    hist[0] = hist[1];
    let mut clipped_from = vec![0f64; BINS + 1];
    for i in (0..BINS).rev() {
        clipped_from[i] = clipped_from[i + 1] + hist[i];
    }
    // P always holds every value: its sum is the same for every edge.
    let p_sum = clipped_from[0];
    let mut best = (f64::INFINITY, BINS);
    let (mut p, mut q) = (vec![0f64; BINS], vec![0f64; BINS]);
    for edge in levels..=BINS {
        p[..edge].copy_from_slice(&hist[..edge]);
        p[edge - 1] += clipped_from[edge];
        q[..edge].fill(0.0);
        for level in 0..levels {
            let start = level * edge / levels;
            let end = (level + 1) * edge / levels;
            let total: f64 = hist[start..end].iter().sum();
            let held = p[start..end].iter().filter(|c| **c > 0.0).count();
            if held > 0 {
                for j in start..end {
                    if p[j] > 0.0 {
                        q[j] = total / held as f64;
                    }
                }
            }
        }
        let q_sum: f64 = q[..edge].iter().sum();
        if q_sum <= 0.0 {
            continue;
        }
        let kl: f64 = (0..edge)
            .filter(|&j| p[j] > 0.0)
            .map(|j| {
                let pj = p[j] / p_sum;
                // A bin Q leaves empty (clipped values only) costs as if Q held one millionth.
                let qj = (q[j] / q_sum).max(1e-6);
                pj * (pj / qj).ln()
            })
            .sum();
        if kl < best.0 {
            best = (kl, edge);
        }
    }
    best.1 as f32 * width
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_clips_the_tails() {
        let mut values: Vec<f32> = (0..10_000).map(|i| i as f32 / 10_000.0).collect();
        values.push(1000.0);
        values.push(-1000.0);
        let (lo, hi) = percentile_range(values, 99.9);
        assert!((0.0..0.02).contains(&lo), "{lo}");
        assert!(hi > 0.98 && hi <= 1.0 + f32::EPSILON, "{hi}");
    }

    #[test]
    fn entropy_clips_rare_outliers() {
        let mut values: Vec<f32> = (0..100_000).map(|i| (i % 1000) as f32 / 1000.0).collect();
        values.push(5.0);
        let (lo, hi) = entropy_range(&values);
        assert_eq!(lo, 0.0);
        assert!((0.95..1.5).contains(&hi), "{hi}");
    }

    #[test]
    fn entropy_keeps_the_range_of_values_without_outliers() {
        // Clipping a uniform distribution loses information: the range must stay near the whole.
        let values: Vec<f32> = (0..100_000).map(|i| (i % 1000) as f32 / 100.0 - 2.0).collect();
        let (lo, hi) = entropy_range(&values);
        assert!((-2.0..=-1.8).contains(&lo), "{lo}");
        assert!((7.6..=7.99).contains(&hi), "{hi}");
    }

    #[test]
    fn entropy_is_not_misled_by_the_zeros_of_a_relu() {
        // Half exact zeros, half uniform in (0, 6]: nothing to clip.
        let values: Vec<f32> =
            (0..100_000).map(|i| if i % 2 == 0 { 0.0 } else { (i % 600 + 1) as f32 / 100.0 }).collect();
        let (lo, hi) = entropy_range(&values);
        assert_eq!(lo, 0.0);
        assert!((5.7..=6.0).contains(&hi), "{hi}");
    }

    #[test]
    fn entropy_clips_a_long_tail_but_not_the_bulk() {
        // Mostly small values and a thin exponential tail, as after a ReLU.
        let values: Vec<f32> = (1..=100_000).map(|i| -((i as f32) / 100_001.0).ln()).collect::<Vec<_>>();
        let max = values.iter().copied().fold(0f32, f32::max);
        let (lo, hi) = entropy_range(&values);
        assert_eq!(lo, 0.0);
        assert!(hi < max && hi > 3.0, "{hi} of {max}");
    }
}
