//! attache's runtime floor, shared by the sidecar, the broker and the
//! emulator: the injectable [`clock`], the listener loop with its limits and
//! graceful shutdown ([`serve`]), background loops that stop on request
//! ([`task`]), log set-up ([`logging`]) and the flag value
//! parsers ([`parse`]).
//!
//! Depends on no other attache crate but `attache-pki` (for key type names),
//! and knows nothing of AWS or Kubernetes.

pub mod clock;
pub mod logging;
pub mod parse;
pub mod serve;
pub mod task;
