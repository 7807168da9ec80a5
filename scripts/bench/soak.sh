#!/usr/bin/env bash
# Soak: mixed traffic for --minutes (default 10) against one server, its resident memory sampled
# every 10 s. Traffic, from 4 client threads over HTTP and 1 over gRPC: cache hits (one input
# repeated) and misses (fresh random inputs; the local cache is kept small so that it fills and evicts) on a caching
# MLP, an uncached MLP, bad requests (wrong shape 400, unknown model 404, a body over
# --max-request-bytes 413, no body at all 400) and a reload of the uncached model
# (POST /v2/repository/models/NAME/load) every --reload-seconds (default 15; 0: none). The server runs with --access-log, whose
# lines are counted as a cross-check of the client's statuses.
#
# After a warm-up (the first fifth of the run, at least 1 minute) it fits a least-squares line to
# the RSS samples and fails when the slope is above --max-slope KiB/min (default 256) or when any
# request got a 5xx or an unexpected status. Prints the samples, the counts and the slope.
#
#   cargo build --release -p rtserve --bin rtserve      # or RTSERVE_BIN=target/debug/rtserve
#   bash scripts/bench/soak.sh [--minutes N] [--max-slope KIB_PER_MIN] [--reload-seconds S]
set -euo pipefail
cd "$(dirname "$0")/../.."
MINUTES=10
MAX_SLOPE=256
RELOAD_SECONDS=15
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) MINUTES=$2; shift 2 ;;
    --max-slope) MAX_SLOPE=$2; shift 2 ;;
    --reload-seconds) RELOAD_SECONDS=$2; shift 2 ;;
    *) echo "usage: $0 [--minutes N] [--max-slope KIB_PER_MIN] [--reload-seconds S]" >&2; exit 2 ;;
  esac
done
source scripts/bench/lib.sh

LIMIT=1048576
for variant in cached plain; do
  mkdir -p "$WORK/repo/mlp_$variant/1"
  cp examples/model_repository/mlp/1/model.onnx "$WORK/repo/mlp_$variant/1/"
  sed -e "s/^name: \"mlp\"/name: \"mlp_$variant\"/" examples/model_repository/mlp/config.pbtxt \
    > "$WORK/repo/mlp_$variant/config.pbtxt"
done
echo 'response_cache { enable: true }' >> "$WORK/repo/mlp_cached/config.pbtxt"

# A small local cache (256 KiB of outputs, some 6,500 MLP replies), so that misses fill it within
# the warm-up and eviction runs for the rest of the soak.
start_server --access-log --cache-bytes 262144 --max-request-bytes "$LIMIT" --engine tract
[ -n "$HTTP" ] || { cat "$WORK/server.log"; exit 1; }
echo "rtserve $("$BIN" --version) pid $SERVER, HTTP $HTTP, gRPC $GRPC, $MINUTES min, $(nproc) cores"

python3 - "$HTTP" "$GRPC" "$SERVER" "$MINUTES" "$MAX_SLOPE" "$LIMIT" "$WORK/server.log" "$RELOAD_SECONDS" <<'PY'
import collections, json, random, re, sys, threading, time, urllib.error, urllib.request

import numpy as np
import tritonclient.grpc as grpcclient

http, grpc, pid, minutes, max_slope, limit, log_path, reload_seconds = sys.argv[1:]
minutes, max_slope, limit, reload_seconds = float(minutes), float(max_slope), int(limit), float(reload_seconds)
end = time.monotonic() + minutes * 60
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
counts = collections.Counter()  # (kind, status)
unexpected = collections.Counter()
lock = threading.Lock()
EXPECTED = {"hit": 200, "miss": 200, "plain": 200, "grpc": 200, "reload": 200,
            "wrong_shape": 400, "unknown_model": 404, "too_large": 413, "empty": 400}


def body(values):
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784],
                                   "data": values}]}).encode()


HIT = body([0.5] * 784)


