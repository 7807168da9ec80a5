#!/usr/bin/env python3
"""rtserve's INT8 quantizer beside ONNX Runtime's own (onnxruntime.quantization), same data.

Quantizes MODEL with both (static, QDQ, uint8 activations, int8 per-channel weights, MinMax, the
same calibration .npz), then runs `rtserve optimize evaluate` on each against the float model on
the same engine, and prints one Markdown table. Needs numpy, onnx, onnxruntime.

  python scripts/optimize/compare_ort_quantizer.py --rtserve target/release/rtserve \
      --model models/zoo/efficientnet_lite0/1/model.onnx \
      --calibration /tmp/photos/calibration.npz --data /tmp/photos/evaluation.npz --out /tmp/cmp
"""
import argparse
import json
import os
import subprocess
import time

import numpy as np


def ort_quantize(model, calibration, out, per_channel):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    arrays = np.load(calibration)
    name = arrays.files[0]
    data = arrays[name]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(data)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {name: x[None]}

    pre = out + ".pre.onnx"
    quant_pre_process(model, pre)
    quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=per_channel)


def evaluate(rtserve, reference, candidate, data, labels, engine):
    cmd = [rtserve, "optimize", "evaluate", "--reference", reference, "--candidate", candidate,
           "--data", data, "--engine", engine, "--json"]
    if labels:
        cmd += ["--labels", labels]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rtserve", default="target/release/rtserve")
    ap.add_argument("--model", required=True)
    ap.add_argument("--calibration", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--labels")
    ap.add_argument("--engine", default="onnxruntime")
    ap.add_argument("--per-tensor", action="store_true")
    ap.add_argument("--out", default="/tmp/compare_quantizers")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    ours, theirs = os.path.join(a.out, "rtserve_int8.onnx"), os.path.join(a.out, "ort_int8.onnx")
    t = time.time()
    cmd = [a.rtserve, "optimize", "quantize", "--model", a.model, "--out", ours, "--calibration", a.calibration,
           "--engine", a.engine]
    if a.per_tensor:
        cmd.append("--per-tensor")
    subprocess.run(cmd, check=True)
    t_ours = time.time() - t
    t = time.time()
    ort_quantize(a.model, a.calibration, theirs, not a.per_tensor)
    t_theirs = time.time() - t
    rows = []
    for label, path, secs in [("rtserve optimize quantize", ours, t_ours), ("onnxruntime.quantization", theirs, t_theirs)]:
        e = evaluate(a.rtserve, a.model, path, a.data, a.labels, a.engine)
        rows.append((label, secs, e))
    ref = rows[0][2]["reference"]
    lat = lambda fig, b: next((m for bb, m, _ in fig["latency_ms"] if bb == b), float("nan"))
    print(f"model `{a.model}`, engine {a.engine}, {rows[0][2]['agreement']['samples']} samples\n")
    print("| quantizer | size MB | top-1 agree | top-5 | cosine (mean) | accuracy | batch 1 ms | batch 8 ms | quantize s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    acc = lambda f: "" if f["accuracy"] is None else f"{100 * f['accuracy']:.2f} %"
    print(f"| float32 (reference) | {ref['file_bytes'] / 1e6:.2f} | | | | {acc(ref)} | {lat(ref, 1):.2f} | {lat(ref, 8):.2f} | |")
    for label, secs, e in rows:
        c, g = e["candidate"], e["agreement"]
        print(f"| {label} | {c['file_bytes'] / 1e6:.2f} | {100 * g['top1']:.2f} % | {100 * g['top5']:.2f} % | "
              f"{g['mean_cosine']:.4f} | {acc(c)} | {lat(c, 1):.2f} | {lat(c, 8):.2f} | {secs:.1f} |")


if __name__ == "__main__":
    main()
