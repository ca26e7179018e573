//! Service files: `/etc/zeronode/services/NAME.toml`, one service a file,
//! the service's name is the file's stem. See docs/services.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;
use thiserror::Error;

use super::backoff::Backoff;
use super::health::{Health, Probe};

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

/// A service file as written; the fields are described on [`Service`].
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
    after_ready: bool,
    nice_until_ready: Option<i32>,
    #[serde(default)]
    restart: RestartFile,
    health: Option<HealthFile>,
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
struct HealthFile {
    command: Option<Vec<String>>,
    unix: Option<PathBuf>,
    tcp: Option<String>,
    interval_ms: Option<u64>,
    start_interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    retries: Option<u32>,
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

/// A validated service file. In the file every field but `command` is
/// optional and unknown fields are errors; docs/services.md is the full
/// reference:
///
/// ```toml
/// command = ["/usr/bin/containerd", "--config", "/etc/containerd.toml"] # program, then its arguments
/// env = { HOME = "/root" }      # added to init's environment
/// workdir = "/var/lib"          # working directory (default: /)
/// user = "nobody"               # name in /etc/passwd or a numeric uid (default: root)
/// after = ["network"]           # services that must be up first
/// kind = "longrun"              # "longrun" (default) or "oneshot"
/// ready = true                  # the node's ready line waits for this one
/// after_ready = false           # or: start only once the ready line is out
/// nice_until_ready = 10         # 1 to 19: its nice value once up, until the ready line is out
/// [restart]
/// policy = "always"             # "always", "on-failure", "never"
/// initial_ms = 100              # first delay; then times `factor`, up to `max_ms`
/// max_ms = 30000
/// factor = 2.0                  # 1 to 10
/// reset_after_ms = 10000        # a run this long resets the delay to `initial_ms`
/// [health]                      # exactly one of command / unix / tcp
/// tcp = "127.0.0.1:8080"
/// interval_ms = 1000            # between checks once healthy
/// start_interval_ms = 100       # between checks until the first pass
/// timeout_ms = 1000
/// retries = 3                   # consecutive failures that make it unhealthy
/// [stop]
/// signal = "SIGTERM"
/// timeout_ms = 10000            # then SIGKILL
/// [log]
/// ring_bytes = 65536            # recent output kept for `znctl logs`
/// console = true                # copy lines to the console as `[name] line`
/// ```
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
    /// Starts only once the node's ready line is out: a service nothing on
    /// the way to ready needs, kept from competing with it for the CPU.
    pub after_ready: bool,
    /// Its processes' nice value from when it is up (its health check
    /// passed) until the node's ready line is out, then 0: a service whose
    /// further work does not hold the ready line leaves the CPUs to the
    /// ones still starting.
    pub nice_until_ready: Option<i32>,
    pub restart: Backoff,
    pub policy: RestartPolicy,
    pub health: Option<Health>,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub ring_bytes: usize,
    pub console: bool,
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
            message: match e.span() {
                Some(span) => {
                    // The line itself names the field and the value.
                    let start = span.start.min(text.len());
                    let number = text.as_bytes()[..start]
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count()
                        + 1;
                    let line = text.lines().nth(number - 1).unwrap_or("").trim();
                    let line: String = line.chars().take(80).collect();
                    format!("line {number} `{line}`: {}", e.message())
                }
                None => e.message().to_string(),
            },
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
        if let Some(bad) = f.command.iter().find(|a| a.contains('\0')) {
            return Err(invalid("command", bad.clone(), "contains a NUL byte"));
        }
        if let Some(bad) = f.after.iter().find(|a| !valid_name(a)) {
            return Err(invalid("after", bad.clone(), "not a service name"));
        }
        if let Some(bad) = f
            .env
            .iter()
            .find(|(k, v)| k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0'))
        {
            return Err(invalid(
                "env",
                bad.0.clone(),
                "not a variable name, or a NUL byte in the value",
            ));
        }
        let user = f
            .user
            .as_deref()
            .map(|u| {
                lookup_user(u, passwd).ok_or_else(|| {
                    invalid(
                        "user",
                        u.into(),
                        "no such user in /etc/passwd (and not a numeric uid)",
                    )
                })
            })
            .transpose()?;
        if f.ready && f.after_ready {
            return Err(invalid(
                "after_ready",
                "true".into(),
                "a service the ready line waits for cannot wait for the ready line",
            ));
        }
        if let Some(n) = f.nice_until_ready.filter(|n| !(1..=19).contains(n)) {
            return Err(invalid(
                "nice_until_ready",
                n.to_string(),
                "must be between 1 and 19",
            ));
        }
        if f.after_ready && f.nice_until_ready.is_some() {
            return Err(invalid(
                "nice_until_ready",
                "set".into(),
                "an after_ready service starts once the ready line is out",
            ));
        }
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
        let initial_ms = f.restart.initial_ms.unwrap_or(100);
        let max_ms = f.restart.max_ms.unwrap_or(30_000);
        if max_ms > MAX_MS {
            return Err(invalid(
                "restart.max_ms",
                max_ms.to_string(),
                "must be at most 3600000 (one hour)",
            ));
        }
        if initial_ms > max_ms {
            return Err(invalid(
                "restart.initial_ms",
                initial_ms.to_string(),
                "is above restart.max_ms",
            ));
        }
        let reset_after_ms = f.restart.reset_after_ms.unwrap_or(10_000);
        if reset_after_ms > MAX_MS {
            return Err(invalid(
                "restart.reset_after_ms",
                reset_after_ms.to_string(),
                "must be at most 3600000 (one hour)",
            ));
        }
        let health = f.health.map(|h| parse_health(h, &invalid)).transpose()?;
        let stop_signal = match f.stop.signal.as_deref() {
            None => Signal::SIGTERM,
            Some(s) => parse_signal(s).ok_or_else(|| {
                invalid("stop.signal", s.into(), "not a signal name like SIGTERM")
            })?,
        };
        let stop_timeout_ms = f.stop.timeout_ms.unwrap_or(10_000);
        if stop_timeout_ms > MAX_MS {
            return Err(invalid(
                "stop.timeout_ms",
                stop_timeout_ms.to_string(),
                "must be at most 3600000 (one hour)",
            ));
        }
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
            after_ready: f.after_ready,
            nice_until_ready: f.nice_until_ready,
            restart: Backoff {
                initial: Duration::from_millis(initial_ms),
                max: Duration::from_millis(max_ms),
                factor,
                reset_after: Duration::from_millis(reset_after_ms),
            },
            policy,
            health,
            stop_signal,
            stop_timeout: Duration::from_millis(stop_timeout_ms),
            ring_bytes,
            console: f.log.console.unwrap_or(true),
        })
    }
}

