//! The training loop: shuffled minibatches, an objective, an optimizer with a schedule, held-out
//! accuracy after each epoch, the best epoch kept, and a stop flag (Ctrl-C) that ends the run
//! with the best weights so far. Pruning plugs in through [`Hook`], distillation through
//! [`Objective`], quantization-aware training through the graph's
//! [`Tap`](super::graph::Tap).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Tensor, D};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::data::Dataset;
use super::graph::{Mode, TrainGraph};
use super::ops::log_softmax;
use super::optim::{Optimizer, OptimizerKind, Schedule};
use crate::error::{OptimizeError, Result};

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub optimizer: OptimizerKind,
    pub schedule: Schedule,
    /// Seeds shuffling and dropout: the same seed gives the same weights.
    pub seed: u64,
    /// Reshuffle the training samples every epoch; `false`: minibatches in the data's order.
    pub shuffle: bool,
    /// The graph output holding the logits; `None`: the first output.
    pub output: Option<String>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 5,
            batch_size: 64,
            learning_rate: 0.05,
            optimizer: OptimizerKind::Sgd { momentum: 0.9, weight_decay: 5e-4 },
            schedule: Schedule::Cosine,
            seed: 0,
            shuffle: true,
            output: None,
        }
    }
}

/// One training batch, as an [`Objective`] sees it.
pub struct Batch<'a> {
    pub inputs: &'a Tensor,
    /// `[n]` class indices.
    pub labels: &'a Tensor,
    /// The positions of the batch's samples in the training set.
    pub indices: &'a [usize],
}

/// What the loss is computed from.
pub trait Objective {
    /// The scalar loss of a batch from the model's `logits`.
    fn loss(&mut self, logits: &Tensor, batch: &Batch<'_>) -> Result<Tensor>;
}

/// Cross-entropy against the labels.
pub struct CrossEntropy;

impl Objective for CrossEntropy {
    fn loss(&mut self, logits: &Tensor, batch: &Batch<'_>) -> Result<Tensor> {
        cross_entropy(logits, batch.labels)
    }
}

/// Mean cross-entropy of `[n, classes]` logits against `[n]` class indices.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logp = log_softmax(logits)?;
    let picked = logp.gather(&labels.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    Ok(picked.mean_all()?.neg()?)
}

/// Called around optimizer steps (pruning masks, schedules).
pub trait Hook {
    /// Before the first step, with the number of steps the run will take.
    fn start(&mut self, _graph: &TrainGraph, _total_steps: usize) -> Result<()> {
        Ok(())
    }
    /// After each optimizer step (`step` counts from 0).
    fn after_step(&mut self, graph: &TrainGraph, step: usize) -> Result<()>;
    /// Whether the weights as they are now may be kept as the best epoch (a pruner whose
    /// schedule has not reached its final sparsity says no).
    fn settled(&self) -> bool {
        true
    }
}

/// What the loop reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Step { epoch: usize, step: usize, steps_per_epoch: usize, loss: f64 },
    Epoch(EpochFigures),
}

/// One epoch's figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EpochFigures {
    pub epoch: usize,
    pub train_loss: f64,
    pub heldout_accuracy: Option<f64>,
    pub seconds: f64,
}

/// The result of [`train`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TrainReport {
    pub epochs: Vec<EpochFigures>,
    /// The epoch whose weights the graph holds now (best held-out accuracy among the epochs that
    /// ended with every hook settled; the last without a
    /// held-out set); `None` when no epoch finished.
    pub best_epoch: Option<usize>,
    pub interrupted: bool,
    pub seconds: f64,
}

/// The graph output holding the logits: `output` when the model has it, else the first.
pub(crate) fn output_name(graph: &TrainGraph, output: Option<&str>) -> Result<String> {
    match output {
        Some(o) if graph.outputs().iter().any(|name| name == o) => Ok(o.to_string()),
        Some(o) => {
            Err(OptimizeError::Option(format!("the model has no output '{o}' ({:?})", graph.outputs())))
        }
        None => {
            graph.outputs().first().cloned().ok_or_else(|| OptimizeError::model("the model has no outputs"))
        }
    }
}

/// The model's one input (the trainer feeds models with one).
pub(crate) fn single_input(graph: &TrainGraph) -> Result<String> {
    match graph.inputs() {
        [one] => Ok(one.clone()),
        other => Err(OptimizeError::model(format!(
            "the trainer feeds models with one input; this one has {} ({other:?})",
            other.len()
        ))),
    }
}

/// The logits of a batch in the given mode.
pub fn logits(
    graph: &TrainGraph,
    input: &str,
    output: &str,
    x: Tensor,
    mode: Mode,
    rng: &mut StdRng,
) -> Result<(Tensor, Vec<super::graph::RunningUpdate>)> {
    let mut forward = graph.forward(&[(input.to_string(), x)], mode, rng)?;
    let y = forward
        .values
        .remove(output)
        .ok_or_else(|| OptimizeError::model(format!("output '{output}' was not computed")))?;
    if y.rank() != 2 {
        return Err(OptimizeError::model(format!(
            "output '{output}' has shape {:?}; training needs [batch, classes] logits",
            y.dims()
        )));
    }
    Ok((y, forward.running))
}

