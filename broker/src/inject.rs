//! Sidecar injection as a pure function: from a pod, its ServiceAccount's and
//! namespace's annotations and the broker's settings, decide to skip, deny,
//! or return a minimal RFC 6902 JSON Patch.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use serde_json::{Value, json};

use crate::flags::SessionDefaults;
use crate::policy::check_role;
use attache_api::env;
use attache_api::names::*;

/// Broker settings the injection uses.
#[derive(Clone, Debug)]
pub struct InjectConfig {
    /// The sidecar container: image, resources, UID, native or plain.
    pub sidecar: SidecarSpec,
    /// Where sessions go unless a ServiceAccount says otherwise (region,
    /// profile, trust anchor), and which overrides it may make.
    pub session: SessionDefaults,
    /// Role session name when the ServiceAccount has no
    /// `attache.dev/session-name`: `serial`, `pod` or a fixed name.
    pub session_name: String,
    /// How the sidecar reaches the broker's certificate API.
    pub broker: BrokerAccess,
    /// Enforce `attache.dev/allowed-roles`.
    pub restrictions: bool,
}

/// The sidecar container the webhook injects.
#[derive(Clone, Debug)]
pub struct SidecarSpec {
    /// Image.
    pub image: String,
    /// `imagePullPolicy`.
    pub image_pull_policy: String,
    /// Requests and limit.
    pub resources: SidecarResources,
    /// Native sidecar (init container with `restartPolicy: Always`,
    /// Kubernetes >= 1.29); false: a plain container.
    pub native: bool,
    /// UID and GID it runs as: one no app container uses, so an app sharing
    /// the pod's process namespace cannot read the sidecar's memory.
    pub uid: i64,
}

/// The sidecar's resource requests and limit, as Kubernetes quantities.
#[derive(Clone, Debug)]
pub struct SidecarResources {
    /// CPU request, e.g. `10m`.
    pub cpu_request: String,
    /// Memory request, e.g. `16Mi`.
    pub memory_request: String,
    /// Memory limit, e.g. `64Mi`.
    pub memory_limit: String,
}

/// How an injected sidecar reaches the broker.
#[derive(Clone, Debug)]
pub struct BrokerAccess {
    /// URL of the certificate API.
    pub url: String,
    /// PEM bundle the sidecar trusts for the broker.
    pub ca_bundle_pem: String,
    /// Lifetime of the projected ServiceAccount token the sidecar proves
    /// itself with, seconds.
    pub token_seconds: i64,
}

impl InjectConfig {
    /// A complete configuration with example values (one profile and trust
    /// anchor in eu-west-1, a native sidecar, namespace restrictions on),
    /// for tests, fuzzing and docs.
    pub fn example() -> Self {
        InjectConfig {
            sidecar: SidecarSpec {
                image: "ghcr.io/attache-dev/attache:test".into(),
                image_pull_policy: "IfNotPresent".into(),
                resources: SidecarResources {
                    cpu_request: "10m".into(),
                    memory_request: "16Mi".into(),
                    memory_limit: "64Mi".into(),
                },
                native: true,
                uid: 19911,
            },
            session: SessionDefaults {
                region: "us-east-1".into(),
                profile_arn: Some("arn:aws:rolesanywhere:eu-west-1:123456789012:profile/p".into()),
                trust_anchor_arn: Some(
                    "arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/t".into(),
                ),
                ..SessionDefaults::default()
            },
            session_name: "serial".into(),
            broker: BrokerAccess {
                url: "https://attache-broker.attache-system.svc:8443".into(),
                ca_bundle_pem: "-----BEGIN CERTIFICATE-----\n".into(),
                token_seconds: 3600,
            },
            restrictions: true,
        }
    }
}

/// What to do with a pod.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Leave the pod as it is, and why.
    Skip(&'static str),
    /// Refuse the pod with this message.
    Deny(String),
    /// Apply this JSON Patch; `warnings` go back to the user.
    Patch {
        /// RFC 6902 operations.
        ops: Patch,
        /// Warnings for `kubectl`.
        warnings: Vec<String>,
        /// The role the pod will assume (for logs and metrics).
        role_arn: String,
    },
}

/// The inputs beside the pod.
pub struct Context<'a> {
    /// Pod namespace.
    pub namespace: &'a str,
    /// Namespace annotations.
    pub namespace_annotations: &'a BTreeMap<String, String>,
    /// ServiceAccount name.
    pub service_account: &'a str,
    /// ServiceAccount annotations (empty when the SA does not exist yet).
    pub sa_annotations: &'a BTreeMap<String, String>,
}

/// RFC 6901 escaping of one path segment.
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn str_at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    v.pointer(path).and_then(Value::as_str)
}

/// The role a pod would assume: the pod's own annotation, else its SA's.
pub fn pod_role<'a>(
    pod: &'a Value,
    sa_annotations: &'a BTreeMap<String, String>,
) -> Option<&'a str> {
    pod_annotation(pod, ANN_ROLE_ARN)
        .or_else(|| sa_annotations.get(ANN_ROLE_ARN).map(String::as_str))
        .map(str::trim)
        .filter(|r| !r.is_empty())
}

