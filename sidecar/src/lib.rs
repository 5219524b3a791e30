//! attache's per-pod sidecar: Roles Anywhere sessions, the credential cache and
//! the container-credentials endpoint. (Being built: see the sidecar issue.)
