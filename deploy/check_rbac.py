#!/usr/bin/env python3
"""Checks that rendered manifests grant each of attache's identities exactly its API calls.

Usage: check_rbac.py CALLS_JSON RENDERED_YAML

CALLS_JSON is deploy/kubernetes/broker-api-calls.json, RENDERED_YAML the output
of `kubectl kustomize deploy/kubernetes`. Each call names the ServiceAccount
that makes it (attache-broker, attache-ecr-controller); each such account must
be the one a Deployment of the manifests runs as. Every listed call must be
granted to its ServiceAccount, and every grant to it must be needed by one of
its calls, no wider (scope, resource names) than needed; no wildcards, no
nonResourceURLs; the manifests bind no role to any other ServiceAccount of
attache's namespace. broker/tests/rbac.rs checks the same rules.
Prints one line per problem and exits 1 if there is any.
"""

import json
import sys

import yaml


def load(calls_path, rendered_path):
    with open(calls_path) as f:
        calls = json.load(f)["calls"]
    with open(rendered_path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    return calls, docs


def deployment_identities(docs):
    """(namespace, serviceAccountName) of every Deployment."""
    out = set()
    for d in docs:
        if d.get("kind") == "Deployment":
            ns = d["metadata"].get("namespace", "")
            sa = d["spec"]["template"]["spec"].get("serviceAccountName", "")
            out.add((ns, sa))
    return out


def broker_namespace(docs):
    for d in docs:
        if d.get("kind") == "Deployment" and d["metadata"]["name"] == "attache-broker":
            return d["metadata"].get("namespace", "")
    raise SystemExit("check_rbac: the manifests have no Deployment attache-broker")


def grants(docs, own, sa, problems):
    out = []
    for b in docs:
        kind = b.get("kind")
        if kind not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(
            s.get("kind") == "ServiceAccount" and s.get("name") == sa and s.get("namespace") == own
            for s in b.get("subjects") or []
        ):
            continue
        reach = "cluster" if kind == "ClusterRoleBinding" else b["metadata"].get("namespace", "")
        ref = b["roleRef"]
        role = next(
            (
                d
                for d in docs
                if d.get("kind") == ref["kind"]
                and d["metadata"]["name"] == ref["name"]
                and (ref["kind"] == "ClusterRole" or d["metadata"].get("namespace") == reach)
            ),
            None,
        )
        binding = f"{kind} {b['metadata']['name']}"
        if role is None:
            problems.append(f"{binding} refers to a missing {ref['kind']} {ref['name']}")
            continue
        for i, rule in enumerate(role.get("rules") or []):
            origin = f"{ref['kind']} {ref['name']} rule {i} (via {binding})"
            if rule.get("nonResourceURLs"):
                problems.append(f"{origin}: nonResourceURLs are never needed")
            fields = rule.get("apiGroups", []) + rule.get("resources", []) + rule.get("verbs", [])
            if any("*" in s for s in fields):
                problems.append(f"{origin}: wildcard is not least privilege")
            names = rule.get("resourceNames")
            for g in rule.get("apiGroups", []):
                for r in rule.get("resources", []):
                    for v in rule.get("verbs", []):
                        out.append((reach, g, r, v, set(names) if names is not None else None, origin))
    return out


def same_target(g, c):
    return (g[1], g[2], g[3]) == (c["group"], c["resource"], c["verb"])


def allows(g, c, own):
    reach, names = g[0], g[4]
    reach_ok = reach == "cluster" or (c["scope"] == "own" and reach == own)
    name = c.get("resourceName")
    name_ok = names is None or (name is not None and name in names)
    return reach_ok and name_ok and same_target(g, c)


def needed(g, calls, own):
    """Is grant g needed by the calls, and no wider? A grant pinned to several
    names needs a call for each name."""
    reach, names = g[0], g[4]

    def fits(c):
        if not same_target(g, c):
            return False
        if reach == "cluster":
            return c["scope"] in ("any", "cluster")
        return c["scope"] == "own" and reach == own

    if names is None:
        return any(fits(c) and c.get("resourceName") is None for c in calls)
    return all(any(fits(c) and c.get("resourceName") == n for c in calls) for n in names)


def check_identity(docs, calls, own, sa, problems):
    for c in calls:
        if c.get("scope") not in ("own", "any", "cluster"):
            problems.append(f"bad scope in call list: {c}")
    gs = grants(docs, own, sa, problems)
    for c in calls:
        if not any(allows(g, c, own) for g in gs):
            problems.append(
                f"{sa}: not granted: {c['verb']} {c['group']}/{c['resource']} scope={c['scope']}"
                f" name={c.get('resourceName')} ({c.get('why', '')})"
            )
    for g in gs:
        if not needed(g, calls, own):
            problems.append(
                f"{sa}: granted but not needed by any listed call: {g[3]} {g[1]}/{g[2]}"
                f" reach={g[0]} names={sorted(g[4]) if g[4] is not None else None} from {g[5]}"
            )
    return gs


def main(argv):
    if len(argv) != 3:
        raise SystemExit(__doc__)
    calls, docs = load(argv[1], argv[2])
    own = broker_namespace(docs)
    problems = []
    running = deployment_identities(docs)
    identities = sorted({c.get("serviceAccount", "") for c in calls})
    summary = []
    for sa in identities:
        if not sa:
            problems.append("a call names no serviceAccount")
            continue
        if (own, sa) not in running:
            problems.append(f"no Deployment in {own} runs as ServiceAccount {sa}, which broker-api-calls.json lists")
        mine = [c for c in calls if c.get("serviceAccount") == sa]
        gs = check_identity(docs, mine, own, sa, problems)
        summary.append(f"{len(mine)} calls granted to {own}/{sa}, {len(gs)} grants all needed")
    # No grant to any other ServiceAccount of attache's namespace.
    for b in docs:
        if b.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        for s in b.get("subjects") or []:
            if s.get("kind") == "ServiceAccount" and s.get("namespace") == own and s.get("name") not in identities:
                problems.append(f"{b['kind']} {b['metadata']['name']} grants ServiceAccount {s.get('name')}, which has no calls listed")
    for p in problems:
        print(f"check_rbac: {p}")
    if problems:
        return 1
    print("check_rbac: " + "; ".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