/// The pod's annotation `key`, if it has one.
fn pod_annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    str_at(pod, &format!("/metadata/annotations/{}", escape(key)))
}

/// Whether a session-name setting leaves the name to AWS (the certificate
/// serial): `serial` or empty.
pub fn names_sessions_by_serial(setting: &str) -> bool {
    let setting = setting.trim();
    setting.is_empty() || setting.eq_ignore_ascii_case("serial")
}

fn already_injected(pod: &Value) -> bool {
    ["/spec/containers", "/spec/initContainers"]
        .iter()
        .any(|p| {
            pod.pointer(p)
                .and_then(Value::as_array)
                .is_some_and(|cs| cs.iter().any(|c| c["name"] == SIDECAR_NAME))
        })
}

/// Whether `pod` has the shape the patch assumes: `metadata` and `spec`
/// objects, `spec.containers` (and `spec.initContainers` when set) lists of
/// objects. The API server calls mutating webhooks before it validates, so a
/// pod without them does reach the webhook; a patch it cannot apply would
/// hide the validation error the user needs to see.
fn patchable(pod: &Value) -> bool {
    let objects = |v: &Value| v.as_array().is_some_and(|a| a.iter().all(Value::is_object));
    pod.get("metadata").is_some_and(Value::is_object)
        && pod.get("spec").is_some_and(Value::is_object)
        && pod.pointer("/spec/containers").is_some_and(objects)
        && pod
            .pointer("/spec/initContainers")
            .is_none_or(|v| v.is_null() || objects(v))
}

/// Reads `attache.dev/session-duration`: whole seconds from 900 to 43200
/// (what CreateSession accepts), surrounding spaces allowed.
pub fn session_duration(value: &str) -> Option<u32> {
    value
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|d| (900..=43200).contains(d))
}

/// What a pod that gets the sidecar gets: the settings resolved from the
/// pod, its ServiceAccount, its namespace and the broker's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The role to assume.
    pub role_arn: String,
    /// Roles Anywhere profile ARN.
    pub profile_arn: String,
    /// Trust anchor ARN.
    pub trust_anchor_arn: String,
    /// Region of the sessions.
    pub region: String,
    /// Session duration, seconds.
    pub duration_seconds: u32,
    /// Role session name setting: `serial`, `pod` or a fixed name.
    pub session_name: String,
    /// Also serve the IMDSv2 paths and point the app containers' IMDS
    /// clients at them (`attache.dev/imds`).
    pub imds: bool,
    /// Warnings for `kubectl`.
    pub warnings: Vec<String>,
}

/// Decides what to do with `pod`: [`resolve`] its settings, then [`patch`]
/// it from the plan.
pub fn decide(pod: &Value, ctx: &Context<'_>, cfg: &InjectConfig) -> Decision {
    match resolve(pod, ctx, cfg) {
        Ok(plan) => Decision::Patch {
            ops: patch(pod, &plan, cfg),
            warnings: plan.warnings,
            role_arn: plan.role_arn,
        },
        Err(decision) => decision,
    }
}

/// The checks, in order, and the settings of a pod that gets the sidecar;
/// `Err` is the skip or denial.
pub fn resolve(pod: &Value, ctx: &Context<'_>, cfg: &InjectConfig) -> Result<Plan, Decision> {
    if pod_annotation(pod, ANN_INJECT).is_some_and(|v| v.trim().eq_ignore_ascii_case("false")) {
        return Err(Decision::Skip("opted out with attache.dev/inject=false"));
    }
    let Some(role) = pod_role(pod, ctx.sa_annotations) else {
        return Err(Decision::Skip(
            "no attache.dev/role-arn on the pod or its ServiceAccount",
        ));
    };
    check_pod(pod, ctx, cfg, role)?;
    let (profile, anchor) = session_arns(ctx, cfg)?;
    let sa = |k: &str| ctx.sa_annotations.get(k).map(|v| v.trim().to_string());
    let duration_seconds = match sa(ANN_SESSION_DURATION) {
        None => 3600,
        Some(v) => session_duration(&v).ok_or_else(|| {
            Decision::Deny(format!(
                "ServiceAccount {}/{} has {ANN_SESSION_DURATION}={v:?}: expected whole seconds from 900 to 43200",
                ctx.namespace, ctx.service_account
            ))
        })?,
    };
    let region = attache_aws::arn::arn_region(&anchor)
        .unwrap_or(&cfg.session.region)
        .to_string();
    let imds = imds_setting(pod, ctx)?;
    let warnings = warnings(pod, cfg, role, &profile);
    Ok(Plan {
        role_arn: role.to_string(),
        profile_arn: profile,
        trust_anchor_arn: anchor,
        region,
        duration_seconds,
        session_name: sa(ANN_SESSION_NAME).unwrap_or_else(|| cfg.session_name.clone()),
        imds,
        warnings,
    })
}

