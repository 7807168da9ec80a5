//! The tract engine: pure-Rust ONNX inference, always available, no setup.
//!
//! A model is optimized once per instance with a symbolic batch dimension; each instance keeps
//! its own run state so buffers are reused between inferences.

mod convert;

use std::path::Path;

use rtserve_core::{
    BatchInput, Engine, EngineError, LoadOptions, ModelInstance, ModelSignature, NamedTensor, Tensor,
    TensorSpec,
};
use tract_onnx::prelude::*;

/// The tract engine.
#[derive(Debug, Default, Clone, Copy)]
pub struct TractEngine;

fn engine_error(context: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::new(format!("tract: {context}: {e}"))
}

/// Reads the model into tract's typed form, names kept.
fn typed_model(path: &Path) -> Result<TypedModel, EngineError> {
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

    fn signature(&self, path: &Path) -> Result<ModelSignature, EngineError> {
        signature_of(&typed_model(path)?)
    }

    fn load(&self, path: &Path, _options: &LoadOptions) -> Result<Box<dyn ModelInstance>, EngineError> {
        let typed = typed_model(path)?;
        let signature = signature_of(&typed)?;
        let optimized = typed.into_optimized().map_err(|e| engine_error("cannot optimize the model", e))?;
        let plan = optimized.into_runnable().map_err(|e| engine_error("cannot plan the model", e))?;
        let state = plan.spawn().map_err(|e| engine_error("cannot start the model", e))?;
        Ok(Box::new(TractInstance { state, signature }))
    }
}

/// One tract instance: its run state (which holds the optimized plan).
struct TractInstance {
    state: TypedSimpleState,
    signature: ModelSignature,
}

impl TractInstance {
    /// Orders the given tensors as the model's inputs.
    fn ordered_inputs(&self, inputs: &[BatchInput<'_>]) -> Result<TVec<TValue>, EngineError> {
        self.signature
            .inputs
            .iter()
            .map(|spec| {
                let given = inputs
                    .iter()
                    .find(|t| t.name == spec.name)
                    .ok_or_else(|| EngineError::new(format!("tract: input '{}' is missing", spec.name)))?;
                convert::to_tract(given).map(TValue::from)
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
        let results = self.state.run(values).map_err(|e| engine_error("inference failed", e))?;
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