/// Top-1 accuracy of the graph (inference mode) on a data set.
pub fn accuracy(graph: &TrainGraph, data: &Dataset, output: Option<&str>, batch_size: usize) -> Result<f64> {
    let input = single_input(graph)?;
    let output = output_name(graph, output)?;
    let mut rng = StdRng::seed_from_u64(0);
    let mut correct = 0usize;
    for indices in data.minibatches(batch_size, None) {
        let (x, labels) = data.batch(&indices)?;
        let (y, _) = logits(graph, &input, &output, x, Mode::Eval, &mut rng)?;
        let predicted = y.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let labels = labels.to_vec1::<u32>()?;
        correct += predicted.iter().zip(&labels).filter(|(p, l)| p == l).count();
    }
    Ok(correct as f64 / data.len().max(1) as f64)
}

/// What a caller plugs into a run.
pub struct Plugins<'a, 'h> {
    pub objective: &'a mut dyn Objective,
    pub hooks: Vec<&'h mut dyn Hook>,
    /// Set (by a Ctrl-C handler) to end the run with the best weights so far.
    pub stop: &'a AtomicBool,
    pub on_event: &'a mut dyn FnMut(&Event),
}

/// Trains `graph` in place on `train`, choosing the best epoch on `heldout` when given.
pub fn train(
    graph: &TrainGraph,
    train: &Dataset,
    heldout: Option<&Dataset>,
    options: &TrainOptions,
    plugins: Plugins<'_, '_>,
) -> Result<TrainReport> {
    let Plugins { objective, mut hooks, stop, on_event } = plugins;
    if train.is_empty() {
        return Err(OptimizeError::data("the training set is empty"));
    }
    if options.batch_size == 0 {
        return Err(OptimizeError::Option("the batch size must be at least 1".into()));
    }
    let input = single_input(graph)?;
    let output = output_name(graph, options.output.as_deref())?;
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(options.seed);
    let steps_per_epoch = train.len().div_ceil(options.batch_size);
    let total = steps_per_epoch * options.epochs;
    let mut optimizer = Optimizer::new(options.optimizer, graph.trainable_vars(), options.learning_rate)?;
    for hook in hooks.iter_mut() {
        hook.start(graph, total)?;
    }
    let mut report = TrainReport { epochs: Vec::new(), best_epoch: None, interrupted: false, seconds: 0.0 };
    let mut best: Option<(f64, Vec<Tensor>)> = None;
    let mut step = 0usize;
    'epochs: for epoch in 0..options.epochs {
        let epoch_start = Instant::now();
        let (mut loss_sum, mut loss_count) = (0f64, 0usize);
        for (i, indices) in
            train.minibatches(options.batch_size, options.shuffle.then_some(&mut rng)).into_iter().enumerate()
        {
            if stop.load(Ordering::Relaxed) {
                report.interrupted = true;
                break 'epochs;
            }
            let (x, labels) = train.batch(&indices)?;
            let (y, running) = logits(graph, &input, &output, x.clone(), Mode::Train, &mut rng)?;
            let loss = objective.loss(&y, &Batch { inputs: &x, labels: &labels, indices: &indices })?;
            let grads = loss.backward()?;
            let rate = options.schedule.rate(options.learning_rate, step, total);
            optimizer.step(&grads, rate)?;
            graph.apply_running(&running)?;
            for hook in hooks.iter_mut() {
                hook.after_step(graph, step)?;
            }
            let loss = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !loss.is_finite() {
                return Err(OptimizeError::data(format!(
                    "the loss became {loss} at epoch {} step {i}: lower the learning rate",
                    epoch + 1
                )));
            }
            loss_sum += loss;
            loss_count += 1;
            step += 1;
            on_event(&Event::Step { epoch, step: i, steps_per_epoch, loss });
        }
        let heldout_accuracy =
            heldout.map(|h| accuracy(graph, h, Some(&output), options.batch_size.max(256))).transpose()?;
        let figures = EpochFigures {
            epoch,
            train_loss: loss_sum / loss_count.max(1) as f64,
            heldout_accuracy,
            seconds: epoch_start.elapsed().as_secs_f64(),
        };
        on_event(&Event::Epoch(figures.clone()));
        let score = heldout_accuracy.unwrap_or(epoch as f64);
        let settled = hooks.iter().all(|h| h.settled());
        if settled && best.as_ref().is_none_or(|(s, _)| score > *s) {
            best = Some((score, graph.snapshot()?));
            report.best_epoch = Some(epoch);
        }
        report.epochs.push(figures);
    }
    if let Some((_, snapshot)) = &best {
        graph.restore(snapshot)?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
