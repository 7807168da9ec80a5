"""tritonclient's repository calls against rtserve's model control (docs/reliability.md,
"Model control and reloads"): `load_model(config=...)` overrides the folder's config,
`load_model(config=..., files=...)` loads a model from the files sent (tritonclient
base64-encodes them over HTTP, sends bytes over gRPC), and `--model-control-mode none` refuses
load and unload as Triton does.
"""

from __future__ import annotations

import json
import shutil
from typing import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import MODEL_REPOSITORY, RtserveServer, load_expected, serve_command, start_server, stop_server

MLP_CONFIG = {
    "name": "mlp",
    "max_batch_size": 4,
    "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": ["784"]}],
    "output": [{"name": "output", "data_type": "TYPE_FP32", "dims": [10]}],
}


def command(repository, *flags: str) -> list[str]:
    return serve_command("--engine", "tract", *flags, repository=repository)


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    shutil.copytree(MODEL_REPOSITORY / "mlp", root / "mlp")
    return root


@pytest.fixture(scope="module")
def explicit(repository) -> Iterator[RtserveServer]:
    server = start_server(command(repository, "--model-control-mode", "explicit", "--load-model", "mlp"))
    yield server
    stop_server(server)


def clients(server: RtserveServer):
    return [
        httpclient.InferenceServerClient(url=server.http_url),
        grpcclient.InferenceServerClient(url=server.grpc_url),
    ]


def infer_mlp(client, model: str) -> np.ndarray:
    expected = load_expected("mlp")
    datatype, array = expected.inputs["input"]
    module = grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient
    inp = module.InferInput("input", list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    result = client.infer(model, [inp])
    np.testing.assert_allclose(result.as_numpy("output"), expected.outputs["output"][1], rtol=1e-4, atol=1e-5)
    return result.as_numpy("output")


def max_batch_size(client, model: str) -> int:
    config = client.get_model_config(model)
    if isinstance(client, grpcclient.InferenceServerClient):
        return config.config.max_batch_size
    return config["max_batch_size"]


@pytest.mark.parametrize("protocol", [0, 1], ids=["http", "grpc"])
def test_load_model_with_a_config_overrides_the_file(explicit, protocol):
    client = clients(explicit)[protocol]
    assert max_batch_size(client, "mlp") == 8
    client.load_model("mlp", config=json.dumps(MLP_CONFIG))
    assert max_batch_size(client, "mlp") == 4
    infer_mlp(client, "mlp")
    client.load_model("mlp")  # without config: the folder's again
    assert max_batch_size(client, "mlp") == 8


@pytest.mark.parametrize("protocol", [0, 1], ids=["http", "grpc"])
def test_load_model_from_files_sent(explicit, protocol):
    client = clients(explicit)[protocol]
    name = f"sent_{protocol}"
    config = dict(MLP_CONFIG, name=name)
    weights = (MODEL_REPOSITORY / "mlp" / "1" / "model.onnx").read_bytes()
    client.load_model(name, config=json.dumps(config), files={"file:1/model.onnx": weights})
    assert client.is_model_ready(name)
    infer_mlp(client, name)
    with pytest.raises(InferenceServerException, match="inside the model folder"):
        client.load_model(name, config=json.dumps(config), files={"file:../x.onnx": weights})
    client.unload_model(name)
    assert not client.is_model_ready(name)


def test_none_mode_refuses_load_and_unload(repository):
    server = start_server(command(repository, "--model-control-mode", "none"))
    try:
        for client in clients(server):
            infer_mlp(client, "mlp")
            with pytest.raises(InferenceServerException, match="--model-control-mode none"):
                client.load_model("mlp")
            with pytest.raises(InferenceServerException, match="not allowed"):
                client.unload_model("mlp")
            assert client.is_model_ready("mlp")
    finally:
        stop_server(server)
