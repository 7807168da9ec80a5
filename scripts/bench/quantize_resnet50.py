#!/usr/bin/env python3
"""ResNet-50 INT8 for the benchmark matrix, made with ONNX Runtime's own static quantizer.

QDQ format, activations uint8 (asymmetric), weights int8 per channel (U8S8): the combination
that runs fastest on x86 CPUs with ONNX Runtime. The zoo's ResNet-50 has seeded random weights,
so calibration uses seeded random images: this file is for speed, not accuracy. (`rtserve
optimize` makes INT8 files from real calibration data; see docs/optimize.md when it exists.)

    python scripts/bench/quantize_resnet50.py OUT.onnx [--model models/zoo/resnet50/1/model.onnx]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process


class RandomImages(CalibrationDataReader):
    def __init__(self, name, count, seed):
        rng = np.random.default_rng(seed)
        self.batches = iter([{name: rng.standard_normal((1, 3, 224, 224), dtype=np.float32)}
                             for _ in range(count)])

    def get_next(self):
        return next(self.batches, None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the INT8 model")
    parser.add_argument("--model", type=Path, default=Path("models/zoo/resnet50/1/model.onnx"),
                        help="the FP32 model (default: the zoo's; `python scripts/model_zoo.py fetch`)")
    parser.add_argument("--calibration-images", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.model.exists():
        sys.exit(f"{args.model} does not exist: run `python scripts/model_zoo.py fetch --only resnet50`")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    prepared = args.out.with_suffix(".prep.onnx")
    quant_pre_process(str(args.model), str(prepared), skip_symbolic_shape=True)
    try:
        quantize_static(str(prepared), str(args.out),
                        RandomImages("input", args.calibration_images, args.seed),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True)
    finally:
        prepared.unlink(missing_ok=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
