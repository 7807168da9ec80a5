//! A candidate model (quantized, fp16...) against its reference on the same data and engine:
//! prediction agreement, output error, accuracy against labels, latency, file size.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rtserve_core::{Engine, LoadOptions, ModelInstance, NamedTensor, Tensor, TensorData};

use crate::data::Sample;
use crate::error::{OptimizeError, Result};

/// Options of [`evaluate`].
#[derive(Debug, Clone)]
pub struct EvaluateOptions {
    /// The output compared; `None`: the model's first output.
    pub output: Option<String>,
    /// Class labels, one per sample, for accuracy.
    pub labels: Option<Vec<usize>>,
    /// Batch sizes to time.
    pub batch_sizes: Vec<usize>,
    /// Timed runs per batch size (after 3 warm-up runs); the median is reported.
    pub latency_runs: usize,
    /// Threads per inference (0: the engine's default).
    pub intra_op_threads: usize,
}

impl Default for EvaluateOptions {
    fn default() -> Self {
        EvaluateOptions {
            output: None,
            labels: None,
            batch_sizes: vec![1, 8],
            latency_runs: 20,
            intra_op_threads: 0,
        }
    }
}

/// Figures of one model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelFigures {
    pub path: PathBuf,
    pub file_bytes: u64,
    /// Top-1 accuracy against the labels, when given.
    pub accuracy: Option<f64>,
    /// (batch size, median latency in ms, runs); batch sizes the model cannot take are left out.
    pub latency_ms: Vec<(usize, f64, usize)>,
}

/// How closely the candidate's outputs follow the reference's.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Agreement {
    pub samples: usize,
    /// Fraction of samples whose top-1 class is the same.
    pub top1: f64,
    /// Fraction of samples whose reference top-1 class is in the candidate's top 5.
    pub top5: f64,
    pub max_abs_error: f64,
    pub mean_abs_error: f64,
    /// Largest |a - b| / max|a| over samples (error relative to the output's scale).
    pub max_relative_error: f64,
    pub mean_cosine: f64,
    pub min_cosine: f64,
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Evaluation {
    pub engine: String,
    pub output: String,
    pub reference: ModelFigures,
    pub candidate: ModelFigures,
    pub agreement: Agreement,
}

fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    idx.truncate(k);
    idx
}

pub(crate) fn output_values(outputs: &[NamedTensor], name: &str, model: &Path) -> Result<Vec<f32>> {
    let t = outputs
        .iter()
        .find(|o| o.name == name)
        .ok_or_else(|| OptimizeError::data(format!("{}: no output '{name}'", model.display())))?;
    if let Some(v) = t.tensor.to_f32() {
        return Ok(v);
    }
    match (t.tensor.datatype(), t.tensor.raw()) {
        (rtserve_core::DataType::Fp16, Some(raw)) => {
            Ok(raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect())
        }
        (dt, _) => {
            Err(OptimizeError::data(format!("{}: output '{name}' is {dt}, not FP32/FP16", model.display())))
        }
    }
}