/// `attache.dev/imds` on the pod, else on its ServiceAccount: `true` or
/// `false` (the default).
fn imds_setting(pod: &Value, ctx: &Context<'_>) -> Result<bool, Decision> {
    let on_pod = pod_annotation(pod, ANN_IMDS);
    let (value, whose) = match (on_pod, ctx.sa_annotations.get(ANN_IMDS)) {
        (Some(v), _) => (v, "the pod".to_string()),
        (None, Some(v)) => (
            v.as_str(),
            format!("ServiceAccount {}/{}", ctx.namespace, ctx.service_account),
        ),
        (None, None) => return Ok(false),
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Decision::Deny(format!(
            "{whose} has {ANN_IMDS}={value:?}: expected \"true\" or \"false\""
        ))),
    }
}

/// The refusals that depend on the pod and its role.
fn check_pod(
    pod: &Value,
    ctx: &Context<'_>,
    cfg: &InjectConfig,
    role: &str,
) -> Result<(), Decision> {
    if pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true)) {
        return Err(Decision::Deny(format!(
            "attache cannot serve credentials to pods with hostNetwork: true (the loopback endpoint would be shared with the node); pod in namespace {:?} with role {role:?}: remove hostNetwork or the {ANN_ROLE_ARN} annotation",
            ctx.namespace
        )));
    }
    attache_aws::arn::validate_role_arn(role)
        .map_err(|e| Decision::Deny(format!("{ANN_ROLE_ARN}: {e}")))?;
    check_role(
        ctx.namespace,
        ctx.namespace_annotations,
        role,
        cfg.restrictions,
    )
    .map_err(|e| Decision::Deny(e.to_string()))?;
    // Only after the refusals above: a pod that brings its own container
    // named attache-sidecar gets no pass around them.
    if already_injected(pod) {
        return Err(Decision::Skip("already injected"));
    }
    if !patchable(pod) {
        return Err(Decision::Skip(
            "no spec with a list of containers (the API server's validation refuses the pod)",
        ));
    }
    let volumes = pod.pointer("/spec/volumes").and_then(Value::as_array);
    if let Some(taken) = [TOKEN_VOLUME, SA_TOKEN_VOLUME]
        .into_iter()
        .find(|name| volumes.is_some_and(|vs| vs.iter().any(|v| v["name"] == *name)))
    {
        return Err(Decision::Deny(format!(
            "the pod already has a volume named {taken:?}, a name attache's sidecar needs: rename that volume (pod in namespace {:?} with role {role:?})",
            ctx.namespace
        )));
    }
    Ok(())
}

/// The profile and trust anchor: the ServiceAccount's (if the broker allows
/// them) or the broker's defaults.
fn session_arns(ctx: &Context<'_>, cfg: &InjectConfig) -> Result<(String, String), Decision> {
    let sa = |k: &str| ctx.sa_annotations.get(k).map(|v| v.trim().to_string());
    cfg.session
        .overrides()
        .check(ctx.namespace, ctx.service_account, ctx.sa_annotations)
        .map_err(|e| Decision::Deny(e.to_string()))?;
    let Some(profile) = sa(ANN_PROFILE_ARN).or_else(|| cfg.session.profile_arn.clone()) else {
        return Err(Decision::Deny(format!(
            "no Roles Anywhere profile for ServiceAccount {}/{}: set {ANN_PROFILE_ARN} on it or start the broker with --profile-arn",
            ctx.namespace, ctx.service_account
        )));
    };
    let Some(anchor) = sa(ANN_TRUST_ANCHOR_ARN).or_else(|| cfg.session.trust_anchor_arn.clone())
    else {
        return Err(Decision::Deny(format!(
            "no trust anchor for ServiceAccount {}/{}: set {ANN_TRUST_ANCHOR_ARN} on it or start the broker with --trust-anchor-arn",
            ctx.namespace, ctx.service_account
        )));
    };
    for (what, arn, kind) in [
        (ANN_PROFILE_ARN, &profile, "profile"),
        (ANN_TRUST_ANCHOR_ARN, &anchor, "trust-anchor"),
    ] {
        attache_aws::arn::validate_rolesanywhere_arn(arn, kind)
            .map_err(|e| Decision::Deny(format!("{what}: {e}")))?;
    }
    Ok((profile, anchor))
}

fn warnings(pod: &Value, cfg: &InjectConfig, role: &str, profile: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    if pod.pointer("/spec/shareProcessNamespace") == Some(&Value::Bool(true)) {
        warnings.push(format!(
            "shareProcessNamespace: true lets the pod's containers see the attache sidecar's process; it runs as UID {} and is not dumpable, so only a container running as that UID or with CAP_SYS_PTRACE could read its key: keep app containers off that UID",
            cfg.sidecar.uid
        ));
    }
    let partition = |arn: &str| arn.split(':').nth(1).unwrap_or("").to_string();
    if partition(role) != partition(profile) {
        warnings.push(format!(
            "role {role} is in partition {:?} but profile {profile} is in {:?}; CreateSession will fail",
            partition(role),
            partition(profile)
        ));
    }
    for c in app_kinds(cfg)
        .iter()
        .flat_map(|kind| containers(pod, kind))
        .filter(|c| has_env(c, "AWS_ACCESS_KEY_ID"))
    {
        warnings.push(format!(
            "container {} sets AWS_ACCESS_KEY_ID; SDKs prefer static keys over the attache endpoint",
            c["name"].as_str().unwrap_or("?")
        ));
    }
    warnings
}

