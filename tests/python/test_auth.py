"""tritonclient against an rtserve that checks bearer tokens (docs/security.md): the token goes
in `headers={"Authorization": "Bearer ..."}` on HTTP and `headers={"authorization": "Bearer ..."}`
on gRPC (metadata keys are lower case); without it, or with a wrong one,
the calls fail with 401 / UNAUTHENTICATED; an inference token may not use the repository API
(403 / PERMISSION_DENIED) and an admin token may; the health probes stay open.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from typing import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import (
    REPO_ROOT,
    RtserveServer,
    load_expected,
    serve_command,
    start_server,
    stop_server,
)
from test_openapi import _run as schemathesis_run

CLIENT_TOKEN = "py-client-token-3b5e"
ADMIN_TOKEN = "py-admin-token-9c1d"


def http_bearer(token: str) -> dict[str, str]:
    """A fresh dict each call: tritonclient's HTTP infer adds its own headers to the one given."""
    return {"Authorization": f"Bearer {token}"}


def grpc_bearer(token: str) -> dict[str, str]:
    """gRPC metadata keys are lower case: grpcio refuses 'Authorization' ("Illegal header key")."""
    return {"authorization": f"Bearer {token}"}

@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[RtserveServer]:
    folder = tmp_path_factory.mktemp("tokens")
    tokens = folder / "tokens"
    tokens.write_text(f"# clients\n{CLIENT_TOKEN} python-client\n")
    admins = folder / "admins"
    admins.write_text(f"{ADMIN_TOKEN} python-admin\n")
    server = start_server(serve_command("--auth-token-file", str(tokens), "--admin-token-file", str(admins)))
    yield server
    stop_server(server)


def _inputs(module, expected) -> list:
    inputs = []
    for name, (datatype, array) in expected.inputs.items():
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _assert_outputs(result, expected) -> None:
    for name, (_, array) in expected.outputs.items():
        np.testing.assert_allclose(result.as_numpy(name), array, rtol=1e-4, atol=1e-5)


def _refused(call, status: str, mention: str) -> None:
    with pytest.raises(InferenceServerException) as refused:
        call()
    text = f"{refused.value.status()} {refused.value.message()}"
    assert status in text and mention in text, text


def test_http_needs_a_token(server):
    client = httpclient.InferenceServerClient(url=server.http_url)
    expected = load_expected("two_io")
    # Probes stay open.
    assert client.is_server_live() and client.is_server_ready()
    _refused(lambda: client.get_model_metadata("two_io"), "401", "Authorization: Bearer")
    _refused(lambda: client.get_model_metadata("two_io", headers=http_bearer("not-a-token")), "401", "not valid")
    _refused(lambda: client.infer("two_io", _inputs(httpclient, expected)), "401", "Bearer")
    metadata = client.get_model_metadata("two_io", headers=http_bearer(CLIENT_TOKEN))
    assert metadata["name"] == "two_io"
    _assert_outputs(client.infer("two_io", _inputs(httpclient, expected), headers=http_bearer(CLIENT_TOKEN)), expected)
    # The repository API: admin tokens only.
    _refused(lambda: client.get_model_repository_index(headers=http_bearer(CLIENT_TOKEN)), "403", "python-client")
    _refused(lambda: client.unload_model("two_io", headers=http_bearer(CLIENT_TOKEN)), "403", "admin")
    index = client.get_model_repository_index(headers=http_bearer(ADMIN_TOKEN))
    assert any(row["name"] == "two_io" for row in index)
    client.close()


