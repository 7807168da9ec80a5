//! rtserve optimize: ONNX graph tools.
//!
//! - `onnx`: the ONNX protobuf types (from `proto/onnx.proto`, compiled with prost).
//! - `model`, `graph`: reading/writing files and tensors; graph validation and bookkeeping.
//! - `data`: calibration and evaluation samples (`.npy`, `.npz`, image folders).
//! - `calibrate`: activation ranges (min/max, percentile, entropy) measured on an engine.
//! - `fold`: BatchNormalization folded into the Conv before it (static quantization's first step).
//! - `quantize_math`, `quantize`: INT8 static (QDQ) and dynamic quantization.
//! - `fp16`: FP16 conversion.
//! - `evaluate`: a candidate model against a reference: agreement, error, latency, size.
//! - `train`: a trainable view of an ONNX graph (candle) and the training loop.
//! - `prune`: magnitude (unstructured) and channel (structured) pruning on the trainer.
//! - `qat`: quantization-aware training: the trainer fake-quantizes where `quantize` puts Q/DQ.
//!
//! Nothing here depends on the server: models run through the engine trait of rtserve-core.

pub mod calibrate;
pub mod data;
pub mod error;
pub mod evaluate;
pub mod fold;
pub mod fp16;
pub mod graph;
pub mod model;
pub mod prune;
pub mod qat;
pub mod quantize;
pub mod quantize_math;
pub mod train;

/// The ONNX protobuf messages.
#[allow(clippy::all, missing_docs)]
pub mod onnx {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use error::{OptimizeError, Result};
