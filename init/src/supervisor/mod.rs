//! The service supervisor: starts services in dependency order (in
//! parallel where the graph allows), captures their output, reaps every
//! child (orphans too), restarts with back-off, and stops them in reverse
//! order. It is driven by one task on a current-thread runtime: no thread
//! per service, no locks.

pub mod graph;
pub mod logs;
pub mod service;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use self::logs::Ring;
use self::service::{Kind, RestartPolicy, Service};

/// Where a service is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waiting for its dependencies.
    Waiting,
    Running {
        pid: i32,
    },
    /// A oneshot that finished with status 0.
    Done,
    /// Waiting out the back-off before a restart.
    Backoff,
    Stopping {
        pid: i32,
    },
    Stopped,
    /// Ended and not restarted; the reason says how.
    Failed(String),
    /// Never started: bad dependency.
    Refused(String),
}

impl State {
    fn is_alive(&self) -> bool {
        matches!(self, State::Running { .. } | State::Stopping { .. })
    }
}

/// What the event loop reacts to, besides signals.
#[derive(Debug)]
pub enum Event {
    Log { service: String, line: String },
    Restart { service: String },
    StopTimeout { service: String, pid: i32 },
}

pub struct Svc {
    pub spec: Service,
    pub state: State,
    pub log: Ring,
    restarts: u32,
    started: Option<Instant>,
}

pub struct Supervisor {
    pub services: BTreeMap<String, Svc>,
    dependents: BTreeMap<String, BTreeSet<String>>,
    pids: HashMap<i32, String>,
    events: UnboundedSender<Event>,
    shutting_down: bool,
}

