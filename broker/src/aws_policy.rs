//! `attache-broker aws-policy`: prints the IAM role trust policy that lets
//! exactly one ServiceAccount (or an explicit list of them) assume a role
//! through IAM Roles Anywhere, so nobody hand-writes the conditions.
//!
//! ECR pull roles are decided the same way: the ECR controller's sessions
//! carry each pulling ServiceAccount's own identity, so an ECR role's trust
//! policy lists the ServiceAccounts that pull with it
//! (`--service-account team-a/app,team-b/web`).
//!
//! The policy has the shape AWS documents for Roles Anywhere ("Attribute
//! mapping and trust policy"): the service principal
//! `rolesanywhere.amazonaws.com` may `sts:AssumeRole`, `sts:TagSession` and
//! `sts:SetSourceIdentity` only when `aws:SourceArn` is the cluster's trust
//! anchor and the certificate's URI SAN (principal tag `x509SAN/URI`) is the
//! ServiceAccount's SPIFFE ID.

use attache_aws::arn::{ConfigError, validate_rolesanywhere_arn};
use attache_pki::{IdentityError, WorkloadIdentity};
use clap::Args;
use serde::Serialize;

/// The service principal that assumes roles for Roles Anywhere sessions.
pub const SERVICE_PRINCIPAL: &str = "rolesanywhere.amazonaws.com";
/// The actions a Roles Anywhere trust policy must allow.
pub const ACTIONS: [&str; 3] = ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"];
/// The condition key carrying the trust anchor a session came through.
pub const SOURCE_ARN_KEY: &str = "aws:SourceArn";
/// The condition key carrying the certificate's URI SAN.
pub const SAN_URI_KEY: &str = "aws:PrincipalTag/x509SAN/URI";

/// Flags of `attache-broker aws-policy`.
#[derive(Debug, Args, Clone)]
pub struct AwsPolicyArgs {
    /// Namespace of the ServiceAccount(s) named without one in --service-account.
    #[arg(long)]
    pub namespace: Option<String>,
    /// ServiceAccount(s) that may assume the role, comma-separated: NAME (in --namespace) or NAMESPACE/NAME; several for an ECR pull role shared by them.
    #[arg(long, value_delimiter = ',', required_unless_present_any = ["crl_sync", "spiffe_id"])]
    pub service_account: Vec<String>,
    /// SPIFFE IDs that may assume the role, comma-separated, for certificates from another
    /// SPIFFE issuer (a SPIRE server whose CA is the trust anchor, read by the sidecar's
    /// --spiffe-endpoint-socket), e.g. spiffe://example.org/billing/api.
    #[arg(long, value_delimiter = ',')]
    pub spiffe_id: Vec<String>,
    /// Print instead the permission policy of the ECR controller's CRL push role
    /// (--crl-sync-role-arn): ListCrls, ImportCrl, UpdateCrl, EnableCrl in the trust anchor's
    /// account and region. Its trust policy: --service-account attache-system/attache-ecr-controller.
    #[arg(long, conflicts_with_all = ["service_account", "spiffe_id"])]
    pub crl_sync: bool,
    /// The cluster's Roles Anywhere trust anchor (arn:aws:rolesanywhere:<region>:<account>:trust-anchor/<id>).
    #[arg(long, env = "ATTACHE_TRUST_ANCHOR_ARN")]
    pub trust_anchor_arn: String,
    /// Trust domain the broker runs with (its --trust-domain).
    #[arg(long, env = "ATTACHE_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// The role session name setting the role's ServiceAccounts use (their attache.dev/session-name,
    /// else the broker's --session-name): `serial`, `pod` or a fixed name. Anything but `serial` needs
    /// a profile that accepts custom session names; the command says so on stderr.
    #[arg(long, default_value = "serial")]
    pub session_name: String,
}

