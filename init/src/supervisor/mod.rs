//! The service supervisor: starts services in dependency order (in
//! parallel where the graph allows), captures their output, reaps every
//! child (orphans too), restarts with back-off, checks health, and stops
//! services in reverse order.
//!
//! One task drives it on a current-thread runtime (see `run`): no thread
//! per service, no locks. Everything that happens later (a timer, a health
//! result, output) comes back as an [`Event`] or a log [`logs::Batch`] on a
//! channel; exits come from [`Supervisor::reap`] after SIGCHLD. When a
//! service comes up only its own dependents are looked at again.

pub mod backoff;
pub mod command;
pub mod graph;
pub mod health;
pub mod logs;
pub mod process;
pub mod service;
pub mod shutdown;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::mpsc;

use self::backoff::Streak;
use self::command::Waiter;
use self::health::{Change, Checks, Probe};
use self::logs::{Batch, Follower, Ring};
use self::process::Exit;
use self::service::{Kind, RestartPolicy, Service};

/// Log batches waiting for the supervisor before capture tasks block.
const LOG_QUEUE: usize = 256;
/// How long a process may take to vanish after SIGKILL before it is
/// written off (it can only be stuck in the kernel).
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Where a service is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waiting for its dependencies.
    Waiting,
    /// A longrun whose health check has not passed yet.
    Starting {
        pid: i32,
    },
    /// A longrun that is up, or a oneshot still at work.
    Running {
        pid: i32,
    },
    /// A oneshot that exited 0.
    Done,
    /// Waiting out the back-off before a restart.
    Backoff,
    Stopping {
        pid: i32,
        then: AfterStop,
    },
    /// Ended and not to be restarted (exit 0 under on-failure/never, a stop).
    Stopped,
    /// Ended and not restarted; the reason says how.
    Failed(String),
    /// Never started: a bad dependency.
    Refused(String),
}

/// What happens once a stopping service has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStop {
    /// Stays stopped (a stop command, shutdown).
    Stay,
    /// Starts again at once (a restart command).
    Restart,
    /// Its restart policy decides, as for a failure (it was unhealthy).
    Policy,
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Starting { .. } => "starting",
            State::Running { .. } => "running",
            State::Done => "done",
            State::Backoff => "backoff",
            State::Stopping { .. } => "stopping",
            State::Stopped => "stopped",
            State::Failed(_) => "failed",
            State::Refused(_) => "refused",
        }
    }

    pub fn pid(&self) -> Option<i32> {
        match *self {
            State::Starting { pid } | State::Running { pid } | State::Stopping { pid, .. } => {
                Some(pid)
            }
            _ => None,
        }
    }

    /// A process of the service exists.
    fn is_alive(&self) -> bool {
        self.pid().is_some()
    }
}

/// Timers and health results. `run` is the service's start count when the
/// event was scheduled: an event from an earlier run is ignored.
#[derive(Debug)]
pub enum Event {
    Restart {
        service: usize,
        run: u64,
    },
    StopTimeout {
        service: usize,
        run: u64,
    },
    /// SIGKILL was sent KILL_GRACE ago and the process is still there.
    KillTimeout {
        service: usize,
        run: u64,
    },
    HealthTick {
        service: usize,
        run: u64,
    },
    HealthResult {
        service: usize,
        run: u64,
        passed: bool,
        detail: String,
    },
    ProbeTimeout {
        service: usize,
        run: u64,
        pid: i32,
    },
}

/// The receiving ends that `run` selects on.
pub struct Channels {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub logs: mpsc::Receiver<Batch>,
}

/// Whose child a pid is.
#[derive(Debug, Clone, Copy)]
enum Owner {
    Service(usize),
    Probe { service: usize, run: u64 },
}

struct Svc {
    spec: Service,
    state: State,
    /// When `state` was entered.
    since: Instant,
    log: Ring,
    followers: Vec<Follower>,
    streak: Streak,
    /// Start of the current or last run.
    started: Option<Instant>,
    run: u64,
    checks: Checks,
    probe: Option<i32>,
    /// Commands answered once the process has exited.
    waiters: Vec<Waiter>,
    /// Has left `Waiting` once (or was refused): counts for the ready line.
    settled: bool,
}

