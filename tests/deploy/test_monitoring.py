"""deploy/monitoring: the Grafana dashboard asks only for metrics a real agent exports
(an agent with the overlay, masquerade and the IPAM socket on, scraped on its /metrics),
and the PodMonitor has the shape of monitoring.coreos.com/v1 (a schema of the fields it
may use, written here: the CRD is not available offline) and selects every DaemonSet's
pods and their `metrics` port."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon.harness import add_gateways, http_get, running_daemon, wait_for
from xcluster_cni_lib.testing.netns import run_in
from xcluster_cni_lib.testing.nodes import make_node

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MONITORING = DEPLOY / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PODMONITOR = MONITORING / "podmonitor.yaml"
K8S_VERSION = "1.30"

# PromQL words that are not metric names
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "inf", "nan",
}  # fmt: skip


def _dashboard() -> dict[str, Any]:
    doc = json.loads(DASHBOARD.read_text())
    assert isinstance(doc, dict)
    return doc


def _panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in doc["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # inside collapsed rows
    return out


def _queries(doc: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(doc) for t in p.get("targets", [])]
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["query"]["query"])
    return exprs


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana label_values() query) uses."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"label_values\(([^,)]*),[^)]*\)", r"\1", text)  # label_values(m, label)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = m.group(0)
        if text[m.end() :].lstrip().startswith("("):
            continue  # a function or aggregation
        if word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def test_the_name_extraction_finds_metrics_only() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{job=~"$job", x="y{z}"}'
        "[$__rate_interval]))) / on (instance) group_left b_total - time() + c or vector(0)"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}
    assert metric_names('label_values(xcluster_ready{job=~"$job"}, instance)') == {"xcluster_ready"}


def exported_names(text: str) -> set[str]:
    """Every sample name /metrics offers: the samples present, and for each family
    (labelled families have no sample until a label set is used) the names its type
    gives: counters `_total`, histograms `_bucket`/`_sum`/`_count`, gauges the name."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names |= {s.name for s in family.samples}
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
        elif family.type == "gauge":
            names.add(family.name)
    return names


@pytest.fixture(scope="module")
def agent_metrics(tmp_path_factory: pytest.TempPathFactory) -> str:
    """/metrics of a real agent in a namespace: three nodes from a file, the vxlan overlay,
    masquerade and the IPAM socket on, scraped once it is ready."""
    from xcluster_cni_lib.testing.netns import netns

    tmp = tmp_path_factory.mktemp("agent")
    nodes = tmp / "nodes.json"
    nodes.write_text(
        json.dumps(
            {"kind": "NodeList", "items": [make_node(f"n{i}", index=i, images=1) for i in range(3)]}
        )
    )
    with netns("mon") as ns:
        add_gateways(ns)
        # n0's own addresses, for the overlay's local endpoint
        run_in(ns, ["ip", "addr", "add", "192.168.0.1/16", "dev", "gw0"])
        run_in(ns, ["ip", "addr", "add", "fd00::1/64", "dev", "gw0", "nodad"])
        settings = {
            "NODES_FILE": str(nodes),
            "NODE_NAME": "n0",
            "HTTP_ADDRESS": "127.0.0.1:0",
            "OVERLAY": "vxlan",
            "MASQUERADE": "true",
            "IPAM_SOCKET": os.path.join(tmp, "ipam.sock"),
        }
        with running_daemon(ns, **settings) as daemon:
            wait_for(lambda: http_get(daemon, "/readyz")[0] == 200, timeout=30, what="ready")
            code, text = http_get(daemon, "/metrics")
            assert code == 200
            return text


@pytest.mark.root
def test_every_dashboard_query_uses_metrics_the_agent_exports(agent_metrics: str) -> None:
    exported = exported_names(agent_metrics)
    assert "xcluster_ready" in exported and "xcluster_overlay_entries_desired" in exported
    assert "xcluster_masquerade_elements" in exported
    used: set[str] = set()
    for expr in _queries(_dashboard()):
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        missing = names - exported
        assert not missing, f"{expr!r}: not exported by the agent: {sorted(missing)}"
        used |= names
    # the dashboard covers the metrics an operator looks at first
    for name in (
        "xcluster_ready",
        "xcluster_routes_desired",
        "xcluster_routes_installed",
        "xcluster_route_conflicts_current",
        "xcluster_syncs_total",
        "xcluster_sync_duration_seconds_bucket",
        "xcluster_source_healthy",
        "xcluster_ipam_calls_total",
    ):
        assert name in used, name


