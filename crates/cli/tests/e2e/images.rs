//! Images in, labels out: a model whose config declares preprocessing takes encoded images as a
//! BYTES input (HTTP binary extension, gRPC raw contents) or on `/classify` (raw body or
//! multipart), and answers with the preprocessed tensor, Triton classification strings or JSON
//! labels; bad images get a 400 that names the problem, and the server keeps serving.
//!
//! The model is an ONNX `Identity` over `[N, 3, 8, 8]`, so the reply is the preprocessed tensor
//! itself and every value can be checked exactly: solid-colour images stay solid through any
//! resize, and `(pixel - 127) / 128` is exact in f32.

use std::io::Cursor;

use image::{ImageFormat, Rgb, RgbImage};
use reqwest::header::CONTENT_TYPE;
use rtserve_server::proto::infer_parameter::ParameterChoice;
use rtserve_server::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use rtserve_server::proto::{InferParameter, ModelInferRequest};
use serde_json::{json, Value};

use crate::client::{assert_grpc_error, get, grpc, metric_value, post_binary, send, HttpReply};
use crate::server::{Engine, Server};
use crate::start_server;

#[path = "../support/pixels_model.rs"]
mod pixels_model;

use pixels_model::{write_pixels_model, SIDE};

/// The colour of the test images and what preprocessing makes of each channel.
const COLOUR: [u8; 3] = [255, 127, 63];
const NORMALISED: [f32; 3] = [1.0, 0.0, -0.5];

/// A repository with `pixels` (config.toml, `[preprocess]` table) and `pixels_pbtxt`
/// (config.pbtxt, `preprocess.*` parameters, BGR).
fn repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary folder");
    write_pixels_model(
        dir.path(),
        "pixels",
        "config.toml",
        "max_batch_size = 4\n[preprocess]\nresize_short = 10\nfilter = \"area\"\nmean = [127, 127, 127]\nstd = 128\n",
    );
    write_pixels_model(
        dir.path(),
        "pixels_pbtxt",
        "config.pbtxt",
        r#"max_batch_size: 4
           parameters [
             { key: "preprocess.input" value: { string_value: "jpeg" } },
             { key: "preprocess.color" value: { string_value: "bgr" } },
             { key: "preprocess.scale" value: { string_value: "0.0078125" } },
             { key: "preprocess.offset" value: { string_value: "-0.9921875" } }
           ]"#,
    );
    dir
}

/// A solid `COLOUR` image of `width × height`, encoded.
fn solid(format: ImageFormat, width: u32, height: u32) -> Vec<u8> {
    encode(&RgbImage::from_pixel(width, height, Rgb(COLOUR)), format)
}

fn encode(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

/// BYTES elements as the binary extension and gRPC raw contents carry them: each a 4-byte
/// little-endian length, then the bytes.
fn bytes_elements(items: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        out.extend((item.len() as u32).to_le_bytes());
        out.extend_from_slice(item);
    }
    out
}

/// `POST .../infer` with the images as the BYTES input `input`, and `outputs` as the JSON list.
async fn infer_images(
    server: &Server,
    model: &str,
    input: &str,
    images: &[&[u8]],
    outputs: Value,
) -> HttpReply {
    let raw = bytes_elements(images);
    let header = json!({
        "inputs": [{ "name": input, "datatype": "BYTES", "shape": [images.len()],
                     "parameters": { "binary_data_size": raw.len() } }],
        "outputs": outputs,
    });
    let mut body = serde_json::to_vec(&header).expect("json");
    let length = body.len();
    body.extend(raw);
    post_binary(&reqwest::Client::new(), server, &format!("/v2/models/{model}/infer"), body, length).await
}

fn f32s(value: &Value) -> Vec<f32> {
    value.as_array().expect("array").iter().map(|v| v.as_f64().expect("number") as f32).collect()
}

/// The model's tensor for `COLOUR` in NCHW with channels in `order`.
fn expected_pixels(order: [usize; 3]) -> Vec<f32> {
    let plane = (SIDE * SIDE) as usize;
    order.iter().flat_map(|&c| std::iter::repeat_n(NORMALISED[c], plane)).collect()
}

async fn metrics(server: &Server) -> String {
    let reply = get(&reqwest::Client::new(), server, "/metrics").await;
    String::from_utf8_lossy(&reply.body).into_owned()
}

