"""Intra-op threads and spinning on ONNX Runtime: wall time and process CPU time per run.

For each model and batch size, one session per setting (threads 1 or 2, spinning on or off), each
in a process of its own, run with a short sleep after each run as a server waiting for its next
request would (spinning threads burn CPU in that pause). The CPU per run includes the sleep's
own cost (about 20 µs here) and Python's. The settings are run alternately, in rounds, so a
machine that slows down slows them all alike; the medians over rounds are printed as a Markdown
table. The rule rtserve applies (docs/scheduling.md, "Threads per instance") comes from it.

    python3 scripts/bench/ort_threads.py [MODEL.onnx ...]   # default: the MLP and the CNN
    RUNS=10 BATCHES=1 python3 scripts/bench/ort_threads.py models/zoo/resnet50/1/model.onnx
"""

import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort

MODELS = [a for a in sys.argv[1:] if a.endswith(".onnx")] if "--one" not in sys.argv else []
MODELS = MODELS or [
    "examples/model_repository/mlp/1/model.onnx",
    "examples/model_repository/cnn/1/model.onnx",
]
SETTINGS = [(1, False), (2, False), (2, True)]
ROUNDS, PAUSE_S = 5, 200e-6
RUNS = int(os.environ.get("RUNS", "300"))
BATCHES = [int(b) for b in os.environ.get("BATCHES", "1,8").split(",")]


def cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def session(path, threads, spinning):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def feed(sess, batch):
    inputs = {}
    for i in sess.get_inputs():
        shape = [batch] + [d if isinstance(d, int) else 1 for d in i.shape[1:]]
        inputs[i.name] = np.random.default_rng(0).random(shape, dtype=np.float32)
    return inputs


def measure(sess, inputs):
    """Median wall time per run (µs) and CPU per run (µs) over RUNS runs with pauses."""
    walls = []
    c0 = cpu_s()
    for _ in range(RUNS):
        t = time.perf_counter()
        sess.run(None, inputs)
        walls.append(time.perf_counter() - t)
        time.sleep(PAUSE_S)
    cpu = cpu_s() - c0
    return statistics.median(walls) * 1e6, cpu / RUNS * 1e6


def one(path, batch, threads, spinning):
    """One setting in a process of its own (a spinning pool of another session would bill its
    CPU to this one); prints median wall µs and CPU µs per run."""
    sess = session(path, threads, spinning)
    inputs = feed(sess, batch)
    for _ in range(20):
        sess.run(None, inputs)
    wall, cpu = measure(sess, inputs)
    print(wall, cpu)


if len(sys.argv) > 1 and sys.argv[1] == "--one":
    one(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1")
    sys.exit(0)

print(f"{os.cpu_count()} cores; onnxruntime {ort.__version__}; {ROUNDS} rounds of {RUNS} runs, "
      f"{PAUSE_S * 1e6:.0f} µs asleep after each run")
print()
print("| model | batch | threads | spinning | run (µs) | CPU per run (µs) |")
print("|---|---:|---:|---|---:|---:|")
cases = [(path, batch, t, s) for path in MODELS for batch in BATCHES for t, s in SETTINGS]
results = {case: [] for case in cases}
for _ in range(ROUNDS):
    for case in cases:
        path, batch, t, s = case
        args = [sys.executable, __file__, "--one", path, str(batch), str(t), "1" if s else "0"]
        wall, cpu = subprocess.run(args, check=True, capture_output=True, text=True).stdout.split()
        results[case].append((float(wall), float(cpu)))
for (path, batch, t, s), values in results.items():
    name = os.path.basename(os.path.dirname(os.path.dirname(path))) or path
    wall = statistics.median(v[0] for v in values)
    cpu = statistics.median(v[1] for v in values)
    print(f"| {name} | {batch} | {t} | {'on' if s else 'off'} | {wall:.0f} | {cpu:.0f} |")
