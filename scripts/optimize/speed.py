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


def sessions(models):
    """CPU sessions with 2 intra-op threads that do not spin between runs: a spinning session's
    threads slow the next session's run in an interleaved loop (up to 2x at batch 1 on two cores)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return [ort.InferenceSession(str(m), options, providers=["CPUExecutionProvider"]) for m in models]


def interleaved_medians(sessions, feed, rounds, runs=3):
    """Median ms per run of each session: 2 warm-up runs each, then `rounds` rounds in which
    every session runs `runs` times in turn."""
    for s in sessions:
        for _ in range(2):
            s.run(None, feed)
    times = [[] for _ in sessions]
    for _ in range(rounds):
        for i, s in enumerate(sessions):
            start = time.perf_counter()
            for _ in range(runs):
                s.run(None, feed)
            times[i].append((time.perf_counter() - start) / runs * 1e3)
    return [statistics.median(t) for t in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--input", default="input", help="the input's name (default: input)")
    parser.add_argument("--shape", default="1,3,224,224", help="the input's shape")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default: 6)")
    args = parser.parse_args()
    shape = tuple(int(d) for d in args.shape.split(","))
    x = {args.input: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    medians = interleaved_medians(sessions(args.models), x, args.rounds)
    for model, median in zip(args.models, medians):
        print(f"{model}: median {median:.1f} ms, {medians[0] / median:.2f}x the first")


if __name__ == "__main__":
    main()
