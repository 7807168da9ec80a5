//! The six fuzz targets: each feeds its bytes to the public functions the server or `rtserve
//! optimize` calls on the same kind of untrusted input.

use std::path::Path;

use bytes::Bytes;
use prost::Message;
use rtserve_core::validate_request;
use rtserve_optimize::fp16::{convert_fp16, Fp16Options};
use rtserve_optimize::model::from_bytes;
use rtserve_optimize::quantize::{quantize_dynamic, QuantizeOptions};
use rtserve_optimize::train::TrainGraph;
use rtserve_server::grpc::codec::{decode_classification, decode_request as decode_grpc};
use rtserve_server::http::json::decode_request as decode_http;
use rtserve_server::preprocess::{decode_rgb, write_tensor};
use rtserve_server::proto::ModelInferRequest;
use rtserve_server::repository::{parse_pbtxt, parse_toml};

use crate::fixtures::{derive_from_config, split_http_input, IMAGE_SPECS, MAX_IMAGE_PIXELS, MODELS};

/// A fuzz target: any bytes in, a panic out only for a bug.
pub type Target = fn(&[u8]);

/// Every target by the name of its folders (`fuzz/seeds/<name>/`, `fuzz/regressions/<name>/`)
/// and of its cargo-fuzz binary.
pub const TARGETS: [(&str, Target); 7] = [
    ("http_infer", http_infer),
    ("grpc_infer", grpc_infer),
    ("config_pbtxt", config_pbtxt),
    ("config_toml", config_toml),
    ("image_preprocess", image_preprocess),
    ("onnx_model", onnx_model),
    ("tflite_model", tflite_model),
];

/// The HTTP infer body (JSON, and the binary tensor data extension) decoded as the handler does,
/// then validated against each example model as the request path does.
///
/// Input: a 4-byte little-endian `Inference-Header-Content-Length` (`u32::MAX`: none), then the
/// body ([`split_http_input`]).
pub fn http_infer(data: &[u8]) {
    let Some((header_length, body)) = split_http_input(data) else { return };
    let Ok((request, _encoding)) = decode_http(Bytes::copy_from_slice(body), header_length) else {
        return;
    };
    for model in MODELS.iter() {
        let _ = validate_request(model, &request);
    }
}

/// A ModelInferRequest from its protobuf bytes (prost, as tonic decodes it) to tensors: the
/// classification outputs and the inputs (typed contents or `raw_input_contents`) converted as
/// the gRPC service does, then validated against each example model.
pub fn grpc_infer(data: &[u8]) {
    let Ok(request) = ModelInferRequest::decode(data) else { return };
    let _ = decode_classification(&request);
    let Ok(request) = decode_grpc(request) else { return };
    for model in MODELS.iter() {
        let _ = validate_request(model, &request);
    }
}

/// `config.pbtxt` text read as the repository reads it (directory `model`), then what loading
/// derives from the config before any engine runs ([`derive_from_config`]).
pub fn config_pbtxt(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = parse_pbtxt(text, "model") {
        derive_from_config(&config);
    }
}

/// `config.toml` text read as the repository reads it (directory `model`), then what loading
/// derives from the config before any engine runs ([`derive_from_config`]).
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = parse_toml(text, "model") {
        derive_from_config(&config);
    }
}

/// An encoded image decoded and transformed into its slot of a model's input tensor, as the
/// image workers do for each element of a preprocessed BYTES input: header checks against the
/// pixel limit, decoding (JPEG, PNG, WebP), resize, centre crop, normalisation.
///
/// Input: the encoded image as a client sends it; its length picks one of the preprocessing
/// specs of [`IMAGE_SPECS`]. A decoded image that the transform refuses would be a 500 for a
/// client's bad input, so that is a crash here too.
pub fn image_preprocess(data: &[u8]) {
    let (spec, normaliser) = &IMAGE_SPECS[data.len() % IMAGE_SPECS.len()];
    let Ok(image) = decode_rgb(data, MAX_IMAGE_PIXELS) else { return };
    let mut slot = vec![0u8; spec.image_bytes()];
    if let Err(e) = write_tensor(spec, normaliser, &image, &mut slot) {
        panic!("a decoded {:?} image refused by the transform: {e}", image.dimensions());
    }
}

/// An ONNX file as `rtserve optimize` loads it (protobuf decode, graph check), then what its
/// subcommands do with the graph before any engine runs: FP16 conversion, dynamic INT8
/// quantization and the trainer's view of the graph (prune, distill, qat).
pub fn onnx_model(data: &[u8]) {
    let Ok(model) = from_bytes(data, Path::new("model.onnx")) else { return };
    let _ = convert_fp16(&model, &Fp16Options::default());
    let _ = quantize_dynamic(&model, &QuantizeOptions::default());
    let _ = TrainGraph::new(&model);
}

/// A TFLite file through the rewrite to ONNX that runs it on ONNX Runtime (flatbuffer
/// verification, tensors, quantization, every converted operator), the resulting graph decoded
/// again as ONNX.
pub fn tflite_model(data: &[u8]) {
    if let Ok(onnx) = rtserve_engines::tflite_to_onnx(data) {
        let _ = from_bytes(&onnx, Path::new("model.onnx"));
    }
}
