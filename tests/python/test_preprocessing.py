"""Server-side preprocessing and classification on EfficientNet-Lite0 with real photos.

rtserve serves the zoo's efficientnet_lite0 with a ``[preprocess]`` table in its config.toml
(the model's documented contract: RGB, short side 256 bilinear, centre crop 224,
(x - 127) / 128, NCHW), so clients send encoded images and get labels back:

(a) ``POST /v2/models/{m}/classify`` with coffee.png, and with a JPEG of it, answers "espresso";
    chelsea.png answers a cat.
(b) The tensor rtserve makes equals the client-side NumPy/Pillow pipeline of test_model_zoo.py
    within one grey level (1/128 after normalisation) for PNG, two for JPEG: both resize with a
    bilinear (triangle) filter widened by the scale factor, in 8-bit fixed point, but Pillow
    and fast_image_resize round their intermediate sums differently, and the JPEG decoders
    (zune-jpeg, libjpeg-turbo) differ in their IDCT and chroma upsampling.  A second model,
    ``Identity`` over the same input, returns rtserve's tensor so it can be compared.
(c) The logits of a v2 infer with the image as a BYTES input agree with onnxruntime on the
    client-side tensor within LOGIT_TOL, with the same top-1.
(d) Triton's classification extension returns "score:index:label" strings.

Skips like test_model_zoo.py: without the zoo (unless RTSERVE_ZOO_REQUIRED=1) or the binary.
"""

from __future__ import annotations

import io
import json
import os
import re

import numpy as np
import pytest

import test_model_zoo as zoo

MODEL = "efficientnet_lite0"
PIXELS = "effnet_pixels"  # Identity over the same input: returns the preprocessed tensor
# What rounding differences in the resize do to the logits (measured: see docs/preprocessing.md).
LOGIT_TOL = 0.25
# Grey levels (1/128 each after normalisation): the resize rounds differently from Pillow's
# (PNG: at most 1); for a JPEG, zune-jpeg's IDCT and chroma upsampling also differ slightly from
# libjpeg-turbo's, which Pillow uses (at most 2).
GREY_LEVELS = {"png": 1, "jpg": 2}

PREPROCESS = """
max_batch_size = 8
[preprocess]
input = "image"
tensor = "input"
resize_short = 256
filter = "bilinear"
crop = [224, 224]
color = "rgb"
layout = "nchw"
mean = [127.0, 127.0, 127.0]
std = [128.0, 128.0, 128.0]
dtype = "fp32"
"""


def _identity_model(path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    dims = ["N", 3, 224, 224]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["pixels"])], "pixels",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    binary = zoo._rtserve_bin()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.skip(f"rtserve binary not found at {binary} (set RTSERVE_BIN)")
    zoo._require_zoo()
    repo = tmp_path_factory.mktemp("preprocess_repo")
    (repo / MODEL / "1").mkdir(parents=True)
    (repo / MODEL / "1" / "model.onnx").symlink_to(zoo.EFFNET_ONNX)
    (repo / MODEL / "labels.txt").symlink_to(zoo.ZOO_DIR / MODEL / "labels.txt")
    (repo / MODEL / "config.toml").write_text(PREPROCESS)
    (repo / PIXELS / "1").mkdir(parents=True)
    _identity_model(repo / PIXELS / "1" / "model.onnx")
    (repo / PIXELS / "config.toml").write_text(PREPROCESS)
    engine = os.environ.get("RTSERVE_ENGINE", "onnxruntime")
    srv = zoo._ZooServer(engine, repo)
    try:
        srv.wait_ready([MODEL, PIXELS], float(os.environ.get("RTSERVE_START_TIMEOUT", "180")))
        yield srv.base
    finally:
        srv.stop()


def _photo(name: str) -> bytes:
    path = zoo.DATA_DIR / name
    if not path.exists():
        zoo._missing(str(path))
    return path.read_bytes()


def _jpeg(name: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    with Image.open(zoo.DATA_DIR / name) as im:
        im.convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def _classify(base: str, data: bytes, content_type: str, query: str = "") -> dict:
    status, headers, body = zoo._http(f"{base}/v2/models/{MODEL}/classify{query}", data,
                                      {"Content-Type": content_type})
    assert status == 200, f"HTTP {status}: {body[:300]!r}"
    assert any(k.lower() == "x-rtserve-preprocess-us" for k in headers), headers
    return json.loads(body)


def _infer_images(base: str, model: str, images: list[bytes], outputs: list[dict]):
    raw = b"".join(len(b).to_bytes(4, "little") + b for b in images)
    header = json.dumps({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": outputs,
    }).encode()
    status, headers, body = zoo._http(f"{base}/v2/models/{model}/infer", header + raw, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    })
    assert status == 200, f"HTTP {status}: {body[:300]!r}"
    if any(o.get("parameters", {}).get("classification") for o in outputs):
        return headers, {o["name"]: np.array(o["data"], dtype=object).reshape(o["shape"])
                         for o in json.loads(body)["outputs"]}
    return headers, zoo._parse_infer_response(headers, body)


