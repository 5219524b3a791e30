//! The CA's state in Kubernetes: a Secret in the broker's namespace, created
//! once (safe when several replicas start together), and a ConfigMap that
//! publishes the CA bundle.

use std::collections::BTreeMap;

use attache_pki::{CaOptions, CertificateAuthority};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ObjectMeta, PostParams};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use attache_api::names::{CA_BUNDLE_CONFIGMAP, MANAGED_BY};

/// Key of the CA certificate in the Secret and ConfigMap.
pub const CERT_KEY: &str = "ca.pem";
/// Key of the CA private key in the Secret.
pub const KEY_KEY: &str = "ca-key.pem";

/// Why the CA could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum CaStoreError {
    /// A Kubernetes API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The API error.
        source: kube::Error,
    },
    /// The stored CA is unusable.
    #[error("CA in Secret {namespace}/{name} is unusable: {reason}")]
    Invalid {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Creating a new CA failed.
    #[error(transparent)]
    Ca(#[from] attache_pki::CaError),
}

pub(crate) fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([MANAGED_BY.entry()])
}

/// The metadata of object `name` in `namespace`, labelled as attache's.
fn managed_meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(labels()),
        ..Default::default()
    }
}

/// Loads the CA from Secret `name`, or creates it if absent. When two replicas
/// race, the create of one fails with `AlreadyExists` and it reads the
/// winner's CA, so every replica ends up with the same CA.
pub async fn load_or_create(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
    options: &CaOptions,
) -> Result<CertificateAuthority, CaStoreError> {
    let kube_err = |action: &str| {
        let action = format!("{action} Secret {namespace}/{name}");
        move |source| CaStoreError::Kube { action, source }
    };
    if let Some(secret) = secrets.get_opt(name).await.map_err(kube_err("reading"))? {
        return from_secret(&secret, namespace, name);
    }
    let ca = CertificateAuthority::create(options, OffsetDateTime::now_utc())?;
    let key_pem = ca.private_key_pem();
    let secret = Secret {
        metadata: managed_meta(namespace, name),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                CERT_KEY.to_string(),
                ByteString(ca.trust_anchor_pem().into_bytes()),
            ),
            (KEY_KEY.to_string(), ByteString(key_pem.as_bytes().to_vec())),
        ])),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(namespace, secret = name, fingerprint = %ca.info().sha256_fingerprint, "created a new CA");
            Ok(ca)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            tracing::info!(
                namespace,
                secret = name,
                "another replica created the CA first; using it"
            );
            let secret = secrets.get(name).await.map_err(kube_err("reading"))?;
            from_secret(&secret, namespace, name)
        }
        Err(e) => Err(kube_err("creating")(e)),
    }
}

/// Reads a CA from a Secret's `ca.pem` and `ca-key.pem`.
pub fn from_secret(
    secret: &Secret,
    namespace: &str,
    name: &str,
) -> Result<CertificateAuthority, CaStoreError> {
    let invalid = |reason: String| CaStoreError::Invalid {
        namespace: namespace.to_string(),
        name: name.to_string(),
        reason,
    };
    let data = secret
        .data
        .as_ref()
        .ok_or_else(|| invalid("the Secret has no data".into()))?;
    let get = |k: &str| -> Result<Zeroizing<String>, CaStoreError> {
        let bytes = data
            .get(k)
            .ok_or_else(|| invalid(format!("key {k} is missing")))?;
        String::from_utf8(bytes.0.clone())
            .map(Zeroizing::new)
            .map_err(|_| invalid(format!("key {k} is not PEM text")))
    };
    let cert = get(CERT_KEY)?;
    let key = get(KEY_KEY)?;
    CertificateAuthority::from_pem(&cert, &key).map_err(|e| invalid(e.to_string()))
}

/// Creates or updates the `attache-ca-bundle` ConfigMap with the CA PEM.
pub async fn publish_bundle(
    configmaps: &Api<ConfigMap>,
    namespace: &str,
    bundle_pem: &str,
) -> Result<(), CaStoreError> {
    let kube_err = |action: &'static str| {
        move |source| CaStoreError::Kube {
            action: format!("{action} ConfigMap {namespace}/{CA_BUNDLE_CONFIGMAP}"),
            source,
        }
    };
    let data = BTreeMap::from([(CERT_KEY.to_string(), bundle_pem.to_string())]);
    match configmaps
        .get_opt(CA_BUNDLE_CONFIGMAP)
        .await
        .map_err(kube_err("reading"))?
    {
        Some(existing) if existing.data.as_ref() == Some(&data) => Ok(()),
        Some(mut existing) => {
            existing.data = Some(data);
            configmaps
                .replace(CA_BUNDLE_CONFIGMAP, &PostParams::default(), &existing)
                .await
                .map(|_| ())
                .map_err(kube_err("updating"))
        }
        None => {
            let cm = ConfigMap {
                metadata: managed_meta(namespace, CA_BUNDLE_CONFIGMAP),
                data: Some(data),
                ..Default::default()
            };
            match configmaps.create(&PostParams::default(), &cm).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => Err(kube_err("creating")(e)),
            }
        }
    }
}
