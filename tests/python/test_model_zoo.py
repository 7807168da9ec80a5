"""Checks for the model zoo made by ``python scripts/model_zoo.py fetch``.

(a) EfficientNet-Lite0 through onnxruntime classifies the real photos:
    coffee.png -> espresso (967), chelsea.png -> a cat (281/282/285).
(b) An independent NumPy forward pass (raw checkpoint weights, unfolded
    BatchNorm, TF SAME padding, ReLU6) agrees with onnxruntime on the stem +
    first block within 1e-4, and on the full network's logits.
(c) The zoo served by ``rtserve serve`` on the onnxruntime and tract engines
    classifies the photos over HTTP (KServe v2 JSON and binary extension) and
    the two engines agree on the logits within 1e-4.  Skipped when the rtserve
    binary ($RTSERVE_BIN, default target/debug/rtserve) is missing.
(d) fashion_cnn (trained by rtserve's trainer) reaches 92 % on Fashion-MNIST's test split
    (Debian's dataset-fashion-mnist) through onnxruntime.

The artefacts are not made here.  Tests that need them skip with a hint unless
RTSERVE_ZOO_REQUIRED=1, which turns the skip into a failure (use it in CI after
running the fetch step).

Environment: RTSERVE_ZOO_DIR (default models/zoo), RTSERVE_ZOO_DATA_DIR
(default <zoo dir>_data), RTSERVE_BIN, RTSERVE_START_TIMEOUT (seconds, 180).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

_spec = importlib.util.spec_from_file_location("model_zoo", REPO_ROOT / "scripts" / "model_zoo.py")
model_zoo = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("model_zoo", model_zoo)
_spec.loader.exec_module(model_zoo)
_spec = importlib.util.spec_from_file_location("fashion_cnn", REPO_ROOT / "scripts" / "optimize" / "fashion_cnn.py")
FASHION_CNN = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(FASHION_CNN)

ZOO_DIR = Path(os.environ.get("RTSERVE_ZOO_DIR", REPO_ROOT / "models" / "zoo")).resolve()
DATA_DIR = Path(os.environ.get("RTSERVE_ZOO_DATA_DIR", ZOO_DIR.parent / (ZOO_DIR.name + "_data")))
DIRS = model_zoo.Dirs(ZOO_DIR, DATA_DIR, ZOO_DIR.parent / (ZOO_DIR.name + "_cache"))
EFFNET_ONNX = ZOO_DIR / "efficientnet_lite0" / "1" / "model.onnx"
MODEL = "efficientnet_lite0"

ESPRESSO = 967
CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
EXPECTED = {
    "coffee.png": {ESPRESSO},
    "chelsea.png": CATS,
}
ENGINES = ("onnxruntime", "tract")
LOGIT_ATOL = 1e-4


def _missing(what: str):
    msg = f"{what} missing; run: python scripts/model_zoo.py fetch"
    if os.environ.get("RTSERVE_ZOO_REQUIRED") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def _require_zoo():
    for path in (EFFNET_ONNX, DATA_DIR / "coffee.png", DATA_DIR / "chelsea.png"):
        if not path.exists():
            _missing(str(path))


# ---------------------------------------------------------------------------
# Preprocessing (the documented contract for efficientnet_lite0)
# ---------------------------------------------------------------------------


def preprocess(path: Path) -> np.ndarray:
    """RGB; resize the short side to 256 (Pillow bilinear, long side rounded);
    centre crop 224 (offsets floored); (x - 127) / 128; CHW float32 [1,3,224,224]."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        if w <= h:
            nw, nh = 256, int(round(h * 256 / w))
        else:
            nw, nh = int(round(w * 256 / h)), 256
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - 224) // 2, (nh - 224) // 2
        im = im.crop((left, top, left + 224, top + 224))
        x = np.asarray(im, dtype=np.float32)
    x = (x - 127.0) / 128.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    pytest.importorskip("PIL", reason="Pillow is needed for preprocessing")
    _require_zoo()
    return {name: preprocess(DATA_DIR / name) for name in EXPECTED}


