"""tritonclient against a TFLite model (docs/edge.md): a repository whose version folder holds
`model.tflite` (TensorFlow's conversion of a Keras CNN, examples/edge), served over HTTP and
gRPC; every reference image answers as Google's interpreter (LiteRT) did on the same file
(examples/edge/refs/fashion_cnn_float.npz, written by scripts/edge/tflite_zoo.py refs).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import REPO_ROOT, serve_command, start_server, stop_server

EDGE = REPO_ROOT / "examples" / "edge"


@pytest.fixture(scope="module")
def tflite_server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("tflite-repository")
    (repository / "fashion" / "1").mkdir(parents=True)
    shutil.copy(EDGE / "fashion_cnn_float.tflite", repository / "fashion" / "1" / "model.tflite")
    server = start_server(serve_command(repository=repository))
    yield server
    stop_server(server)


def test_tflite_model_answers_as_litert_over_http_and_grpc(tflite_server):
    refs = np.load(EDGE / "refs" / "fashion_cnn_float.npz")
    images, wanted = refs["input"], refs["output"]
    http = httpclient.InferenceServerClient(tflite_server.http_url)
    grpc = grpcclient.InferenceServerClient(tflite_server.grpc_url)
    metadata = http.get_model_metadata("fashion")
    assert metadata["platform"] == "tensorflowlite"
    (inp,), (out,) = metadata["inputs"], metadata["outputs"]
    assert (inp["datatype"], inp["shape"]) == ("FP32", [1, 28, 28, 1])
    for image, want in zip(images, wanted):
        x = image[None].astype(np.float32)
        for client, module in ((http, httpclient), (grpc, grpcclient)):
            tensor = module.InferInput(inp["name"], list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            got = client.infer("fashion", [tensor]).as_numpy(out["name"])
            np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-4)
    grpc.close()
