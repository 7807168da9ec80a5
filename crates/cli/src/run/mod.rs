//! `rtserve run`: one-shot inference on a model file, without a server. The model's config is
//! read (or inferred) and checked as the server does, each input is validated as a request would
//! be, and the model runs on one engine instance on this thread.

mod inputs;
mod model;
mod output;
mod timing;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use rtserve_core::{validate_request, DataType, InferRequest, NamedTensor};
use rtserve_engines::EngineChoice;

use inputs::{InputKind, InputSource};
use model::RunModel;
use output::{Results, RunOutput};
use timing::Timings;

/// `rtserve run` flags.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The model file: ONNX (.onnx) or TFLite (.tflite: on ONNX Runtime rewritten as ONNX, else on tract).
    #[arg(long, value_name = "FILE")]
    model: PathBuf,

    /// The model's config: a Triton config.pbtxt (*.pbtxt) or an rtserve config.toml (*.toml).
    /// Default: when the model file sits in a repository's version folder
    /// (<model>/<version>/<file>), that model folder's config.pbtxt or config.toml if it has one;
    /// otherwise the config is inferred from the graph, as the server does.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// What to run the model on, each input file once: a .npy file (for a model with one
    /// input), a .npz file (one array per model input, named after it), an image
    /// (.png, .jpg, .jpeg, .webp) or a folder of images (each run on its own, through the
    /// preprocessing the config declares), or - for raw little-endian tensor bytes on stdin
    /// (with --shape). An array without the batch dimension of a batching model runs as a batch
    /// of one.
    #[arg(value_name = "INPUT", required = true)]
    inputs: Vec<PathBuf>,

    /// The shape of the tensor read from stdin (-), comma-separated, e.g. 1,784.
    #[arg(long, value_name = "DIMS", value_delimiter = ',')]
    shape: Option<Vec<usize>>,

    /// The datatype of the tensor read from stdin: FP32, FP16, FP64, INT8..INT64, UINT8..UINT64
    /// or BOOL.
    #[arg(long, default_value = "FP32")]
    datatype: DataType,

    /// Print the K highest-scoring classes of the model's first output (per batch row), with
    /// their labels, instead of the output tensors.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    top_k: Option<u32>,

    /// With --top-k: scores as softmax probabilities rather than the raw outputs.
    #[arg(long, requires = "top_k")]
    softmax: bool,

    /// With --top-k: class names, one a line, in index order. Default: labels.txt in the model
    /// folder, as the server reads it (the --config file's folder, else the folder above the
    /// version folder, else the model file's folder).
    #[arg(long, value_name = "FILE", requires = "top_k")]
    labels: Option<PathBuf>,

    /// Write each output as DIR/<output>.npy (DIR/<input name>/<output>.npy when there are
    /// several inputs) instead of printing the tensors. Nothing is written unless every input
    /// ran; each file appears whole (written aside, then renamed).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// Run each input N times and print the p50 and p99 engine time, the runs per second of
    /// engine time and the peak resident memory of the process (VmHWM) to stderr. The outputs
    /// are those of the last run.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    repeat: Option<u32>,

    /// Threads one inference may use (intra-op). Default: the config's intra_op_threads
    /// parameter, else the engine's own default.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,

    /// Engine: auto (the config's backend, else ONNX Runtime when its library is found, else
    /// tract), onnxruntime or tract. A TFLite file that does not convert to ONNX (an operator
    /// the rewrite lacks) runs on tract whatever this says.
    #[arg(long, env = "RTSERVE_ENGINE", default_value = "auto")]
    engine: EngineChoice,

    /// Path to libonnxruntime.so (or its folder). Default: ORT_DYLIB_PATH, then the
    /// `onnxruntime` Python package, then the system library path.
    #[arg(long, env = "RTSERVE_ORT_LIBRARY")]
    ort_library: Option<PathBuf>,
}

/// Why a run failed; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// What the user gave cannot be used: an input or a flag about inputs, a model or config
    /// file that is missing, unreadable (a corrupt flatbuffer, not an ONNX file) or does not fit
    /// the graph: exit code 2.
    #[error("{0}")]
    Input(String),
    /// The engine cannot start, an instance cannot be made, inference fails, or an output cannot
    /// be written: exit code 1.
    #[error("{0}")]
    Failed(String),
}

impl RunError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            RunError::Input(_) => ExitCode::from(2),
            RunError::Failed(_) => ExitCode::FAILURE,
        }
    }
}

/// Runs the command; prints the error and returns its exit code.
pub fn main(args: RunArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

fn run(args: RunArgs) -> Result<(), RunError> {
    let sources = inputs::sources(&args.inputs)?;
    let stdin_shape = stdin_shape(&args, &sources)?;
    let mut model = RunModel::load(&model::ModelOptions {
        model: &args.model,
        config: args.config.as_deref(),
        engine: args.engine,
        ort_library: args.ort_library.clone(),
        threads: args.threads.map(|t| t as usize),
    })?;
    let out = RunOutput::new(&args.out, args.top_k.map(|k| k as usize), args.softmax, &args.labels, &model)?;
    let repeat = args.repeat.unwrap_or(1) as usize;
    let mut timings = Timings::default();
    let mut results = Results::default();
    for source in &sources {
        let tensors = inputs::read(source, &model, stdin_shape.as_deref(), args.datatype)?;
        let outputs =
            infer(&mut model, tensors, repeat, &mut timings).map_err(|e| e.in_input(&source.label))?;
        results.push(source.label.clone(), outputs);
    }
    out.write(&results)?;
    if args.repeat.is_some() {
        timings.report(model.engine_name());
    }
    Ok(())
}

/// The shape for stdin: given with `-` and only then.
fn stdin_shape(args: &RunArgs, sources: &[InputSource]) -> Result<Option<Vec<usize>>, RunError> {
    let stdin = sources.iter().any(|s| matches!(s.kind, InputKind::Stdin));
    match (&args.shape, stdin) {
        (Some(shape), true) => Ok(Some(shape.clone())),
        (None, true) => Err(RunError::Input("reading a tensor from stdin (-) needs --shape".into())),
        (Some(_), false) => {
            Err(RunError::Input("--shape is for the tensor on stdin (-); no input is -".into()))
        }
        (None, false) => Ok(None),
    }
}

/// Validates the inputs as the server validates a request, then runs them `repeat` times.
fn infer(
    model: &mut RunModel,
    inputs: Vec<NamedTensor>,
    repeat: usize,
    timings: &mut Timings,
) -> Result<Vec<NamedTensor>, RunError> {
    let request = InferRequest { inputs, ..InferRequest::default() };
    validate_request(model.config(), &request).map_err(|e| RunError::Input(e.to_string()))?;
    let mut outputs = Vec::new();
    for _ in 0..repeat {
        let start = Instant::now();
        outputs = model.infer(&request.inputs)?;
        timings.record(start.elapsed());
    }
    Ok(outputs)
}

impl RunError {
    /// The same error, naming the input it is about.
    fn in_input(self, label: &str) -> RunError {
        match self {
            RunError::Input(m) => RunError::Input(format!("{label}: {m}")),
            RunError::Failed(m) => RunError::Failed(format!("{label}: {m}")),
        }
    }
}
