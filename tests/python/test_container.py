"""The tree the container image ships, as deploy/container/build.sh stages it: its binary serves
its example models with its own ONNX Runtime library (no Python package behind it), one
inference on `mlp` agrees with onnxruntime in Python on the staged model file, and the image's
HEALTHCHECK script tells a ready server from a closed port.

RTSERVE_STAGED_PREFIX names the staged tree (.ci/run stages one under target/). Without it the
tests skip, unless RTSERVE_CI_REQUIRE_STAGED is set.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import REPO_ROOT, RtserveServer, serve_command, start_server, stop_server

RTOL = 1e-4
ATOL = 1e-5


def staged_prefix() -> Path:
    value = os.environ.get("RTSERVE_STAGED_PREFIX")
    if not value:
        why = "RTSERVE_STAGED_PREFIX is not set (stage one: deploy/container/build.sh PREFIX)"
        if os.environ.get("RTSERVE_CI_REQUIRE_STAGED"):
            pytest.fail(f"{why}; RTSERVE_CI_REQUIRE_STAGED is set", pytrace=False)
        pytest.skip(why)
    prefix = REPO_ROOT / value  # an absolute value stays as it is
    required = ("bin/rtserve", "bin/healthcheck", "models/mlp")
    missing = [p for p in required if not (prefix / p).exists()]
    if not list((prefix / "lib").glob("libonnxruntime.so*")):
        missing.append("lib/libonnxruntime.so*")
    assert not missing, f"RTSERVE_STAGED_PREFIX={prefix} is not a staged tree: no {missing}"
    return prefix


@pytest.fixture(scope="module")
def staged() -> Iterator[tuple[Path, RtserveServer]]:
    prefix = staged_prefix()
    # The image points RTSERVE_ORT_LIBRARY at the lib folder; the same lookup, as a flag.
    cmd = serve_command(
        "--engine",
        "onnxruntime",
        "--ort-library",
        str(prefix / "lib"),
        repository=prefix / "models",
        binary=prefix / "bin" / "rtserve",
    )
    server = start_server(cmd)
    yield prefix, server
    stop_server(server)


def test_staged_server_loads_the_staged_onnxruntime(staged):
    prefix, server = staged
    loaded = [line for line in server.log().splitlines() if "onnxruntime loaded" in line]
    assert loaded, f"no 'onnxruntime loaded' line in the log:\n{server.log()}"
    assert str(prefix / "lib") in loaded[0], (
        f"ONNX Runtime was not loaded from the staged {prefix / 'lib'}: {loaded[0]}"
    )


def test_staged_mlp_matches_onnxruntime_in_python(staged, expected):
    import onnxruntime as ort
    import tritonclient.http as httpclient

    prefix, server = staged
    exp = expected("mlp")
    datatype, x = exp.inputs["input"]
    inp = httpclient.InferInput("input", list(x.shape), datatype)
    inp.set_data_from_numpy(x, binary_data=True)
    client = httpclient.InferenceServerClient(url=server.http_url)
    try:
        result = client.infer("mlp", [inp], outputs=[httpclient.InferRequestedOutput("output")])
    finally:
        client.close()
    got = result.as_numpy("output")

    session = ort.InferenceSession(
        str(prefix / "models" / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (want,) = session.run(["output"], {"input": x})
    assert got.shape == want.shape, f"output shape {got.shape}, onnxruntime gives {want.shape}"
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def run_healthcheck(prefix: Path, port: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(prefix / "bin" / "healthcheck"), str(port)], capture_output=True, text=True, timeout=30
    )


def test_healthcheck_passes_on_the_ready_server(staged):
    prefix, server = staged
    port = int(server.http_url.rsplit(":", 1)[1])
    check = run_healthcheck(prefix, port)
    assert check.returncode == 0, (
        f"healthcheck failed on the ready server's port {port}: {check.returncode} {check.stderr}"
    )


def test_healthcheck_fails_on_a_closed_port(staged):
    prefix, _ = staged
    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    check = run_healthcheck(prefix, port)
    assert check.returncode != 0, f"healthcheck passed on closed port {port}"
