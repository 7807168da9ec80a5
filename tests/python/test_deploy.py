"""The shipped monitoring in deploy/: Prometheus rules and their promtool unit tests, the Grafana
dashboard, and that every metric they query is one the real server exports (docs/monitoring.md).

promtool (Debian: `apt-get install prometheus`) is skipped when missing, unless
RTSERVE_CI_REQUIRE_PROMTOOL is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_text import samples

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rtserve.rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "rtserve.rules.test.yml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "rtserve-dashboard.json"

# Grafana variables in dashboard queries, replaced by values that leave plain PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$model": ".*"}

METRIC_RE = re.compile(r"(?<![\w:])rtserve_\w+(?![\w:])")
# Triton's GPU families (crates/server/src/gpu_metrics.rs), exported only where NVML loads.
GPU_METRIC_RE = re.compile(r"(?<![\w:])nv_\w+(?![\w:])")
GPU_METRICS_SOURCE = REPO_ROOT / "crates" / "server" / "src" / "gpu_metrics.rs"
RECORDED_RE = re.compile(r"(?<![\w:])[a-zA-Z_]\w*:[\w:]+")  # level:metric:operations
QUOTED_RE = re.compile(r'"(?:[^"\\]|\\.)*"')
TYPE_RE = re.compile(r"^# TYPE (\S+) (\S+)\s*$", re.MULTILINE)

# Series names each metric type exposes (Prometheus text format and OpenMetrics, where a
# counter's TYPE line may omit `_total`).
SERIES_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}


def promtool(*args: str) -> None:
    exe = shutil.which("promtool")
    if exe is None:
        why = "promtool is not on PATH (Debian/Ubuntu: apt-get install prometheus)"
        if os.environ.get("RTSERVE_CI_REQUIRE_PROMTOOL"):
            pytest.fail(f"{why}; RTSERVE_CI_REQUIRE_PROMTOOL is set", pytrace=False)
        pytest.skip(why)
    run = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"promtool {' '.join(args)} failed:\n{run.stdout}{run.stderr}"


def rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> dict[str, str]:
    """Every panel query, by `panel_<id>_<refId>`, with Grafana's variables replaced."""
    queries = {}
    for p in dashboard()["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            queries[f"panel_{p['id']}_{t['refId']}"] = expr
    return queries


def get(url: str, data: bytes | None = None) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(urllib.request.Request(url, data=data), timeout=30) as resp:
            return resp.read().decode()
    except urllib.error.HTTPError as e:
        method = "POST" if data else "GET"
        pytest.fail(f"{method} {url}: HTTP {e.code}: {e.read().decode()[:500]}", pytrace=False)


def exported_series(exposition: str) -> set[str]:
    """Series names the `# TYPE` lines of a /metrics body announce."""
    names = set()
    for name, kind in TYPE_RE.findall(exposition):
        if kind == "counter":
            names.add(name if name.endswith("_total") else name + "_total")
        else:
            names.update(name + s for s in SERIES_SUFFIXES.get(kind, ("",)))
    return names


@pytest.fixture(scope="module")
def metrics_after_inference(rtserve) -> str:
    """/metrics after one successful inference on `cnn` (dynamic batching, slo_ms 50)."""
    tensor = {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.5] * 784}
    body = {"inputs": [tensor]}
    get(f"http://{rtserve.http_url}/v2/models/cnn/infer", json.dumps(body).encode())
    return get(f"http://{rtserve.http_url}/metrics")


def test_rules_pass_promtool_check():
    promtool("check", "rules", str(RULES))


def test_rule_unit_tests_pass():
    promtool("test", "rules", str(RULE_TESTS))


def test_dashboard_queries_are_valid_promql(tmp_path):
    records = [{"record": f"dashboard:{at}", "expr": e} for at, e in dashboard_queries().items()]
    checked = tmp_path / "dashboard.rules.yml"  # JSON is YAML
    checked.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": records}]}))
    promtool("check", "rules", str(checked))


