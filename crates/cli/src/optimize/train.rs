//! `rtserve optimize train` and `rtserve optimize prune`: fine-tuning an ONNX model on labelled
//! data, and pruning it (unstructured magnitude or structured channels) with fine-tuning.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rtserve_optimize::model;
use rtserve_optimize::onnx::ModelProto;
use rtserve_optimize::prune::channels::{self, ChannelOptions, Criterion};
use rtserve_optimize::prune::gradual::GradualChannels;
use rtserve_optimize::prune::magnitude::{self, MagnitudeOptions, MagnitudePruner, Scope, SparsitySchedule};
use rtserve_optimize::prune::target::{self, SpeedTarget};
use rtserve_optimize::prune::taylor::taylor_scores;
use rtserve_optimize::train::data::{self as train_data, Dataset, FASHION_MNIST_DIR};
use rtserve_optimize::train::optim::{OptimizerKind, Schedule};
use rtserve_optimize::train::trainer::{
    self, CrossEntropy, Event, Hook, Objective, Plugins, TrainOptions, TrainReport,
};
use rtserve_optimize::train::TrainGraph;
use serde::Serialize;

use super::{create_engine, print_report, EngineArgs, ImageArgs};

/// Where the labelled data comes from.
#[derive(Args)]
pub struct DataArgs {
    /// Training samples: a .npy/.npz file (first axis = samples) or a folder of images.
    #[arg(long, conflicts_with = "fashion_mnist")]
    data: Option<PathBuf>,
    /// One class index per training sample: a .npy integer array or a text file, one per line
    /// (distill and qat --teacher may go without: the teacher's predictions stand in).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Train on Fashion-MNIST's 60,000 training images from this folder of IDX files (Debian's
    /// dataset-fashion-mnist; default folder /usr/share/datasets/fashion-mnist) and test on its
    /// 10,000 test images.
    #[arg(long, num_args = 0..=1, default_missing_value = FASHION_MNIST_DIR)]
    fashion_mnist: Option<PathBuf>,
    /// Held-out samples (choose the best epoch on them); default: the last --heldout of the
    /// training data.
    #[arg(long)]
    heldout_data: Option<PathBuf>,
    /// One class index per --heldout-data sample (as --labels). Required, except where the
    /// training data has no labels either (distill, qat --teacher): the teacher's predictions
    /// then stand in, and the best epoch is the one that agrees with the teacher most.
    #[arg(long)]
    heldout_labels: Option<PathBuf>,
    /// Fraction of the training data held out when no --heldout-data is given (0: none).
    #[arg(long, default_value_t = 0.1)]
    heldout: f64,
    /// Test samples, reported and never used for choosing.
    #[arg(long, requires = "test_labels")]
    test_data: Option<PathBuf>,
    /// One class index per --test-data sample (as --labels).
    #[arg(long)]
    test_labels: Option<PathBuf>,
    /// Use only the first N training samples.
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    image: ImageArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum OptimizerName {
    Sgd,
    Adamw,
}

/// How the model is trained.
#[derive(Args)]
pub struct FitArgs {
    /// Passes over the training data (0: no training).
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Samples per optimizer step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Base learning rate (fine-tuning a trained model, as qat does, wants a small one: 0.001).
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// sgd (with --momentum) or adamw.
    #[arg(long, value_enum, default_value = "sgd")]
    optimizer: OptimizerName,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// L2 weight decay (SGD) or decoupled weight decay (AdamW).
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    /// Learning-rate schedule: cosine, step (÷10 at 50 % and 75 %) or constant.
    #[arg(long, default_value = "cosine")]
    schedule: String,
    /// Seeds shuffling and dropout: the same seed gives the same weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Take the training samples in their order, the same every epoch, instead of reshuffling
    /// them each epoch: to replay a run step by step in another trainer, or for data whose
    /// order is part of the recipe.
    #[arg(long)]
    no_shuffle: bool,
    /// The output holding the logits (default: the model's first output).
    #[arg(long)]
    output: Option<String>,
}

#[derive(Args)]
pub struct TrainArgs {
    /// The ONNX model to train (its float initializers are the weights).
    #[arg(long)]
    model: PathBuf,
    /// Where to write the trained model (the best epoch on the held-out data).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    fit: FitArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum PruneMethod {
    /// Unstructured: the smallest weights become zero (same shapes; a smaller compressed file).
    Magnitude,
    /// Structured: whole channels removed (a smaller, faster dense model).
    Channels,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScopeName {
    Global,
    Layer,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SparsityScheduleName {
    Polynomial,
    Constant,
}

#[derive(Args)]
pub struct PruneArgs {
    /// The ONNX model to prune.
    #[arg(long)]
    model: PathBuf,
    /// Where to write the pruned (and fine-tuned) model.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "magnitude")]
    method: PruneMethod,
    /// Fraction of weights (magnitude) or of each group's channels (channels) removed, in (0, 1).
    #[arg(long, default_value_t = 0.5)]
    sparsity: f64,
    /// Magnitude: one threshold for all weights (global) or one per layer. Channels: --sparsity of
    /// all prunable channels, taken where they matter least (global), or of each group's
    /// (layer). Default: global for magnitude, layer for channels.
    #[arg(long, value_enum)]
    scope: Option<ScopeName>,
    /// Sparsity rising from 0 over 70 % of fine-tuning (polynomial: the smallest weights, or
    /// whole channels, silenced step by step; channels are cut out at the end) or at once
    /// (constant: channels are cut out before fine-tuning). Default: polynomial for magnitude,
    /// constant for channels.
    #[arg(long, value_enum)]
    sparsity_schedule: Option<SparsityScheduleName>,
    /// Channels: importance by l2 or l1 norm of the producing weights, bn (BatchNorm scale), or
    /// taylor: the loss change removing the channel causes, estimated to first order from the
    /// gradients of the weights that read it on 32 training batches (Molchanov et al., 2019).
    #[arg(long, default_value = "l2")]
    criterion: String,
    /// Channels: keep a multiple of this many channels in each group.
    #[arg(long, default_value_t = 1)]
    round_to: usize,
    /// Channels: prune in steps of 10 % until batch-1 latency on the engine is at most this many
    /// milliseconds (--sparsity is then the most it may reach).
    #[arg(long, conflicts_with = "target_speedup")]
    target_latency: Option<f64>,
    /// Channels: prune in steps until the model is this many times faster at batch 1.
    #[arg(long)]
    target_speedup: Option<f64>,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    fit: FitArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// The data sets of a run.
pub(super) struct Splits {
    pub(super) train: Dataset,
    pub(super) heldout: Option<Dataset>,
    pub(super) test: Option<Dataset>,
    /// Whether the training (and split-off held-out) data came with labels; without, every
    /// label is 0 until a teacher relabels them.
    pub(super) labelled: bool,
}

impl DataArgs {
    /// The data sets; `--data` without `--labels` only where `unlabelled_ok`.
    pub(super) fn load(&self, input: &str, unlabelled_ok: bool) -> anyhow::Result<Splits> {
        let images = self.image.preprocess()?;
        let labelled = self.labels.is_some() || self.fashion_mnist.is_some();
        let (mut train, mut test) = match (&self.data, &self.fashion_mnist) {
            (Some(data), None) => {
                if !labelled && !unlabelled_ok {
                    bail!("--labels is required with --data");
                }
                (train_data::load(data, self.labels.as_deref(), input, &images)?, None)
            }
            (None, Some(dir)) => {
                let train = train_data::fashion_mnist(dir, "train").with_context(|| {
                    format!("Fashion-MNIST in {} (apt-get install dataset-fashion-mnist)", dir.display())
                })?;
                (train, Some(train_data::fashion_mnist(dir, "t10k")?))
            }
            _ => bail!("give training data: --data FILE --labels FILE, or --fashion-mnist [DIR]"),
        };
        if let Some(n) = self.limit {
            train = train.truncate(n);
        }
        let heldout = match (&self.heldout_data, &self.heldout_labels) {
            (Some(d), Some(l)) => Some(train_data::load(d, Some(l), input, &images)?),
            (Some(_), None) if labelled || !unlabelled_ok => {
                bail!("--heldout-labels is required with --heldout-data (it may be left out only when the training data has no labels either, with a teacher)")
            }
            (Some(d), None) => Some(train_data::load(d, None, input, &images)?),
            _ if self.heldout > 0.0 => Some(train.split_off(self.heldout)?),
            _ => None,
        };
        if let (Some(d), Some(l)) = (&self.test_data, &self.test_labels) {
            test = Some(train_data::load(d, Some(l), input, &images)?);
        }
        Ok(Splits { train, heldout, test, labelled })
    }
}

impl FitArgs {
    pub(super) fn options(&self) -> anyhow::Result<TrainOptions> {
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if !self.lr.is_finite() || self.lr <= 0.0 {
            bail!("--lr must be positive");
        }
        Ok(TrainOptions {
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.lr,
            optimizer: match self.optimizer {
                OptimizerName::Sgd => {
                    OptimizerKind::Sgd { momentum: self.momentum, weight_decay: self.weight_decay }
                }
                OptimizerName::Adamw => OptimizerKind::AdamW { weight_decay: self.weight_decay },
            },
            schedule: self.schedule.parse::<Schedule>()?,
            seed: self.seed,
            shuffle: !self.no_shuffle,
            output: self.output.clone(),
        })
    }
}

/// The trained model's figures.
#[derive(Serialize)]
pub(super) struct FitReport {
    pub(super) training: TrainReport,
    pub(super) heldout_accuracy: Option<f64>,
    pub(super) test_accuracy: Option<f64>,
    pub(super) test_accuracy_before: Option<f64>,
}

/// The model's one input and the shape the data must fit.
pub(super) fn check_data(graph: &TrainGraph, onnx: &ModelProto, splits: &Splits) -> anyhow::Result<String> {
    let [input] = graph.inputs() else {
        bail!("the trainer feeds models with one input; this one has {:?}", graph.inputs());
    };
    let info = onnx.graph.as_ref().and_then(|g| g.input.iter().find(|i| &i.name == input));
    if let Some(dims) = info.and_then(model::tensor_dims) {
        for set in [Some(&splits.train), splits.heldout.as_ref(), splits.test.as_ref()].into_iter().flatten()
        {
            set.check_fits(input, &dims)?;
        }
    }
    Ok(input.clone())
}

/// Trains with a progress bar; Ctrl-C stops after the current step and keeps the best epoch.
pub(super) fn fit(
    graph: &TrainGraph,
    splits: &Splits,
    options: &TrainOptions,
    objective: &mut dyn Objective,
    hooks: Vec<&mut dyn Hook>,
) -> anyhow::Result<FitReport> {
    let test_accuracy_before = match (&splits.test, options.epochs) {
        (Some(test), e) if e > 0 => Some(trainer::accuracy(graph, test, options.output.as_deref(), 256)?),
        _ => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed)) {
        tracing::warn!("Ctrl-C will not keep the best model: {e}");
    }
    let steps = splits.train.len().div_ceil(options.batch_size) as u64;
    let bar = ProgressBar::new(steps);
    if let Ok(style) =
        ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} {msg} [{elapsed}<{eta}]")
    {
        bar.set_style(style);
    }
    let epochs = options.epochs;
    let mut on_event = |event: &Event| match event {
        Event::Step { epoch, step, loss, .. } => {
            bar.set_prefix(format!("{}/{epochs}", epoch + 1));
            bar.set_position(*step as u64 + 1);
            if step % 10 == 0 {
                bar.set_message(format!("loss {loss:.4}"));
            }
        }
        Event::Epoch(f) => {
            let acc = f
                .heldout_accuracy
                .map(|a| format!(", held-out accuracy {:.2} %", a * 100.0))
                .unwrap_or_default();
            let line = format!("epoch {}: loss {:.4}{acc} ({:.1} s)", f.epoch + 1, f.train_loss, f.seconds);
            // A hidden bar (stderr not a terminal) prints nothing, not even its println.
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
            bar.reset();
        }
    };
    let plugins = Plugins { objective, hooks, stop: &stop, on_event: &mut on_event };
    let training = trainer::train(graph, &splits.train, splits.heldout.as_ref(), options, plugins)?;
    bar.finish_and_clear();
    if training.interrupted {
        eprintln!("interrupted: writing the best model so far");
    }
    let output = options.output.as_deref();
    let heldout_accuracy =
        splits.heldout.as_ref().map(|h| trainer::accuracy(graph, h, output, 256)).transpose()?;
    let test_accuracy = splits.test.as_ref().map(|t| trainer::accuracy(graph, t, output, 256)).transpose()?;
    Ok(FitReport { training, heldout_accuracy, test_accuracy, test_accuracy_before })
}

pub(super) fn percent(v: Option<f64>) -> String {
    v.map(|a| format!("{:.2} %", a * 100.0)).unwrap_or_else(|| "-".into())
}

pub(super) fn fit_text(r: &FitReport) -> String {
    format!(
        "held-out accuracy {}, test accuracy {} (before: {}); {} epochs in {:.1} s, best epoch {}{}\n",
        percent(r.heldout_accuracy),
        percent(r.test_accuracy),
        percent(r.test_accuracy_before),
        r.training.epochs.len(),
        r.training.seconds,
        r.training.best_epoch.map(|e| (e + 1).to_string()).unwrap_or_else(|| "-".into()),
        if r.training.interrupted { " (interrupted)" } else { "" },
    )
}

pub fn run_train(a: TrainArgs) -> anyhow::Result<()> {
    let onnx = model::load(&a.model)?;
    let graph = TrainGraph::new(&onnx)?;
    let splits = a.data.load(graph.inputs().first().map(String::as_str).unwrap_or(""), false)?;
    check_data(&graph, &onnx, &splits)?;
    let report = fit(&graph, &splits, &a.fit.options()?, &mut CrossEntropy, Vec::new())?;
    model::save(&graph.to_model()?, &a.out)?;
    print_report(a.json, &report, || format!("wrote {}: {}", a.out.display(), fit_text(&report)))
}

#[derive(Serialize)]
struct PruneReport {
    method: &'static str,
    sparsity: f64,
    /// Channels: each dependency group, its channels before and after.
    groups: Vec<channels::GroupReport>,
    /// Channels with a speed target: each step measured on the engine.
    search: Vec<target::Step>,
    /// Magnitude: the zeros of each pruned weight.
    layers: Vec<magnitude::LayerSparsity>,
    params_before: usize,
    params_after: usize,
    nonzero_after: usize,
    file_bytes_before: u64,
    file_bytes_after: u64,
    gzip_bytes_before: u64,
    gzip_bytes_after: u64,
    fit: FitReport,
}

fn scope(name: ScopeName) -> Scope {
    match name {
        ScopeName::Global => Scope::Global,
        ScopeName::Layer => Scope::PerLayer,
    }
}

pub(super) fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

pub fn run_prune(a: PruneArgs) -> anyhow::Result<()> {
    let onnx = model::load(&a.model)?;
    channels::check_sparsity(a.sparsity)?;
    let options = a.fit.options()?;
    let original = TrainGraph::new(&onnx)?;
    let (params_before, _) = original.weight_counts()?;
    let splits = a.data.load(original.inputs().first().map(String::as_str).unwrap_or(""), false)?;
    let input = check_data(&original, &onnx, &splits)?;
    let mut report = PruneReport {
        method: "",
        sparsity: a.sparsity,
        groups: Vec::new(),
        search: Vec::new(),
        layers: Vec::new(),
        params_before,
        params_after: 0,
        nonzero_after: 0,
        file_bytes_before: file_size(&a.model),
        file_bytes_after: 0,
        gzip_bytes_before: magnitude::gzip_size(&onnx)?,
        gzip_bytes_after: 0,
        fit: FitReport {
            training: TrainReport::default(),
            heldout_accuracy: None,
            test_accuracy: None,
            test_accuracy_before: None,
        },
    };
    let graph = match a.method {
        PruneMethod::Magnitude => {
            report.method = "magnitude";
            let mut pruner = MagnitudePruner::new(
                &original,
                MagnitudeOptions {
                    sparsity: a.sparsity,
                    scope: scope(a.scope.unwrap_or(ScopeName::Global)),
                    schedule: match a.sparsity_schedule.unwrap_or(SparsityScheduleName::Polynomial) {
                        SparsityScheduleName::Polynomial => SparsitySchedule::Polynomial,
                        SparsityScheduleName::Constant => SparsitySchedule::Constant,
                    },
                },
            )?;
            if options.epochs == 0 {
                pruner.prune_to(&original, a.sparsity)?;
            } else {
                report.fit = fit(&original, &splits, &options, &mut CrossEntropy, vec![&mut pruner])?;
            }
            report.layers = pruner.report(&original)?;
            original
        }
        PruneMethod::Channels => {
            report.method = "channels";
            let criterion = a.criterion.parse::<Criterion>()?;
            let gradual = a.sparsity_schedule == Some(SparsityScheduleName::Polynomial) && options.epochs > 0;
            if gradual {
                // Before the scores are measured, not after.
                GradualChannels::check_criterion(criterion)?;
            }
            let scores = match criterion {
                Criterion::Taylor => Some(Arc::new(taylor_scores(
                    &onnx,
                    &splits.train,
                    options.batch_size,
                    options.seed,
                    options.output.as_deref(),
                )?)),
                _ => None,
            };
            let mut channel_options = ChannelOptions {
                sparsity: a.sparsity,
                criterion,
                scope: scope(a.scope.unwrap_or(ScopeName::Layer)),
                round_to: a.round_to,
                scores,
            };
            let wanted = match (a.target_latency, a.target_speedup) {
                (Some(ms), _) => Some(SpeedTarget::LatencyMs(ms)),
                (_, Some(x)) => Some(SpeedTarget::Speedup(x)),
                _ => None,
            };
            if let Some(wanted) = wanted {
                let engine = create_engine(&a.engine)?;
                let search =
                    target::search(&onnx, &channel_options, engine.as_ref(), &splits.train, &input, wanted)?;
                channel_options.sparsity = search.sparsity;
                report.sparsity = search.sparsity;
                report.search = search.steps;
                if !search.met {
                    eprintln!(
                        "the target was not met at sparsity {:.2}; keeping that model",
                        search.sparsity
                    );
                }
            }
            if gradual {
                // Silenced step by step while the whole model fine-tunes, then cut out.
                let mut pruner = GradualChannels::new(&original, channel_options)?;
                report.fit = fit(&original, &splits, &options, &mut CrossEntropy, vec![&mut pruner])?;
                let (pruned, groups) = pruner.finish(&original)?;
                report.groups = groups;
                TrainGraph::new(&pruned)?
            } else {
                let (pruned, groups) = channels::prune_channels(&onnx, &channel_options)?;
                report.groups = groups;
                let graph = TrainGraph::new(&pruned)?;
                if options.epochs > 0 {
                    report.fit = fit(&graph, &splits, &options, &mut CrossEntropy, Vec::new())?;
                }
                graph
            }
        }
    };
    if options.epochs == 0 {
        let output = options.output.as_deref();
        report.fit.heldout_accuracy =
            splits.heldout.as_ref().map(|h| trainer::accuracy(&graph, h, output, 256)).transpose()?;
        report.fit.test_accuracy =
            splits.test.as_ref().map(|t| trainer::accuracy(&graph, t, output, 256)).transpose()?;
    }
    let out = graph.to_model()?;
    model::save(&out, &a.out)?;
    (report.params_after, report.nonzero_after) = graph.weight_counts()?;
    report.file_bytes_after = file_size(&a.out);
    report.gzip_bytes_after = magnitude::gzip_size(&out)?;
    print_report(a.json, &report, || {
        let pruned_groups = report.groups.iter().filter(|g| g.kept < g.channels).count();
        let structure = if report.method == "channels" {
            format!("{pruned_groups} of {} channel groups pruned; ", report.groups.len())
        } else {
            String::new()
        };
        format!(
            "wrote {}: {structure}weights {} → {} ({} non-zero); file {} → {} bytes, gzip {} → {} bytes ({:.2}×)\n{}",
            a.out.display(),
            report.params_before,
            report.params_after,
            report.nonzero_after,
            report.file_bytes_before,
            report.file_bytes_after,
            report.gzip_bytes_before,
            report.gzip_bytes_after,
            report.gzip_bytes_after as f64 / report.gzip_bytes_before.max(1) as f64,
            fit_text(&report.fit)
        )
    })
}
