//! `rtserve optimize`: INT8 quantization, FP16 conversion, evaluation, training, pruning,
//! distillation and quantization-aware training of ONNX models.

mod distill;
mod process;
mod qat;
mod train;

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rtserve_engines::{EngineChoice, Engines};
use rtserve_optimize::calibrate::CalibrationMethod;
use rtserve_optimize::data::{self, ImagePreprocess};
use rtserve_optimize::evaluate::{self, EvaluateOptions};
use rtserve_optimize::fold;
use rtserve_optimize::fp16::{self, Fp16Options};
use rtserve_optimize::model;
use rtserve_optimize::quantize::{self, QuantizeOptions};
use rtserve_optimize::quantize_math::ActivationType;

#[derive(Args)]
pub struct OptimizeArgs {
    #[command(subcommand)]
    command: OptimizeCommand,
}

#[derive(Subcommand)]
enum OptimizeCommand {
    /// INT8 post-training quantization: static (QDQ, calibrated on data; each Conv's
    /// BatchNormalization folded into it first) or --dynamic.
    Quantize(QuantizeArgs),
    /// Convert weights and compute to float16 (inputs/outputs stay float32 by default).
    Fp16(Fp16Args),
    /// Compare a candidate model with its reference: agreement, error, accuracy, latency, size.
    Evaluate(EvaluateArgs),
    /// Fine-tune a model's float weights on labelled data (no Python): SGD or AdamW, held-out
    /// accuracy per epoch, the best epoch written.
    Train(Box<train::TrainArgs>),
    /// Prune a model, then fine-tune it: --method magnitude (zeros, smaller compressed file) or
    /// channels (whole channels removed: a smaller, faster dense model).
    Prune(Box<train::PruneArgs>),
    /// Knowledge distillation: train a smaller student (--student, or --student-width of the
    /// teacher) on a teacher's temperature-softened outputs, and on labels when given
    /// (alpha·T²·KL + (1−alpha)·CE). The teacher runs once, on the engine.
    Distill(Box<distill::DistillArgs>),
    /// Quantization-aware training: fine-tune with fake INT8 quantization where `quantize` puts
    /// Q/DQ (per-channel int8 weights, uint8 activations), ranges from calibration, optionally
    /// distilling from --teacher; writes the same QDQ format as `quantize`.
    Qat(Box<qat::QatArgs>),
}

#[derive(Clone, Copy, ValueEnum)]
enum Method {
    Minmax,
    Percentile,
    Entropy,
}

#[derive(Clone, Copy, ValueEnum)]
enum Activations {
    Uint8,
    Int8,
}

#[derive(Clone, Copy, ValueEnum)]
enum Layout {
    Nchw,
    Nhwc,
}

/// Engine flags shared by the subcommands that run models.
#[derive(Args)]
struct EngineArgs {
    /// Engine that runs the models (calibration, evaluation): auto (ONNX Runtime when found, else
    /// tract), onnxruntime or tract.
    #[arg(long, env = "RTSERVE_ENGINE", default_value = "auto", value_parser = ["auto", "onnxruntime", "tract"])]
    engine: String,
    /// libonnxruntime.so or its folder (default: searched as `rtserve serve` does).
    #[arg(long, env = "RTSERVE_ORT_LIBRARY")]
    ort_library: Option<PathBuf>,
}

/// How a folder of images becomes input tensors (ignored for .npy/.npz data).
#[derive(Args)]
struct ImageArgs {
    /// Resize images so the short side has this many pixels (bilinear); 0 keeps the size.
    #[arg(long, default_value_t = 256)]
    resize: u32,
    /// Centre-crop a square of this side after resizing; 0 keeps the whole image.
    #[arg(long, default_value_t = 224)]
    crop: u32,
    /// Per-channel R,G,B mean subtracted from pixel values 0..255.
    #[arg(long, default_value = "127,127,127")]
    mean: String,
    /// Per-channel R,G,B divisor applied after the mean (x = (pixel - mean) / std).
    #[arg(long, default_value = "128,128,128")]
    std: String,
    /// Tensor layout of the image input.
    #[arg(long, value_enum, default_value = "nchw")]
    layout: Layout,
}

impl ImageArgs {
    fn preprocess(&self) -> anyhow::Result<ImagePreprocess> {
        let triple = |s: &str, flag: &str| -> anyhow::Result<[f32; 3]> {
            let v: Vec<f32> = s
                .split(',')
                .map(|x| x.trim().parse::<f32>())
                .collect::<Result<_, _>>()
                .with_context(|| format!("--{flag} '{s}': expected three numbers, e.g. 127,127,127"))?;
            match v.as_slice() {
                [a] => Ok([*a; 3]),
                [a, b, c] => Ok([*a, *b, *c]),
                _ => bail!("--{flag} '{s}': expected one or three numbers"),
            }
        };
        let std = triple(&self.std, "std")?;
        if std.contains(&0.0) {
            bail!("--std must not be 0");
        }
        Ok(ImagePreprocess {
            resize: self.resize,
            crop: self.crop,
            mean: triple(&self.mean, "mean")?,
            std,
            channels_first: matches!(self.layout, Layout::Nchw),
        })
    }
}

