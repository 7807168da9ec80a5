"""nginx (deploy/nginx/rtserve.conf) in front of three rtserve replicas that share one
redis-server, all on loopback: load over HTTP and gRPC with tritonclient and `rtserve bench`, a
rolling restart under load that must lose nothing, a replica killed under load, the shared cache,
and throughput through the balancer against one replica direct (docs/deploy.md).

nginx and redis-server are Debian packages; each test is skipped when one is missing, unless
RTSERVE_TEST_REQUIRE_NGINX / RTSERVE_TEST_REQUIRE_REDIS is set (CI). `-s` prints the figures.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import MODEL_REPOSITORY, REPO_ROOT, load_expected, rtserve_binary
from prometheus_text import total

NGINX_CONF = REPO_ROOT / "deploy" / "nginx" / "rtserve.conf"
REPLICAS = 3
# Short, so that the rolling restart is quick; nginx cannot see readiness anyway (the drain is
# for Kubernetes), but its `Connection: close` empties nginx's idle connection pool.
DRAIN_SECONDS = "1"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
RTOL, ATOL = 1e-4, 1e-5
CACHED_CONFIG = """name: "cached"
max_batch_size: 8
input [ { name: "input" data_type: TYPE_FP32 dims: [ 784 ] } ]
output [ { name: "output" data_type: TYPE_FP32 dims: [ 10 ] } ]
response_cache { enable: true }
"""
# Never through a proxy from the environment: every address here is loopback.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def required(tool: str, env: str) -> str:
    exe = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/local/sbin")
    if exe is None:
        why = f"{tool} is not installed (Debian: apt-get install {tool})"
        if os.environ.get(env):
            pytest.fail(f"{why}; {env} is set", pytrace=False)
        pytest.skip(why)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, deadline: float, proc: subprocess.Popen, what: str) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on {port} in time")


def http_get(url: str) -> tuple[int, str]:
    try:
        with OPENER.open(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@dataclass
class Replica:
    """One `rtserve serve` on fixed ports, so that a restart comes back where nginx expects it."""

    index: int
    repository: Path
    redis_url: str
    log_dir: Path
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.log_dir.glob(f"replica{self.index}-*.log"))
        )

    def start(self) -> None:
        self.starts += 1
        cmd = [
            str(rtserve_binary()),
            "serve",
            "--model-repository",
            str(self.repository),
            "--host",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--cache-redis",
            self.redis_url,
            "--listen-when-ready",
            "--drain-seconds",
            DRAIN_SECONDS,
        ]
        env = {**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"}
        with open(self.log_dir / f"replica{self.index}-{self.starts}.log", "w") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            wait_for_port(self.http_port, deadline, self.proc, f"replica {self.index}")
            while http_get(f"http://{self.http_url}/v2/health/ready")[0] != 200:
                assert time.monotonic() < deadline, "not ready in time"
                time.sleep(0.05)
        except AssertionError as e:
            self.kill()
            pytest.fail(f"replica {self.index}: {e}\n--- its log ---\n{self.log()}", pytrace=False)

    def stop(self) -> int:
        """SIGTERM; the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"replica {self.index} still runs {STOP_TIMEOUT_S} s after SIGTERM\n{self.log()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def metric(self, name: str, **labels: str) -> float:
        status, text = http_get(f"http://{self.http_url}/metrics")
        assert status == 200, text
        return total(text, name, **labels)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Cluster:
    replicas: list[Replica]
    nginx_http: str
    nginx_grpc: str
    nginx_log: Path
    nginx_pid: int

    def nginx_cpu_seconds(self) -> float:
        """CPU time of nginx's workers (the master only supervises)."""
        workers = subprocess.run(
            ["pgrep", "-P", str(self.nginx_pid)], capture_output=True, text=True, check=False
        ).stdout
        return sum(cpu_seconds(int(pid)) for pid in workers.split())

    def nginx_errors(self) -> str:
        """The end of nginx's error log, for failure messages."""
        return "\n".join(self.nginx_log.read_text(errors="replace").splitlines()[-20:])


