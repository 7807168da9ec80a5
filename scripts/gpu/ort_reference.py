#!/usr/bin/env python3
"""ResNet-50 outside rtserve, for scripts/gpu/check.sh: the reference outputs, ONNX Runtime's own
Python throughput, and rtserve's outputs checked against them.

    python scripts/gpu/ort_reference.py inputs  --model FP32.onnx --batch 32 --out-dir DIR
    python scripts/gpu/ort_reference.py session --model FILE --provider cuda --batch 32 \\
        --inputs DIR --check fp16 --json OUT.json
    python scripts/gpu/ort_reference.py server  --url http://HOST:PORT --model NAME \\
        --inputs DIR --check int8 --json OUT.json

`inputs` writes seeded images (standard normal, seed 1; the INT8 calibration of
scripts/bench/quantize_resnet50.py uses seed 0) and the reference logits of the FP32 file on
ONNX Runtime's CPU provider. `session` runs a file on a provider in ONNX Runtime's Python
InferenceSession: images/s at one batch size (numpy in, numpy out, as a server copies them) and
its outputs against the reference. `server` sends the same images to an rtserve model over HTTP
with binary tensors, one image and then the whole batch, and checks the outputs; it is also the
model's warm-up (TensorRT builds its engines on a model's first runs, so the first request may
take minutes).

Tolerances (CHECKS below), with rel = max |out - ref| / max |ref| over the batch:
FP32 rel <= 1e-3; FP16 rel <= 1e-2; INT8 top-1 agreement >= 97 % (at most one image in 32).
The zoo's ResNet-50 has seeded random weights, so nearly every input lands on one class and
top-1 agreement is a weak check of INT8; rel is printed for it too.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

INPUT, OUTPUT = "input", "logits"
IMAGE = (3, 224, 224)
SEED = 1

# check name -> (what is compared, limit, the wording printed in the tables)
CHECKS = {
    "fp32": ("rel", 1e-3, "rel <= 1e-3"),
    "fp16": ("rel", 1e-2, "rel <= 1e-2"),
    "int8": ("top1", 0.97, "top-1 >= 97 %"),
}


def compare(out: np.ndarray, ref: np.ndarray, check: str) -> dict:
    """Differences of `out` from `ref` (same shape) and whether they are within `check`."""
    out = out.astype(np.float64)
    ref = ref.astype(np.float64)
    diff = np.abs(out - ref)
    max_abs = float(diff.max())
    rel = max_abs / max(float(np.abs(ref).max()), 1e-30)
    top1 = float(np.mean(out.argmax(axis=1) == ref.argmax(axis=1)))
    what, limit, wording = CHECKS[check]
    ok = rel <= limit if what == "rel" else top1 >= limit
    finite = bool(np.isfinite(out).all())
    return {"check": check, "tolerance": wording, "max_abs": max_abs, "rel": rel,
            "top1_agreement": top1, "finite": finite, "pass": bool(ok and finite)}


def load_inputs(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(folder / "images.npy"), np.load(folder / "reference.npy")


def providers(name: str, trt_cache: str | None) -> list:
    cuda = ("CUDAExecutionProvider", {"device_id": "0"})
    if name == "cpu":
        return ["CPUExecutionProvider"]
    if name == "cuda":
        return [cuda, "CPUExecutionProvider"]
    precision = name.removeprefix("tensorrt-")
    if precision not in ("fp16", "int8"):
        raise SystemExit(f"unknown provider {name!r}: cpu, cuda, tensorrt-fp16 or tensorrt-int8")
    trt = {"device_id": "0", "trt_max_workspace_size": str(4 << 30),
           "trt_fp16_enable": str(precision == "fp16"), "trt_int8_enable": str(precision == "int8")}
    if trt_cache:
        Path(trt_cache).mkdir(parents=True, exist_ok=True)
        trt.update(trt_engine_cache_enable="True", trt_engine_cache_path=trt_cache)
    return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]


def cmd_inputs(args) -> dict:
    import onnxruntime as ort

    images = np.random.default_rng(args.seed).standard_normal((args.batch, *IMAGE), dtype=np.float32)
    session = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    reference = session.run([OUTPUT], {INPUT: images})[0]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    np.save(args.out_dir / "images.npy", images)
    np.save(args.out_dir / "reference.npy", reference)
    return {"batch": args.batch, "seed": args.seed, "model": str(args.model),
            "reference_top1": np.bincount(reference.argmax(axis=1)).argmax().item()}


def cmd_session(args) -> dict:
    import onnxruntime as ort

    images, reference = load_inputs(args.inputs)
    wanted = providers(args.provider, args.trt_cache)
    t0 = time.monotonic()
    session = ort.InferenceSession(str(args.model), providers=wanted)
    created = time.monotonic() - t0
    used = session.get_providers()
    if wanted[0] != "CPUExecutionProvider" and used[0] != wanted[0][0]:
        raise SystemExit(f"asked for {wanted[0][0]}, ONNX Runtime gave {used}: its libraries "
                         "did not load (ONNX Runtime's warnings before this line say why)")
    t0 = time.monotonic()
    out = session.run([OUTPUT], {INPUT: images})[0]
    first = time.monotonic() - t0
    session.run([OUTPUT], {INPUT: images})
    runs = 0
    t0 = time.monotonic()
    while runs < args.min_runs or time.monotonic() - t0 < args.seconds:
        session.run([OUTPUT], {INPUT: images})
        runs += 1
    elapsed = time.monotonic() - t0
    return {"model": str(args.model), "provider": args.provider, "providers": used,
            "batch": len(images), "runs": runs, "seconds": elapsed,
            "images_per_s": runs * len(images) / elapsed, "session_s": created,
            "first_run_s": first, **compare(out, reference, args.check)}


def infer(url: str, model: str, images: np.ndarray, timeout: float) -> np.ndarray:
    """One KServe v2 request with binary tensors (Triton's binary data extension)."""
    data = np.ascontiguousarray(images, dtype="<f4").tobytes()
    header = json.dumps({
        "inputs": [{"name": INPUT, "shape": list(images.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)}}],
        "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}],
    }).encode()
    request = urllib.request.Request(
        f"{url}/v2/models/{model}/infer", data=header + data, method="POST",
        headers={"Content-Type": "application/octet-stream",
                 "Inference-Header-Content-Length": str(len(header))})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            length = int(response.headers.get("Inference-Header-Content-Length", len(body)))
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{model}: HTTP {e.code}: {e.read().decode(errors='replace')[:500]}")
    meta = json.loads(body[:length])
    output = next(o for o in meta["outputs"] if o["name"] == OUTPUT)
    if output["datatype"] != "FP32":
        raise SystemExit(f"{model}: output {OUTPUT} is {output['datatype']}, expected FP32")
    raw = body[length:]
    if "binary_data_size" not in output.get("parameters", {}):
        return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    return np.frombuffer(raw, dtype="<f4").reshape(output["shape"])


