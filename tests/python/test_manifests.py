"""The deployment files in deploy/: the Dockerfile (hadolint), the Kubernetes and KServe manifests
(Kubernetes schemas; the custom resources against their vendored CRDs), and cross-checks that tie
them to the server: probe paths and ports, flags, the shutdown grace period, metric names.

Kubernetes objects are checked with kubernetes-validate against Kubernetes KUBERNETES_VERSION;
custom resources with jsonschema against the openAPIV3Schema of the CRDs in deploy/*/crds/, and
the Kubernetes objects they embed (the ServingRuntime's containers) against Kubernetes' own
schema of that type. All of them reject unknown fields, as `kubectl apply --validate=strict` does.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from conftest import REPO_ROOT, rtserve_binary
from test_deploy import METRIC_RE, get, promtool

KUBERNETES_VERSION = "1.30"  # the oldest release the manifests target (docs/deploy.md)
DOCKERFILE = REPO_ROOT / "deploy" / "container" / "Dockerfile"
HADOLINT_CONFIG = REPO_ROOT / ".hadolint.yaml"
K8S_DIR = REPO_ROOT / "deploy" / "kubernetes"
KSERVE_DIR = REPO_ROOT / "deploy" / "kserve"
CRD_DIRS = [K8S_DIR / "crds", KSERVE_DIR / "crds"]
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
ADAPTER_RULES = K8S_DIR / "prometheus-adapter-rules.yaml"
MONITORING_DOC = REPO_ROOT / "docs" / "monitoring.md"
# YAML files in the manifest folders that are not Kubernetes objects.
NOT_OBJECTS = {KUSTOMIZATION, ADAPTER_RULES}

DOC_METRIC_ROW_RE = re.compile(r"^\| (`rtserve_[^|]*)\|")
HISTOGRAM_SERIES_RE = re.compile(r"_(bucket|sum|count)$")
# Kubernetes types inside custom resources that their vendored CRDs leave unchecked (KServe's
# minimal CRDs, deploy/kserve/crds/README.md): (apiVersion, kind) -> {list field of spec: type}.
EMBEDDED_TYPES = {
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): {"containers": "container-v1"},
}
HELP_ENV_RE = re.compile(r"\[env: (RTSERVE_\w+)=")
HELP_FLAG_RE = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def manifest_files() -> list[Path]:
    files = sorted(K8S_DIR.glob("*.yaml")) + sorted(KSERVE_DIR.glob("*.yaml"))
    return [f for f in files if f not in NOT_OBJECTS]


def load_objects() -> list[tuple[str, dict]]:
    """(id, object) for every document of every manifest file; the id names file and object."""
    objects = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            rel = path.relative_to(REPO_ROOT)
            objects.append((f"{rel}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}", doc))
    return objects


OBJECTS = load_objects()


def find(kind: str) -> dict:
    matches = [obj for _, obj in OBJECTS if obj["kind"] == kind]
    assert len(matches) == 1, f"want exactly one {kind} in deploy/, found {len(matches)}"
    return matches[0]


def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> openAPIV3Schema, from every vendored CRD."""
    schemas = {}
    for crd_dir in CRD_DIRS:
        for path in sorted(crd_dir.glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            assert crd.get("kind") == "CustomResourceDefinition", f"{path}: not a CRD"
            spec = crd["spec"]
            for version in spec["versions"]:
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


CRD_SCHEMAS = crd_schemas()


def strict(schema: dict) -> dict:
    """The schema with unknown fields refused wherever it lists the fields, as the API server's
    strict field validation does; objects that keep unknown fields stay open."""
    schema = copy.deepcopy(schema)

    def close(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    return schema


def kubernetes_type_validator(type_file: str) -> jsonschema.Validator:
    """A validator for one Kubernetes type (e.g. `container-v1`) from kubernetes-validate's strict
    schemas, wired to their shared definitions as kubernetes_validate.validate does."""
    folder = (
        Path(kubernetes_validate.__file__).parent
        / "kubernetes-json-schema"
        / f"v{KUBERNETES_VERSION}.0-local-strict"
    )
    schema = json.loads((folder / f"{type_file}.json").read_text())
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def schema_errors(validator: jsonschema.Validator, value, prefix: str = "") -> list[str]:
    return [
        f"{'.'.join([prefix, *map(str, e.absolute_path)]).strip('.') or '(root)'}: {e.message}"
        for e in validator.iter_errors(value)
    ]


def validation_errors(obj: dict) -> list[str]:
    """Why `obj` is not a valid object (empty when it is)."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRD_SCHEMAS:
        errors = schema_errors(jsonschema.Draft7Validator(strict(CRD_SCHEMAS[key])), obj)
        for field, type_file in EMBEDDED_TYPES.get(key, {}).items():
            validator = kubernetes_type_validator(type_file)
            for i, item in enumerate(obj.get("spec", {}).get(field, [])):
                errors += schema_errors(validator, item, f"spec.{field}.{i}")
        return errors
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {key[0]} {key[1]}: vendor its CRD under deploy/*/crds/"]
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}"]
    return []


@pytest.fixture(scope="module")
def serve_help() -> str:
    run = subprocess.run(
        [str(rtserve_binary()), "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, f"rtserve serve --help failed:\n{run.stderr}"
    return run.stdout


# --------------------------------------------------------------------------
# Container image
# --------------------------------------------------------------------------


def test_dockerfile_passes_hadolint():
    exe = shutil.which("hadolint")
    assert exe, "hadolint is not on PATH: pip install -r tests/python/requirements.txt"
    run = subprocess.run(
        [exe, "--config", str(HADOLINT_CONFIG), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert run.returncode == 0, f"hadolint {DOCKERFILE.name}:\n{run.stdout}{run.stderr}"


# --------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------


@pytest.mark.parametrize("obj", [obj for _, obj in OBJECTS], ids=[i for i, _ in OBJECTS])
def test_manifest_is_valid(obj):
    errors = validation_errors(obj)
    assert not errors, "\n".join(errors)


BROKEN = {
    "Deployment: misspelt field": (
        "Deployment",
        lambda o: o["spec"]["template"]["spec"].update(terminationGracePeriodSecond=45),
    ),
    "Service: port as a string": ("Service", lambda o: o["spec"]["ports"][0].update(port="http")),
    "HPA: utilization as a string": (
        "HorizontalPodAutoscaler",
        lambda o: o["spec"]["metrics"][-1]["resource"]["target"].update(averageUtilization="70%"),
    ),
    "ServiceMonitor: misspelt field": (
        "ServiceMonitor",
        lambda o: o["spec"]["endpoints"][0].update(scrapeIntervall="15s"),
    ),
    "ServingRuntime: probe port as a list": (
        "ClusterServingRuntime",
        lambda o: o["spec"]["containers"][0]["readinessProbe"]["httpGet"].update(port=[8080]),
    ),
    "ServingRuntime: misspelt container field": (
        "ClusterServingRuntime",
        lambda o: o["spec"]["containers"][0].update(arg=["--http-port=8080"]),
    ),
    "InferenceService: misspelt top-level field": (
        "InferenceService",
        lambda o: o.update(specs=o.pop("spec")),
    ),
}


@pytest.mark.parametrize("kind, breakage", BROKEN.values(), ids=BROKEN.keys())
def test_validation_rejects_a_broken_copy(kind, breakage):
    """The validation above can fail: a copy with one mistake in it is refused."""
    broken = copy.deepcopy(find(kind))
    breakage(broken)
    assert validation_errors(broken), f"a broken {kind} passed validation"


def test_kustomization_lists_every_kubernetes_manifest():
    listed = yaml.safe_load(KUSTOMIZATION.read_text())["resources"]
    present = [f.name for f in manifest_files() if f.parent == K8S_DIR]
    assert sorted(listed) == sorted(present), (
        f"{KUSTOMIZATION.name} lists {sorted(listed)}; {K8S_DIR.name}/ has {sorted(present)}"
    )


# --------------------------------------------------------------------------
# Cross-checks against the server
# --------------------------------------------------------------------------


def config_map() -> dict[str, str]:
    return find("ConfigMap")["data"]


def rtserve_container(obj: dict) -> dict:
    spec = obj["spec"]["template"]["spec"] if obj["kind"] == "Deployment" else obj["spec"]
    names = [c["name"] for c in spec["containers"]]
    assert len(names) == 1, f"{obj['kind']}: want one container, found {names}"
    return spec["containers"][0]


def probes(container: dict) -> dict[str, dict]:
    return {
        kind: container[kind]["httpGet"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
        if kind in container
    }


def flag_values(args: list[str]) -> dict[str, str]:
    """`--flag=value` arguments by flag (the form the ServingRuntime uses)."""
    values = {}
    for arg in args:
        flag, eq, value = arg.partition("=")
        assert flag.startswith("--") and eq, f"argument {arg!r}: write flags as --flag=value"
        values[flag] = value
    return values


def test_probe_paths_answer_on_the_server(rtserve):
    paths = {
        (kind, probe["path"])
        for obj in (find("Deployment"), find("ClusterServingRuntime"))
        for kind, probe in probes(rtserve_container(obj)).items()
    }
    assert {p for kind, p in paths if kind == "readinessProbe"} == {"/v2/health/ready"}, paths
    assert {p for kind, p in paths if kind == "livenessProbe"} == {"/v2/health/live"}, paths
    for path in sorted({p for _, p in paths}):
        get(f"http://{rtserve.http_url}{path}")  # fails the test on a non-2xx answer


def test_deployment_ports_are_the_configured_ones():
    deployment = find("Deployment")
    container = rtserve_container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = config_map()
    for name, key in (("http", "RTSERVE_HTTP_PORT"), ("grpc", "RTSERVE_GRPC_PORT")):
        assert ports.get(name) == int(config[key]), (
            f"container port `{name}` {ports.get(name)} != {key} {config[key]}"
        )
    for kind, probe in probes(container).items():
        assert probe["port"] == "http", f"{kind} port {probe['port']!r}: want the `http` port"
    service = find("Service")
    targets = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert targets == {"http": "http", "grpc": "grpc"}, f"Service targetPorts {targets}"
    monitor = find("ServiceMonitor")
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("http", "/metrics")]


def test_deployment_takes_its_flags_from_the_config_map():
    container = rtserve_container(find("Deployment"))
    refs = [s["configMapRef"]["name"] for s in container.get("envFrom", [])]
    assert refs == [find("ConfigMap")["metadata"]["name"]], f"envFrom {refs}"


def test_config_map_keys_are_server_flags(serve_help):
    known = set(HELP_ENV_RE.findall(serve_help))
    assert known, "`rtserve serve --help` lists no [env: RTSERVE_...] variables"
    unknown = sorted(set(config_map()) - known)
    assert not unknown, f"ConfigMap keys that `rtserve serve` does not read: {unknown}"


COMMENTED_SETTING_RE = re.compile(r"^\s*#\s*(RTSERVE_\w+):\s*(\S+)\s*$", re.MULTILINE)
CONFIG_MAP_FILE = K8S_DIR / "configmap.yaml"


def test_optional_secrets_back_the_commented_token_and_tls_settings(serve_help):
    """The token files and the TLS certificate come from Secrets that may be absent (the pod
    starts without them), mounted read-only; each commented setting in the ConfigMap that names
    a file is a server flag whose file lies under one of those mounts."""
    spec = find("Deployment")["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"] for v in spec["volumes"] if "secret" in v}
    assert set(secrets) == {"tokens", "tls"}, f"Secret volumes {sorted(secrets)}"
    for name, secret in secrets.items():
        assert secret.get("optional") is True, f"Secret volume {name} must be optional"
    mounts = {m["name"]: m for m in rtserve_container(find("Deployment"))["volumeMounts"]}
    for name in secrets:
        assert mounts[name].get("readOnly") is True, f"mount of {name} must be read-only"
    commented = dict(COMMENTED_SETTING_RE.findall(CONFIG_MAP_FILE.read_text()))
    wanted = {
        "RTSERVE_AUTH_TOKEN_FILE", "RTSERVE_ADMIN_TOKEN_FILE", "RTSERVE_TLS_CERT", "RTSERVE_TLS_KEY",
        "RTSERVE_TLS_CLIENT_CA",
    }
    assert wanted <= set(commented), f"commented settings {sorted(commented)} lack {sorted(wanted - set(commented))}"
    known = set(HELP_ENV_RE.findall(serve_help))
    assert set(commented) <= known, f"not server flags: {sorted(set(commented) - known)}"
    for key in wanted:
        path = commented[key]
        assert any(path.startswith(mounts[name]["mountPath"] + "/") for name in secrets), (
            f"{key}={path} is under no Secret mount"
        )


def test_grace_period_outlasts_drain_and_shutdown():
    config = config_map()
    for key in ("RTSERVE_DRAIN_SECONDS", "RTSERVE_SHUTDOWN_TIMEOUT"):
        assert key in config, f"the ConfigMap must set {key} for the grace period to be checked"
    needed = float(config["RTSERVE_DRAIN_SECONDS"]) + float(config["RTSERVE_SHUTDOWN_TIMEOUT"])
    grace = find("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > needed, (
        f"terminationGracePeriodSeconds {grace} <= drain + shutdown timeout {needed}: "
        "SIGKILL would cut requests in flight"
    )


def test_serving_runtime_follows_kserve_conventions(serve_help):
    container = rtserve_container(find("ClusterServingRuntime"))
    args = flag_values(container["args"])
    unknown = sorted(set(args) - set(HELP_FLAG_RE.findall(serve_help)))
    assert not unknown, f"ServingRuntime args that `rtserve serve` does not take: {unknown}"
    # KServe mounts the model at /mnt/models; its v2 runtimes serve HTTP on 8080, gRPC on 9000.
    assert args.get("--model-repository") == "/mnt/models", args
    assert args.get("--http-port") == "8080", args
    assert args.get("--grpc-port") == "9000", args
    for kind, probe in probes(container).items():
        assert str(probe["port"]) == args["--http-port"], f"{kind} port {probe['port']}"


def test_inference_service_uses_the_runtime():
    runtime = find("ClusterServingRuntime")
    model = find("InferenceService")["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"], model
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats, f"{model['modelFormat']} not in {formats}"
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"], model


# --------------------------------------------------------------------------
# Autoscaling: HPA <- Prometheus adapter <- the server's metrics
# --------------------------------------------------------------------------


def adapter_rules() -> list[dict]:
    return yaml.safe_load(ADAPTER_RULES.read_text())["rules"]


def documented_metrics() -> set[str]:
    """Metric names in the first column of docs/monitoring.md's "What the server exports"."""
    names = set()
    for line in MONITORING_DOC.read_text().splitlines():
        m = DOC_METRIC_ROW_RE.match(line)
        if m:
            names.update(re.findall(r"`(rtserve_\w+)`", m.group(1)))
    assert names, f"no metric table found in {MONITORING_DOC}"
    return names


def test_adapter_rules_have_the_adapter_format():
    rules = adapter_rules()
    assert rules, "no rules"
    for rule in rules:
        where = rule.get("name", {}).get("as", rule.get("seriesQuery"))
        keys = {"seriesQuery", "resources", "name", "metricsQuery"}
        assert set(rule) == keys, f"{where}: keys {sorted(rule)}, want {sorted(keys)}"
        overrides = rule["resources"]["overrides"]
        want = {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert overrides == want, f"{where}: resources.overrides {overrides}, want {want}"
        for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert placeholder in rule["metricsQuery"], f"{where}: metricsQuery lacks {placeholder}"


def test_adapter_queries_are_valid_promql(tmp_path):
    records = []
    for rule in adapter_rules():
        series = METRIC_RE.search(rule["seriesQuery"]).group(0)
        expr = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", 'namespace="default",pod="rtserve-0"')
            .replace("<<.GroupBy>>", "pod")
        )
        records.append({"record": f"adapter:{rule['name']['as']}", "expr": expr})
    checked = tmp_path / "adapter.rules.yml"
    checked.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": records}]}))
    promtool("check", "rules", str(checked))


def test_adapter_rules_use_documented_metrics():
    documented = documented_metrics()
    used = {
        HISTOGRAM_SERIES_RE.sub("", m)
        for rule in adapter_rules()
        for m in METRIC_RE.findall(rule["seriesQuery"] + rule["metricsQuery"])
    }
    assert used, "the adapter rules name no rtserve_ metric"
    missing = sorted(used - documented)
    assert not missing, f"not in {MONITORING_DOC.name}'s metric table: {missing}"


def test_hpa_metrics_come_from_the_adapter_rules():
    hpa = find("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    deployment = find("Deployment")["metadata"]["name"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment), target
    served = {rule["name"]["as"] for rule in adapter_rules()}
    used = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert used, "the HPA uses none of rtserve's metrics"
    assert used <= served, f"HPA metrics the adapter rules do not serve: {sorted(used - served)}"
    resources = [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert resources == ["cpu"], f"want CPU as the fallback metric, found {resources}"
    requests = rtserve_container(find("Deployment"))["resources"]["requests"]
    assert "cpu" in requests, "CPU utilization needs a CPU request on the container"
