//! attache's in-cluster control plane, one binary with a room per part:
//!
//! - CA and certificate API: [`castore`] (the CA Secret), [`certapi`]
//!   (`POST /v1/certificates`), [`tls`] (the serving certificate).
//! - Webhook: [`webhook`] (`POST /mutate`), [`inject`] (what a pod gets),
//!   [`informer`] (the annotation cache), [`policy`] (namespace policy).
//! - ECR controller: [`ecr`] (`attache-broker ecr-controller`, its own
//!   Deployment and identity).
//! - [`run`]: `attache-broker run`; [`flags`]: flags `run` and
//!   `ecr-controller` share; [`aws_policy`]: trust policies.
//!
//! Stands on `attache-pki`, `attache-api`, `attache-rt` and `attache-aws`;
//! never on the sidecar.
//!
//! - [`ca_cli`]: the `attache-broker ca` commands that create, inspect and use
//!   the cluster CA from files.

pub mod aws_policy;
pub mod ca_cli;
pub mod castore;
pub mod certapi;
pub mod ecr;
pub mod flags;
pub mod informer;
pub mod inject;
pub mod metrics;
pub mod policy;
pub mod revocation;
pub mod run;
pub mod tls;
pub mod webhook;