@pytest.mark.parametrize("form", ["png", "jpeg"])
def test_classify_endpoint_says_espresso(server, form):
    data = _photo("coffee.png") if form == "png" else _jpeg("coffee.png")
    reply = _classify(server, data, f"image/{form}", "?top_k=3")
    top = reply["predictions"][0]
    assert [p["label"] for p in top][0] == "espresso", top
    assert top[0]["index"] == zoo.ESPRESSO
    assert 0.5 < top[0]["score"] <= 1.0 and top[0]["score"] >= top[1]["score"]


def test_classify_endpoint_multipart_batch(server):
    boundary = "rtserve-photos"
    parts = b""
    for name in ("coffee.png", "chelsea.png"):
        parts += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
                  f"filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n").encode()
        parts += _photo(name) + b"\r\n"
    parts += f"--{boundary}--\r\n".encode()
    reply = _classify(server, parts, f"multipart/form-data; boundary={boundary}", "?top_k=1")
    (coffee,), (cat,) = reply["predictions"]
    assert coffee["index"] == zoo.ESPRESSO
    assert cat["index"] in zoo.CATS, cat


@pytest.mark.parametrize("name", ["coffee.png", "chelsea.png", "rocket.jpg"])
def test_server_tensor_matches_numpy(server, name):
    pytest.importorskip("PIL")
    _, outputs = _infer_images(server, PIXELS, [_photo(name)],
                               [{"name": "pixels", "parameters": {"binary_data": True}}])
    got = outputs["pixels"]
    want = zoo.preprocess(zoo.DATA_DIR / name)
    assert got.shape == want.shape == (1, 3, 224, 224)
    diff = np.abs(got - want)
    print(f"{name}: tensor max |rtserve - numpy| = {diff.max():.4g} "
          f"({diff.max() * 128:.2f} grey levels), mean {diff.mean() * 128:.3f} levels, "
          f"{np.mean(diff > 0) * 100:.2f}% of values differ")
    assert diff.max() * 128 <= GREY_LEVELS[name.rsplit(".", 1)[1]] + 1e-4


@pytest.mark.parametrize("name", ["coffee.png", "chelsea.png"])
def test_server_logits_match_client_side(server, ort_session, name):
    headers, outputs = _infer_images(server, MODEL, [_photo(name)],
                                     [{"name": "logits", "parameters": {"binary_data": True}}])
    got = outputs["logits"]
    want = ort_session.run(["logits"], {"input": zoo.preprocess(zoo.DATA_DIR / name)})[0]
    diff = float(np.max(np.abs(got - want)))
    print(f"{name}: logits max |server-side - client-side preprocessing| = {diff:.4g}")
    assert int(np.argmax(got)) == int(np.argmax(want))
    assert int(np.argmax(got)) in zoo.EXPECTED[name]
    assert diff <= LOGIT_TOL
    assert any(k.lower() == "x-rtserve-preprocess-us" for k in headers)


def test_classification_extension(server):
    _, outputs = _infer_images(server, MODEL, [_photo("coffee.png"), _photo("chelsea.png")],
                               [{"name": "logits", "parameters": {"classification": 3}}])
    labels = outputs["logits"]
    assert labels.shape == (2, 3)
    first = labels[0][0]
    first = first.decode() if isinstance(first, bytes) else str(first)
    assert re.fullmatch(r"-?\d+\.\d{6}:967:espresso", first), first
    second = labels[1][0]
    second = second.decode() if isinstance(second, bytes) else str(second)
    assert int(second.split(":")[1]) in zoo.CATS, second


def test_preprocess_metrics(server):
    _classify(server, _photo("coffee.png"), "image/png")
    status, _, body = zoo._http(f"{server}/metrics")
    assert status == 200
    text = body.decode()
    for name in ("rtserve_preprocess_duration_seconds_count", "rtserve_postprocess_duration_seconds_count"):
        assert re.search(rf'^{name}{{model="{MODEL}",version="1"}} [1-9]', text, re.M), name


@pytest.fixture(scope="module")
def ort_session():
    ort = pytest.importorskip("onnxruntime")
    zoo._require_zoo()
    return ort.InferenceSession(str(zoo.EFFNET_ONNX), providers=["CPUExecutionProvider"])