pub struct Supervisor {
    svcs: Vec<Svc>,
    ids: HashMap<String, usize>,
    /// For each service, the services it lists in `after` (known ones).
    deps: Vec<Vec<usize>>,
    /// For each service, the services that list it in `after`.
    dependents: Vec<Vec<usize>>,
    /// For each service, how many wait for it, directly or through others:
    /// of the services that may start at once, those go first.
    waited_on: Vec<usize>,
    pids: HashMap<i32, Owner>,
    events: mpsc::UnboundedSender<Event>,
    /// None once shutdown has finished, so the log channel can close.
    logs: Option<mpsc::Sender<Batch>>,
    /// Services that may have become startable.
    wake: Vec<usize>,
    shutting_down: bool,
    /// Services marked `ready`, and how many of them are up now.
    marked: usize,
    marked_up: usize,
    /// Services never started, refused or failed yet (but those that
    /// wait for the ready line).
    unsettled: usize,
    /// The ready line is out: `after_ready` services may start.
    released: bool,
}

impl Supervisor {
    /// The services of every `*.toml` in `dir`, in name order. A file that
    /// does not parse is logged as an error and left out; the rest still runs.
    pub fn read_services(dir: &Path) -> Vec<Service> {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
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
        let mut specs = Vec::new();
        for path in files {
            match Service::load(&path, &passwd) {
                Ok(s) => specs.push(s),
                Err(e) => tracing::error!("service file skipped: {e}"),
            }
        }
        specs
    }

