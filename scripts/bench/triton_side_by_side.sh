#!/usr/bin/env bash
# rtserve beside real NVIDIA Triton (2.51.0, from nvidia-pytriton 0.7.0, on the CPU) on the same
# machine, loaded by the same generator (Triton's perf_analyzer, batch-1 requests of random FP32,
# binary tensors over HTTP, and gRPC): the MLP 784-512-256-10 on ONNX Runtime with one intra-op
# thread, max_batch_size 16 and dynamic batching with a 2 ms maximum queue delay on both servers,
# plus rtserve without batching. Triton runs the model as a Python function calling ONNX Runtime
# (PyTriton's bundle has no native ONNX Runtime backend; scripts/bench/triton/serve_mlp.py).
#
# Concurrency 1 and 16; the servers take turns at every step (rtserve, Triton, rtserve unbatched,
# then the next step, ROUNDS rounds), so that the machine's noise falls on all of them. Each step
# measures SECONDS: perf_analyzer's 3 windows of SECONDS/3 (their mean is its figure). The table
# gives, per row, the median over the rounds, and the inferences/s of each round. "Server CPU per
# request" is the CPU time (user + system, /proc/PID/stat) of the server's processes over the
# requests they answered (rtserve: rtserve_requests_total; Triton: the model's statistics,
# success + fail), both taken around the step, perf_analyzer's ramp-up included. For Triton the
# processes are the whole tree: the PyTriton Python process (where ONNX Runtime runs), tritonserver,
# and its Python backend stub and their children.
#
# Benchmarks only, run by hand (never in CI):
#   cargo build --release && bash scripts/install_perf_analyzer.sh
#   python3 -m venv scripts/bench/triton/.venv      # Python 3.11, once
#   scripts/bench/triton/.venv/bin/pip install -r scripts/bench/triton/requirements.txt
#   bash scripts/bench/triton_side_by_side.sh [SECONDS]    # default 5; ROUNDS=2; RTSERVE_BIN=...
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-5}
ROUNDS=${ROUNDS:-2}
TRITON_PY=${TRITON_PYTHON:-scripts/bench/triton/.venv/bin/python}
source scripts/bench/lib.sh
[ -x "$PA" ] || { echo "no perf_analyzer at $PA: bash scripts/install_perf_analyzer.sh" >&2; exit 1; }
[ -x "$TRITON_PY" ] || { echo "no $TRITON_PY: see scripts/bench/triton/requirements.txt" >&2; exit 1; }

