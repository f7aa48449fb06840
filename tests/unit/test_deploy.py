"""docker-compose.yml, the Prometheus configuration and the Grafana dashboard.

Docker is not available where the tests run, so these read the files and check
what `docker compose up` relies on: one image for every service process, a
metrics port and a /readyz healthcheck on each, Prometheus scraping every one
of them (every replica), Grafana provisioned with the dashboard kept in the
repository, and every metric the dashboard queries exported by the service.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from infrastructure.settings import load_settings, redis_cluster_startup

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "batchslot.json"
SERVICE_COMMANDS = {"worker", "projector", "outbox", "run"}  # batchctl's long-running ones
# Series Prometheus adds itself, and the labels it puts on every scraped series.
PROMETHEUS_SERIES = {"up": set[str]()}
TARGET_LABELS = {"job", "instance"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def service_containers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run a batchctl process (as opposed to PostgreSQL, Grafana...)."""
    return {
        name: spec for name, spec in compose["services"].items()
        if "build" in spec or str(spec.get("image", "")).startswith("batch-slot-service")
    }


def mounts(spec: dict[str, Any]) -> dict[Path, str]:
    """Bind mounts of a compose service: repository path -> container path."""
    found = {}
    for volume in spec.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            found[(ROOT / source).resolve()] = target
    return found


# ------------------------------------------------------------------ compose


def test_every_batchctl_process_has_a_container(compose: dict[str, Any]) -> None:
    services = service_containers(compose)
    commands = {spec["command"][0] for spec in services.values()}
    assert {"worker", "projector", "outbox"} <= commands, commands
    assert commands <= SERVICE_COMMANDS, commands


def test_one_image_shared_by_every_service_container(compose: dict[str, Any]) -> None:
    services = service_containers(compose)
    builds = {json.dumps(spec.get("build"), sort_keys=True) for spec in services.values()}
    images = {spec.get("image") for spec in services.values()}
    assert builds == {json.dumps(".")}, builds
    assert len(images) == 1 and None not in images, images
    assert (ROOT / "Dockerfile").is_file()


def test_every_service_container_has_a_metrics_port_and_a_readyz_healthcheck(
    compose: dict[str, Any],
) -> None:
    for name, spec in service_containers(compose).items():
        port = int(spec["environment"]["METRICS_PORT"])
        check = spec.get("healthcheck")
        assert check, f"{name}: no healthcheck"
        test = check["test"]
        command = " ".join(test[1:]) if isinstance(test, list) else test
        assert f"http://127.0.0.1:{port}/readyz" in command, f"{name}: {command}"
        assert check.get("interval") and check.get("retries"), name


def test_readyz_probe_fails_on_503() -> None:
    """The healthcheck's one-liner exits non-zero on 503 (urllib raises on non-2xx)."""
    import subprocess
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from threading import Thread

    class Handler(BaseHTTPRequestHandler):
        status = 503

        def do_GET(self) -> None:
            self.send_response(Handler.status)
            self.end_headers()
            self.wfile.write(b'{"ready": false}')

        def log_message(self, *args: Any) -> None:
            pass

    compose_spec = load_yaml(COMPOSE)
    spec = next(iter(service_containers(compose_spec).values()))
    assert spec["healthcheck"]["test"][:3] == ["CMD", "python", "-c"]
    code = spec["healthcheck"]["test"][3]
    server = HTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        probe = code.replace("127.0.0.1:9100", f"127.0.0.1:{server.server_port}")
        for status, expected in ((503, 1), (200, 0)):
            Handler.status = status
            result = subprocess.run([sys.executable, "-c", probe], capture_output=True)
            assert result.returncode == expected, (status, result.stderr)
    finally:
        server.shutdown()


