//! The instance-thread side of a batch: run it (the engine joins the requests' inputs into its
//! own buffers), split it, answer each caller. All the copying happens here, never on a tokio
//! worker.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::batch::split_rows;
use super::planner::BatchId;
use crate::pool::{infer_batch_caught, infer_caught};
use crate::{batch_inputs, EngineError, InferError, ModelInstance, NamedTensor};

pub(crate) type Reply = oneshot::Sender<Result<Scheduled, InferError>>;

/// A request's outputs, and where its time went.
#[derive(Debug, Clone)]
pub struct Scheduled {
    pub outputs: Vec<NamedTensor>,
    /// Arrival at the scheduler to dispatch to an instance.
    pub queue: Duration,
    /// Time inside the engine for the batch this request ran in.
    pub compute: Duration,
}

/// One request inside a batch.
pub(crate) struct JobPart {
    pub inputs: Vec<NamedTensor>,
    pub rows: usize,
    /// The outputs this caller wants, in its order.
    pub outputs: Vec<String>,
    pub slo_at: Option<Instant>,
    /// How long it waited in the queue.
    pub queued: Duration,
    pub reply: Reply,
}

/// A batch handed to the first free instance.
pub(crate) struct BatchJob {
    pub batch: BatchId,
    pub parts: Vec<JobPart>,
    pub done: mpsc::UnboundedSender<Completion>,
}

/// What an instance reports back to the scheduler task once every caller is answered.
#[derive(Debug, Default)]
pub(crate) struct Completion {
    pub batch: BatchId,
    /// Rows run and engine time, when the engine ran.
    pub measured: Option<(usize, Duration)>,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub slo_met: u64,
    pub slo_missed: u64,
}

/// Runs one batch on `instance`. Callers that went away are left out before assembly.
pub(crate) fn run_batch(name: &str, instance: &mut dyn ModelInstance, job: BatchJob) {
    let BatchJob { batch, parts, done } = job;
    let before = parts.len();
    let parts: Vec<JobPart> = parts.into_iter().filter(|p| !p.reply.is_closed()).collect();
    let mut completion =
        Completion { batch, cancelled: (before - parts.len()) as u64, ..Completion::default() };
    if !parts.is_empty() {
        let (result, measured) = run(name, instance, &parts);
        completion.measured = measured;
        let compute = measured.map_or(Duration::ZERO, |(_, exec)| exec);
        answer(parts, result, compute, &mut completion);
    }
    // The scheduler is gone only when shutting down; nothing is waiting then.
    let _ = done.send(completion);
}

type Measured = Option<(usize, Duration)>;

fn run(
    name: &str,
    instance: &mut dyn ModelInstance,
    parts: &[JobPart],
) -> (Result<Vec<Vec<NamedTensor>>, EngineError>, Measured) {
    let rows: Vec<usize> = parts.iter().map(|p| p.rows).collect();
    let total = rows.iter().sum();
    if let [single] = parts {
        let start = Instant::now();
        let result = infer_caught(name, instance, &single.inputs, &single.outputs);
        return (result.map(|outputs| vec![outputs]), Some((total, start.elapsed())));
    }
    let mut wanted: Vec<String> = Vec::new();
    for output in parts.iter().flat_map(|p| &p.outputs) {
        if !wanted.contains(output) {
            wanted.push(output.clone());
        }
    }
    let inputs: Vec<&[NamedTensor]> = parts.iter().map(|p| p.inputs.as_slice()).collect();
    let batch = match batch_inputs(&inputs) {
        Ok(batch) => batch,
        Err(e) => return (Err(EngineError::new(format!("cannot assemble the batch: {e}"))), None),
    };
    let start = Instant::now();
    let result = infer_batch_caught(name, instance, &batch, &wanted);
    let measured = Some((total, start.elapsed()));
    let split = result.and_then(|outputs| {
        split_rows(&outputs, &rows)
            .map_err(|e| EngineError::new(format!("cannot split the batch outputs: {e}")))
    });
    (split, measured)
}

fn answer(
    parts: Vec<JobPart>,
    result: Result<Vec<Vec<NamedTensor>>, EngineError>,
    compute: Duration,
    completion: &mut Completion,
) {
    let finished = Instant::now();
    match result {
        Ok(pieces) => {
            for (part, piece) in parts.into_iter().zip(pieces) {
                let outputs: Result<Vec<NamedTensor>, EngineError> = part
                    .outputs
                    .iter()
                    .map(|name| {
                        piece.iter().find(|o| &o.name == name).cloned().ok_or_else(|| {
                            EngineError::new(format!("the engine returned no output '{name}'"))
                        })
                    })
                    .collect();
                match outputs {
                    Ok(outputs) => {
                        completion.completed += 1;
                        match part.slo_at {
                            Some(due) if finished <= due => completion.slo_met += 1,
                            Some(_) => completion.slo_missed += 1,
                            None => {}
                        }
                        let _ = part.reply.send(Ok(Scheduled { outputs, queue: part.queued, compute }));
                    }
                    Err(e) => {
                        completion.failed += 1;
                        let _ = part.reply.send(Err(InferError::Engine(e)));
                    }
                }
            }
        }
        Err(e) => {
            for part in parts {
                completion.failed += 1;
                let _ = part.reply.send(Err(InferError::Engine(e.clone())));
            }
        }
    }
}
