//! attache's in-cluster control plane.
//!
//! - [`ca_cli`]: the `attache-broker ca` commands that create, inspect and use
//!   the cluster CA from files.

pub mod ca_cli;
pub mod inject;
pub mod names;
pub mod policy;
