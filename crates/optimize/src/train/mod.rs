//! The trainer: an ONNX graph as a candle autodiff graph, data, optimizers and the training loop.
//!
//! - `ops`: the supported operators, parsed from nodes, and their forward passes.
//! - `kernels`: Conv, BatchNormalization and MaxPool with their gradients written out (speed).
//! - `graph`: [`TrainGraph`], the float initializers as variables; forward; write-back.
//! - `data`: labelled data sets (`.npy`/`.npz`, image folders, Fashion-MNIST) and minibatches.
//! - `optim`: SGD with momentum, AdamW and the learning-rate schedule.
//! - `trainer`: the loop (held-out accuracy, best checkpoint, interruption) with the hooks
//!   pruning plugs into and the objectives distillation plugs into.
//! - `distill`: the distillation loss, the teacher's logits from the engine, students made by
//!   narrowing the teacher.
//! - `fake_quant`: fake quantization with a straight-through estimator (for `crate::qat`).
//! - `cost`: multiply-adds per sample, from the shapes of a forward pass.

pub mod cost;
pub mod data;
pub mod distill;
pub mod fake_quant;
pub mod graph;
mod kernels;
pub mod ops;
pub mod optim;
pub mod trainer;

pub use graph::{Mode, Param, ParamKind, Tap, TrainGraph};
