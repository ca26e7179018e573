//! Service files: `/etc/zeronode/services/NAME.toml`, one service a file,
//! the service's name is the file's stem. See docs/services.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field} = {value:?}: {reason}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Runs for as long as the node does; up once started.
    Longrun,
    /// Runs to completion; up once it exited 0.
    Oneshot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    workdir: Option<PathBuf>,
    user: Option<String>,
    #[serde(default)]
    after: Vec<String>,
    kind: Option<Kind>,
    #[serde(default)]
    ready: bool,
    #[serde(default)]
    restart: RestartFile,
    #[serde(default)]
    stop: StopFile,
    #[serde(default)]
    log: LogFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartFile {
    policy: Option<RestartPolicy>,
    initial_ms: Option<u64>,
    max_ms: Option<u64>,
    factor: Option<f64>,
    reset_after_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StopFile {
    signal: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogFile {
    ring_bytes: Option<usize>,
    console: Option<bool>,
}

/// A validated service.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<PathBuf>,
    /// (uid, gid) to run as; None keeps root.
    pub user: Option<(u32, u32)>,
    pub after: Vec<String>,
    pub kind: Kind,
    pub ready: bool,
    pub restart: Backoff,
    pub policy: RestartPolicy,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub ring_bytes: usize,
    pub console: bool,
}

/// Exponential back-off between restarts, bounded by `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub factor: f64,
    /// A run this long resets the back-off to `initial`.
    pub reset_after: Duration,
}

impl Backoff {
    /// Delay before restart number `n` (0 = the first restart).
    pub fn delay(&self, n: u32) -> Duration {
        let scaled = self.initial.as_secs_f64() * self.factor.powi(n.min(64) as i32);
        Duration::from_secs_f64(scaled.min(self.max.as_secs_f64()))
    }
}

pub const DEFAULT_RING_BYTES: usize = 64 * 1024;

