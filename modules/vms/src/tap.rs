//! The VM's NIC on the host: a persistent tap device made through
//! /dev/net/tun (TUNSETIFF + TUNSETPERSIST; rtnetlink cannot make taps).
//! Persistent, so it outlives a QEMU that died and keeps its place on the
//! bridge across restarts; the network module's AttachTap puts it on the
//! bridge and its Detach deletes it.

use std::os::fd::AsRawFd;

use crate::Error;

// libc::Ioctl: the request type differs between glibc and musl.
const TUNSETIFF: libc::Ioctl = 0x4004_54ca;
const TUNSETPERSIST: libc::Ioctl = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// FNV-1a: stable across builds, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The tap of VM `vm`: `znt` + 8 hex digits (interface names stop at 15).
pub fn tap_name(vm: &str) -> String {
    format!("znt{:08x}", fnv1a(vm.as_bytes()))
}

/// A fixed MAC for the VM's NIC (locally administered, unicast), so the
/// guest's interface and the network config match across restarts.
pub fn mac(vm: &str) -> String {
    let h = fnv1a(format!("mac/{vm}").as_bytes()).to_be_bytes();
    format!("02:7a:{:02x}:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2], h[3])
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn tun_ioctl(name: &str, persist: bool) -> Result<(), Error> {
    let fail = |reason: String| Error::Tap {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(fail("name must be 1-15 bytes".into()));
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| fail(format!("open /dev/net/tun: {e}")))?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads and writes an ifreq, which IfReq lays out
    // (16-byte name, flags, padding to 40 bytes); the fd is open.
    let r = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if r < 0 {
        return Err(fail(format!(
            "TUNSETIFF: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: TUNSETPERSIST takes an integer argument.
    let r = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, libc::c_ulong::from(persist)) };
    if r < 0 {
        return Err(fail(format!(
            "TUNSETPERSIST: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Makes the persistent tap `name`, or finds it as it is.
pub fn create(name: &str) -> Result<(), Error> {
    tun_ioctl(name, true)
}

/// Deletes the tap `name` when it exists (no QEMU must hold it).
pub fn remove(name: &str) -> Result<(), Error> {
    if !std::path::Path::new("/sys/class/net").join(name).exists() {
        return Ok(());
    }
    tun_ioctl(name, false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_stable_and_short() {
        assert_eq!(super::tap_name("web"), super::tap_name("web"));
        assert!(super::tap_name("a-very-long-vm-name-indeed").len() <= 15);
        assert_ne!(super::tap_name("a"), super::tap_name("b"));
        assert!(super::mac("x").starts_with("02:7a:"));
    }
}
