//! One loaded model: an ONNX Runtime session that runs rtserve tensors.

use std::borrow::Cow;

use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session, SessionInputValue};
use ort::value::DynValue;
use rtserve_core::{BatchInput, EngineError, ModelInstance, NamedTensor};

use super::convert::{from_output, ort_error, to_input};
use super::staging::Staging;

/// A model instance on ONNX Runtime. It owns its session; ONNX Runtime's `Run` is not safe to
/// call concurrently on one session, which `&mut self` in [`ModelInstance::infer`] rules out.
pub(crate) struct OrtInstance {
    session: Session,
    input_names: Vec<String>,
    output_names: Vec<String>,
    /// Run options that ask for a subset of the outputs, kept for the last subset asked for
    /// (clients usually ask for the same outputs every time).
    selection: Option<(Vec<String>, RunOptions<HasSelectedOutputs>)>,
    /// A GPU instance's pinned host memory and I/O binding; `None` on the CPU.
    staging: Option<Staging>,
}

impl OrtInstance {
    pub(crate) fn new(session: Session) -> Self {
        let input_names = session.inputs().iter().map(|o| o.name().to_string()).collect();
        let output_names = session.outputs().iter().map(|o| o.name().to_string()).collect();
        OrtInstance { session, input_names, output_names, selection: None, staging: None }
    }

    /// Moves batches through `staging` (a GPU instance).
    pub(crate) fn with_staging(mut self, staging: Staging) -> Self {
        self.staging = Some(staging);
        self
    }

    pub(crate) fn session(&self) -> &Session {
        &self.session
    }
}

impl ModelInstance for OrtInstance {
    /// Runs the session. An empty `outputs` returns every output, in the model's order; names may
    /// repeat. Each output keeps the shape ONNX Runtime gives it.
    fn infer(&mut self, inputs: &[NamedTensor], outputs: &[String]) -> Result<Vec<NamedTensor>, EngineError> {
        self.infer_batch(&BatchInput::singles(inputs), outputs)
    }

    /// Each input's requests are decoded straight into the buffer ONNX Runtime runs on (pinned
    /// host memory on a GPU).
    fn infer_batch(
        &mut self,
        inputs: &[BatchInput<'_>],
        outputs: &[String],
    ) -> Result<Vec<NamedTensor>, EngineError> {
        for input in inputs {
            if !self.input_names.iter().any(|n| n == input.name) {
                return Err(unknown("input", input.name, &self.input_names));
            }
        }
        if let Some(missing) = self.input_names.iter().find(|n| !inputs.iter().any(|i| i.name == n.as_str()))
        {
            return Err(EngineError::new(format!("input '{missing}' is missing")));
        }

        let wanted: Vec<String> =
            if outputs.is_empty() { self.output_names.clone() } else { outputs.to_vec() };
        if let Some(name) = wanted.iter().find(|n| !self.output_names.contains(n)) {
            return Err(unknown("output", name, &self.output_names));
        }
        let mut subset: Vec<String> = Vec::with_capacity(wanted.len());
        for name in &self.output_names {
            if wanted.contains(name) {
                subset.push(name.clone());
            }
        }

        let mut results = match &self.staging {
            Some(staging) => staging.run(&mut self.session, inputs, &subset)?,
            None => self.run(inputs, subset)?,
        };

        let mut lent: Vec<NamedTensor> = Vec::with_capacity(wanted.len());
        for name in wanted {
            // Asked for again: share the first one.
            if let Some(first) = lent.iter().find(|t| t.name == name) {
                let tensor = first.tensor.clone();
                lent.push(NamedTensor { name, tensor });
                continue;
            }
            let at = results
                .iter()
                .position(|(n, _)| *n == name)
                .ok_or_else(|| EngineError::new(format!("onnxruntime returned no output '{name}'")))?;
            let (_, value) = results.swap_remove(at);
            let tensor = from_output(value).map_err(|e| EngineError::new(format!("output '{name}': {e}")))?;
            lent.push(NamedTensor { name, tensor });
        }
        Ok(lent)
    }
}

impl OrtInstance {
    /// Runs the session on ordinary memory, computing `subset` (in the model's order).
    fn run(
        &mut self,
        inputs: &[BatchInput<'_>],
        subset: Vec<String>,
    ) -> Result<Vec<(String, DynValue)>, EngineError> {
        let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for input in inputs {
            let value =
                to_input(input).map_err(|e| EngineError::new(format!("input '{}': {e}", input.name)))?;
            values.push((Cow::Borrowed(input.name), value));
        }
        let mut results = if subset.len() == self.output_names.len() {
            self.session.run(values).map_err(ort_error)?
        } else {
            let options = selecting(&mut self.selection, subset.clone())?;
            self.session.run_with_options(values, options).map_err(ort_error)?
        };
        subset
            .into_iter()
            .map(|name| {
                let value = results
                    .remove(&name)
                    .ok_or_else(|| EngineError::new(format!("onnxruntime returned no output '{name}'")))?;
                Ok((name, value))
            })
            .collect()
    }
}

/// The run options that compute exactly `subset`, reusing the cached ones when they match.
fn selecting(
    cache: &mut Option<(Vec<String>, RunOptions<HasSelectedOutputs>)>,
    subset: Vec<String>,
) -> Result<&RunOptions<HasSelectedOutputs>, EngineError> {
    let fresh = cache.as_ref().is_some_and(|(names, _)| *names == subset);
    if !fresh {
        let selector = subset.iter().fold(OutputSelector::no_default(), |s, name| s.with(name.as_str()));
        let options = RunOptions::new().map_err(ort_error)?.with_outputs(selector);
        *cache = Some((subset, options));
    }
    cache.as_ref().map(|(_, options)| options).ok_or_else(|| EngineError::new("output selection missing"))
}

fn unknown(what: &str, name: &str, known: &[String]) -> EngineError {
    EngineError::new(format!("the model has no {what} '{name}' (its {what}s: {})", known.join(", ")))
}
