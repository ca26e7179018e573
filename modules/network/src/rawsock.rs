//! An AF_PACKET datagram socket bound to one link, for the DHCP client: it
//! sends IPv4 packets to the link's broadcast MAC and receives every IPv4
//! packet addressed to the link, with or without an address configured.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

pub struct PacketSocket {
    fd: AsyncFd<OwnedFd>,
    ifindex: i32,
}

fn link_addr(ifindex: i32, mac: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    sa.sll_ifindex = ifindex;
    sa.sll_halen = 6;
    sa.sll_addr[..6].copy_from_slice(&mac);
    sa
}

impl PacketSocket {
    /// Opens the socket on link `ifindex`. Must run inside a tokio runtime.
    pub fn open(ifindex: u32) -> io::Result<Self> {
        let ifindex =
            i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from((libc::ETH_P_IP as u16).to_be()),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sa = link_addr(ifindex, [0; 6]);
        // SAFETY: sa is a valid sockaddr_ll and the length matches it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket {
            // SAFETY: fd is an OwnedFd that the AsyncFd owns from here on, so
            // it stays open and the same descriptor for the AsyncFd's life.
            fd: unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?,
            ifindex,
        })
    }

    /// Sends one IPv4 packet to the link's broadcast address.
    pub async fn send_broadcast(&self, packet: &[u8]) -> io::Result<()> {
        let sa = link_addr(self.ifindex, [0xff; 6]);
        loop {
            let mut guard = self.fd.writable().await?;
            let res = guard.try_io(|fd| {
                // SAFETY: buffer and address are valid for the given lengths.
                let n = unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&sa as *const libc::sockaddr_ll).cast(),
                        size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            match res {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one IPv4 packet into `buf`; returns its length.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let res = guard.try_io(|fd| {
                // SAFETY: buf is valid for writes of buf.len() bytes.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}
