"""pytest fixtures that run a real rtserve server for the Python client tests.

Environment:
    RTSERVE_BIN     path to the rtserve binary (default: target/debug/rtserve,
                    relative to the repository root)
    RTSERVE_ENGINE  passed as `--engine` when set (e.g. "tract", "onnxruntime")
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = REPO_ROOT / "examples" / "model_repository"
EXPECTED_DIR = REPO_ROOT / "tests" / "data" / "expected"

STARTUP_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 10.0

# `HTTP listening on 127.0.0.1:8000` / `gRPC listening on 127.0.0.1:8001`, possibly
# inside a structured log line; tolerate an optional scheme.
_LISTEN_RE = {
    "http": re.compile(r"HTTP listening on (?:https?://)?(\S+):(\d+)"),
    "grpc": re.compile(r"gRPC listening on (?:https?://)?(\S+):(\d+)"),
}
# Strip colour codes in case the logger ignores NO_COLOR.
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# KServe v2 datatype name -> NumPy dtype (the subset the test models use).
NP_DTYPE = {"FP32": np.float32, "INT64": np.int64, "BOOL": np.bool_}


@dataclass
class RtserveServer:
    """A running rtserve process. URLs are host:port, as tritonclient expects."""

    http_url: str
    grpc_url: str
    process: subprocess.Popen
    _log_lines: list[str] = field(repr=False)
    _reader: threading.Thread = field(repr=False)  # drains the log pipe

    def log(self) -> str:
        return "".join(self._log_lines)


def rtserve_binary() -> Path:
    """The binary under test: RTSERVE_BIN, relative to the repository root unless absolute."""
    binary = Path(os.environ.get("RTSERVE_BIN", "target/debug/rtserve"))
    if not binary.is_absolute():
        binary = REPO_ROOT / binary
    if not binary.exists():
        pytest.fail(f"rtserve binary not found at {binary} (build it or set RTSERVE_BIN)")
    return binary


def serve_command(
    *flags: str,
    repository: Path = MODEL_REPOSITORY,
    binary: Path | None = None,
    global_flags: tuple[str, ...] = (),
) -> list[str]:
    """`rtserve serve` on 127.0.0.1, ports chosen by the OS, no drain at stop, then `flags`."""
    return [
        str(binary or rtserve_binary()),
        *global_flags,
        "serve",
        "--model-repository",
        str(repository),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--host",
        "127.0.0.1",
        "--drain-seconds",
        "0",
        *flags,
    ]


def _server_command() -> list[str]:
    engine = os.environ.get("RTSERVE_ENGINE")
    return serve_command(*(["--engine", engine] if engine else []))


def _wait_http_ready(
    http_url: str, deadline: float, proc: subprocess.Popen, tls: ssl.SSLContext | None = None
) -> bool:
    """Poll GET /v2/health/ready until 200 (models loaded) or the deadline passes; over HTTPS
    with the `tls` context when given."""
    url = f"{'https' if tls else 'http'}://{http_url}/v2/health/ready"
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]  # never via a proxy
    if tls is not None:
        handlers.append(urllib.request.HTTPSHandler(context=tls))
    opener = urllib.request.build_opener(*handlers)
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with opener.open(url, timeout=2) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    return False


def start_server(cmd: list[str], tls: ssl.SSLContext | None = None) -> RtserveServer:
    """Runs `cmd` (an `rtserve serve` command line with ports 0) from the repository root and
    returns once it has logged both listen addresses and GET /v2/health/ready answers 200 (over
    HTTPS with the client context `tls`, for a server started with --tls-cert). Fails the test,
    with the server's log, when it does not get there."""
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "info")
    env.setdefault("NO_COLOR", "1")
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one pipe, one reader thread
        text=True,
        errors="replace",
        bufsize=1,
    )

    lines: list[str] = []
    addrs: dict[str, str] = {}
    found = threading.Event()

    def reader() -> None:
        # Keep draining for the server's whole life so the pipe never fills up.
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if not found.is_set():
                clean = _ANSI_RE.sub("", line)
                for proto, rx in _LISTEN_RE.items():
                    m = rx.search(clean)
                    if m and proto not in addrs:
                        addrs[proto] = f"{m.group(1)}:{m.group(2)}"
                if len(addrs) == 2:
                    found.set()
        found.set()  # EOF: wake the waiter, which then sees the exit

    thread = threading.Thread(target=reader, name="rtserve-log", daemon=True)
    thread.start()

    def fail_startup(why: str) -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        thread.join(timeout=5)
        pytest.fail(
            f"{why}\ncommand: {' '.join(cmd)}\nexit code: {proc.returncode}\n"
            f"--- server log ---\n{''.join(lines)}",
            pytrace=False,
        )

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not found.wait(timeout=0.1):
        if time.monotonic() > deadline:
            break
    if len(addrs) != 2:
        try:  # output ended (EOF) a moment before the process is reaped
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        if proc.poll() is not None:
            fail_startup("rtserve exited before it was listening")
        fail_startup(f"rtserve did not report both listen addresses within {STARTUP_TIMEOUT_S:.0f} s")
    if not _wait_http_ready(addrs["http"], deadline, proc, tls):
        fail_startup("rtserve did not become ready (GET /v2/health/ready != 200) in time")
    return RtserveServer(addrs["http"], addrs["grpc"], proc, lines, thread)


def stop_server(server: RtserveServer) -> None:
    """SIGTERM, then asserts a graceful exit: code 0 within SHUTDOWN_TIMEOUT_S."""
    proc = server.process
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            server._reader.join(timeout=5)
            pytest.fail(
                f"rtserve did not exit within {SHUTDOWN_TIMEOUT_S:.0f} s of SIGTERM\n"
                f"--- server log ---\n{server.log()}",
                pytrace=False,
            )
    server._reader.join(timeout=5)
    assert proc.returncode == 0, (
        f"rtserve exited with {proc.returncode} after SIGTERM\n--- server log ---\n{server.log()}"
    )


@pytest.fixture(scope="session")
def rtserve() -> Iterator[RtserveServer]:
    server = start_server(_server_command())
    yield server
    # Graceful shutdown must succeed with exit code 0.
    stop_server(server)


@pytest.fixture(scope="session")
def http_client(rtserve):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=rtserve.http_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def grpc_client(rtserve):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url=rtserve.grpc_url)
    yield client
    client.close()


@dataclass
class Expected:
    """Inputs and reference outputs from tests/data/expected/<model>.json."""

    model: str
    inputs: dict[str, tuple[str, np.ndarray]]  # name -> (KServe datatype, array)
    outputs: dict[str, tuple[str, np.ndarray]]


def _load_tensors(items: list[dict]) -> dict[str, tuple[str, np.ndarray]]:
    return {
        t["name"]: (
            t["datatype"],
            np.array(t["data"], dtype=NP_DTYPE[t["datatype"]]).reshape(t["shape"]),
        )
        for t in items
    }


def load_expected(model: str) -> Expected:
    doc = json.loads((EXPECTED_DIR / f"{model}.json").read_text())
    return Expected(doc["model"], _load_tensors(doc["inputs"]), _load_tensors(doc["outputs"]))


@pytest.fixture(scope="session")
def expected():
    """`expected("mlp")` -> Expected, parsed once per model."""
    cache: dict[str, Expected] = {}

    def get(model: str) -> Expected:
        if model not in cache:
            cache[model] = load_expected(model)
        return cache[model]

    return get
