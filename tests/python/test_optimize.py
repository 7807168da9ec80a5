"""`rtserve optimize` on real models and data, checked against ONNX Runtime (Python).

- EfficientNet-Lite0 (model zoo, real weights): INT8 calibrated on some photos, checked on others
  with onnxruntime directly; loads and runs on both engines; FP16 within 1e-2 relative.
- Fashion-MNIST (Debian package dataset-fashion-mnist): the committed MLP, INT8 accuracy within
  1 point of FP32 on the 10,000 test images, computed here with onnxruntime; the committed CNN
  through `qat` and `quantize`, both run by ONNX Runtime as integer kernels (its optimized graph).

Zoo cases skip when the zoo is missing, unless RTSERVE_ZOO_REQUIRED=1 (scripts/test.sh fetches
it); the Fashion-MNIST case skips without the Debian package, unless
RTSERVE_TEST_REQUIRE_FASHION_MNIST=1 (set by CI, which installs it).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("RTSERVE_BIN", REPO / "target" / "debug" / "rtserve"))
ZOO = Path(os.environ.get("RTSERVE_ZOO_DIR", REPO / "models" / "zoo"))
EFFNET = ZOO / "efficientnet_lite0" / "1" / "model.onnx"
FASHION_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MODEL = REPO / "examples" / "optimize" / "fashion_mnist_mlp.onnx"
FASHION_CNN = REPO / "examples" / "optimize" / "fashion_cnn.onnx"
REQUIRED = os.environ.get("RTSERVE_ZOO_REQUIRED") == "1"
FASHION_REQUIRED = os.environ.get("RTSERVE_TEST_REQUIRE_FASHION_MNIST") == "1"

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def need(path: Path, hint: str, required: bool = REQUIRED, flag: str = "RTSERVE_ZOO_REQUIRED"):
    if not path.exists():
        if required:
            pytest.fail(f"{path} is missing ({hint}) and {flag}=1")
        pytest.skip(f"{path} is missing: {hint}")
    if not BIN.exists():
        pytest.skip(f"{BIN} is missing: build rtserve or set RTSERVE_BIN")


def rtserve(*args: str) -> str:
    proc = subprocess.run([str(BIN), "optimize", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 64]})[0] for i in range(0, len(x), 64)]).astype(np.float32)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    need(EFFNET, "python scripts/model_zoo.py fetch")
    out = tmp_path_factory.mktemp("photos")
    subprocess.run([sys.executable, str(REPO / "scripts" / "optimize" / "photo_sets.py"), str(out), "--aug", "10",
                    "--train-aug", "1"], check=True)
    return out


@pytest.fixture(scope="module")
def effnet_int8(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "effnet_int8.onnx"
    rtserve("quantize", "--model", str(EFFNET), "--out", str(out), "--calibration", str(photos / "calibration.npz"),
            "--engine", "onnxruntime")
    return out


def test_effnet_int8_agrees_with_float_on_held_out_photos(photos, effnet_int8):
    x = np.load(photos / "evaluation.npz")["input"]
    ref, q = run_ort(EFFNET, x), run_ort(effnet_int8, x)
    agree = float(np.mean(ref.argmax(1) == q.argmax(1)))
    cos = np.sum(ref * q, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(q, axis=1))
    # Measured with MinMax on 204 samples: 88.7 % agreement, mean cosine 0.918 on 2026-11-29;
    # 99.0 %, 0.992 on 2026-12-05 (docs/optimize.md). The bounds hold for both.
    assert agree >= 0.8, agree
    assert cos.mean() > 0.85, cos.mean()
    # coffee.png (first sample) stays an espresso.
    assert q[0].argmax() == 967
    assert effnet_int8.stat().st_size <= 0.3 * EFFNET.stat().st_size


@pytest.mark.parametrize("ranges", [["percentile", "--percentile", "99.999"], ["entropy"]], ids=["percentile", "entropy"])
def test_effnet_int8_with_a_float_stem_and_clipped_ranges_agrees_far_better(photos, tmp_path, ranges):
    # The recipes of docs/optimize.md: the stem convolution (raw pixels in) kept in float, and
    # activation ranges clipped at the 99.999th percentile or by entropy (KL). Measured: 97.1 % on
    # the 204-sample set with either; 43 (percentile) and 42 (entropy) of these 44. MinMax gets 88.7 %, below
    # this bound; the first entropy code clipped every range to 1/16 and got 0 %.
    out = tmp_path / "effnet_int8_recipe.onnx"
    rtserve("quantize", "--model", str(EFFNET), "--out", str(out), "--calibration", str(photos / "calibration.npz"),
            "--engine", "onnxruntime", "--exclude", "stem.conv", "--calibration-method", *ranges)
    x = np.load(photos / "evaluation.npz")["input"]
    agree = float(np.mean(run_ort(EFFNET, x).argmax(1) == run_ort(out, x).argmax(1)))
    assert agree >= 0.93, agree


def test_effnet_int8_runs_on_tract_like_onnxruntime(photos, effnet_int8):
    out = rtserve("evaluate", "--reference", str(EFFNET), "--candidate", str(effnet_int8),
                  "--data", str(photos / "evaluation.npz"), "--limit", "4", "--engine", "tract",
                  "--batch-sizes", "1", "--latency-runs", "1", "--json")
    e = json.loads(out)
    assert e["engine"] == "tract"
    assert e["agreement"]["mean_cosine"] > 0.85, e


def test_effnet_fp16_within_1e_2_relative(photos, tmp_path):
    fp16 = tmp_path / "effnet_fp16.onnx"
    rtserve("fp16", "--model", str(EFFNET), "--out", str(fp16))
    x = np.load(photos / "evaluation.npz")["input"][:8]
    ref, half = run_ort(EFFNET, x), run_ort(fp16, x)
    rel = np.abs(ref - half).max(1) / np.abs(ref).max(1)
    assert rel.max() < 1e-2, rel.max()
    assert (ref.argmax(1) == half.argmax(1)).all()


def read_fashion(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's `kind` split (train, t10k): pixels / 255 as float32 [N, 784], labels."""
    need(FASHION_DIR / "t10k-images-idx3-ubyte.gz", "apt-get install dataset-fashion-mnist",
         FASHION_REQUIRED, "RTSERVE_TEST_REQUIRE_FASHION_MNIST")
    with gzip.open(FASHION_DIR / f"{kind}-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784).astype(np.float32) / 255
    with gzip.open(FASHION_DIR / f"{kind}-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    return x, y


def test_fashion_mnist_int8_accuracy_within_one_point(tmp_path):
    xtrain, _ = read_fashion("train")
    x, y = read_fashion("t10k")
    np.save(tmp_path / "calibration.npy", xtrain[:500])
    out = tmp_path / "fashion_int8.onnx"
    rtserve("quantize", "--model", str(FASHION_MODEL), "--out", str(out), "--calibration", str(tmp_path / "calibration.npy"))
    acc_fp32 = float(np.mean(run_ort(FASHION_MODEL, x).argmax(1) == y))
    acc_int8 = float(np.mean(run_ort(out, x).argmax(1) == y))
    assert acc_fp32 > 0.85, acc_fp32
    assert acc_int8 >= acc_fp32 - 0.01, (acc_fp32, acc_int8)


def ort_kernels(model: Path, tmp_path: Path) -> Counter:
    """The operators ONNX Runtime runs for `model` on the CPU: its optimized graph, saved."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / f"{model.stem}.ort.onnx")
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


def test_qat_and_quantize_models_run_as_integer_kernels(tmp_path):
    """`qat` exports `quantize`'s QDQ layout, so ONNX Runtime fuses it the same way: every Conv
    of the CNN becomes a QLinearConv, its Gemm a QGemm, no float Conv or Gemm is left."""
    xtrain, ytrain = read_fashion("train")
    np.save(tmp_path / "x.npy", xtrain[:512].reshape(-1, 1, 28, 28))
    np.save(tmp_path / "y.npy", ytrain[:512].astype(np.int64))
    qat, ptq = tmp_path / "qat.onnx", tmp_path / "ptq.onnx"
    rtserve("qat", "--model", str(FASHION_CNN), "--out", str(qat), "--data", str(tmp_path / "x.npy"),
            "--labels", str(tmp_path / "y.npy"), "--epochs", "1", "--lr", "0.001", "--batch-size", "64",
            "--calibration-limit", "256")
    rtserve("quantize", "--model", str(FASHION_CNN), "--out", str(ptq), "--calibration", str(tmp_path / "x.npy"),
            "--calibration-limit", "256")
    convs = Counter(node.op_type for node in onnx.load(FASHION_CNN).graph.node)["Conv"]
    assert convs == 5
    for model in (qat, ptq):
        kernels = ort_kernels(model, tmp_path)
        assert kernels["QLinearConv"] == convs, (model.name, kernels)
        assert kernels["QGemm"] == 1, (model.name, kernels)
        assert kernels["Conv"] == 0 and kernels["Gemm"] == 0, (model.name, kernels)