@pytest.fixture(scope="module")
def ort_session():
    ort = pytest.importorskip("onnxruntime")
    _require_zoo()
    return ort.InferenceSession(str(EFFNET_ONNX), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def labels() -> list[str]:
    path = ZOO_DIR / MODEL / "labels.txt"
    if not path.exists():
        _missing(str(path))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1000
    return lines


# ---------------------------------------------------------------------------
# Checksums and (a) classification with onnxruntime
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(model_zoo.ARTEFACTS))
def test_checksums(name):
    states = model_zoo.artefact_status(model_zoo.ARTEFACTS[name], DIRS)
    if any(s == "missing" for _, _, s in states):
        _missing(name)
    bad = [str(p) for _, p, s in states if s != "ok"]
    assert not bad, f"checksum mismatch: {bad}"


def test_labels(labels):
    assert labels[ESPRESSO] == "espresso"
    assert labels[281].startswith("tabby")
    assert labels[282] == "tiger cat"
    assert labels[285] == "Egyptian cat"


@pytest.mark.parametrize("image", sorted(EXPECTED))
def test_classify_onnxruntime(ort_session, images, labels, image):
    logits = ort_session.run(["logits"], {"input": images[image]})[0]
    assert logits.shape == (1, 1000) and logits.dtype == np.float32
    top1 = int(np.argmax(logits[0]))
    assert top1 in EXPECTED[image], f"{image}: top-1 {top1} ({labels[top1]})"


def test_dynamic_batch_onnxruntime(ort_session, images):
    batch = np.concatenate([images["coffee.png"], images["chelsea.png"]])
    logits = ort_session.run(["logits"], {"input": batch})[0]
    single = np.concatenate([ort_session.run(["logits"], {"input": images[k]})[0]
                             for k in ("coffee.png", "chelsea.png")])
    np.testing.assert_allclose(logits, single, rtol=0, atol=LOGIT_ATOL)


def test_onnx_model_contract():
    onnx = pytest.importorskip("onnx")
    _require_zoo()
    m = onnx.load(str(EFFNET_ONNX), load_external_data=False)
    assert m.ir_version == 8
    assert [(o.domain, o.version) for o in m.opset_import] == [("", 17)]
    dims = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    (inp,), (out,) = m.graph.input, m.graph.output
    assert (inp.name, dims(inp)) == ("input", ["N", 3, 224, 224])
    assert (out.name, dims(out)) == ("logits", ["N", 1000])
    ops = {n.op_type for n in m.graph.node}
    assert "BatchNormalization" not in ops and "Clip" in ops and "Pad" not in ops


# ---------------------------------------------------------------------------
# (b) independent NumPy forward pass
# ---------------------------------------------------------------------------

# Independent copy of the EfficientNet-Lite0 stage table:
# (repeats, kernel, first stride, expand ratio, out channels)
_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
           (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
_BN_EPS = 1e-3


def _tf_same(n: int, k: int, s: int) -> tuple[int, int, int]:
    out = (n + s - 1) // s
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2, out


def _np_conv(x: np.ndarray, w: np.ndarray, stride: int, depthwise: bool = False) -> np.ndarray:
    """x [C,H,W] float64, w [O, I, k, k]; TF SAME padding; no bias."""
    k = w.shape[-1]
    if k == 1 and stride == 1:
        return np.tensordot(w[:, :, 0, 0], x, axes=([1], [0]))
    c, h, wd = x.shape
    pt, pb, _ = _tf_same(h, k, stride)
    pl, pr, _ = _tf_same(wd, k, stride)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))
    win = win[:, ::stride, ::stride]  # [C, Ho, Wo, k, k]
    if depthwise:
        return np.einsum("chwij,cij->chw", win, w[:, 0], optimize=True)
    return np.einsum("chwij,ocij->ohw", win, w, optimize=True)


def _np_bn(x: np.ndarray, sd: dict, prefix: str) -> np.ndarray:
    g, b = sd[f"{prefix}.weight"], sd[f"{prefix}.bias"]
    m, v = sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"]
    shape = (-1, 1, 1)
    return ((x - m.reshape(shape)) / np.sqrt(v.astype(np.float64).reshape(shape) + _BN_EPS)
            * g.reshape(shape) + b.reshape(shape))


