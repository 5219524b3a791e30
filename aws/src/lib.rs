//! attache's AWS side, shared by the sidecar, the broker's ECR controller and
//! the emulator's client: ARN validation ([`arn`]), temporary
//! [`credentials`], SigV4 signing and AWS error replies ([`sigv4`]), the IAM
//! Roles Anywhere `CreateSession` client ([`session`]), its CRL client
//! ([`crl`]: keeps a trust anchor's CRL in step) and the refresh engine
//! that keeps credentials fresh from any [`cache::CredentialSource`]
//! ([`cache`]), reporting through a [`cache::RefreshObserver`] hook.
//!
//! Depends on `attache-pki` and `attache-rt` only: never on a binary crate,
//! and knows nothing of Kubernetes.

pub mod arn;
pub mod cache;
pub mod credentials;
pub mod crl;
pub mod ecr;
pub mod request;
pub mod session;
pub mod sigv4;