/// The longest delay or timeout a file may ask for: a typo of a few zeros
/// should be an error, not a service that never comes back.
const MAX_MS: u64 = 3_600_000;

fn parse_health(
    h: HealthFile,
    invalid: &impl Fn(&'static str, String, &'static str) -> ServiceError,
) -> Result<Health, ServiceError> {
    let probe = match (h.command, h.unix, h.tcp) {
        (Some(cmd), None, None) => {
            if cmd.is_empty() || cmd[0].is_empty() || cmd.iter().any(|a| a.contains('\0')) {
                return Err(invalid(
                    "health.command",
                    format!("{cmd:?}"),
                    "needs at least the program, and no NUL bytes",
                ));
            }
            Probe::Command(cmd)
        }
        (None, Some(path), None) => Probe::Unix(path),
        (None, None, Some(addr)) => Probe::Tcp(addr.parse().map_err(|_| {
            invalid(
                "health.tcp",
                addr.clone(),
                "not an address like 127.0.0.1:8080",
            )
        })?),
        (c, u, t) => {
            return Err(invalid(
                "health",
                format!(
                    "{} given",
                    [
                        ("command", c.is_some()),
                        ("unix", u.is_some()),
                        ("tcp", t.is_some())
                    ]
                    .iter()
                    .filter(|(_, set)| *set)
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(" and ")
                ),
                "needs exactly one of command, unix or tcp",
            ))
        }
    };
    let ms = |field, value: Option<u64>, default: u64| {
        let v = value.unwrap_or(default);
        if v == 0 || v > MAX_MS {
            Err(invalid(
                field,
                v.to_string(),
                "must be between 1 and 3600000",
            ))
        } else {
            Ok(Duration::from_millis(v))
        }
    };
    let interval = ms("health.interval_ms", h.interval_ms, 1000)?;
    // Until the first pass a socket check is a connect(2) that costs
    // microseconds, so it polls often: every poll interval is boot time a
    // dependent service waits for nothing. A command check forks a process.
    let default_start = match probe {
        Probe::Command(_) => 100,
        Probe::Unix(_) | Probe::Tcp(_) => 10,
    };
    let start_interval = ms(
        "health.start_interval_ms",
        h.start_interval_ms,
        default_start,
    )?;
    let timeout = ms("health.timeout_ms", h.timeout_ms, 1000)?;
    let retries = h.retries.unwrap_or(3);
    if retries == 0 {
        return Err(invalid("health.retries", "0".into(), "must be at least 1"));
    }
    Ok(Health {
        probe,
        interval,
        start_interval,
        timeout,
        retries,
    })
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

/// (uid, gid) of a user name or a numeric uid, from passwd-format text. A
/// numeric uid that passwd does not list runs with the group of the same
/// number.
fn lookup_user(user: &str, passwd: &str) -> Option<(u32, u32)> {
    let listed = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || (f[0] != user && f[2] != user) {
            return None;
        }
        Some((f[2].parse().ok()?, f[3].parse().ok()?))
    });
    listed.or_else(|| user.parse().ok().map(|uid| (uid, uid)))
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
            ("command = [\"/x\"]\n\nbogus = 1", "line 3"),
            (
                "command = [\"/x\"]\nhealth = { tcp = \"nowhere\" }",
                "health.tcp = \"nowhere\"",
            ),
            (
                "command = [\"/x\"]\nhealth = { tcp = \"1.2.3.4:5\", unix = \"/s\" }",
                "unix and tcp",
            ),
            ("command = [\"/x\"]\nhealth = { retries = 2 }", "health"),
            (
                "command = [\"/x\"]\nhealth = { unix = \"/s\", timeout_ms = 0 }",
                "health.timeout_ms",
            ),
            (
                "command = [\"/x\"]\nrestart = { max_ms = 99999999999 }",
                "restart.max_ms",
            ),
            (
                "command = [\"/x\"]\nlog = { ring_bytes = 10 }",
                "log.ring_bytes",
            ),
            ("command = [\"/x\"]\nkind = 3", "kind"),
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
    fn health_checks() {
        let s =
            parse("command = [\"/x\"]\nhealth = { tcp = \"127.0.0.1:80\", retries = 2 }").unwrap();
        let h = s.health.unwrap();
        assert_eq!(h.probe, Probe::Tcp("127.0.0.1:80".parse().unwrap()));
        assert_eq!((h.retries, h.interval), (2, Duration::from_secs(1)));
        let s = parse("command = [\"/x\"]\n[health]\nunix = \"/run/x.sock\"").unwrap();
        assert_eq!(s.health.unwrap().probe, Probe::Unix("/run/x.sock".into()));
        let s = parse("command = [\"/x\"]\n[health]\ncommand = [\"/bin/true\"]").unwrap();
        assert_eq!(
            s.health.unwrap().probe,
            Probe::Command(vec!["/bin/true".into()])
        );
    }

    #[test]
    fn numeric_users() {
        let s = parse("command = [\"/x\"]\nuser = \"65534\"").unwrap();
        assert_eq!(s.user, Some((65534, 65534)));
        let s = parse("command = [\"/x\"]\nuser = \"1234\"").unwrap();
        assert_eq!(s.user, Some((1234, 1234)));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in "\\PC*") {
            let _ = parse(&text);
        }

        #[test]
        fn never_panics_on_toml_shaped(lines in proptest::collection::vec(
            ("(command|env|workdir|user|after|kind|ready|restart|health|stop|log|x)",
             "(\\[\"[ -~]{0,6}\"\\]|\"[ -~]{0,8}\"|-?[0-9]{1,20}|true|\\{ ?[a-z_]{1,12} ?= ?[0-9\"a-z.:]{0,12} ?\\})"),
            0..8,
        )) {
            let text: String = lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
            let _ = parse(&text);
        }

        #[test]
        fn never_panics_on_near_valid(cmd in "[ -~]{0,20}", after in "[ -~]{0,10}", sig in "[A-Z]{0,8}", f in proptest::num::f64::ANY) {
            let _ = parse(&format!("command = [{cmd:?}]\nafter = [{after:?}]\nstop = {{ signal = {sig:?} }}\nrestart = {{ factor = {f:?} }}"));
        }
    }
}
