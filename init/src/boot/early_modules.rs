//! The initramfs's early module list, loaded from the first moment of
//! stage 1 by a process of its own.
//!
//! btrfs (raid6's timed benchmark, xor's, relocating 4 MB) takes most of a
//! second to load under emulation, and the storage service needs it before
//! ready. Loaded by PID 1 from the system image it could only start once
//! the image was hashed and mounted, and then competed with the drivers.
//! Here a forked child loads it from the initramfs while PID 1 hashes,
//! mounts and switches root. A child rather than a thread: it keeps the
//! initramfs as its root when PID 1 switches away (fork copies the root,
//! PID 1 shares its own with the kernel's helpers), so its module paths
//! stay valid. For the same reason it is the one that frees the initramfs,
//! once it has loaded its list and PID 1 has said it is done there.

use std::io::Read;
use std::os::fd::OwnedFd;

use nix::unistd::ForkResult;

use super::kmod;

/// The list in the initramfs.
const LIST: &str = "/etc/zeronode/modules-early";

/// The child at work; drop it (or call [`Child::leave_initramfs`]) once
/// PID 1 no longer needs anything in the initramfs.
pub struct Child {
    /// Held open until PID 1 leaves the initramfs: the child frees it on EOF.
    leaving: OwnedFd,
}

impl Child {
    /// PID 1 is out of the initramfs: the child may free it.
    pub fn leave_initramfs(self) {
        drop(self.leaving);
    }
}

/// Forks the child that loads `/etc/zeronode/modules-early` with the
/// module index `index` reads (in the child: the parse is a good part of
/// a translated first run under TCG, which PID 1 then spends hashing) and
/// then frees the initramfs. None when the list is empty or the fork
/// failed (said as a warning): the modules then load when the kernel asks
/// for them (`request_module` on the first btrfs mount), and PID 1 must
/// free the initramfs itself.
///
/// Must be called while PID 1 has no other thread: the child runs Rust
/// code after fork, which is only sound in a single-threaded process.
pub fn start<E: std::fmt::Display>(
    index: impl FnOnce() -> Result<kmod::ModuleIndex, E>,
) -> Option<Child> {
    let list = kmod::parse_load_list(&std::fs::read_to_string(LIST).unwrap_or_default());
    if list.is_empty() {
        return None;
    }
    let (wait_end, leaving) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("early module list not loaded ahead: pipe: {e}");
            return None;
        }
    };
    // SAFETY: stage 1 has started no thread yet (see above), so the child
    // inherits no lock another thread holds.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { child }) => {
            drop(wait_end);
            tracing::debug!("early module list loading in pid {child}");
            Some(Child { leaving })
        }
        Ok(ForkResult::Child) => {
            drop(leaving);
            run_child(index, list, wait_end)
        }
        Err(e) => {
            tracing::warn!("early module list not loaded ahead: fork: {e}");
            None
        }
    }
}

fn run_child<E: std::fmt::Display>(
    index: impl FnOnce() -> Result<kmod::ModuleIndex, E>,
    list: Vec<String>,
    wait_end: OwnedFd,
) -> ! {
    match index() {
        Ok(index) => {
            let mut loader = kmod::Loader::new(index).with_async_probe();
            let mut report = kmod::LoadReport::default();
            loader.load_many(list, &mut report);
            report.log("early module list");
        }
        // The kernel asks for them when it needs them (request_module).
        Err(e) => tracing::warn!("early module list not loaded: {e}"),
    }
    // Until PID 1 closes its end, once it has switched root. A boot that
    // stops in stage 1 never does: the initramfs then stays as it was.
    let mut wait = std::fs::File::from(wait_end);
    let mut byte = [0u8; 1];
    while let Err(e) = wait.read(&mut byte) {
        if e.kind() != std::io::ErrorKind::Interrupted {
            break;
        }
    }
    super::rootfs::free_initramfs();
    std::process::exit(0)
}
