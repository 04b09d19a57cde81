"""deploy/: every file parses and validates, and what it runs matches the real service.

- YAML/JSON parse; Kubernetes manifests validate against the Kubernetes JSON schemas
  (kubernetes-validate, strict), CRDs (KEDA, Prometheus operator) against the small
  schemas below; the ConfigMap carries deploy/config/stream.toml, which the service loads.
- Alert rules pass ``promtool check rules`` and their unit tests (``promtool test rules``);
  the dashboard's queries are valid PromQL (checked by promtool as recording rules).
- Every metric the dashboard and the alerts name is exported: by StreamMetrics as
  prometheus_client renders it, and by a running ``audioclust-stream`` (a live scrape).
- Every command line in the Dockerfiles, compose, Kubernetes and systemd parses with the
  real CLIs; the runtime requirements cover everything the service imports (no torch).
- The compose topology without containers: a tansu broker, two ``audioclust-stream``
  processes in one group, ``audioclust-produce`` replaying FSDD, both endpoints scraped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml
from conftest import REPO, copy_fsdd

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
CONFIG = DEPLOY / "config" / "stream.toml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "audioclust.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
COMPOSE = DEPLOY / "docker-compose.yml"
BIN = Path(sys.executable).parent
METRIC = re.compile(r"\baudioclust_[a-z0-9_]+\b")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# Minimal schemas for the CRDs the core Kubernetes schemas do not have: the fields each
# controller requires, with their types (from the KEDA and prometheus-operator CRDs).
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {"spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"],
                                   "properties": {"name": {"type": "string"}}},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer"},
                "cooldownPeriod": {"type": "integer"},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["type", "metadata"],
                    "properties": {
                        "type": {"type": "string"},
                        # KEDA reads trigger metadata as strings only
                        "metadata": {"type": "object",
                                     "additionalProperties": {"type": "string"}}}}},
            }}},
    },
    ("monitoring.coreos.com/v1", "PodMonitor"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {"spec": {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {"type": "object"},
                "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"],
                    "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                   "interval": {"type": "string"}}}},
            }}},
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {"spec": {
            "type": "object", "required": ["groups"],
            "properties": {"groups": {"type": "array", "items": {
                "type": "object", "required": ["name", "rules"],
                "properties": {"rules": {"type": "array", "items": {
                    "type": "object", "required": ["expr"]}}}}}}}},
    },
}


# --- helpers ---------------------------------------------------------------------------------

def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install Debian's prometheus package "
                    "(apt-get install prometheus; `make setup` does it)")
    return path


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in _docs(p)]


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def _alert_exprs() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def _named_metrics() -> set[str]:
    names = {m for e in _dashboard_exprs() + _alert_exprs() for m in METRIC.findall(e)}
    assert names, "no audioclust metric found in the dashboard or alerts"
    return names


def exported_names(text: str) -> set[str]:
    """Sample names a Prometheus text exposition offers, from its # TYPE lines.

    A labelled metric with no child yet has TYPE but no sample, and is still exported.
    """
    out = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            if kind == "histogram":
                out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "summary":
                out |= {name, f"{name}_sum", f"{name}_count"}
            else:
                out.add(name)
    return out


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called ``name`` in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.labels, s.value) for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name == name]


def _entrypoint(dockerfile: Path) -> list[str]:
    text = dockerfile.read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("ENTRYPOINT ")]
    return json.loads(line.removeprefix("ENTRYPOINT "))


def _unit_exec_start() -> list[str]:
    text = (DEPLOY / "systemd" / "audioclust-mic.service").read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def _argv_parses(cmd: list[str], prog: str) -> subprocess.CompletedProcess:
    """Run a deployment's command line up to its first real work, which is made to fail.

    argparse errors exit 2 with a usage line; anything else means the flags exist.
    """
    proc = subprocess.run([str(BIN / prog), *cmd], capture_output=True, text=True,
                          timeout=120, env=ENV, stdin=subprocess.DEVNULL)
    assert proc.returncode != 2 and "usage:" not in proc.stderr, (cmd, proc.stderr)
    return proc


def _get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"service exited with {proc.returncode}"
        try:
            if _get(url, 1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} not 200 within {timeout} s")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("service did not stop within 30 s of SIGTERM")
    return proc.returncode


# --- files parse and validate ----------------------------------------------------------------

DATA_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml", ".json"))


def test_deploy_has_the_expected_files() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*") if p.is_file()}
    for needed in ("docker/Dockerfile", "docker/Dockerfile.gpu", "docker-compose.yml",
                   "prometheus/prometheus.yml", "prometheus/alerts.yml",
                   "grafana/dashboards/audioclust.json", "k8s/deployment.yaml",
                   "k8s/keda-scaledobject.yaml", "systemd/audioclust-mic.service",
                   "requirements-runtime.txt"):
        assert needed in names
    assert (REPO / "docs" / "deploy.md").is_file()


@pytest.mark.parametrize("path", DATA_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_parses(path: Path) -> None:
    if path.suffix == ".json":
        assert isinstance(json.loads(path.read_text()), dict)
    else:
        docs = _docs(path)
        assert docs and all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("version", ["1.29", "1.37"])
def test_kubernetes_manifests_validate(version: str) -> None:
    import jsonschema
    import kubernetes_validate

    docs = _k8s_docs()
    kinds = {d["kind"] for _, d in docs}
    assert {"Deployment", "ConfigMap", "Service", "PodMonitor", "ScaledObject"} <= kinds
    for path, doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_SCHEMAS:
            jsonschema.validate(doc, CRD_SCHEMAS[key])
        else:  # a kind with neither schema would raise SchemaNotFoundError here
            assert kubernetes_validate.validate(doc, version, strict=True), path


def test_kubernetes_validation_is_strict() -> None:
    """The validator rejects a misspelt field (so passing above means something)."""
    import kubernetes_validate

    (doc,) = _docs(K8S / "deployment.yaml")
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.37", strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_replicas_and_autoscaling_respect_partitions() -> None:
    (dep,) = _docs(K8S / "deployment.yaml")
    (so,) = _docs(K8S / "keda-scaledobject.yaml")
    partitions = int(dep["metadata"]["annotations"]["audioclust.io/topic-partitions"])
    assert 1 <= dep["spec"]["replicas"] <= partitions
    assert so["spec"]["maxReplicaCount"] == partitions
    assert 1 <= so["spec"]["minReplicaCount"] <= partitions
    assert so["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    flags = dict(zip(args[::2], args[1::2], strict=False))
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["topic"] == flags["--topic"]
    assert trigger["metadata"]["consumerGroup"] == flags["--group"]
    assert trigger["metadata"]["bootstrapServers"] == flags["--bootstrap"]
    assert trigger["metadata"]["allowIdleConsumers"] == "false"


def test_probes_and_ports_match_the_service() -> None:
    (dep,) = _docs(K8S / "deployment.yaml")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"]
    entry = _entrypoint(DEPLOY / "docker" / "Dockerfile")
    assert int(entry[entry.index("--metrics-port") + 1]) == port
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["port"] == "metrics"
    assert "memory" in c["resources"]["limits"] and "cpu" in c["resources"]["requests"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert entry[entry.index("--config") + 1] == "/etc/audioclust/stream.toml"
    assert mounts["/etc/audioclust"] == "config"
    (pm,) = _docs(K8S / "podmonitor.yaml")
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert pm["spec"]["selector"]["matchLabels"].items() <= \
        dep["spec"]["template"]["metadata"]["labels"].items()
    # the alerts select job="audioclust": the PodMonitor's job label must produce it
    assert dep["spec"]["template"]["metadata"]["labels"][pm["spec"]["jobLabel"]] == "audioclust"
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    targets = jobs["audioclust"]["static_configs"][0]["targets"]
    assert targets == [f"audioclust-1:{port}", f"audioclust-2:{port}"]


def test_configmap_carries_the_config_file_and_the_service_loads_it() -> None:
    from audioclust.stream.config import load_stream_config

    (cm,) = _docs(K8S / "configmap.yaml")
    assert cm["data"]["stream.toml"] == CONFIG.read_text()
    cfg = load_stream_config(CONFIG)
    assert cfg.threads == 1 and cfg.max_batch == tomllib.loads(CONFIG.read_text())["max_batch"]


def test_images_are_non_root_with_healthcheck_and_no_torch() -> None:
    for name in ("Dockerfile", "Dockerfile.gpu"):
        text = (DEPLOY / "docker" / name).read_text()
        assert re.search(r"^USER audioclust", text, re.M), name
        assert "HEALTHCHECK" in text and "/healthz" in text, name
        assert "--no-deps" in text and not re.search(r"pip install[^\n]*torch", text), name
        assert "'torch' not in sys.modules" in text, name  # the build checks it too
        assert "libsndfile1" in text and "libportaudio2" in text, name
        for src in re.findall(r"^COPY (?!--from)(?:--chown=\S+ )?(.+) \S+$", text, re.M):
            for part in src.split():
                if not part.startswith("$"):
                    assert (REPO / part).exists(), f"{name}: COPY {part} not in the repo"
        # /models/model.onnx links to the package's FSDD demo model (--model demo)
        (snippet,) = re.findall(r"python -c '([^']+)'\)\" /models/model.onnx", text)
        out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                             timeout=60, env=ENV)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().endswith("models/assets/default.onnx"), out.stdout
    assert "onnxruntime-gpu" in (DEPLOY / "requirements-gpu.txt").read_text()
    assert "nvidia/cuda" in (DEPLOY / "docker" / "Dockerfile.gpu").read_text()


def test_runtime_requirements_cover_what_the_service_imports(tmp_path, fsdd_dir,
                                                             stream_model) -> None:
    """The image's environment, simulated: in a fresh interpreter where only the
    distributions of deploy/requirements-cpu.txt (and their dependencies) can be imported,
    the service runs over a file and every stream module imports; torch is never loaded.

    Optional imports (river trying scikit-learn, numpy.f2py trying charset_normalizer) fail
    there as they would in the image, and their fallbacks are exercised.
    """
    from importlib import metadata

    from packaging.requirements import Requirement

    def names(path: Path) -> set[str]:
        out = set()
        for line in path.read_text().splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("-r "):
                out |= names(path.parent / line[3:].strip())
            elif line:
                out.add(Requirement(line).name.lower().replace("_", "-"))
        return out

    wanted = names(DEPLOY / "requirements-cpu.txt")
    # the package's declared dependencies: the runtime list must not invent new ones
    requires = [Requirement(r) for r in metadata.requires("audioclust") or []]
    declared = {r.name.lower() for r in requires}
    assert wanted - {"onnxruntime"} <= declared and "torch" not in wanted
    # and it is exactly the base dependencies: the pins cover what `pip install
    # audioclust[cpu]` would install, training (torch & co.) being the `train` extra
    base = {r.name.lower() for r in requires if r.marker is None}
    assert base == wanted - {"onnxruntime"}
    closure, todo = set(), list(wanted)
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        for req in metadata.requires(name) or []:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name.lower().replace("_", "-"))
    allowed = {top for top, dists in metadata.packages_distributions().items()
               if any(d.lower().replace("_", "-") in closure for d in dists)}
    assert "torch" not in allowed and {"onnxruntime", "river", "kafka"} <= allowed

    wav = tmp_path / "a.wav"
    sf.write(wav, sf.read(fsdd_dir / "0_george_0.wav")[0], 8000)
    code = f"""
