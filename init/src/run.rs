//! The life of the supervisor between boot and shutdown, shared by PID 1 and
//! process mode: start the services, print the ready line, and on a signal
//! stop every service in reverse dependency order and say which power
//! action was asked for.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use crate::supervisor::Supervisor;

/// Where the `zeronode: ready in N ms` figure counts from.
#[derive(Debug, Clone, Copy)]
pub enum ReadyClock {
    /// PID 1: ms since the kernel started (CLOCK_BOOTTIME).
    KernelBoot,
    /// Process mode: ms since this process started.
    ProcessStart(Instant),
}

impl ReadyClock {
    pub fn elapsed_ms(&self) -> u128 {
        match self {
            ReadyClock::KernelBoot => nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
                .map(|t| t.tv_sec() as u128 * 1000 + t.tv_nsec() as u128 / 1_000_000)
                .unwrap_or(0),
            ReadyClock::ProcessStart(t) => t.elapsed().as_millis(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub services_dir: PathBuf,
    /// The control socket; none means no control interface.
    pub control_socket: Option<PathBuf>,
    pub ready_clock: ReadyClock,
    /// Become a child subreaper so orphans of services are reaped here (process mode).
    pub subreaper: bool,
}

/// What ended the run: what the caller (PID 1) must do to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    PowerOff,
}

pub async fn run(opts: RunOptions) -> anyhow::Result<PowerAction> {
    if opts.subreaper {
        nix::sys::prctl::set_child_subreaper(true).context("becoming a child subreaper")?;
    }
    // Handlers first: a child that exits before we listen must still be reaped.
    let mut sigchld = signal(SignalKind::child()).context("SIGCHLD handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigusr2 = signal(SignalKind::user_defined2()).context("SIGUSR2 handler")?;

    let (mut sup, mut events) = Supervisor::load(&opts.services_dir);
    sup.start_all_ready();
    let mut ready_said = false;
    let action = loop {
        if !ready_said && sup.is_ready() {
            println!("zeronode: ready in {} ms", opts.ready_clock.elapsed_ms());
            ready_said = true;
        }
        tokio::select! {
            _ = sigchld.recv() => sup.reap(),
            Some(ev) = events.recv() => sup.handle(ev),
            _ = sigint.recv() => break PowerAction::Reboot,
            _ = sigterm.recv() => break PowerAction::PowerOff,
            _ = sigusr2.recv() => break PowerAction::PowerOff,
        }
    };
    tracing::info!("{action:?} requested: stopping services");
    sup.begin_shutdown();
    while !sup.all_stopped() {
        tokio::select! {
            _ = sigchld.recv() => { sup.reap(); sup.stop_unblocked(); }
            Some(ev) = events.recv() => sup.handle(ev),
        }
    }
    // Lines still in the pipes of stopped services.
    while let Ok(ev) = events.try_recv() {
        sup.handle(ev);
    }
    tracing::info!("all services stopped");
    Ok(action)
}
