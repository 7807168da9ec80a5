#!/usr/bin/env bash
# Does `rtserve bench` measure what Triton's perf_analyzer measures? Both load the same rtserve
# server with the same closed-loop gRPC load, alternately (perf_analyzer, then rtserve bench,
# ROUNDS times), and the table gives the median of each figure over the rounds and the ratio
# rtserve bench / perf_analyzer (1.00 = same). perf_analyzer measures 3 windows of
# MEASUREMENT_MS and reports their mean; rtserve bench measures one window of the same total.
#
#   cargo build --release && bash scripts/install_perf_analyzer.sh
#   bash scripts/bench/agreement.sh [MEASUREMENT_MS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
MEASURE_MS=${1:-3000}
ROUNDS=${2:-3}
source scripts/bench/lib.sh

# One instance, no dynamic batching: every request is its own engine call.
mkdir -p "$WORK/repo/mlp/1"
cp examples/model_repository/mlp/1/model.onnx "$WORK/repo/mlp/1/"
printf 'max_batch_size = 8\n[[instance_group]]\ncount = 1\n' > "$WORK/repo/mlp/config.toml"
CASES=("mlp 1" "mlp 16")
if [ -f models/zoo/resnet50/1/model.onnx ]; then
  mkdir -p "$WORK/repo/resnet50/1"
  cp models/zoo/resnet50/1/model.onnx "$WORK/repo/resnet50/1/"
  printf 'max_batch_size = 8\n[[instance_group]]\ncount = 1\n' > "$WORK/repo/resnet50/config.toml"
  CASES+=("resnet50 1" "resnet50 4")
fi

start_server --engine onnxruntime
WINDOW_S=$(python3 -c "print(3 * $MEASURE_MS / 1000)")

pa() { # model concurrency -> "throughput p50_us p99_us"
  "$PA" -m "$1" -i grpc -u "$GRPC" --concurrency-range "$2:$2" --measurement-interval "$MEASURE_MS" \
    --max-trials 3 --stability-percentage 1000 -f "$WORK/pa.csv" > "$WORK/pa.log" 2>&1 \
    || { cat "$WORK/pa.log"; exit 1; }
  python3 -c 'import csv,sys; r=next(csv.DictReader(open(sys.argv[1])))
print(r["Inferences/Second"], r["p50 latency"], r["p99 latency"])' "$WORK/pa.csv"
}
rb() { # model concurrency -> "throughput p50_us p99_us"
  "$BIN" bench --url "grpc://$GRPC" --model "$1" --concurrency "$2" --warmup 1s \
    --duration "${WINDOW_S}s" --distinct 64 --quiet --json "$WORK/rb.json" > /dev/null
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))["steps"][0]; l=s["latency_us"]
print(s["throughput_rps"], l["p50_us"], l["p99_us"])' "$WORK/rb.json"
}

echo "| model | concurrency | infer/s PA / rb | ratio | p50 µs PA / rb | ratio | p99 µs PA / rb | ratio | ratios of throughput, round by round |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
for case in "${CASES[@]}"; do
  read -r model c <<< "$case"
  : > "$WORK/rounds"
  for _ in $(seq "$ROUNDS"); do
    echo "$(pa "$model" "$c") $(rb "$model" "$c")" >> "$WORK/rounds"
  done
  python3 - "$model" "$c" "$WORK/rounds" <<'PY'
import statistics, sys
model, c, path = sys.argv[1:]
rounds = [list(map(float, line.split())) for line in open(path)]
med = [statistics.median(r[i] for r in rounds) for i in range(6)]
pt, p50, p99, rt, r50, r99 = med
each = " ".join(f"{r[3] / r[0]:.2f}" for r in rounds)
print(f"| {model} | {c} | {pt:.1f} / {rt:.1f} | {rt / pt:.2f} | {p50:.0f} / {r50:.0f} | {r50 / p50:.2f} "
      f"| {p99:.0f} / {r99:.0f} | {r99 / p99:.2f} | {each} |")
PY
done
