//! Trust-policy conditions: the principal tags Roles Anywhere derives from a
//! certificate, and `StringEquals` / `StringLike` evaluation over them.

use attache_pki::CertificateInfo;
use x509_parser::prelude::X509Certificate;

use crate::config::{Condition, Operator};

/// Condition keys and their values for one session request (keys lower-case,
/// since IAM condition keys are case-insensitive).
#[derive(Clone, Debug, Default)]
pub(crate) struct PrincipalTags(Vec<(String, String)>);

impl PrincipalTags {
    /// The tags Roles Anywhere sets: `x509Subject/{CN,OU,O}`,
    /// `x509Issuer/{CN,OU,O}`, the first `x509SAN/URI` and `x509SAN/DNS`, plus
    /// `aws:SourceArn` = the trust anchor.
    pub fn from_certificate(
        info: &CertificateInfo,
        cert: &X509Certificate<'_>,
        trust_anchor_arn: &str,
    ) -> Self {
        let mut tags = Vec::new();
        let mut add = |k: &str, v: Option<&String>| {
            if let Some(v) = v {
                tags.push((
                    format!("aws:principaltag/{}", k.to_ascii_lowercase()),
                    v.clone(),
                ));
            }
        };
        add("x509Subject/CN", info.common_name.as_ref());
        add("x509Subject/OU", info.organizational_units.first());
        add("x509Subject/O", info.organizations.first());
        let issuer = cert.issuer();
        add("x509Issuer/CN", first(issuer.iter_common_name()).as_ref());
        add(
            "x509Issuer/OU",
            first(issuer.iter_organizational_unit()).as_ref(),
        );
        add("x509Issuer/O", first(issuer.iter_organization()).as_ref());
        add("x509SAN/URI", info.uris.first());
        add("x509SAN/DNS", info.dns_names.first());
        tags.push(("aws:sourcearn".into(), trust_anchor_arn.to_string()));
        PrincipalTags(tags)
    }

    /// Builds tags from `(key, value)` pairs (for tests).
    #[cfg(test)]
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        PrincipalTags(
            pairs
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        let key = key.to_ascii_lowercase();
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The first attribute value that is a string.
fn first<'a>(
    mut it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
) -> Option<String> {
    it.find_map(|a| a.as_str().ok().map(str::to_string))
}

/// Checks every condition (AND); within one, any value may match (OR). A key
/// the request does not carry fails its condition. The error names the
/// condition that failed and the value seen.
pub(crate) fn evaluate(conditions: &[Condition], tags: &PrincipalTags) -> Result<(), String> {
    for c in conditions {
        let actual = tags.get(&c.key);
        let ok = actual.is_some_and(|a| {
            c.values.iter().any(|v| match c.operator {
                Operator::StringEquals => a == v,
                Operator::StringLike => glob_match(v, a),
            })
        });
        if !ok {
            return Err(format!(
                "condition {} {} {:?} is not met (value: {})",
                c.operator,
                c.key,
                c.values,
                actual.map_or_else(|| "absent".to_string(), |a| format!("{a:?}")),
            ));
        }
    }
    Ok(())
}

/// IAM `StringLike`: `*` matches any run of characters, `?` exactly one.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(op: Operator, key: &str, values: &[&str]) -> Condition {
        Condition {
            operator: op,
            key: key.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn globs_match_like_iam() {
        assert!(glob_match(
            "spiffe://td/ns/*/sa/app",
            "spiffe://td/ns/prod/sa/app"
        ));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "a-x-b-y-c"));
        assert!(!glob_match("a*b", "a-x-c"));
        assert!(!glob_match("abc", "abcd"));
        assert!(!glob_match("ABC", "abc"));
    }

    #[test]
    fn all_conditions_must_hold_and_keys_are_case_insensitive() {
        let tags = PrincipalTags::from_pairs(&[
            ("aws:PrincipalTag/x509Subject/CN", "app"),
            ("aws:PrincipalTag/x509SAN/URI", "spiffe://td/ns/prod/sa/app"),
        ]);
        let ok = [
            cond(
                Operator::StringEquals,
                "aws:principaltag/x509subject/cn",
                &["other", "app"],
            ),
            cond(
                Operator::StringLike,
                "aws:PrincipalTag/x509SAN/URI",
                &["spiffe://td/ns/*/sa/app"],
            ),
        ];
        assert!(evaluate(&ok, &tags).is_ok());
        let bad = [cond(
            Operator::StringEquals,
            "aws:PrincipalTag/x509Subject/CN",
            &["App"],
        )];
        let e = evaluate(&bad, &tags).unwrap_err();
        assert!(e.contains("x509Subject/CN") && e.contains("\"app\""), "{e}");
        let absent = [cond(
            Operator::StringLike,
            "aws:PrincipalTag/x509SAN/DNS",
            &["*"],
        )];
        assert!(evaluate(&absent, &tags).unwrap_err().contains("absent"));
    }
}
