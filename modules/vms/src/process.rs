//! A QEMU process watched through a pidfd: the same for one this module
//! started and for one it finds still running after a restart of the
//! module (not its child any more, so it cannot wait(2) for it). Started
//! in a session of its own, so signals meant for the module (the
//! supervisor stopping it) do not reach the VMs.

use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use tokio::io::unix::AsyncFd;

use crate::Error;

pub struct Process {
    pub pid: u32,
    pidfd: AsyncFd<OwnedFd>,
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open(pid, 0) returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a descriptor we own from here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl Process {
    /// Starts `program` with `args`, stdout and stderr appended to `output`.
    pub fn spawn(program: &Path, args: &[OsString], output: &Path) -> Result<Process, Error> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(output)
            .map_err(Error::io(format!("open {}", output.display())))?;
        let err = out
            .try_clone()
            .map_err(Error::io(format!("dup {}", output.display())))?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: setsid is async-signal-safe, as pre_exec requires.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(Error::io(format!("start {}", program.display())))?;
        // The Child is dropped without waiting: the pidfd watches it and
        // `reap` collects it.
        Process::adopt(child.id())
    }

    /// Watches the running process `pid`.
    pub fn adopt(pid: u32) -> Result<Process, Error> {
        let fd = pidfd_open(pid).map_err(Error::io(format!("pidfd of {pid}")))?;
        // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open
        // and unchanged until it is dropped.
        let pidfd = unsafe { AsyncFd::register(fd) }
            .map_err(|e| Error::io(format!("watch pid {pid}"))(e.into()))?;
        Ok(Process { pid, pidfd })
    }

    /// Waits until the process has ended; its exit status when it was our
    /// child (128 + signal when killed), None for an adopted one.
    pub async fn exited(&self) -> Option<i32> {
        loop {
            match self.pidfd.readable().await {
                Ok(mut g) => {
                    g.retain_ready();
                    break;
                }
                Err(e) => {
                    tracing::warn!("pidfd of {}: {e}", self.pid);
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
        reap(self.pid)
    }

    pub fn kill(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
        .unwrap_or(false)
}

fn reap(pid: u32) -> Option<i32> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    match waitpid(
        nix::unistd::Pid::from_raw(pid as i32),
        Some(WaitPidFlag::WNOHANG),
    ) {
        Ok(WaitStatus::Exited(_, c)) => Some(c),
        Ok(WaitStatus::Signaled(_, s, _)) => Some(128 + s as i32),
        _ => None,
    }
}

/// The pid of a running QEMU whose command line holds `marker` (its QMP
/// socket path), as recorded in `pidfile`.
pub fn find_running(pidfile: &Path, marker: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    (cmdline.contains(marker) && !is_zombie(pid)).then_some(pid)
}