def test_prometheus_scrapes_every_service_container(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    config_arg = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_path = config_arg.split("=", 1)[1]
    sources = {target: source for source, target in mounts(prometheus).items()}
    assert config_path in sources, "prometheus.yml is not mounted where --config.file says"
    config = load_yaml(sources[config_path])
    static: set[tuple[str, int]] = set()
    discovered: set[tuple[str, int]] = set()
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        for group in job.get("static_configs", []):
            for target in group["targets"]:
                host, port = target.rsplit(":", 1)
                static.add((host, int(port)))
        for sd in job.get("dns_sd_configs", []):
            assert sd.get("type", "SRV") == "A", "compose DNS answers A records"
            discovered |= {(name, int(sd["port"])) for name in sd["names"]}
    for name, spec in service_containers(compose).items():
        target = (name, int(spec["environment"]["METRICS_PORT"]))
        replicas = int(spec.get("deploy", {}).get("replicas", 1))
        if replicas > 1:
            # a static target would reach one replica only
            assert target in discovered, f"{name}: its {replicas} replicas are not discovered"
        else:
            assert target in discovered | static, f"{name} is not scraped"


def test_scale_profile_has_a_three_node_redis_cluster_and_two_more_workers(
    compose: dict[str, Any],
) -> None:
    """``docker compose --profile scale up`` adds a Redis Cluster (three
    nodes and a one-shot init container) and two more workers; nothing else changes."""
    services = compose["services"]
    scale = {name for name, spec in services.items() if "scale" in spec.get("profiles", [])}
    nodes = {f"redis-node-{i}" for i in (1, 2, 3)}
    assert scale == nodes | {"redis-cluster-init", "worker-extra"}, scale
    for name in nodes:
        command = services[name]["command"]
        assert services[name]["image"] == "redis:7"
        assert "--cluster-enabled yes" in command
        assert f"--cluster-announce-hostname {name}" in command
    init = " ".join(services["redis-cluster-init"]["command"])
    assert "--cluster create" in init and "--cluster-yes" in init
    assert all(f"getent hosts {name}" in init for name in nodes)
    assert set(services["redis-cluster-init"]["depends_on"]) == nodes
    extra = services["worker-extra"]
    assert extra["command"] == ["worker"] and extra["deploy"]["replicas"] == 2
    for name in ("worker", "worker-extra", "projector"):  # wait for the cluster when it is on
        init_dep = services[name]["depends_on"]["redis-cluster-init"]
        assert init_dep == {"condition": "service_completed_successfully", "required": False}


def test_the_documented_cluster_url_is_valid_and_names_the_three_nodes() -> None:
    documented = re.search(r"REDIS_URL=(redis\+cluster://\S+)", COMPOSE.read_text())
    assert documented, "the compose file's header does not say how to use the cluster"
    settings = load_settings({"REDIS_URL": documented[1]})
    assert settings.redis_cluster_mode
    _, nodes = redis_cluster_startup(documented[1])
    assert nodes == [(f"redis-node-{i}", 6379) for i in (1, 2, 3)]


def test_infrastructure_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        if name in service_containers(compose):
            continue
        image = spec["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"


# ------------------------------------------------------------------ grafana


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_grafana_is_provisioned_with_the_repository_dashboard(
    compose: dict[str, Any], dashboard: dict[str, Any]
) -> None:
    grafana = compose["services"]["grafana"]
    mounted = mounts(grafana)
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    assert mounted.get(provisioning) == "/etc/grafana/provisioning"
    dashboards_dir = mounted[DASHBOARD.parent]
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == (
        f"{dashboards_dir}/{DASHBOARD.name}"
    )

    providers = load_yaml(provisioning / "dashboards" / "batchslot.yml")["providers"]
    assert [p["options"]["path"] for p in providers] == [dashboards_dir]

    (source,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus"
    host_port = re.fullmatch(r"http://([\w.-]+):(\d+)", source["url"])
    assert host_port and host_port[1] in compose["services"], source["url"]
    assert host_port[2] == "9090"
    used = {
        json.dumps(p["datasource"], sort_keys=True)
        for p in panels(dashboard) + targets(dashboard)
    }
    assert used == {json.dumps({"type": "prometheus", "uid": source["uid"]}, sort_keys=True)}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for p in panels(dashboard) for t in p["targets"]]


def test_dashboard_is_a_valid_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        assert panel["title"] and panel["targets"], panel
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]


# The PromQL vocabulary the dashboard may use besides metric names.
PROMQL_WORDS = {
    # aggregations and keywords
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev", "group",
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "and", "or", "unless",
    # functions
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile",
    "sort", "sort_desc", "abs", "clamp_min", "clamp_max", "time", "timestamp", "vector",
    "scalar", "label_replace", "max_over_time", "min_over_time", "avg_over_time",
    "sum_over_time", "last_over_time", "absent", "changes", "resets",
}


def exported_series() -> dict[str, set[str]]:
    """Every series name the service's processes export -> its label names."""
    return {
        name: labels for names, labels in exported_families().values() for name in names
    }


def exported_families() -> dict[str, tuple[set[str], set[str]]]:
    """Every metric family the service's processes export -> (its series names, labels).

    Importing the runtime loads every process's metrics (and prometheus_client's
    process and platform collectors, which the service also serves).
    """
    importlib.import_module("infrastructure.processes.runtime")
    suffixes = {
        "counter": ("_total", "_created"), "gauge": ("",), "info": ("_info",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"), "untyped": ("",),
    }
    labels_of: dict[str, set[str]] = {}
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("infrastructure") and module is not None:
            for obj in vars(module).values():
                if isinstance(obj, MetricWrapperBase):
                    labels_of[obj._name] = set(obj._labelnames)
    families: dict[str, tuple[set[str], set[str]]] = {}
    for family in REGISTRY.collect():
        labels = labels_of.get(family.name, set()) | {
            label for sample in family.samples for label in sample.labels
        }
        names = {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
        families[family.name] = (names, labels)
    return families


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, grouping labels) of a PromQL expression."""
    grouping: set[str] = set()
    for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        grouping |= {label.strip() for label in clause.split(",") if label.strip()}
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    bare = re.sub(r"\{[^}]*\}", "", bare)  # label matchers
    bare = re.sub(r"\[[^\]]*\]", "", bare)  # ranges ($__rate_interval, 5m)
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare))
    return words - PROMQL_WORDS, grouping


def test_promql_names_reads_metrics_and_grouping() -> None:
    names, grouping = promql_names(
        'sum by (reason, job) (rate(batchslot_dlq_messages_total{reason="X"}[$__rate_interval]))'
        " / ignoring(reason) max(up)"
    )
    assert names == {"batchslot_dlq_messages_total", "up"}
    assert grouping == {"reason", "job"}


def test_every_metric_the_dashboard_queries_is_exported(dashboard: dict[str, Any]) -> None:
    series = exported_series() | PROMETHEUS_SERIES
    for target in targets(dashboard):
        expr = target["expr"]
        names, grouping = promql_names(expr)
        assert names, expr
        unknown = names - set(series)
        assert not unknown, f"not exported by the service: {sorted(unknown)} in {expr}"
        labels = set().union(*(series[n] for n in names)) | TARGET_LABELS
        assert grouping <= labels, f"no such label {sorted(grouping - labels)} in {expr}"
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        shown = grouping if grouping else labels
        assert legend <= shown, f"legend {sorted(legend - shown)} not in the result of {expr}"


def test_dashboard_covers_what_operators_look_at_first(dashboard: dict[str, Any]) -> None:
    """Throughput, dead letters by reason, lag, conflicts and parked events all have panels."""
    queried = set().union(*(promql_names(t["expr"])[0] for t in targets(dashboard)))
    assert {
        "batchslot_messages_consumed_total",
        "batchslot_commands_total",
        "batchslot_dlq_messages_total",
        "batchslot_projection_lag_events",
        "batchslot_outbox_lag_events",
        "batchslot_version_conflicts_total",
        "batchslot_outbox_parked_events",
    } <= queried
    # Every metric of the service is on the dashboard: a new one needs a panel here.
    missing = {
        family for family, (names, _) in exported_families().items()
        if family.startswith("batchslot_") and not names & queried
    }
    assert not missing, f"metrics without a panel: {sorted(missing)}"


# ------------------------------------------------------- data, ports, secrets

ENV_EXAMPLE = ROOT / ".env.example"
LOCAL_DEFAULT_PORTS = {5432, 6379, 9092}  # what the README's local servers listen on


def test_data_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    """`docker compose down && up` keeps the event store, the read model and every topic."""
    named = set(compose.get("volumes") or {})
    services = compose["services"]
    kafka_dirs = services["kafka"]["environment"]["KAFKA_LOG_DIRS"]
    for service, path in (
        ("postgres", "/var/lib/postgresql/data"),
        ("redis", "/data"),
        ("kafka", kafka_dirs),
        ("prometheus", "/prometheus"),
        ("grafana", "/var/lib/grafana"),
    ):
        volumes = {v.split(":")[1]: v.split(":")[0] for v in services[service]["volumes"]}
        assert volumes.get(path) in named, f"{service}: {path} is not on a named volume"
    assert "--appendonly" in services["redis"]["command"]  # Redis writes what it holds


def test_host_ports_are_loopback_only_and_avoid_the_local_defaults(
    compose: dict[str, Any],
) -> None:
    for name, spec in compose["services"].items():
        for mapping in spec.get("ports", []):
            match = re.fullmatch(r"127\.0\.0\.1:\$\{(\w+):-(\d+)\}:(\d+)", mapping)
            assert match, f"{name}: {mapping} is not bound to 127.0.0.1 with an override"
            variable, default = match[1], int(match[2])
            assert default not in LOCAL_DEFAULT_PORTS, f"{name}: {default} collides"
            assert re.search(rf"^{variable}={default}$", ENV_EXAMPLE.read_text(), re.M), (
                f"{variable} is not documented in .env.example"
            )
    advertised = compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "EXTERNAL://localhost:${KAFKA_HOST_PORT:-29092}" in advertised


def test_no_default_credentials(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{(\w*PASSWORD\w*)(:?[-?])", text))
    assert required, "no password variables?"
    for variable, form in required:
        assert form == ":?", f"{variable} has a default: compose must refuse without it"
        assert re.search(rf"^{variable}=$", ENV_EXAMPLE.read_text(), re.M), variable
    grafana = compose["services"]["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_every_long_running_container_restarts(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        if name == "redis-cluster-init" or name.startswith("redis-node-"):
            continue  # a one-shot job; the scale profile's try-out cluster
        assert spec.get("restart") == "unless-stopped", name


# ------------------------------------------------------------ alert rules


def test_alert_rules_are_loaded_and_name_exported_metrics(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    sources = {target: source for source, target in mounts(prometheus).items()}
    config_path = next(
        a for a in prometheus["command"] if a.startswith("--config.file=")
    ).split("=", 1)[1]
    rule_files = load_yaml(sources[config_path])["rule_files"]
    assert rule_files and all(path in sources for path in rule_files), rule_files
    series = exported_series() | PROMETHEUS_SERIES
    alerted: set[str] = set()
    for path in rule_files:
        rules_file = sources[path]
        if shutil.which("promtool"):
            checked = subprocess.run(
                ["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True
            )
            assert checked.returncode == 0, checked.stdout + checked.stderr
        for group in load_yaml(rules_file)["groups"]:
            for rule in group["rules"]:
                assert rule["alert"] and rule["labels"]["severity"] in ("warning", "critical")
                assert rule["annotations"]["summary"], rule["alert"]
                names, grouping = promql_names(rule["expr"])
                unknown = names - set(series)
                assert not unknown, f"{rule['alert']}: not exported: {sorted(unknown)}"
                labels = set().union(*(series[n] for n in names)) | TARGET_LABELS
                assert grouping <= labels, f"{rule['alert']}: no label {grouping - labels}"
                used = set(re.findall(r"\$labels\.(\w+)", json.dumps(rule["annotations"])))
                assert used <= (grouping or labels), f"{rule['alert']}: {used - grouping}"
                alerted |= names
    assert {
        "batchslot_consumer_lag",  # lag growing
        "batchslot_stalled",  # a stall
        "batchslot_outbox_parked_events",  # parked events
        "batchslot_dlq_messages_total",  # dead-letter rate
        "batchslot_ready",  # /readyz failing
    } <= alerted