    /// A supervisor for these services, none started yet. A service with a
    /// bad dependency (unknown, or in a cycle) is logged and left out.
    pub fn new(mut specs: Vec<Service>) -> (Supervisor, Channels) {
        let after: BTreeMap<String, Vec<String>> = specs
            .iter()
            .map(|s| (s.name.clone(), s.after.clone()))
            .collect();
        let refused = graph::refusals(&after);
        let ids: HashMap<String, usize> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let deps: Vec<Vec<usize>> = specs
            .iter()
            .map(|s| s.after.iter().filter_map(|d| ids.get(d).copied()).collect())
            .collect();
        // A service the ready line needs, even through others, cannot
        // wait for the ready line: it starts at boot, and says so.
        let mut needed: Vec<usize> = (0..specs.len()).filter(|&i| specs[i].ready).collect();
        let mut seen = vec![false; specs.len()];
        while let Some(i) = needed.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            if specs[i].after_ready {
                tracing::error!(
                    "service {}: after_ready ignored: the ready line needs it",
                    specs[i].name
                );
                specs[i].after_ready = false;
            }
            needed.extend_from_slice(&deps[i]);
        }
        let mut dependents = vec![Vec::new(); specs.len()];
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                dependents[d].push(i);
            }
        }
        let waited_on = graph::waited_on(&dependents);
        let now = Instant::now();
        let svcs: Vec<Svc> = specs
            .into_iter()
            .map(|spec| {
                let state = match refused.get(&spec.name) {
                    Some(r) => {
                        tracing::error!("service {} refused: {r}", spec.name);
                        State::Refused(r.to_string())
                    }
                    None => State::Waiting,
                };
                Svc {
                    settled: state != State::Waiting,
                    log: Ring::new(spec.ring_bytes),
                    spec,
                    state,
                    since: now,
                    followers: Vec::new(),
                    streak: Streak::default(),
                    started: None,
                    run: 0,
                    checks: Checks::default(),
                    probe: None,
                    waiters: Vec::new(),
                }
            })
            .collect();
        let (events, events_rx) = mpsc::unbounded_channel();
        let (logs, logs_rx) = mpsc::channel(LOG_QUEUE);
        let sup = Supervisor {
            marked: svcs.iter().filter(|s| s.spec.ready).count(),
            marked_up: 0,
            unsettled: svcs
                .iter()
                .filter(|s| s.state == State::Waiting && !s.spec.after_ready)
                .count(),
            svcs,
            ids,
            deps,
            dependents,
            waited_on,
            pids: HashMap::new(),
            events,
            logs: Some(logs),
            wake: Vec::new(),
            shutting_down: false,
            released: false,
        };
        let channels = Channels {
            events: events_rx,
            logs: logs_rx,
        };
        (sup, channels)
    }

    /// Starts every service whose dependencies are met (at first: those
    /// with none); the others follow as their dependencies come up.
    pub fn start_all(&mut self) {
        self.wake.extend(0..self.svcs.len());
        self.settle();
    }

    /// The ready line is out: starts the `after_ready` services (as their
    /// `after` lists allow).
    pub fn release_after_ready(&mut self) {
        if !self.released {
            self.released = true;
            for s in self
                .svcs
                .iter()
                .filter(|s| s.spec.nice_until_ready.is_some())
            {
                if let Some(pid) = s.state.pid() {
                    if let Err(e) = process::set_group_nice(pid, 0) {
                        tracing::warn!("{}: back to nice 0: {e}", s.spec.name);
                    }
                }
            }
            let deferred = (0..self.svcs.len()).filter(|&i| self.svcs[i].spec.after_ready);
            self.wake.extend(deferred.collect::<Vec<_>>());
            self.settle();
        }
    }

    /// Each service that has a process now, by name, with its pid.
    pub fn processes(&self) -> impl Iterator<Item = (&str, i32)> + '_ {
        self.svcs
            .iter()
            .filter_map(|s| Some((s.spec.name.as_str(), s.state.pid()?)))
    }

    /// True once every service marked `ready` is up; with none marked, once
    /// every service but the `after_ready` ones has been started, refused
    /// or has failed.
    pub fn is_ready(&self) -> bool {
        if self.marked > 0 {
            self.marked_up == self.marked
        } else {
            self.unsettled == 0
        }
    }

    /// A dependency counts as up once a longrun runs (healthy, if it has a
    /// check) or a oneshot exited 0.
    fn is_up(&self, id: usize) -> bool {
        let s = &self.svcs[id];
        match s.spec.kind {
            Kind::Longrun => matches!(s.state, State::Running { .. }),
            Kind::Oneshot => s.state == State::Done,
        }
    }

    /// The one place a state changes, so the ready counters and the wake
    /// list stay true.
    fn set_state(&mut self, id: usize, state: State) {
        let was_up = self.is_up(id);
        let svc = &mut self.svcs[id];
        if !svc.settled && state != State::Waiting {
            svc.settled = true;
            if !svc.spec.after_ready {
                self.unsettled = self.unsettled.saturating_sub(1);
            }
        }
        svc.state = state;
        svc.since = Instant::now();
        let up = self.is_up(id);
        if self.svcs[id].spec.ready && was_up != up {
            if up {
                self.marked_up += 1;
            } else {
                self.marked_up = self.marked_up.saturating_sub(1);
            }
        }
        if up && !was_up {
            self.wake.extend_from_slice(&self.dependents[id]);
            self.nice_until_ready(id);
        }
    }

    /// A service with `nice_until_ready` that is up before the ready line:
    /// what it does from now on (a DHCP lease, say) waits behind the
    /// services the ready line still waits for. Its health check passed at
    /// nice 0, so its dependents found it as quickly as any other.
    fn nice_until_ready(&self, id: usize) {
        let s = &self.svcs[id];
        let (Some(nice), Some(pid)) = (s.spec.nice_until_ready, s.state.pid()) else {
            return;
        };
        if self.released {
            return;
        }
        if let Err(e) = process::set_group_nice(pid, nice) {
            tracing::warn!("{}: nice {nice} until ready: {e}", s.spec.name);
        }
    }

    /// Starts whatever the last changes made startable.
    fn settle(&mut self) {
        while !self.wake.is_empty() {
            let mut batch = std::mem::take(&mut self.wake);
            // Each spawn takes a while: what others wait for goes first
            // (storage before network before control-port; then identity,
            // which the ledger and provision ask for, by name).
            batch.sort_by_key(|&id| (std::cmp::Reverse(self.waited_on[id]), id));
            batch.dedup();
            for id in batch {
                if !self.shutting_down
                    && self.svcs[id].state == State::Waiting
                    && (self.released || !self.svcs[id].spec.after_ready)
                    && self.deps[id].iter().all(|&d| self.is_up(d))
                {
                    self.spawn(id);
                }
            }
        }
    }

    fn spawn(&mut self, id: usize) {
        let svc = &mut self.svcs[id];
        svc.run += 1;
        svc.started = Some(Instant::now());
        svc.checks = Checks::default();
        let name = svc.spec.name.clone();
        match process::spawn(&svc.spec.command, &svc.spec, true) {
            Ok(spawned) => {
                let pid = spawned.pid;
                self.pids.insert(pid, Owner::Service(id));
                if let (Some(fd), Some(tx)) = (spawned.output, &self.logs) {
                    if let Err(e) = logs::capture(id, fd, tx.clone()) {
                        tracing::warn!("{name}: cannot capture output: {e}");
                    }
                }
                let starting =
                    self.svcs[id].spec.kind == Kind::Longrun && self.svcs[id].spec.health.is_some();
                if starting {
                    tracing::info!("{name}: started (pid {pid}), waiting for its health check");
                    self.set_state(id, State::Starting { pid });
                    let delay = self.svcs[id]
                        .spec
                        .health
                        .as_ref()
                        .map_or(Duration::ZERO, |h| h.start_interval);
                    let run = self.svcs[id].run;
                    self.after(delay, Event::HealthTick { service: id, run });
                } else {
                    tracing::info!("{name}: running (pid {pid})");
                    self.set_state(id, State::Running { pid });
                }
            }
            Err(e) => {
                let how = format!("cannot start {:?}: {e}", self.svcs[id].spec.command[0]);
                tracing::error!("{name}: {how}");
                self.after_exit(id, false, how);
            }
        }
    }

    /// Sends `event` back to the loop after `delay`.
    fn after(&self, delay: Duration, event: Event) {
        let tx = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(event);
        });
    }

    /// Collects every exited child: services learn their fate, probes give
    /// their verdict, orphans are just reaped.
    pub fn reap(&mut self) {
        for (pid, exit) in process::reap() {
            match self.pids.remove(&pid) {
                Some(Owner::Service(id)) => self.on_exit(id, exit),
                Some(Owner::Probe { service, run }) => {
                    if self.svcs[service].probe == Some(pid) {
                        self.svcs[service].probe = None;
                    }
                    let detail = format!("check {exit}");
                    self.on_health(service, run, exit.success(), detail);
                }
                None => tracing::debug!("reaped orphan {pid} ({exit})"),
            }
        }
        self.settle();
    }

    fn on_exit(&mut self, id: usize, exit: Exit) {
        let name = self.svcs[id].spec.name.clone();
        match self.svcs[id].state.clone() {
            State::Stopping { then, .. } => {
                tracing::info!("{name}: stopped ({exit})");
                match then {
                    AfterStop::Stay => self.set_state(id, State::Stopped),
                    AfterStop::Restart if !self.shutting_down => {
                        self.svcs[id].streak = Streak::default();
                        self.spawn(id);
                    }
                    AfterStop::Restart => self.set_state(id, State::Stopped),
                    AfterStop::Policy => self.after_exit(id, false, "unhealthy".into()),
                }
            }
            _ if self.shutting_down => {
                tracing::info!("{name}: {exit} during shutdown");
                self.set_state(id, State::Stopped);
            }
            _ if self.svcs[id].spec.kind == Kind::Oneshot && exit.success() => {
                tracing::info!("{name}: done");
                self.svcs[id].streak = Streak::default();
                self.set_state(id, State::Done);
            }
            _ => {
                if exit.success() {
                    tracing::info!("{name}: {exit}");
                } else {
                    tracing::warn!("{name}: {exit}");
                }
                self.after_exit(id, exit.success(), exit.to_string());
            }
        }
        if self.shutting_down {
            self.stop_unblocked_dependencies(id);
        }
        self.answer_waiters(id);
    }

    /// Restart with back-off, or give up, per the service's policy. For a
    /// oneshot, exit 0 is done and never gets here.
    fn after_exit(&mut self, id: usize, success: bool, how: String) {
        let svc = &mut self.svcs[id];
        let restart = match svc.spec.policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Never => false,
        };
        if self.shutting_down || !restart {
            let state = if success {
                State::Stopped
            } else {
                State::Failed(how)
            };
            self.set_state(id, state);
            if !success {
                self.fail_waiting_dependents(id);
            }
            return;
        }
        let ran_for = svc.started.map_or(Duration::ZERO, |t| t.elapsed());
        let delay = svc.streak.next_delay(&svc.spec.restart, ran_for);
        tracing::info!(
            "{}: restart {} in {} ms",
            svc.spec.name,
            svc.streak.restarts,
            delay.as_millis()
        );
        let run = svc.run;
        self.set_state(id, State::Backoff);
        self.after(delay, Event::Restart { service: id, run });
    }

    /// Services waiting (directly or not) on a service that failed for good
    /// will not start either: say so instead of leaving them waiting.
    fn fail_waiting_dependents(&mut self, id: usize) {
        let mut todo: Vec<(usize, usize)> = self.dependents[id].iter().map(|&d| (d, id)).collect();
        while let Some((d, cause)) = todo.pop() {
            if self.svcs[d].state == State::Waiting {
                let reason = format!("dependency {} failed", self.svcs[cause].spec.name);
                tracing::error!("{}: not started: {reason}", self.svcs[d].spec.name);
                self.set_state(d, State::Failed(reason));
                todo.extend(self.dependents[d].iter().map(|&dd| (dd, d)));
            }
        }
    }

    pub fn handle(&mut self, event: Event) {
        match event {
            Event::Restart { service, run } => {
                let s = &self.svcs[service];
                if !self.shutting_down && s.run == run && s.state == State::Backoff {
                    self.spawn(service);
                }
            }
            Event::StopTimeout { service, run } => {
                let s = &self.svcs[service];
                if let (true, State::Stopping { pid, .. }) = (s.run == run, &s.state) {
                    tracing::warn!(
                        "{}: still running {} ms after {}, killing it",
                        s.spec.name,
                        s.spec.stop_timeout.as_millis(),
                        s.spec.stop_signal
                    );
                    process::signal_group(*pid, Signal::SIGKILL);
                    self.after(KILL_GRACE, Event::KillTimeout { service, run });
                }
            }
            Event::KillTimeout { service, run } => {
                let s = &self.svcs[service];
                if let (true, State::Stopping { pid, .. }) = (s.run == run, &s.state) {
                    // Stuck in the kernel (uninterruptible sleep): give up on
                    // it so the rest of a shutdown goes on; its exit, if it
                    // ever comes, is reaped as an orphan's.
                    tracing::error!(
                        "{}: pid {pid} survived SIGKILL for {} s, leaving it",
                        s.spec.name,
                        KILL_GRACE.as_secs()
                    );
                    let pid = *pid;
                    self.pids.remove(&pid);
                    self.set_state(service, State::Failed("did not exit after SIGKILL".into()));
                    if self.shutting_down {
                        self.stop_unblocked_dependencies(service);
                    }
                    self.answer_waiters(service);
                }
            }
            Event::HealthTick { service, run } => self.probe(service, run),
            Event::HealthResult {
                service,
                run,
                passed,
                detail,
            } => self.on_health(service, run, passed, detail),
            Event::ProbeTimeout { service, run, pid } => {
                if self.svcs[service].run == run && self.svcs[service].probe == Some(pid) {
                    tracing::debug!("{}: health check timed out", self.svcs[service].spec.name);
                    process::signal_group(pid, Signal::SIGKILL);
                }
            }
        }
        self.settle();
    }

    /// Runs one health check of the current run.
    fn probe(&mut self, id: usize, run: u64) {
        let s = &self.svcs[id];
        let current = matches!(s.state, State::Starting { .. } | State::Running { .. });
        let Some(h) = s.spec.health.clone() else {
            return;
        };
        if self.shutting_down || s.run != run || !current || s.probe.is_some() {
            return;
        }
        match &h.probe {
            Probe::Command(argv) => match process::spawn(argv, &s.spec, false) {
                Ok(p) => {
                    self.pids.insert(p.pid, Owner::Probe { service: id, run });
                    self.svcs[id].probe = Some(p.pid);
                    self.after(
                        h.timeout,
                        Event::ProbeTimeout {
                            service: id,
                            run,
                            pid: p.pid,
                        },
                    );
                }
                Err(e) => {
                    let detail = format!("cannot run check {:?}: {e}", argv[0]);
                    self.on_health(id, run, false, detail);
                }
            },
            socket => {
                let (tx, probe) = (self.events.clone(), socket.clone());
                tokio::spawn(async move {
                    let result = health::connect(&probe, h.timeout).await;
                    let _ = tx.send(Event::HealthResult {
                        service: id,
                        run,
                        passed: result.is_ok(),
                        detail: result.err().unwrap_or_default(),
                    });
                });
            }
        }
    }

    fn on_health(&mut self, id: usize, run: u64, passed: bool, detail: String) {
        let s = &mut self.svcs[id];
        let pid = match s.state {
            State::Starting { pid } | State::Running { pid } if s.run == run => pid,
            _ => return,
        };
        let Some(h) = s.spec.health.clone() else {
            return;
        };
        let name = s.spec.name.clone();
        match s.checks.record(passed, h.retries) {
            Change::BecameHealthy => {
                tracing::info!("{name}: healthy, running (pid {pid})");
                self.set_state(id, State::Running { pid });
            }
            Change::BecameUnhealthy => {
                tracing::error!(
                    "{name}: unhealthy after {} failed checks ({detail}), stopping it",
                    h.retries
                );
                self.stop(id, AfterStop::Policy);
                return;
            }
            Change::None if !passed => {
                tracing::debug!("{name}: health check failed: {detail}");
            }
            Change::None => {}
        }
        let next = self.svcs[id].checks.next_in(&h);
        self.after(next, Event::HealthTick { service: id, run });
    }

    /// Sends the stop signal to a running service; SIGKILL follows after
    /// its stop timeout.
    fn stop(&mut self, id: usize, then: AfterStop) {
        let Some(pid) = self.svcs[id].state.pid() else {
            return;
        };
        let s = &self.svcs[id];
        tracing::info!("{}: stopping ({})", s.spec.name, s.spec.stop_signal);
        process::signal_group(pid, s.spec.stop_signal);
        let (timeout, run) = (s.spec.stop_timeout, s.run);
        self.set_state(id, State::Stopping { pid, then });
        self.after(timeout, Event::StopTimeout { service: id, run });
    }

    /// Takes a batch of output: into the ring, to the console, to followers.
    pub fn log(&mut self, batch: Batch) {
        let Some(s) = self.svcs.get_mut(batch.service) else {
            return;
        };
        if s.spec.console {
            logs::to_console(&s.spec.name, &batch.lines);
        }
        for line in &batch.lines {
            s.followers.retain(|f| f.send(line));
        }
        for line in batch.lines {
            s.log.push(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(defs: &[(&str, &str)]) -> Vec<Service> {
        defs.iter()
            .map(|(name, text)| {
                Service::parse(name, text, Path::new(&format!("{name}.toml")), "").unwrap()
            })
            .collect()
    }

    #[test]
    fn refused_services_are_settled_and_the_rest_wait() {
        let (sup, _ch) = Supervisor::new(specs(&[
            ("a", "command = [\"/bin/true\"]\nafter = [\"ghost\"]"),
            ("b", "command = [\"/bin/true\"]\nafter = [\"a\"]"),
            ("c", "command = [\"/bin/true\"]\nready = true"),
        ]));
        assert_eq!(sup.svcs[0].state.name(), "refused");
        assert_eq!(sup.svcs[1].state.name(), "refused");
        assert_eq!(sup.svcs[2].state, State::Waiting);
        assert_eq!((sup.unsettled, sup.marked, sup.marked_up), (1, 1, 0));
        assert!(!sup.is_ready());
        assert_eq!(sup.dependents[0], [1]);
    }

    #[test]
    fn ready_counters_follow_state_changes() {
        let (mut sup, _ch) = Supervisor::new(specs(&[
            ("db", "command = [\"/bin/true\"]\nready = true"),
            ("web", "command = [\"/bin/true\"]\nafter = [\"db\"]"),
            ("init", "command = [\"/bin/true\"]\nkind = \"oneshot\""),
        ]));
        sup.set_state(0, State::Running { pid: 1 });
        assert!(sup.is_ready());
        assert_eq!(sup.wake, [1], "only the dependents of db are woken");
        sup.set_state(0, State::Backoff);
        assert!(!sup.is_ready());
        sup.set_state(2, State::Running { pid: 2 });
        assert!(!sup.is_up(2), "a running oneshot is not up");
        sup.set_state(2, State::Done);
        assert!(sup.is_up(2));
    }

    /// Spawning a service captures its output through a runtime's reactor.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn after_ready_services_wait_for_the_ready_line_and_do_not_hold_it() {
        let rt = runtime();
        let _enter = rt.enter();
        let (mut sup, _ch) = Supervisor::new(specs(&[
            ("api", "command = [\"/bin/true\"]\nready = true"),
            ("late", "command = [\"/bin/true\"]\nafter_ready = true"),
            ("later", "command = [\"/bin/true\"]\nafter = [\"late\"]"),
            ("base", "command = [\"/bin/true\"]\nafter_ready = true"),
            (
                "db",
                "command = [\"/bin/true\"]\nafter = [\"base\"]\nready = true",
            ),
        ]));
        // db is on the way to ready, so base cannot wait for it.
        assert!(!sup.svcs[3].spec.after_ready);
        assert!(sup.svcs[1].spec.after_ready);
        sup.wake.push(1);
        sup.settle();
        assert_eq!(
            sup.svcs[1].state,
            State::Waiting,
            "late started before ready"
        );
        for id in [0, 2, 3, 4] {
            sup.set_state(
                id,
                State::Running {
                    pid: 10 + id as i32,
                },
            );
        }
        assert!(sup.is_ready(), "ready waited for an after_ready service");
        // Once released, late starts (here: /bin/true is spawned for real).
        sup.release_after_ready();
        assert_ne!(sup.svcs[1].state, State::Waiting);
        assert!(sup.released);
    }

    #[test]
    fn what_others_wait_for_starts_first() {
        let rt = runtime();
        let _enter = rt.enter();
        let sleeper = "command = [\"/bin/sleep\", \"5\"]";
        let (mut sup, _ch) = Supervisor::new(specs(&[
            ("a", sleeper),
            ("b", sleeper),
            ("c", sleeper),
            ("d", &format!("{sleeper}\nafter = [\"c\"]")),
            ("e", &format!("{sleeper}\nafter = [\"d\"]")),
        ]));
        assert_eq!(sup.waited_on, [0, 0, 2, 1, 0]);
        sup.start_all();
        // Spawned in this order, so with rising pids: c (two wait for it),
        // then a and b by name (d and e follow c, which has no check).
        let pid = |i: usize| sup.svcs[i].state.pid().unwrap_or(i32::MAX);
        let pids: Vec<i32> = (0..5).map(pid).collect();
        assert!(pids[2] < pids[0] && pids[0] < pids[1], "{pids:?}");
        for p in pids.into_iter().filter(|&p| p != i32::MAX) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// The nice value of `pid`'s main thread (field 19 of /proc/PID/stat).
    fn nice_of(pid: i32) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        fields[16].parse().unwrap()
    }

    #[test]
    fn nice_until_ready_holds_until_the_ready_line() {
        let rt = runtime();
        let _enter = rt.enter();
        let (mut sup, _ch) = Supervisor::new(specs(&[
            (
                "dhcp",
                "command = [\"/bin/sleep\", \"30\"]\nnice_until_ready = 10",
            ),
            ("api", "command = [\"/bin/sleep\", \"30\"]\nready = true"),
        ]));
        sup.start_all();
        let pid = |sup: &Supervisor, id: usize| sup.svcs[id].state.pid().unwrap();
        let (dhcp, api) = (pid(&sup, 0), pid(&sup, 1));
        assert_eq!(nice_of(dhcp), 10);
        assert_eq!(nice_of(api), 0);
        sup.release_after_ready();
        // Raising a priority again takes CAP_SYS_NICE, which PID 1 has.
        if nix::unistd::geteuid().is_root() {
            assert_eq!(nice_of(dhcp), 0);
        }
        for p in [dhcp, api] {
            process::signal_group(p, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(p), None);
        }
    }

    #[test]
    fn nice_until_ready_is_checked() {
        for (text, what) in [
            ("nice_until_ready = 0", "between 1 and 19"),
            ("nice_until_ready = 20", "between 1 and 19"),
            ("nice_until_ready = 5\nafter_ready = true", "after_ready"),
        ] {
            let err = Service::parse(
                "x",
                &format!("command = [\"/bin/true\"]\n{text}"),
                Path::new("x.toml"),
                "",
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("nice_until_ready") && err.contains(what),
                "{err}"
            );
        }
    }

    #[test]
    fn ready_and_after_ready_together_are_refused() {
        let err = Service::parse(
            "x",
            "command = [\"/bin/true\"]\nready = true\nafter_ready = true",
            Path::new("x.toml"),
            "",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("after_ready") && err.contains("x.toml"),
            "{err}"
        );
    }

    #[test]
    fn a_failed_dependency_fails_waiting_dependents() {
        let (mut sup, _ch) = Supervisor::new(specs(&[
            ("a", "command = [\"/bin/true\"]\nkind = \"oneshot\""),
            ("b", "command = [\"/bin/true\"]\nafter = [\"a\"]"),
            ("c", "command = [\"/bin/true\"]\nafter = [\"b\"]"),
        ]));
        sup.set_state(0, State::Running { pid: 1 });
        sup.after_exit(0, false, "exited with status 1".into());
        assert_eq!(
            sup.svcs[0].state,
            State::Failed("exited with status 1".into())
        );
        assert_eq!(
            sup.svcs[2].state,
            State::Failed("dependency b failed".into())
        );
        assert_eq!(sup.unsettled, 0);
        assert!(sup.is_ready());
    }
}
