//! attache's per-pod sidecar: obtains a workload certificate (from files or the
//! attache broker), trades it for temporary AWS credentials through IAM Roles
//! Anywhere `CreateSession`, keeps them fresh, and serves them on the loopback
//! container-credentials endpoint that every AWS SDK reads.
//!
//! - [`certsource`]: certificates from files or from the broker (CSR + ServiceAccount token).
//! - [`server`]: `/v1/credentials`, health, readiness, metrics, IMDSv2 paths.
//! - [`cli`]: flags and environment, validated into the pieces above.
//! - [`app`]: the commands themselves (`serve`, `credential-process`, `update`, `probe`).
//! - [`startup`]: where start-up time goes, logged when first ready.
//! - [`source`]: the certificate source plus the CreateSession client, as
//!   one credential source for the refresh engine.
//! - [`metrics`]: what the sidecar exports, hooked into the refresh engine.
//!
//! The Roles Anywhere client, the refresh engine and credentials live in
//! `attache-aws`; the clock, listener loop and log set-up in `attache-rt`.
//! This crate is the binary's own: no other attache crate depends on it.

pub mod app;
pub mod certsource;
pub mod cli;
pub mod endpoint_token;
pub mod metrics;
pub mod server;
pub mod source;
pub mod startup;
pub mod update;
