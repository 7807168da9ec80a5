//! Pruning on the trainer.
//!
//! - `magnitude`: unstructured: the smallest weights set to zero during fine-tuning.
//! - `groups`: the channel dependency groups of a graph (residual Adds, Concats, depthwise).
//! - `channels`: structured: whole channels of each group removed, a smaller dense model.
//! - `gradual`: the same channels silenced step by step during fine-tuning, then removed.
//! - `taylor`: channel importance measured on data: the loss change removing a channel causes.
//! - `target`: channel pruning in steps until a latency or speed-up on the engine is reached.

pub mod channels;
pub mod gradual;
pub mod groups;
pub mod magnitude;
pub mod target;
pub mod taylor;
