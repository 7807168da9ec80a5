#!/usr/bin/env bash
# Resident memory of a server holding one model with N instances, per engine: how much each
# instance after the first costs. Run it with two binaries to compare them.
#
#   scripts/bench/instances_memory.sh MODEL.onnx [COUNTS] [ENGINES]
#   RTSERVE_BIN=/path/to/other/rtserve scripts/bench/instances_memory.sh MODEL.onnx
#
# COUNTS defaults to "1 4", ENGINES to "tract onnxruntime". Prints one line per engine and count:
# engine, instances, the seconds from start to ready, VmRSS (MiB) once ready, and VmRSS and its
# peak (VmHWM) after `rtserve bench` kept 2×N requests in flight for SECS seconds (default 3), so
# that every instance has run. The model gets `instance_group { count: N }` and one intra-op
# thread per instance (so ONNX Runtime's thread pools do not blur the figure).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/lib.sh
MODEL=${1:?usage: instances_memory.sh MODEL.onnx [COUNTS] [ENGINES]}
COUNTS=${2:-1 4}
ENGINES=${3:-tract onnxruntime}
SECS=${SECS:-3}
mib() { awk -v k="$1:" '$1 == k { printf "%.1f", $2 / 1024 }' "/proc/$SERVER/status"; }
mkdir -p "$WORK/repo/m/1"
cp "$MODEL" "$WORK/repo/m/1/model.onnx"
printf 'engine\tinstances\tready_s\tready_rss_mib\tloaded_rss_mib\tpeak_rss_mib\n'
for engine in $ENGINES; do
  for count in $COUNTS; do
    cat > "$WORK/repo/m/config.pbtxt" <<CONFIG
name: "m"
instance_group { count: $count kind: KIND_CPU }
parameters { key: "intra_op_threads" value: { string_value: "1" } }
CONFIG
    started=$(date +%s.%N)
    start_server --engine "$engine"
    ready=$(date +%s.%N)
    ready_rss=$(mib VmRSS)
    "$BIN" bench --url "http://$HTTP" --model m --concurrency $((2 * count)) --duration "${SECS}s" \
      --quiet > "$WORK/bench.log" 2>&1 || { cat "$WORK/bench.log"; exit 1; }
    printf '%s\t%s\t%.1f\t%s\t%s\t%s\n' "$engine" "$count" "$(echo "$ready - $started" | bc -l)" \
      "$ready_rss" "$(mib VmRSS)" "$(mib VmHWM)"
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=
  done
done
