//! A world for ECR controller tests and the benchmark: the Kubernetes API
//! double, AWS emulators (one per region) trusting the cluster CA, ECR roles
//! whose trust policy pins the broker's own ServiceAccount, and controllers
//! started on a manual clock.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use attache_broker::ecr::{EcrArgs, EcrContext, EcrHandle};
use attache_broker::metrics::Metrics;
use attache_emulator::{Condition, Emulator, EmulatorConfig, Operator, Profile, Role};
use attache_kube_double::KubeDouble;
use attache_pki::{CaOptions, CertificateAuthority};
use attache_sidecar::clock::{Clock, ManualClock};
use clap::Parser;
use serde_json::{Value, json};
use time::OffsetDateTime;

pub const ACCOUNT: &str = "123456789012";
pub const ANCHOR: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/cluster";
pub const PROFILE: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:profile/ecr";
pub const ROLE: &str = "arn:aws:iam::123456789012:role/ecr-pull";
pub const ROLE_B: &str = "arn:aws:iam::123456789012:role/ecr-pull-b";
pub const BROKER_NS: &str = "attache-system";
pub const BROKER_SA: &str = "attache-broker";

/// The registry host of `region` in the test account.
pub fn registry(region: &str) -> String {
    format!("{ACCOUNT}.dkr.ecr.{region}.amazonaws.com")
}

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    ecr: EcrArgs,
}

pub struct World {
    pub double: KubeDouble,
    pub client: kube::Client,
    pub ca: Arc<CertificateAuthority>,
    /// Emulators by region (the first is the trust anchor's region).
    pub emulators: BTreeMap<String, Emulator>,
    pub clock: ManualClock,
}

impl World {
    /// A cluster with the broker's namespace and one emulator per region.
    pub async fn new(regions: &[&str]) -> World {
        let double = KubeDouble::start().await.expect("kube double");
        let client = double.client().await;
        let ca = Arc::new(
            CertificateAuthority::create(&CaOptions::default(), OffsetDateTime::now_utc())
                .expect("CA"),
        );
        let mut emulators = BTreeMap::new();
        for region in regions {
            let emu = Emulator::start(EmulatorConfig {
                region: region.to_string(),
                ..EmulatorConfig::default()
            })
            .await
            .expect("emulator");
            emu.add_trust_anchor(ANCHOR, ca.certificate_pem(), true);
            emu.add_profile(Profile {
                arn: PROFILE.into(),
                role_arns: vec![ROLE.into(), ROLE_B.into()],
                duration_seconds: None,
                accept_role_session_name: false,
                enabled: true,
            });
            for role in [ROLE, ROLE_B] {
                emu.add_role(Role {
                    arn: role.into(),
                    conditions: vec![Condition {
                        operator: Operator::StringEquals,
                        key: "aws:PrincipalTag/x509SAN/URI".into(),
                        values: vec![format!(
                            "spiffe://cluster.local/ns/{BROKER_NS}/sa/{BROKER_SA}"
                        )],
                    }],
                });
            }
            emulators.insert(region.to_string(), emu);
        }
        let world = World {
            double,
            client,
            ca,
            emulators,
            clock: ManualClock::new(OffsetDateTime::now_utc()),
        };
        world.seed(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": BROKER_NS}}),
        );
        world
    }

    pub fn emulator(&self) -> &Emulator {
        self.emulators.values().next().expect("an emulator")
    }

    pub fn seed(&self, obj: Value) -> Value {
        self.double.seed_json(obj).expect("seed")
    }