def cmd_server(args) -> dict:
    images, reference = load_inputs(args.inputs)
    url = args.url.rstrip("/")
    t0 = time.monotonic()
    one = infer(url, args.model, images[:1], args.timeout)
    first = time.monotonic() - t0
    t0 = time.monotonic()
    out = infer(url, args.model, images, args.timeout)
    whole = time.monotonic() - t0
    result = compare(out, reference, args.check)
    one_rel = compare(one, reference[:1], args.check)["rel"]
    return {"model": args.model, "batch": len(images), "first_request_s": first,
            "first_batch_request_s": whole, "batch1_rel": one_rel, **result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("inputs", help="seeded images and the CPU FP32 reference logits")
    p.add_argument("--model", type=Path, required=True, help="the FP32 ONNX file")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--out-dir", type=Path, required=True)
    for name, text in (("session", "ONNX Runtime's Python session: images/s and outputs"),
                       ("server", "an rtserve model's outputs (and its warm-up)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--inputs", type=Path, required=True, help="the folder `inputs` wrote")
        p.add_argument("--check", choices=sorted(CHECKS), required=True)
        if name == "session":
            p.add_argument("--model", type=Path, required=True)
            p.add_argument("--provider", required=True,
                           help="cpu, cuda, tensorrt-fp16 or tensorrt-int8")
            p.add_argument("--seconds", type=float, default=5.0, help="timed window")
            p.add_argument("--min-runs", type=int, default=3)
            p.add_argument("--trt-cache", help="TensorRT engine cache folder")
        else:
            p.add_argument("--url", required=True, help="http://HOST:PORT")
            p.add_argument("--model", required=True, help="the model's name on the server")
            p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    for p in sub.choices.values():
        p.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = {"inputs": cmd_inputs, "session": cmd_session, "server": cmd_server}[args.cmd](args)
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
