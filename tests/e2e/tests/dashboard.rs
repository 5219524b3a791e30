//! The Grafana dashboard `deploy/grafana/attache-dashboard.json` reads only
//! series that exist: every metric and label its queries name is in what
//! attache's real registries encode (the sidecar's and the broker's, which the
//! ECR controller shares), or, for the webhook latency attache does not
//! measure itself, in what the real kube-apiserver exports once it called
//! attache's webhook. And it shows every metric attache exports.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

/// One vector selector of a query: `metric{label op "value", ...}`.
#[derive(Debug)]
struct Selector {
    metric: String,
    matchers: Vec<(String, String, String)>,
}

/// What one PromQL expression reads.
#[derive(Debug, Default)]
struct Query {
    expr: String,
    selectors: Vec<Selector>,
    /// Labels of `by (...)` / `without (...)` / `on (...)` / `ignoring (...)`.
    grouping: BTreeSet<String>,
}

const GROUPING: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const OPERATORS: [&str; 5] = ["and", "or", "unless", "bool", "offset"];
/// Aggregations, which may put `by (...)` before their parenthesis.
const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
];

fn ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Reads a quoted string starting at `chars[*i]`; leaves `*i` after it.
fn quoted(chars: &[char], i: &mut usize) -> String {
    let quote = chars[*i];
    let mut out = String::new();
    *i += 1;
    while *i < chars.len() && chars[*i] != quote {
        if chars[*i] == '\\' {
            *i += 1;
        }
        out.push(chars[*i]);
        *i += 1;
    }
    *i += 1;
    out
}

fn ident(chars: &[char], i: &mut usize) -> String {
    let start = *i;
    while *i < chars.len() && ident_char(chars[*i]) {
        *i += 1;
    }
    chars[start..*i].iter().collect()
}

fn skip_space(chars: &[char], i: &mut usize) {
    while *i < chars.len() && chars[*i].is_whitespace() {
        *i += 1;
    }
}

/// The metrics, matchers and grouping labels of a PromQL expression: enough
/// PromQL for the dashboard's queries (selectors, functions, aggregations
/// with by/without, binary operators, ranges, Grafana's `$__` variables).
fn parse(expr: &str) -> Query {
    let chars: Vec<char> = expr.chars().collect();
    let mut q = Query {
        expr: expr.to_string(),
        ..Query::default()
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            quoted(&chars, &mut i);
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '$' || c.is_ascii_digit() {
            i += 1;
            while i < chars.len() && (ident_char(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if ident_start(c) {
            let word = ident(&chars, &mut i);
            skip_space(&chars, &mut i);
            let call = chars.get(i) == Some(&'(');
            if GROUPING.contains(&word.as_str()) {
                assert!(call, "{word} without a label list in {expr}");
                i += 1;
                while chars[i] != ')' {
                    skip_space(&chars, &mut i);
                    let label = ident(&chars, &mut i);
                    assert!(!label.is_empty(), "label list in {expr}");
                    q.grouping.insert(label);
                    skip_space(&chars, &mut i);
                    if chars[i] == ',' {
                        i += 1;
                    }
                }
                i += 1;
            } else if OPERATORS.contains(&word.as_str())
                || AGGREGATIONS.contains(&word.as_str())
                || call
            {
                // An operator, or a function or aggregation: its arguments follow.
            } else {
                let mut matchers = Vec::new();
                if chars.get(i) == Some(&'{') {
                    i += 1;
                    loop {
                        skip_space(&chars, &mut i);
                        if chars[i] == '}' {
                            i += 1;
                            break;
                        }
                        let label = ident(&chars, &mut i);
                        skip_space(&chars, &mut i);
                        let op_start = i;
                        while matches!(chars[i], '=' | '!' | '~') {
                            i += 1;
                        }
                        let op: String = chars[op_start..i].iter().collect();
                        skip_space(&chars, &mut i);
                        let value = quoted(&chars, &mut i);
                        matchers.push((label, op, value));
                        skip_space(&chars, &mut i);
                        if chars[i] == ',' {
                            i += 1;
                        }
                    }
                }
                q.selectors.push(Selector {
                    metric: word,
                    matchers,
                });
            }
        } else {
            i += 1;
        }
    }
    q
}

/// Every `expr` of the dashboard's panels (rows' nested panels included).
fn dashboard_queries() -> Vec<Query> {
    let path = root().join("deploy/grafana/attache-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dashboard["uid"], "attache");
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    while let Some(p) = panels.pop() {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        panels.extend(p["panels"].as_array().into_iter().flatten());
        for t in p["targets"].as_array().into_iter().flatten() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{t}");
            let expr = t["expr"].as_str().expect("a PromQL expr");
            let q = parse(expr);
            assert!(!q.selectors.is_empty(), "{expr} reads no metric");
            queries.push(q);
        }
    }
    assert!(queries.len() >= 10, "{} queries", queries.len());
    queries
}

/// Sample names of a Prometheus/OpenMetrics text exposition, each with its
/// label names and the values seen.
fn exposition(text: &str) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        let name = ident(&chars, &mut i);
        let labels = out.entry(name).or_default();
        if chars.get(i) == Some(&'{') {
            i += 1;
            while chars[i] != '}' {
                let label = ident(&chars, &mut i);
                assert_eq!(chars[i], '=', "{line}");
                i += 1;
                let value = quoted(&chars, &mut i);
                labels.entry(label).or_default().insert(value);
                if chars[i] == ',' {
                    i += 1;
                }
            }
        }
    }
    out
}

/// What attache's registries encode, with every labelled family given one
/// series (a family without one encodes no sample to learn its labels from).
fn attache_exported() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    use attache_broker::metrics::Metrics as Broker;
    use attache_sidecar::metrics::{KindLabel, Metrics as Sidecar, RequestLabel};
    let sidecar = Sidecar::default();
    sidecar
        .refresh_failures
        .get_or_create(&KindLabel {
            kind: "throttled".into(),
        })
        .inc();
    sidecar
        .requests
        .get_or_create(&RequestLabel {
            path: "/v1/credentials",
            status: 200,
        })
        .inc();
    let broker = Broker::default();
    for family in broker.reason_families() {
        Broker::count(family, "example");
    }
    let text = sidecar.encode() + &broker.encode();
    let exported = exposition(&text);
    // Every family declared has a sample, so none is missing above.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut words = line.split_whitespace().skip(2);
        let (family, kind) = (words.next().unwrap(), words.next().unwrap());
        let sample = match kind {
            "counter" => format!("{family}_total"),
            "histogram" => format!("{family}_bucket"),
            _ => family.to_string(),
        };
        assert!(
            exported.contains_key(&sample),
            "{family} ({kind}) encodes no sample {sample}: give it a series above"
        );
    }
    exported
}