def test_grpc_needs_a_token(server):
    client = grpcclient.InferenceServerClient(url=server.grpc_url)
    expected = load_expected("two_io")
    assert client.is_server_live() and client.is_server_ready()
    _refused(lambda: client.get_model_metadata("two_io"), "UNAUTHENTICATED", "Authorization: Bearer")
    _refused(lambda: client.get_model_metadata("two_io", headers=grpc_bearer("not-a-token")), "UNAUTHENTICATED", "not valid")
    _refused(lambda: client.infer("two_io", _inputs(grpcclient, expected)), "UNAUTHENTICATED", "Bearer")
    assert client.get_model_metadata("two_io", headers=grpc_bearer(CLIENT_TOKEN)).name == "two_io"
    _assert_outputs(client.infer("two_io", _inputs(grpcclient, expected), headers=grpc_bearer(CLIENT_TOKEN)), expected)
    _refused(lambda: client.get_model_repository_index(headers=grpc_bearer(CLIENT_TOKEN)), "PERMISSION_DENIED", "python-client")
    _refused(lambda: client.unload_model("two_io", headers=grpc_bearer(CLIENT_TOKEN)), "PERMISSION_DENIED", "admin")
    index = client.get_model_repository_index(headers=grpc_bearer(ADMIN_TOKEN))
    assert any(row.name == "two_io" for row in index.models)
    client.close()


def test_the_log_names_tokens_and_never_shows_them(server):
    client = httpclient.InferenceServerClient(url=server.http_url)
    _refused(lambda: client.get_model_repository_index(headers=http_bearer(CLIENT_TOKEN)), "403", "admin")
    client.close()
    time.sleep(0.2)  # the reader thread has the last lines
    log = server.log()
    assert "python-client" in log, log
    assert CLIENT_TOKEN not in log and ADMIN_TOKEN not in log, log


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def test_status_page_is_open_and_its_feed_takes_the_token(server):
    """What the status page does: the page itself loads without a token, its feed answers 401
    (which shows the page's token form) until the token is sent, and the API page's description
    declares the bearer scheme (Swagger UI's Authorize button)."""
    base = f"http://{server.http_url}"
    code, page = _get(f"{base}/")
    assert code == 200 and 'id="token"' in page
    assert _get(f"{base}/v2/status")[0] == 401
    code, feed = _get(f"{base}/v2/status", http_bearer(CLIENT_TOKEN))
    assert code == 200 and "two_io" in feed, feed
    code, description = _get(f"{base}/openapi.json")
    assert code == 200
    schemes = json.loads(description)["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer"


def test_schemathesis_without_a_token_gets_the_described_401(server, tmp_path):
    """schemathesis on the description this server serves (bearer scheme, 401/403 declared):
    without a token every guarded operation answers 401 as described, the open ones answer as
    usual; with the admin token the model is reached."""
    config = '[parameters]\n"path.model" = "two_io"\n"path.version" = "1"\n'
    exclude = ["--exclude-path-regex", "^/v2/repository/models/"]
    anonymous = schemathesis_run(server, tmp_path, "no-token", config, exclude)
    assert 401 in anonymous["statuses"] and 200 in anonymous["statuses"], anonymous
    admin = ["--header", f"Authorization: Bearer {ADMIN_TOKEN}"]
    admitted = schemathesis_run(server, tmp_path, "admin-token", config, exclude + admin)
    # Past the check: generated bodies reach the decoders and the model (schemathesis also
    # sends some requests without the header on purpose: those get the described 401).
    assert 200 in admitted["statuses"] and 400 in admitted["statuses"], admitted


def test_status_page_in_a_browser_asks_for_the_token_and_uses_it(server):
    """tests/browser/token.mjs in headless Chromium; skipped as test_browser.py is when Chromium,
    Node.js or playwright-core is missing (a failure with RTSERVE_CI_REQUIRE_BROWSER)."""
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    browser_dir = REPO_ROOT / "tests" / "browser"
    for what, present in [
        (f"Chromium ({chromium})", os.path.exists(chromium)),
        ("Node.js", shutil.which("node") is not None),
        ("playwright-core (tests/browser/node_modules)", (browser_dir / "node_modules" / "playwright-core").is_dir()),
    ]:
        if not present:
            if os.environ.get("RTSERVE_CI_REQUIRE_BROWSER"):
                pytest.fail(f"{what} is missing and RTSERVE_CI_REQUIRE_BROWSER is set")
            pytest.skip(f"{what} is missing (apt-get install chromium nodejs npm; npm ci --prefix tests/browser)")
    done = subprocess.run(
        ["node", str(browser_dir / "token.mjs"), f"http://{server.http_url}", CLIENT_TOKEN, "two_io"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "CHROMIUM": chromium},
    )
    assert done.returncode == 0, f"browser checks failed:\n{done.stdout}\n{done.stderr}"
