//! Which engines this process has, and which one loads a given model: one rule for the server,
//! `rtserve run` and `rtserve optimize`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rtserve_core::{Engine, EngineError, ModelConfig};

/// The `--engine` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// Each model's `backend`, else ONNX Runtime when its library is found, else tract.
    #[default]
    Auto,
    OnnxRuntime,
    Tract,
}

impl std::str::FromStr for EngineChoice {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(EngineChoice::Auto),
            "onnxruntime" | "ort" => Ok(EngineChoice::OnnxRuntime),
            "tract" => Ok(EngineChoice::Tract),
            other => Err(EngineError::new(format!(
                "unknown engine '{other}' (expected auto, onnxruntime or tract)"
            ))),
        }
    }
}

/// The file a TFLite model's version folder holds, as Triton's TFLite backend names it.
pub const TFLITE_FILENAME: &str = "model.tflite";
/// The platform a TFLite model reports in its metadata, as Triton's.
pub const TFLITE_PLATFORM: &str = "tensorflowlite";

/// Whether a model config describes a TFLite model: Triton's `platform: "tensorflowlite"` or
/// `backend: "tflite"`, or a model file named `*.tflite`.
pub fn is_tflite(config: &ModelConfig) -> bool {
    matches!(config.platform.as_str(), TFLITE_PLATFORM | "tflite")
        || config.backend.as_deref() == Some("tflite")
        || config.default_model_filename.to_ascii_lowercase().ends_with(".tflite")
}

/// The engines available to this process.
pub struct Engines {
    choice: EngineChoice,
    /// ONNX Runtime when present, else tract.
    default: Arc<dyn Engine>,
    onnxruntime: Option<Arc<dyn Engine>>,
    tract: Option<Arc<dyn Engine>>,
}

impl Engines {
    /// Sets up the engines. An explicit choice whose engine cannot start is an error; `auto`
    /// falls back to tract with a log line that says why.
    pub fn new(choice: EngineChoice, ort_library: Option<PathBuf>) -> Result<Self, EngineError> {
        let tract = tract_engine();
        let onnxruntime = if choice == EngineChoice::Tract {
            None
        } else {
            match onnxruntime_engine(ort_library) {
                Ok(engine) => Some(engine),
                Err(reason) if choice == EngineChoice::OnnxRuntime => {
                    return Err(EngineError::new(format!("--engine onnxruntime: {reason}")))
                }
                Err(reason) => {
                    tracing::info!("engine: tract (ONNX Runtime not available: {reason})");
                    None
                }
            }
        };
        if choice == EngineChoice::Tract && tract.is_none() {
            return Err(EngineError::new("--engine tract: this build has no tract engine"));
        }
        let default = onnxruntime.clone().or_else(|| tract.clone()).ok_or_else(|| {
            EngineError::new("no engine available: build with the tract feature or install onnxruntime")
        })?;
        tracing::info!("default engine: {}", default.name());
        Ok(Engines { choice, default, onnxruntime, tract })
    }

    /// The engine used where no model config says otherwise: ONNX Runtime when present (and
    /// not ruled out by the choice), else tract.
    pub fn default_engine(&self) -> Arc<dyn Engine> {
        self.default.clone()
    }

    /// Logs the GPUs models can be placed on, or why there are none (ONNX Runtime probes them
    /// once, on first use): what a server says at start, before a model asks.
    pub fn log_gpus(&self) {
        match self.onnxruntime.as_ref().map(|engine| engine.gpus()) {
            Some(Ok(gpus)) => tracing::info!(?gpus, "GPUs for KIND_GPU and KIND_AUTO instances"),
            Some(Err(reason)) => tracing::info!("no GPU instances: {reason}"),
            None => tracing::info!("no GPU instances: ONNX Runtime is not loaded"),
        }
    }

    /// The engine for the model file `file`: an explicit `--engine` wins, then the model's
    /// `backend`, then the fastest one present. A `backend` that is missing here falls back
    /// with a warning, since both engines read the same ONNX file. A TFLite file goes to ONNX
    /// Runtime, rewritten as ONNX, unless `--engine tract` or `backend: "tract"` asks otherwise
    /// or the file does not convert: then to tract, which reads TFLite itself.
    pub fn for_model(&self, config: &ModelConfig, file: &Path) -> Arc<dyn Engine> {
        if is_tflite(config) && !self.tflite_on_onnxruntime(config, file) {
            if let Some(tract) = &self.tract {
                return tract.clone();
            }
            tracing::warn!(model = %config.name, "a TFLite model needs the tract engine, which this build lacks");
        }
        let preferred = match self.choice {
            EngineChoice::OnnxRuntime => self.onnxruntime.as_ref(),
            EngineChoice::Tract => self.tract.as_ref(),
            EngineChoice::Auto => match config.backend.as_deref() {
                Some("tract") => self.tract.as_ref(),
                Some("onnxruntime" | "ort") => self.onnxruntime.as_ref(),
                // Triton's TFLite backend: the file says what it is, not which engine.
                Some("tflite") => None,
                Some(other) => {
                    tracing::warn!(model = %config.name, "unknown backend '{other}'; using the default engine");
                    None
                }
                None => None,
            },
        };
        preferred.unwrap_or(&self.default).clone()
    }

    /// Whether a TFLite model runs on ONNX Runtime: it is loaded, neither `--engine` nor the
    /// config's `backend` asks for tract, and the file converts to ONNX. A file that does not
    /// (an operator the rewrite lacks) goes to tract, with a log line that says why.
    fn tflite_on_onnxruntime(&self, config: &ModelConfig, file: &Path) -> bool {
        if self.onnxruntime.is_none()
            || self.choice == EngineChoice::Tract
            || (self.choice == EngineChoice::Auto && config.backend.as_deref() == Some("tract"))
        {
            return false;
        }
        match converts(file) {
            Ok(()) => true,
            Err(reason) => {
                tracing::info!(model = %config.name, "TFLite on tract: {reason}");
                false
            }
        }
    }
}

/// Whether the TFLite file converts to ONNX (ONNX Runtime's loader, like tract's, knows a TFLite
/// file by its `.tflite` name).
#[cfg(all(feature = "tract", feature = "onnxruntime"))]
fn converts(file: &Path) -> Result<(), EngineError> {
    if !crate::tract::is_tflite(file) {
        return Err(EngineError::new(format!("{} is not named *.tflite", file.display())));
    }
    crate::tflite_onnx::check(file)
}

#[cfg(not(all(feature = "tract", feature = "onnxruntime")))]
fn converts(_file: &Path) -> Result<(), EngineError> {
    Err(EngineError::new("this build cannot rewrite TFLite as ONNX"))
}

#[cfg(feature = "tract")]
fn tract_engine() -> Option<Arc<dyn Engine>> {
    Some(Arc::new(crate::tract::TractEngine))
}

#[cfg(not(feature = "tract"))]
fn tract_engine() -> Option<Arc<dyn Engine>> {
    None
}

#[cfg(feature = "onnxruntime")]
fn onnxruntime_engine(library: Option<PathBuf>) -> Result<Arc<dyn Engine>, String> {
    use crate::onnxruntime::{OrtEngine, OrtOptions};
    let engine = OrtEngine::new(&OrtOptions { library }).map_err(|e| e.to_string())?;
    Ok(Arc::new(engine))
}

#[cfg(not(feature = "onnxruntime"))]
fn onnxruntime_engine(_library: Option<PathBuf>) -> Result<Arc<dyn Engine>, String> {
    Err("this build has no onnxruntime engine".to_string())
}
