#!/usr/bin/env python3
"""How much faster INT8 can be than FP32 on this CPU: single-operator models (ResNet-50's 3×3
convolutions at each stage, a 1×1 convolution, a square MatMul), each in FP32 and quantized by
`rtserve optimize quantize` (U8S8, QDQ, per-channel), timed on ONNX Runtime (Python, CPU,
2 intra-op threads) interleaved, as scripts/optimize/speed.py does. The ratio per operator is the
ceiling a whole quantized model can reach on this machine's integer kernels.

    python3 scripts/optimize/int8_ceiling.py [--rtserve target/release/rtserve]

Needs numpy, onnx and onnxruntime. Prints a Markdown table and the CPU's SIMD flags.
"""
import argparse
import os
import subprocess
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from speed import interleaved_medians, sessions

# name, input shape, weight shape (Conv: [out, in, k, k]; MatMul: [K, N]), pads
CASES = [
    ("Conv 3×3 64→64 @56²", (1, 64, 56, 56), (64, 64, 3, 3), 1),
    ("Conv 3×3 128→128 @28²", (1, 128, 28, 28), (128, 128, 3, 3), 1),
    ("Conv 3×3 256→256 @14²", (1, 256, 14, 14), (256, 256, 3, 3), 1),
    ("Conv 3×3 512→512 @7²", (1, 512, 7, 7), (512, 512, 3, 3), 1),
    ("Conv 1×1 1024→256 @14²", (1, 1024, 14, 14), (256, 1024, 1, 1), 0),
    ("MatMul 256×1024 · 1024×1024", (1, 256, 1024), (1024, 1024), None),
]


def single_op_model(path, x_shape, w_shape, pads, rng):
    w = numpy_helper.from_array((rng.standard_normal(w_shape) * 0.05).astype(np.float32), "w")
    if pads is None:
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="op")
        inits = [w]
    else:
        b = numpy_helper.from_array(rng.standard_normal(w_shape[0]).astype(np.float32) * 0.1, "b")
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="op", pads=[pads] * 4)
        inits = [w, b]
    graph = helper.make_graph(
        [node],
        "single_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtserve", default="target/release/rtserve")
    args = parser.parse_args()
    rng = np.random.default_rng(20261129)
    flags = open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split()
    simd = [f for f in flags if f.startswith(("avx", "fma")) or "vnni" in f]
    print(f"CPU SIMD flags: {' '.join(simd)}; ONNX Runtime {ort.__version__}\n")
    print("| operator | FP32 ms | INT8 ms | INT8 speed-up |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, x_shape, w_shape, pads in CASES:
            fp32, int8, data = (os.path.join(tmp, f) for f in ("fp32.onnx", "int8.onnx", "data.npy"))
            single_op_model(fp32, x_shape, w_shape, pads, rng)
            x = rng.standard_normal((8, *x_shape[1:]), dtype=np.float32)
            np.save(data, x)
            subprocess.run(
                [args.rtserve, "optimize", "quantize", "--engine", "onnxruntime", "--model", fp32,
                 "--out", int8, "--calibration", data],
                check=True, stdout=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"},
            )
            f, q = interleaved_medians(sessions([fp32, int8]), {"x": x[:1]}, rounds=7, runs=5)
            print(f"| {name} | {f:.2f} | {q:.2f} | {f / q:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
