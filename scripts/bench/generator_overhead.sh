#!/usr/bin/env bash
# Is `rtserve bench` the bottleneck? It loads rtserve with a cache-hit workload (the MLP with its
# response cache on, one distinct request, so every request after the first is a hit) and
# reports, for each transport, the throughput reached and the CPU time the generator itself
# spent per request: 1 / (CPU per request) is what one core of load generator sustains.
# perf_analyzer runs the same load for comparison.
#
#   cargo build --release && bash scripts/install_perf_analyzer.sh
#   bash scripts/bench/generator_overhead.sh [SECONDS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-10}
C=${2:-16}
source scripts/bench/lib.sh

mkdir -p "$WORK/repo/mlp/1"
cp examples/model_repository/mlp/1/model.onnx "$WORK/repo/mlp/1/"
printf 'max_batch_size = 8\n[response_cache]\nenable = true\n' > "$WORK/repo/mlp/config.toml"
start_server --engine onnxruntime

echo "| generator | transport | threads | concurrency | requests/s (its own window) | hit ratio | generator CPU per request | requests/s per generator core |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
counts() { curl -s "http://$HTTP/metrics" | awk '/^rtserve_cache_(hits|misses)_total/ {s[$1 ~ /hits/] += $2} END {print s[1] + 0, s[0] + 0}'; }
measure() { # generator transport threads -- command...: times the whole process
  local gen=$1 transport=$2 threads=$3
  shift 4
  read -r h0 m0 < <(counts)
  /usr/bin/time -f "%U %S" -o "$WORK/time" "$@" > "$WORK/out.log" 2>&1 || { cat "$WORK/out.log"; exit 1; }
  read -r h1 m1 < <(counts)
  read -r user sys < "$WORK/time"
  python3 - "$gen" "$transport" "$threads" "$C" "$(report_rate "$gen")" "$h0" "$m0" "$h1" "$m1" "$user" "$sys" <<'PY'
import sys
gen, transport, threads, c, rate, h0, m0, h1, m1, user, sys_ = sys.argv[1:]
hits, misses = float(h1) - float(h0), float(m1) - float(m0)
requests, cpu = hits + misses, float(user) + float(sys_)
print(f"| {gen} | {transport} | {threads} | {c} | {float(rate):.0f} | {hits / max(requests, 1):.4f} "
      f"| {cpu / requests * 1e6:.1f} µs | {requests / cpu:.0f} |")
PY
}
report_rate() {
  if [ "$1" = "perf_analyzer" ]; then
    python3 -c 'import csv,sys; print(next(csv.DictReader(open(sys.argv[1])))["Inferences/Second"])' "$WORK/pa.csv"
  else
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["steps"][0]["throughput_rps"])' "$WORK/rb.json"
  fi
}
# Every request the server saw during a run counts (warm-up included), as does all the CPU time
# of the generator's process, so the CPU per request is the generator's whole cost.
for run in "http 1" "http 2" "grpc 1" "grpc 2" "grpc-stream 1"; do
  read -r transport threads <<< "$run"
  case $transport in
    http) args=(--url "http://$HTTP") ;;
    grpc) args=(--url "grpc://$GRPC") ;;
    grpc-stream) args=(--url "grpc://$GRPC" --grpc-stream) ;;
  esac
  measure "rtserve bench" "$transport" "$threads" -- "$BIN" bench "${args[@]}" --threads "$threads" --model mlp --distinct 1 \
    --concurrency "$C" --warmup 1s --duration "${SECS}s" --quiet --json "$WORK/rb.json"
done
for protocol in http grpc; do
  url=$([ "$protocol" = http ] && echo "$HTTP" || echo "$GRPC")
  measure "perf_analyzer" "$protocol" "its default" -- "$PA" -m mlp -i "$protocol" -u "$url" \
    --concurrency-range "$C:$C" --measurement-interval $((SECS * 1000 / 3)) --max-trials 3 \
    --stability-percentage 1000 -f "$WORK/pa.csv"
done
