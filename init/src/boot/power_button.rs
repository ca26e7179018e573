//! The ACPI power button (QEMU's `system_powerdown`, a short press on a
//! real node): the kernel reports it as KEY_POWER on an evdev device. PID 1
//! turns a press into SIGUSR2 to itself, so it takes the same road as every
//! other power-off request.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;

const EV_KEY: u16 = 1;
const KEY_POWER: u32 = 116;
/// `struct input_event` on 64-bit: timeval (16) + type (2) + code (2) + value (4).
const EVENT_SIZE: usize = 24;

/// True when a `capabilities/key` bitmap (hex words, most significant
/// first, as sysfs prints them) has `key` set.
pub fn has_key(bitmap: &str, key: u32) -> bool {
    let words: Vec<&str> = bitmap.split_whitespace().collect();
    let (word, bit) = ((key / 64) as usize, key % 64);
    words
        .len()
        .checked_sub(word + 1)
        .and_then(|i| u64::from_str_radix(words[i], 16).ok())
        .is_some_and(|w| w & (1 << bit) != 0)
}

/// The event devices that can report KEY_POWER.
pub fn power_button_devices(sys_class_input: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(sys_class_input) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("device/capabilities/key"))
                .is_ok_and(|b| has_key(&b, KEY_POWER))
        })
        .map(|e| Path::new("/dev/input").join(e.file_name()))
        .collect();
    found.sort();
    found
}

/// Watches every power button until the runtime ends.
pub fn spawn_watchers() {
    for dev in power_button_devices(Path::new("/sys/class/input")) {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(&dev)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("power button {}: {e}", dev.display());
                continue;
            }
        };
        tracing::debug!("watching power button {}", dev.display());
        tokio::spawn(watch(dev, file));
    }
}

async fn watch(dev: PathBuf, file: File) {
    // SAFETY: the AsyncFd owns `file`, so the fd stays open while registered.
    let fd = match unsafe { AsyncFd::register(file) } {
        Ok(fd) => fd,
        Err(e) => return tracing::warn!("power button {}: {}", dev.display(), e.into_parts().1),
    };
    let mut buf = [0u8; EVENT_SIZE * 16];
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return;
        };
        match guard.try_io(|f| f.get_ref().read(&mut buf)) {
            Ok(Ok(0)) => return,
            Ok(Ok(n)) => {
                tracing::debug!("power button {}: {n} bytes of events", dev.display());
                if buf[..n].chunks_exact(EVENT_SIZE).any(is_power_press) {
                    tracing::info!("power button pressed: powering off");
                    let _ = nix::sys::signal::kill(
                        nix::unistd::getpid(),
                        nix::sys::signal::Signal::SIGUSR2,
                    );
                }
            }
            Ok(Err(e)) => return tracing::warn!("power button {}: {e}", dev.display()),
            Err(_would_block) => continue,
        }
    }
}

fn is_power_press(ev: &[u8]) -> bool {
    let kind = u16::from_ne_bytes([ev[16], ev[17]]);
    let code = u16::from_ne_bytes([ev[18], ev[19]]);
    let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
    kind == EV_KEY && u32::from(code) == KEY_POWER && value == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap() {
        // QEMU's ACPI power button: only KEY_POWER (116 = word 1, bit 52).
        assert!(has_key("10000000000000 0", KEY_POWER));
        assert!(!has_key("0", KEY_POWER));
        assert!(!has_key("", KEY_POWER));
        assert!(!has_key("zz 0", KEY_POWER));
        // A keyboard prints more words; only word 1 (second from the right) counts.
        assert!(has_key("7 10000000000000 0", KEY_POWER));
        assert!(!has_key("10000000000000 0 0", KEY_POWER));
    }

    #[test]
    fn press_event() {
        let mut ev = [0u8; EVENT_SIZE];
        ev[16..18].copy_from_slice(&EV_KEY.to_ne_bytes());
        ev[18..20].copy_from_slice(&(KEY_POWER as u16).to_ne_bytes());
        ev[20..24].copy_from_slice(&1i32.to_ne_bytes());
        assert!(is_power_press(&ev));
        ev[20..24].copy_from_slice(&0i32.to_ne_bytes());
        assert!(!is_power_press(&ev), "a release is not a press");
    }
}
