#!/usr/bin/env bash
# Overload benchmark: ResNet-50 (model zoo) on ONNX Runtime, one instance, no batching (the model
# is compute-bound: batching does not raise its throughput on a CPU). First its capacity, closed
# loop; then an open loop (Poisson arrivals, latency from the scheduled send) at 2x capacity,
# with an SLO (slo_ms) and without one. Prints one Markdown table.
#
#   cargo build --release && python3 scripts/model_zoo.py fetch
#   bash scripts/bench/overload.sh [SLO_MS] [DURATION]
set -euo pipefail
cd "$(dirname "$0")/../.."
SLO_MS=${1:-250}
DURATION=${2:-20s}
source scripts/bench/lib.sh
[ -f models/zoo/resnet50/1/model.onnx ] || { echo "run: python3 scripts/model_zoo.py fetch" >&2; exit 1; }

for variant in slo noslo; do
  mkdir -p "$WORK/repo/resnet50_$variant/1"
  cp models/zoo/resnet50/1/model.onnx "$WORK/repo/resnet50_$variant/1/"
  sed -e "s/^name: \"resnet50\"/name: \"resnet50_$variant\"/" -e '/^dynamic_batching {/,/^}/d' \
      -e '/^parameters {/,/^}/d' -e '/^instance_group \[/,/^\]/d' \
      models/zoo/resnet50/config.pbtxt > "$WORK/repo/resnet50_$variant/config.pbtxt"
  echo "instance_group [ { count: 1 kind: KIND_CPU } ]" >> "$WORK/repo/resnet50_$variant/config.pbtxt"
done
echo "parameters { key: \"slo_ms\" value: { string_value: \"$SLO_MS\" } }" >> "$WORK/repo/resnet50_slo/config.pbtxt"

start_server --engine onnxruntime

bench() { # model json-out load-flags...
  local model=$1 out=$2; shift 2
  "$BIN" bench --url "http://$HTTP" --model "$model" --warmup 3s --duration "$DURATION" \
    --server-pid "$SERVER" --quiet --json "$out" "$@" > /dev/null
}
bench resnet50_noslo "$WORK/capacity.json" --concurrency 2
CAPACITY=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["steps"][0]["throughput_rps"])' "$WORK/capacity.json")
RATE=$(python3 -c "print(round(2 * $CAPACITY, 1))")
bench resnet50_slo "$WORK/slo.json" --rate "$RATE"
bench resnet50_noslo "$WORK/noslo.json" --rate "$RATE"

python3 - "$SLO_MS" "$WORK/capacity.json" "$WORK/slo.json" "$WORK/noslo.json" <<'PY'
import json, sys
slo = sys.argv[1]
print("| run | offered (req/s) | accepted (req/s) | p50 (ms) | p99 (ms) | max (ms) | 429 | 429 p50 / p99 (µs) | timeouts (10 s) | server queue (ms) | send lag p99 (ms) | peak RSS (MiB) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for label, path in [("capacity, closed loop c=2", sys.argv[2]), (f"2x capacity, slo_ms {slo}", sys.argv[3]),
                    ("2x capacity, no SLO", sys.argv[4])]:
    s = json.load(open(path))["steps"][0]
    lat, rej = s["latency_us"] or {}, s["rejected_latency_us"] or {}
    ms = lambda v: "-" if v is None else f"{v / 1000:.0f}"
    offered = s.get("offered_rps")
    queue = (s.get("server") or {}).get("queue_us")
    rss = s.get("server_peak_rss_bytes")
    print(f"| {label} | {'-' if offered is None else f'{offered:.1f}'} | {s['throughput_rps']:.1f} | "
          f"{ms(lat.get('p50_us'))} | {ms(lat.get('p99_us'))} | {ms(lat.get('max_us'))} | "
          f"{s['errors']['rejected_429']} | {rej.get('p50_us', '-')} / {rej.get('p99_us', '-')} | "
          f"{s['errors']['timeout']} | "
          f"{ms(queue)} | {ms((s.get('send_lag_us') or {}).get('p99_us'))} | "
          f"{'-' if rss is None else f'{rss / 2**20:.0f}'} |")
PY
