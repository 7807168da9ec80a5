//! rtserve engine on ONNX Runtime, through the `ort` crate.
//!
//! ONNX Runtime is loaded at run time (`load-dynamic`), so rtserve builds without it and uses
//! whichever `libonnxruntime` the machine has: see [`locate_library`] for where it looks. Create
//! an [`OrtEngine`], then read a model's signature or load instances through the
//! [`Engine`] trait.
//!
//! - `library`: finding the shared library.
//! - `runtime`: loading it once per process and the one ONNX Runtime environment.
//! - `convert`: rtserve tensors to and from ONNX Runtime values.
//! - `instance`: a loaded session as a [`ModelInstance`].

mod convert;
mod instance;
mod library;
mod runtime;

use std::path::{Path, PathBuf};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{Outlet, ValueType};
use rtserve_core::{Engine, EngineError, LoadOptions, ModelInstance, ModelSignature, TensorSpec};

pub use library::{
    locate_library, FROM_ENV, FROM_EXPLICIT_PATH, FROM_PYTHON_PACKAGE, FROM_SYSTEM, LIBRARY_ENV,
};

use crate::instance::OrtInstance;
use crate::runtime::{catch_panic, runtime, Runtime};

/// How to set up ONNX Runtime.
#[derive(Debug, Clone, Default)]
pub struct OrtOptions {
    /// The `libonnxruntime` file (or a folder holding it); `None` searches as
    /// [`locate_library`] does.
    pub library: Option<PathBuf>,
}

/// The ONNX Runtime engine. All engines in a process share one loaded library and one ONNX
/// Runtime environment.
pub struct OrtEngine {
    runtime: &'static Runtime,
}

impl OrtEngine {
    /// Loads ONNX Runtime (the first time in the process) and returns an engine on it. Fails, never
    /// panics, when no usable library is found. A process holds one ONNX Runtime: once one is
    /// loaded, later engines use it whatever `options.library` says (with a warning if it differs).
    pub fn new(options: &OrtOptions) -> Result<OrtEngine, EngineError> {
        let runtime = runtime(options.library.as_deref())?;
        Ok(OrtEngine { runtime })
    }

    /// The library file in use.
    pub fn library(&self) -> &Path {
        &self.runtime.library
    }

    /// How the library was found: one of [`FROM_EXPLICIT_PATH`], [`FROM_ENV`],
    /// [`FROM_PYTHON_PACKAGE`] or [`FROM_SYSTEM`].
    pub fn found_by(&self) -> &'static str {
        self.runtime.found_by
    }

    /// Creates a session for the model at `path` with sequential graph execution, the given
    /// graph optimization level, `intra_threads` threads per inference (0: ONNX Runtime's
    /// default, one per physical core) that spin between runs only when `spinning`.
    fn session(
        &self,
        path: &Path,
        optimization: GraphOptimizationLevel,
        intra_threads: usize,
        spinning: bool,
    ) -> Result<Session, EngineError> {
        let build = || -> Result<Session, String> {
            let text = |e: ort::Error<_>| e.to_string();
            let mut builder = Session::builder(&self.runtime.environment).map_err(|e| e.to_string())?;
            builder = builder.with_optimization_level(optimization).map_err(text)?;
            builder = builder.with_inter_threads(1).map_err(text)?;
            builder = builder.with_intra_op_spinning(spinning).map_err(text)?;
            if intra_threads > 0 {
                builder = builder.with_intra_threads(intra_threads).map_err(text)?;
            }
            builder.commit_from_file(path).map_err(|e| e.to_string())
        };
        catch_panic(&format!("loading {}", path.display()), build)?
            .map_err(|e| EngineError::new(format!("onnxruntime cannot load {}: {e}", path.display())))
    }
}

impl Engine for OrtEngine {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    /// Inputs and outputs as the model declares them; symbolic or unknown dimensions are `-1`.
    fn signature(&self, path: &Path) -> Result<ModelSignature, EngineError> {
        let session = self.session(path, GraphOptimizationLevel::Disable, 1, false)?;
        let specs = |outlets: &[Outlet], what: &str| -> Result<Vec<TensorSpec>, EngineError> {
            outlets.iter().map(|o| tensor_spec(o, what)).collect()
        };
        Ok(ModelSignature {
            inputs: specs(session.inputs(), "input")?,
            outputs: specs(session.outputs(), "output")?,
        })
    }

    /// A session with every graph optimization, `intra_op_threads` threads per inference (0 lets
    /// ONNX Runtime decide) that do not spin between runs, and sequential execution of the graph.
    fn load(&self, path: &Path, options: &LoadOptions) -> Result<Box<dyn ModelInstance>, EngineError> {
        self.load_spinning(path, options, false)
    }

    /// As [`OrtEngine::load`], with `session.intra_op.allow_spinning` set from `allow_spinning`.
    fn load_spinning(
        &self,
        path: &Path,
        options: &LoadOptions,
        allow_spinning: bool,
    ) -> Result<Box<dyn ModelInstance>, EngineError> {
        let session =
            self.session(path, GraphOptimizationLevel::All, options.intra_op_threads, allow_spinning)?;
        // A model whose inputs or outputs rtserve cannot represent fails here, not on first use.
        for (outlets, what) in [(session.inputs(), "input"), (session.outputs(), "output")] {
            for outlet in outlets {
                tensor_spec(outlet, what)?;
            }
        }
        Ok(Box::new(OrtInstance::new(session)))
    }
}

/// The rtserve spec of one declared input or output.
fn tensor_spec(outlet: &Outlet, what: &str) -> Result<TensorSpec, EngineError> {
    let name = outlet.name();
    match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => {
            let data_type = convert::data_type(*ty).ok_or_else(|| {
                EngineError::new(format!(
                    "{what} '{name}' has element type {ty}, which rtserve does not support"
                ))
            })?;
            Ok(TensorSpec {
                name: name.to_string(),
                data_type,
                dims: shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect(),
            })
        }
        other => Err(EngineError::new(format!("{what} '{name}' is a {other}; rtserve serves only tensors"))),
    }
}