/// What the Roles Anywhere profile needs besides the role's trust policy,
/// for `aws-policy` to print on stderr (the policy goes alone to stdout).
pub fn profile_notes(args: &AwsPolicyArgs) -> Vec<String> {
    if crate::inject::names_sessions_by_serial(&args.session_name) {
        return Vec::new();
    }
    let setting = args.session_name.trim();
    vec![format!(
        "note: with session name {setting:?} the Roles Anywhere profile must accept custom role session names \
         (otherwise CreateSession is refused): aws rolesanywhere update-profile --profile-id <id> \
         --accept-role-session-name, or AcceptRoleSessionName=true in deploy/aws/attache.yaml"
    )]
}

/// Why no policy was printed.
#[derive(Debug, thiserror::Error)]
pub enum AwsPolicyError {
    /// `--trust-anchor-arn` is not a trust anchor ARN.
    #[error("--trust-anchor-arn: {0}")]
    TrustAnchor(ConfigError),
    /// The namespace, ServiceAccount or trust domain is not a valid name.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A ServiceAccount without a namespace and no `--namespace`.
    #[error("--service-account {0:?} names no namespace: write NAMESPACE/NAME or add --namespace")]
    NoNamespace(String),
    /// A `--spiffe-id` that is not a SPIFFE ID.
    #[error(
        "--spiffe-id {0:?} is not a SPIFFE ID (spiffe://<trust domain: a-z 0-9 . - _>/<path segments: A-Z a-z 0-9 . - _>)"
    )]
    SpiffeId(String),
    /// Writing the policy failed.
    #[error("cannot write the policy: {0}")]
    Write(std::io::Error),
}

/// An IAM trust policy document (the role's `AssumeRolePolicyDocument`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrustPolicy {
    /// Policy language version.
    #[serde(rename = "Version")]
    pub version: &'static str,
    /// The one statement.
    #[serde(rename = "Statement")]
    pub statement: Vec<Statement>,
}

/// One `Allow` statement for the Roles Anywhere service principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    /// Statement id.
    #[serde(rename = "Sid")]
    pub sid: &'static str,
    /// Always `Allow`.
    #[serde(rename = "Effect")]
    pub effect: &'static str,
    /// `{"Service": "rolesanywhere.amazonaws.com"}`.
    #[serde(rename = "Principal")]
    pub principal: Principal,
    /// [`ACTIONS`].
    #[serde(rename = "Action")]
    pub action: Vec<&'static str>,
    /// Trust anchor and ServiceAccount conditions.
    #[serde(rename = "Condition")]
    pub condition: Condition,
}

/// The statement's principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The service principal.
    #[serde(rename = "Service")]
    pub service: &'static str,
}

/// The statement's conditions; all must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    /// `aws:SourceArn` must be the trust anchor.
    #[serde(rename = "ArnEquals")]
    pub arn_equals: SourceArn,
    /// `aws:PrincipalTag/x509SAN/URI` must be the ServiceAccount's SPIFFE ID.
    #[serde(rename = "StringEquals")]
    pub string_equals: SanUri,
}

/// `{"aws:SourceArn": <trust anchor ARN>}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceArn {
    /// The trust anchor ARN.
    #[serde(rename = "aws:SourceArn")]
    pub source_arn: String,
}

/// `{"aws:PrincipalTag/x509SAN/URI": <SPIFFE ID or list of them>}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SanUri {
    /// The SPIFFE ID(s): any one matches.
    #[serde(rename = "aws:PrincipalTag/x509SAN/URI")]
    pub uri: OneOrMany,
}

/// One value, or a list of which any one matches (as IAM condition values are written).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single value.
    One(String),
    /// Several values.
    Many(Vec<String>),
}

/// Whether `id` is a SPIFFE ID as the SPIFFE ID standard defines it.
pub fn is_spiffe_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return false;
    };
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    let domain_ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    let path_ok = path.is_empty()
        || path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        });
    domain_ok && path_ok
}

