//! Namespace role policy: `attache.dev/allowed-roles` on a namespace lists the
//! role ARNs (or `*` globs) its pods may assume.

use std::collections::BTreeMap;

use attache_api::names::ANN_ALLOWED_ROLES;

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

/// Which ServiceAccount overrides of the Roles Anywhere profile and trust
/// anchor (`attache.dev/profile-arn`, `attache.dev/trust-anchor-arn`) are
/// allowed: the configured default always, anything else only when it
/// matches a glob of `--allowed-profile-arns` / `--allowed-trust-anchor-arns`
/// (empty: no other value). Checked by the webhook, the certificate API and
/// the ECR controller alike.
#[derive(Clone, Debug, Default)]
pub struct ArnOverrides {
    /// The broker's `--profile-arn`.
    pub default_profile: Option<String>,
    /// The broker's `--trust-anchor-arn`.
    pub default_trust_anchor: Option<String>,
    /// `--allowed-profile-arns`: globs of profile ARNs a ServiceAccount may name.
    pub allowed_profiles: Vec<String>,
    /// `--allowed-trust-anchor-arns`: globs of trust anchor ARNs a ServiceAccount may name.
    pub allowed_trust_anchors: Vec<String>,
}

/// A ServiceAccount names a profile or trust anchor the broker does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "ServiceAccount {namespace}/{service_account} sets {annotation}={value:?}, which is not allowed: only the default or an ARN matching {flag} may be named"
)]
pub struct OverrideNotAllowed {
    /// Namespace.
    pub namespace: String,
    /// ServiceAccount.
    pub service_account: String,
    /// The annotation.
    pub annotation: &'static str,
    /// Its value.
    pub value: String,
    /// The flag listing what is allowed.
    pub flag: &'static str,
}

