#!/usr/bin/env bash
# Server CPU per request of two rtserve binaries, alternating, for the MLP with
# `dynamic_batching {}` at concurrency 16 over gRPC and HTTP (binary tensors): each round starts
# a server with A, then with B; per transport a 1 s warm-up, then 4 s counted. Alternating
# rounds cancel a machine that slows down or speeds up during the run.
#
#   bash scripts/bench/ab_cpu_per_request.sh BIN_A BIN_B [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
A=$1 B=$2 ROUNDS=${3:-3}
run() { # binary label
  RTSERVE_BIN=$1
  source scripts/bench/lib.sh
  mkdir -p "$WORK/repo/m/1"
  cp examples/model_repository/mlp/1/model.onnx "$WORK/repo/m/1/"
  printf 'max_batch_size = 8\n[dynamic_batching]\n' > "$WORK/repo/m/config.toml"
  start_server --engine onnxruntime
  ticks=$(getconf CLK_TCK)
  cpu() { awk -v t="$ticks" '{ sub(/^.*\) /, ""); print ($12 + $13) / t }' "/proc/$SERVER/stat"; }
  answered() { curl -s "http://$HTTP/metrics" | awk '/^rtserve_requests_total/ && /model="m"/ { s += $NF } END { print s + 0 }'; }
  for transport in grpc http; do
    local url="http://$HTTP"
    [ "$transport" = grpc ] && url="grpc://$GRPC"
    "$BIN" bench --url "$url" --model m --concurrency 16 --warmup 1s --duration 1s --quiet > /dev/null 2>&1
    local c0 n0 c1 n1
    c0=$(cpu); n0=$(answered)
    "$BIN" bench --url "$url" --model m --concurrency 16 --warmup 0s --duration 4s --quiet > /dev/null 2>&1
    c1=$(cpu); n1=$(answered)
    python3 -c "import sys; a, t, c0, c1, n0, n1 = sys.argv[1:]; n = float(n1) - float(n0)
print(f'| {a} | {t} | {n / 4:.0f} | {(float(c1) - float(c0)) / max(n, 1) * 1e6:.1f} |')" "$2" "$transport" "$c0" "$c1" "$n0" "$n1"
  done
}
echo "| binary | transport | requests/s | server CPU per request (µs) |"
echo "|---|---|---:|---:|"
for _ in $(seq "$ROUNDS"); do
  (run "$A" A)
  (run "$B" B)
done