/// The trust policy for the SPIFFE IDs `uris` through `trust_anchor_arn`,
/// after checking the ARN's shape.
pub fn trust_policy(
    trust_anchor_arn: &str,
    uris: &[String],
) -> Result<TrustPolicy, AwsPolicyError> {
    validate_rolesanywhere_arn(trust_anchor_arn, "trust-anchor")
        .map_err(AwsPolicyError::TrustAnchor)?;
    Ok(TrustPolicy {
        version: "2012-10-17",
        statement: vec![Statement {
            sid: "AttacheServiceAccount",
            effect: "Allow",
            principal: Principal {
                service: SERVICE_PRINCIPAL,
            },
            action: ACTIONS.to_vec(),
            condition: Condition {
                arn_equals: SourceArn {
                    source_arn: trust_anchor_arn.to_string(),
                },
                string_equals: SanUri {
                    uri: match uris {
                        [one] => OneOrMany::One(one.clone()),
                        many => {
                            let mut uris = many.to_vec();
                            uris.sort();
                            uris.dedup();
                            OneOrMany::Many(uris)
                        }
                    },
                },
            },
        }],
    })
}

/// The actions the CRL push makes.
pub const CRL_SYNC_ACTIONS: [&str; 4] = [
    "rolesanywhere:ListCrls",
    "rolesanywhere:ImportCrl",
    "rolesanywhere:UpdateCrl",
    "rolesanywhere:EnableCrl",
];

/// The CRL push role's permission policy: listing and importing CRLs (not
/// tied to an existing resource), updating and enabling CRLs of the trust
/// anchor's account and region.
pub fn crl_sync_policy(trust_anchor_arn: &str) -> Result<serde_json::Value, AwsPolicyError> {
    validate_rolesanywhere_arn(trust_anchor_arn, "trust-anchor")
        .map_err(AwsPolicyError::TrustAnchor)?;
    // arn:<partition>:rolesanywhere:<region>:<account>:trust-anchor/<id>
    let parts: Vec<&str> = trust_anchor_arn.splitn(6, ':').collect();
    let crls = format!(
        "arn:{}:rolesanywhere:{}:{}:crl/*",
        parts[1], parts[3], parts[4]
    );
    Ok(serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AttacheCrlFind",
                "Effect": "Allow",
                "Action": &CRL_SYNC_ACTIONS[..2],
                "Resource": "*"
            },
            {
                "Sid": "AttacheCrlUpdate",
                "Effect": "Allow",
                "Action": &CRL_SYNC_ACTIONS[2..],
                "Resource": crls
            }
        ]
    }))
}

