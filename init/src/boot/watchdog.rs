//! The hardware watchdog (`/dev/watchdog0`: i6300esb in QEMU, iTCO_wdt or
//! sp5100_tco on boards). PID 1 arms it and pets it from its event loop:
//! if the kernel or PID 1 hangs, the watchdog resets the machine, and the
//! node brings its workloads back from the ledger as after any reset. A
//! node runs unattended; a hang must not last forever.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

pub const DEVICE: &str = "/dev/watchdog0";
/// Seconds without a pet before the reset: long enough for a slow moment
/// under emulation, short enough that a hung node is back within minutes.
pub const TIMEOUT_SECS: i32 = 60;
const PET_EVERY: Duration = Duration::from_secs(10);

// <linux/watchdog.h>: WDIOC_SETTIMEOUT = _IOWR('W', 6, int).
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, i32);

/// An armed watchdog. Dropping it (PID 1's runtime ending on the way to
/// power-off or reboot) disarms it with the magic close, so a slow but
/// orderly shutdown is not cut short by a reset.
pub struct Watchdog {
    file: File,
}

impl Watchdog {
    /// Opens (which starts) the watchdog at `path` and sets its timeout;
    /// None when the machine has none. With it, the timeout set, or None
    /// when the driver refused it and keeps its own.
    pub fn arm(path: &Path, timeout_secs: i32) -> std::io::Result<Option<(Watchdog, Option<i32>)>> {
        let file = match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut timeout = timeout_secs;
        // SAFETY: the fd is open; WDIOC_SETTIMEOUT reads and writes one int.
        let set = match unsafe { wdioc_settimeout(file.as_raw_fd(), &mut timeout) } {
            // The driver answers the timeout it could set.
            Ok(_) => Some(timeout),
            // Its own timeout stays; petting works the same.
            Err(e) => {
                tracing::warn!(
                    "watchdog {}: cannot set a {timeout_secs} s timeout: {e}",
                    path.display()
                );
                None
            }
        };
        Ok(Some((Watchdog { file }, set)))
    }

    /// A write of anything is a keepalive for every driver.
    pub fn pet(&mut self) -> std::io::Result<()> {
        self.file.write_all(b"\0")
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // 'V' before close: the magic close that stops the timer.
        if let Err(e) = self.file.write_all(b"V") {
            tracing::warn!("watchdog: disarming: {e}");
        }
    }
}

/// Arms the machine's watchdog, if it has one, and pets it every 10 s on
/// the current runtime until the runtime ends.
pub fn spawn() {
    let (mut dog, timeout) = match Watchdog::arm(Path::new(DEVICE), TIMEOUT_SECS) {
        Ok(Some(d)) => d,
        Ok(None) => return tracing::info!("no hardware watchdog ({DEVICE})"),
        Err(e) => return tracing::warn!("hardware watchdog {DEVICE}: {e}"),
    };
    match timeout {
        Some(s) => {
            tracing::info!("hardware watchdog {DEVICE} armed: a hang resets the node after {s} s")
        }
        None => tracing::info!(
            "hardware watchdog {DEVICE} armed: a hang resets the node after the driver's timeout"
        ),
    }
    tokio::spawn(async move {
        loop {
            if let Err(e) = dog.pet() {
                tracing::warn!("watchdog {DEVICE}: {e}");
            }
            tokio::time::sleep(PET_EVERY).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_device_is_no_watchdog_and_a_plain_file_is_petted_and_disarmed() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Watchdog::arm(&dir.path().join("none"), 60)
            .unwrap()
            .is_none());
        // A regular file stands in for the device: the timeout ioctl fails
        // (reported, the driver's own stays), pets and the magic close land.
        let path = dir.path().join("watchdog0");
        std::fs::write(&path, b"").unwrap();
        let (mut dog, timeout) = Watchdog::arm(&path, 60).unwrap().unwrap();
        assert_eq!(timeout, None);
        dog.pet().unwrap();
        dog.pet().unwrap();
        drop(dog);
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0V");
    }
}