#[derive(Args)]
struct QuantizeArgs {
    /// The float32 ONNX model.
    #[arg(long)]
    model: PathBuf,
    /// Where to write the quantized model.
    #[arg(long)]
    out: PathBuf,
    /// Calibration data (static mode): a .npy file (first axis = samples, for a single-input
    /// model), a .npz file (one array per model input, named after it) or a folder of .png/.jpg
    /// images (see the image flags).
    #[arg(long, required_unless_present = "dynamic")]
    calibration: Option<PathBuf>,
    /// Use at most this many calibration samples.
    #[arg(long)]
    calibration_limit: Option<usize>,
    /// How activation ranges are taken from the calibration data: minmax (smallest/largest
    /// value), percentile (see --percentile) or entropy (the clipping threshold with the least
    /// KL divergence, TensorRT's method).
    #[arg(long, value_enum, default_value = "minmax")]
    calibration_method: Method,
    /// The percentile kept by --calibration-method percentile (both tails are clipped).
    #[arg(long, default_value_t = 99.99)]
    percentile: f64,
    /// Dynamic quantization: int8 weights for MatMul/Gemm, activations quantized at run time
    /// (DynamicQuantizeLinear + MatMulInteger); no calibration data; Conv stays float.
    #[arg(long)]
    dynamic: bool,
    /// Activation type (static mode): uint8 (default; fast U8S8 kernels on x86) or int8.
    #[arg(long, value_enum, default_value = "uint8")]
    activation_type: Activations,
    /// One weight scale per tensor instead of per output channel.
    #[arg(long)]
    per_tensor: bool,
    /// 7-bit weights (±63): for CPUs without VNNI, where u8×s8 products can saturate.
    #[arg(long)]
    reduce_range: bool,
    /// Keep a node (by name) or every node of an op type in float; repeatable, comma-separated.
    #[arg(long, value_delimiter = ',')]
    exclude: Vec<String>,
    /// Op types to quantize (static mode).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "Conv,MatMul,Gemm,Add,GlobalAveragePool,AveragePool,MaxPool,Concat"
    )]
    op_types: Vec<String>,
    /// Keep Relu/Clip nodes after quantized ops instead of folding them into the output range.
    #[arg(long)]
    no_fuse_activations: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    image: ImageArgs,
}

#[derive(Args)]
struct Fp16Args {
    /// The float32 ONNX model.
    #[arg(long)]
    model: PathBuf,
    /// Where to write the float16 model.
    #[arg(long)]
    out: PathBuf,
    /// Keep graph inputs and outputs float32, with Cast nodes at the edges (true by default;
    /// `--keep-io-types false` makes them float16).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    keep_io_types: bool,
    /// Op types or node names kept in float32 behind Casts (replaces the default list).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "Exp,Log,Pow,Range,ReduceL2,ReduceLogSumExp,ReduceProd,ReduceSum,ReduceSumSquare,Resize,Softplus,CumSum,TopK,NonMaxSuppression,RoiAlign"
    )]
    keep_fp32: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EvaluateArgs {
    /// The reference (float32) model.
    #[arg(long)]
    reference: PathBuf,
    /// The candidate (quantized, float16...) model.
    #[arg(long)]
    candidate: PathBuf,
    /// Data: .npy, .npz or a folder of images, as for `quantize --calibration`.
    #[arg(long)]
    data: PathBuf,
    /// Use at most this many samples.
    #[arg(long)]
    limit: Option<usize>,
    /// Class labels for accuracy: a .npy integer array or a text file, one label per sample.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// The output compared (default: the model's first output).
    #[arg(long)]
    output: Option<String>,
    /// Batch sizes to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batch_sizes: Vec<usize>,
    /// Timed runs per batch size (after 3 warm-up runs); the median is reported.
    #[arg(long, default_value_t = 20)]
    latency_runs: usize,
    /// Threads per inference (0: the engine's default).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print the result as JSON instead of Markdown.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    image: ImageArgs,
}

pub fn run(args: OptimizeArgs) -> anyhow::Result<()> {
    process::tune();
    match args.command {
        OptimizeCommand::Quantize(a) => run_quantize(a),
        OptimizeCommand::Fp16(a) => run_fp16(a),
        OptimizeCommand::Evaluate(a) => run_evaluate(a),
        OptimizeCommand::Train(a) => train::run_train(*a),
        OptimizeCommand::Prune(a) => train::run_prune(*a),
        OptimizeCommand::Distill(a) => distill::run_distill(*a),
        OptimizeCommand::Qat(a) => qat::run_qat(*a),
    }
}

