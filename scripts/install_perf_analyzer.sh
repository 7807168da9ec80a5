#!/usr/bin/env bash
# Installs Triton's perf_analyzer into .tools/perf_analyzer/ (see ../shared/PEERS.md):
# the binary from the tritonclient 2.51.0 wheel, libb64 from Debian, libcudart from PyPI
# (loaded, never used, on a machine without a GPU). Prints the wrapper's path.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.tools/perf_analyzer"
if [ -x "$dest/perf_analyzer" ]; then echo "$dest/perf_analyzer"; exit 0; fi
mkdir -p "$dest/lib" && work="$(mktemp -d)" && trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: tritonclient==2.51.0 -d "$work" >&2
python3 - "$work" "$dest" <<'PY'
import glob, sys, zipfile, os
work, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{work}/tritonclient-2.51.0-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    data = z.read("tritonclient-2.51.0.data/data/bin/perf_analyzer")
path = os.path.join(dest, "perf_analyzer.bin")
open(path, "wb").write(data)
os.chmod(path, 0o755)
PY
(cd "$work" && apt-get download libb64-0d >&2 && dpkg -x libb64-0d_*.deb "$work/b64")
cp "$work"/b64/usr/lib/*/libb64.so.0d* "$dest/lib/"
python3 -m pip install -q --target "$work/cuda" nvidia-cuda-runtime-cu12 >&2
cp "$(find "$work/cuda" -name 'libcudart.so.12*' | head -n 1)" "$dest/lib/libcudart.so.12"
cat > "$dest/perf_analyzer" <<'SH'
#!/usr/bin/env bash
here="$(cd "$(dirname "$0")" && pwd)"
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/perf_analyzer.bin" "$@"
SH
chmod +x "$dest/perf_analyzer"
echo "$dest/perf_analyzer"