impl ArnOverrides {
    /// Checks the ServiceAccount's profile and trust anchor overrides.
    pub fn check(
        &self,
        namespace: &str,
        service_account: &str,
        sa_annotations: &BTreeMap<String, String>,
    ) -> Result<(), OverrideNotAllowed> {
        use attache_api::names::{ANN_PROFILE_ARN, ANN_TRUST_ANCHOR_ARN};
        for (annotation, default, allowed, flag) in [
            (
                ANN_PROFILE_ARN,
                &self.default_profile,
                &self.allowed_profiles,
                "--allowed-profile-arns",
            ),
            (
                ANN_TRUST_ANCHOR_ARN,
                &self.default_trust_anchor,
                &self.allowed_trust_anchors,
                "--allowed-trust-anchor-arns",
            ),
        ] {
            let Some(value) = sa_annotations
                .get(annotation)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
            else {
                continue;
            };
            if default.as_deref() == Some(value) || allowed.iter().any(|p| glob_match(p, value)) {
                continue;
            }
            return Err(OverrideNotAllowed {
                namespace: namespace.to_string(),
                service_account: service_account.to_string(),
                annotation,
                value: value.to_string(),
                flag,
            });
        }
        Ok(())
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
    fn profile_and_trust_anchor_overrides_need_the_default_or_an_allowed_glob() {
        use attache_api::names::{ANN_PROFILE_ARN, ANN_TRUST_ANCHOR_ARN};
        let p = "arn:aws:rolesanywhere:eu-west-1:1:profile/default";
        let a = "arn:aws:rolesanywhere:eu-west-1:1:trust-anchor/default";
        let o = ArnOverrides {
            default_profile: Some(p.into()),
            default_trust_anchor: Some(a.into()),
            allowed_profiles: vec!["arn:aws:rolesanywhere:eu-west-1:1:profile/team-*".into()],
            allowed_trust_anchors: vec![],
        };
        let ann = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(o.check("ns", "sa", &BTreeMap::new()).is_ok());
        assert!(o.check("ns", "sa", &ann(ANN_PROFILE_ARN, p)).is_ok());
        assert!(o.check("ns", "sa", &ann(ANN_TRUST_ANCHOR_ARN, a)).is_ok());
        assert!(o.check("ns", "sa", &ann(ANN_PROFILE_ARN, " ")).is_ok());
        assert!(
            o.check(
                "ns",
                "sa",
                &ann(
                    ANN_PROFILE_ARN,
                    "arn:aws:rolesanywhere:eu-west-1:1:profile/team-a"
                )
            )
            .is_ok()
        );
        let e = o
            .check(
                "ns",
                "sa",
                &ann(
                    ANN_PROFILE_ARN,
                    "arn:aws:rolesanywhere:eu-west-1:2:profile/team-a",
                ),
            )
            .unwrap_err();
        assert_eq!(e.flag, "--allowed-profile-arns");
        let e = o
            .check(
                "ns",
                "sa",
                &ann(
                    ANN_TRUST_ANCHOR_ARN,
                    "arn:aws:rolesanywhere:eu-west-1:1:trust-anchor/other",
                ),
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ns/sa")
                && e.contains(ANN_TRUST_ANCHOR_ARN)
                && e.contains("--allowed-trust-anchor-arns"),
            "{e}"
        );
        // No default configured: every override needs the allow-list.
        assert!(
            ArnOverrides::default()
                .check("ns", "sa", &ann(ANN_PROFILE_ARN, p))
                .is_err()
        );
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

#[cfg(test)]
mod properties {
    use super::glob_match;
    use proptest::prelude::*;

    /// ARN-like text: segments of letters, digits and `-` joined by `:` and `/`.
    fn segment() -> impl Strategy<Value = String> {
        "[a-z0-9-]{0,6}"
    }

    fn arn() -> impl Strategy<Value = String> {
        prop::collection::vec((segment(), prop_oneof![Just(':'), Just('/')]), 1..6).prop_map(
            |parts| {
                let mut s: String = parts
                    .iter()
                    .map(|(seg, sep)| format!("{seg}{sep}"))
                    .collect();
                s.pop();
                s
            },
        )
    }

    fn separators(s: &str) -> String {
        s.chars().filter(|c| matches!(c, ':' | '/')).collect()
    }

    proptest! {
        /// A pattern without `*` matches exactly itself.
        #[test]
        fn a_literal_matches_only_itself(p in arn(), t in arn()) {
            prop_assert!(glob_match(&p, &p));
            prop_assert_eq!(glob_match(&p, &t), p == t);
        }

        /// Replacing any one segment of an ARN by `*` matches the ARN, and no
        /// ARN whose segment there holds another `:` or `/`.
        #[test]
        fn a_single_star_stays_inside_its_segment(
            parts in prop::collection::vec(segment(), 1..6),
            at in any::<prop::sample::Index>(),
            sep in prop_oneof![Just(':'), Just('/')],
            extra in segment(),
        ) {
            let i = at.index(parts.len());
            let mut pattern = parts.clone();
            pattern[i] = "*".into();
            let pattern = pattern.join(":");
            prop_assert!(glob_match(&pattern, &parts.join(":")));
            let mut wider = parts.clone();
            wider[i] = format!("{}{sep}{extra}", parts[i]);
            prop_assert!(!glob_match(&pattern, &wider.join(":")), "{} matched {}", pattern, wider.join(":"));
            // `**` in the same place does cross.
            let mut deep = parts.clone();
            deep[i] = "**".into();
            prop_assert!(glob_match(&deep.join(":"), &wider.join(":")));
        }

        /// Whatever a pattern without `**` matches has exactly the pattern's
        /// `:` and `/` separators, in the same order.
        #[test]
        fn without_double_star_separators_are_literal(
            p in prop::collection::vec(prop_oneof![segment(), Just("*".to_string())], 1..5)
                .prop_flat_map(|segs| {
                    let n = segs.len();
                    (Just(segs), prop::collection::vec(prop_oneof![Just(':'), Just('/')], n))
                })
                .prop_map(|(segs, seps)| {
                    let mut s = String::new();
                    for (seg, sep) in segs.iter().zip(seps) {
                        s.push_str(seg);
                        s.push(sep);
                    }
                    s.pop();
                    s
                }),
            t in arn(),
        ) {
            prop_assume!(!p.contains("**"));
            if glob_match(&p, &t) {
                prop_assert_eq!(separators(&p), separators(&t));
            }
            // `*` alone is one segment: it matches exactly the texts without separators.
            prop_assert_eq!(glob_match("*", &t), separators(&t).is_empty());
            // `**` alone matches everything.
            prop_assert!(glob_match("**", &t));
        }

        /// prefix`*`suffix matches exactly the texts with that prefix and
        /// suffix and no separator in between.
        #[test]
        fn star_between_literals(pre in arn(), mid in "[a-z0-9:/-]{0,8}", suf in arn()) {
            let pattern = format!("{pre}*{suf}");
            let text = format!("{pre}{mid}{suf}");
            // The literals have fixed lengths, so `*` covers exactly `mid`.
            prop_assert_eq!(glob_match(&pattern, &text), separators(&mid).is_empty());
            let across = format!("{pre}**{suf}");
            prop_assert!(glob_match(&across, &text));
        }
    }
}