import importlib.abc, importlib.machinery, json, site, sys
ALLOWED = set({sorted(allowed)!r}) | {{"audioclust"}}
blocked = set()

SITE = tuple(site.getsitepackages())

class OnlyRuntime(importlib.abc.MetaPathFinder):
    # third-party top-level modules (found in site-packages) must be in ALLOWED

    def find_spec(self, fullname, path=None, target=None):
        if path is not None or fullname in ALLOWED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname)
        where = (spec.origin or "") if spec else ""
        if spec and spec.submodule_search_locations:
            where = list(spec.submodule_search_locations)[0]
        if not where.startswith(SITE) or fullname.startswith("__editable__"):
            return None
        blocked.add(fullname)
        raise ModuleNotFoundError(f"No module named {{fullname!r}} (not in the image)")

sys.meta_path.insert(0, OnlyRuntime())
from audioclust.stream.cli import main
rc = main(["--source", "file", {str(wav)!r}, "--model", {str(stream_model)!r},
           "--sink", "jsonl:{tmp_path / 'out.jsonl'}", "-q"])
import audioclust.stream.kafka.produce, audioclust.stream.kafka.source, audioclust.stream.kafka.sink
import audioclust.stream.sources.mic, audioclust.stream.assign, audioclust.models.runtime
try:
    import torch  # installed in the test venv: the blocker must stop it
    blocks = False
