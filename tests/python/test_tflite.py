"""tritonclient against TFLite models (docs/edge.md): a repository whose version folders hold
`model.tflite` files made by TensorFlow's converter (a Keras CNN and a small mobile classifier,
float and full INT8) and one from a registry package (MediaPipe's face detector), served over
HTTP and gRPC (on ONNX Runtime, rewritten as ONNX, when the server has it; else on tract, which
does not read the mobile classifier's depth multiplier); every reference
input answers as Google's interpreter (LiteRT) did on the same file (examples/edge/refs/*.npz,
written by scripts/edge/tflite_zoo.py refs): floats within 1e-4, INT8 within one quantization
step.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import REPO_ROOT, serve_command, start_server, stop_server

EDGE = REPO_ROOT / "examples" / "edge"
MODELS = [
    "fashion_cnn_float",
    "fashion_cnn_int8",
    "face_detection_short_range",
    "mobile_block_float",
    "mobile_block_int8",
]
DATATYPES = {np.dtype("float32"): "FP32", np.dtype("int8"): "INT8"}


@pytest.fixture(scope="module")
def tflite_server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("tflite-repository")
    for model in MODELS:
        (repository / model / "1").mkdir(parents=True)
        shutil.copy(EDGE / f"{model}.tflite", repository / model / "1" / "model.tflite")
    server = start_server(serve_command(repository=repository))
    yield server
    stop_server(server)


def assert_as_litert(got, want):
    if want.dtype == np.int8:
        steps = np.abs(got.astype(np.int16) - want.astype(np.int16))
        assert steps.max() <= 1, f"{steps.max()} quantization steps off"
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model", MODELS)
def test_tflite_model_answers_as_litert_over_http_and_grpc(tflite_server, model):
    refs = np.load(EDGE / "refs" / f"{model}.npz")
    inputs = refs["input"]
    several = sum(name.startswith("output_") for name in refs.files)
    outputs = [refs["output"]] if "output" in refs else [refs[f"output_{i}"] for i in range(several)]
    http = httpclient.InferenceServerClient(tflite_server.http_url)
    if model.startswith("mobile_block") and not http.is_model_ready(model):
        pytest.skip("tract does not read a depth multiplier, and this server has no ONNX Runtime")
    grpc = grpcclient.InferenceServerClient(tflite_server.grpc_url)
    metadata = http.get_model_metadata(model)
    assert metadata["platform"] == "tensorflowlite"
    (inp,), outs = metadata["inputs"], metadata["outputs"]
    datatype = DATATYPES[inputs.dtype]
    assert (inp["datatype"], inp["shape"]) == (datatype, [1, *inputs.shape[1:]])
    assert len(outs) == len(outputs)
    for row, x in enumerate(inputs):
        x = x[None]
        for client, module in ((http, httpclient), (grpc, grpcclient)):
            tensor = module.InferInput(inp["name"], list(x.shape), datatype)
            tensor.set_data_from_numpy(x)
            result = client.infer(model, [tensor])
            for out, want in zip(outs, outputs):
                assert_as_litert(result.as_numpy(out["name"])[0], want[row])
    grpc.close()