/// Runs `aws-policy`: validates the flags and writes the policy as pretty JSON.
pub fn run(args: &AwsPolicyArgs, out: &mut dyn std::io::Write) -> Result<(), AwsPolicyError> {
    if args.crl_sync {
        let policy = crl_sync_policy(args.trust_anchor_arn.trim())?;
        let json = serde_json::to_string_pretty(&policy)
            .map_err(|e| AwsPolicyError::Write(std::io::Error::other(e)))?;
        return writeln!(out, "{json}").map_err(AwsPolicyError::Write);
    }
    let mut identities = Vec::new();
    for sa in args.service_account.iter().map(|s| s.trim()) {
        let (namespace, name) = match sa.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name),
            None => match &args.namespace {
                Some(ns) => (ns.trim().to_string(), sa),
                None => return Err(AwsPolicyError::NoNamespace(sa.to_string())),
            },
        };
        identities
            .push(WorkloadIdentity::new(args.trust_domain.trim(), &namespace, name)?.spiffe_uri());
    }
    for id in args.spiffe_id.iter().map(|s| s.trim()) {
        if !is_spiffe_id(id) {
            return Err(AwsPolicyError::SpiffeId(id.to_string()));
        }
        identities.push(id.to_string());
    }
    let policy = trust_policy(args.trust_anchor_arn.trim(), &identities)?;
    let json = serde_json::to_string_pretty(&policy)
        .map_err(|e| AwsPolicyError::Write(std::io::Error::other(e)))?;
    writeln!(out, "{json}").map_err(AwsPolicyError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const ANCHOR: &str = "arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/4f1d2c3b-aaaa-bbbb-cccc-0123456789ab";

    fn args(ns: &str, sa: &str, anchor: &str, td: &str) -> AwsPolicyArgs {
        AwsPolicyArgs {
            namespace: Some(ns.into()),
            service_account: vec![sa.into()],
            trust_anchor_arn: anchor.into(),
            trust_domain: td.into(),
            crl_sync: false,
            spiffe_id: vec![],
            session_name: "serial".into(),
        }
    }

    #[test]
    fn custom_session_names_come_with_the_profile_setting_they_need() {
        let notes = |setting: &str| {
            profile_notes(&AwsPolicyArgs {
                session_name: setting.into(),
                ..args("ns", "app", ANCHOR, "cluster.local")
            })
        };
        assert!(notes("serial").is_empty());
        assert!(notes("Serial").is_empty());
        for setting in ["pod", "nightly-batch"] {
            let notes = notes(setting);
            assert_eq!(notes.len(), 1);
            assert!(
                notes[0].contains("--accept-role-session-name")
                    && notes[0].contains("AcceptRoleSessionName=true")
                    && notes[0].contains(&format!("{setting:?}")),
                "{notes:?}"
            );
        }
    }

    #[test]
    fn spire_spiffe_ids_are_pinned_as_given_and_malformed_ones_refused() {
        let mut a = args("x", "y", ANCHOR, "cluster.local");
        a.service_account.clear();
        a.spiffe_id = vec!["spiffe://example.org/billing/api".into()];
        let got: Value = serde_json::from_str(&render(&a).unwrap()).unwrap();
        assert_eq!(
            got["Statement"][0]["Condition"]["StringEquals"]["aws:PrincipalTag/x509SAN/URI"],
            "spiffe://example.org/billing/api"
        );
        for bad in [
            "https://example.org/x",
            "spiffe://",
            "spiffe://Example.org/x",
            "spiffe://example.org//x",
            "spiffe://example.org/../x",
            "spiffe://example.org/x?y",
        ] {
            a.spiffe_id = vec![bad.into()];
            let err = render(&a).unwrap_err().to_string();
            assert!(err.contains("is not a SPIFFE ID"), "{bad}: {err}");
        }
        assert!(is_spiffe_id("spiffe://example.org"));
    }

    #[test]
    fn the_crl_sync_policy_allows_the_four_crl_calls_in_the_anchors_account_only() {
        let mut a = args("x", "y", ANCHOR, "cluster.local");
        a.crl_sync = true;
        let got: Value = serde_json::from_str(&render(&a).unwrap()).unwrap();
        assert_eq!(
            got["Statement"][0]["Action"],
            json!(["rolesanywhere:ListCrls", "rolesanywhere:ImportCrl"])
        );
        assert_eq!(
            got["Statement"][1],
            json!({
                "Sid": "AttacheCrlUpdate",
                "Effect": "Allow",
                "Action": ["rolesanywhere:UpdateCrl", "rolesanywhere:EnableCrl"],
                "Resource": "arn:aws:rolesanywhere:eu-west-1:123456789012:crl/*"
            })
        );
        a.trust_anchor_arn = "arn:aws:iam::123456789012:role/x".into();
        assert!(
            render(&a)
                .unwrap_err()
                .to_string()
                .contains("--trust-anchor-arn")
        );
    }

    fn render(a: &AwsPolicyArgs) -> Result<String, AwsPolicyError> {
        let mut out = Vec::new();
        run(a, &mut out)?;
        Ok(String::from_utf8(out).expect("JSON is UTF-8"))
    }

    #[test]
    fn policy_pins_the_trust_anchor_and_the_service_accounts_spiffe_id() {
        let text = render(&args("payments", "api", ANCHOR, "prod.example.com")).unwrap();
        let got: Value = serde_json::from_str(&text).unwrap();
        let want = json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "AttacheServiceAccount",
                "Effect": "Allow",
                "Principal": {"Service": "rolesanywhere.amazonaws.com"},
                "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
                "Condition": {
                    "ArnEquals": {"aws:SourceArn": ANCHOR},
                    "StringEquals": {
                        "aws:PrincipalTag/x509SAN/URI": "spiffe://prod.example.com/ns/payments/sa/api"
                    }
                }
            }]
        });
        assert_eq!(got, want);
        assert!(text.ends_with("}\n"), "one document, newline-terminated");
    }

    #[test]
    fn keys_come_out_in_the_order_aws_documents_them() {
        let text = render(&args("default", "app", ANCHOR, "cluster.local")).unwrap();
        let pos = |k: &str| text.find(k).unwrap_or_else(|| panic!("{k} missing"));
        assert!(pos("\"Version\"") < pos("\"Statement\""));
        assert!(pos("\"Effect\"") < pos("\"Principal\""));
        assert!(pos("\"Principal\"") < pos("\"Action\""));
        assert!(pos("\"Action\"") < pos("\"Condition\""));
    }

    #[test]
    fn default_trust_domain_matches_the_brokers_default() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: AwsPolicyArgs,
        }
        let cli = Cli::try_parse_from([
            "x",
            "--namespace",
            "team-a",
            "--service-account",
            "reader",
            "--trust-anchor-arn",
            ANCHOR,
        ])
        .unwrap();
        let policy = trust_policy(
            &cli.a.trust_anchor_arn,
            &[WorkloadIdentity::new(
                &cli.a.trust_domain,
                cli.a.namespace.as_deref().unwrap(),
                &cli.a.service_account[0],
            )
            .unwrap()
            .spiffe_uri()],
        )
        .unwrap();
        assert_eq!(
            policy.statement[0].condition.string_equals.uri,
            OneOrMany::One("spiffe://cluster.local/ns/team-a/sa/reader".into())
        );
    }

    #[test]
    fn an_ecr_pull_role_lists_every_service_account_that_pulls_with_it() {
        let a = AwsPolicyArgs {
            namespace: Some("team-a".into()),
            service_account: vec!["app".into(), "team-b/web".into(), "app".into()],
            ..args("team-a", "app", ANCHOR, "cluster.local")
        };
        let got: Value = serde_json::from_str(&render(&a).unwrap()).unwrap();
        assert_eq!(
            got["Statement"][0]["Condition"]["StringEquals"]["aws:PrincipalTag/x509SAN/URI"],
            json!([
                "spiffe://cluster.local/ns/team-a/sa/app",
                "spiffe://cluster.local/ns/team-b/sa/web"
            ])
        );
        assert_eq!(
            got["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"],
            ANCHOR
        );
        // Without --namespace every ServiceAccount must name its own.
        let err = render(&AwsPolicyArgs {
            namespace: None,
            ..a
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("\"app\"") && err.contains("NAMESPACE/NAME"),
            "{err}"
        );
    }

    #[test]
    fn a_profile_or_role_arn_is_refused_as_trust_anchor_naming_the_flag() {
        for bad in [
            "arn:aws:rolesanywhere:eu-west-1:123456789012:profile/p1",
            "arn:aws:iam::123456789012:role/app",
            "trust-anchor/abc",
            "",
        ] {
            let err = render(&args("ns", "sa", bad, "cluster.local")).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("--trust-anchor-arn: "), "{msg}");
            assert!(msg.contains("trust-anchor/<id>"), "{msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
            // main prints `{:#}`: the cause must not be repeated.
            let printed = format!("{:#}", anyhow::Error::from(err));
            assert_eq!(printed.matches("trust-anchor/<id>").count(), 1, "{printed}");
        }
    }

    #[test]
    fn invalid_kubernetes_names_are_refused_with_the_name() {
        let cases = [
            ("Bad_NS", "sa", "cluster.local", "namespace"),
            ("ns", "SA!", "cluster.local", "service account"),
            ("ns", "sa", "not a domain", "trust domain"),
            ("", "sa", "cluster.local", "namespace"),
        ];
        for (ns, sa, td, field) in cases {
            let err = render(&args(ns, sa, ANCHOR, td)).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(field), "{field}: {msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
    }

    #[test]
    fn values_are_json_escaped_not_spliced() {
        // Names cannot carry quotes (they are validated), so the only free text
        // is the ARN id, which the ARN check bounds; the output always parses.
        let anchor = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/a\"b";
        match render(&args("ns", "sa", anchor, "cluster.local")) {
            Ok(text) => {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(
                    v["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"],
                    anchor
                );
            }
            Err(e) => assert!(e.to_string().starts_with("--trust-anchor-arn")),
        }
    }
}