/// Checks one selector against an exposition; `values` also checks that an
/// equality matcher's value occurs (for a real scrape).
fn check(
    q: &Query,
    s: &Selector,
    exported: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    values: bool,
) {
    let labels = exported
        .get(&s.metric)
        .unwrap_or_else(|| panic!("{} (in {}) is not exported", s.metric, q.expr));
    for (label, op, value) in &s.matchers {
        let seen = labels
            .get(label)
            .unwrap_or_else(|| panic!("{} has no label {label} (in {})", s.metric, q.expr));
        if values && op == "=" {
            assert!(
                seen.contains(value),
                "no {}{{{label}=\"{value}\"}} (in {}); seen {seen:?}",
                s.metric,
                q.expr
            );
        }
    }
}

/// Grouping labels must be labels of a metric the query reads.
fn check_grouping(q: &Query, exported: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>) {
    for label in &q.grouping {
        assert!(
            q.selectors.iter().any(|s| exported
                .get(&s.metric)
                .is_some_and(|l| l.contains_key(label))),
            "{} groups by {label}, which none of its metrics has",
            q.expr
        );
    }
}

#[test]
fn the_dashboard_reads_what_attache_exports_and_shows_all_of_it() {
    let exported = attache_exported();
    let mut shown = BTreeSet::new();
    for q in dashboard_queries() {
        let own = q.selectors.iter().any(|s| s.metric.starts_with("attache"));
        for s in &q.selectors {
            if s.metric.starts_with("attache") {
                check(&q, s, &exported, false);
                shown.insert(s.metric.clone());
            }
            // Anything else is the API server's:
            // metrics_attache_does_not_export_come_from_the_api_server.
        }
        if own {
            check_grouping(&q, &exported);
        }
    }
    let missing: Vec<&String> = exported.keys().filter(|m| !shown.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard shows no panel of {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_attache_does_not_export_come_from_the_api_server() {
    let server = deployed().await;
    broker().await;
    // One pod through attache's webhook, so the API server has measured it.
    let admin = server.admin().await;
    let ns = team_namespace(server, &[ROLE]).await;
    service_account(&admin, &ns, "app", json!({"attache.dev/role-arn": ROLE})).await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"serviceAccountName": "app", "containers": [{"name": "app", "image": "busybox"}]},
    }))
    .unwrap();
    let created = Api::<Pod>::namespaced(admin, &ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    assert!(
        created.spec.unwrap().init_containers.is_some(),
        "the webhook injected the pod"
    );
    let text =
        tokio::task::block_in_place(|| run_ok(server.kubectl().args(["get", "--raw", "/metrics"])));
    let apiserver = exposition(&text);
    let mut external = 0;
    for q in dashboard_queries() {
        let theirs = q.selectors.iter().any(|s| !s.metric.starts_with("attache"));
        for s in q
            .selectors
            .iter()
            .filter(|s| !s.metric.starts_with("attache"))
        {
            check(&q, s, &apiserver, true);
            external += 1;
        }
        if theirs {
            check_grouping(&q, &apiserver);
        }
    }
    assert!(
        external > 0,
        "the webhook latency panel reads the API server's histogram"
    );
}