impl Service {
    pub fn load(path: &Path, passwd: &str) -> Result<Service, ServiceError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServiceError::Read {
            path: path.into(),
            source,
        })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Service::parse(&name, &text, path, passwd)
    }

    pub fn parse(
        name: &str,
        text: &str,
        path: &Path,
        passwd: &str,
    ) -> Result<Service, ServiceError> {
        let f: File = toml::from_str(text).map_err(|e| ServiceError::Parse {
            path: path.into(),
            message: e.message().to_string(),
        })?;
        let invalid = |field, value: String, reason| ServiceError::Invalid {
            path: path.into(),
            field,
            value,
            reason,
        };
        if !valid_name(name) {
            return Err(invalid(
                "name",
                name.into(),
                "service names are letters, digits, '-', '_' and '.'",
            ));
        }
        if f.command.is_empty() || f.command[0].is_empty() {
            return Err(invalid(
                "command",
                format!("{:?}", f.command),
                "needs at least the program",
            ));
        }
        if let Some(bad) = f.after.iter().find(|a| !valid_name(a)) {
            return Err(invalid("after", bad.clone(), "not a service name"));
        }
        if let Some(bad) = f
            .env
            .keys()
            .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
        {
            return Err(invalid("env", bad.clone(), "not a variable name"));
        }
        let user = f
            .user
            .as_deref()
            .map(|u| {
                lookup_user(u, passwd)
                    .ok_or_else(|| invalid("user", u.into(), "no such user in /etc/passwd"))
            })
            .transpose()?;
        let kind = f.kind.unwrap_or(Kind::Longrun);
        let policy = f.restart.policy.unwrap_or(match kind {
            Kind::Longrun => RestartPolicy::Always,
            Kind::Oneshot => RestartPolicy::Never,
        });
        let factor = f.restart.factor.unwrap_or(2.0);
        if !(1.0..=10.0).contains(&factor) {
            return Err(invalid(
                "restart.factor",
                factor.to_string(),
                "must be between 1 and 10",
            ));
        }
        let initial = Duration::from_millis(f.restart.initial_ms.unwrap_or(100));
        let max = Duration::from_millis(f.restart.max_ms.unwrap_or(30_000));
        if initial > max {
            return Err(invalid(
                "restart.initial_ms",
                initial.as_millis().to_string(),
                "is above restart.max_ms",
            ));
        }
        let stop_signal = match f.stop.signal.as_deref() {
            None => Signal::SIGTERM,
            Some(s) => parse_signal(s).ok_or_else(|| {
                invalid("stop.signal", s.into(), "not a signal name like SIGTERM")
            })?,
        };
        let ring_bytes = f.log.ring_bytes.unwrap_or(DEFAULT_RING_BYTES);
        if !(1024..=16 << 20).contains(&ring_bytes) {
            return Err(invalid(
                "log.ring_bytes",
                ring_bytes.to_string(),
                "must be between 1 KiB and 16 MiB",
            ));
        }
        Ok(Service {
            name: name.into(),
            command: f.command,
            env: f.env,
            workdir: f.workdir,
            user,
            after: f.after,
            kind,
            ready: f.ready,
            restart: Backoff {
                initial,
                max,
                factor,
                reset_after: Duration::from_millis(f.restart.reset_after_ms.unwrap_or(10_000)),
            },
            policy,
            stop_signal,
            stop_timeout: Duration::from_millis(f.stop.timeout_ms.unwrap_or(10_000)),
            ring_bytes,
            console: f.log.console.unwrap_or(true),
        })
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn parse_signal(s: &str) -> Option<Signal> {
    let upper = s.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse().ok()
}

/// (uid, gid) of a user name or a numeric uid, from passwd-format text.
fn lookup_user(user: &str, passwd: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || (f[0] != user && f[2] != user) {
            return None;
        }
        Some((f[2].parse().ok()?, f[3].parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/sbin/nologin\n";

    fn parse(text: &str) -> Result<Service, ServiceError> {
        Service::parse(
            "svc",
            text,
            Path::new("/etc/zeronode/services/svc.toml"),
            PASSWD,
        )
    }

    #[test]
    fn full_file() {
        let s = parse(
            r#"
            command = ["/usr/bin/containerd", "--config", "/etc/containerd.toml"]
            env = { HOME = "/root" }
            workdir = "/var/lib"
            user = "nobody"
            after = ["network", "storage"]
            kind = "longrun"
            ready = true
            restart = { policy = "on-failure", initial_ms = 50, max_ms = 1000, factor = 3.0 }
            stop = { signal = "INT", timeout_ms = 2000 }
            log = { ring_bytes = 4096, console = false }
            "#,
        )
        .unwrap();
        assert_eq!(s.user, Some((65534, 65534)));
        assert_eq!(s.after, ["network", "storage"]);
        assert_eq!(s.policy, RestartPolicy::OnFailure);
        assert_eq!(s.stop_signal, Signal::SIGINT);
        assert_eq!(s.stop_timeout, Duration::from_secs(2));
        assert!(s.ready && !s.console);
    }

    #[test]
    fn defaults() {
        let s = parse(r#"command = ["/bin/true"]"#).unwrap();
        assert_eq!(
            (s.kind, s.policy, s.stop_signal),
            (Kind::Longrun, RestartPolicy::Always, Signal::SIGTERM)
        );
        let s = parse("command = [\"/bin/true\"]\nkind = \"oneshot\"").unwrap();
        assert_eq!(s.policy, RestartPolicy::Never);
    }

    #[test]
    fn errors_name_file_field_and_value() {
        let cases = [
            ("command = []", "command"),
            ("command = [\"/x\"]\nuser = \"ghost\"", "ghost"),
            (
                "command = [\"/x\"]\nstop = { signal = \"SIGNOPE\" }",
                "stop.signal",
            ),
            (
                "command = [\"/x\"]\nrestart = { factor = 0.5 }",
                "restart.factor",
            ),
            ("command = [\"/x\"]\nafter = [\"a b\"]", "after"),
            ("command = [\"/x\"]\nbogus = 1", "bogus"),
            ("command = [\"/x\"]\nkind = \"daemon\"", "daemon"),
            ("command = \"/x\"", "svc.toml"),
        ];
        for (text, needle) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.contains("svc.toml") && e.contains(needle),
                "{text:?} gave {e}"
            );
        }
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            factor: 2.0,
            reset_after: Duration::ZERO,
        };
        let d: Vec<u128> = (0..8).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(2));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in "\\PC*") {
            let _ = parse(&text);
        }

        #[test]
        fn never_panics_on_near_valid(cmd in "[ -~]{0,20}", after in "[ -~]{0,10}", sig in "[A-Z]{0,8}", f in proptest::num::f64::ANY) {
            let _ = parse(&format!("command = [{cmd:?}]\nafter = [{after:?}]\nstop = {{ signal = {sig:?} }}\nrestart = {{ factor = {f:?} }}"));
        }
    }
}
