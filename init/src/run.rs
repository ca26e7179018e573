//! The life of the supervisor between boot and shutdown, shared by PID 1 and
//! process mode: start the services, serve the control interface, print the
//! ready line, and on a signal or a control request stop every service in
//! reverse dependency order and say which power action was asked for.

use std::path::PathBuf;
use std::time::Instant;

/// Where the `zeronode: ready in N ms` figure counts from.
#[derive(Debug, Clone, Copy)]
pub enum ReadyClock {
    /// PID 1: ms since the kernel started (CLOCK_BOOTTIME).
    KernelBoot,
    /// Process mode: ms since this process started.
    ProcessStart(Instant),
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub services_dir: PathBuf,
    /// The D-Bus (peer-to-peer) control socket; none means no control interface.
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
    todo!("supervisor helper fills this: {opts:?}")
}