/// The container lists the sidecar serves: a native sidecar starts before
/// the init containers, so they get the endpoint too.
fn app_kinds(cfg: &InjectConfig) -> &'static [&'static str] {
    if cfg.sidecar.native {
        &["initContainers", "containers"]
    } else {
        &["containers"]
    }
}

fn containers<'a>(pod: &'a Value, kind: &str) -> impl Iterator<Item = &'a Value> {
    pod.pointer(&format!("/spec/{kind}"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn has_env(container: &Value, name: &str) -> bool {
    container
        .get("env")
        .and_then(Value::as_array)
        .is_some_and(|e| e.iter().any(|v| v["name"] == name))
}

/// An `add` operation at the pointer made of `tokens` (escaped as RFC 6901 says).
fn add<'t>(tokens: impl IntoIterator<Item = &'t str>, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens),
        value,
    })
}

/// The JSON Patch that gives `pod` the sidecar as `plan` says. It only adds:
/// to lists it appends (`-`), and a list or object that is absent is added
/// whole, so nothing the pod has is replaced or removed.
pub fn patch(pod: &Value, plan: &Plan, cfg: &InjectConfig) -> Patch {
    let mut ops = app_container_ops(pod, plan, cfg);
    let volumes = [
        json!({"name": TOKEN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
        json!({"name": SA_TOKEN_VOLUME, "projected": {"defaultMode": 0o444, "sources": [{"serviceAccountToken": {
            "audience": TOKEN_AUDIENCE, "expirationSeconds": cfg.broker.token_seconds, "path": "token"}}]}}),
    ];
    match pod.pointer("/spec/volumes").and_then(Value::as_array) {
        None => ops.push(add(["spec", "volumes"], Value::from(volumes.to_vec()))),
        Some(_) => ops.extend(
            volumes
                .into_iter()
                .map(|v| add(["spec", "volumes", "-"], v)),
        ),
    }
    let sidecar = sidecar_container(cfg, plan);
    let has_init = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .is_some();
    ops.push(match (cfg.sidecar.native, has_init) {
        (true, false) => add(["spec", "initContainers"], json!([sidecar])),
        // First, so later init containers can use AWS too. Applied after the
        // per-container ops above, whose indices refer to the original list.
        (true, true) => add(["spec", "initContainers", "0"], sidecar),
        (false, _) => add(["spec", "containers", "-"], sidecar),
    });
    ops.push(match pod.pointer("/metadata/annotations") {
        Some(Value::Object(_)) => add(["metadata", "annotations", ANN_INJECTED], json!("true")),
        _ => add(["metadata", "annotations"], json!({ANN_INJECTED: "true"})),
    });
    Patch(ops)
}

/// The endpoint's env vars (those a container does not set itself) and the
/// token volume's mount, for every app container (and init container, for a
/// native sidecar, which starts before them).
fn app_container_ops(pod: &Value, plan: &Plan, cfg: &InjectConfig) -> Vec<PatchOperation> {
    let endpoint = format!("http://127.0.0.1:{SIDECAR_PORT}");
    let app_env = [
        (
            env::AWS_CONTAINER_CREDENTIALS_FULL_URI,
            format!("{endpoint}{CREDENTIALS_PATH}"),
        ),
        (
            env::AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE,
            TOKEN_FILE.to_string(),
        ),
        ("AWS_REGION", plan.region.clone()),
        ("AWS_DEFAULT_REGION", plan.region.clone()),
        ("AWS_STS_REGIONAL_ENDPOINTS", "regional".to_string()),
    ];
    // The IMDS client appends `/latest/...` to the endpoint.
    let imds_env = plan
        .imds
        .then(|| (env::AWS_EC2_METADATA_SERVICE_ENDPOINT, endpoint.clone()));
    let app_env: Vec<_> = app_env.into_iter().chain(imds_env).collect();
    let mut ops = Vec::new();
    for kind in app_kinds(cfg) {
        for (i, c) in containers(pod, kind).enumerate() {
            let index = i.to_string();
            let at = |field: &'static str| ["spec", kind, index.as_str(), field];
            let missing: Vec<Value> = app_env
                .iter()
                .filter(|(n, _)| !has_env(c, n))
                .map(|(n, v)| json!({"name": n, "value": v}))
                .collect();
            if c.get("env").and_then(Value::as_array).is_none() {
                if !missing.is_empty() {
                    ops.push(add(at("env"), Value::from(missing)));
                }
            } else {
                ops.extend(
                    missing
                        .into_iter()
                        .map(|m| add(at("env").into_iter().chain(["-"]), m)),
                );
            }
            let mounts = c.get("volumeMounts").and_then(Value::as_array);
            let mounted = mounts.is_some_and(|ms| {
                ms.iter()
                    .any(|m| m["mountPath"] == TOKEN_DIR || m["name"] == TOKEN_VOLUME)
            });
            if !mounted {
                let m = json!({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true});
                ops.push(match mounts {
                    None => add(at("volumeMounts"), json!([m])),
                    Some(_) => add(at("volumeMounts").into_iter().chain(["-"]), m),
                });
            }
        }
    }
    ops
}

/// The sidecar's environment for a session-name setting: nothing for
/// `serial`; the pod's name through the downward API for `pod` (the name is
/// not known at admission for pods made from `generateName`); else the fixed
/// name, made valid for AWS.
fn session_name_env(setting: &str) -> Vec<Value> {
    if names_sessions_by_serial(setting) {
        return Vec::new();
    }
    let setting = setting.trim();
    if setting.eq_ignore_ascii_case("pod") {
        return vec![
            json!({"name": env::POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
            json!({"name": env::ROLE_SESSION_NAME, "value": format!("$({})", env::POD_NAME)}),
        ];
    }
    vec![json!({
        "name": env::ROLE_SESSION_NAME,
        "value": attache_aws::session::role_session_name(setting),
    })]
}

fn sidecar_container(cfg: &InjectConfig, plan: &Plan) -> Value {
    let resources = &cfg.sidecar.resources;
    let env = [
        (env::REGION, plan.region.clone()),
        (env::ROLE_ARN, plan.role_arn.clone()),
        (env::PROFILE_ARN, plan.profile_arn.clone()),
        (env::TRUST_ANCHOR_ARN, plan.trust_anchor_arn.clone()),
        (env::SESSION_DURATION, plan.duration_seconds.to_string()),
        (env::BROKER_URL, cfg.broker.url.clone()),
        (env::CA_BUNDLE_PEM, cfg.broker.ca_bundle_pem.clone()),
        (
            env::SERVICE_ACCOUNT_TOKEN_FILE,
            format!("{SA_TOKEN_DIR}/token"),
        ),
        (env::TOKEN_FILE, TOKEN_FILE.to_string()),
        (env::LISTEN, format!("127.0.0.1:{SIDECAR_PORT}")),
        (env::LOG_FORMAT, "json".to_string()),
    ];
    let imds = plan
        .imds
        .then(|| json!({"name": env::IMDS, "value": "true"}));
    let mut c = json!({
        "name": SIDECAR_NAME,
        "image": cfg.sidecar.image,
        "imagePullPolicy": cfg.sidecar.image_pull_policy,
        "args": ["serve"],
        "env": env
            .iter()
            .map(|(n, v)| json!({"name": n, "value": v}))
            .chain(session_name_env(&plan.session_name))
            .chain(imds)
            .collect::<Vec<_>>(),
        "resources": {
            "requests": {"cpu": resources.cpu_request, "memory": resources.memory_request},
            "limits": {"memory": resources.memory_limit},
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": cfg.sidecar.uid,
            "runAsGroup": cfg.sidecar.uid,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR},
            {"name": SA_TOKEN_VOLUME, "mountPath": SA_TOKEN_DIR, "readOnly": true},
        ],
        // The endpoint listens on loopback only, so probes exec the binary.
        // Up to 5 minutes for the first credentials: a rollout larger than
        // Roles Anywhere's quota (10 sessions/s by default) waits its turn
        // (docs/sizing.md), and the app containers wait with it.
        "startupProbe": {
            "exec": {"command": ["/attache-sidecar", "probe"]},
            "periodSeconds": 1,
            "failureThreshold": 300,
        },
        "readinessProbe": {
            "exec": {"command": ["/attache-sidecar", "probe"]},
            "periodSeconds": 10,
        },
    });
    if cfg.sidecar.native {
        c["restartPolicy"] = json!("Always");
    }
    c
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const ROLE: &str = "arn:aws:iam::123456789012:role/app-reader";

    pub(crate) fn cfg() -> InjectConfig {
        let mut cfg = InjectConfig::example();
        cfg.session.allowed_profile_arns =
            vec!["arn:aws:rolesanywhere:eu-west-1:123456789012:profile/team-*".into()];
        cfg
    }

    #[test]
    fn profile_and_trust_anchor_overrides_are_checked_against_the_allow_list() {
        let ns = BTreeMap::from([(ANN_ALLOWED_ROLES.to_string(), format!("[\"{ROLE}\"]"))]);
        let decide_with = |k: &str, v: &str| {
            let sa = BTreeMap::from([
                (ANN_ROLE_ARN.to_string(), ROLE.to_string()),
                (k.to_string(), v.to_string()),
            ]);
            decide(
                &pod(),
                &Context {
                    namespace: "team",
                    namespace_annotations: &ns,
                    service_account: "app",
                    sa_annotations: &sa,
                },
                &cfg(),
            )
        };
        let allowed = decide_with(
            ANN_PROFILE_ARN,
            "arn:aws:rolesanywhere:eu-west-1:123456789012:profile/team-a",
        );
        assert!(matches!(allowed, Decision::Patch { .. }), "{allowed:?}");
        for (k, v) in [
            (
                ANN_PROFILE_ARN,
                "arn:aws:rolesanywhere:eu-west-1:999999999999:profile/team-a",
            ),
            (
                ANN_TRUST_ANCHOR_ARN,
                "arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/other",
            ),
        ] {
            match decide_with(k, v) {
                Decision::Deny(m) => assert!(m.contains(k) && m.contains("team/app"), "{m}"),
                d => panic!("{k}={v} must be refused: {d:?}"),
            }
        }
    }

    fn pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "team-a"},
            "spec": {
                "serviceAccountName": "app",
                "initContainers": [{"name": "setup", "image": "busybox"}],
                "containers": [
                    {"name": "app", "image": "app", "env": [{"name": "AWS_REGION", "value": "ap-south-1"}]},
                    {"name": "worker", "image": "worker", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                ],
                "volumes": [{"name": "data", "emptyDir": {}}],
            }
        })
    }

    fn allowed() -> BTreeMap<String, String> {
        BTreeMap::from([(ANN_ALLOWED_ROLES.into(), format!("[\"{ROLE}\"]"))])
    }

    fn sa() -> BTreeMap<String, String> {
        BTreeMap::from([(ANN_ROLE_ARN.into(), ROLE.into())])
    }

    fn run(
        pod: &Value,
        ns: &BTreeMap<String, String>,
        sa: &BTreeMap<String, String>,
        cfg: &InjectConfig,
    ) -> Decision {
        decide(
            pod,
            &Context {
                namespace: "team-a",
                namespace_annotations: ns,
                service_account: "app",
                sa_annotations: sa,
            },
            cfg,
        )
    }

    fn apply(pod: &Value, patch: &Patch) -> Value {
        let mut out = pod.clone();
        json_patch::patch(&mut out, patch).unwrap();
        out
    }

    fn env_of(c: &Value, name: &str) -> Option<String> {
        c["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].as_str().unwrap().to_string())
    }

    #[test]
    fn injects_native_sidecar_env_and_volumes_without_overriding() {
        let Decision::Patch {
            ops,
            warnings,
            role_arn,
        } = run(&pod(), &allowed(), &sa(), &cfg())
        else {
            panic!()
        };
        assert_eq!(role_arn, ROLE);
        assert!(warnings.is_empty(), "{warnings:?}");
        let out = apply(&pod(), &ops);
        let init = out["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(init[0]["name"], SIDECAR_NAME);
        assert_eq!(init[0]["restartPolicy"], "Always");
        assert_eq!(init[1]["name"], "setup");
        assert_eq!(
            env_of(&init[1], "AWS_CONTAINER_CREDENTIALS_FULL_URI").unwrap(),
            "http://127.0.0.1:9911/v1/credentials"
        );
        assert_eq!(env_of(&init[0], "ATTACHE_ROLE_ARN").unwrap(), ROLE);
        assert_eq!(env_of(&init[0], "ATTACHE_REGION").unwrap(), "eu-west-1");
        let app = &out["spec"]["containers"][0];
        assert_eq!(
            env_of(app, "AWS_REGION").unwrap(),
            "ap-south-1",
            "the pod's own value wins"
        );
        assert_eq!(env_of(app, "AWS_DEFAULT_REGION").unwrap(), "eu-west-1");
        assert_eq!(
            env_of(app, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").unwrap(),
            TOKEN_FILE
        );
        assert_eq!(
            app["env"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["name"] == "AWS_REGION")
                .count(),
            1
        );
        let worker = &out["spec"]["containers"][1];
        let mounts = worker["volumeMounts"].as_array().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m["name"] == TOKEN_VOLUME && m["readOnly"] == true)
        );
        let vols: Vec<&str> = out["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(vols, ["data", TOKEN_VOLUME, SA_TOKEN_VOLUME]);
        assert_eq!(out["spec"]["volumes"][1]["emptyDir"]["medium"], "Memory");
        assert_eq!(
            out["spec"]["volumes"][2]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            TOKEN_AUDIENCE
        );
        assert_eq!(out["metadata"]["annotations"][ANN_INJECTED], "true");
        // The SA token is mounted in the sidecar only.
        for c in out["spec"]["containers"].as_array().unwrap() {
            assert!(
                !c["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["name"] == SA_TOKEN_VOLUME)
            );
        }
        // Idempotent: a second admission of the result changes nothing.
        assert_eq!(
            run(&out, &allowed(), &sa(), &cfg()),
            Decision::Skip("already injected")
        );
    }

    #[test]
    fn plain_container_mode_leaves_init_containers_alone() {
        let mut cfg = cfg();
        cfg.sidecar.native = false;
        let Decision::Patch { ops, .. } = run(&pod(), &allowed(), &sa(), &cfg) else {
            panic!()
        };
        let out = apply(&pod(), &ops);
        assert_eq!(out["spec"]["initContainers"].as_array().unwrap().len(), 1);
        assert!(out["spec"]["initContainers"][0].get("env").is_none());
        let last = out["spec"]["containers"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(last["name"], SIDECAR_NAME);
        assert!(last.get("restartPolicy").is_none());
    }

    #[test]
    fn pods_without_a_role_or_opted_out_are_untouched() {
        assert!(matches!(
            run(&pod(), &allowed(), &BTreeMap::new(), &cfg()),
            Decision::Skip(_)
        ));
        let mut p = pod();
        p["metadata"]["annotations"] = json!({ANN_INJECT: "false"});
        assert!(matches!(
            run(&p, &allowed(), &sa(), &cfg()),
            Decision::Skip(_)
        ));
        // A pod-level role works without the SA annotation and keeps existing annotations.
        let mut p = pod();
        p["metadata"]["annotations"] = json!({ANN_ROLE_ARN: ROLE, "keep": "me"});
        let Decision::Patch { ops, .. } = run(&p, &allowed(), &BTreeMap::new(), &cfg()) else {
            panic!()
        };
        let out = apply(&p, &ops);
        assert_eq!(out["metadata"]["annotations"]["keep"], "me");
        assert!(
            ops.iter()
                .any(|o| o.path().as_str() == "/metadata/annotations/attache.dev~1injected")
        );
    }

    #[test]
    fn a_pod_bringing_its_own_attache_sidecar_container_is_still_checked() {
        let mut p = pod();
        p["spec"]["initContainers"] = json!([{"name": SIDECAR_NAME, "image": "evil"}]);
        // Not allowed by the namespace: refused, not skipped as "already injected".
        let Decision::Deny(m) = run(&p, &BTreeMap::new(), &sa(), &cfg()) else {
            panic!("a self-declared sidecar skipped the policy check")
        };
        assert!(m.contains(ANN_ALLOWED_ROLES), "{m}");
        p["spec"]["hostNetwork"] = json!(true);
        let Decision::Deny(m) = run(&p, &allowed(), &sa(), &cfg()) else {
            panic!("a self-declared sidecar skipped the hostNetwork refusal")
        };
        assert!(m.contains("hostNetwork"), "{m}");
    }

    #[test]
    fn the_sidecar_runs_as_its_own_uid_and_shared_process_namespaces_are_flagged() {
        let mut p = pod();
        p["spec"]["shareProcessNamespace"] = json!(true);
        let Decision::Patch { ops, warnings, .. } = run(&p, &allowed(), &sa(), &cfg()) else {
            panic!()
        };
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("shareProcessNamespace") && w.contains("19911")),
            "{warnings:?}"
        );
        let out = apply(&p, &ops);
        let sc = &out["spec"]["initContainers"][0]["securityContext"];
        assert_eq!(
            (sc["runAsUser"].as_i64(), sc["runAsGroup"].as_i64()),
            (Some(19911), Some(19911))
        );
    }

    #[test]
    fn imds_is_per_pod_opt_in_from_the_pod_or_its_service_account() {
        let injected = |pod: &Value, sa_ann: &BTreeMap<String, String>| {
            let Decision::Patch { ops, .. } = run(pod, &allowed(), sa_ann, &cfg()) else {
                panic!("not injected")
            };
            apply(pod, &ops)
        };
        let imds_of = |out: &Value| {
            let sidecar = &out["spec"]["initContainers"][0];
            let app = &out["spec"]["containers"][0];
            (
                env_of(sidecar, "ATTACHE_IMDS"),
                env_of(app, "AWS_EC2_METADATA_SERVICE_ENDPOINT"),
            )
        };
        // Off by default: no IMDS paths, no IMDS endpoint for the app.
        assert_eq!(imds_of(&injected(&pod(), &sa())), (None, None));
        let on = (
            Some("true".to_string()),
            Some("http://127.0.0.1:9911".to_string()),
        );
        // On the pod.
        let mut annotated = pod();
        annotated["metadata"]["annotations"] = json!({ANN_IMDS: "True"});
        assert_eq!(imds_of(&injected(&annotated, &sa())), on);
        // On the ServiceAccount; the pod's own annotation wins.
        let mut sa_on = sa();
        sa_on.insert(ANN_IMDS.into(), "true".into());
        assert_eq!(imds_of(&injected(&pod(), &sa_on)), on);
        annotated["metadata"]["annotations"] = json!({ANN_IMDS: "false"});
        assert_eq!(imds_of(&injected(&annotated, &sa_on)), (None, None));
        // Anything else is refused, naming the value and whose it is.
        annotated["metadata"]["annotations"] = json!({ANN_IMDS: "yes"});
        let Decision::Deny(msg) = run(&annotated, &allowed(), &sa(), &cfg()) else {
            panic!("not denied")
        };
        assert!(
            msg.contains("the pod has attache.dev/imds=\"yes\"") && msg.contains("\"true\""),
            "{msg}"
        );
    }

    #[test]
    fn session_names_follow_the_service_account_then_the_broker_default() {
        let sidecar_env = |sa_ann: &BTreeMap<String, String>, default: &str| {
            let cfg = InjectConfig {
                session_name: default.into(),
                ..cfg()
            };
            let Decision::Patch { ops, .. } = run(&pod(), &allowed(), sa_ann, &cfg) else {
                panic!("not injected")
            };
            let out = apply(&pod(), &ops);
            out["spec"]["initContainers"][0]["env"].clone()
        };
        let named = |env: &Value, name: &str| {
            env.as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .cloned()
        };
        // serial (the default): no custom name, AWS uses the serial.
        let env = sidecar_env(&sa(), "serial");
        assert!(named(&env, "ATTACHE_ROLE_SESSION_NAME").is_none(), "{env}");
        // pod: the pod's name from the downward API, expanded by the kubelet.
        let env = sidecar_env(&sa(), "pod");
        assert_eq!(
            named(&env, "ATTACHE_POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        assert_eq!(
            named(&env, "ATTACHE_ROLE_SESSION_NAME").unwrap()["value"],
            "$(ATTACHE_POD_NAME)"
        );
        // The ServiceAccount's annotation wins; a fixed name is made valid.
        let mut fixed = sa();
        fixed.insert(ANN_SESSION_NAME.into(), "nightly batch $(HOME)".into());
        let env = sidecar_env(&fixed, "pod");
        assert_eq!(
            named(&env, "ATTACHE_ROLE_SESSION_NAME").unwrap()["value"],
            "nightly-batch---HOME-"
        );
        assert!(named(&env, "ATTACHE_POD_NAME").is_none());
        let mut serial = sa();
        serial.insert(ANN_SESSION_NAME.into(), "Serial".into());
        let env = sidecar_env(&serial, "pod");
        assert!(named(&env, "ATTACHE_ROLE_SESSION_NAME").is_none(), "{env}");
    }

    #[test]
    fn refusals_name_what_to_fix() {
        let mut p = pod();
        p["spec"]["hostNetwork"] = json!(true);
        let Decision::Deny(m) = run(&p, &allowed(), &sa(), &cfg()) else {
            panic!()
        };
        assert!(m.contains("hostNetwork"), "{m}");
        let Decision::Deny(m) = run(&pod(), &BTreeMap::new(), &sa(), &cfg()) else {
            panic!()
        };
        assert!(
            m.contains("team-a") && m.contains(ROLE) && m.contains(ANN_ALLOWED_ROLES),
            "{m}"
        );
        let mut bad = sa();
        bad.insert(ANN_SESSION_DURATION.into(), "60".into());
        let Decision::Deny(m) = run(&pod(), &allowed(), &bad, &cfg()) else {
            panic!()
        };
        assert!(m.contains(ANN_SESSION_DURATION) && m.contains("900"), "{m}");
        let mut bad = sa();
        bad.insert(ANN_ROLE_ARN.into(), "not-an-arn".into());
        let Decision::Deny(m) = run(
            &pod(),
            &allowed(),
            &bad,
            &InjectConfig {
                restrictions: false,
                ..cfg()
            },
        ) else {
            panic!()
        };
        assert!(m.contains("role ARN"), "{m}");
    }

    #[test]
    fn warns_about_static_keys_and_partition_mismatch() {
        let mut p = pod();
        p["spec"]["containers"][0]["env"] =
            json!([{"name": "AWS_ACCESS_KEY_ID", "value": "AKIA..."}]);
        let china = "arn:aws-cn:iam::123456789012:role/x";
        let sa = BTreeMap::from([(ANN_ROLE_ARN.into(), china.into())]);
        let Decision::Patch { warnings, .. } = run(
            &p,
            &BTreeMap::new(),
            &sa,
            &InjectConfig {
                restrictions: false,
                ..cfg()
            },
        ) else {
            panic!()
        };
        assert!(
            warnings.iter().any(|w| w.contains("AWS_ACCESS_KEY_ID")),
            "{warnings:?}"
        );
        assert!(
            warnings.iter().any(|w| w.contains("partition")),
            "{warnings:?}"
        );
    }

    /// Found by fuzzing (admission target): a pod without `spec` (or with
    /// `containers: null`) reaches the webhook, which runs before validation;
    /// it got a patch that cannot apply.
    #[test]
    fn pods_without_a_spec_or_containers_are_left_to_validation() {
        for broken in [
            json!({"metadata": {"name": "p"}}),
            json!({"metadata": {"name": "p"}, "spec": null}),
            json!({"metadata": {"name": "p"}, "spec": {}}),
            json!({"metadata": {"name": "p"}, "spec": {"containers": null}}),
            json!({"metadata": {"name": "p"}, "spec": {"containers": [1]}}),
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}], "initContainers": ["x"]}}),
            json!({"metadata": 1, "spec": {"containers": [{"name": "a"}]}}),
        ] {
            for native_sidecar in [true, false] {
                let mut cfg = cfg();
                cfg.sidecar.native = native_sidecar;
                assert!(
                    matches!(run(&broken, &allowed(), &sa(), &cfg), Decision::Skip(_)),
                    "{broken}"
                );
            }
        }
    }

    /// Found by the patch property test (tests/inject_properties.rs): a pod
    /// with its own volume named like attache's got a second one, a
    /// duplicate the API server refuses without naming attache.
    #[test]
    fn a_pod_volume_with_attaches_name_is_refused_by_name() {
        for name in [TOKEN_VOLUME, SA_TOKEN_VOLUME] {
            let mut p = pod();
            p["spec"]["volumes"] =
                json!([{"name": "data", "emptyDir": {}}, {"name": name, "emptyDir": {}}]);
            let Decision::Deny(m) = run(&p, &allowed(), &sa(), &cfg()) else {
                panic!("{name}: not refused")
            };
            assert!(m.contains(name) && m.contains("rename"), "{m}");
        }
    }

    #[test]
    fn escapes_json_pointer_segments() {
        assert_eq!(escape("a/b~c"), "a~1b~0c");
    }
}
