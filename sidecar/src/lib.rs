//! attache's per-pod sidecar: obtains a workload certificate (from files or the
//! attache broker), trades it for temporary AWS credentials through IAM Roles
//! Anywhere `CreateSession`, keeps them fresh, and serves them on the loopback
//! container-credentials endpoint that every AWS SDK reads.
//!
//! - [`session`]: the CreateSession client and its classified errors.
//! - [`certsource`]: certificates from files or from the broker (CSR + ServiceAccount token).
//! - [`cache`]: the refresh loop and the read side handlers use.
//! - [`server`]: `/v1/credentials`, health, readiness, metrics, IMDSv2 paths.
//! - [`serve`]: the listener loop shared with the broker (timeouts, TLS, graceful shutdown).
//! - [`cli`]: flags and environment, validated into the pieces above.
//! - [`app`]: the commands themselves (`serve`, `credential-process`, `update`, `probe`).
//! - [`startup`]: where start-up time goes, logged when first ready.

pub mod app;
pub mod arn;
pub mod aws;
pub mod cache;
pub mod certsource;
pub mod cli;
pub mod clock;
pub mod credentials;
pub mod metrics;
pub mod serve;
pub mod server;
pub mod session;
pub mod source;
pub mod startup;
pub mod token;
pub mod update;
