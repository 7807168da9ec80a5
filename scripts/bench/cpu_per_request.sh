#!/usr/bin/env bash
# Server CPU per request: the MLP on ONNX Runtime, loaded by `rtserve bench` (one sending thread)
# at concurrency 1 and 16 over HTTP (binary tensors), gRPC and gRPC streaming, without batching
# and with `dynamic_batching {}`. CPU per request is the server process's CPU time (user +
# system, from /proc/PID/stat) over the requests it answered (its rtserve_requests_total), both
# taken around each run, warm-up included. Then the lone-request latency: p50 at concurrency 1
# over HTTP, batching off against `dynamic_batching { max_queue_delay_microseconds: 500 }`.
# Prints two Markdown tables.
#
#   cargo build --release
#   bash scripts/bench/cpu_per_request.sh [SECONDS]     # RTSERVE_BIN=... for another binary
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-5}
source scripts/bench/lib.sh

model() { # name config-lines...
  mkdir -p "$WORK/repo/$1/1"
  cp examples/model_repository/mlp/1/model.onnx "$WORK/repo/$1/1/"
  local name=$1
  shift
  { echo 'max_batch_size = 8'; printf '%s\n' "$@"; } > "$WORK/repo/$name/config.toml"
}
model mlp_off ''
model mlp_batched '[dynamic_batching]'
model mlp_delay500 '[dynamic_batching]' 'max_queue_delay_microseconds = 500'
start_server --engine onnxruntime

ticks=$(getconf CLK_TCK)
cpu_s() { awk -v t="$ticks" '{ sub(/^.*\) /, ""); print ($12 + $13) / t }' "/proc/$SERVER/stat"; }
answered() { # model: requests the server answered, every outcome
  curl -s "http://$HTTP/metrics" |
    awk -v m="model=\"$1\"" '/^rtserve_requests_total/ && index($0, m) { s += $NF } END { print s + 0 }'
}
bench() { # model transport concurrency
  local args
  case $2 in
    http) args=(--url "http://$HTTP") ;;
    grpc) args=(--url "grpc://$GRPC") ;;
    grpc-stream) args=(--url "grpc://$GRPC" --grpc-stream) ;;
  esac
  "$BIN" bench "${args[@]}" --model "$1" --concurrency "$3" --warmup 1s --duration "${SECS}s" \
    --quiet --json "$WORK/rb.json" > "$WORK/bench.log" 2>&1 || { cat "$WORK/bench.log"; exit 1; }
}
field() { python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))["steps"][0]; print(eval(sys.argv[2]))' "$WORK/rb.json" "$1"; }

echo "| model | transport | concurrency | requests/s | p50 (µs) | p99 (µs) | server CPU per request (µs) |"
echo "|---|---|---:|---:|---:|---:|---:|"
for m in mlp_off mlp_batched; do
  for transport in http grpc grpc-stream; do
    for c in 1 16; do
      cpu0=$(cpu_s); n0=$(answered "$m")
      bench "$m" "$transport" "$c"
      cpu1=$(cpu_s); n1=$(answered "$m")
      python3 - "$m" "$transport" "$c" "$(field 's["throughput_rps"]')" "$(field 's["latency_us"]["p50_us"]')" \
        "$(field 's["latency_us"]["p99_us"]')" "$cpu0" "$cpu1" "$n0" "$n1" <<'PY'
import sys
m, transport, c, rps, p50, p99, cpu0, cpu1, n0, n1 = sys.argv[1:]
answered = float(n1) - float(n0)
cpu_us = (float(cpu1) - float(cpu0)) / max(answered, 1) * 1e6
print(f"| {m} | {transport} | {c} | {float(rps):.0f} | {p50} | {p99} | {cpu_us:.1f} |")
PY
    done
  done
done

echo
echo "| model | batching | p50 at c=1, HTTP (µs) | ratio to batching off |"
echo "|---|---|---:|---:|"
bench mlp_off http 1
off=$(field 's["latency_us"]["p50_us"]')
echo "| mlp | off | $off | 1.00 |"
bench mlp_delay500 http 1
on=$(field 's["latency_us"]["p50_us"]')
echo "| mlp | max_queue_delay_microseconds: 500 | $on | $(python3 -c "print(f'{$on / $off:.2f}')") |"