fn progress_bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} [{elapsed}<{eta}]") {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar
}

fn create_engine(args: &EngineArgs) -> anyhow::Result<std::sync::Arc<dyn rtserve_core::Engine>> {
    let choice: EngineChoice = args.engine.parse()?;
    Ok(Engines::new(choice, args.ort_library.clone())?.default_engine())
}

fn input_names(engine: &dyn rtserve_core::Engine, path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    Ok(engine.signature(path)?.inputs.into_iter().map(|i| i.name).collect())
}

fn run_quantize(a: QuantizeArgs) -> anyhow::Result<()> {
    let onnx = model::load(&a.model)?;
    let options = QuantizeOptions {
        method: match a.calibration_method {
            Method::Minmax => CalibrationMethod::MinMax,
            Method::Percentile => {
                if !(50.0..=100.0).contains(&a.percentile) {
                    bail!("--percentile must be between 50 and 100");
                }
                CalibrationMethod::Percentile(a.percentile)
            }
            Method::Entropy => CalibrationMethod::Entropy,
        },
        activation_type: match a.activation_type {
            Activations::Uint8 => ActivationType::Uint8,
            Activations::Int8 => ActivationType::Int8,
        },
        per_channel: !a.per_tensor,
        reduce_range: a.reduce_range,
        exclude: a.exclude.clone(),
        op_types: a.op_types.clone(),
        fuse_activations: !a.no_fuse_activations,
    };
    let (out, report) = if a.dynamic {
        quantize::quantize_dynamic(&onnx, &options)?
    } else {
        let calibration = a.calibration.as_ref().context("--calibration is required without --dynamic")?;
        let engine = create_engine(&a.engine)?;
        let names = input_names(engine.as_ref(), &a.model)?;
        let samples = data::load_samples(calibration, &names, &a.image.preprocess()?, a.calibration_limit)?;
        let (onnx, folded) = fold::batch_norms(&onnx)?;
        let bar = progress_bar(samples.len(), "calibrating");
        let (out, mut report) =
            quantize::quantize_static(&onnx, &samples, engine.as_ref(), &options, &|| bar.inc(1))?;
        bar.finish_and_clear();
        report.batch_norms_folded = folded;
        (out, report)
    };
    model::save(&out, &a.out)?;
    print_report(a.json, &report, || {
        format!(
            "wrote {}: {} nodes quantized, {} activations, {} weights, {} Relu/Clip folded, {} BatchNormalization folded, {} excluded\n",
            a.out.display(),
            report.nodes_quantized,
            report.activations_quantized,
            report.weights_quantized,
            report.activations_fused,
            report.batch_norms_folded,
            report.nodes_excluded
        )
    })
}

fn run_fp16(a: Fp16Args) -> anyhow::Result<()> {
    let onnx = model::load(&a.model)?;
    let options = Fp16Options { keep_io_types: a.keep_io_types, keep_fp32: a.keep_fp32.clone() };
    let (out, report) = fp16::convert_fp16(&onnx, &options)?;
    model::save(&out, &a.out)?;
    print_report(a.json, &report, || {
        format!(
            "wrote {}: {} nodes in float16, {} kept float32, {} initializers converted, {} casts\n",
            a.out.display(),
            report.nodes_converted,
            report.nodes_kept_fp32,
            report.initializers_converted,
            report.casts_inserted
        )
    })
}

fn run_evaluate(a: EvaluateArgs) -> anyhow::Result<()> {
    let engine = create_engine(&a.engine)?;
    let names = input_names(engine.as_ref(), &a.reference)?;
    let samples = data::load_samples(&a.data, &names, &a.image.preprocess()?, a.limit)?;
    let labels = a.labels.as_deref().map(data::load_labels).transpose()?;
    let options = EvaluateOptions {
        output: a.output.clone(),
        labels,
        batch_sizes: a.batch_sizes.clone(),
        latency_runs: a.latency_runs,
        intra_op_threads: a.threads,
    };
    let bar = progress_bar(samples.len(), "evaluating");
    let result =
        evaluate::evaluate(&a.reference, &a.candidate, &samples, engine.as_ref(), &options, &|| bar.inc(1))?;
    bar.finish_and_clear();
    print_report(a.json, &result, || evaluate::markdown(&result))
}

/// A subcommand's report on stdout: pretty JSON with `--json`, else the text for people.
fn print_report<T: serde::Serialize>(
    json: bool,
    report: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", text());
    }
    Ok(())
}
