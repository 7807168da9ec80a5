#!/usr/bin/env bash
# Batching benchmark: the MLP, the small CNN and ResNet-50 (when fetched) on ONNX Runtime, batching off and on, closed loop
# at concurrency 1, 4, 16 and 64 with Triton's perf_analyzer over gRPC. Prints one Markdown table:
# throughput, p50, p99 and the mean batch the scheduler formed (from the statistics endpoint).
#
#   cargo build --release && bash scripts/install_perf_analyzer.sh
#   bash scripts/bench/batching.sh [MEASUREMENT_MS]
set -euo pipefail
cd "$(dirname "$0")/../.."
MEASURE_MS=${1:-3000}
source scripts/bench/lib.sh

model() { # name source-folder max-batch batching-block
  local source=$2 base
  base=$(basename "$source")
  mkdir -p "$WORK/repo/$1/1"
  cp "$source/1/model.onnx" "$WORK/repo/$1/1/"
  sed -e "s/^name: \"$base\"/name: \"$1\"/" -e "s/^max_batch_size: .*/max_batch_size: $3/" \
      -e '/^dynamic_batching {/,/^}/d' -e '/^parameters {/,/^}/d' -e '/^instance_group \[/,/^\]/d' \
      "$source/config.pbtxt" > "$WORK/repo/$1/config.pbtxt"
  # One instance each: "off" runs one request at a time, "on" one batch at a time.
  echo "instance_group [ { count: 1 kind: KIND_CPU } ]" >> "$WORK/repo/$1/config.pbtxt"
  echo "$4" >> "$WORK/repo/$1/config.pbtxt"
}
ON='dynamic_batching { max_queue_delay_microseconds: 200 }'
MODELS=(mlp cnn)
model mlp_off examples/model_repository/mlp 64 ''
model mlp_on examples/model_repository/mlp 64 "$ON"
model cnn_off examples/model_repository/cnn 64 ''
model cnn_on examples/model_repository/cnn 64 "$ON"
# ResNet-50 from the model zoo (python3 scripts/model_zoo.py fetch), when present.
if [ -f models/zoo/resnet50/1/model.onnx ]; then
  MODELS+=(resnet50)
  model resnet50_off models/zoo/resnet50 16 ''
  model resnet50_on models/zoo/resnet50 16 'dynamic_batching { max_queue_delay_microseconds: 5000 }'
fi

start_server --engine onnxruntime

stat() { curl -s "http://$HTTP/v2/models/$1/stats" | python3 -c '
import json,sys; s=json.load(sys.stdin)["model_stats"][0]; print(s["inference_count"], s["execution_count"])'; }

echo "| model | batching | concurrency | throughput (infer/s) | p50 (µs) | p99 (µs) | mean batch |"
echo "|---|---|---:|---:|---:|---:|---:|"
for m in "${MODELS[@]}"; do
  for mode in off on; do
    for c in 1 4 16 64; do
      read -r rows0 exec0 < <(stat "${m}_$mode")
      "$PA" -m "${m}_$mode" -i grpc -u "$GRPC" --concurrency-range "$c:$c" \
        --measurement-interval "$MEASURE_MS" --max-trials 3 --stability-percentage 1000 \
        -f "$WORK/pa.csv" > "$WORK/pa.log" 2>&1 || { cat "$WORK/pa.log"; exit 1; }
      read -r rows1 exec1 < <(stat "${m}_$mode")
      python3 - "$WORK/pa.csv" "$m" "$mode" "$c" $((rows1 - rows0)) $((exec1 - exec0)) <<'PY'
import csv, sys
row = next(csv.DictReader(open(sys.argv[1])))
rows, execs = int(sys.argv[5]), max(int(sys.argv[6]), 1)
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {float(row['Inferences/Second']):.0f} | "
      f"{row['p50 latency']} | {row['p99 latency']} | {rows / execs:.1f} |")
PY
    done
  done
done