def test_dashboard_is_importable_grafana_json() -> None:
    doc = _dashboard()
    assert doc["title"] and doc["uid"] and isinstance(doc["schemaVersion"], int)
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in _panels(doc)]
    assert len(ids) == len(set(ids))
    for panel in _panels(doc):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            # every query follows the job and agent pickers
            assert '$job"' in target["expr"] and '$instance"' in target["expr"]


# The part of monitoring.coreos.com/v1 PodMonitor this project may use, strict.
_LABEL_SELECTOR = {"type": "object"}  # checked against Kubernetes' own schema below
_RELABELING = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "action": {"enum": ["replace", "keep", "drop", "labelmap", "labeldrop", "labelkeep"]},
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "replacement": {"type": "string"},
    },
}
PODMONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object"},  # checked as an ObjectMeta below
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "selector": _LABEL_SELECTOR,
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {
                                "type": "string",
                                "pattern": r"^[0-9]+(ms|s|m|h)$",
                            },
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": _RELABELING},
                            "metricRelabelings": {"type": "array", "items": _RELABELING},
                        },
                    },
                },
            },
        },
    },
}


def _podmonitor() -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(PODMONITOR.read_text()) if d]
    assert isinstance(doc, dict)
    return doc


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] in ("In", "NotIn", "Exists", "DoesNotExist")
        present = expr["key"] in labels
        ok = {
            "In": present and labels.get(expr["key"]) in expr.get("values", []),
            "NotIn": labels.get(expr["key"]) not in expr.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expr["operator"]]
        if not ok:
            return False
    return True


def test_podmonitor_has_the_shape_of_monitoring_coreos_com_v1() -> None:
    doc = _podmonitor()
    jsonschema.validate(doc, PODMONITOR_SCHEMA)
    # metadata and the label selector against Kubernetes' own schemas: borrowed by a
    # DaemonSet (ObjectMeta, LabelSelector)
    (ds,) = [
        d
        for d in yaml.safe_load_all((DEPLOY / "xcluster-cni.yaml").read_text())
        if d and d["kind"] == "DaemonSet"
    ]
    probe = copy.deepcopy(ds)
    probe["metadata"] = doc["metadata"]
    probe["spec"]["selector"] = doc["spec"]["selector"]
    kubernetes_validate.validate(probe, K8S_VERSION, strict=True)
    broken = copy.deepcopy(doc)
    broken["spec"]["podMetricsEndpoints"][0]["targetPort"] = 9202  # not in the schema
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, PODMONITOR_SCHEMA)


def _rendered_daemonsets() -> list[dict[str, Any]]:
    from tests.deploy.test_kustomize import VARIANTS, render

    out = []
    for directory in VARIANTS.values():
        out.extend(d for d in render(directory) if d["kind"] == "DaemonSet")
    for name in ("xcluster-cni.yaml", "xcluster-cni-secondary-net.yaml"):
        docs = yaml.safe_load_all((DEPLOY / name).read_text())
        out.extend(d for d in docs if d and d["kind"] == "DaemonSet")
    return out


def test_podmonitor_selects_every_agent_and_its_metrics_port() -> None:
    spec = _podmonitor()["spec"]
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    daemonsets = _rendered_daemonsets()
    assert len({d["metadata"]["name"] for d in daemonsets}) == 3  # main, net2, net3
    for ds in daemonsets:
        assert ds["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]
        assert _selects(spec["selector"], ds["spec"]["template"]["metadata"]["labels"])
        (daemon,) = [
            c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "xcluster-cni"
        ]
        assert endpoint["port"] in {p["name"] for p in daemon["ports"]}
