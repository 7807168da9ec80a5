#!/usr/bin/env bash
# Cache benchmark: end-to-end latency of a local hit, a Redis hit and a miss (the model run) for
# the MLP and the small CNN on ONNX Runtime, over HTTP (binary tensors) and gRPC, at concurrency
# 1 and 16, with Triton's perf_analyzer (which repeats one input, so a caching model hits).
# Prints one Markdown table, then the server-side mean local lookup time.
#
#   cargo build --release && bash scripts/install_perf_analyzer.sh   # and apt install redis-server
#   bash scripts/bench/cache.sh [MEASUREMENT_MS]
set -euo pipefail
cd "$(dirname "$0")/../.."
MEASURE_MS=${1:-3000}
PA=${PERF_ANALYZER:-.tools/perf_analyzer/perf_analyzer}
BIN=${RTSERVE_BIN:-target/release/rtserve}
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

for m in mlp cnn; do
  for variant in cached uncached; do
    mkdir -p "$WORK/repo/${m}_$variant/1"
    cp "examples/model_repository/$m/1/model.onnx" "$WORK/repo/${m}_$variant/1/"
    sed -e "s/^name: \"$m\"/name: \"${m}_$variant\"/" -e '/^dynamic_batching {/,/^}/d' \
        -e '/^parameters {/,/^}/d' "examples/model_repository/$m/config.pbtxt" \
        > "$WORK/repo/${m}_$variant/config.pbtxt"
  done
  echo 'response_cache { enable: true }' >> "$WORK/repo/${m}_cached/config.pbtxt"
done

REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no > /dev/null &
PIDS+=($!)

start() { # name extra-flags...
  local name=$1; shift
  "$BIN" serve --model-repository "$WORK/repo" --engine onnxruntime --host 127.0.0.1 \
    --http-port 0 --grpc-port 0 --warm-up-rounds 0 "$@" 2> "$WORK/$name.log" &
  PIDS+=($!)
  for _ in $(seq 300); do grep -q 'ready$' "$WORK/$name.log" && break; sleep 0.1; done
}
# "local": the default local tier. "redis": a local tier too small to hold a reply, so every
# lookup goes on to Redis.
start local
start redis --cache-redis "redis://127.0.0.1:$REDIS_PORT/" --cache-bytes 1
addr() { grep -o "$2 listening on [0-9.:]*" "$WORK/$1.log" | awk '{print $4}'; }

echo "| model | protocol | reply from | concurrency | throughput (infer/s) | p50 (µs) | p99 (µs) |"
echo "|---|---|---|---:|---:|---:|---:|"
for m in mlp cnn; do
  for protocol in http grpc; do
    for path in miss hit redis_hit; do
      case $path in
        miss) server=local; model=${m}_uncached ;;
        hit) server=local; model=${m}_cached ;;
        redis_hit) server=redis; model=${m}_cached ;;
      esac
      if [ "$protocol" = http ]; then url=$(addr $server HTTP); else url=$(addr $server gRPC); fi
      for c in 1 16; do
        "$PA" -m "$model" -i "$protocol" -u "$url" --concurrency-range "$c:$c" \
          --measurement-interval "$MEASURE_MS" --max-trials 3 --stability-percentage 1000 \
          -f "$WORK/pa.csv" > "$WORK/pa.log" 2>&1 || { cat "$WORK/pa.log"; exit 1; }
        python3 - "$WORK/pa.csv" "$m" "$protocol" "$path" "$c" <<'PY'
import csv, sys
row = next(csv.DictReader(open(sys.argv[1])))
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {sys.argv[5]} | "
      f"{float(row['Inferences/Second']):.0f} | {row['p50 latency']} | {row['p99 latency']} |")
PY
      done
    done
  done
done
for server in local redis; do
  curl -s "http://$(addr $server HTTP)/metrics" | python3 -c '
import sys
values = {l.split(" ")[0]: float(l.split(" ")[1]) for l in sys.stdin if l.startswith("rtserve_cache_lookup_duration_seconds_")}
count = values["rtserve_cache_lookup_duration_seconds_count"]
mean_us = 1e6 * values["rtserve_cache_lookup_duration_seconds_sum"] / count
print(f"server {sys.argv[1]}: {count:.0f} local lookups, mean {mean_us:.2f} µs")' "$server"
done
