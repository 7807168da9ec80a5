//! TFLite files on tract: the flatbuffer read by `tract-tflite` into the same typed graph as an
//! ONNX file.
//!
//! `tract-tflite` 0.23.9, with the fixes in vendor/ (vendor/README.md), runs float and INT8
//! (int8/uint8, per-tensor and per-axis scales) image models, with a fixed or a run-time batch;
//! what it cannot read (an operator it lacks) is refused with an error that names it, and a
//! panic of the reader is caught here and turned into a load error. docs/edge.md lists what was
//! tried.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use rtserve_core::EngineError;
use tract_tflite::internal::TfliteProtoModel;
use tract_tflite::prelude::{Framework, TractResult, TypedModel};

use crate::panic::panic_message;

/// Whether `path` names a TFLite file (by its extension).
pub fn is_tflite(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("tflite"))
}

/// Reads a TFLite file into tract's typed form, its outputs labelled with the file's own tensor
/// names (tract names an output after the node that computes it, e.g. `…:0.bias`).
pub(super) fn typed_model(path: &Path) -> Result<TypedModel, EngineError> {
    let read = catch_unwind(AssertUnwindSafe(|| -> TractResult<TypedModel> {
        let tflite = tract_tflite::tflite();
        let proto = tflite.proto_model_for_path(path)?;
        let names = output_names(&proto);
        let mut model = tflite.model_for_proto_model(&proto)?;
        let outlets = model.output_outlets()?.to_vec();
        for (outlet, name) in outlets.into_iter().zip(names) {
            if let Some(name) = name {
                model.set_outlet_label(outlet, name)?;
            }
        }
        Ok(model)
    }));
    let failure = match read {
        Ok(Ok(model)) => return Ok(model),
        // tract's error chain, on one line.
        Ok(Err(e)) => format!("{e:#}").split_whitespace().collect::<Vec<_>>().join(" "),
        Err(panic) => {
            format!("the TFLite reader failed on this file ({})", panic_message(panic.as_ref()))
        }
    };
    Err(EngineError::new(format!("tract: cannot read {}: {failure}", path.display())))
}

/// The names of the first subgraph's outputs, in order (`None` where the file has none).
fn output_names(proto: &TfliteProtoModel) -> Vec<Option<String>> {
    let root = proto.root();
    let Some(graph) = root.subgraphs().and_then(|graphs| graphs.iter().next()) else {
        return Vec::new();
    };
    let tensors = graph.tensors();
    graph
        .outputs()
        .map(|outputs| {
            outputs
                .iter()
                .map(|index| {
                    let tensor = tensors
                        .as_ref()
                        .zip(usize::try_from(index).ok())
                        .and_then(|(t, i)| (i < t.len()).then(|| t.get(i)));
                    tensor.and_then(|t| t.name()).map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}