def render_nginx_conf(http_port: int, grpc_port: int, replicas: list[Replica]) -> str:
    """deploy/nginx/rtserve.conf with only its listen and replica addresses replaced; a change of
    the file's shape fails here instead of testing something else."""
    text = NGINX_CONF.read_text()
    replaced = {}

    def sub(pattern: str, repl, count: int) -> None:
        nonlocal text
        text, n = re.subn(pattern, repl, text)
        replaced[pattern] = n
        assert n == count, f"{NGINX_CONF}: expected {count} match(es) of {pattern!r}, found {n}"

    sub(r"listen 8000;", f"listen 127.0.0.1:{http_port};", 1)
    sub(r"listen 8001 http2;", f"listen 127.0.0.1:{grpc_port} http2;", 1)
    sub(r"server 10\.0\.0\.1(\d):8000", lambda m: f"server {replicas[int(m[1]) - 1].http_url}", REPLICAS)
    sub(
        r"server 10\.0\.0\.1(\d):8001",
        lambda m: f"server 127.0.0.1:{replicas[int(m[1]) - 1].grpc_port}",
        REPLICAS,
    )
    return text


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    nginx = required("nginx", "RTSERVE_TEST_REQUIRE_NGINX")
    redis = required("redis-server", "RTSERVE_TEST_REQUIRE_REDIS")
    work = Path(tempfile.mkdtemp(prefix="rtserve-nginx-"))
    work.chmod(0o777)  # nginx's workers (user nobody when started as root) write temp files here
    repository = work / "models"
    shutil.copytree(MODEL_REPOSITORY / "mlp", repository / "mlp")
    (repository / "cached" / "1").mkdir(parents=True)
    shutil.copy(MODEL_REPOSITORY / "mlp" / "1" / "model.onnx", repository / "cached" / "1" / "model.onnx")
    (repository / "cached" / "config.pbtxt").write_text(CACHED_CONFIG)
    redis_port = free_port()
    redis_proc = subprocess.Popen(
        [redis, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    replicas: list[Replica] = []
    nginx_proc = None
    try:
        wait_for_port(redis_port, time.monotonic() + 20, redis_proc, "redis-server")
        redis_url = f"redis://127.0.0.1:{redis_port}/"
        replicas = [Replica(i, repository, redis_url, work) for i in range(REPLICAS)]
        for replica in replicas:
            replica.start()
        http_port, grpc_port = free_port(), free_port()
        (work / "rtserve.conf").write_text(render_nginx_conf(http_port, grpc_port, replicas))
        (work / "nginx.conf").write_text(f"""daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    include {work}/rtserve.conf;
}}
""")
        nginx_proc = subprocess.Popen(
            [nginx, "-p", str(work), "-c", str(work / "nginx.conf"), "-e", str(work / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_port(http_port, time.monotonic() + 20, nginx_proc, "nginx")
            wait_for_port(grpc_port, time.monotonic() + 20, nginx_proc, "nginx")
        except AssertionError as e:
            stderr = nginx_proc.stderr.read().decode() if nginx_proc.poll() is not None else ""
            pytest.fail(f"{e}: {stderr}", pytrace=False)
        yield Cluster(
            replicas, f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", work / "error.log", nginx_proc.pid
        )
        for replica in replicas:
            if replica.proc is not None and replica.proc.poll() is None:
                assert replica.stop() == 0, replica.log()
    finally:
        if nginx_proc is not None:
            nginx_proc.terminate()
            nginx_proc.wait(timeout=10)
        for replica in replicas:
            replica.kill()
        redis_proc.kill()
        redis_proc.wait()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def mlp():
    return load_expected("mlp")


def check_outputs(result, mlp) -> None:
    for name, (_, want) in mlp.outputs.items():
        np.testing.assert_allclose(result.as_numpy(name), want, rtol=RTOL, atol=ATOL)


def infer_http(client: httpclient.InferenceServerClient, mlp, model: str = "mlp"):
    ((name, (datatype, array)),) = mlp.inputs.items()
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=True)
    return client.infer(model, [tensor])


def infer_grpc(client: grpcclient.InferenceServerClient, mlp, model: str = "mlp"):
    ((name, (datatype, array)),) = mlp.inputs.items()
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return client.infer(model, [tensor], client_timeout=30)


class Load:
    """tritonclient over HTTP and gRPC through nginx, one closed-loop thread each, until stopped;
    every answer is checked against the NumPy reference."""

    def __init__(self, cluster: Cluster, mlp) -> None:
        self.stop_event = threading.Event()
        self.ok = {"http": 0, "grpc": 0}
        self.failures: list[str] = []
        self.threads = [
            threading.Thread(target=self._run, args=("http", cluster, mlp), daemon=True),
            threading.Thread(target=self._run, args=("grpc", cluster, mlp), daemon=True),
        ]

    def _run(self, protocol: str, cluster: Cluster, mlp) -> None:
        if protocol == "http":
            client = httpclient.InferenceServerClient(cluster.nginx_http, network_timeout=30)
            infer = infer_http
        else:
            client = grpcclient.InferenceServerClient(cluster.nginx_grpc)
            infer = infer_grpc
        while not self.stop_event.is_set():
            try:
                check_outputs(infer(client, mlp), mlp)
                self.ok[protocol] += 1
            except Exception as e:  # noqa: BLE001 (every failure is counted and reported)
                self.failures.append(f"{protocol}: {type(e).__name__}: {e}")
        client.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=60)

    @property
    def sent(self) -> int:
        return sum(self.ok.values()) + len(self.failures)


def bench(url: str, out: Path, *args: str) -> subprocess.Popen:
    cmd = [str(rtserve_binary()), "bench", "--url", url, "--model", "mlp", "-q", "--json", str(out), *args]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def bench_steps(proc: subprocess.Popen, out: Path) -> list[dict]:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"rtserve bench failed:\n{output}"
    return json.loads(out.read_text())["steps"]


def failed(step: dict) -> int:
    return sum(step["errors"].values())


def test_http_and_grpc_through_nginx_reach_every_replica(cluster, mlp):
    before = [r.metric("rtserve_requests_total", model="mlp", outcome="success") for r in cluster.replicas]
    http = httpclient.InferenceServerClient(cluster.nginx_http)
    grpc = grpcclient.InferenceServerClient(cluster.nginx_grpc)
    for _ in range(15):
        check_outputs(infer_http(http, mlp), mlp)
        check_outputs(infer_grpc(grpc, mlp), mlp)
    assert http.is_server_ready() and grpc.is_server_ready()
    assert http.get_model_metadata("mlp")["name"] == "mlp"
    http.close()
    grpc.close()
    after = [r.metric("rtserve_requests_total", model="mlp", outcome="success") for r in cluster.replicas]
    served = [a - b for a, b in zip(after, before)]
    assert sum(served) == 30, served
    assert all(n > 0 for n in served), f"least_conn left a replica idle: {served}"


def test_a_reply_cached_on_one_replica_is_a_hit_on_the_others(cluster, mlp):
    first, *others = cluster.replicas
    check_outputs(infer_http(httpclient.InferenceServerClient(first.http_url), mlp, "cached"), mlp)
    for replica in others:
        hits = replica.metric("rtserve_cache_hits_total", tier="redis")
        check_outputs(infer_http(httpclient.InferenceServerClient(replica.http_url), mlp, "cached"), mlp)
        assert replica.metric("rtserve_cache_hits_total", tier="redis") == hits + 1, replica.index


def test_rolling_restart_under_load_fails_no_request(cluster, mlp, tmp_path):
    """Each replica in turn: SIGTERM (drain, exit 0), start again on its ports, wait until it is
    ready; tritonclient (HTTP and gRPC) and `rtserve bench` (HTTP and gRPC, open loop) keep
    sending through nginx the whole time."""
    duration = 40
    urls = {"http": f"http://{cluster.nginx_http}", "grpc": f"grpc://{cluster.nginx_grpc}"}
    args = ("--rate", "100", "--warmup", "0s", "--duration", f"{duration}s")
    benches = [(bench(url, tmp_path / f"{p}.json", *args), tmp_path / f"{p}.json") for p, url in urls.items()]
    started = time.monotonic()
    with Load(cluster, mlp) as load:
        time.sleep(2)
        for replica in cluster.replicas:
            code = replica.stop()
            assert code == 0, f"replica {replica.index} exited with {code}\n{replica.log()}"
            replica.start()
            time.sleep(1)
        restarted = time.monotonic() - started
        assert restarted < duration - 2, f"the restarts took {restarted:.0f} s, longer than the load"
        steps = [bench_steps(proc, out)[0] for proc, out in benches]
    sent = load.sent + sum(s["requests"] for s in steps)
    bench_failed = sum(failed(s) for s in steps)
    print(
        f"\nrolling restart of {REPLICAS} replicas in {restarted:.1f} s: {sent} requests sent through "
        f"nginx (tritonclient HTTP {load.ok['http']}, gRPC {load.ok['grpc']}; bench HTTP "
        f"{steps[0]['requests']}, gRPC {steps[1]['requests']}), failed: {len(load.failures) + bench_failed}"
    )
    assert load.failures == [], (load.failures[:5], cluster.nginx_errors())
    assert bench_failed == 0, ([s["error_sample"] for s in steps], cluster.nginx_errors())
    assert load.ok["http"] > 0 and load.ok["grpc"] > 0


def test_a_replica_killed_under_load_costs_few_requests(cluster, mlp, tmp_path):
    """SIGKILL one replica under load: requests it held are retried by nginx or fail (bounded by
    what was in flight), and the other two keep serving."""
    victim, *survivors = cluster.replicas
    out = tmp_path / "http.json"
    proc = bench(
        f"http://{cluster.nginx_http}", out, "--concurrency", "4", "--warmup", "0s", "--duration", "8s"
    )
    before = [r.metric("rtserve_requests_total", model="mlp", outcome="success") for r in survivors]
    with Load(cluster, mlp) as load:
        time.sleep(2)
        victim.kill()
        time.sleep(3)
        ok_at_kill = dict(load.ok)
        time.sleep(2)
        served_after = {p: load.ok[p] - ok_at_kill[p] for p in load.ok}
        (step,) = bench_steps(proc, out)
    after = [r.metric("rtserve_requests_total", model="mlp", outcome="success") for r in survivors]
    lost = len(load.failures) + failed(step)
    print(
        f"\nSIGKILL of one of {REPLICAS} replicas under load: {load.sent + step['requests']} requests sent, "
        f"{lost} failed ({load.failures[:3]}, bench errors {step['errors']})"
    )
    # At most what was in flight on the killed replica: bench's 4 and the two client threads.
    assert lost <= 6, (load.failures, step["errors"])
    assert all(n > 0 for n in served_after.values()), served_after
    assert all(a > b for a, b in zip(after, before)), (before, after)
    victim.start()


def test_throughput_through_nginx_against_one_replica_direct(cluster, tmp_path):
    """The balancer's cost on one machine: closed loop through nginx (3 replicas) against one
    replica direct, with nginx's CPU time per request. Printed, not asserted (timing);
    docs/deploy.md has a release-build run."""
    replica = cluster.replicas[1]
    rows = []
    for name, url in [
        ("HTTP direct, 1 replica", f"http://{replica.http_url}"),
        ("HTTP through nginx, 3 replicas", f"http://{cluster.nginx_http}"),
        ("gRPC direct, 1 replica", f"grpc://127.0.0.1:{replica.grpc_port}"),
        ("gRPC through nginx, 3 replicas", f"grpc://{cluster.nginx_grpc}"),
    ]:
        out = tmp_path / f"{len(rows)}.json"
        nginx_before = cluster.nginx_cpu_seconds()
        (step,) = bench_steps(
            bench(url, out, "--concurrency", "8", "--duration", "4s", "--warmup", "0s"), out
        )
        nginx_cpu = cluster.nginx_cpu_seconds() - nginx_before
        assert failed(step) == 0, step["error_sample"]
        rows.append((name, step, nginx_cpu))
    print("\n| path | req/s | p50 | p99 | nginx CPU per request |\n| --- | --- | --- | --- | --- |")
    for name, step, nginx_cpu in rows:
        lat = step["latency_us"]
        per_request = nginx_cpu / step["requests"] * 1e6
        print(
            f"| {name} | {step['throughput_rps']:.0f} | {lat['p50_us'] / 1000:.2f} ms | "
            f"{lat['p99_us'] / 1000:.2f} ms | {per_request:.0f} µs |"
        )