def post(path, data):
    request = urllib.request.Request(f"http://{http}{path}", data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with opener.open(request, timeout=60) as reply:
            reply.read()
            return reply.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code
    except OSError as e:  # a broken pipe or reset would be a failure of its own
        return f"error: {e}"


def record(kind, status):
    with lock:
        counts[(kind, status)] += 1
        if status != EXPECTED[kind]:
            unexpected[(kind, status)] += 1


def http_client(seed):
    rng = random.Random(seed)
    while time.monotonic() < end:
        kind = rng.choices(["hit", "miss", "plain", "wrong_shape", "unknown_model", "too_large", "empty"],
                           [40, 25, 20, 5, 5, 3, 2])[0]
        if kind == "hit":
            status = post("/v2/models/mlp_cached/infer", HIT)
        elif kind == "miss":
            status = post("/v2/models/mlp_cached/infer", body([rng.random() for _ in range(784)]))
        elif kind == "plain":
            status = post("/v2/models/mlp_plain/infer", body([rng.random() for _ in range(784)]))
        elif kind == "wrong_shape":
            data = json.loads(HIT)
            data["inputs"][0]["shape"] = [1, 783]
            status = post("/v2/models/mlp_plain/infer", json.dumps(data).encode())
        elif kind == "unknown_model":
            status = post("/v2/models/no_such_model/infer", HIT)
        elif kind == "too_large":
            status = post("/v2/models/mlp_plain/infer", b" " * (limit + 4096))
        else:
            status = post("/v2/models/mlp_plain/infer", b"")
        record(kind, status)


def grpc_client():
    client = grpcclient.InferenceServerClient(url=grpc)
    rng = np.random.default_rng(7)
    while time.monotonic() < end:
        tensor = grpcclient.InferInput("input", [1, 784], "FP32")
        tensor.set_data_from_numpy(rng.random((1, 784), dtype=np.float32))
        try:
            client.infer("mlp_cached", [tensor])
            record("grpc", 200)
        except Exception as e:  # tritonclient raises InferenceServerException with the status
            record("grpc", f"error: {e}")


def reloader():
    while reload_seconds > 0 and time.monotonic() + reload_seconds < end:
        time.sleep(reload_seconds)
        record("reload", post("/v2/repository/models/mlp_plain/load", b""))


def rss_kib():
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+) kB", status.read()).group(1))


threads = [threading.Thread(target=http_client, args=(i,)) for i in range(4)]
threads += [threading.Thread(target=grpc_client), threading.Thread(target=reloader)]
start = time.monotonic()
for thread in threads:
    thread.start()
samples = []
while time.monotonic() < end:
    samples.append(((time.monotonic() - start) / 60, rss_kib()))
    print(f"  {samples[-1][0]:5.1f} min  RSS {samples[-1][1] / 1024:7.1f} MiB  "
          f"requests {sum(counts.values())}", flush=True)
    time.sleep(max(0.0, min(10.0, end - time.monotonic())))
for thread in threads:
    thread.join()
samples.append(((time.monotonic() - start) / 60, rss_kib()))

warm_up = max(1.0, minutes / 5)
steady = [(t, r) for t, r in samples if t >= warm_up]
slope = float(np.polyfit([t for t, _ in steady], [r for _, r in steady], 1)[0]) if len(steady) >= 3 else float("nan")
total = sum(counts.values())
print(f"\nrequests: {total} in {minutes:g} min ({total / (minutes * 60):.0f}/s)")
for (kind, status), n in sorted(counts.items(), key=str):
    print(f"  {kind:14} {status!s:>6}  {n}")
logged = collections.Counter()
with open(log_path) as log:
    for line in log:
        match = re.search(r"rtserve::access: access .* status=(\d+|\w+) ", line)
        if match:
            logged[match.group(1)[0] + "xx" if match.group(1).isdigit() else match.group(1)] += 1
print(f"access log: {sum(logged.values())} lines, by status {dict(sorted(logged.items()))}")
print(f"RSS: {steady[0][1] / 1024 if steady else float('nan'):.1f} MiB after the {warm_up:g} min warm-up, "
      f"{samples[-1][1] / 1024:.1f} MiB at the end, peak {max(r for _, r in samples) / 1024:.1f} MiB")
print(f"RSS slope after warm-up: {slope:+.1f} KiB/min (bound {max_slope:g})")
failures = []
if not slope <= max_slope:
    failures.append(f"RSS grows by {slope:.1f} KiB/min after warm-up (bound {max_slope:g})")
if unexpected:
    failures.append(f"unexpected statuses: {dict(unexpected)}")
if logged.get("5xx"):
    failures.append(f"{logged['5xx']} 5xx replies in the access log")
if failures:
    print("FAIL: " + "; ".join(failures))
    sys.exit(1)
print("PASS: memory flat, no 5xx, every status as expected")
PY
