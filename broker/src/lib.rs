//! attache's in-cluster control plane.
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
pub mod run;
pub mod tls;
pub mod webhook;
