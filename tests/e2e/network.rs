//! The management network at boot, against a DHCP server that answers
//! with garbage: the test plays the wire of a second NIC (QEMU's UDP
//! socket backend on loopback) and answers every DHCP request from the
//! node with a truncated reply.

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use zeronode_qemu::{Boot, UdpNic};

use super::{ensure, start, Check, BOOT_TIMEOUT};

const NIC_MAC: &str = "52:54:00:5a:00:01";
const SERVER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x5a, 0x00, 0xfe];
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 1);
/// Shorter than a BOOTP header (236 bytes): no DHCP parser can take it.
const GARBAGE_LEN: usize = 64;

/// A free UDP port on loopback (bound, then released for QEMU to take).
fn free_udp_port() -> Result<u16, String> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    s.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// The client MAC of an Ethernet frame carrying UDP to port 67, if it is one.
fn dhcp_request_from(frame: &[u8]) -> Option<[u8; 6]> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.first()? >> 4 != 4 || *ip.get(9)? != 17 {
        return None;
    }
    let udp = ip.get(usize::from(ip[0] & 0x0f) * 4..)?;
    if udp.get(2..4)? != 67u16.to_be_bytes() {
        return None;
    }
    frame.get(6..12)?.try_into().ok()
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A well-formed Ethernet/IPv4/UDP frame from port 67 to 68 whose DHCP
/// payload is truncated garbage.
fn garbage_reply(to: [u8; 6]) -> Vec<u8> {
    let payload = [0x02u8; GARBAGE_LEN];
    let udp_len = 8 + payload.len();
    let mut f = Vec::with_capacity(14 + 20 + udp_len);
    f.extend_from_slice(&to);
    f.extend_from_slice(&SERVER_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&SERVER_IP.octets());
    ip[16..20].copy_from_slice(&Ipv4Addr::BROADCAST.octets());
    let sum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&67u16.to_be_bytes());
    f.extend_from_slice(&68u16.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&payload);
    f
}

/// The far end of the NIC's wire: answers every DHCP request with garbage
/// until `stop`; counts the answers.
fn garbage_server(
    sock: UdpSocket,
    qemu_port: u16,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU32>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            let Ok(n) = sock.recv(&mut buf) else { continue };
            if let Some(client) = dhcp_request_from(&buf[..n]) {
                if sock
                    .send_to(&garbage_reply(client), ("127.0.0.1", qemu_port))
                    .is_ok()
                {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
}

/// The management NIC's only DHCP server sends garbage: the console names
/// it, no lease is taken, and the node still reaches ready.
pub fn dhcp_garbage_is_reported() -> Check {
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let peer_port = sock.local_addr().map_err(|e| e.to_string())?.port();
    let qemu_port = free_udp_port()?;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU32::new(0));
    let server = garbage_server(sock, qemu_port, stop.clone(), answered.clone());

    let mut o = super::opts(Boot::Direct);
    o.disks = 0;
    o.append = Some(format!("zeronode.mgmt={NIC_MAC}"));
    o.udp_nics = vec![UdpNic {
        mac: NIC_MAC.into(),
        peer_port,
        qemu_port,
    }];
    let result = (|| {
        let mut node = start(&o)?;
        node.wait_ready(BOOT_TIMEOUT).map_err(|e| e.to_string())?;
        let line = node
            .find_or_wait_for_line(
                "the garbage DHCP reply reported",
                Duration::from_secs(90),
                |l| l.contains("ignoring malformed reply from 10.9.9.1:67"),
            )
            .map_err(|e| e.to_string())?;
        eprintln!("    {}", line.trim());
        let console = node.console().to_string();
        let _ = node.kill();
        ensure(!console.contains("network: zn0 bound"), || {
            format!("a lease was taken from garbage:\n{console}")
        })
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    result?;
    ensure(answered.load(Ordering::Relaxed) > 0, || {
        "the node never asked the test's DHCP server".into()
    })
}