TRITON=
cleanup() {
  local pids=()
  for p in $SERVER $TRITON; do kill -TERM "$p" 2>/dev/null && pids+=("$p"); done
  for _ in $(seq 100); do # PyTriton stops tritonserver and cleans its workspace on SIGTERM (~3 s)
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  if [ -n "$TRITON" ]; then # whatever is left of Triton's tree
    for p in $(descendants "$TRITON") $TRITON; do kill -KILL "$p" 2>/dev/null || true; done
  fi
  kill -KILL $SERVER 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

descendants() { # pid -> its descendants' pids, from /proc
  python3 - "$1" <<'PY'
import os, sys
parent = {}
for d in os.listdir("/proc"):
    if d.isdigit():
        try:
            stat = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        parent[int(d)] = int(stat[stat.rindex(")") + 2:].split()[1])
todo, out = [int(sys.argv[1])], []
while todo:
    p = todo.pop()
    kids = [c for c, pp in parent.items() if pp == p]
    out += kids
    todo += kids
print(" ".join(map(str, out)))
PY
}
ticks=$(getconf CLK_TCK)
cpu_s() { # pids... -> their CPU seconds (user + system, all threads)
  for p in "$@"; do cat "/proc/$p/stat" 2>/dev/null || true; done |
    awk -v t="$ticks" '{ sub(/^.*\) /, ""); s += $12 + $13 } END { print s / t }'
}

# rtserve: the batched MLP as "mlp" (as Triton's), and an unbatched copy.
model() { # name config-lines...
  mkdir -p "$WORK/repo/$1/1"
  cp examples/model_repository/mlp/1/model.onnx "$WORK/repo/$1/1/"
  local name=$1
  shift
  printf '%s\n' "$@" > "$WORK/repo/$name/config.toml"
}
model mlp 'max_batch_size = 16' '[dynamic_batching]' 'max_queue_delay_microseconds = 2000'
model mlp_unbatched 'max_batch_size = 16'
start_server --engine onnxruntime --drain-seconds 0
[ -n "$HTTP" ] && [ -n "$GRPC" ] || { cat "$WORK/server.log"; exit 1; }

# Triton, on two free loopback ports.
read -r T_HTTP_PORT T_GRPC_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
"$TRITON_PY" scripts/bench/triton/serve_mlp.py --http-port "$T_HTTP_PORT" --grpc-port "$T_GRPC_PORT" \
  > "$WORK/triton.out" 2> "$WORK/triton.log" &
TRITON=$!
for _ in $(seq 1200); do
  grep -q '^READY' "$WORK/triton.out" && break
  kill -0 $TRITON 2>/dev/null || break
  sleep 0.1
done
grep -q '^READY' "$WORK/triton.out" || { echo "Triton did not start:" >&2; tail -30 "$WORK/triton.log" >&2; exit 1; }
T_HTTP=127.0.0.1:$T_HTTP_PORT
T_GRPC=127.0.0.1:$T_GRPC_PORT
TRITON_VERSION=$(curl -s "http://$T_HTTP/v2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')

answered() { # target -> requests its server answered for the model
  case $1 in
    triton)
      curl -s "http://$T_HTTP/v2/models/mlp/stats" | python3 -c '
import json, sys
s = json.load(sys.stdin)["model_stats"][0]["inference_stats"]
print(s["success"]["count"] + s["fail"]["count"])' ;;
    *)
      local m=mlp; [ "$1" = rtserve_unbatched ] && m=mlp_unbatched
      curl -s "http://$HTTP/metrics" |
        awk -v m="model=\"$m\"" '/^rtserve_requests_total/ && index($0, m) { s += $NF } END { print s + 0 }' ;;
  esac
}
server_pids() { # target -> the pids whose CPU counts
  if [ "$1" = triton ]; then echo "$TRITON $(descendants "$TRITON")"; else echo "$SERVER"; fi
}
pa() { # target protocol concurrency interval_ms -> "infer/s p50_us p99_us cpu_us_per_request"
  local model=mlp url
  case $1/$2 in
    triton/http) url=$T_HTTP ;;
    triton/grpc) url=$T_GRPC ;;
    */http) url=$HTTP ;;
    */grpc) url=$GRPC ;;
  esac
  [ "$1" = rtserve_unbatched ] && model=mlp_unbatched
  local pids cpu0 n0 cpu1 n1
  pids=$(server_pids "$1")
  # shellcheck disable=SC2086
  cpu0=$(cpu_s $pids); n0=$(answered "$1")
  "$PA" -m "$model" -i "$2" -u "$url" --concurrency-range "$3:$3" --measurement-interval "$4" \
    --max-trials 3 --stability-percentage 1000 -f "$WORK/pa.csv" > "$WORK/pa.log" 2>&1 \
    || { echo "perf_analyzer failed against $1 ($2):" >&2; cat "$WORK/pa.log" >&2; exit 1; }
  # shellcheck disable=SC2086
  cpu1=$(cpu_s $pids); n1=$(answered "$1")
  python3 - "$WORK/pa.csv" "$cpu0" "$cpu1" "$n0" "$n1" <<'PY'
import csv, sys
row = next(csv.DictReader(open(sys.argv[1])))
cpu0, cpu1, n0, n1 = map(float, sys.argv[2:])
print(row["Inferences/Second"], row["p50 latency"], row["p99 latency"], (cpu1 - cpu0) / max(n1 - n0, 1) * 1e6)
PY
}

# Warm-up: a short run against each, not reported.
for t in rtserve triton rtserve_unbatched; do pa "$t" http 16 300 > /dev/null; pa "$t" grpc 16 300 > /dev/null; done

INTERVAL_MS=$((SECS * 1000 / 3))
: > "$WORK/results"
started=$(date +%s)
for round in $(seq "$ROUNDS"); do
  for protocol in http grpc; do
    for c in 1 16; do
      for t in rtserve triton rtserve_unbatched; do
        out=$(pa "$t" "$protocol" "$c" "$INTERVAL_MS")
        echo "$t $protocol $c $round $out" >> "$WORK/results"
      done
    done
  done
done

echo "Triton $TRITON_VERSION (PyTriton, Python model calling ONNX Runtime) and rtserve $("$BIN" --version 2>/dev/null | awk '{print $NF}') (--engine onnxruntime);" \
  "perf_analyzer, ${SECS} s per step, $ROUNDS rounds, $(($(date +%s) - started)) s of steps; load average $(cut -d' ' -f1-3 /proc/loadavg)."
echo
python3 - "$WORK/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    t, protocol, c, _round, *v = line.split()
    rows.setdefault((t, protocol, int(c)), []).append(list(map(float, v)))
names = {
    "rtserve": "rtserve (batching 16, 2 ms)",
    "triton": "Triton (batching 16, 2 ms)",
    "rtserve_unbatched": "rtserve (no batching)",
}
print("| server | protocol | concurrency | inferences/s | p50 (µs) | p99 (µs) | server CPU per request (µs) | inferences/s by round |")
print("|---|---|---:|---:|---:|---:|---:|---|")
for protocol in ("http", "grpc"):
    for c in (1, 16):
        for t in names:
            r = rows[(t, protocol, c)]
            rps, p50, p99, cpu = (statistics.median(x[i] for x in r) for i in range(4))
            each = " / ".join(f"{x[0]:.0f}" for x in r)
            print(f"| {names[t]} | {protocol} | {c} | {rps:.0f} | {p50:.0f} | {p99:.0f} | {cpu:.0f} | {each} |")
PY
