//! `rtserve optimize qat`: quantization-aware fine-tuning, exported in the QDQ format
//! `rtserve optimize quantize` writes.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use rtserve_optimize::calibrate::CalibrationMethod;
use rtserve_optimize::data::Sample;
use rtserve_optimize::fold;
use rtserve_optimize::model;
use rtserve_optimize::qat::{self, QatOptions};
use rtserve_optimize::quantize::{QuantizeOptions, QuantizeReport};
use rtserve_optimize::train::distill;
use rtserve_optimize::train::trainer::{self, CrossEntropy, Objective};
use rtserve_optimize::train::TrainGraph;
use serde::Serialize;

use super::distill::{Teacher, TeacherArgs};
use super::train::{check_data, fit, fit_text, percent, DataArgs, FitArgs, FitReport};
use super::{create_engine, print_report, progress_bar, EngineArgs, Method};

#[derive(Args)]
pub struct QatArgs {
    /// The float32 ONNX model to fine-tune (its operators must be ones the trainer supports).
    #[arg(long)]
    model: PathBuf,
    /// Where to write the quantized (QDQ) model.
    #[arg(long)]
    out: PathBuf,
    /// Keep a node (by name) or every node of an op type in float, as `quantize --exclude`;
    /// repeatable, comma-separated.
    #[arg(long, value_delimiter = ',')]
    exclude: Vec<String>,
    /// How the starting activation ranges are taken from the first --calibration-limit
    /// training samples: minmax, percentile (see --percentile) or entropy, as for `quantize`.
    #[arg(long, value_enum, default_value = "minmax")]
    calibration_method: Method,
    /// The percentile kept by --calibration-method percentile.
    #[arg(long, default_value_t = 99.99)]
    percentile: f64,
    /// Calibrate on at most this many training samples.
    #[arg(long, default_value_t = 512)]
    calibration_limit: usize,
    /// Keep the calibrated activation ranges instead of training them with the weights.
    #[arg(long)]
    freeze_ranges: bool,
    /// Also distill from this model (usually the float32 original: self-distillation); data
    /// without labels is then allowed. See --temperature and --alpha.
    #[arg(long)]
    teacher: Option<PathBuf>,
    #[command(flatten)]
    teacher_args: TeacherArgs,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    fit: FitArgs,
    /// Engine that calibrates, runs the teacher and scores the exported model.
    #[command(flatten)]
    engine: EngineArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct QatReport {
    quantize: QuantizeReport,
    /// The float model on the test data (the trainer).
    float_test_accuracy: Option<f64>,
    /// The exported INT8 model on the test data, on the engine.
    int8_test_accuracy: Option<f64>,
    /// With --teacher: the distillation settings used.
    temperature: Option<f64>,
    alpha: Option<f64>,
    /// `test_accuracy_before` is the fake-quantized model before fine-tuning (the calibrated
    /// ranges: what post-training quantization gives), `test_accuracy` after.
    fit: FitReport,
}

pub fn run_qat(a: QatArgs) -> anyhow::Result<()> {
    let fit_options = a.fit.options()?;
    let method = match a.calibration_method {
        Method::Minmax => CalibrationMethod::MinMax,
        Method::Percentile if (50.0..=100.0).contains(&a.percentile) => {
            CalibrationMethod::Percentile(a.percentile)
        }
        Method::Percentile => anyhow::bail!("--percentile must be between 50 and 100"),
        Method::Entropy => CalibrationMethod::Entropy,
    };
    let options = QatOptions {
        quantize: QuantizeOptions { method, exclude: a.exclude.clone(), ..QuantizeOptions::default() },
        learn_ranges: !a.freeze_ranges,
    };
    // As `quantize` does: BatchNormalization folded into its Conv first, so the plan and the
    // trained graph are those of the folded model.
    let (onnx, batch_norms_folded) = fold::batch_norms(&model::load(&a.model)?)?;
    let mut graph = TrainGraph::new(&onnx)?;
    let mut splits =
        a.data.load(graph.inputs().first().map(String::as_str).unwrap_or(""), a.teacher.is_some())?;
    let input = check_data(&graph, &onnx, &splits)?;
    let output = fit_options.output.as_deref();
    let float_test_accuracy =
        splits.test.as_ref().map(|t| trainer::accuracy(&graph, t, output, 256)).transpose()?;
    let mut distillation = None;
    if let Some(path) = &a.teacher {
        let teacher = Teacher::new(path.clone(), &a.engine)?;
        distillation = Some(teacher.objective(&mut splits, &a.teacher_args)?);
    }
    let engine = create_engine(&a.engine)?;
    let count = splits.train.len().min(a.calibration_limit.max(1));
    let samples: Vec<Sample> =
        (0..count).map(|i| splits.train.engine_batch(&[i], &input)).collect::<Result<_, _>>()?;
    let bar = progress_bar(count, "calibrating");
    let qat = qat::prepare(&onnx, &mut graph, &samples, engine.as_ref(), &options, &|| bar.inc(1))?;
    bar.finish_and_clear();
    let (mut cross_entropy, mut temperature, mut alpha) = (CrossEntropy, None, None);
    let objective: &mut dyn Objective = match distillation.as_mut() {
        Some((objective, settings, _)) => {
            (temperature, alpha) = (Some(settings.temperature), Some(settings.alpha));
            objective
        }
        None => &mut cross_entropy,
    };
    let fit = fit(&graph, &splits, &fit_options, objective, Vec::new())?;
    let (out, mut quantize) = qat.export(&graph)?;
    quantize.batch_norms_folded = batch_norms_folded;
    model::save(&out, &a.out)?;
    let int8_test_accuracy = match &splits.test {
        Some(test) => {
            let bar = progress_bar(test.len(), "scoring the INT8 model");
            let logits = distill::engine_logits(&a.out, engine.as_ref(), test, &|n| bar.inc(n as u64))
                .with_context(|| format!("running {} on the engine", a.out.display()))?;
            bar.finish_and_clear();
            Some(logits.accuracy(&test.labels))
        }
        None => None,
    };
    let report = QatReport { quantize, float_test_accuracy, int8_test_accuracy, temperature, alpha, fit };
    print_report(a.json, &report, || {
        format!(
            "wrote {}: {} nodes quantized, {} activations, {} weights; test accuracy: float {}, INT8 on the engine {}\n{}",
            a.out.display(),
            report.quantize.nodes_quantized,
            report.quantize.activations_quantized,
            report.quantize.weights_quantized,
            percent(report.float_test_accuracy),
            percent(report.int8_test_accuracy),
            fit_text(&report.fit)
        )
    })
}
