#!/usr/bin/env python3
"""Generate rtserve's small ONNX test models, their configs and expected outputs.

Writes, relative to the repository root (or ``--out-root``):

* ``examples/model_repository/<model>/1/model.onnx`` for mlp, cnn, two_io,
  int_bool and dynamic_seq (opset 17, IR version 8 so that older runtimes and
  the Rust ``tract-onnx`` crate load them);
* the per-model config files (``config.pbtxt`` / ``config.toml``; ``int_bool``
  deliberately has none so the server must infer it from the graph);
* ``tests/data/expected/<model>.json``: fixed seeded inputs (batch 2) and the
  outputs of an independent NumPy forward pass over the same weights.

Everything is deterministic: weights and inputs come from seeded
``np.random.RandomState`` generators (the legacy generator, whose streams NumPy
guarantees to keep stable across releases), the ONNX producer name/version are
fixed and nothing records a timestamp. Running the script twice gives
byte-identical files.

As a self-check every model is also run with onnxruntime (when installed) and
compared with the NumPy reference; the max abs diff per model is printed.

Usage:
    python scripts/make_test_models.py            # (re)generate in place
    python scripts/make_test_models.py --check    # verify committed files are up to date
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_REPO = Path("examples/model_repository")
EXPECTED_DIR = Path("tests/data/expected")

OPSET = 17
IR_VERSION = 8
PRODUCER_NAME = "rtserve-make_test_models"
PRODUCER_VERSION = "1"

# ORT vs NumPy tolerance for the self-check: |ort - ref| <= ATOL + RTOL * |ref|.
ATOL = 1e-4
RTOL = 1e-4

# KServe v2 datatype names for the NumPy dtypes used here.
KSERVE_DTYPE = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.bool_): "BOOL",
}


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def he_normal(rng: np.random.RandomState, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """He/Kaiming-style init: N(0, 1) * sqrt(2 / fan_in), as float32."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def small_bias(rng: np.random.RandomState, n: int) -> np.ndarray:
    return (rng.standard_normal(n) * 0.01).astype(np.float32)


def uniform_input(rng: np.random.RandomState, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform in [-1, 1), rounded to 4 decimals so the JSON text is short and
    parses back (as f32) to exactly the tensor the reference used."""
    return np.round(rng.uniform(-1.0, 1.0, size=shape), 4).astype(np.float32)


def init(name: str, arr: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(arr, name=name)


def make_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
    )
    # make_model stamps the newest IR version the installed onnx knows; pin it.
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def conv2d_same3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """NCHW 3x3 convolution, stride 1, pad 1 (ONNX Conv semantics = cross-correlation)."""
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    # windows: [N, C, H, W, 3, 3]
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))
    out = np.einsum("nchwij,ocij->nohw", win, w)
    return out + b[None, :, None, None]


def maxpool2x2(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


@dataclass
class TestModel:
    name: str
    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]  # ordered as the graph inputs
    outputs: dict[str, np.ndarray]  # NumPy reference, ordered as graph outputs
    configs: dict[str, str] = field(default_factory=dict)  # file name -> text


# --------------------------------------------------------------------------
# Models. Each builder owns its own seed so editing one never changes another.
# Reference forward passes run in float64 and are cast to the output dtype.
# --------------------------------------------------------------------------


def build_mlp() -> TestModel:
    rng = np.random.RandomState(1001)
    dims = [784, 512, 256, 10]
    # Gemm with transB=1: weights stored [out, in] like a PyTorch Linear.
    ws = [he_normal(rng, (o, i), i) for i, o in zip(dims[:-1], dims[1:])]
    bs = [small_bias(rng, o) for o in dims[1:]]

    nodes, inits = [], []
    prev = "input"
    for k, (w, b) in enumerate(zip(ws, bs)):
        last = k == len(ws) - 1
        out = "output" if last else f"fc{k}"
        inits += [init(f"fc{k}.weight", w), init(f"fc{k}.bias", b)]
        nodes.append(
            helper.make_node(
                "Gemm", [prev, f"fc{k}.weight", f"fc{k}.bias"], [out], name=f"fc{k}", transB=1
            )
        )
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{k}"], name=f"relu{k}"))
            prev = f"relu{k}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 784])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )

    x = uniform_input(np.random.RandomState(2001), (2, 784))
    h = x.astype(np.float64)
    for k, (w, b) in enumerate(zip(ws, bs)):
        h = h @ w.astype(np.float64).T + b
        if k < len(ws) - 1:
            h = relu(h)

    config = """\
name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "input"
    data_type: TYPE_FP32
    dims: [ 784 ]
  }
]
output [
  {
    name: "output"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }
]
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""
    return TestModel(
        "mlp",
        make_model(graph),
        {"input": x},
        {"output": h.astype(np.float32)},
        {"config.pbtxt": config},
    )