def test_dashboard_has_the_structure_grafana_imports():
    d = dashboard()
    assert d.get("title") and d.get("uid"), "dashboard needs a title and a uid"
    schema = d.get("schemaVersion")
    assert isinstance(schema, int) and schema >= 36, f"schemaVersion {schema!r}: want an int >= 36"
    assert d.get("panels"), "dashboard has no panels"
    ids = [p.get("id") for p in d["panels"]]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), f"panel ids: {ids}"
    for p in d["panels"]:
        where = f"panel {p.get('id')} {p.get('title')!r}"
        assert p.get("type") and p.get("title"), f"{where}: needs a type and a title"
        grid = p.get("gridPos", {})
        assert all(isinstance(grid.get(k), int) for k in "hwxy"), f"{where}: gridPos {grid}"
        assert grid["x"] + grid["w"] <= 24, f"{where}: wider than Grafana's 24 columns: {grid}"
        if p["type"] == "row":
            # A row header: full width, one unit high; an expanded row's panels follow it.
            assert (grid["x"], grid["w"], grid["h"]) == (0, 24, 1), f"{where}: row gridPos {grid}"
            assert p.get("panels") == [] and p.get("collapsed") is False, f"{where}: expanded row"
            continue
        assert p.get("targets"), f"{where}: no targets"
        for t in p["targets"]:
            assert t.get("expr", "").strip() and t.get("refId"), f"{where}: target {t}"
        uid = p.get("datasource", {}).get("uid")
        assert uid == "${datasource}", f"{where}: data source {uid!r}, not the variable"
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    assert variables.get("datasource", {}).get("type") == "datasource", "no `datasource` variable"
    assert variables["datasource"].get("query") == "prometheus", variables["datasource"]
    model_query = variables.get("model", {}).get("query")
    assert model_query == "label_values(rtserve_model_loaded, model)", f"`model`: {model_query!r}"


def test_rules_and_dashboard_query_only_metrics_the_server_exports(metrics_after_inference):
    rule_list = rules()
    recorded = {r["record"] for r in rule_list if "record" in r}
    texts = list(dashboard_queries().values())
    texts += [v["query"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]
    texts += [r["expr"] for r in rule_list]
    metric_texts = texts + [a for r in rule_list for a in r.get("annotations", {}).values()]

    used = {m for t in metric_texts for m in METRIC_RE.findall(t)}
    assert used, "no rtserve_ metric found in the rules or the dashboard"
    exported = exported_series(metrics_after_inference)
    missing = sorted(used - exported)
    gpu_used = {m for t in metric_texts for m in GPU_METRIC_RE.findall(t)}
    if any(name.startswith("nv_") for name in exported):  # NVML loaded: a GPU host
        missing += sorted(gpu_used - exported)
    assert not missing, (
        f"queried but not exported by GET /metrics: {missing}\n"
        f"exported series: {sorted(exported)}"
    )
    used_records = {r for t in texts for r in RECORDED_RE.findall(QUOTED_RE.sub('""', t))}
    undefined = sorted(used_records - recorded)
    assert not undefined, f"recorded series used but not defined in {RULES.name}: {undefined}"


def test_dashboard_queries_only_gpu_metrics_the_server_defines():
    """The nv_ families exist only where NVML loads, so the server here may not export them:
    check the dashboard's names against those the server's source declares."""
    defined = set(re.findall(r'"(nv_\w+)"', GPU_METRICS_SOURCE.read_text()))
    assert defined, f"no nv_ metric name in {GPU_METRICS_SOURCE}"
    used = {m for t in dashboard_queries().values() for m in GPU_METRIC_RE.findall(t)}
    assert used, "the dashboard has no GPU panel"
    assert used <= defined, f"not defined in {GPU_METRICS_SOURCE.name}: {sorted(used - defined)}"


def test_slo_gauge_joins_the_latency_histogram(metrics_after_inference):
    """RtserveP99AboveTwiceSLO matches them on (model, version): the labels must agree."""
    text = metrics_after_inference
    slo = [s for s in samples(text, "rtserve_model_slo_seconds") if s[0].get("model") == "cnn"]
    assert len(slo) == 1 and slo[0][1] == pytest.approx(0.05), f"cnn's slo_ms is 50; got {slo}"
    versions = {
        labels.get("version")
        for labels, _ in samples(text, "rtserve_request_duration_seconds_count")
        if labels.get("model") == "cnn" and labels.get("outcome") == "success"
    }
    assert slo[0][0].get("version") in versions, (
        f"SLO gauge labels {slo[0][0]} match no successful cnn latency series (versions {versions})"
    )