    /// A namespace allowing both ECR roles, with extra annotations.
    pub fn namespace(&self, name: &str, annotations: &[(&str, &str)]) {
        let mut ann: BTreeMap<String, String> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ann.entry("attache.dev/allowed-roles".into())
            .or_insert_with(|| format!("[\"{ROLE}\", \"{ROLE_B}\"]"));
        self.seed(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "annotations": ann}}));
    }

    pub fn service_account(
        &self,
        ns: &str,
        name: &str,
        annotations: &[(&str, &str)],
        pull_secrets: &[&str],
    ) {
        let ann: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        let mut sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": ns, "annotations": ann}});
        if !pull_secrets.is_empty() {
            sa["imagePullSecrets"] = pull_secrets.iter().map(|n| json!({"name": n})).collect();
        }
        self.seed(sa);
    }

    /// Flags for a controller against this world's emulators.
    pub fn args(&self, identity: &str, extra: &[&str]) -> EcrArgs {
        let endpoints: Vec<String> = self
            .emulators
            .iter()
            .map(|(r, e)| format!("{r}={}", e.url()))
            .collect();
        let endpoints = endpoints.join(",");
        let mut argv = vec![
            "t",
            "--ecr-role-arn",
            ROLE,
            "--ecr-endpoint",
            &endpoints,
            "--rolesanywhere-endpoint",
            &endpoints,
            "--ecr-identity",
            identity,
            // The session client stamps and the emulator checks Roles Anywhere
            // credentials on the wall clock while the controller judges them on
            // the manual clock: 12 h sessions stay valid across the time travel.
            "--ecr-session-duration",
            "43200",
        ];
        argv.extend_from_slice(extra);
        Flags::parse_from(argv).ecr
    }

    pub fn context(&self, metrics: &Metrics) -> EcrContext {
        EcrContext {
            client: self.client.clone(),
            ca: self.ca.clone(),
            namespace: BROKER_NS.into(),
            service_account: BROKER_SA.into(),
            trust_domain: "cluster.local".into(),
            region: "us-east-1".into(),
            profile_arn: Some(PROFILE.into()),
            trust_anchor_arn: Some(ANCHOR.into()),
            namespace_restrictions: true,
            metrics: metrics.clone(),
            clock: Arc::new(self.clock.clone()) as Arc<dyn Clock>,
        }
    }

    /// Starts a controller and waits until it leads.
    pub async fn controller(&self, identity: &str, metrics: &Metrics) -> EcrHandle {
        let h = attache_broker::ecr::start(&self.args(identity, &[]), self.context(metrics))
            .await
            .expect("start");
        let mut l = h.leading();
        tokio::time::timeout(Duration::from_secs(10), l.wait_for(|x| *x))
            .await
            .expect("leads in time")
            .expect("elector alive");
        h
    }

    pub fn secret(&self, ns: &str, name: &str) -> Option<Value> {
        self.double
            .get_json(&format!("/api/v1/namespaces/{ns}/secrets/{name}"))
    }

    pub fn sa(&self, ns: &str, name: &str) -> Option<Value> {
        self.double
            .get_json(&format!("/api/v1/namespaces/{ns}/serviceaccounts/{name}"))
    }

    /// The pull secret names an SA lists.
    pub fn pull_secrets(&self, ns: &str, name: &str) -> Vec<String> {
        self.sa(ns, name)
            .and_then(|s| s["imagePullSecrets"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e["name"].as_str().map(str::to_string))
            .collect()
    }

    /// The `.dockerconfigjson` of a Secret, decoded.
    pub fn docker_config(&self, ns: &str, name: &str) -> Option<Value> {
        use base64::Engine as _;
        let s = self.secret(ns, name)?;
        let raw = s["data"][".dockerconfigjson"].as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The password for `host` in a Secret.
    pub fn password(&self, ns: &str, name: &str, host: &str) -> Option<String> {
        self.docker_config(ns, name)?["auths"][host]["password"]
            .as_str()
            .map(str::to_string)
    }

    /// Warning Events about a ServiceAccount: (reason, note).
    pub fn events_for(&self, ns: &str, sa: &str) -> Vec<(String, String)> {
        self.double
            .dump()
            .into_iter()
            .filter(|o| {
                o["kind"] == "Event"
                    && o["regarding"]["name"] == sa
                    && o["metadata"]["namespace"] == ns
            })
            .map(|o| {
                (
                    o["reason"].as_str().unwrap_or_default().to_string(),
                    o["note"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Moves the clock forward in steps, letting tasks run between them.
    pub async fn tick(&self, total: Duration, step: Duration) {
        let mut done = Duration::ZERO;
        while done < total {
            self.clock
                .advance(time::Duration::try_from(step).expect("step"));
            done += step;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Polls `cond` every 20 ms for up to `secs` seconds.
pub async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}
