//! The end of the machine: after the supervisor has stopped the services,
//! end whatever is left, sync, unmount everything (read-only where busy),
//! and reboot or power off.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::logging::say;
use super::mounts;
use crate::run::PowerAction;

/// How long processes outside the supervisor's care get after SIGTERM.
const STRAGGLER_GRACE: Duration = Duration::from_secs(2);

pub fn finish(action: PowerAction) -> ! {
    end_stragglers();
    nix::unistd::sync();
    let (unmounted, read_only) = unmount_all();
    nix::unistd::sync();
    say(&format!(
        "zeronode: filesystems unmounted ({unmounted} unmounted, {read_only} remounted read-only)"
    ));
    let mode = match action {
        PowerAction::Reboot => {
            say("zeronode: rebooting");
            RebootMode::RB_AUTOBOOT
        }
        PowerAction::PowerOff => {
            say("zeronode: powering off");
            RebootMode::RB_POWER_OFF
        }
    };
    let err = reboot(mode).err();
    // Only reached if the kernel refused; PID 1 must not exit, so wait here.
    say(&format!("zeronode: {action:?} failed ({err:?}); halted"));
    loop {
        nix::unistd::pause();
    }
}

/// SIGTERM to every process but us, a grace period while reaping, then SIGKILL.
fn end_stragglers() {
    if kill(Pid::from_raw(-1), Signal::SIGTERM).is_err() {
        return; // ESRCH: nobody left.
    }
    let deadline = Instant::now() + STRAGGLER_GRACE;
    while Instant::now() < deadline {
        if !reap_all() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    let deadline = Instant::now() + STRAGGLER_GRACE;
    while Instant::now() < deadline && reap_all() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reaps every exited child; false once there are no children at all.
fn reap_all() -> bool {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

/// Unmounts in reverse mount order; a busy mount is remounted read-only.
fn unmount_all() -> (usize, usize) {
    let points = mounts::mount_points().unwrap_or_default();
    let (mut unmounted, mut read_only) = (0, 0);
    for point in points.iter().rev() {
        if point == Path::new("/") {
            continue;
        }
        if umount2(point, MntFlags::empty()).is_ok() {
            unmounted += 1;
        } else if nix::mount::mount(
            None::<&str>,
            point,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .is_ok()
        {
            read_only += 1;
        }
    }
    // The root is the read-only system image; make sure all the same.
    if nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .is_ok()
    {
        read_only += 1;
    }
    (unmounted, read_only)
}