#[tokio::test]
async fn images_in_labels_out() {
    let repository = repository();
    let Some(server) = start_server(repository.path(), Engine::Tract, &[]) else { return };
    let png = solid(ImageFormat::Png, 40, 30);
    let jpeg = solid(ImageFormat::Jpeg, 17, 23);
    let webp = solid(ImageFormat::WebP, 9, 64);

    // The v2 BYTES input, a batch of three formats; the reply is the preprocessed tensor.
    let reply = infer_images(&server, "pixels", "image", &[&png, &jpeg, &webp], json!([])).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let body = reply.json();
    assert_eq!(body["outputs"][0]["shape"], json!([3, 3, SIDE, SIDE]));
    let values = f32s(&body["outputs"][0]["data"]);
    let image = expected_pixels([0, 1, 2]);
    let per_image = image.len();
    // PNG and WebP are lossless: exact. JPEG is lossy: within a grey level or two.
    for (i, tolerance) in [(0, 0.0), (1, 2.5 / 128.0), (2, 0.0)] {
        let got = &values[i * per_image..][..per_image];
        let worst = got.iter().zip(&image).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= tolerance, "image {i}: off by {worst}");
    }
    for header in ["x-rtserve-preprocess-us", "x-rtserve-compute-us"] {
        assert!(reply.headers.contains_key(header), "no {header} header: {:?}", reply.headers);
    }

    // config.pbtxt parameters: another input name, BGR order, scale/offset (the same values).
    let reply = infer_images(&server, "pixels_pbtxt", "jpeg", &[&png], json!([])).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(f32s(&reply.json()["outputs"][0]["data"]), expected_pixels([2, 1, 0]));

    // Triton's classification extension, with labels.txt: the top 2 of the first image are the
    // first two red values (ties go to the lower index).
    let outputs = json!([{ "name": "pixels", "parameters": { "classification": 2 } }]);
    let reply = infer_images(&server, "pixels", "image", &[&png], outputs).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let body = reply.json();
    assert_eq!(body["outputs"][0]["datatype"], "BYTES");
    assert_eq!(body["outputs"][0]["shape"], json!([1, 2]));
    assert_eq!(body["outputs"][0]["data"], json!(["1.000000:0:class0", "1.000000:1:class1"]));
    assert!(reply.headers.contains_key("x-rtserve-postprocess-us"), "{:?}", reply.headers);

    // The same over gRPC, raw contents in and out, with the timing parameters.
    let classification = InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(1)) };
    let request = ModelInferRequest {
        model_name: "pixels".into(),
        inputs: vec![InferInputTensor {
            name: "image".into(),
            datatype: "BYTES".into(),
            shape: vec![2],
            ..Default::default()
        }],
        outputs: vec![InferRequestedOutputTensor {
            name: "pixels".into(),
            parameters: [("classification".to_string(), classification)].into(),
        }],
        raw_input_contents: vec![bytes_elements(&[&png, &webp]).into()],
        ..Default::default()
    };
    let response = grpc(&server).await.model_infer(request).await.expect("gRPC infer").into_inner();
    assert_eq!(response.outputs[0].shape, [2, 1]);
    assert_eq!(
        response.raw_output_contents[0],
        bytes_elements(&[b"1.000000:0:class0", b"1.000000:0:class0"])
    );
    for name in ["rtserve_preprocess_us", "rtserve_postprocess_us", "rtserve_compute_us"] {
        assert!(response.parameters.contains_key(name), "no {name}: {:?}", response.parameters);
    }

    // The convenience endpoint: a raw body, then a multipart upload of two images.
    let http = reqwest::Client::new();
    let reply = send(
        http.post(server.url("/v2/models/pixels/classify?top_k=3&softmax=false"))
            .header(CONTENT_TYPE, "image/png")
            .body(png.clone()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let body = reply.json();
    assert_eq!(body["output"], "pixels");
    assert_eq!(body["predictions"][0][0], json!({ "label": "class0", "index": 0, "score": 1.0 }));
    assert_eq!(body["predictions"][0].as_array().map(Vec::len), Some(3));
    assert!(reply.headers.contains_key("x-rtserve-preprocess-us"), "{:?}", reply.headers);

    let boundary = "rtserve-test-boundary";
    let mut multipart = Vec::new();
    for (i, (data, mime)) in [(&png, "image/png"), (&jpeg, "image/jpeg")].into_iter().enumerate() {
        multipart.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}\"\r\n\
                 Content-Type: {mime}\r\n\r\n"
            )
            .into_bytes(),
        );
        multipart.extend_from_slice(data);
        multipart.extend(b"\r\n");
    }
    multipart.extend(format!("--{boundary}--\r\n").into_bytes());
    let reply = send(
        http.post(server.url("/v2/models/pixels/classify"))
            .header(CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
            .body(multipart),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let predictions = reply.json()["predictions"].clone();
    assert_eq!(predictions.as_array().map(Vec::len), Some(2));
    // Softmax over 192 values, 64 of them the largest: each of those has about 1/64 + a bit.
    let score = predictions[0][0]["score"].as_f64().expect("score");
    assert!(score > 1.0 / 192.0 && score < 1.0 / 64.0 + 1e-6, "softmax score {score}");

    let text = metrics(&server).await;
    let labels = [("model", "pixels"), ("version", "1")];
    for name in ["rtserve_preprocess_duration_seconds_count", "rtserve_postprocess_duration_seconds_count"] {
        let count = metric_value(&text, name, &labels).unwrap_or(0.0);
        assert!(count >= 3.0, "{name} = {count}");
    }
    server.stop().await;
}

/// A PNG whose header claims `width × height` (the data is a 1×1 image's): a zero-size image, or
/// a decompression bomb.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut png = solid(ImageFormat::Png, 1, 1);
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let mut crc = !0u32;
    for &byte in &png[12..29] {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    png[29..33].copy_from_slice(&(!crc).to_be_bytes());
    png
}

#[tokio::test]
async fn bad_images_get_400_naming_the_problem() {
    let repository = repository();
    let Some(server) = start_server(repository.path(), Engine::Tract, &["--max-image-pixels", "10000"])
    else {
        return;
    };
    let jpeg = solid(ImageFormat::Jpeg, 64, 48);
    let gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("not an image", b"this is plain text, not pixels".to_vec(), &["input 'image'", "not an image"]),
        ("truncated JPEG", jpeg[..jpeg.len() / 2].to_vec(), &["corrupt or truncated JPEG"]),
        ("zero-size PNG", png_claiming(0, 16), &["zero size (0x16)"]),
        (
            "huge image",
            solid(ImageFormat::Png, 200, 100),
            &["200x100 = 20000 pixels", "limit of 10000", "--max-image-pixels"],
        ),
        ("decompression bomb", png_claiming(60_000, 60_000), &["60000x60000", "--max-image-pixels"]),
        ("GIF", gif.to_vec(), &["unsupported image format GIF"]),
        ("empty", Vec::new(), &["empty data"]),
    ];
    let http = reqwest::Client::new();
    for (what, data, mentions) in &cases {
        let reply = infer_images(&server, "pixels", "image", &[data], json!([])).await;
        let message = reply.assert_error(400, mentions);
        assert!(!message.is_empty(), "{what}");
        let reply = send(
            http.post(server.url("/v2/models/pixels/classify"))
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(data.clone()),
        )
        .await;
        reply.assert_error(400, mentions);
    }
    // In a batch, the element at fault is named.
    let good = solid(ImageFormat::Png, 20, 20);
    let reply = infer_images(&server, "pixels", "image", &[&good, b"garbage"], json!([])).await;
    reply.assert_error(400, &["input 'image' element 1", "not an image"]);
    // More images than max_batch_size are refused before any is decoded.
    let five = [&good[..]; 5];
    let reply = infer_images(&server, "pixels", "image", &five, json!([])).await;
    reply.assert_error(400, &["holds 5 images", "at most 4"]);
    // The endpoint refuses a Content-Type that is not an image, or an image type it cannot decode.
    for (content_type, mention) in
        [("image/gif", "unsupported image format image/gif"), ("text/plain", "not an image")]
    {
        let reply = send(
            http.post(server.url("/v2/models/pixels/classify"))
                .header(CONTENT_TYPE, content_type)
                .body(good.clone()),
        )
        .await;
        reply.assert_error(400, &[mention]);
    }
    // Classification of an output the model does not have.
    let outputs = json!([{ "name": "nope", "parameters": { "classification": 1 } }]);
    let reply = infer_images(&server, "pixels", "image", &[&good], outputs).await;
    reply.assert_error(400, &["nope"]);
    // Over gRPC the same is INVALID_ARGUMENT.
    let request = ModelInferRequest {
        model_name: "pixels".into(),
        inputs: vec![InferInputTensor {
            name: "image".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            ..Default::default()
        }],
        raw_input_contents: vec![bytes_elements(&[&jpeg[..jpeg.len() / 2]]).into()],
        ..Default::default()
    };
    let result = grpc(&server).await.model_infer(request).await;
    assert_grpc_error(result, tonic::Code::InvalidArgument, &["corrupt or truncated JPEG"]);
    // Still serving.
    let reply = infer_images(&server, "pixels", "image", &[&good], json!([])).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    server.stop().await;
}