def _relu6(x):
    return np.clip(x, 0.0, 6.0)


def _np_forward(sd: dict, x: np.ndarray, stop_after_block: int | None = None) -> np.ndarray:
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    x = x[0].astype(np.float64)
    x = _relu6(_np_bn(_np_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    idx = 0
    cin = 32
    for repeats, k, stride, expand, cout in _STAGES:
        for r in range(repeats):
            s = stride if r == 0 else 1
            p = f"_blocks.{idx}"
            inp = x
            if expand != 1:
                x = _relu6(_np_bn(_np_conv(x, sd[f"{p}._expand_conv.weight"], 1), sd, f"{p}._bn0"))
            x = _relu6(_np_bn(_np_conv(x, sd[f"{p}._depthwise_conv.weight"], s, depthwise=True),
                              sd, f"{p}._bn1"))
            x = _np_bn(_np_conv(x, sd[f"{p}._project_conv.weight"], 1), sd, f"{p}._bn2")
            if s == 1 and cin == cout:
                x = x + inp
            if stop_after_block == idx:
                return x[None]
            cin = cout
            idx += 1
    x = _relu6(_np_bn(_np_conv(x, sd["_conv_head.weight"], 1), sd, "_bn1"))
    pooled = x.mean(axis=(1, 2))
    return (sd["_fc.weight"] @ pooled + sd["_fc.bias"])[None]


@pytest.fixture(scope="module")
def state_dict():
    wheel = DIRS.cache / model_zoo.WHEELS["efficientnet"].filename
    if not wheel.exists():
        _missing(str(wheel))
    return model_zoo.load_efficientnet_state_dict(DIRS)


def _ort_intermediate(tensor: str, x: np.ndarray) -> np.ndarray:
    """Run the zoo's model.onnx with an intermediate tensor exposed as an output."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    m = onnx.load(str(EFFNET_ONNX))
    m.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([tensor], {"input": x})[0]


@pytest.mark.parametrize("source", ["coffee.png", "random"])
def test_numpy_stem_and_first_block(state_dict, images, source):
    if source == "random":
        x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    else:
        x = images[source]
    ref = _np_forward(state_dict, x, stop_after_block=0)
    got = _ort_intermediate("blocks.0.out", x)
    assert got.shape == ref.shape == (1, 16, 112, 112)
    diff = float(np.max(np.abs(got - ref)))
    print(f"stem+block0 max |numpy - ort| = {diff:.3g} (max |ref| {np.abs(ref).max():.3g})")
    assert diff <= 1e-4


@pytest.mark.parametrize("image", sorted(EXPECTED))
def test_numpy_full_network(state_dict, images, ort_session, image):
    x = images[image]
    ref = _np_forward(state_dict, x)
    got = ort_session.run(["logits"], {"input": x})[0]
    diff = float(np.max(np.abs(got - ref)))
    print(f"{image}: logits max |numpy(float64) - ort| = {diff:.3g}")
    assert int(np.argmax(ref)) in EXPECTED[image]
    assert diff <= 1e-3


def test_unpickler_refuses_arbitrary_globals():
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    payload = b"".join(pickle.dumps(o, protocol=2) for o in
                       (model_zoo._LEGACY_MAGIC, model_zoo._LEGACY_PROTOCOL,
                        {"little_endian": True}, Evil()))
    with pytest.raises(pickle.UnpicklingError, match="refusing global"):
        model_zoo.load_legacy_checkpoint(payload)


# ---------------------------------------------------------------------------
# (c) served through rtserve over HTTP
# ---------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LISTEN = re.compile(r"HTTP listening on (?:https?://)?(\S+):(\d+)")


def _rtserve_bin() -> Path:
    binary = Path(os.environ.get("RTSERVE_BIN", "target/debug/rtserve"))
    return binary if binary.is_absolute() else REPO_ROOT / binary


class _ZooServer:
    """One `rtserve serve` process on ephemeral ports; output drained by a thread."""

    def __init__(self, engine: str, repo: Path):
        self.engine = engine
        self.lines: list[str] = []
        self._found = threading.Event()
        self.base = None
        cmd = [str(_rtserve_bin()), "serve", "--model-repository", str(repo),
               "--http-port", "0", "--grpc-port", "0", "--host", "127.0.0.1",
               "--engine", engine]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, errors="replace",
                                     bufsize=1)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stdout:
            line = _ANSI.sub("", line.rstrip("\n"))
            self.lines.append(line)
            m = _LISTEN.search(line)
            if m and self.base is None:
                self.base = f"http://{m.group(1)}:{m.group(2)}"
                self._found.set()
        self._found.set()  # process exited

    def log(self) -> str:
        return "\n".join(self.lines[-60:])

    def wait_ready(self, models: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if not self._found.wait(timeout) or self.base is None:
            raise RuntimeError(f"rtserve ({self.engine}) did not report its HTTP port "
                               f"(rc={self.proc.poll()}):\n{self.log()}")
        for path in ["/v2/health/ready"] + [f"/v2/models/{m}/ready" for m in models]:
            while True:
                try:
                    status, _, _ = _http(self.base + path, timeout=5)
                    if status == 200:
                        break
                except OSError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"rtserve ({self.engine}): {path} not ready "
                                       f"(rc={self.proc.poll()}):\n{self.log()}")
                time.sleep(0.2)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


def _http(url: str, body: bytes | None = None, headers: dict | None = None,
          timeout: float = 120):
    req = urllib.request.Request(url, data=body, headers=headers or {},
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


_NP_DTYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16,
              "INT64": np.int64, "INT32": np.int32, "INT8": np.int8, "UINT8": np.uint8}


def _parse_infer_response(headers: dict, body: bytes) -> dict[str, np.ndarray]:
    hdr_len = None
    for k, v in headers.items():
        if k.lower() == "inference-header-content-length":
            hdr_len = int(v)
    if hdr_len is None:
        header, blob = json.loads(body), b""
    else:
        header, blob = json.loads(body[:hdr_len]), body[hdr_len:]
    out, offset = {}, 0
    for o in header["outputs"]:
        dtype = _NP_DTYPES[o["datatype"]]
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            arr = np.frombuffer(blob[offset:offset + size], dtype=np.dtype(dtype).newbyteorder("<"))
            offset += size
        else:
            arr = np.asarray(o["data"], dtype=dtype)
        out[o["name"]] = arr.reshape(o["shape"])
    return out


def infer(base: str, model: str, x: np.ndarray, binary: bool, classes: int = 1000) -> np.ndarray:
    """POST a KServe v2 infer request; returns the `logits` output ([N, classes])."""
    url = f"{base}/v2/models/{model}/infer"
    x = np.ascontiguousarray(x, dtype="<f4")
    if binary:
        header = {
            "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "parameters": {"binary_data_size": x.nbytes}}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
        hdr = json.dumps(header).encode()
        status, headers, body = _http(url, hdr + x.tobytes(), {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(hdr)),
        })
    else:
        req = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                           "data": x.ravel().tolist()}],
               "outputs": [{"name": "logits"}]}
        status, headers, body = _http(url, json.dumps(req).encode(),
                                      {"Content-Type": "application/json"})
    assert status == 200, f"HTTP {status}: {body[:500]!r}"
    outputs = _parse_infer_response(headers, body)
    logits = outputs["logits"].astype(np.float32)
    assert logits.shape == (x.shape[0], classes), logits.shape
    return logits


@pytest.fixture(scope="module")
def zoo_servers(tmp_path_factory):
    """Starts (lazily) one rtserve per engine, serving a repository that holds
    only efficientnet_lite0 (copied from the zoo, so the test does not pay for
    loading the benchmark models on every engine)."""
    binary = _rtserve_bin()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.skip(f"rtserve binary not found at {binary} (set RTSERVE_BIN)")
    _require_zoo()
    repo = tmp_path_factory.mktemp("zoo_repo")
    shutil.copytree(ZOO_DIR / MODEL, repo / MODEL)
    timeout = float(os.environ.get("RTSERVE_START_TIMEOUT", "180"))
    servers: dict[str, _ZooServer] = {}

    def get(engine: str) -> str:
        if engine not in servers:
            srv = servers[engine] = _ZooServer(engine, repo)
            srv.wait_ready([MODEL], timeout)
        return servers[engine].base

    yield get
    for srv in servers.values():
        srv.stop()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("engine", ENGINES)
def test_http_classify(zoo_servers, images, ort_session, engine, binary):
    base = zoo_servers(engine)
    for image, expected in EXPECTED.items():
        logits = infer(base, MODEL, images[image], binary)
        top1 = int(np.argmax(logits[0]))
        assert top1 in expected, f"{engine} {image}: top-1 {top1}"
        local = ort_session.run(["logits"], {"input": images[image]})[0]
        np.testing.assert_allclose(logits, local, rtol=0, atol=LOGIT_ATOL,
                                   err_msg=f"{engine} vs local onnxruntime, {image}")


@pytest.mark.parametrize("engine", ENGINES)
def test_http_batch(zoo_servers, images, engine):
    base = zoo_servers(engine)
    batch = np.concatenate([images["coffee.png"], images["chelsea.png"]])
    logits = infer(base, MODEL, batch, binary=True)
    assert int(np.argmax(logits[0])) == ESPRESSO
    assert int(np.argmax(logits[1])) in CATS


def test_engines_agree(zoo_servers, images):
    results = {e: {name: infer(zoo_servers(e), MODEL, x, binary=True)
                   for name, x in images.items()} for e in ENGINES}
    for name in images:
        a, b = results["onnxruntime"][name], results["tract"][name]
        diff = float(np.max(np.abs(a - b)))
        print(f"{name}: max |onnxruntime - tract| = {diff:.3g}")
        assert diff <= LOGIT_ATOL, f"{name}: engines differ by {diff}"


def _fashion_test_split():
    """Fashion-MNIST's 10,000 test images [N,1,28,28] and labels, read by fashion_cnn.py."""
    if not (Path(FASHION_CNN.DATA) / "t10k-images-idx3-ubyte.gz").is_file():
        _missing(f"Fashion-MNIST in {FASHION_CNN.DATA} (apt install dataset-fashion-mnist)")
    return FASHION_CNN.read("t10k")


def test_fashion_cnn_accuracy_on_the_test_split():
    """The zoo's fashion_cnn, trained by rtserve's trainer, reaches 92 % on the 10,000 test
    images, computed here by onnxruntime (docs/training.md)."""
    ort = pytest.importorskip("onnxruntime")
    path = ZOO_DIR / "fashion_cnn" / "1" / "model.onnx"
    if not path.exists():
        _missing("fashion_cnn")
    images, labels = _fashion_test_split()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    predicted = np.concatenate([sess.run(["logits"], {"input": images[i:i + 1000]})[0].argmax(1)
                                for i in range(0, len(images), 1000)])
    assert (predicted == labels).mean() >= 0.92


def test_serve_whole_zoo(images):
    """`rtserve serve --model-repository models/zoo` loads every zoo model."""
    binary = _rtserve_bin()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.skip(f"rtserve binary not found at {binary} (set RTSERVE_BIN)")
    ort = pytest.importorskip("onnxruntime")
    inputs = {m: np.concatenate([images["coffee.png"], images["chelsea.png"]])
              for m in ["efficientnet_lite0", "resnet50", "mobilenetv2"]}
    inputs["fashion_cnn"] = _fashion_test_split()[0][:4]
    for m in inputs:
        if not (ZOO_DIR / m / "1" / "model.onnx").exists():
            _missing(m)
    srv = _ZooServer("onnxruntime", ZOO_DIR)
    try:
        srv.wait_ready(list(inputs), float(os.environ.get("RTSERVE_START_TIMEOUT", "180")))
        for m, batch in inputs.items():
            sess = ort.InferenceSession(str(ZOO_DIR / m / "1" / "model.onnx"),
                                        providers=["CPUExecutionProvider"])
            want = sess.run(["logits"], {"input": batch})[0]
            got = infer(srv.base, m, batch, binary=True, classes=want.shape[1])
            np.testing.assert_allclose(got, want, rtol=0, atol=LOGIT_ATOL, err_msg=m)
    finally:
        srv.stop()
