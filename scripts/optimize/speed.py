#!/usr/bin/env python3
"""Batch-1 latency of ONNX models on ONNX Runtime (Python, CPU, 2 intra-op threads), measured
interleaved so that the machine's load moves every model alike: --rounds rounds (default 6) of
3 runs per model, median per model, and its speed-up over the first model given.

    python3 scripts/optimize/speed.py FP32.onnx INT8.onnx [MORE.onnx ...] [--input input]
"""
import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--input", default="input", help="the input's name (default: input)")
    parser.add_argument("--shape", default="1,3,224,224", help="the input's shape")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default: 6)")
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    # Without this, one session's threads keep spinning after its run and slow the next
    # session's run in the interleaved loop (by up to 2x at batch 1 on two cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = [ort.InferenceSession(m, options, providers=["CPUExecutionProvider"]) for m in args.models]
    shape = tuple(int(d) for d in args.shape.split(","))
    x = {args.input: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    for s in sessions:
        for _ in range(2):
            s.run(None, x)
    times = [[] for _ in sessions]
    for _ in range(args.rounds):
        for i, s in enumerate(sessions):
            start = time.perf_counter()
            for _ in range(3):
                s.run(None, x)
            times[i].append((time.perf_counter() - start) / 3 * 1e3)
    base = statistics.median(times[0])
    for model, t in zip(args.models, times):
        median = statistics.median(t)
        print(f"{model}: median {median:.1f} ms, {base / median:.2f}x the first")


if __name__ == "__main__":
    main()
