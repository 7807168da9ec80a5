#!/usr/bin/env python3
"""Real NVIDIA Triton (2.51.0, bundled in nvidia-pytriton 0.7.0) serving the MLP on the CPU, for
side-by-side numbers with rtserve (scripts/bench/triton_side_by_side.sh). Benchmarks only: run by
hand, never in CI, never a dependency of rtserve.

The model runs as a Python function calling ONNX Runtime (one intra-op thread, sequential
execution): PyTriton's Triton has no native ONNX Runtime backend. It is served as the Triton model
`mlp` (input "input" FP32 [784], output "output" FP32 [10], as in the ONNX file), one instance,
max_batch_size 16, dynamic batching with a 2 ms maximum queue delay, on 127.0.0.1 only. Prints
`READY http=HOST:PORT grpc=HOST:PORT pid=PID` once it serves; SIGTERM or SIGINT stops it.

    python3 -m venv scripts/bench/triton/.venv
    scripts/bench/triton/.venv/bin/pip install -r scripts/bench/triton/requirements.txt
    scripts/bench/triton/.venv/bin/python scripts/bench/triton/serve_mlp.py --http-port 8000 --grpc-port 8001
"""
import argparse
import logging
import os
import pathlib
import signal
import sys
import sysconfig
import threading

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

REPO = pathlib.Path(__file__).resolve().parents[3]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "examples/model_repository/mlp/1/model.onnx"))
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)

    # Triton's Python backend stub must load this interpreter's own libpython first, else model
    # load fails with "_thread.RLock ... _recursion_count". tritonserver inherits our environment.
    libdir = sysconfig.get_config_var("LIBDIR")
    old = os.environ.get("LD_LIBRARY_PATH")
    os.environ["LD_LIBRARY_PATH"] = libdir + (":" + old if old else "")

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    (onnx_in,) = session.get_inputs()
    (onnx_out,) = session.get_outputs()
    in_name, out_name = onnx_in.name, onnx_out.name
    in_dim, out_dim = onnx_in.shape[-1], onnx_out.shape[-1]

    @batch
    def infer(**inputs):
        x = inputs[in_name]
        return {out_name: session.run([out_name], {in_name: x})[0]}

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        allow_metrics=False,  # no third port to pick
        log_verbose=1 if args.verbose else 0,
    )
    # PyTriton protects the statistics API (among others) with a token by default; perf_analyzer
    # reads the statistics because Triton's /v2 lists that extension, so protect nothing.
    security = TritonSecurityConfig(restricted_endpoints=[])

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    triton = Triton(config=config, security_config=security)
    try:
        triton.bind(
            model_name="mlp",
            infer_func=infer,
            inputs=[Tensor(name=in_name, dtype=np.float32, shape=(in_dim,))],
            outputs=[Tensor(name=out_name, dtype=np.float32, shape=(out_dim,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
            strict=False,
        )
        triton.run()
        print(
            f"READY http=127.0.0.1:{args.http_port} grpc=127.0.0.1:{args.grpc_port} pid={os.getpid()}",
            flush=True,
        )
        while not stop.wait(1.0):
            if not triton.is_alive():
                print("tritonserver died", file=sys.stderr, flush=True)
                return 1
    finally:
        triton.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
