#!/usr/bin/env python3
"""The tables of scripts/gpu/check.sh, from the files it leaves in its results folder.

    python scripts/gpu/report.py RESULTS_DIR --batch 32

Reads `rows.tsv` (one line a row: id, label, precision, provider, reference key, status, GPU
memory in MiB), `steps.tsv` (step, seconds, budget) and, per row, `bench-ID.json` and
`batchn-ID.json` (`rtserve bench --json`), `check-ID.json` (`ort_reference.py server`) and
`ort-KEY.json` (`ort_reference.py session`). Prints Markdown; exits 1 when a row that should
have run failed or an output is outside its tolerance (throughput targets are reported, not
enforced: performance is measured, not asserted).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

THROUGHPUT_TARGET = 0.9  # rtserve's images/s over ONNX Runtime's own session, same file/provider


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def number(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None


def memory(row: dict) -> str:
    """`after (+growth)` in MiB, from nvidia-smi readings before the load and after the load."""
    after, before = number(row["memory"] or "x"), number(row["before"] or "x")
    if after is None:
        return "-"
    if before is None:
        return f"{after:.0f}"
    return f"{after:.0f} (+{after - before:.0f})" if after >= before else f"{after:.0f} ({after - before:.0f})"


def name(ref: str) -> str:
    """`fp32.tensorrt-fp16` -> `FP32 file, tensorrt-fp16`."""
    file, provider = ref.split(".", 1)
    return f"{file.upper()} file, {provider}"


def bench_steps(path: Path) -> list[dict]:
    report = read_json(path)
    return report["steps"] if report else []


def errors(step: dict) -> str:
    counts = {k: v for k, v in (step.get("errors") or {}).items() if v}
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "0"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--batch", type=int, required=True, help="batch of the reference runs")
    args = parser.parse_args()
    res = args.results
    rows = [dict(zip(("id", "label", "precision", "provider", "ref", "status", "memory", "before"),
                     line)) for line in csv.reader((res / "rows.tsv").open(), delimiter="\t")]
    bad: list[str] = []
    baseline = number((res / "gpu_baseline.txt").read_text()) \
        if (res / "gpu_baseline.txt").exists() else None

    # 1. Latency and throughput, batch-1 requests over gRPC.
    lines = []
    for row in rows:
        head = [row["label"], row["precision"], row["provider"]]
        if row["status"] != "ok":
            lines.append(head + [row["status"]] + ["-"] * 6)
            if not row["status"].startswith("skipped"):
                bad.append(f"{row['label']}: {row['status']}")
            continue
        steps = bench_steps(res / f"bench-{row['id']}.json")
        if not steps:
            lines.append(head + ["failed: no bench result"] + ["-"] * 6)
            bad.append(f"{row['label']}: no bench result")
        for step in steps:
            lat = step.get("latency_us") or {}
            rss = step.get("server_peak_rss_bytes")
            batch = (step.get("server") or {}).get("batch_size")
            lines.append(head + [
                f"c={step['concurrency']}" + (f" (batch {batch:.1f})" if batch else ""),
                fmt(lat.get("p50_us") and lat["p50_us"] / 1000, ".2f"),
                fmt(lat.get("p99_us") and lat["p99_us"] / 1000, ".2f"),
                fmt(step.get("throughput_rps")),
                memory(row),
                fmt(rss and rss / 2**20, ".0f"),
                errors(step)])
            if any((step.get("errors") or {}).values()):
                bad.append(f"{row['label']} c={step['concurrency']}: errors {errors(step)}")
    # nvidia-smi's memory.used is the whole device's; a server that never grew it never ran a
    # model on the GPU (a binary that takes KIND_GPU but runs on the CPU, say).
    gpu_rows = [number(r["memory"]) for r in rows if r["status"] == "ok" and r["memory"]]
    if baseline is not None and gpu_rows and max(gpu_rows) <= baseline + 32:
        bad.append(f"GPU memory never grew past {baseline:.0f} MiB (the server with no model "
                   "loaded): the rows did not run on the GPU")
    print("\n### rtserve, batch-1 requests over gRPC\n")
    if baseline is not None:
        print("GPU memory: nvidia-smi memory.used of the whole device after the row's batch-1 "
              "steps (+ growth since just before its model was loaded)\n")
    print(table(["row", "precision", "provider", "concurrency", "p50 ms", "p99 ms", "req/s",
                 "GPU memory MiB", "server RSS MiB", "errors"], lines))

    # 2. Outputs against the CPU FP32 reference.
    lines = []
    # ONNX Runtime's session ran for every row that was not skipped, one file and provider once.
    seen_refs = list(dict.fromkeys(r["ref"] for r in rows if not r["status"].startswith("skipped")))
    for row in rows:
        if row["status"] != "ok":
            continue
        check = read_json(res / f"check-{row['id']}.json")
        if check is None:
            lines.append([f"rtserve: {row['label']}", "-", "-", "-", "-", "-", "-", "no result"])
            bad.append(f"{row['label']}: no output check")
            continue
        lines.append([f"rtserve: {row['label']}", str(check["batch"]),
                      fmt(check["first_request_s"], ".2f"), fmt(check["max_abs"], ".2e"),
                      fmt(check["rel"], ".2e"), f"{check['top1_agreement']:.0%}",
                      check["tolerance"], "pass" if check["pass"] else "**FAIL**"])
        if not check["pass"]:
            bad.append(f"{row['label']}: outputs outside {check['tolerance']}")
    for ref in seen_refs:
        session = read_json(res / f"ort-{ref}.json")
        if session is None:
            reason = (res / f"ort-{ref}.err").read_text().strip().splitlines()[-1:] \
                if (res / f"ort-{ref}.err").exists() else ["no result"]
            lines.append([f"ONNX Runtime session: {name(ref)}", "-", "-", "-", "-", "-", "-",
                          f"failed: {reason[0][:120] if reason else ''}"])
            bad.append(f"ONNX Runtime session {ref} failed")
            continue
        lines.append([f"ONNX Runtime session: {name(ref)}", str(session["batch"]),
                      fmt(session["session_s"] + session["first_run_s"], ".2f"),
                      fmt(session["max_abs"], ".2e"), fmt(session["rel"], ".2e"),
                      f"{session['top1_agreement']:.0%}", session["tolerance"],
                      "pass" if session["pass"] else "**FAIL**"])
    print("\n### Outputs against the CPU FP32 reference (same seeded images)\n")
    print("rel = max |out - ref| / max |ref|; first s = the first request (engine builds included)\n")
    print(table(["what", "batch", "first s", "max abs", "rel", "top-1 agreement", "tolerance",
                 "result"], lines))

    # 3. Throughput at batch N: ONNX Runtime's own session against rtserve.
    lines = []
    for ref in seen_refs:
        session = read_json(res / f"ort-{ref}.json")
        ort_ips = session["images_per_s"] if session else None
        direct = batched = None
        for row in rows:
            if row["ref"] != ref or row["status"] != "ok":
                continue
            for step in bench_steps(res / f"batchn-{row['id']}.json"):
                direct = step.get("inferences_per_s")
            steps = bench_steps(res / f"bench-{row['id']}.json")
            if len(steps) > 1:
                batched = steps[-1].get("inferences_per_s")

        def ratio(x):
            if x is None or not ort_ips:
                return "-"
            verdict = "met" if x / ort_ips >= THROUGHPUT_TARGET else "missed"
            return f"{x / ort_ips:.2f}× ({verdict})"

        lines.append([name(ref), fmt(ort_ips), fmt(direct), ratio(direct), fmt(batched), ratio(batched)])
    print(f"\n### Throughput at batch {args.batch} (images/s), target rtserve >= "
          f"{THROUGHPUT_TARGET}× ONNX Runtime's own session\n")
    print(table(["file, provider", f"ORT Python session, batch {args.batch}",
                 f"rtserve, batch-{args.batch} requests, c=2", "ratio",
                 "rtserve, batch-1 requests at the highest c, dynamic batching", "ratio"], lines))

    # 4. Time per step.
    steps = list(csv.reader((res / "steps.tsv").open(), delimiter="\t")) \
        if (res / "steps.tsv").exists() else []
    print("\n### Time per step\n")
    print(table(["step", "seconds", "budget s", ""],
                [[name, secs, budget, "**over budget**" if int(secs) > int(budget) else ""]
                 for name, secs, budget in steps]))

    if bad:
        print("\nProblems:\n" + "\n".join(f"- {b}" for b in bad))
        return 1
    print("\nEvery row that could run ran, and every output is within its tolerance.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
