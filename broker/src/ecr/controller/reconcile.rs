//! Reconciling one ServiceAccount: its pull Secret, its `imagePullSecrets`
//! entry, and the clean-up when the annotation (or the policy) goes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};

use super::super::registry::Registry;
use super::*;

/// What a ServiceAccount asks for, checked.
struct Wanted {
    registries: Vec<Registry>,
    role: String,
    profile: String,
    anchor: String,
}

/// Why nothing is written: leave the pull secret as it is, remove it, or
/// (the annotation is gone) remove it and forget the ServiceAccount's session.
enum Unwanted {
    Leave,
    Remove,
    Unannotated,
}

/// Why [`Controller::resolve`] wants nothing written.
enum NotWanted {
    /// No registries are asked for.
    Unannotated,
    /// A problem to report as a Warning Event.
    Refused(Refusal),
}

/// A problem with what a ServiceAccount asks for.
struct Refusal {
    /// The Event's reason.
    reason: &'static str,
    /// The Event's note.
    note: String,
    /// What becomes of an existing pull secret.
    then: Unwanted,
}

fn refused(reason: &'static str, note: String, then: Unwanted) -> NotWanted {
    NotWanted::Refused(Refusal { reason, note, then })
}

/// The registries the ServiceAccount's annotation (else its namespace's) asks for.
fn requested_registries(sa: &SaInfo, ns: &NsInfo) -> Result<Vec<Registry>, NotWanted> {
    let (value, source) = match (&sa.registries, &ns.registries) {
        (Some(v), _) => (v.clone(), "ServiceAccount"),
        (None, Some(v)) => (v.clone(), "namespace"),
        (None, None) => (String::new(), ""),
    };
    if value.trim().is_empty() {
        return Err(NotWanted::Unannotated);
    }
    parse_registries(&value).map_err(|e| {
        let note = format!("{source} annotation {ANN_ECR_REGISTRIES}: {e}; nothing was changed");
        refused("InvalidEcrRegistries", note, Unwanted::Leave)
    })
}

impl Controller {
    /// Brings one ServiceAccount's pull Secret and `imagePullSecrets` to the desired state.
    pub async fn reconcile(&self, key: &Key) -> Result<(), ReconcileError> {
        let (sa, ns, existing) = {
            let w = lock(&self.world);
            let name = secret_name(&key.name);
            (
                w.sas.get(key).cloned(),
                w.namespaces
                    .get(&key.namespace)
                    .cloned()
                    .unwrap_or_default(),
                w.secrets.get(&Key::new(&key.namespace, name)).cloned(),
            )
        };
        let Some(sa) = sa else {
            // Deleted: its Secret goes with it (owner reference).
            self.sessions.forget(key);
            lock(&self.deps).remove(key);
            lock(&self.warned).remove(key);
            lock(&self.foreign).remove(key);
            return Ok(());
        };
        let wanted = match self.wanted(key, &sa, &ns).await {
            Ok(w) => w,
            Err(Unwanted::Leave) => return Ok(()),
            Err(Unwanted::Remove) => return self.clean_up(key, &sa, existing).await,
            Err(Unwanted::Unannotated) => {
                self.sessions.forget(key);
                return self.clean_up(key, &sa, existing).await;
            }
        };
        let pairs: Vec<Pair> = regions(&wanted.registries)
            .into_iter()
            .map(|region| Pair {
                role: wanted.role.clone(),
                region,
                profile: wanted.profile.clone(),
            })
            .collect();
        let targets: Vec<Target> = pairs
            .iter()
            .map(|p| {
                self.sessions
                    .settings()
                    .target(&p.role, &p.profile, &wanted.anchor, &p.region)
            })
            .collect();
        lock(&self.deps).set(key, pairs.clone());
        let recheck = lock(&self.foreign).get(key).copied();
        if existing.is_none() && recheck.is_some_and(|t| self.clock.now() < t) {
            return Ok(());
        }
        // Nothing is fetched for a ServiceAccount AWS has not accepted for the role.
        let need_aws = pairs.iter().any(|p| self.tokens.held(p).is_none());
        if need_aws && !self.admit(key, &sa, &targets, &existing).await? {
            return Ok(());
        }
        let Some(tokens) = self.tokens_for(key, &sa, &pairs, &targets).await else {
            return Ok(());
        };
        let desired = secret::desired(&key.name, &wanted.role, &wanted.registries, &tokens);
        let current = existing
            .as_ref()
            .is_some_and(|info| up_to_date(info, &key.name, &sa, &desired));
        // Nothing new is written for a ServiceAccount AWS has not accepted for the role.
        if !current && !self.admit(key, &sa, &targets, &existing).await? {
            return Ok(());
        }
        if !self.ensure_secret(key, &sa, existing, &desired).await? {
            return Ok(());
        }
        self.ensure_listed(key, &sa, &desired.name, true).await?;
        self.clear_warning(key);
        Ok(())
    }

