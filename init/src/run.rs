//! The life of the supervisor between boot and shutdown, shared by PID 1 and
//! process mode: start the services, print the ready line, and on a signal
//! stop every service in reverse dependency order and say which power
//! action was asked for.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::control::{self, Request};
use crate::supervisor::service::Service;
use crate::supervisor::{process, Channels, Supervisor};

/// Where the `zeronode: ready in N ms` figure counts from.
#[derive(Debug, Clone, Copy)]
pub enum ReadyClock {
    /// PID 1: ms since the kernel started (CLOCK_BOOTTIME). The kernel's
    /// own start ran in this very process before /init: the CPU time it
    /// had used then, in ms, is not init's; `all_cpus_at_init` is what all
    /// CPUs had done by then (None if /proc/stat could not be read).
    KernelBoot {
        cpu_at_init_ms: u64,
        all_cpus_at_init: Option<CpuTime>,
    },
    /// Process mode: ms since this process started.
    ProcessStart(Instant),
}

impl ReadyClock {
    pub fn elapsed_ms(&self) -> u128 {
        match self {
            ReadyClock::KernelBoot { .. } => {
                nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
                    .map(|t| t.tv_sec() as u128 * 1000 + t.tv_nsec() as u128 / 1_000_000)
                    .unwrap_or(0)
            }
            ReadyClock::ProcessStart(t) => t.elapsed().as_millis(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub services: Services,
    /// The control socket; none means no control interface.
    pub control_socket: Option<PathBuf>,
    pub ready_clock: ReadyClock,
    /// Become a child subreaper so orphans of services are reaped here (process mode).
    pub subreaper: bool,
    /// Told once, when the ready line is out (PID 1 then gives back normal
    /// RCU grace periods and loads the kernel modules nothing on the way to
    /// ready needs).
    pub on_ready: Option<std::sync::mpsc::Sender<()>>,
}

/// Where the services come from.
#[derive(Debug, Clone)]
pub enum Services {
    /// Read from this directory as the run starts.
    Dir(PathBuf),
    /// Read already: PID 1 reads them while coldplug loads drivers.
    Read(Vec<Service>),
}

/// What ended the run: what the caller (PID 1) must do to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    PowerOff,
}

/// Runs the supervisor until a power action is asked for (SIGINT: reboot;
/// SIGTERM, SIGUSR2 or a control call: power off / reboot), then stops
/// every service in reverse dependency order and returns the action.
/// Errors only when it cannot start at all (subreaper, signal handlers).
pub async fn run(opts: RunOptions) -> anyhow::Result<PowerAction> {
    if opts.subreaper {
        nix::sys::prctl::set_child_subreaper(true).context("becoming a child subreaper")?;
    }
    // Handlers first: a child that exits before we listen must still be reaped.
    let mut sigchld = signal(SignalKind::child()).context("SIGCHLD handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigusr2 = signal(SignalKind::user_defined2()).context("SIGUSR2 handler")?;

    let (req_tx, mut requests) = mpsc::unbounded_channel();
    // Without its control socket the node still runs its services: an
    // error here is reported, not a reason to stop.
    let server = opts
        .control_socket
        .as_ref()
        .and_then(|path| match control::serve(path, req_tx) {
            Ok(server) => Some(server),
            Err(e) => {
                tracing::error!("no control interface: {}: {e}", path.display());
                None
            }
        });

    if let Err(e) = process::prefer_supervisor() {
        tracing::debug!("init keeps the services' priority: {e}");
    }
    let specs = match opts.services {
        Services::Dir(dir) => Supervisor::read_services(&dir),
        Services::Read(specs) => specs,
    };
    let (mut sup, channels) = Supervisor::new(specs);
    let Channels {
        mut events,
        mut logs,
    } = channels;
    // Children that ended before our handler existed (PID 1's boot) sent
    // their SIGCHLD to nobody.
    sup.reap();
    let t = std::time::Instant::now();
    sup.start_all();
    tracing::debug!("first services started in {} ms", t.elapsed().as_millis());
    let mut ready_said = false;
    let action = loop {
        if !ready_said && sup.is_ready() {
            say_ready(&opts.ready_clock, &sup);
            ready_said = true;
            sup.release_after_ready();
            if let Some(tx) = &opts.on_ready {
                let _ = tx.send(());
            }
        }
        tokio::select! {
            _ = sigchld.recv() => sup.reap(),
            Some(batch) = logs.recv() => sup.log(batch),
            Some(ev) = events.recv() => sup.handle(ev),
            Some(req) = requests.recv() => match req {
                Request::Command(op, reply) => sup.command(op, reply),
                Request::Power(action) => break action,
            },
            _ = sigint.recv() => break PowerAction::Reboot,
            _ = sigterm.recv() => break PowerAction::PowerOff,
            _ = sigusr2.recv() => break PowerAction::PowerOff,
        }
    };
    tracing::info!("{action:?} requested: stopping services");
    sup.begin_shutdown();
    while !sup.all_stopped() {
        tokio::select! {
            _ = sigchld.recv() => sup.reap(),
            Some(batch) = logs.recv() => sup.log(batch),
            Some(ev) = events.recv() => sup.handle(ev),
            Some(req) = requests.recv() => {
                // Status still answers; starts are refused while shutting down.
                if let Request::Command(op, reply) = req {
                    sup.command(op, reply);
                }
            }
        }
    }
    tracing::info!("all services stopped");
    // What the services wrote last, until every pipe is at EOF; a daemon
    // that left a child holding its pipe does not hold up the shutdown.
    sup.finish();
    let drain = async {
        while let Some(batch) = logs.recv().await {
            sup.log(batch);
        }
    };
    let _ = tokio::time::timeout(LOG_DRAIN, drain).await;
    if let Some(server) = server {
        server.abort();
    }
    if let Some(path) = &opts.control_socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(action)
}

/// How long output of stopped services may still arrive.
const LOG_DRAIN: Duration = Duration::from_millis(200);

/// The one line that says the node is up. A console that fails is not a
/// reason to stop.
fn say_ready(clock: &ReadyClock, sup: &Supervisor) {
    crate::boot::logging::say(&format!("zeronode: ready in {} ms", clock.elapsed_ms()));
    // What the supervisor costs the node, for operators and the boot benchmark.
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        tracing::info!(
            "resident memory {}, threads {}",
            field("VmRSS:"),
            field("Threads:")
        );
    }
    // Whether the way to ready was bound by the CPUs or by waiting: what to
    // look at first when tuning the boot.
    if let Some(cpu) = CpuTime::now() {
        // The kernel's own start is mostly one CPU's work: what came after
        // /init is the part init can change.
        let since_init = match clock {
            ReadyClock::KernelBoot {
                all_cpus_at_init: Some(at_init),
                ..
            } => format!(
                "; since /init {} ms busy, {} ms idle",
                cpu.busy_ms.saturating_sub(at_init.busy_ms),
                cpu.idle_ms.saturating_sub(at_init.idle_ms)
            ),
            _ => String::new(),
        };
        tracing::info!(
            "CPU time since boot: {} ms busy, {} ms idle{since_init}",
            cpu.busy_ms,
            cpu.idle_ms
        );
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        let before = match clock {
            ReadyClock::KernelBoot { cpu_at_init_ms, .. } => *cpu_at_init_ms,
            ReadyClock::ProcessStart(_) => 0,
        };
        let mut listed = vec![format!("init {} ms", own_cpu_ms().saturating_sub(before))];
        listed.extend(
            sup.processes()
                .filter_map(|(name, pid)| Some(format!("{name} {} ms", process_cpu_ms(pid)?))),
        );
        tracing::debug!("CPU time by process: {}", listed.join(", "));
    }
}

/// User and system CPU time of this process and its reaped children, in ms.
pub fn own_cpu_ms() -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    let ms = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1000 + t.tv_usec() as u64 / 1000;
    [UsageWho::RUSAGE_SELF, UsageWho::RUSAGE_CHILDREN]
        .into_iter()
        .filter_map(|who| getrusage(who).ok())
        .map(|u| ms(u.user_time()) + ms(u.system_time()))
        .sum()
}

/// User and system CPU time of /proc/PID, with its reaped children's: the
/// rest of "busy" is the kernel's own threads and interrupts.
fn process_cpu_ms(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_cpu_ms(&stat)
}

/// utime, stime, cutime and cstime (fields 14-17) of a /proc/PID/stat line,
/// counted after the command's closing parenthesis, which may hold spaces.
fn stat_cpu_ms(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(ticks_as_ms(rest, 11, 4)?.iter().sum())
}

/// `count` numbers of `text`'s whitespace-separated words after the first
/// `skip`, as ms: the kernel counts CPU time in USER_HZ ticks, which Linux
/// fixes at 100 a second for user space. None if fewer, or not numbers.
fn ticks_as_ms(text: &str, skip: usize, count: usize) -> Option<Vec<u64>> {
    let ms: Vec<u64> = text
        .split_whitespace()
        .skip(skip)
        .take(count)
        .map(|t| t.parse::<u64>().ok().map(|t| t * 10))
        .collect::<Option<_>>()?;
    (ms.len() == count).then_some(ms)
}

/// The summed CPU time of all CPUs since boot, from /proc/stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTime {
    busy_ms: u64,
    idle_ms: u64,
}

