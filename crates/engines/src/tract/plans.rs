//! A model's optimized plans: one per batch size when the batch is the graph's only run-time
//! dimension.
//!
//! tract optimizes a graph far better when every dimension is known. On the 2-vCPU development
//! machine, one thread, the zoo's MobileNetV2 runs a batch of one in 13 ms on a plan made for
//! batch 1 and in 122 ms on a plan whose batch is symbolic; ResNet-50 in 55 ms against 143 ms
//! (docs/edge.md, "tract and the batch dimension"). So a model whose inputs all lead with the same
//! symbolic dimension, and have no other, gets a plan per batch size, made on first use and
//! shared by every instance; past [`MAX_BATCH_PLANS`] sizes, the symbolic plan serves the rest
//! (each plan holds its own packed copy of the weights). Any other model has one plan, made at
//! load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use rtserve_core::EngineError;
use tract_onnx::prelude::*;

use super::engine_error;

/// The most batch sizes that get a plan of their own.
pub const MAX_BATCH_PLANS: usize = 8;

/// Which plan a run takes: the one made for its batch size, or the one for any shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlanKey {
    Batch(usize),
    AnyShape,
}

/// The plans of one model.
pub struct Plans {
    /// The decluttered graph every plan is made from.
    typed: TypedModel,
    /// The symbolic batch dimension, when it is the graph's only run-time dimension.
    batch: Option<Symbol>,
    made: Mutex<HashMap<PlanKey, Arc<TypedRunnableModel>>>,
}

/// The symbol that leads every input's shape, when no other input dimension is symbolic.
fn batch_symbol(model: &TypedModel) -> TractResult<Option<Symbol>> {
    let mut batch = None;
    for outlet in model.input_outlets()? {
        let shape = &model.outlet_fact(*outlet)?.shape;
        let Some(TDim::Sym(lead)) = shape.iter().next() else { return Ok(None) };
        if shape.iter().skip(1).any(|d| d.to_i64().is_err()) || batch.as_ref().is_some_and(|b| b != lead) {
            return Ok(None);
        }
        batch = Some(lead.clone());
    }
    Ok(batch)
}

impl Plans {
    /// Declutters the graph and makes the plan every model needs at load: batch 1 when the batch
    /// gets plans of its own, else the one plan.
    pub fn new(typed: TypedModel) -> Result<Self, EngineError> {
        let typed = typed.into_decluttered().map_err(|e| engine_error("cannot optimize the model", e))?;
        let batch = batch_symbol(&typed).map_err(|e| engine_error("cannot read the inputs", e))?;
        let plans = Plans { typed, batch, made: Mutex::new(HashMap::new()) };
        plans.plan(plans.key(1))?;
        Ok(plans)
    }

    /// The plan for a run whose inputs lead with `batch` rows.
    pub fn key(&self, batch: usize) -> PlanKey {
        if self.batch.is_some() {
            PlanKey::Batch(batch)
        } else {
            PlanKey::AnyShape
        }
    }

    /// The plan for `key`, made now if it is new. A batch size past the limit takes the
    /// symbolic plan.
    pub fn plan(&self, key: PlanKey) -> Result<Arc<TypedRunnableModel>, EngineError> {
        let mut made = self.made.lock().unwrap_or_else(PoisonError::into_inner);
        let batch_plans = made.keys().filter(|k| matches!(k, PlanKey::Batch(_))).count();
        let key = match key {
            PlanKey::Batch(_) if !made.contains_key(&key) && batch_plans >= MAX_BATCH_PLANS => {
                PlanKey::AnyShape
            }
            key => key,
        };
        if let Some(plan) = made.get(&key) {
            return Ok(plan.clone());
        }
        let model = match (key, &self.batch) {
            (PlanKey::Batch(rows), Some(symbol)) => {
                let rows = i64::try_from(rows).map_err(|e| engine_error("batch size", e))?;
                self.typed
                    .set_symbols(&HashMap::from([(symbol.clone(), TDim::Val(rows))]))
                    .map_err(|e| engine_error("cannot fix the batch size", e))?
            }
            _ => self.typed.clone(),
        };
        let optimized = model.into_optimized().map_err(|e| engine_error("cannot optimize the model", e))?;
        let plan = optimized.into_runnable().map_err(|e| engine_error("cannot plan the model", e))?;
        made.insert(key, plan.clone());
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn example(model: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../examples/model_repository/{model}/1/model.onnx"))
    }

    fn plans(model: &str) -> Plans {
        Plans::new(super::super::typed_model(&example(model)).expect("reads")).expect("plans")
    }

    fn run(plan: Arc<TypedRunnableModel>, rows: usize) -> Vec<f32> {
        let input = tract_ndarray::Array2::from_shape_fn((rows, 784), |(r, c)| {
            ((r * 31 + c * 7) % 13) as f32 / 6.0 - 1.0
        });
        let outputs = plan.run(tvec!(input.into_tensor().into())).expect("runs");
        outputs[0].to_plain_array_view::<f32>().expect("floats").iter().copied().collect()
    }

    fn made(plans: &Plans) -> Vec<PlanKey> {
        plans.made.lock().expect("not poisoned").keys().copied().collect()
    }

    #[test]
    fn a_batch_only_model_gets_a_plan_per_batch_size_up_to_the_limit() {
        let plans = plans("mlp");
        assert_eq!(made(&plans), vec![PlanKey::Batch(1)], "batch 1 is made at load");
        for rows in 2..=MAX_BATCH_PLANS + 2 {
            plans.plan(plans.key(rows)).expect("plan");
        }
        let made = made(&plans);
        assert_eq!(made.iter().filter(|k| matches!(k, PlanKey::Batch(_))).count(), MAX_BATCH_PLANS);
        assert!(made.contains(&PlanKey::AnyShape), "past the limit the symbolic plan serves");
        assert!(!made.contains(&PlanKey::Batch(MAX_BATCH_PLANS + 1)));
    }

    #[test]
    fn the_plan_for_a_batch_size_answers_as_the_symbolic_plan() {
        let plans = plans("mlp");
        let fixed = run(plans.plan(PlanKey::Batch(3)).expect("plan"), 3);
        let symbolic = run(plans.plan(PlanKey::AnyShape).expect("plan"), 3);
        assert_eq!(fixed.len(), symbolic.len());
        for (a, b) in fixed.iter().zip(&symbolic) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn a_model_with_another_run_time_dimension_has_one_plan() {
        let plans = plans("dynamic_seq");
        assert_eq!(plans.key(4), PlanKey::AnyShape);
        assert_eq!(made(&plans), vec![PlanKey::AnyShape]);
    }
}
