//! Which engine runs calibration and evaluation.

use std::path::PathBuf;

use rtserve_core::Engine;

use crate::error::{OptimizeError, Result};

/// The engine to run models on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineChoice {
    /// ONNX Runtime when its library is found, else tract.
    Auto,
    OnnxRuntime,
    Tract,
}

impl std::str::FromStr for EngineChoice {
    type Err = OptimizeError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(EngineChoice::Auto),
            "onnxruntime" | "ort" => Ok(EngineChoice::OnnxRuntime),
            "tract" => Ok(EngineChoice::Tract),
            _ => Err(OptimizeError::Option(format!("unknown engine '{s}' (auto, onnxruntime, tract)"))),
        }
    }
}

/// Creates the engine; `ort_library` is where libonnxruntime is, `None` to search.
pub fn create(choice: EngineChoice, ort_library: Option<PathBuf>) -> Result<Box<dyn Engine>> {
    match choice {
        EngineChoice::OnnxRuntime => onnxruntime(ort_library),
        EngineChoice::Tract => tract(),
        EngineChoice::Auto => onnxruntime(ort_library).or_else(|e| {
            tracing::info!("ONNX Runtime unavailable ({e}); using tract");
            tract()
        }),
    }
}

#[cfg(feature = "onnxruntime")]
fn onnxruntime(library: Option<PathBuf>) -> Result<Box<dyn Engine>> {
    let options = rtserve_engine_onnxruntime::OrtOptions { library };
    Ok(Box::new(rtserve_engine_onnxruntime::OrtEngine::new(&options)?))
}

#[cfg(not(feature = "onnxruntime"))]
fn onnxruntime(_library: Option<PathBuf>) -> Result<Box<dyn Engine>> {
    Err(OptimizeError::Option("this build has no ONNX Runtime engine".into()))
}

#[cfg(feature = "tract")]
fn tract() -> Result<Box<dyn Engine>> {
    Ok(Box::new(rtserve_engine_tract::TractEngine))
}

#[cfg(not(feature = "tract"))]
fn tract() -> Result<Box<dyn Engine>> {
    Err(OptimizeError::Option("this build has no tract engine".into()))
}
