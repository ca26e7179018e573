//! The kernel's device events (NETLINK_KOBJECT_UEVENT): PID 1 loads the
//! drivers of devices as they come, storage pools the disks that come late.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// A socket on the kernel's uevent broadcast, non-blocking: poll it.
pub struct UeventSocket {
    fd: OwnedFd,
}

impl UeventSocket {
    pub fn open() -> nix::Result<Self> {
        use nix::sys::socket::{
            bind, socket, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType,
        };
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkKObjectUEvent,
        )?;
        // Group 1: the kernel's own events (udev's rebroadcasts are group 2).
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 1))?;
        Ok(UeventSocket { fd })
    }

    /// The next message, or EAGAIN when none is queued; ENOBUFS says the
    /// kernel dropped some (the socket's buffer was full).
    pub fn recv<'a>(&self, buf: &'a mut [u8]) -> nix::Result<&'a [u8]> {
        let n = nix::sys::socket::recv(
            self.fd.as_raw_fd(),
            buf,
            nix::sys::socket::MsgFlags::empty(),
        )?;
        Ok(&buf[..n])
    }

    /// Waits until a message is queued, or `timeout_ms` (-1: for ever).
    pub fn wait(&self, timeout_ms: i32) -> nix::Result<bool> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(timeout_ms).unwrap_or(PollTimeout::NONE);
        Ok(poll(&mut fds, timeout)? > 0)
    }
}

impl AsFd for UeventSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// One kernel uevent: `ACTION@DEVPATH\0KEY=value\0...`.
#[derive(Debug, Clone, Copy)]
pub struct Uevent<'a> {
    pub action: &'a str,
    pub devpath: &'a str,
    fields: &'a [u8],
}

impl<'a> Uevent<'a> {
    /// None for anything but a kernel uevent (udev's `libudev` messages).
    pub fn parse(msg: &'a [u8]) -> Option<Self> {
        let head_end = msg.iter().position(|&b| b == 0).unwrap_or(msg.len());
        let head = std::str::from_utf8(&msg[..head_end]).ok()?;
        let (action, devpath) = head.split_once('@')?;
        Some(Uevent {
            action,
            devpath,
            fields: msg.get(head_end + 1..).unwrap_or_default(),
        })
    }

    /// The value of `key` (`SUBSYSTEM`, `DEVNAME`, `MODALIAS`...), if set
    /// and not empty.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.fields.split(|&b| b == 0).find_map(|f| {
            let v = f.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
            std::str::from_utf8(v).ok().filter(|v| !v.is_empty())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_a_disk_added() {
        let msg = b"add@/devices/pci0000:00/0000:00:03.0/host0/target0:0:0/0:0:0:0/block/sda\0ACTION=add\0DEVPATH=/devices/x/block/sda\0SUBSYSTEM=block\0MAJOR=8\0MINOR=0\0DEVNAME=sda\0DEVTYPE=disk\0SEQNUM=1201\0";
        let e = Uevent::parse(msg).unwrap();
        assert_eq!(e.action, "add");
        assert!(e.devpath.ends_with("/block/sda"));
        assert_eq!(e.get("SUBSYSTEM"), Some("block"));
        assert_eq!(e.get("DEVTYPE"), Some("disk"));
        assert_eq!(e.get("DEVNAME"), Some("sda"));
        // A key is matched whole: DEV is not DEVNAME.
        assert_eq!(e.get("DEV"), None);
        assert_eq!(e.get("MODALIAS"), None);
    }

    #[test]
    fn udev_messages_and_garbage_are_not_uevents() {
        assert!(Uevent::parse(b"libudev\0\xfe\xed\xca\xfe").is_none());
        assert!(Uevent::parse(b"").is_none());
        assert!(Uevent::parse(b"\xff@x\0").is_none());
        let bare = Uevent::parse(b"remove@/devices/x").unwrap();
        assert_eq!((bare.action, bare.get("DEVNAME")), ("remove", None));
    }
}
