#!/usr/bin/env bash
# What `--access-log` costs: `rtserve bench` on the MLP (tract, HTTP binary tensors, closed loop
# at concurrency 1 and 8) against a server without and with the access log, twice each in turn
# (off, on, off, on) so that drift of a shared machine shows. The log goes to a file, as it
# would to a collector. Prints one Markdown table.
#
#   cargo build --release -p rtserve --bin rtserve
#   bash scripts/bench/access_log_cost.sh [DURATION]      # per step, default 10s
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-10s}
source scripts/bench/lib.sh
mkdir -p "$WORK/repo"
cp -r examples/model_repository/mlp "$WORK/repo/"

echo "| access log | round | concurrency | throughput (req/s) | p50 (µs) | p99 (µs) |"
echo "|---|---:|---:|---:|---:|---:|"
for round in 1 2; do
  for log in off on; do
    flags=(--engine tract)
    [ "$log" = on ] && flags+=(--access-log)
    start_server "${flags[@]}"
    "$BIN" bench --url "http://$HTTP" --model mlp --concurrency 1,8 --warmup 2s --duration "$DURATION" \
      --quiet --json "$WORK/bench.json" > /dev/null
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
    python3 - "$WORK/bench.json" "$log" "$round" <<'PY'
import json, sys
for step in json.load(open(sys.argv[1]))["steps"]:
    latency = step["latency_us"]
    print(f"| {sys.argv[2]} | {sys.argv[3]} | {step['concurrency']} | {step['throughput_rps']:.0f} | "
          f"{latency['p50_us']} | {latency['p99_us']} |")
PY
  done
done
