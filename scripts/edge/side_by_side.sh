#!/usr/bin/env bash
# The same TFLite files on rtserve's engines (`rtserve run`: ONNX Runtime, the file rewritten as
# ONNX, and tract) and on Google's LiteRT interpreter, one thread each, the same input
# (docs/edge.md, "Side by side with LiteRT"):
#
#   scripts/edge/side_by_side.sh [RUNS] MODEL.tflite...
#
# Per model: `rtserve run --engine E --threads 1 --repeat RUNS` for E = onnxruntime, tract (engine
# time of each run; the process's peak RSS; or the error of an engine that cannot read the file)
# and `tflite_zoo.py bench --runs RUNS` (LiteRT's invoke() at num_threads=1; the peak RSS of a
# Python process holding NumPy and LiteRT), alternated twice; then the file size.
# Needs the venv of scripts/edge/requirements.txt (scripts/edge/.venv) and a release build
# (RTSERVE_BIN, default target/release/rtserve). Run by hand, never in CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${RTSERVE_BIN:-target/release/rtserve}
PY=${PY:-scripts/edge/.venv/bin/python}
RUNS=${1:?usage: side_by_side.sh RUNS MODEL.tflite...}
shift
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for model in "$@"; do
  stem=$(basename "$model" .tflite)
  "$PY" scripts/edge/tflite_zoo.py bench --runs 1 --warmup 0 --save-input "$WORK" "$model" > /dev/null 2>&1
  echo "== $stem ($(stat -c %s "$model") bytes)"
  for round in 1 2; do
    for engine in onnxruntime tract; do
      "$BIN" run --engine "$engine" --model "$model" --threads 1 --repeat "$RUNS" "$WORK/$stem.npy" 2>&1 > /dev/null \
        | grep -E '^(engine time|peak RSS|error)' | paste -sd ' ' | cut -c1-200 | sed 's/^/rtserve run: /' || true
    done
    "$PY" scripts/edge/tflite_zoo.py bench --runs "$RUNS" "$model" 2>/dev/null | grep LiteRT
  done
done
