"""Triton's perf_analyzer drives rtserve unchanged: HTTP, gRPC and gRPC streaming.

perf_analyzer comes from scripts/install_perf_analyzer.sh (.ci/run installs it); the test is
skipped where it is missing. Each run is short and bounded: one concurrency level, a 1 s
measurement window, a hard timeout.
"""

import csv
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PERF_ANALYZER = Path(os.environ.get("PERF_ANALYZER", ROOT / ".tools/perf_analyzer/perf_analyzer"))

pytestmark = pytest.mark.skipif(
    not PERF_ANALYZER.exists(), reason="perf_analyzer not installed (scripts/install_perf_analyzer.sh)"
)


@pytest.mark.parametrize(
    "model,protocol,extra",
    [
        ("mlp", "http", []),
        # Random data may hold NaN, which JSON cannot carry (rtserve answers 400): use zeros.
        ("mlp", "http", ["--input-tensor-format", "json", "--output-tensor-format", "json", "--input-data", "zero"]),
        ("cnn", "grpc", []),
        ("two_io", "grpc", ["--streaming"]),
    ],
)
def test_perf_analyzer_measures(rtserve, tmp_path, model, protocol, extra):
    url = rtserve.http_url if protocol == "http" else rtserve.grpc_url
    report = tmp_path / "report.csv"
    command = [
        str(PERF_ANALYZER), "-m", model, "-i", protocol, "-u", url,
        "--concurrency-range", "2:2", "--measurement-interval", "1000",
        "--max-trials", "5", "--stability-percentage", "100", "-f", str(report), *extra,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = list(csv.DictReader(report.open()))
    assert len(rows) == 1, rows
    assert float(rows[0]["Inferences/Second"]) > 0
    # perf_analyzer reads rtserve's statistics endpoint and splits the server-side time.
    assert "Server:" in result.stdout, result.stdout
    assert int(rows[0]["Server Compute Infer"]) > 0, rows[0]
    assert "Server Queue" in rows[0], rows[0]