/// Runs both models on every sample and compares their `output`, then times both.
pub fn evaluate(
    reference: &Path,
    candidate: &Path,
    samples: &[Sample],
    engine: &dyn Engine,
    options: &EvaluateOptions,
    progress: &dyn Fn(),
) -> Result<Evaluation> {
    if samples.is_empty() {
        return Err(OptimizeError::data("evaluation needs at least one sample"));
    }
    if let Some(labels) = &options.labels {
        if labels.len() < samples.len() {
            return Err(OptimizeError::data(format!(
                "{} labels for {} samples",
                labels.len(),
                samples.len()
            )));
        }
    }
    let signature = engine.signature(reference)?;
    let output = match &options.output {
        Some(o) => o.clone(),
        None => signature.outputs.first().map(|o| o.name.clone()).ok_or_else(|| {
            OptimizeError::model(format!("{}: the model has no outputs", reference.display()))
        })?,
    };
    let load = LoadOptions {
        intra_op_threads: options.intra_op_threads,
        allow_spinning: false,
        batches: true,
        ..LoadOptions::default()
    };
    let mut ref_model = engine.load(reference, &load)?;
    let mut cand_model = engine.load(candidate, &load)?;
    let names = [output.clone()];
    let mut a = Agreement { samples: samples.len(), min_cosine: f64::INFINITY, ..Agreement::default() };
    let (mut ref_correct, mut cand_correct) = (0usize, 0usize);
    let (mut abs_sum, mut abs_count) = (0f64, 0usize);
    for (i, sample) in samples.iter().enumerate() {
        let r = output_values(&ref_model.infer(sample, &names)?, &output, reference)?;
        let c = output_values(&cand_model.infer(sample, &names)?, &output, candidate)?;
        if r.len() != c.len() || r.is_empty() {
            return Err(OptimizeError::data(format!(
                "output '{output}' has {} values in the reference and {} in the candidate",
                r.len(),
                c.len()
            )));
        }
        let (rt, ct) = (top_k(&r, 5), top_k(&c, 5));
        if rt[0] == ct[0] {
            a.top1 += 1.0;
        }
        if ct.contains(&rt[0]) {
            a.top5 += 1.0;
        }
        if let Some(labels) = &options.labels {
            ref_correct += usize::from(rt[0] == labels[i]);
            cand_correct += usize::from(ct[0] == labels[i]);
        }
        let (mut dot, mut nr, mut nc, mut scale, mut sample_max) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for (x, y) in r.iter().zip(&c) {
            let (x, y) = (*x as f64, *y as f64);
            let d = (x - y).abs();
            sample_max = sample_max.max(d);
            abs_sum += d;
            dot += x * y;
            nr += x * x;
            nc += y * y;
            scale = scale.max(x.abs());
        }
        abs_count += r.len();
        a.max_abs_error = a.max_abs_error.max(sample_max);
        if scale > 0.0 {
            a.max_relative_error = a.max_relative_error.max(sample_max / scale);
        }
        let cosine =
            if nr > 0.0 && nc > 0.0 { dot / (nr.sqrt() * nc.sqrt()) } else { f64::from(u8::from(nr == nc)) };
        a.mean_cosine += cosine;
        a.min_cosine = a.min_cosine.min(cosine);
        progress();
    }
    let n = samples.len() as f64;
    a.top1 /= n;
    a.top5 /= n;
    a.mean_cosine /= n;
    a.mean_abs_error = abs_sum / abs_count.max(1) as f64;
    let accuracy = |correct: usize| options.labels.as_ref().map(|_| correct as f64 / n);
    let max_batch = signature.inputs.iter().filter_map(|i| i.dims.first().copied()).min().unwrap_or(-1);
    let figures = |path: &Path, model: &mut dyn ModelInstance, correct: usize| -> Result<ModelFigures> {
        let mut latency_ms = Vec::new();
        for &b in &options.batch_sizes {
            if max_batch >= 0 && b as i64 != max_batch {
                continue;
            }
            latency_ms.push((
                b,
                median_latency(model, samples, b, &names, options.latency_runs)?,
                options.latency_runs,
            ));
        }
        let file_bytes = std::fs::metadata(path)
            .map_err(|source| OptimizeError::Read { path: path.to_path_buf(), source })?
            .len();
        Ok(ModelFigures { path: path.to_path_buf(), file_bytes, accuracy: accuracy(correct), latency_ms })
    };
    let reference_figures = figures(reference, ref_model.as_mut(), ref_correct)?;
    let candidate_figures = figures(candidate, cand_model.as_mut(), cand_correct)?;
    if a.min_cosine == f64::INFINITY {
        a.min_cosine = 0.0;
    }
    Ok(Evaluation {
        engine: engine.name().to_string(),
        output,
        reference: reference_figures,
        candidate: candidate_figures,
        agreement: a,
    })
}

