#!/usr/bin/env python3
"""Checks what kubernetes-validate cannot in a `helm template` of deploy/helm/attache.

Usage: check_rendered.py RENDERED_YAML CORE_YAML

Writes every object of RENDERED_YAML except ServiceMonitors to CORE_YAML (for
kubernetes-validate, which has no schema for that CRD) and checks each
ServiceMonitor's shape instead: monitoring.coreos.com/v1, only fields of the
Prometheus Operator's ServiceMonitor spec that the chart uses, a namespace
selector naming its own namespace, valid durations (timeout within the
interval), and that its selector picks Services with the endpoint's port,
which together reach every Deployment of the render. Also checks that a render
without the ECR controller has none of its objects. Exits 1 on any problem.
"""

import re
import sys

import yaml

DURATION = re.compile(r"^([0-9]+(ms|s|m|h))+$")
SPEC_FIELDS = {"namespaceSelector", "selector", "endpoints", "jobLabel"}
ENDPOINT_FIELDS = {"port", "path", "scheme", "interval", "scrapeTimeout"}


def seconds(duration):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h)", duration))


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_service_monitor(sm, docs, problems):
    where = f"ServiceMonitor {sm['metadata'].get('name')}"
    if sm.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"{where}: apiVersion {sm.get('apiVersion')}, want monitoring.coreos.com/v1")
    ns = sm["metadata"].get("namespace")
    spec = sm.get("spec") or {}
    if set(spec) - SPEC_FIELDS:
        problems.append(f"{where}: unexpected spec fields {sorted(set(spec) - SPEC_FIELDS)}")
    if spec.get("namespaceSelector") != {"matchNames": [ns]}:
        problems.append(f"{where}: namespaceSelector must name its own namespace {ns}")
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    if not selector or set(spec.get("selector")) != {"matchLabels"}:
        problems.append(f"{where}: selector must be non-empty matchLabels")
    endpoints = spec.get("endpoints") or []
    if not endpoints:
        problems.append(f"{where}: no endpoints")
    services = [
        d
        for d in docs
        if d.get("kind") == "Service"
        and d["metadata"].get("namespace") == ns
        and selector
        and matches(selector, d["metadata"].get("labels") or {})
    ]
    if not services:
        problems.append(f"{where}: its selector {selector} picks no Service")
    for ep in endpoints:
        if set(ep) - ENDPOINT_FIELDS:
            problems.append(f"{where}: unexpected endpoint fields {sorted(set(ep) - ENDPOINT_FIELDS)}")
        if not str(ep.get("path", "")).startswith("/"):
            problems.append(f"{where}: endpoint path {ep.get('path')!r}")
        if ep.get("scheme") not in (None, "http", "https"):
            problems.append(f"{where}: endpoint scheme {ep.get('scheme')!r}")
        for key in ("interval", "scrapeTimeout"):
            if key in ep and not DURATION.match(str(ep[key])):
                problems.append(f"{where}: {key} {ep[key]!r} is no Prometheus duration")
        if "interval" in ep and "scrapeTimeout" in ep and DURATION.match(str(ep["interval"])) and DURATION.match(
            str(ep["scrapeTimeout"])
        ):
            if seconds(ep["scrapeTimeout"]) > seconds(ep["interval"]):
                problems.append(f"{where}: scrapeTimeout {ep['scrapeTimeout']} exceeds interval {ep['interval']}")
        for svc in services:
            if not any(p.get("name") == ep.get("port") for p in svc["spec"].get("ports", [])):
                problems.append(f"{where}: Service {svc['metadata']['name']} has no port named {ep.get('port')!r}")
    for dep in (d for d in docs if d.get("kind") == "Deployment"):
        pod_labels = dep["spec"]["template"]["metadata"].get("labels") or {}
        if not any(matches(s["spec"].get("selector") or {"": None}, pod_labels) for s in services):
            problems.append(f"{where}: no selected Service reaches Deployment {dep['metadata']['name']}")


def main(argv):
    if len(argv) != 3:
        raise SystemExit(__doc__)
    with open(argv[1]) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    problems = []
    monitors = [d for d in docs if d.get("kind") == "ServiceMonitor"]
    for sm in monitors:
        check_service_monitor(sm, docs, problems)
    has_controller = any(d.get("kind") == "Deployment" and d["metadata"]["name"] == "attache-ecr-controller" for d in docs)
    if not has_controller:
        for d in docs:
            if "ecr-controller" in d["metadata"]["name"]:
                problems.append(f"{d['kind']} {d['metadata']['name']} rendered without the ECR controller")
    with open(argv[2], "w") as f:
        yaml.safe_dump_all([d for d in docs if d.get("kind") != "ServiceMonitor"], f, sort_keys=False)
    for p in problems:
        print(f"check_rendered: {p}")
    if problems:
        return 1
    print(f"check_rendered: {len(docs)} objects, {len(monitors)} ServiceMonitor(s) checked")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