impl CpuTime {
    /// So far; None if /proc is not mounted or its format is unexpected.
    pub fn now() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// From the `cpu` line: user nice system idle iowait irq softirq steal.
    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let ms = ticks_as_ms(line, 1, 8)?;
        let idle_ms = ms[3] + ms[4];
        Some(CpuTime {
            busy_ms: ms.iter().sum::<u64>() - idle_ms,
            idle_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_adds_up_the_busy_fields_and_the_idle_ones() {
        let stat = "cpu  120 3 80 400 7 2 5 1 0 0\ncpu0 60 1 40 200 3 1 2 0 0 0\nintr 1 2\n";
        assert_eq!(
            CpuTime::parse(stat),
            Some(CpuTime {
                busy_ms: (120 + 3 + 80 + 2 + 5 + 1) * 10,
                idle_ms: (400 + 7) * 10,
            })
        );
        assert_eq!(CpuTime::parse("cpu0 1 2 3\n"), None);
        assert_eq!(CpuTime::parse("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[test]
    fn a_process_cpu_time_is_its_own_and_its_reaped_childrens() {
        let stat = "127 (zeronode (x) y) S 1 127 127 0 -1 4194560 900 5 2 0 31 12 4 3 20 0 1 0 481 20000000 700";
        assert_eq!(stat_cpu_ms(stat), Some((31 + 12 + 4 + 3) * 10));
        assert_eq!(stat_cpu_ms("127 (short) S 1 127"), None);
        assert_eq!(stat_cpu_ms("no parenthesis"), None);
    }
}