def build_cnn() -> TestModel:
    rng = np.random.RandomState(1002)
    w1 = he_normal(rng, (8, 1, 3, 3), 1 * 9)
    b1 = small_bias(rng, 8)
    w2 = he_normal(rng, (16, 8, 3, 3), 8 * 9)
    b2 = small_bias(rng, 16)
    w3 = he_normal(rng, (10, 16 * 7 * 7), 16 * 7 * 7)  # Gemm transB=1: [out, in]
    b3 = small_bias(rng, 10)

    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    pool = dict(kernel_shape=[2, 2], strides=[2, 2])
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", **conv),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", **pool),
        helper.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", **conv),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2", **pool),
        helper.make_node("Flatten", ["p2"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    inits = [
        init("conv1.weight", w1),
        init("conv1.bias", b1),
        init("conv2.weight", w2),
        init("conv2.bias", b2),
        init("fc.weight", w3),
        init("fc.bias", b3),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )

    x = uniform_input(np.random.RandomState(2002), (2, 1, 28, 28))
    f64 = lambda a: a.astype(np.float64)  # noqa: E731
    h = maxpool2x2(relu(conv2d_same3x3(f64(x), f64(w1), f64(b1))))
    h = maxpool2x2(relu(conv2d_same3x3(h, f64(w2), f64(b2))))
    h = h.reshape(h.shape[0], -1) @ f64(w3).T + b3

    config = """\
name: "cnn"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "input"
    data_type: TYPE_FP32
    dims: [ 1, 28, 28 ]
  }
]
output [
  {
    name: "logits"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }
]
instance_group [
  {
    count: 2
    kind: KIND_CPU
  }
]
dynamic_batching {
  max_queue_delay_microseconds: 500
}
parameters {
  key: "slo_ms"
  value: { string_value: "50" }
}
"""
    return TestModel(
        "cnn",
        make_model(graph),
        {"input": x},
        {"logits": h.astype(np.float32)},
        {"config.pbtxt": config},
    )


def build_two_io() -> TestModel:
    nodes = [
        helper.make_node("Add", ["a", "b"], ["sum"], name="add"),
        helper.make_node("Mul", ["a", "b"], ["product"], name="mul"),
    ]
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4])  # noqa: E731
    graph = helper.make_graph(nodes, "two_io", [vi("a"), vi("b")], [vi("sum"), vi("product")])

    rng = np.random.RandomState(2003)
    a = uniform_input(rng, (2, 4))
    b = uniform_input(rng, (2, 4))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)

    config = """\
name = "two_io"
backend = "onnxruntime"
max_batch_size = 16
[[input]]
name = "a"
data_type = "FP32"
dims = [4]
[[input]]
name = "b"
data_type = "FP32"
dims = [4]
[[output]]
name = "sum"
data_type = "FP32"
dims = [4]
[[output]]
name = "product"
data_type = "FP32"
dims = [4]
"""
    return TestModel(
        "two_io",
        make_model(graph),
        {"a": a, "b": b},
        {"sum": (a64 + b64).astype(np.float32), "product": (a64 * b64).astype(np.float32)},
        {"config.toml": config},
    )


