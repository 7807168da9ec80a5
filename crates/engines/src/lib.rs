//! rtserve's inference engines behind the core [`Engine`](rtserve_core::Engine) trait, each
//! behind a cargo feature, and the one rule that picks an engine for a model.
//!
//! - `tract`: pure-Rust ONNX inference, always available, no setup (feature `tract`).
//! - `onnxruntime`: ONNX Runtime loaded at run time, the fast path on CPU (feature `onnxruntime`).
//! - `tflite_onnx`: TFLite files rewritten as ONNX, so ONNX Runtime runs them (feature `tract`,
//!   for the TFLite schema; used with `onnxruntime`).
//! - `choice`: `--engine` ([`EngineChoice`]) and the engines a process has ([`Engines`]).
//!
//! Every engine prepares a model once ([`Engine::prepare`](rtserve_core::Engine::prepare)) and
//! starts its instances from that: `tests/conformance.rs` holds both engines to the same answers.

mod choice;
#[cfg(feature = "onnxruntime")]
pub mod onnxruntime;
#[cfg(any(feature = "tract", feature = "onnxruntime"))]
mod panic;
// ONNX Runtime loads what it writes; without ONNX Runtime only `tflite_to_onnx` is used.
#[cfg(feature = "tract")]
#[cfg_attr(not(feature = "onnxruntime"), allow(dead_code))]
mod tflite_onnx;
#[cfg(feature = "tract")]
pub mod tract;

pub use choice::{is_tflite, EngineChoice, Engines, TFLITE_FILENAME, TFLITE_PLATFORM};
#[cfg(feature = "tract")]
pub use tflite_onnx::rewrite as tflite_to_onnx;
