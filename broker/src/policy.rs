//! Namespace role policy: `attache.dev/allowed-roles` on a namespace lists the
//! role ARNs (or `*` globs) its pods may assume.

use std::collections::BTreeMap;

use crate::names::ANN_ALLOWED_ROLES;

/// Why a role may not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The namespace does not list the role.
    #[error(
        "namespace {namespace:?} does not allow role {role:?}: add it (or a matching glob) to the namespace annotation {ANN_ALLOWED_ROLES}, e.g. kubectl annotate namespace {namespace} '{ANN_ALLOWED_ROLES}=[\"{role}\"]'"
    )]
    NotAllowed {
        /// Namespace.
        namespace: String,
        /// Role ARN.
        role: String,
    },
    /// The annotation is not a JSON list of strings.
    #[error(
        "namespace {namespace:?} has an invalid {ANN_ALLOWED_ROLES} annotation: {reason} (expected a JSON list such as [\"arn:aws:iam::123456789012:role/app-*\"])"
    )]
    Malformed {
        /// Namespace.
        namespace: String,
        /// Parse error.
        reason: String,
    },
}

/// Checks `role` against the namespace's annotations. With restrictions off,
/// every role is allowed.
pub fn check_role(
    namespace: &str,
    annotations: &BTreeMap<String, String>,
    role: &str,
    restrictions: bool,
) -> Result<(), PolicyError> {
    if !restrictions {
        return Ok(());
    }
    let not_allowed = || PolicyError::NotAllowed {
        namespace: namespace.to_string(),
        role: role.to_string(),
    };
    let Some(raw) = annotations.get(ANN_ALLOWED_ROLES) else {
        return Err(not_allowed());
    };
    let patterns: Vec<String> = serde_json::from_str(raw).map_err(|e| PolicyError::Malformed {
        namespace: namespace.to_string(),
        reason: e.to_string(),
    })?;
    if patterns.iter().any(|p| glob_match(p, role)) {
        Ok(())
    } else {
        Err(not_allowed())
    }
}

/// Segment-aware glob: `*` matches any run of characters within one ARN
/// segment (never `:` or `/`), `**` any run at all; everything else matches
/// literally. So `arn:aws:iam::111122223333:role/team-a*` matches
/// `role/team-a-reader` but neither `role/team-admin/..` paths nor another
/// account, and `**` alone allows every role.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Tok {
        Lit(char),
        Star,
        AnyStar,
    }
    let mut toks = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '*' {
            toks.push(Tok::Lit(c));
        } else if chars.peek() == Some(&'*') {
            while chars.peek() == Some(&'*') {
                chars.next();
            }
            toks.push(Tok::AnyStar);
        } else {
            toks.push(Tok::Star);
        }
    }
    let text: Vec<char> = text.chars().collect();
    // reach[j]: the first i tokens can match text[..j].
    let mut reach = vec![false; text.len() + 1];
    reach[0] = true;
    for tok in toks {
        let mut next = vec![false; text.len() + 1];
        for j in 0..=text.len() {
            match tok {
                Tok::Lit(c) => next[j] = j > 0 && reach[j - 1] && text[j - 1] == c,
                Tok::AnyStar => next[j] = reach[j] || (j > 0 && next[j - 1]),
                Tok::Star => {
                    next[j] =
                        reach[j] || (j > 0 && next[j - 1] && !matches!(text[j - 1], ':' | '/'))
                }
            }
        }
        reach = next;
    }
    reach[text.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(ANN_ALLOWED_ROLES.to_string(), v.to_string())])
    }

    #[test]
    fn globs_match_like_kube2iam() {
        assert!(glob_match(
            "arn:aws:iam::1:role/app-*",
            "arn:aws:iam::1:role/app-reader"
        ));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("**", "arn:aws:iam::1:role/anything"));
        assert!(glob_match(
            "arn:**:role/*-reader",
            "arn:aws:iam::1:role/s3-reader"
        ));
        assert!(!glob_match(
            "arn:aws:iam::1:role/app-*",
            "arn:aws:iam::2:role/app-reader"
        ));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("exact", "exact") && !glob_match("exact", "exactly"));
    }

    #[test]
    fn a_single_star_never_crosses_a_segment() {
        let team_a = "arn:aws:iam::111122223333:role/team-a*";
        assert!(glob_match(
            team_a,
            "arn:aws:iam::111122223333:role/team-a-reader"
        ));
        assert!(!glob_match(
            team_a,
            "arn:aws:iam::111122223333:role/team-a/admin"
        ));
        assert!(!glob_match(
            "arn:aws:iam::*:role/team-a",
            "arn:aws:iam::1:x:role/team-a"
        ));
        assert!(
            !glob_match("*", "arn:aws:iam::1:role/x"),
            "`*` alone is one segment"
        );
        assert!(!glob_match("arn:*", "arn:aws:iam::1:role/x"));
        assert!(glob_match(
            "arn:aws:iam::*:role/**",
            "arn:aws:iam::1:role/path/x"
        ));
    }

    #[test]
    fn policy_names_namespace_role_and_annotation() {
        let role = "arn:aws:iam::123456789012:role/r";
        assert!(check_role("a", &ns(&format!("[\"{role}\"]")), role, true).is_ok());
        assert!(check_role("a", &BTreeMap::new(), role, false).is_ok());
        let err = check_role("team-a", &BTreeMap::new(), role, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"team-a\"") && err.contains(role) && err.contains(ANN_ALLOWED_ROLES),
            "{err}"
        );
        let err = check_role("a", &ns("arn:x"), role, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid") && err.contains("JSON list"),
            "{err}"
        );
        assert!(
            check_role(
                "a",
                &ns("[\"arn:aws:iam::123456789012:role/other\"]"),
                role,
                true
            )
            .is_err()
        );
    }
}