def build_int_bool() -> TestModel:
    i64 = lambda v: np.array(v, dtype=np.int64)  # noqa: E731  (0-d scalar initializers)
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["x2"], name="double"),
        helper.make_node("Where", ["mask", "x2", "zero"], ["y"], name="where"),
        helper.make_node("Greater", ["x", "zero"], ["positive"], name="greater"),
    ]
    graph = helper.make_graph(
        nodes,
        "int_bool",
        [
            helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 3]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 3]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.INT64, ["N", 3]),
            helper.make_tensor_value_info("positive", TensorProto.BOOL, ["N", 3]),
        ],
        initializer=[init("two", i64(2)), init("zero", i64(0))],
    )

    rng = np.random.RandomState(2004)
    x = rng.randint(-5, 6, size=(2, 3)).astype(np.int64)
    x[0, 0] = 0  # make sure the x == 0 edge case (not positive) is covered
    mask = rng.randint(0, 2, size=(2, 3)).astype(np.bool_)
    mask[0, :2] = [True, False]  # and that both mask values appear

    # No config: the server must infer this model from the ONNX graph.
    return TestModel(
        "int_bool",
        make_model(graph),
        {"x": x, "mask": mask},
        {"y": np.where(mask, x * 2, 0).astype(np.int64), "positive": x > 0},
    )


def build_dynamic_seq() -> TestModel:
    rng = np.random.RandomState(1005)
    w = he_normal(rng, (8, 4), 8)  # MatMul: [in, out]
    b = small_bias(rng, 4)
    nodes = [
        # opset 17: ReduceMean takes axes as an attribute (input only from opset 18).
        helper.make_node("ReduceMean", ["tokens"], ["mean"], name="mean", axes=[1], keepdims=0),
        helper.make_node("MatMul", ["mean", "proj.weight"], ["mm"], name="proj"),
        helper.make_node("Add", ["mm", "proj.bias"], ["pooled"], name="bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "dynamic_seq",
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["N", "S", 8])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["N", 4])],
        initializer=[init("proj.weight", w), init("proj.bias", b)],
    )

    tokens = uniform_input(np.random.RandomState(2005), (2, 5, 8))
    ref = tokens.astype(np.float64).mean(axis=1) @ w.astype(np.float64) + b

    config = """\
name: "dynamic_seq"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [
  {
    name: "tokens"
    data_type: TYPE_FP32
    dims: [ -1, 8 ]
  }
]
output [
  {
    name: "pooled"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
"""
    return TestModel(
        "dynamic_seq",
        make_model(graph),
        {"tokens": tokens},
        {"pooled": ref.astype(np.float32)},
        {"config.pbtxt": config},
    )


BUILDERS: list[Callable[[], TestModel]] = [
    build_mlp,
    build_cnn,
    build_two_io,
    build_int_bool,
    build_dynamic_seq,
]


# --------------------------------------------------------------------------
# Serialisation
# --------------------------------------------------------------------------


def _json_value(v):
    """Scalar -> JSON-friendly Python value.

    float32 goes through its shortest round-tripping decimal repr (e.g. 0.1234,
    not 0.12340000271797180), so the text parses back to the identical f32.
    """
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.float32):
        return float(np.format_float_positional(v, unique=True, trim="-"))
    raise TypeError(f"unsupported scalar {type(v)}")


def tensor_json(name: str, arr: np.ndarray) -> dict:
    return {
        "name": name,
        "datatype": KSERVE_DTYPE[arr.dtype],
        "shape": list(arr.shape),
        "data": [_json_value(v) for v in arr.reshape(-1)],
    }


def expected_json(tm: TestModel) -> str:
    """One tensor per line: diffable, still valid JSON."""
    ins = [json.dumps(tensor_json(k, v)) for k, v in tm.inputs.items()]
    outs = [json.dumps(tensor_json(k, v)) for k, v in tm.outputs.items()]
    return (
        "{\n"
        f'  "model": {json.dumps(tm.name)},\n'
        '  "inputs": [\n    ' + ",\n    ".join(ins) + "\n  ],\n"
        '  "outputs": [\n    ' + ",\n    ".join(outs) + "\n  ]\n"
        "}\n"
    )


