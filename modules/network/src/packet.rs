//! IPv4 + UDP framing for the DHCP client's packet socket: before the node
//! has an address, the kernel's UDP stack cannot send from 0.0.0.0 to the
//! broadcast address on one chosen link, so the client writes the IP and UDP
//! headers itself and reads replies off the link as IP packets.

use std::net::Ipv4Addr;

pub const DHCP_SERVER_PORT: u16 = 67;
pub const DHCP_CLIENT_PORT: u16 = 68;

/// A UDP datagram taken out of an IPv4 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn add_words(bytes: &[u8], mut sum: u32) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// The Internet checksum (RFC 1071) of `bytes`.
pub fn checksum(bytes: &[u8]) -> u16 {
    fold(add_words(bytes, 0))
}

/// An IPv4 packet (TTL 64, DF clear, no options) carrying one UDP datagram,
/// both checksums filled in.
pub fn build_udp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0x10]); // v4, IHL 5; TOS low delay as DHCP clients do
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0]); // id, flags, fragment offset
    p.extend_from_slice(&[64, 17, 0, 0]); // TTL, UDP, checksum placeholder
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let ip_sum = checksum(&p[..20]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());

    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    // Pseudo header: addresses, protocol, UDP length.
    let mut sum = add_words(&p[12..20], 0);
    sum += 17 + udp_len as u32;
    sum = add_words(&p[20..], sum);
    let mut udp_sum = fold(sum);
    if udp_sum == 0 {
        udp_sum = 0xffff;
    }
    p[26..28].copy_from_slice(&udp_sum.to_be_bytes());
    p
}

/// Takes the UDP datagram out of an IPv4 packet; `None` for anything else
/// (other protocols, fragments, truncated or inconsistent headers).
pub fn parse_udp(packet: &[u8]) -> Option<UdpDatagram<'_>> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 || packet.len() < ihl + 8 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if total < ihl + 8 || total > packet.len() {
        return None;
    }
    let frag = u16::from_be_bytes([packet[6], packet[7]]);
    // More-fragments set or a non-zero offset: DHCP replies fit one frame.
    if frag & 0x3fff != 0 || packet[9] != 17 {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let udp = &packet[ihl..total];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < 8 || udp_len > udp.len() {
        return None;
    }
    Some(UdpDatagram {
        src,
        dst,
        src_port: u16::from_be_bytes([udp[0], udp[1]]),
        dst_port: u16::from_be_bytes([udp[2], udp[3]]),
        payload: &udp[8..udp_len],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_packets_parse_back_with_valid_checksums() {
        let p = build_udp(
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            68,
            67,
            b"hello dhcp",
        );
        assert_eq!(checksum(&p[..20]), 0, "IP header checksum verifies");
        let d = parse_udp(&p).unwrap();
        assert_eq!(d.src, Ipv4Addr::UNSPECIFIED);
        assert_eq!(d.dst, Ipv4Addr::BROADCAST);
        assert_eq!((d.src_port, d.dst_port), (68, 67));
        assert_eq!(d.payload, b"hello dhcp");
        // UDP checksum over pseudo header + datagram verifies to zero.
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[12..20]);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&((p.len() - 20) as u16).to_be_bytes());
        pseudo.extend_from_slice(&p[20..]);
        assert_eq!(checksum(&pseudo), 0);
    }

    #[test]
    fn junk_is_not_a_datagram() {
        assert_eq!(parse_udp(&[]), None);
        assert_eq!(parse_udp(&[0x45; 10]), None);
        let mut p = build_udp(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 1, 2, b"x");
        p[9] = 6; // TCP
        assert_eq!(parse_udp(&p), None);
        let mut p = build_udp(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 1, 2, b"x");
        p[2] = 0xff; // total length past the buffer
        assert_eq!(parse_udp(&p), None);
        let mut p = build_udp(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 1, 2, b"x");
        p[25] = 200; // UDP length past the packet
        assert_eq!(parse_udp(&p), None);
    }
}
