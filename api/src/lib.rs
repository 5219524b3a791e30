//! attache's user-visible names and wire formats, in one place for the
//! broker, the webhook and the sidecar: annotations, volumes, paths and ports
//! ([`names`]), environment variables ([`env`]) and the certificate API's
//! request and reply ([`certificates`]).
//!
//! Serde only: it depends on no other attache crate, and on nothing that
//! runs.

pub mod certificates;
pub mod env;
pub mod names;
