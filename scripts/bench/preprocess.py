#!/usr/bin/env python3
"""Preprocessing benchmarks for docs/preprocessing.md.

  image OUT.jpg            the benchmark photo: the zoo's coffee.png, resized to 640x480
                           (Pillow, Lanczos), saved as JPEG quality 90
  pipelines IMAGE.jpg      per-image cost of the Python pipelines a client would otherwise run
                           (Pillow; OpenCV when `cv2` is installed): JPEG bytes -> FP32 NCHW
                           [1,3,224,224], short side 256 bilinear, centre crop, (x-127)/128.
                           Run it under `taskset -c 0` for one core, as the Rust bench.
  throughput --url URL     closed-loop load at --concurrency C for --duration s, two ways:
                           `jpeg`: the JPEG to POST /v2/models/M/classify (labels out);
                           `tensor`: the tensor made once by the Pillow pipeline, as a v2 infer
                           with the binary extension (logits out).

Needs numpy and Pillow (opencv-python-headless for the OpenCV pipeline).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import statistics
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_image(out: Path) -> None:
    from PIL import Image

    src = REPO_ROOT / "models" / "zoo_data" / "coffee.png"
    with Image.open(src) as im:
        im = im.convert("RGB").resize((640, 480), Image.LANCZOS)
    out.parent.mkdir(parents=True, exist_ok=True)
    im.save(out, format="JPEG", quality=90)
    print(f"{out}: 640x480 JPEG, {out.stat().st_size} bytes")


def pil_pipeline(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        w, h = im.size
        if w <= h:
            nw, nh = 256, int(round(h * 256 / w))
        else:
            nw, nh = int(round(w * 256 / h)), 256
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - 224) // 2, (nh - 224) // 2
        im = im.crop((left, top, left + 224, top + 224))
        x = np.asarray(im, dtype=np.float32)
    x = (x - 127.0) / 128.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def cv2_pipeline(data: bytes) -> np.ndarray:
    import cv2

    im = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    im = cv2.cvtColor(im, cv2.COLOR_BGR2RGB)
    h, w = im.shape[:2]
    if w <= h:
        nw, nh = 256, int(round(h * 256 / w))
    else:
        nw, nh = int(round(w * 256 / h)), 256
    im = cv2.resize(im, (nw, nh), interpolation=cv2.INTER_LINEAR)
    left, top = (nw - 224) // 2, (nh - 224) // 2
    x = im[top:top + 224, left:left + 224].astype(np.float32)
    x = (x - 127.0) / 128.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def time_pipeline(fn, data: bytes, iterations: int, repeats: int = 5) -> float:
    """Median over `repeats` of the mean seconds per image over `iterations` images."""
    fn(data)  # warm up
    means = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            fn(data)
        means.append((time.perf_counter() - start) / iterations)
    return statistics.median(means)


def pipelines(image: Path, iterations: int) -> None:
    data = image.read_bytes()
    rows = [("Pillow", pil_pipeline)]
    try:
        import cv2

        cv2.setNumThreads(1)
        rows.append((f"OpenCV {cv2.__version__}", cv2_pipeline))
    except ImportError:
        print("OpenCV not installed (pip install opencv-python-headless): skipped")
    import PIL

    print(f"{image} ({len(data)} bytes) -> FP32 [1,3,224,224]; Pillow {PIL.__version__}, "
          f"NumPy {np.__version__}; {iterations} images x 5 repeats, median")
    for name, fn in rows:
        seconds = time_pipeline(fn, data, iterations)
        print(f"  {name:20s} {seconds * 1e3:7.3f} ms/image  ({1 / seconds:7.1f} images/s)")


def throughput(args) -> None:
    url = urlparse(args.url)
    data = Path(args.image).read_bytes()
    tensor = pil_pipeline(data).astype("<f4")
    header = json.dumps({
        "inputs": [{"name": "input", "shape": list(tensor.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": tensor.nbytes}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    }).encode()
    modes = {
        "jpeg": (f"/v2/models/{args.model}/classify?top_k=5", data, {"Content-Type": "image/jpeg"}),
        "tensor": (f"/v2/models/{args.model}/infer", header + tensor.tobytes(),
                   {"Content-Type": "application/octet-stream",
                    "Inference-Header-Content-Length": str(len(header))}),
    }
    for mode in args.modes.split(","):
        path, body, headers = modes[mode]
        latencies: list[float] = []
        errors = [0]
        lock = threading.Lock()
        stop_at = time.monotonic() + args.warmup + args.duration
        count_from = time.monotonic() + args.warmup

        def sender():
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
            while True:
                start = time.monotonic()
                if start >= stop_at:
                    break
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                end = time.monotonic()
                if start >= count_from:
                    with lock:
                        if resp.status == 200:
                            latencies.append(end - start)
                        else:
                            errors[0] += 1
            conn.close()

        threads = [threading.Thread(target=sender) for _ in range(args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        lat = np.array(latencies) * 1e3
        print(f"{mode:6s} concurrency {args.concurrency}: {len(lat) / args.duration:7.1f} req/s, "
              f"p50 {np.percentile(lat, 50):6.1f} ms, p99 {np.percentile(lat, 99):6.1f} ms, "
              f"{errors[0]} errors, request {len(body)} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("image")
    p.add_argument("out", type=Path)
    p = sub.add_parser("pipelines")
    p.add_argument("image", type=Path)
    p.add_argument("--iterations", type=int, default=200)
    p = sub.add_parser("throughput")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--image", required=True)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--modes", default="jpeg,tensor")
    args = parser.parse_args()
    if args.command == "image":
        make_image(args.out)
    elif args.command == "pipelines":
        pipelines(args.image, args.iterations)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