    /// What `key` asks for (registries, role, profile, trust anchor), checked
    /// against the namespace policy and the allowed overrides; a problem is
    /// reported as a Warning Event and says whether the pull secret goes.
    async fn wanted(&self, key: &Key, sa: &SaInfo, ns: &NsInfo) -> Result<Wanted, Unwanted> {
        match self.resolve(key, sa, ns) {
            Ok(wanted) => Ok(wanted),
            Err(NotWanted::Unannotated) => Err(Unwanted::Unannotated),
            Err(NotWanted::Refused(r)) => Err(self.refuse(key, sa, r.reason, r.note, r.then).await),
        }
    }

    /// [`Self::wanted`] without the Event.
    fn resolve(&self, key: &Key, sa: &SaInfo, ns: &NsInfo) -> Result<Wanted, NotWanted> {
        let registries = requested_registries(sa, ns)?;
        let role = self.role_of(key, sa, ns)?;
        // Profile and trust anchor overrides: only those the operator allows
        // (checked exactly as the webhook and the certificate API check them).
        if let Err(e) =
            self.config
                .overrides
                .check(&key.namespace, &key.name, &sa.override_annotations())
        {
            let note = format!("ECR pull secret removed: {e}");
            return Err(refused("EcrProfileNotAllowed", note, Unwanted::Remove));
        }
        let profile = sa
            .profile
            .clone()
            .unwrap_or_else(|| self.config.default_profile.clone());
        let anchor = sa
            .trust_anchor
            .clone()
            .unwrap_or_else(|| self.config.default_trust_anchor.clone());
        for (what, arn, kind) in [
            (attache_api::names::ANN_PROFILE_ARN, &profile, "profile"),
            (
                attache_api::names::ANN_TRUST_ANCHOR_ARN,
                &anchor,
                "trust-anchor",
            ),
        ] {
            if let Err(e) = attache_aws::arn::validate_rolesanywhere_arn(arn, kind) {
                let note = format!("{what}: {e}");
                return Err(refused("InvalidEcrProfile", note, Unwanted::Leave));
            }
        }
        Ok(Wanted {
            registries,
            role,
            profile,
            anchor,
        })
    }

    /// The ECR role (the ServiceAccount's, else the default): a valid ARN the
    /// namespace allows.
    fn role_of(&self, key: &Key, sa: &SaInfo, ns: &NsInfo) -> Result<String, NotWanted> {
        let Some(role) = sa.role.clone().or_else(|| self.config.default_role.clone()) else {
            let note = format!(
                "{ANN_ECR_REGISTRIES} is set but no ECR role is: set {} on the ServiceAccount or --ecr-role-arn on the broker",
                attache_api::names::ANN_ECR_ROLE_ARN
            );
            return Err(refused("NoEcrRole", note, Unwanted::Leave));
        };
        if let Err(e) = attache_aws::arn::validate_role_arn(&role) {
            let note = format!("{}: {e}", attache_api::names::ANN_ECR_ROLE_ARN);
            return Err(refused("InvalidEcrRole", note, Unwanted::Leave));
        }
        if let Err(e) = crate::policy::check_role(
            &key.namespace,
            &ns.policy_annotations(),
            &role,
            self.config.restrictions,
        ) {
            // Fail closed: a role the namespace no longer allows loses its pull secret now,
            // not when the token runs out.
            let note = format!("ECR pull secret removed: {e}");
            return Err(refused("EcrRoleNotAllowed", note, Unwanted::Remove));
        }
        Ok(role)
    }

    /// Reports `note` as a Warning Event with `reason`, and passes `then` on.
    async fn refuse(
        &self,
        key: &Key,
        sa: &SaInfo,
        reason: &'static str,
        note: String,
        then: Unwanted,
    ) -> Unwanted {
        self.warn(key, &sa.uid, reason, note).await;
        then
    }