/// Stacks `batch` samples (cycling through them) along the first axis.
pub fn stack(samples: &[Sample], batch: usize) -> Result<Sample> {
    let first = samples.first().ok_or_else(|| OptimizeError::data("no samples"))?;
    first
        .iter()
        .enumerate()
        .map(|(k, input)| {
            let mut bytes = Vec::new();
            for s in samples.iter().cycle().take(batch) {
                let t =
                    &s.get(k).ok_or_else(|| OptimizeError::data("samples differ in their inputs"))?.tensor;
                match t.data() {
                    TensorData::Raw(raw) if t.shape()[1..] == input.tensor.shape()[1..] => {
                        bytes.extend_from_slice(raw)
                    }
                    _ => {
                        return Err(OptimizeError::data(format!(
                            "samples of '{}' differ in shape",
                            input.name
                        )))
                    }
                }
            }
            let mut shape = input.tensor.shape().to_vec();
            let per_sample = shape.first().copied().unwrap_or(1);
            if let Some(d) = shape.first_mut() {
                *d = per_sample * batch;
            }
            let tensor = Tensor::new(input.tensor.datatype(), shape, TensorData::Raw(bytes.into()))
                .map_err(|e| OptimizeError::data(format!("'{}': {e}", input.name)))?;
            Ok(NamedTensor { name: input.name.clone(), tensor })
        })
        .collect()
}

/// The median time of `runs` inferences of `batch` stacked samples, after 3 warm-up runs.
pub(crate) fn median_latency(
    model: &mut dyn ModelInstance,
    samples: &[Sample],
    batch: usize,
    outputs: &[String],
    runs: usize,
) -> Result<f64> {
    let inputs = stack(samples, batch)?;
    for _ in 0..3 {
        model.infer(&inputs, outputs)?;
    }
    let mut times = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        model.infer(&inputs, outputs)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The evaluation as a Markdown table.
pub fn markdown(e: &Evaluation) -> String {
    let mut s = format!("Engine: {}; output `{}`; {} samples.\n\n", e.engine, e.output, e.agreement.samples);
    s.push_str("| | reference | candidate |\n| --- | --- | --- |\n");
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    s.push_str(&format!("| file | `{}` | `{}` |\n", e.reference.path.display(), e.candidate.path.display()));
    let mb = |b: u64| b as f64 / 1e6;
    s.push_str(&format!(
        "| size | {:.2} MB | {:.2} MB ({:.2}×) |\n",
        mb(e.reference.file_bytes),
        mb(e.candidate.file_bytes),
        e.candidate.file_bytes as f64 / e.reference.file_bytes.max(1) as f64
    ));
    if let (Some(r), Some(c)) = (e.reference.accuracy, e.candidate.accuracy) {
        s.push_str(&format!(
            "| accuracy (labels) | {:.2} % | {:.2} % ({:+.2} points) |\n",
            r * 100.0,
            c * 100.0,
            (c - r) * 100.0
        ));
    }
    for ((b, r, _), (_, c, _)) in e.reference.latency_ms.iter().zip(&e.candidate.latency_ms) {
        s.push_str(&format!(
            "| latency, batch {b} (median) | {r:.3} ms | {c:.3} ms ({:.2}× faster) |\n",
            r / c
        ));
    }
    let a = &e.agreement;
    s.push_str(&format!(
        "\n| agreement ({} vs {}) | |\n| --- | --- |\n",
        name(&e.candidate.path),
        name(&e.reference.path)
    ));
    s.push_str(&format!("| top-1 agreement | {:.2} % |\n", a.top1 * 100.0));
    s.push_str(&format!("| reference top-1 in candidate top-5 | {:.2} % |\n", a.top5 * 100.0));
    s.push_str(&format!(
        "| max abs error | {:.3e} |\n| mean abs error | {:.3e} |\n",
        a.max_abs_error, a.mean_abs_error
    ));
    s.push_str(&format!(
        "| max relative error (to max abs of the output) | {:.3e} |\n",
        a.max_relative_error
    ));
    s.push_str(&format!("| cosine similarity, mean / min | {:.6} / {:.6} |\n", a.mean_cosine, a.min_cosine));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_value() {
        assert_eq!(top_k(&[0.1, 0.9, 0.5, -1.0], 2), vec![1, 2]);
    }

    #[test]
    fn stack_cycles_samples_along_the_batch_axis() {
        let s = |v: f32| {
            vec![NamedTensor { name: "x".into(), tensor: Tensor::from_f32(vec![1, 2], &[v, v]).expect("t") }]
        };
        let batch = stack(&[s(1.0), s(2.0)], 3).expect("stack");
        assert_eq!(batch[0].tensor.shape(), &[3, 2]);
        assert_eq!(batch[0].tensor.to_f32(), Some(vec![1., 1., 2., 2., 1., 1.]));
    }
}
