//! The tract engine: pure-Rust ONNX (and TFLite) inference, always available, no setup.
//!
//! A model is read and typed into optimized plans that hold the weights (one for batch 1 where
//! the batch is the only run-time dimension, one for any shape: `plans.rs`); every instance shares
//! them and keeps only its own run state per plan (the buffers reused between inferences).

mod convert;
mod plans;
mod tflite;

use std::collections::hash_map::{Entry, HashMap};
use std::path::Path;
use std::sync::Arc;

use rtserve_core::{
    BatchInput, Device, Engine, EngineError, LoadOptions, ModelInstance, ModelSignature, NamedTensor,
    PreparedModel, Tensor, TensorSpec,
};
use tract_onnx::prelude::*;

use plans::{FileStamp, PlanKey, Plans};

/// The tract engine.
#[derive(Debug, Default, Clone, Copy)]
pub struct TractEngine;

fn engine_error(context: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::new(format!("tract: {context}: {e:#}"))
}

pub use tflite::is_tflite;

/// Reads the model (ONNX, or TFLite by its extension) into tract's typed form, names kept.
fn typed_model(path: &Path) -> Result<TypedModel, EngineError> {
    if is_tflite(path) {
        return tflite::typed_model(path);
    }
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .map_err(|e| engine_error(&format!("cannot read {}", path.display()), e))?;
    model.into_typed().map_err(|e| engine_error("cannot type the model", e))
}

fn spec(name: String, fact: &TypedFact) -> Result<TensorSpec, EngineError> {
    let data_type = convert::data_type(fact.datum_type).ok_or_else(|| {
        EngineError::new(format!("tract: tensor '{name}' has unsupported type {:?}", fact.datum_type))
    })?;
    let dims = fact.shape.iter().map(|d| d.to_i64().unwrap_or(-1)).collect();
    Ok(TensorSpec { name, data_type, dims })
}

