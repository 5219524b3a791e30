//! Where a sidecar's start-up time goes: marks taken on the way from `main`
//! to the first credentials, logged once as one line when the sidecar is
//! first ready (`ready: first credentials held`, fields in milliseconds).
//! The endpoint benchmark prints the same breakdown.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static PROCESS: OnceLock<Instant> = OnceLock::new();
static RUNTIME: OnceLock<Duration> = OnceLock::new();

/// Marks the start of `main` (call first thing).
pub fn process_started() {
    PROCESS.get_or_init(Instant::now);
}

/// Marks the async runtime as built.
pub fn runtime_built() {
    let _ = RUNTIME.set(since_start());
}

/// Time since `main` started (or since first asked, in-process).
pub fn since_start() -> Duration {
    PROCESS.get_or_init(Instant::now).elapsed()
}

/// The marks of one `serve` start.
#[derive(Clone, Copy, Debug, Default)]
pub struct Breakdown {
    /// `main` to the runtime built.
    pub runtime: Duration,
    /// Logging set up.
    pub logging: Duration,
    /// The CreateSession HTTP client (TLS configuration, root store).
    pub tls_client: Duration,
    /// Certificate and key read and checked (files), or the broker client set up.
    pub certificate: Duration,
    /// Everything else before the listener is bound (flags, token file).
    pub other: Duration,
    /// The listener bound and the refresh task started.
    pub listening_at: Duration,
}

impl Breakdown {
    /// The marks so far, with the runtime's from `main`.
    pub fn new() -> Self {
        Breakdown {
            runtime: RUNTIME.get().copied().unwrap_or_default(),
            ..Breakdown::default()
        }
    }

    /// Logs the breakdown once the first set is held `first_session` after
    /// the refresh task started.
    pub fn log_ready(&self, first_session: Duration) {
        let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
        tracing::info!(
            ready_ms = ms(since_start()),
            runtime_ms = ms(self.runtime),
            logging_ms = ms(self.logging),
            tls_client_ms = ms(self.tls_client),
            certificate_ms = ms(self.certificate),
            other_ms = ms(self.other),
            listening_ms = ms(self.listening_at),
            first_session_ms = ms(first_session),
            "ready: first credentials held"
        );
    }
}
