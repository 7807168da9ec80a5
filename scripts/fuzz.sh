#!/usr/bin/env bash
# Builds rtserve's fuzz targets (fuzz/, cargo-fuzz, nightly), replays every past crash
# (fuzz/regressions/<target>/), then fuzzes each target for a bounded time from the seed corpora
# (fuzz/seeds/<target>/, the example models) and the corpus kept from earlier runs
# (fuzz/corpus/<target>/, not committed). CI and people run the same thing:
#
#   scripts/fuzz.sh                          # every target, 20 s each
#   scripts/fuzz.sh --seconds 600 http_infer # one target, longer
#   scripts/fuzz.sh --dev --sanitizer none --seconds 10   # what CI runs (.ci/run)
#
# Options: --seconds N per target (default 20); --sanitizer address|none (default address:
# heap overflows and use-after-free are found as crashes; none builds and runs several times
# faster); --dev builds the dev profile (a fraction of the release build's time; overflow checks
# and debug assertions on, so an arithmetic overflow is a crash too; fewer executions a second).
# Limits: one input may take at most 20 s, 2 GiB of memory in all and 1 GiB in one allocation;
# going past one is a crash (a decoder that allocates from an untrusted length is a bug).
# Ends with a table of executions per target; exits non-zero on any crash, leaving the input in
# fuzz/artifacts/<target>/. Needs `cargo +nightly` and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=20
sanitizer=address
profile=()
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --sanitizer) sanitizer="$2"; shift 2 ;;
        --dev) profile=(--dev); shift ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# One build for every target (they share all dependencies).
cargo +nightly fuzz build "${profile[@]}" --sanitizer "$sanitizer"

limits=(-timeout=20 -rss_limit_mb=2048 -malloc_limit_mb=1024)
summary=()
for target in "${targets[@]}"; do
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    if [ "$target" = onnx_model ]; then
        # The example models as seeds too (the 2 MB mlp left out: it only slows each run).
        find examples -name '*.onnx' -size -500k -exec cp -n {} "$corpus/" \;
    elif [ "$target" = tflite_model ]; then
        find examples -name '*.tflite' -size -500k -exec cp -n {} "$corpus/" \;
    fi
    regressions=()
    if [ -d "fuzz/regressions/$target" ]; then
        mapfile -t regressions < <(find "fuzz/regressions/$target" -type f | sort)
    fi
    if [ ${#regressions[@]} -gt 0 ]; then
        echo "== $target: replaying ${#regressions[@]} past crash(es)"
        # Files only (no corpus folder): libFuzzer runs each once and stops.
        cargo +nightly fuzz run "${profile[@]}" --sanitizer "$sanitizer" "$target" "${regressions[@]}" -- "${limits[@]}"
    fi
    echo "== $target: fuzzing for $seconds s"
    log="$(mktemp)"
    status=0
    cargo +nightly fuzz run "${profile[@]}" --sanitizer "$sanitizer" "$target" "$corpus" "fuzz/seeds/$target" -- \
        "${limits[@]}" -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?
    # libFuzzer's progress lines (#N ...) left out.
    grep -v '^#[0-9]' "$log" | tail -n 80
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rm -f "$log"
    summary+=("$(printf '%-18s %12s runs in %ss, corpus %s inputs' "$target" "${runs:-?}" "$seconds" \
        "$(find "$corpus" -type f | wc -l)")")
    if [ "$status" -ne 0 ]; then
        echo "fuzz.sh: $target crashed; the input is in fuzz/artifacts/$target/" >&2
        printf '%s\n' "${summary[@]}"
        exit "$status"
    fi
done
echo "== executions per target ($sanitizer sanitizer)"
printf '%s\n' "${summary[@]}"
