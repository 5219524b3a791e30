//! The real-cluster harness for attache's end-to-end tests.
//!
//! [`ApiServer`] runs etcd and kube-apiserver, both built from their pinned Go
//! modules by `cargo xtask tools`, on loopback: generated certificates, a
//! ServiceAccount issuer and signing key, `--authorization-mode=Node,RBAC` and
//! the default admission plugins (MutatingAdmissionWebhook and
//! ValidatingAdmissionPolicy among them). There is no kubelet and no
//! controller-manager: pods are stored, never run, and nothing garbage-collects.
//!
//! One API server per test binary ([`ApiServer::shared`]), a namespace per test
//! ([`ApiServer::namespace`]). Its processes die with the test process (a
//! parent-death signal) and its files are removed at exit, even after a panic.
//!
//! [`FaultProxy`] sits between a client and the API server to answer chosen
//! requests with injected failures (409, 5xx) the real server gives on no cue.
//!
//! Depends on no attache crate but the testkit; the tests bring the rest.

mod certs;
mod process;
mod proxy;
mod server;

pub use proxy::{FaultProxy, Seen};
pub use server::{ApiServer, ApiServerOptions, ISSUER, TokenSpec};
