//! How a module logs: tracing to stderr, which the supervisor captures
//! and copies to the console as `[name] line`. No timestamps (the
//! console's kernel log has them) and colours only on a terminal.

use std::io::IsTerminal;

/// Installs the subscriber; `RUST_LOG` overrides the default `info`.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .try_init();
}