fn signature_of(model: &TypedModel) -> Result<ModelSignature, EngineError> {
    let inputs = model
        .input_outlets()
        .map_err(|e| engine_error("inputs", e))?
        .iter()
        .map(|outlet| {
            let fact = model.outlet_fact(*outlet).map_err(|e| engine_error("input fact", e))?;
            spec(model.node(outlet.node).name.clone(), fact)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = model
        .output_outlets()
        .map_err(|e| engine_error("outputs", e))?
        .iter()
        .map(|outlet| {
            let fact = model.outlet_fact(*outlet).map_err(|e| engine_error("output fact", e))?;
            let name = model.outlet_label(*outlet).unwrap_or(&model.node(outlet.node).name).to_string();
            spec(name, fact)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ModelSignature { inputs, outputs })
}

impl Engine for TractEngine {
    fn name(&self) -> &'static str {
        "tract"
    }

    /// Reads the declared inputs and outputs only, without optimizing the graph.
    fn signature(&self, path: &Path) -> Result<ModelSignature, EngineError> {
        signature_of(&typed_model(path)?)
    }

    fn prepare(&self, path: &Path) -> Result<Box<dyn PreparedModel>, EngineError> {
        let stamp = FileStamp::of(path)?;
        let typed = typed_model(path)?;
        let signature = signature_of(&typed)?;
        let input_types = input_types(&typed)?;
        let plans = Arc::new(Plans::new(typed, path, stamp)?);
        Ok(Box::new(TractModel { plans, signature, input_types }))
    }
}

/// The tract type of each input, in order (a quantized type carries its zero point and scale).
fn input_types(model: &TypedModel) -> Result<Vec<DatumType>, EngineError> {
    let outlets = model.input_outlets().map_err(|e| engine_error("inputs", e))?;
    outlets
        .iter()
        .map(|outlet| Ok(model.outlet_fact(*outlet).map_err(|e| engine_error("input fact", e))?.datum_type))
        .collect()
}

/// A model's optimized plans, shared by its instances.
struct TractModel {
    plans: Arc<Plans>,
    signature: ModelSignature,
    input_types: Vec<DatumType>,
}

impl PreparedModel for TractModel {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    /// tract runs an inference on the calling thread: the options do not apply.
    /// An instance on the CPU (tract has no GPU backend: a GPU device is an error).
    fn instance(&self, options: &LoadOptions) -> Result<Box<dyn ModelInstance>, EngineError> {
        if let Device::Gpu(gpu) = &options.device {
            return Err(EngineError::new(format!(
                "the tract engine runs on the CPU only, not on gpu {}",
                gpu.id
            )));
        }
        let mut instance = TractInstance {
            plans: self.plans.clone(),
            states: HashMap::new(),
            signature: self.signature.clone(),
            input_types: self.input_types.clone(),
        };
        instance.state(self.plans.key(1))?;
        if options.batches {
            self.plans.plan(PlanKey::AnyShape)?;
        }
        Ok(Box::new(instance))
    }
}

/// One tract instance: its run state over each of the shared plans it has run.
struct TractInstance {
    plans: Arc<Plans>,
    states: HashMap<PlanKey, TypedSimpleState>,
    signature: ModelSignature,
    input_types: Vec<DatumType>,
}

impl TractInstance {
    /// The run state for the plan `key` asks for, started on first use.
    fn state(&mut self, key: PlanKey) -> Result<&mut TypedSimpleState, EngineError> {
        match self.states.entry(key) {
            Entry::Occupied(state) => Ok(state.into_mut()),
            Entry::Vacant(slot) => {
                let plan = self.plans.plan(key)?;
                Ok(slot.insert(plan.spawn().map_err(|e| engine_error("cannot start the model", e))?))
            }
        }
    }

    /// Orders the given tensors as the model's inputs; a name the model does not have is an error.
    fn ordered_inputs(&self, inputs: &[BatchInput<'_>]) -> Result<TVec<TValue>, EngineError> {
        if let Some(unknown) = inputs.iter().find(|t| !self.signature.inputs.iter().any(|s| s.name == t.name))
        {
            let known: Vec<&str> = self.signature.inputs.iter().map(|s| s.name.as_str()).collect();
            return Err(EngineError::new(format!(
                "tract: the model has no input '{}' (its inputs: {})",
                unknown.name,
                known.join(", ")
            )));
        }
        self.signature
            .inputs
            .iter()
            .zip(&self.input_types)
            .map(|(spec, &datum)| {
                let given = inputs
                    .iter()
                    .find(|t| t.name == spec.name)
                    .ok_or_else(|| EngineError::new(format!("tract: input '{}' is missing", spec.name)))?;
                if given.datatype() != spec.data_type {
                    return Err(EngineError::new(format!(
                        "tract: input '{}' is {}, the model takes {}",
                        spec.name,
                        given.datatype(),
                        spec.data_type
                    )));
                }
                convert::to_tract(given, datum).map(TValue::from)
            })
            .collect()
    }
}

impl ModelInstance for TractInstance {
    fn infer(&mut self, inputs: &[NamedTensor], outputs: &[String]) -> Result<Vec<NamedTensor>, EngineError> {
        self.infer_batch(&BatchInput::singles(inputs), outputs)
    }

    /// Each input's requests are decoded straight into tract's own tensor.
    fn infer_batch(
        &mut self,
        inputs: &[BatchInput<'_>],
        outputs: &[String],
    ) -> Result<Vec<NamedTensor>, EngineError> {
        let values = self.ordered_inputs(inputs)?;
        let rows = values.first().and_then(|v| v.shape().first().copied()).unwrap_or(1);
        let key = self.plans.key(rows);
        let results = self.state(key)?.run(values).map_err(|e| engine_error("inference failed", e))?;
        let mut results: Vec<Option<TValue>> = results.into_iter().map(Some).collect();
        let mut converted: Vec<Option<Tensor>> = vec![None; results.len()];
        let wanted: Vec<&str> = if outputs.is_empty() {
            self.signature.outputs.iter().map(|s| s.name.as_str()).collect()
        } else {
            outputs.iter().map(String::as_str).collect()
        };
        wanted
            .into_iter()
            .map(|name| {
                let index = self
                    .signature
                    .outputs
                    .iter()
                    .position(|s| s.name == name)
                    .ok_or_else(|| EngineError::new(format!("tract: no output '{name}'")))?;
                let not_produced = || EngineError::new(format!("tract: output '{name}' was not produced"));
                let tensor = match converted.get(index).ok_or_else(not_produced)? {
                    // Asked for again: share the first conversion.
                    Some(tensor) => tensor.clone(),
                    None => {
                        let value = results.get_mut(index).and_then(Option::take).ok_or_else(not_produced)?;
                        let tensor = convert::from_tract(value.into_arc_tensor())?;
                        converted[index] = Some(tensor.clone());
                        tensor
                    }
                };
                Ok(NamedTensor { name: name.to_string(), tensor })
            })
            .collect()
    }
}
