//! Log set-up shared by every attache binary.

use clap::ValueEnum;

/// Log output format (`--log-format`).
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (in-cluster default).
    Json,
    /// Human-readable lines.
    Text,
}

/// Sets up `tracing` output in the chosen format on stderr. `RUST_LOG` takes
/// `level` or `target=level,...` directives (default `info`); an unparsable
/// value falls back to `info`. (A `Targets` filter, not `EnvFilter`: no regex
/// engine in a binary that runs in every pod.)
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => registry.with(layer.json().flatten_event(true)).try_init(),
        LogFormat::Text => registry
            .with(layer.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())))
            .try_init(),
    };
}