    /// The ECR token of every pair, by region; `None` (after a Warning Event)
    /// when one cannot be had: any existing pull secret is kept, and the
    /// token scheduler re-queues `key` once the pair recovers.
    async fn tokens_for(
        &self,
        key: &Key,
        sa: &SaInfo,
        pairs: &[Pair],
        targets: &[Target],
    ) -> Option<BTreeMap<String, super::super::tokens::Token>> {
        let mut tokens = BTreeMap::new();
        for (pair, target) in pairs.iter().zip(targets) {
            match self
                .tokens
                .get(pair, || self.sessions.credentials(key, target))
                .await
            {
                Ok(t) => {
                    tokens.insert(pair.region.clone(), t);
                }
                Err(f) => {
                    let note = format!(
                        "cannot get an ECR token for role {} in {}: {}; any existing pull secret is kept and the request retried with backoff",
                        pair.role, pair.region, f.message
                    );
                    self.warn(key, &sa.uid, "EcrTokenFailed", note).await;
                    return None;
                }
            }
        }
        Some(tokens)
    }

    /// Whether AWS accepts `key`'s own identity for every target (a recorded
    /// verdict while it holds, else a CreateSession with its certificate).
    /// Refused: the pull secret is removed (fail closed) and a Warning Event
    /// says why; no answer: everything is kept and the key retried later.
    async fn admit(
        &self,
        key: &Key,
        sa: &SaInfo,
        targets: &[Target],
        existing: &Option<SecretInfo>,
    ) -> Result<bool, ReconcileError> {
        for target in targets {
            match self.sessions.verdict(key, target).await {
                Verdict::Accepted { .. } => {}
                Verdict::Denied { message, until } => {
                    self.clean_up(key, sa, existing.clone()).await?;
                    let note = format!(
                        "ECR pull secret removed: Roles Anywhere refused {} for ECR role {}: {message}. The role's trust policy must allow this ServiceAccount (attache-broker aws-policy --service-account {}/{} prints one that does)",
                        self.sessions.spiffe_uri(key),
                        target.role,
                        key.namespace,
                        key.name
                    );
                    self.warn(key, &sa.uid, "EcrRoleNotTrusted", note).await;
                    self.retry_at(key.clone(), until);
                    return Ok(false);
                }
                Verdict::Failed { message, until, .. } => {
                    let note = format!(
                        "cannot check with AWS that {} may use ECR role {}: {message}; any existing pull secret is kept and the check retried",
                        self.sessions.spiffe_uri(key),
                        target.role
                    );
                    self.warn(key, &sa.uid, "EcrSessionFailed", note).await;
                    self.retry_at(key.clone(), until);
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Creates or updates the Secret; false when a foreign Secret holds the name.
    async fn ensure_secret(
        &self,
        key: &Key,
        sa: &SaInfo,
        existing: Option<SecretInfo>,
        desired: &Desired,
    ) -> Result<bool, ReconcileError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &key.namespace);
        let err = |action: &str, source| ReconcileError::Kube {
            action: format!("{action} Secret {}/{}", key.namespace, desired.name),
            source,
        };
        let mut current = existing;
        for _ in 0..CONFLICT_TRIES {
            match &current {
                Some(info) if up_to_date(info, &key.name, sa, desired) => {
                    lock(&self.foreign).remove(key);
                    return Ok(true);
                }
                Some(info) if info.owned_by(&key.name) => {
                    let obj = secret::build(
                        &key.namespace,
                        &key.name,
                        &sa.uid,
                        desired,
                        Some(info.resource_version.clone()),
                    );
                    match api
                        .replace(&desired.name, &PostParams::default(), &obj)
                        .await
                    {
                        Ok(s) => return Ok(self.written(key, &s)),
                        Err(e) if matches!(api_code(&e), Some(409) | Some(404)) => {}
                        Err(e) => return Err(err("updating", e)),
                    }
                }
                Some(_) => {}
                None => {
                    let obj = secret::build(&key.namespace, &key.name, &sa.uid, desired, None);
                    match api.create(&PostParams::default(), &obj).await {
                        Ok(s) => return Ok(self.written(key, &s)),
                        Err(e) if api_code(&e) == Some(409) => {}
                        Err(e) => return Err(err("creating", e)),
                    }
                }
            }
            // Conflict, or a Secret we do not know: read it fresh.
            let fresh = api
                .get_opt(&desired.name)
                .await
                .map_err(|e| err("reading", e))?;
            match fresh {
                None => current = None,
                Some(s) => {
                    if let Some(reason) = foreign_reason(&s, &key.name) {
                        let note = format!(
                            "Secret {:?} already exists and attache will not modify it: {reason}. Delete or rename it to let attache manage the ECR pull secret",
                            desired.name
                        );
                        lock(&self.foreign)
                            .insert(key.clone(), self.clock.now() + self.config.foreign_recheck);
                        self.warn(key, &sa.uid, "SecretNotOwned", note).await;
                        return Ok(false);
                    }
                    current = Some(SecretInfo::from(&s));
                }
            }
        }
        Err(ReconcileError::Conflict {
            action: format!("writing Secret {}/{}", key.namespace, desired.name),
        })
    }

    fn written(&self, key: &Key, s: &Secret) -> bool {
        self.metrics.ecr_secrets_written.inc();
        lock(&self.foreign).remove(key);
        let info = SecretInfo::from(s);
        lock(&self.world).secrets.insert(key_of(&s.metadata), info);
        tracing::info!(namespace = %key.namespace, service_account = %key.name, secret = ?s.metadata.name, "ECR pull secret written");
        true
    }

    /// Adds (`present`) or removes the Secret's entry in `imagePullSecrets`,
    /// leaving other entries alone; a conflict means a fresh read and another try.
    async fn ensure_listed(
        &self,
        key: &Key,
        sa: &SaInfo,
        name: &str,
        present: bool,
    ) -> Result<(), ReconcileError> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &key.namespace);
        let err = |action: &str, source| ReconcileError::Kube {
            action: format!("{action} ServiceAccount {}/{}", key.namespace, key.name),
            source,
        };
        let mut cur = sa.clone();
        for _ in 0..CONFLICT_TRIES {
            let listed = cur.pull_secrets.iter().any(|n| n == name);
            if listed == present {
                return Ok(());
            }
            let mut names: Vec<String> = cur
                .pull_secrets
                .iter()
                .filter(|n| *n != name)
                .cloned()
                .collect();
            if present {
                names.push(name.to_string());
            }
            let list: Vec<serde_json::Value> = names
                .iter()
                .map(|n| serde_json::json!({ "name": n }))
                .collect();
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": cur.resource_version },
                "imagePullSecrets": if list.is_empty() { serde_json::Value::Null } else { serde_json::Value::Array(list) },
            });
            match api
                .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(updated) => {
                    let info = SaInfo::from(&updated);
                    lock(&self.world).sas.insert(key.clone(), info);
                    return Ok(());
                }
                Err(e) if api_code(&e) == Some(409) => {
                    match api
                        .get_opt(&key.name)
                        .await
                        .map_err(|e| err("reading", e))?
                    {
                        Some(fresh) => cur = SaInfo::from(&fresh),
                        None => return Ok(()),
                    }
                }
                Err(e) if api_code(&e) == Some(404) => return Ok(()),
                Err(e) => return Err(err("patching imagePullSecrets of", e)),
            }
        }
        Err(ReconcileError::Conflict {
            action: format!(
                "patching imagePullSecrets of ServiceAccount {}/{}",
                key.namespace, key.name
            ),
        })
    }

    /// No registries configured: remove attache's Secret and its entry.
    async fn clean_up(
        &self,
        key: &Key,
        sa: &SaInfo,
        existing: Option<SecretInfo>,
    ) -> Result<(), ReconcileError> {
        lock(&self.deps).remove(key);
        self.clear_warning(key);
        let name = secret_name(&key.name);
        let foreign = lock(&self.foreign).remove(key).is_some();
        if let Some(info) = existing.filter(|i| i.owned_by(&key.name)) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &key.namespace);
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: Some(info.resource_version.clone()),
                    uid: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => {
                    lock(&self.world)
                        .secrets
                        .remove(&Key::new(&key.namespace, name.as_str()));
                    tracing::info!(namespace = %key.namespace, service_account = %key.name, secret = %name, "ECR pull secret removed (annotation gone)");
                }
                Err(e) if api_code(&e) == Some(404) => {}
                Err(e) => {
                    return Err(ReconcileError::Kube {
                        action: format!("deleting Secret {}/{name}", key.namespace),
                        source: e,
                    });
                }
            }
        }
        if !foreign {
            self.ensure_listed(key, sa, &name, false).await?;
        }
        Ok(())
    }
}

/// Whether the Secret already holds exactly what attache would write for `sa`.
fn up_to_date(info: &SecretInfo, sa_name: &str, sa: &SaInfo, desired: &Desired) -> bool {
    info.owned_by(sa_name)
        && info.data_hash == desired.hash
        && info.annotated_hash.as_deref() == Some(desired.hash.as_str())
        && info.owners.iter().any(|o| o.uid == sa.uid)
}
