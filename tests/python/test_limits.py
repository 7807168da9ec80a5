"""Python's HTTP clients read rtserve's early refusals whole (docs/reliability.md, "Limits and
early refusals"): `requests` and `urllib` send the whole body before they read the reply, so a
server that answers 413 / 401 / 404 without reading a large body, then closes, made them fail
with a broken pipe or a reset instead of the status. And `--access-log --log-format json`
writes one JSON object per request, without the token.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Iterator

import pytest
import requests

from conftest import RtserveServer, load_expected, serve_command, start_server, stop_server

TOKEN = "py-limits-token-5e1a"
LIMIT = 65536
# Far more than a loopback connection's kernel buffers hold.
LARGE_BODY = b" " * (16 * 1024 * 1024)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[RtserveServer]:
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text(f"{TOKEN} python-limits\n")
    cmd = serve_command(
        "--max-request-bytes",
        str(LIMIT),
        "--auth-token-file",
        str(tokens),
        "--access-log",
        global_flags=("--log-format", "json"),
    )
    server = start_server(cmd)
    yield server
    stop_server(server)


def _url(server: RtserveServer, model: str) -> str:
    return f"http://{server.http_url}/v2/models/{model}/infer"


AUTH = {"Authorization": f"Bearer {TOKEN}"}
# (what, model, headers, status, a word of the error)
REFUSALS = [
    ("over --max-request-bytes", "mlp", AUTH, 413, "--max-request-bytes"),
    ("unknown model", "no_such_model", AUTH, 404, "no_such_model"),
    ("no token", "mlp", {}, 401, "Authorization: Bearer"),
]


@pytest.mark.parametrize("what,model,headers,status,mention", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_requests_reads_the_refusal(server, what, model, headers, status, mention):
    session = requests.Session()
    session.trust_env = False  # never through a proxy
    reply = session.post(_url(server, model), data=LARGE_BODY, headers={**headers, "Content-Type": "application/json"})
    assert reply.status_code == status, reply.text
    assert mention in reply.json()["error"]


@pytest.mark.parametrize("what,model,headers,status,mention", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_urllib_reads_the_refusal(server, what, model, headers, status, mention):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(_url(server, model), data=LARGE_BODY, headers=headers, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(request, timeout=60)
    assert refused.value.code == status
    assert mention in json.loads(refused.value.read())["error"]


def test_the_server_serves_on_after_refusals(server):
    expected = load_expected("mlp")
    (name, (datatype, array)), = expected.inputs.items()
    body = {"inputs": [{"name": name, "datatype": datatype, "shape": list(array.shape), "data": array.ravel().tolist()}]}
    for _ in range(3):
        refused = requests.post(_url(server, "mlp"), data=LARGE_BODY, headers=AUTH)
        assert refused.status_code == 413
    reply = requests.post(_url(server, "mlp"), json=body, headers=AUTH)
    assert reply.status_code == 200, reply.text
    assert [o["name"] for o in reply.json()["outputs"]] == list(expected.outputs)


def _access_lines(server: RtserveServer) -> list[dict]:
    lines = []
    for line in server.log().splitlines():
        if '"rtserve::access"' in line:
            lines.append(json.loads(line))
    return lines


def test_access_log_is_json_without_the_token(server):
    reply = requests.post(_url(server, "no_such_model"), json={}, headers={**AUTH, "x-request-id": "py-json-1"})
    assert reply.status_code == 404
    assert reply.headers["x-request-id"] == "py-json-1"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [line for line in _access_lines(server) if line["fields"].get("id") == "py-json-1"]
        if found:
            break
        time.sleep(0.05)
    assert len(found) == 1, server.log()
    fields = found[0]["fields"]
    assert fields["protocol"] == "http"
    assert fields["method"] == "POST"
    assert fields["path"] == "/v2/models/no_such_model/infer"
    assert fields["status"] == "404"
    assert fields["client"].startswith("127.0.0.1:")
    assert isinstance(fields["latency_us"], int)
    assert TOKEN not in server.log()
