//! The instance-thread side of a batch: run it (the engine joins the requests' inputs into its
//! own buffers), split it, answer each caller. All the copying happens here, never on a tokio
//! worker.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

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
    /// Called on the instance thread once every caller is answered: the scheduler records the
    /// completion and dispatches what is ready next.
    pub done: Box<dyn FnOnce(Completion) + Send>,
}

/// What an instance reports back to the scheduler once every caller is answered.
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

/// Runs one batch on `instance`. Callers that went away are left out before assembly. The
/// completion goes to the scheduler before the replies go out, so that a caller who sends its
/// next request as soon as it has its answer finds the instance free, not still busy with the
/// request it has just been answered for (which would look like company on its way).
pub(crate) fn run_batch(name: &str, instance: &mut dyn ModelInstance, job: BatchJob) {
    let BatchJob { batch, parts, done } = job;
    let before = parts.len();
    let parts: Vec<JobPart> = parts.into_iter().filter(|p| !p.reply.is_closed()).collect();
    let mut completion =
        Completion { batch, cancelled: (before - parts.len()) as u64, ..Completion::default() };
    let mut replies = Vec::new();
    if !parts.is_empty() {
        let (result, measured) = run(name, instance, &parts);
        completion.measured = measured;
        let compute = measured.map_or(Duration::ZERO, |(_, exec)| exec);
        replies = answers(parts, result, compute, &mut completion);
    }
    done(completion);
    for (reply, answer) in replies {
        let _ = reply.send(answer);
    }
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

/// Each caller's answer, counted in `completion`.
fn answers(
    parts: Vec<JobPart>,
    result: Result<Vec<Vec<NamedTensor>>, EngineError>,
    compute: Duration,
    completion: &mut Completion,
) -> Vec<(Reply, Result<Scheduled, InferError>)> {
    let finished = Instant::now();
    let pieces = match result {
        Ok(pieces) => pieces,
        Err(e) => {
            completion.failed += parts.len() as u64;
            return parts.into_iter().map(|part| (part.reply, Err(InferError::Engine(e.clone())))).collect();
        }
    };
    parts
        .into_iter()
        .zip(pieces)
        .map(|(part, piece)| {
            let outputs: Result<Vec<NamedTensor>, EngineError> =
                part.outputs
                    .iter()
                    .map(|name| {
                        piece.iter().find(|o| &o.name == name).cloned().ok_or_else(|| {
                            EngineError::new(format!("the engine returned no output '{name}'"))
                        })
                    })
                    .collect();
            let answer = match outputs {
                Ok(outputs) => {
                    completion.completed += 1;
                    match part.slo_at {
                        Some(due) if finished <= due => completion.slo_met += 1,
                        Some(_) => completion.slo_missed += 1,
                        None => {}
                    }
                    Ok(Scheduled { outputs, queue: part.queued, compute })
                }
                Err(e) => {
                    completion.failed += 1;
                    Err(InferError::Engine(e))
                }
            };
            (part.reply, answer)
        })
        .collect()
}
