//! A model's optimized plans: a plan made for batch 1 where the batch is the graph's only
//! run-time dimension, and a plan for any shape.
//!
//! tract optimizes a graph far better when every dimension is known. On the 2-vCPU development
//! machine, one thread, the zoo's MobileNetV2 runs a batch of one in 13 ms on a plan made for
//! batch 1 and in 122 ms on a plan whose batch is symbolic; ResNet-50 in 55 ms against 143 ms
//! (docs/edge.md, "tract and the batch dimension"). So a model whose inputs all lead with the same
//! symbolic dimension, and have no other, gets a batch-1 plan at load: the lone request, and
//! every run of `rtserve run` on one image. Larger batches take the plan for any shape. The
//! server asks for it at load (`LoadOptions::batches`); otherwise it is made from the file the
//! first time a batch comes (the graph is not kept in memory meanwhile), and refused if the file
//! has changed since the load: a version must never answer some runs from one file and some
//! from another (its cached replies are keyed by the file it was loaded from). A plan per
//! batch size would be faster still for batches, but each plan holds its own packed copy of the
//! weights: a server with ResNet-50 and `max_batch_size` 16 peaked at 541 MiB that way, at
//! 381 MiB with these two plans, at 322 MiB with the symbolic plan alone. Any other model has one
//! plan, made at load.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use rtserve_core::EngineError;
use tract_onnx::prelude::*;

use super::{engine_error, typed_model};
use crate::panic::panic_message;

/// Which plan a run takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlanKey {
    /// The plan made for one row.
    BatchOne,
    /// The plan for any shape.
    AnyShape,
}

/// The plans of one model.
pub struct Plans {
    /// The model file, read again for the plan for any shape.
    path: PathBuf,
    /// The file as it was at load: it is read again only while it is unchanged.
    stamp: FileStamp,
    batch_one: Option<Arc<TypedRunnableModel>>,
    any_shape: Mutex<Option<Arc<TypedRunnableModel>>>,
}

/// What changes when a file is replaced or rewritten: its length and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    pub fn of(path: &Path) -> Result<FileStamp, EngineError> {
        let metadata = std::fs::metadata(path)
            .map_err(|e| engine_error(&format!("cannot read {}", path.display()), e))?;
        Ok(FileStamp { len: metadata.len(), modified: metadata.modified().ok() })
    }
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

/// The optimized, runnable plan of `model`. tract's optimizer can panic on a graph it reads but
/// cannot lower (seen with a patched TFLite reader, docs/edge.md); the panic becomes a load error
/// here, so `rtserve run` exits 2 as the server answers the load with an error.
fn optimized(model: TypedModel) -> Result<Arc<TypedRunnableModel>, EngineError> {
    catch_unwind(AssertUnwindSafe(|| {
        let optimized = model.into_optimized().map_err(|e| engine_error("cannot optimize the model", e))?;
        optimized.into_runnable().map_err(|e| engine_error("cannot plan the model", e))
    }))
    .unwrap_or_else(|panic| {
        Err(EngineError::new(format!(
            "tract failed to optimize the model ({})",
            panic_message(panic.as_ref())
        )))
    })
}

impl Plans {
    /// Makes the plan every model needs at load from `typed`, read from `path` as it is now (the
    /// caller reads the file's stamp before it reads the file): batch 1 where the batch is the
    /// only run-time dimension, else the plan for any shape.
    pub fn new(typed: TypedModel, path: &Path, stamp: FileStamp) -> Result<Self, EngineError> {
        let batch = batch_symbol(&typed).map_err(|e| engine_error("cannot read the inputs", e))?;
        let (batch_one, any_shape) = match batch {
            Some(symbol) => {
                let one = typed
                    .set_symbols(&[(symbol, TDim::Val(1))].into_iter().collect())
                    .map_err(|e| engine_error("cannot fix the batch size", e))?;
                // Not kept while the plan is made: the peak would hold both graphs.
                drop(typed);
                (Some(optimized(one)?), None)
            }
            None => (None, Some(optimized(typed)?)),
        };
        Ok(Plans { path: path.to_path_buf(), stamp, batch_one, any_shape: Mutex::new(any_shape) })
    }

    /// The plan for a run whose inputs lead with `rows` rows.
    pub fn key(&self, rows: usize) -> PlanKey {
        if rows == 1 && self.batch_one.is_some() {
            PlanKey::BatchOne
        } else {
            PlanKey::AnyShape
        }
    }

    /// The plan for `key`; the plan for any shape is made now if this is its first run, from
    /// the file as it was at load or not at all.
    pub fn plan(&self, key: PlanKey) -> Result<Arc<TypedRunnableModel>, EngineError> {
        if let (PlanKey::BatchOne, Some(plan)) = (key, &self.batch_one) {
            return Ok(plan.clone());
        }
        let mut any_shape = self.any_shape.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(plan) = any_shape.as_ref() {
            return Ok(plan.clone());
        }
        self.check_unchanged()?;
        let typed = typed_model(&self.path)?;
        // Written while it was read: what was read may be either file, or neither.
        self.check_unchanged()?;
        let plan = optimized(typed)?;
        *any_shape = Some(plan.clone());
        Ok(plan)
    }

    fn check_unchanged(&self) -> Result<(), EngineError> {
        if FileStamp::of(&self.path)? == self.stamp {
            return Ok(());
        }
        Err(EngineError::new(format!(
            "tract: {} has changed since this model was loaded, so its plan for batches cannot be \
             made from it; load the model again",
            self.path.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(model: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../examples/model_repository/{model}/1/model.onnx"))
    }

    fn plans(model: &str) -> Plans {
        let path = example(model);
        let stamp = FileStamp::of(&path).expect("stamp");
        Plans::new(typed_model(&path).expect("reads"), &path, stamp).expect("plans")
    }

    fn run(plan: Arc<TypedRunnableModel>, rows: usize) -> Vec<f32> {
        let input = tract_ndarray::Array2::from_shape_fn((rows, 784), |(r, c)| {
            ((r * 31 + c * 7) % 13) as f32 / 6.0 - 1.0
        });
        let outputs = plan.run(tvec!(input.into_tensor().into())).expect("runs");
        outputs[0].to_plain_array_view::<f32>().expect("floats").iter().copied().collect()
    }

    fn any_shape_made(plans: &Plans) -> bool {
        plans.any_shape.lock().expect("not poisoned").is_some()
    }

    #[test]
    fn a_batch_only_model_gets_a_batch_one_plan_and_the_other_when_a_batch_comes() {
        let plans = plans("mlp");
        assert_eq!(plans.key(1), PlanKey::BatchOne);
        assert_eq!(plans.key(3), PlanKey::AnyShape);
        assert!(!any_shape_made(&plans), "made on first use only");
        let batch = run(plans.plan(PlanKey::AnyShape).expect("plan"), 3);
        assert!(any_shape_made(&plans));
        // Row 0 of the batch answers as the batch-1 plan does on that row alone.
        let one = run(plans.plan(PlanKey::BatchOne).expect("plan"), 1);
        assert_eq!(one.len() * 3, batch.len());
        for (a, b) in one.iter().zip(&batch) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn a_model_with_another_run_time_dimension_has_one_plan() {
        let plans = plans("dynamic_seq");
        assert_eq!(plans.key(1), PlanKey::AnyShape);
        assert!(any_shape_made(&plans), "made at load");
    }
}
