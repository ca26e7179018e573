//! How a module logs: tracing to stderr, which the supervisor captures
//! and copies to the console as `[name] line`. No timestamps (the
//! console's kernel log has them) and colours only on a terminal.

use std::io::IsTerminal;

use crate::boot_config;

/// Installs the subscriber: the node's own lines at debug level when the
/// kernel command line says `zeronode.debug` (as PID 1's are), else info;
/// `RUST_LOG` overrides both.
pub fn init() {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_directives(&cmdline)));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .try_init();
}

/// The filter without `RUST_LOG`. Debug for the node's crates only (their
/// targets start with `zeronode`): zbus, tokio and hyper at debug would
/// bury the node's own lines on a serial console.
fn default_directives(cmdline: &str) -> &'static str {
    if boot_config::parse(cmdline).0.debug {
        "info,zeronode=debug"
    } else {
        "info"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn zeronode_debug_on_the_command_line_turns_on_the_modules_debug_lines() {
        assert_eq!(default_directives("console=ttyS0 loglevel=4"), "info");
        assert_eq!(
            default_directives("console=ttyS0 zeronode.debug loglevel=4"),
            "info,zeronode=debug"
        );
        assert_eq!(default_directives("zeronode.debug=0"), "info");
    }

    /// Runs `f` under a module's filter made of `directives`.
    fn under(directives: &str, f: impl FnOnce() -> bool) -> bool {
        let filter = tracing_subscriber::EnvFilter::new(directives);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(filter), f)
    }

    #[test]
    fn debug_reaches_the_node_s_crates_and_not_their_dependencies() {
        let d = "info,zeronode=debug";
        assert!(under(d, || tracing::enabled!(
            target: "zeronode_storage::node",
            Level::DEBUG
        )));
        assert!(under(d, || tracing::enabled!(
            target: "zeronode::provision",
            Level::DEBUG
        )));
        assert!(!under(d, || tracing::enabled!(
            target: "zbus::connection",
            Level::DEBUG
        )));
        assert!(under(d, || tracing::enabled!(
            target: "zbus::connection",
            Level::INFO
        )));
        assert!(!under("info", || tracing::enabled!(
            target: "zeronode_storage::node",
            Level::DEBUG
        )));
    }
}