def model_files(tm: TestModel) -> dict[Path, bytes]:
    """All files for one model, keyed by path relative to the output root."""
    base = MODEL_REPO / tm.name
    files = {
        base / "1" / "model.onnx": tm.model.SerializeToString(deterministic=True),
        EXPECTED_DIR / f"{tm.name}.json": expected_json(tm).encode(),
    }
    for fname, text in tm.configs.items():
        files[base / fname] = text.encode()
    return files


def write_all(root: Path, models: list[TestModel]) -> list[Path]:
    written = []
    for tm in models:
        for rel, data in model_files(tm).items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written.append(rel)
    return written


# --------------------------------------------------------------------------
# Self-checks
# --------------------------------------------------------------------------


def check_json_roundtrip(tm: TestModel) -> None:
    """The JSON written must parse back to exactly the arrays used."""
    doc = json.loads(expected_json(tm))
    for section, arrays in (("inputs", tm.inputs), ("outputs", tm.outputs)):
        for t, (name, arr) in zip(doc[section], arrays.items()):
            assert t["name"] == name
            back = np.array(t["data"], dtype=arr.dtype).reshape(t["shape"])
            assert np.array_equal(back, arr), f"{tm.name}.{name}: JSON round-trip changed data"


def check_with_onnxruntime(tm: TestModel) -> float | None:
    """Run the model with onnxruntime and compare with the NumPy reference.

    Returns the max abs diff over all outputs, or None if onnxruntime is missing.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(
        tm.model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in sess.get_inputs()] == list(tm.inputs)
    assert [o.name for o in sess.get_outputs()] == list(tm.outputs)
    got = sess.run(list(tm.outputs), dict(tm.inputs))
    max_diff = 0.0
    for (name, ref), out in zip(tm.outputs.items(), got):
        assert out.dtype == ref.dtype, f"{tm.name}.{name}: dtype {out.dtype} != {ref.dtype}"
        assert out.shape == ref.shape, f"{tm.name}.{name}: shape {out.shape} != {ref.shape}"
        if ref.dtype == np.float32:
            np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL, err_msg=f"{tm.name}.{name}")
            diff = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64))))
        else:
            np.testing.assert_array_equal(out, ref, err_msg=f"{tm.name}.{name}")
            diff = float(np.max(np.abs(out.astype(np.int64) - ref.astype(np.int64))))
        max_diff = max(max_diff, diff)
    return max_diff


def self_check(models: list[TestModel]) -> None:
    for tm in models:
        check_json_roundtrip(tm)
        diff = check_with_onnxruntime(tm)
        if diff is None:
            print(f"{tm.name:12s} onnxruntime not installed; skipped ORT check")
        else:
            print(f"{tm.name:12s} max |ort - numpy| = {diff:.3e}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temp dir and verify the files under --out-root are byte-identical",
    )
    ap.add_argument("--out-root", type=Path, default=REPO_ROOT, help="repository root (default: %(default)s)")
    args = ap.parse_args()

    models = [build() for build in BUILDERS]
    self_check(models)

    if not args.check:
        for rel in write_all(args.out_root, models):
            print(f"wrote {rel}")
        return 0

    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        for rel in write_all(Path(tmp), models):
            committed = args.out_root / rel
            if not committed.is_file() or committed.read_bytes() != (Path(tmp) / rel).read_bytes():
                stale.append(rel)
    for tm in models:
        # int_bool must stay config-less (the server infers it from the graph).
        for fname in ("config.pbtxt", "config.toml"):
            extra = args.out_root / MODEL_REPO / tm.name / fname
            if fname not in tm.configs and extra.exists():
                stale.append(extra.relative_to(args.out_root))
    if stale:
        print("out of date (run scripts/make_test_models.py):", file=sys.stderr)
        for rel in stale:
            print(f"  {rel}", file=sys.stderr)
        return 1
    print("all generated files are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