impl Supervisor {
    /// Loads every `*.toml` in `dir`. A bad file or a bad dependency is
    /// logged as an error and leaves that service out; the rest still runs.
    pub fn load(dir: &Path) -> (Supervisor, UnboundedReceiver<Event>) {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let mut specs = BTreeMap::new();
        let mut files: Vec<_> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect(),
            Err(e) => {
                tracing::error!("cannot read services from {}: {e}", dir.display());
                Vec::new()
            }
        };
        files.sort();
        for path in files {
            match Service::load(&path, &passwd) {
                Ok(s) => {
                    specs.insert(s.name.clone(), s);
                }
                Err(e) => tracing::error!("service file skipped: {e}"),
            }
        }
        let after: BTreeMap<String, Vec<String>> = specs
            .iter()
            .map(|(n, s)| (n.clone(), s.after.clone()))
            .collect();
        let refused = graph::refusals(&after);
        let dependents = graph::dependents(&after);
        let services = specs
            .into_iter()
            .map(|(name, spec)| {
                let state = match refused.get(&name) {
                    Some(r) => {
                        tracing::error!("service {name} refused: {r}");
                        State::Refused(r.to_string())
                    }
                    None => State::Waiting,
                };
                let log = Ring::new(spec.ring_bytes);
                (
                    name,
                    Svc {
                        spec,
                        state,
                        log,
                        restarts: 0,
                        started: None,
                    },
                )
            })
            .collect();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            Supervisor {
                services,
                dependents,
                pids: HashMap::new(),
                events: tx,
                shutting_down: false,
            },
            rx,
        )
    }

    /// A dependency counts as up once a longrun runs or a oneshot is done.
    fn is_up(&self, name: &str) -> bool {
        self.services.get(name).is_some_and(|s| match s.spec.kind {
            Kind::Longrun => matches!(s.state, State::Running { .. }),
            Kind::Oneshot => s.state == State::Done,
        })
    }

    /// Starts every waiting service whose dependencies are up.
    pub fn start_all_ready(&mut self) {
        let names: Vec<String> = self.services.keys().cloned().collect();
        self.start_eligible(names);
    }

    fn start_eligible(&mut self, candidates: impl IntoIterator<Item = String>) {
        if self.shutting_down {
            return;
        }
        for name in candidates {
            let eligible = self.services.get(&name).is_some_and(|s| {
                s.state == State::Waiting && s.spec.after.iter().all(|d| self.is_up(d))
            });
            if eligible {
                self.spawn(&name);
            }
        }
    }

    fn spawn(&mut self, name: &str) {
        let Some(svc) = self.services.get_mut(name) else {
            return;
        };
        let spec = &svc.spec;
        let mut cmd = Command::new(&spec.command[0]);
        cmd.args(&spec.command[1..])
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a stop reaches what it forked too.
            .process_group(0);
        if std::env::var_os("PATH").is_none() && !spec.env.contains_key("PATH") {
            cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        }
        if let Some(dir) = &spec.workdir {
            cmd.current_dir(dir);
        }
        if let Some((uid, gid)) = spec.user {
            cmd.uid(uid).gid(gid);
        }
        match cmd.spawn() {
            Ok(mut child) => {
                let pid = child.id() as i32;
                // The Child is dropped without wait(): the reaper collects every exit.
                for stream in [
                    child.stdout.take().map(OwnedFd::from),
                    child.stderr.take().map(OwnedFd::from),
                ]
                .into_iter()
                .flatten()
                {
                    capture(name.to_string(), stream, self.events.clone());
                }
                svc.state = State::Running { pid };
                svc.started = Some(Instant::now());
                self.pids.insert(pid, name.to_string());
                tracing::info!("{name}: running (pid {pid})");
                if svc.spec.kind == Kind::Longrun {
                    self.wake_dependents(name);
                }
            }
            Err(e) => {
                tracing::error!("{name}: cannot start {:?}: {e}", spec.command[0]);
                self.after_exit(name, false, format!("cannot start: {e}"));
            }
        }
    }

    fn wake_dependents(&mut self, name: &str) {
        let next: Vec<String> = self
            .dependents
            .get(name)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        self.start_eligible(next);
    }

    /// Collects every exited child; services learn their fate, orphans are
    /// just reaped.
    pub fn reap(&mut self) {
        loop {
            let (pid, success, how) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    (pid, code == 0, format!("exited with status {code}"))
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, false, format!("killed by {sig}")),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            if let Some(name) = self.pids.remove(&pid.as_raw()) {
                self.on_exit(&name, success, how);
            } else {
                tracing::debug!("reaped orphan {pid} ({how})");
            }
        }
    }

    fn on_exit(&mut self, name: &str, success: bool, how: String) {
        let Some(svc) = self.services.get_mut(name) else {
            return;
        };
        if self.shutting_down || matches!(svc.state, State::Stopping { .. }) {
            tracing::info!("{name}: stopped ({how})");
            svc.state = State::Stopped;
            return;
        }
        if svc.spec.kind == Kind::Oneshot && success {
            tracing::info!("{name}: done");
            svc.state = State::Done;
            self.wake_dependents(name);
            return;
        }
        tracing::warn!("{name}: {how}");
        self.after_exit(name, success, how);
    }

    /// Restart with back-off, or give up, per the service's policy.
    fn after_exit(&mut self, name: &str, success: bool, how: String) {
        let Some(svc) = self.services.get_mut(name) else {
            return;
        };
        let restart = match svc.spec.policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Never => false,
        };
        if !restart {
            svc.state = if success {
                State::Stopped
            } else {
                State::Failed(how)
            };
            return;
        }
        if svc
            .started
            .is_some_and(|t| t.elapsed() >= svc.spec.restart.reset_after)
        {
            svc.restarts = 0;
        }
        let delay = svc.spec.restart.delay(svc.restarts);
        svc.restarts = svc.restarts.saturating_add(1);
        svc.state = State::Backoff;
        tracing::info!(
            "{name}: restart {} in {} ms",
            svc.restarts,
            delay.as_millis()
        );
        let tx = self.events.clone();
        let service = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Event::Restart { service });
        });
    }

    pub fn handle(&mut self, event: Event) {
        match event {
            Event::Log { service, line } => {
                if let Some(svc) = self.services.get_mut(&service) {
                    if svc.spec.console {
                        println!("[{service}] {line}");
                    }
                    svc.log.push(line);
                }
            }
            Event::Restart { service } => {
                if !self.shutting_down
                    && self
                        .services
                        .get(&service)
                        .is_some_and(|s| s.state == State::Backoff)
                {
                    self.spawn(&service);
                }
            }
            Event::StopTimeout { service, pid } => {
                if self
                    .services
                    .get(&service)
                    .is_some_and(|s| s.state == State::Stopping { pid })
                {
                    tracing::warn!("{service}: did not stop in time, killing it");
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }

    /// True once every service marked `ready` is up; with none marked, once
    /// every service that can start has.
    pub fn is_ready(&self) -> bool {
        let marked: Vec<&String> = self
            .services
            .iter()
            .filter(|(_, s)| s.spec.ready)
            .map(|(n, _)| n)
            .collect();
        if marked.is_empty() {
            self.services.iter().all(|(n, s)| {
                matches!(s.state, State::Refused(_) | State::Failed(_)) || self.is_up(n)
            })
        } else {
            marked.iter().all(|n| self.is_up(n))
        }
    }

    /// Begins the ordered stop: nothing new starts, and a service gets its
    /// stop signal once every service depending on it has stopped.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        for svc in self.services.values_mut() {
            if matches!(svc.state, State::Waiting | State::Backoff) {
                svc.state = State::Stopped;
            }
        }
        self.stop_unblocked();
    }

    /// Sends stop signals to every running service none of whose dependents
    /// is still alive. Call after each reap while shutting down.
    pub fn stop_unblocked(&mut self) {
        let ready: Vec<(String, i32)> = self
            .services
            .iter()
            .filter_map(|(name, s)| match s.state {
                State::Running { pid } => Some((name, pid)),
                _ => None,
            })
            .filter(|(name, _)| {
                self.dependents
                    .get(*name)
                    .into_iter()
                    .flatten()
                    .all(|d| !self.services.get(d).is_some_and(|s| s.state.is_alive()))
            })
            .map(|(n, pid)| (n.clone(), pid))
            .collect();
        for (name, pid) in ready {
            let Some(svc) = self.services.get_mut(&name) else {
                continue;
            };
            tracing::info!("{name}: stopping ({})", svc.spec.stop_signal);
            let _ = killpg(Pid::from_raw(pid), svc.spec.stop_signal);
            svc.state = State::Stopping { pid };
            let (tx, timeout) = (self.events.clone(), svc.spec.stop_timeout);
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                let _ = tx.send(Event::StopTimeout { service: name, pid });
            });
        }
    }

    /// True once no service process is left.
    pub fn all_stopped(&self) -> bool {
        !self.services.values().any(|s| s.state.is_alive())
    }
}

/// Reads one output stream of a service line by line into events.
fn capture(service: String, fd: OwnedFd, events: UnboundedSender<Event>) {
    let pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(p) => p,
        Err(e) => return tracing::warn!("{service}: cannot capture output: {e}"),
    };
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    if events
                        .send(Event::Log {
                            service: service.clone(),
                            line,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
}
