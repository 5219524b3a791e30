//! Label selectors (query strings and `metav1.LabelSelector`) and field selectors.

use serde_json::{Map, Value};

use crate::status::{ApiError, ApiResult};

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq)]
pub enum Requirement {
    /// `key=value` / `key==value` / `key in (a,b)`.
    In(String, Vec<String>),
    /// `key!=value` / `key notin (a,b)` (also matches when the key is absent).
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

/// A parsed label selector: all requirements must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(pub Vec<Requirement>);

impl LabelSelector {
    /// Parses the `labelSelector` query syntax.
    pub fn parse(s: &str) -> ApiResult<LabelSelector> {
        let mut reqs = vec![];
        for part in split_top(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_requirement(part).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unable to parse requirement: found '{part}', expected: in, notin, =, ==, !=, gt, lt"
                ))
            })?);
        }
        Ok(LabelSelector(reqs))
    }

    /// From a `metav1.LabelSelector` object (`matchLabels` + `matchExpressions`).
    /// A missing selector matches everything, like the real server's webhooks.
    pub fn from_object(sel: Option<&Value>) -> ApiResult<LabelSelector> {
        let mut reqs = vec![];
        let Some(sel) = sel else {
            return Ok(LabelSelector(reqs));
        };
        if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in ml {
                reqs.push(Requirement::In(
                    k.clone(),
                    vec![v.as_str().unwrap_or_default().to_string()],
                ));
            }
        }
        for e in sel
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = e
                .get("key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let values: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            let op = e
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or_default();
            reqs.push(match op {
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "{other:?} is not a valid label selector operator"
                    )));
                }
            });
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Map<String, Value>) -> bool {
        self.0.iter().all(|r| {
            let get = |k: &str| labels.get(k).and_then(Value::as_str);
            match r {
                Requirement::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
                Requirement::NotIn(k, vs) => get(k).is_none_or(|v| vs.iter().all(|x| x != v)),
                Requirement::Exists(k) => labels.contains_key(k),
                Requirement::DoesNotExist(k) => !labels.contains_key(k),
            }
        })
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = vec![];
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    crate::meta::is_qualified_name(k)
}

fn parse_set(rest: &str) -> Option<Vec<String>> {
    let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
    let vals: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    vals.iter()
        .all(|v| crate::meta::is_label_value(v))
        .then_some(vals)
}

fn parse_requirement(p: &str) -> Option<Requirement> {
    if let Some(k) = p.strip_prefix('!') {
        let k = k.trim();
        return valid_key(k).then(|| Requirement::DoesNotExist(k.into()));
    }
    for (op, neg) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((k, v)) = p.split_once(op) {
            let (k, v) = (k.trim(), v.trim());
            if !valid_key(k) || !crate::meta::is_label_value(v) {
                return None;
            }
            return Some(if neg {
                Requirement::NotIn(k.into(), vec![v.into()])
            } else {
                Requirement::In(k.into(), vec![v.into()])
            });
        }
    }
    let mut it = p.splitn(2, char::is_whitespace);
    let k = it.next()?.trim();
    let rest = it.next().map(str::trim).unwrap_or_default();
    if rest.is_empty() {
        return valid_key(k).then(|| Requirement::Exists(k.into()));
    }
    if !valid_key(k) {
        return None;
    }
    if let Some(set) = rest.strip_prefix("notin") {
        return parse_set(set).map(|v| Requirement::NotIn(k.into(), v));
    }
    if let Some(set) = rest.strip_prefix("in") {
        return parse_set(set).map(|v| Requirement::In(k.into(), v));
    }
    None
}

/// A parsed field selector (`a=b,c!=d`), restricted to the fields the real server
/// indexes for each resource.
#[derive(Clone, Debug, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// Field selectors each resource supports beyond `metadata.name`/`metadata.namespace`.
fn supported_fields(resource: &str) -> &'static [&'static str] {
    match resource {
        "pods" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "secrets" => &["type"],
        "namespaces" => &["status.phase"],
        "events" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
            "regarding.kind",
            "regarding.name",
            "regarding.namespace",
            "regarding.uid",
        ],
        _ => &[],
    }
}

impl FieldSelector {
    /// Parses `s` for `resource`; unsupported fields are a 400 like the real server's.
    pub fn parse(resource: &str, s: &str) -> ApiResult<FieldSelector> {
        let mut reqs = vec![];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, neg, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, false, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if !(field == "metadata.name"
                || field == "metadata.namespace"
                || supported_fields(resource).contains(&field))
            {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push((field.to_string(), neg, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    /// Whether `obj` satisfies every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, neg, want)| {
            let mut cur = obj;
            for seg in field.split('.') {
                cur = cur.get(seg).unwrap_or(&Value::Null);
            }
            let have = match cur {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                Value::Null if field == "spec.hostNetwork" => "false".into(),
                _ => String::new(),
            };
            (have == *want) != *neg
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn set_based_and_equality() {
        let l = labels(json!({"app": "web", "tier": "front"}));
        let ok = |s: &str| LabelSelector::parse(s).map(|sel| sel.matches(&l));
        assert_eq!(ok("app=web").ok(), Some(true));
        assert_eq!(ok("app==web,tier!=back").ok(), Some(true));
        assert_eq!(ok("app in (web, api),tier").ok(), Some(true));
        assert_eq!(ok("app notin (web)").ok(), Some(false));
        assert_eq!(ok("!missing").ok(), Some(true));
        assert_eq!(ok("!app").ok(), Some(false));
        assert_eq!(ok("missing").ok(), Some(false));
        assert!(LabelSelector::parse("app in web").is_err());
    }

    #[test]
    fn fields() {
        let pod = json!({"metadata": {"name": "p"}, "status": {"phase": "Pending"}});
        let sel = FieldSelector::parse("pods", "metadata.name=p,status.phase!=Running");
        assert!(sel.map(|s| s.matches(&pod)).unwrap_or(false));
        assert!(FieldSelector::parse("pods", "spec.bogus=1").is_err());
    }
}