except ModuleNotFoundError:
    blocks = True
print(json.dumps({{"rc": rc, "blocks": blocks, "modules": sorted(sys.modules)}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=180, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rc"] == 0 and (tmp_path / "out.jsonl").read_text().strip()
    assert out["blocks"], "the import blocker let torch through"
    assert "torch" not in {m.split(".")[0] for m in out["modules"]}
    assert "onnxruntime" in out["modules"]  # the model really ran


# --- Prometheus, Grafana ---------------------------------------------------------------------

def test_alert_rules_pass_promtool() -> None:
    proc = subprocess.run([_promtool(), "check", "rules", str(ALERTS)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 7 rules found" in proc.stdout


def test_alert_rules_unit_tests() -> None:
    """Each alert fires on a made-up bad history and stays quiet on a healthy one."""
    proc = subprocess.run([_promtool(), "test", "rules", "alerts_test.yml"],
                          capture_output=True, text=True, timeout=60, cwd=ALERTS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_prometheus_config_passes_promtool() -> None:
    proc = subprocess.run([_promtool(), "check", "config",
                           str(DEPLOY / "prometheus" / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheusrule_matches_alerts_file() -> None:
    (pr,) = _docs(K8S / "prometheusrule.yaml")
    assert pr["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_dashboard_queries_are_valid_promql(tmp_path) -> None:
    """promtool parses each dashboard query (as a recording rule), Grafana variables
    replaced by what Grafana would put there."""
    exprs = _dashboard_exprs()
    rules = [{"record": f"dashboard:q{i}",
              "expr": e.replace("$__rate_interval", "1m").replace("$instance", ".*")}
             for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([_promtool(), "check", "rules", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout


def test_dashboard_covers_the_issue_and_uses_the_provisioned_datasource() -> None:
    dash = json.loads(DASHBOARD.read_text())
    names = {m for e in _dashboard_exprs() for m in METRIC.findall(e)}
    for needed in ("audioclust_windows_total",  # throughput
                   "audioclust_end_to_end_latency_seconds_bucket",  # latency percentiles
                   "audioclust_consumer_lag",  # lag by partition
                   "audioclust_assignments_total",  # cluster distribution
                   "audioclust_novel_windows_total", "audioclust_drift_events_total"):
        assert needed in names
    (ds,) = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources"
                            / "prometheus.yml").read_text())["datasources"]
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == ds["uid"], panel["title"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    prov = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards"
                           / "audioclust.yml").read_text())
    compose = yaml.safe_load(COMPOSE.read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{prov['providers'][0]['options']['path']}:ro" in mounts


def test_dashboard_and_alerts_name_only_exported_metrics() -> None:
    from prometheus_client.exposition import generate_latest

    from audioclust.stream.metrics import StreamMetrics

    m = StreamMetrics()
    # labelled metrics: one child each, as a running service would have
    for metric in vars(m).values():
        if getattr(metric, "_labelnames", ()):
            metric.labels(*["x"] * len(metric._labelnames))
    exported = exported_names(generate_latest(m.registry).decode())
    unknown = _named_metrics() - exported - {"up"}
    assert not unknown, f"not exported by StreamMetrics: {sorted(unknown)}"


# --- command lines against the real CLIs -----------------------------------------------------

def _compose_cmd(service: str) -> list[str]:
    return [str(a) for a in yaml.safe_load(COMPOSE.read_text())["services"][service]["command"]]


def _local(argv: list[str], tmp: Path) -> list[str]:
    """An image's command line made runnable here: repo config, a missing model, loopback."""
    out = []
    for a in argv:
        a = a.replace("/etc/audioclust/stream.toml", str(CONFIG))
        a = a.replace("/var/lib/audioclust", str(tmp))
        out.append(a)
    return [*out, "--model", str(tmp / "missing.onnx"), "--metrics-host", "127.0.0.1",
            "--metrics-port", "0"]


def test_every_deployment_command_line_parses(tmp_path) -> None:
    entry = _entrypoint(DEPLOY / "docker" / "Dockerfile")
    assert entry == _entrypoint(DEPLOY / "docker" / "Dockerfile.gpu")
    assert entry[0] == "audioclust-stream"
    (dep,) = _docs(K8S / "deployment.yaml")
    k8s_args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    unit = _unit_exec_start()
    assert unit[0] == "/opt/audioclust/bin/audioclust-stream"
    unit = [a.replace("${CONFIGURATION_DIRECTORY}", str(CONFIG.parent))
            .replace("${STATE_DIRECTORY}", str(tmp_path))
            .replace("${LOGS_DIRECTORY}", str(tmp_path)) for a in unit[1:]
            if a != "$AUDIOCLUST_ARGS"]
    for argv in (entry[1:] + _compose_cmd("audioclust-1"), entry[1:] + k8s_args, unit):
        proc = _argv_parses(_local(argv, tmp_path), "audioclust-stream")
        # got as far as loading the model: flags and the config file were accepted
        assert proc.returncode == 1 and "missing.onnx" in proc.stderr, proc.stderr
    produce = yaml.safe_load(COMPOSE.read_text())["services"]["produce"]
    assert produce["entrypoint"] == ["audioclust-produce"]
    argv = [a.replace("/data", str(tmp_path / "no-recordings")) for a in _compose_cmd("produce")]
    proc = _argv_parses(argv, "audioclust-produce")
    assert proc.returncode == 1 and "no-recordings" in proc.stderr, proc.stderr


def test_systemd_unit_verifies(tmp_path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze not found (Debian's systemd package)")
    text = (DEPLOY / "systemd" / "audioclust-mic.service").read_text()
    for key in ("StateDirectory=audioclust", "Restart=on-failure", "User=audioclust",
                "SupplementaryGroups=audio", "--state ${STATE_DIRECTORY}/"):
        assert key in text
    unit = tmp_path / "audioclust-mic.service"
    unit.write_text(text.replace("/opt/audioclust/bin/audioclust-stream",
                                 str(BIN / "audioclust-stream")))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


# --- a running service -----------------------------------------------------------------------

@pytest.fixture
def long_recording(tmp_path, fsdd_dir) -> Path:
    """Twelve seconds of FSDD digits back to back, at 8 kHz like FSDD."""
    clips = [sf.read(p, dtype="float32")[0] for p in sorted(fsdd_dir.glob("*_jackson_*.wav"))]
    audio = np.concatenate(clips)[: 12 * 8000]
    path = tmp_path / "long.wav"
    sf.write(path, audio, 8000)
    return path


def test_live_scrape_exports_every_metric_the_dashboard_and_alerts_name(
        tmp_path, stream_model, long_recording) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [str(BIN / "audioclust-stream"), "--source", "file", str(long_recording), "--realtime",
         "--config", str(CONFIG), "--model", str(stream_model),
         "--sink", f"jsonl:{tmp_path / 'out.jsonl'}", "--state", str(tmp_path / "state.npz"),
         "--metrics-host", "127.0.0.1", "--metrics-port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/readyz", proc, 60)
        assert _get(f"{base}/healthz")[0] == 200
        deadline = time.monotonic() + 30
        while True:
            text = _get(f"{base}/metrics")[1]
            if sum(v for _, v in samples(text, "audioclust_windows_total")) >= 3:
                break
            assert time.monotonic() < deadline, "no windows counted within 30 s"
            time.sleep(0.3)
        assert proc.poll() is None, "the replay ended before the scrape"
    finally:
        rc = _stop(proc)
    assert rc == 0, proc.stderr.read()
    unknown = _named_metrics() - exported_names(text) - {"up"}
    assert not unknown, f"the running service does not export {sorted(unknown)}"
    assert samples(text, "audioclust_windows_total")[0][0] == {"source": "file"}
    assert (tmp_path / "state.npz").exists()  # saved at shutdown, as the units rely on


# --- the compose topology, without containers ------------------------------------------------

def _kafka_test_options() -> list[str]:
    # tansu makes a group join wait for the rebalance timeout (= max_poll_interval_ms): keep
    # the group timeouts short so two members settle in seconds (as tests/test_kafka_source)
    opts = {"max_poll_interval_ms": 1500, "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 500, "commit_interval_s": 0.1}
    return [x for k, v in opts.items() for x in ("--kafka-option", f"{k}={v}")]


def _assigned(log: Path) -> set[str]:
    """The partitions a consumer holds now: its log's last "partitions assigned" line.

    (kafka-python's admin describe_groups cannot parse tansu's answer, so the consumers'
    own report is used.)
    """
    lines = [ln for ln in log.read_text().splitlines() if "partitions assigned:" in ln]
    if not lines:
        return set()
    return set(re.findall(r"\w[\w.-]*\[\d+\]", lines[-1].split("partitions assigned:")[1]))


@pytest.fixture
def recordings(tmp_path, fsdd_dir) -> Path:
    """32 FSDD recordings (two speakers, digits 0-7, two takes): 32 streams to spread."""
    return copy_fsdd(fsdd_dir, tmp_path / "recordings", range(8), ("george", "lucas"), range(2))


def _processes(consumers: list[list[str]], tmp: Path) -> Iterator[subprocess.Popen]:
    for i, argv in enumerate(consumers):
        yield subprocess.Popen(
            [str(BIN / "audioclust-stream"), *argv], stdout=subprocess.DEVNULL,
            stderr=open(tmp / f"consumer-{i + 1}.log", "w"), env=ENV)  # noqa: SIM115


@pytest.mark.slow
def test_compose_topology_on_loopback(tmp_path, kafka_broker, stream_model, recordings) -> None:
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    # the topics kafka-setup creates, with its partition counts
    setup = compose["kafka-setup"]["command"][0]
    for topic, parts in re.findall(r"--topic (\S+) --partitions (\d+)", setup):
        kafka_broker.create_topic(topic, int(parts))
    assert kafka_broker.topics["audio"] >= 2

    entry = _entrypoint(DEPLOY / "docker" / "Dockerfile")[1:]
    ports = [_free_port(), _free_port()]
    consumers = []
    for i, port in enumerate(ports, 1):
        argv = [a.replace("kafka:9092", kafka_broker.bootstrap)
                .replace("/etc/audioclust/stream.toml", str(CONFIG))
                .replace("/var/lib/audioclust", str(tmp_path / f"state-{i}"))
                for a in entry + [str(x) for x in compose[f"audioclust-{i}"]["command"]]]
        (tmp_path / f"state-{i}").mkdir()
        consumers.append([*argv, "--model", str(stream_model), "--metrics-host", "127.0.0.1",
                          "--metrics-port", str(port), *_kafka_test_options()])
    group = consumers[0][consumers[0].index("--group") + 1]
    assert consumers[1][consumers[1].index("--group") + 1] == group

    procs = list(_processes(consumers, tmp_path))
    try:
        for port, proc in zip(ports, procs, strict=True):
            _wait_http(f"http://127.0.0.1:{port}/readyz", proc, 90)
        # the group settles: the two members hold disjoint parts of the topic, together all
        deadline = time.monotonic() + 60
        while True:
            held = [_assigned(tmp_path / f"consumer-{i}.log") for i in (1, 2)]
            if all(held) and not held[0] & held[1] and len(held[0] | held[1]) == \
                    kafka_broker.topics["audio"]:
                break
            assert time.monotonic() < deadline, f"the two consumers did not share the topic: {held}"
            for proc in procs:
                assert proc.poll() is None
            time.sleep(0.5)

        produce = [a.replace("kafka:9092", kafka_broker.bootstrap).replace("/data",
                                                                            str(recordings))
                   for a in _compose_cmd("produce")]
        pub = subprocess.run([str(BIN / "audioclust-produce"), *produce, "--json"],
                             capture_output=True, text=True, timeout=180, env=ENV)
        assert pub.returncode == 0, pub.stderr
        sent = json.loads(pub.stdout.strip().splitlines()[-1])
        assert sent["streams"] == 32

        # every stream's results arrive on the sink topic, from the two instances together,
        # until the sink holds every window the two have counted
        sink_topic = consumers[0][consumers[0].index("--sink") + 1].removeprefix("kafka:")
        deadline = time.monotonic() + 90
        while True:
            texts = [_get(f"http://127.0.0.1:{port}/metrics")[1] for port in ports]
            windows = [sum(v for _, v in samples(t, "audioclust_windows_total")) for t in texts]
            results = [json.loads(m.value)
                       for m in kafka_broker.read_all(sink_topic, 10**9, timeout=2)]
            streams = {r["stream"] for r in results}
            if len(streams) == 32 and len(results) == sum(windows):
                break
            assert time.monotonic() < deadline, \
                f"results for {len(streams)} of 32 streams, {len(results)} of {windows} windows"
    finally:
        codes = [_stop(p) for p in procs]
    logs = "\n".join((tmp_path / f"consumer-{i}.log").read_text() for i in (1, 2))
    assert codes == [0, 0], logs

    assert all(w > 0 for w in windows), f"windows per instance {windows}: one did no work"
    # outputs carry stream and seq; duplicates (only after a rebalance) are told apart by them
    assert all(isinstance(r["seq"], int) for r in results)
    assert len({(r["stream"], r["seq"]) for r in results}) <= len(results)
    assert {r["stream"] for r in results} == {p.stem for p in recordings.glob("*.wav")}
    for text in texts:  # lag is reported per owned partition, and names only metrics we know
        lag = samples(text, "audioclust_consumer_lag")
        assert lag and all(labels["topic"] == "audio" for labels, _ in lag)
        assert _named_metrics() - exported_names(text) - {"up"} == set()
    owned = [{labels["partition"] for labels, _ in samples(t, "audioclust_consumer_lag")}
             for t in texts]
    assert not owned[0] & owned[1], f"a partition reported by both instances: {owned}"
