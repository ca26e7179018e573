//! Starting service processes and collecting every exit.
//!
//! Children are started with `std::process::Command` and never waited on
//! through it: one `waitpid(-1, WNOHANG)` loop after each SIGCHLD collects
//! services, health probes and orphans alike, so nothing races the reaper.
//! Without a uid to switch to, std starts the child with posix_spawn
//! (clone(CLONE_VFORK) in the libc): no copy of our page tables per start.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::service::Service;

/// The PATH a service gets when neither init nor its file sets one (PID 1
/// starts with an empty environment).
const DEFAULT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with status {c}"),
            Exit::Signal(s) => write!(f, "killed by {s}"),
        }
    }
}

/// A started child: its pid (also its process group) and, when asked for,
/// the read end of the pipe its stdout and stderr share.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub output: Option<OwnedFd>,
}

/// Starts `argv` with the environment, directory and user of `svc`, in a
/// process group of its own so that a stop reaches whatever it forked.
/// With `capture`, stdout and stderr go to one pipe (their lines stay in
/// order); without, to /dev/null.
pub fn spawn(argv: &[String], svc: &Service, capture: bool) -> io::Result<Spawned> {
    let Some((program, args)) = argv.split_first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(&svc.env)
        .stdin(Stdio::null())
        .process_group(0);
    if std::env::var_os("PATH").is_none() && !svc.env.contains_key("PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    if let Some(dir) = &svc.workdir {
        cmd.current_dir(dir);
    }
    if let Some((uid, gid)) = svc.user {
        cmd.uid(uid).gid(gid);
    }
    let output = if capture {
        // Close-on-exec for both ends: the child gets the write end through
        // dup2 onto 1 and 2, other children get neither.
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        cmd.stdout(write.try_clone()?).stderr(write);
        Some(read)
    } else {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        None
    };
    let child = cmd.spawn()?;
    // `cmd` drops here with our copies of the write end, so the pipe reads
    // EOF once the service and its children are gone. The Child is dropped
    // unwaited: reap() collects it.
    Ok(Spawned {
        pid: child.id() as i32,
        output,
    })
}

/// Our nice value while services start and run; their own is 0.
const SUPERVISOR_NICE: i32 = -10;
/// `SCHED_RESET_ON_FORK` (linux/sched.h), which the libc crate lacks.
const SCHED_RESET_ON_FORK: i32 = 0x4000_0000;

/// Runs the supervisor ahead of the services it starts, without passing
/// that on: a new child is placed at the scheduler's minimum virtual time,
/// ahead of a parent that has been busy starting its siblings, so on a
/// small machine each start used to wait for the last child's dynamic
/// loading. With a negative nice and SCHED_RESET_ON_FORK, the kernel gives
/// every child nice 0 again. Needs CAP_SYS_NICE; without it (an ordinary
/// user in process mode) nothing changes and the error is returned.
pub fn prefer_supervisor() -> io::Result<()> {
    // SAFETY: a C struct of integers, for which all zeroes is valid (its
    // layout differs between glibc and musl, hence no literal).
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    param.sched_priority = 0;
    // SAFETY: plain system calls on the calling thread (the only one that
    // runs the supervisor) with a valid sched_param. The raw system call,
    // because musl's sched_setscheduler() always fails with ENOSYS.
    unsafe {
        if libc::setpriority(libc::PRIO_PROCESS as _, 0, SUPERVISOR_NICE) != 0 {
            return Err(io::Error::last_os_error());
        }
        let policy = libc::SCHED_OTHER | SCHED_RESET_ON_FORK;
        let param: *const libc::sched_param = &param;
        if libc::syscall(libc::SYS_sched_setscheduler, 0, policy, param) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets the nice value of every thread in process group `pgid` (the
/// kernel walks them all for PRIO_PGRP; threads and children started later
/// inherit it from the one that starts them).
pub fn set_group_nice(pgid: i32, nice: i32) -> io::Result<()> {
    // SAFETY: a plain system call with integer arguments.
    if unsafe { libc::setpriority(libc::PRIO_PGRP as _, pgid as _, nice) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Collects every child that has exited, without blocking.
pub fn reap() -> Vec<(i32, Exit)> {
    let mut exits = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => exits.push((pid.as_raw(), Exit::Code(code))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => exits.push((pid.as_raw(), Exit::Signal(sig))),
            // Stopped/continued children are still ours to wait for later.
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return exits,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!("waitpid: {e}");
                return exits;
            }
        }
    }
}

/// Sends `sig` to the process group `pgid`; a group that is already gone
/// is not an error.
pub fn signal_group(pgid: i32, sig: Signal) {
    match killpg(Pid::from_raw(pgid), sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!("sending {sig} to process group {pgid}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(command: &[&str]) -> Service {
        let text = format!("command = {command:?}\nenv = {{ GREETING = \"hi\" }}");
        Service::parse("t", &text, std::path::Path::new("t.toml"), "").unwrap()
    }

    /// Waits for this one child: reap()'s waitpid(-1) would steal the
    /// children of tests running beside this one.
    fn wait_for(pid: i32) -> Exit {
        match waitpid(Pid::from_raw(pid), None).unwrap() {
            WaitStatus::Exited(_, c) => Exit::Code(c),
            WaitStatus::Signaled(_, s, _) => Exit::Signal(s),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn captures_stdout_and_stderr_in_one_pipe() {
        let s = svc(&["/bin/sh", "-c", "echo out $GREETING; echo err >&2; exit 3"]);
        let spawned = spawn(&s.command, &s, true).unwrap();
        let mut text = String::new();
        let mut file = std::fs::File::from(spawned.output.unwrap());
        std::io::Read::read_to_string(&mut file, &mut text).unwrap();
        assert_eq!(text, "out hi\nerr\n");
        assert_eq!(wait_for(spawned.pid), Exit::Code(3));
    }

    #[test]
    fn own_process_group_and_signals() {
        let s = svc(&["/bin/sleep", "30"]);
        let spawned = spawn(&s.command, &s, false).unwrap();
        let pgid = nix::unistd::getpgid(Some(Pid::from_raw(spawned.pid))).unwrap();
        assert_eq!(pgid.as_raw(), spawned.pid);
        signal_group(spawned.pid, Signal::SIGTERM);
        assert_eq!(wait_for(spawned.pid), Exit::Signal(Signal::SIGTERM));
        // Gone already: no error, no panic.
        signal_group(spawned.pid, Signal::SIGTERM);
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let s = svc(&["/nonexistent/program"]);
        let e = spawn(&s.command, &s, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(Exit::Code(0).success() && !Exit::Code(1).success());
        assert_eq!(Exit::Code(1).to_string(), "exited with status 1");
        assert_eq!(
            Exit::Signal(Signal::SIGKILL).to_string(),
            "killed by SIGKILL"
        );
    }
}
