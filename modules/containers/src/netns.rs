//! A network namespace per container, kept alive by a bind mount of its
//! nsfs file (as `ip netns add` does), so the network module can attach it
//! before the container's task exists and after the module restarts.

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::Error;

fn err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Netns {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// True when `path` is a bind-mounted network namespace.
pub fn exists(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        // nsfs: a live namespace bind mount, not the empty file left behind.
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Makes a new network namespace at `path` with `lo` up (a container
/// without a workload network still has a working loopback). Nothing is
/// done when one is there already.
pub fn create(path: &Path) -> Result<(), Error> {
    if exists(path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(path, e))?;
    }
    std::fs::File::create(path).map_err(|e| err(path, e))?;
    let target = path.to_path_buf();
    // unshare(2) moves only the calling thread: a thread of its own, which
    // ends right after, keeps the module's threads where they are.
    let r = std::thread::spawn(move || -> Result<(), Error> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| err(&target, format!("unshare: {e}")))?;
        lo_up().map_err(|e| err(&target, format!("lo up: {e}")))?;
        let me = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        mount(
            Some(me.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| err(&target, format!("bind mount: {e}")))
    })
    .join()
    .map_err(|_| err(path, "namespace thread panicked"))?;
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

/// Unmounts and removes the namespace file; the namespace goes away with
/// its last user.
pub fn remove(path: &Path) -> Result<(), Error> {
    if exists(path) {
        umount2(path, MntFlags::MNT_DETACH).map_err(|e| err(path, format!("umount: {e}")))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(path, e)),
        _ => Ok(()),
    }
}

/// `ip link set lo up` with the classic ioctl: no netlink client needed
/// for one flag.
fn lo_up() -> std::io::Result<()> {
    // SAFETY: a plain socket, closed below; ifreq is zeroed and its name
    // is a NUL-terminated "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        ifr.ifr_name[0] = b'l' as libc::c_char;
        ifr.ifr_name[1] = b'o' as libc::c_char;
        let mut r = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut ifr);
        if r == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            r = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &ifr);
        }
        let e = std::io::Error::last_os_error();
        libc::close(fd);
        if r != 0 {
            return Err(e);
        }
    }
    Ok(())
}
