"""rtserve against Triton's own Python client (tritonclient), over HTTP and gRPC.

The server is started by the session fixture in conftest.py; expected outputs come
from tests/data/expected/<model>.json (written by scripts/make_test_models.py from
an independent NumPy reference).
"""

from __future__ import annotations

import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

RTOL = 1e-4
ATOL = 1e-5
RESULT_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


@pytest.fixture(params=["http", "grpc"])
def client(request, http_client, grpc_client):
    """The same check over both protocols; the tritonclient APIs mirror each other."""
    return {"http": http_client, "grpc": grpc_client}[request.param]


def is_grpc(client) -> bool:
    return isinstance(client, grpcclient.InferenceServerClient)


def http_inputs(exp, binary: bool) -> list:
    inputs = []
    for name, (datatype, arr) in exp.inputs.items():
        inp = httpclient.InferInput(name, list(arr.shape), datatype)
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    return inputs


def http_outputs(exp, binary: bool) -> list:
    return [httpclient.InferRequestedOutput(name, binary_data=binary) for name in exp.outputs]


def grpc_inputs(exp) -> list:
    inputs = []
    for name, (datatype, arr) in exp.inputs.items():
        inp = grpcclient.InferInput(name, list(arr.shape), datatype)
        inp.set_data_from_numpy(arr)  # gRPC always sends raw_input_contents
        inputs.append(inp)
    return inputs


def grpc_outputs(exp) -> list:
    return [grpcclient.InferRequestedOutput(name) for name in exp.outputs]


def assert_outputs_match(result, exp) -> None:
    """Every expected output is present with the right dtype, shape and values."""
    for name, (_, want) in exp.outputs.items():
        got = result.as_numpy(name)
        assert got is not None, f"{exp.model}: output {name!r} missing from response"
        assert got.dtype == want.dtype, f"{exp.model}.{name}: dtype {got.dtype} != {want.dtype}"
        assert got.shape == want.shape, f"{exp.model}.{name}: shape {got.shape} != {want.shape}"
        if np.issubdtype(want.dtype, np.floating):
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"{exp.model}.{name}")
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{exp.model}.{name}")


def metadata_dict(client, model: str) -> dict:
    """Model metadata as a dict with integer shapes on both protocols.

    (gRPC's as_json goes through MessageToJson, which renders int64 as strings.)
    """
    if is_grpc(client):
        md = client.get_model_metadata(model, as_json=True)
    else:
        md = client.get_model_metadata(model)
    for section in ("inputs", "outputs"):
        for t in md.get(section, []):
            t["shape"] = [int(d) for d in t.get("shape", [])]
    return md


def config_dict(client, model: str) -> dict:
    """Model config as a dict. gRPC wraps it in ModelConfigResponse.config;
    HTTP returns the config object itself."""
    if is_grpc(client):
        return client.get_model_config(model, as_json=True)["config"]
    return client.get_model_config(model)


# --------------------------------------------------------------------------
# Health and metadata
# --------------------------------------------------------------------------


def test_server_live(client):
    assert client.is_server_live()


def test_server_ready(client):
    assert client.is_server_ready()


def test_model_ready(client):
    assert client.is_model_ready("mlp")


def test_model_metadata(client):
    md = metadata_dict(client, "mlp")
    assert md["name"] == "mlp"
    assert [(t["name"], t["datatype"], t["shape"]) for t in md["inputs"]] == [
        ("input", "FP32", [-1, 784])
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in md["outputs"]] == [
        ("output", "FP32", [-1, 10])
    ]


def test_model_config(client):
    cfg = config_dict(client, "mlp")
    assert cfg["name"] == "mlp"
    assert int(cfg["max_batch_size"]) == 8


# --------------------------------------------------------------------------
# Inference on mlp, every transport
# --------------------------------------------------------------------------


def test_mlp_http_json(http_client, expected):
    exp = expected("mlp")
    result = http_client.infer(
        "mlp", http_inputs(exp, binary=False), outputs=http_outputs(exp, binary=False)
    )
    # JSON both ways: the response carries the data inline, no binary section.
    assert "data" in result.get_output("output")
    assert_outputs_match(result, exp)


def test_mlp_http_binary(http_client, expected):
    exp = expected("mlp")
    result = http_client.infer(
        "mlp", http_inputs(exp, binary=True), outputs=http_outputs(exp, binary=True)
    )
    # Binary tensor extension: the output is described by binary_data_size.
    out = result.get_output("output")
    assert out["parameters"]["binary_data_size"] == 2 * 10 * 4
    assert_outputs_match(result, exp)


def test_mlp_grpc_unary(grpc_client, expected):
    exp = expected("mlp")
    result = grpc_client.infer("mlp", grpc_inputs(exp), outputs=grpc_outputs(exp))
    assert_outputs_match(result, exp)


def test_mlp_grpc_stream(rtserve, expected):
    exp = expected("mlp")
    responses: queue.Queue = queue.Queue()

    # tritonclient calls this from its stream thread as callback(result=..., error=...).
    def callback(result, error):
        responses.put((result, error))

    # A dedicated client: a stream is per client and must be stopped before close().
    client = grpcclient.InferenceServerClient(url=rtserve.grpc_url)
    try:
        client.start_stream(callback=callback)
        request_ids = [f"stream-{i}" for i in range(3)]
        for rid in request_ids:
            client.async_stream_infer(
                "mlp", grpc_inputs(exp), outputs=grpc_outputs(exp), request_id=rid
            )
        seen = []
        for _ in request_ids:
            result, error = responses.get(timeout=RESULT_TIMEOUT_S)
            assert error is None, f"stream inference failed: {error}"
            assert_outputs_match(result, exp)
            seen.append(result.get_response().id)
        assert sorted(seen) == sorted(request_ids)
    finally:
        client.stop_stream()
        client.close()


# --------------------------------------------------------------------------
# Other models: several inputs/outputs, non-float datatypes
# --------------------------------------------------------------------------


def test_two_io_http_binary(http_client, expected):
    exp = expected("two_io")
    result = http_client.infer(
        "two_io", http_inputs(exp, binary=True), outputs=http_outputs(exp, binary=True)
    )
    assert_outputs_match(result, exp)


def test_int_bool_grpc(grpc_client, expected):
    exp = expected("int_bool")
    assert {dt for dt, _ in exp.inputs.values()} == {"INT64", "BOOL"}
    result = grpc_client.infer("int_bool", grpc_inputs(exp), outputs=grpc_outputs(exp))
    assert_outputs_match(result, exp)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


def test_unknown_model_errors(client, expected):
    exp = expected("mlp")
    missing = "no_such_model_xyz"
    inputs = grpc_inputs(exp) if is_grpc(client) else http_inputs(exp, binary=True)
    with pytest.raises(InferenceServerException) as excinfo:
        client.infer(missing, inputs)
    assert missing in (excinfo.value.message() or ""), str(excinfo.value)
