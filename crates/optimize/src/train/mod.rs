//! The trainer: an ONNX graph as a candle autodiff graph, data, optimizers and the training loop.
//!
//! - `ops`: the supported operators, parsed from nodes, and their forward passes.
//! - `kernels`: Conv, BatchNormalization and MaxPool with their gradients written out (speed).
//! - `graph`: [`TrainGraph`], the float initializers as variables; forward; write-back.
//! - `data`: labelled data sets (`.npy`/`.npz`, image folders, Fashion-MNIST) and minibatches.
//! - `optim`: SGD with momentum, AdamW and the learning-rate schedule.
//! - `trainer`: the loop (held-out accuracy, best checkpoint, interruption) with hooks that
//!   pruning (and distillation / QAT next) plug into.

pub mod data;
pub mod graph;
mod kernels;
pub mod ops;
pub mod optim;
pub mod trainer;

pub use graph::{Mode, Param, ParamKind, TrainGraph};
