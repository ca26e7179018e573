//! The one piece of networking PID 1 does itself: loopback up, so services
//! that talk to each other over 127.0.0.1 work before the network module runs.

use std::os::fd::AsRawFd;

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

/// Sets IFF_UP on `lo`.
pub fn loopback_up() -> nix::Result<()> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; zero is a valid value for every field.
    let mut req: nix::libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as nix::libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write one ifreq, which `req` is.
    unsafe {
        nix::errno::Errno::result(nix::libc::ioctl(
            sock.as_raw_fd(),
            nix::libc::SIOCGIFFLAGS as nix::libc::Ioctl,
            &mut req,
        ))?;
        req.ifr_ifru.ifru_flags |= nix::libc::IFF_UP as nix::libc::c_short;
        nix::errno::Errno::result(nix::libc::ioctl(
            sock.as_raw_fd(),
            nix::libc::SIOCSIFFLAGS as nix::libc::Ioctl,
            &req,
        ))?;
    }
    Ok(())
}
