#!/usr/bin/env bash
# Stages rtserve into PREFIX, the tree the container image ships (deploy/container/Dockerfile runs
# this in its build stage; CI runs it natively, .ci/run, and tests the result,
# tests/python/test_container.py):
#
#   PREFIX/bin/rtserve           the server, built with cargo (--locked)
#   PREFIX/bin/healthcheck       GET /v2/health/ready in plain bash (the image's HEALTHCHECK)
#   PREFIX/lib/libonnxruntime*   ONNX Runtime's shared library, taken from its PyPI wheel at the
#                                pin in tests/python/requirements.txt (no Python at run time)
#   PREFIX/models/               the example model repository (examples/model_repository)
#
# Usage: deploy/container/build.sh [--profile PROFILE] PREFIX
#   --profile   cargo profile (default: $RTSERVE_BUILD_PROFILE, else release; CI uses dev)
# Needs cargo, python3 with pip (to download the wheel) and unzip. PREFIX must be absent or empty,
# so that nothing stale (an older ONNX Runtime library, a removed model) is shipped.
set -euo pipefail

usage() {
    echo "usage: $0 [--profile PROFILE] PREFIX" >&2
    exit 2
}

profile="${RTSERVE_BUILD_PROFILE:-release}"
prefix=""
while (($#)); do
    case "$1" in
        --profile)
            (($# >= 2)) || usage
            profile="$2"
            shift 2
            ;;
        -h | --help) usage ;;
        -*)
            echo "build.sh: unknown option $1" >&2
            usage
            ;;
        *)
            [[ -z "$prefix" ]] || usage
            prefix="$1"
            shift
            ;;
    esac
done
[[ -n "$prefix" ]] || usage

repo="$(cd "$(dirname "$0")/../.." && pwd)"
for tool in cargo python3 unzip; do
    command -v "$tool" >/dev/null || {
        echo "build.sh: $tool is not on PATH (needed to stage rtserve)" >&2
        exit 1
    }
done
if [[ -e "$prefix" && -n "$(ls -A "$prefix")" ]]; then
    echo "build.sh: $prefix exists and is not empty; remove it first" >&2
    exit 1
fi
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"

# The ONNX Runtime pin is the one the Python tests use: one place to bump it.
requirements="$repo/tests/python/requirements.txt"
ort_requirement="$(grep -E '^onnxruntime==' "$requirements" || true)"
if [[ $(wc -l <<<"$ort_requirement") -ne 1 || -z "$ort_requirement" ]]; then
    echo "build.sh: want exactly one 'onnxruntime==...' line in $requirements" >&2
    exit 1
fi

echo "build.sh: cargo build (profile $profile)" >&2
# The three libraries are named only so that their `default` feature is on, as in a workspace
# build: with `-p rtserve` alone they are built without it, which is a different build of each
# (CI's test build came before this one and 48 s of it was redone for that alone).
cargo build --manifest-path "$repo/Cargo.toml" --locked --profile "$profile" \
    -p rtserve -p rtserve-engines -p rtserve-server -p rtserve-optimize --bin rtserve
# Cargo writes the dev profile to target/debug, every other profile to target/<name>.
profile_dir="$profile"
[[ "$profile" != dev ]] || profile_dir=debug
binary="${CARGO_TARGET_DIR:-$repo/target}/$profile_dir/rtserve"
install -D -m 0755 "$binary" "$prefix/bin/rtserve"
install -D -m 0755 "$repo/deploy/container/healthcheck" "$prefix/bin/healthcheck"

echo "build.sh: ONNX Runtime library from the $ort_requirement wheel" >&2
wheels="$(mktemp -d)"
trap 'rm -rf "$wheels"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$wheels" "$ort_requirement"
wheel=("$wheels"/onnxruntime-*.whl)
[[ -f "${wheel[0]}" ]] || {
    echo "build.sh: pip download left no onnxruntime wheel in $wheels" >&2
    exit 1
}
mkdir -p "$prefix/lib"
unzip -q -j "${wheel[0]}" 'onnxruntime/capi/libonnxruntime*.so*' -d "$prefix/lib"

mkdir -p "$prefix/models"
cp -R "$repo/examples/model_repository/." "$prefix/models/"

echo "build.sh: staged in $prefix:" >&2
(cd "$prefix" && find bin lib -type f | sort && du -sh bin lib models) >&2
