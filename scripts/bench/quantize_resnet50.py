#!/usr/bin/env python3
"""ResNet-50 INT8 for the benchmark matrix, made by `rtserve optimize quantize` (default) or, for
comparison, by ONNX Runtime's own static quantizer (`--quantizer onnxruntime`).

Both write QDQ, activations uint8 (asymmetric), weights int8 per channel (U8S8): the combination
that runs fastest on x86 CPUs with ONNX Runtime. The zoo's ResNet-50 has seeded random weights,
so calibration uses seeded random images: this file is for speed, not accuracy
(docs/optimize.md measures accuracy on real photos).

    python scripts/bench/quantize_resnet50.py OUT.onnx [--model models/zoo/resnet50/1/model.onnx]
        [--quantizer rtserve|onnxruntime] [--rtserve target/release/rtserve]
"""
import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def random_images(count, seed):
    return np.random.default_rng(seed).standard_normal((count, 3, 224, 224), dtype=np.float32)


def with_rtserve(rtserve, model, out, images):
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "calibration.npy"
        np.save(data, images)
        subprocess.run([rtserve, "optimize", "quantize", "--engine", "onnxruntime", "--model", str(model),
                        "--out", str(out), "--calibration", str(data)], check=True)


def with_onnxruntime(model, out, images):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Images(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": image[None]} for image in images])

        def get_next(self):
            return next(self.batches, None)

    prepared = out.with_suffix(".prep.onnx")
    quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
    try:
        quantize_static(str(prepared), str(out), Images(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        prepared.unlink(missing_ok=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the INT8 model")
    parser.add_argument("--model", type=Path, default=Path("models/zoo/resnet50/1/model.onnx"),
                        help="the FP32 model (default: the zoo's; `python scripts/model_zoo.py fetch`)")
    parser.add_argument("--quantizer", choices=["rtserve", "onnxruntime"], default="rtserve")
    parser.add_argument("--rtserve", default="target/release/rtserve", help="the rtserve binary")
    parser.add_argument("--calibration-images", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.model.exists():
        sys.exit(f"{args.model} does not exist: run `python scripts/model_zoo.py fetch --only resnet50`")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    images = random_images(args.calibration_images, args.seed)
    if args.quantizer == "rtserve":
        with_rtserve(args.rtserve, args.model, args.out, images)
    else:
        with_onnxruntime(args.model, args.out, images)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
