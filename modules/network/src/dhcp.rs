//! Our DHCPv4 client (RFC 2131) on dhcproto messages and a packet socket:
//! INIT -> SELECTING -> REQUESTING -> BOUND -> RENEWING (unicast at T1) ->
//! REBINDING (broadcast at T2) -> expiry, NAK back to INIT, retransmission
//! with exponential back-off and jitter, DHCPRELEASE on request.
//!
//! A server that sends garbage gets a log line and is ignored: nothing a
//! packet holds can end the client.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::packet::{self, DHCP_CLIENT_PORT, DHCP_SERVER_PORT};
use crate::rawsock::PacketSocket;

/// A bound lease, as applied to the bridge and reported on D-Bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub hostname: Option<String>,
    pub domain: Option<String>,
    pub server: Ipv4Addr,
    pub lease_secs: u32,
    pub renew_secs: u32,
    pub rebind_secs: u32,
    /// Unix seconds when the server acknowledged the lease, and when it is
    /// to be renewed (T1), rebound (T2) and when it expires.
    pub acquired_unix: u64,
    pub renew_unix: u64,
    pub rebind_unix: u64,
    pub expires_unix: u64,
    /// How many times this lease was extended by a renewal or rebinding.
    pub renewals: u32,
    #[serde(skip)]
    pub acquired: Instant,
}

impl Lease {
    pub fn renew_at(&self) -> Instant {
        self.acquired + Duration::from_secs(self.renew_secs.into())
    }
    pub fn rebind_at(&self) -> Instant {
        self.acquired + Duration::from_secs(self.rebind_secs.into())
    }
    pub fn expires_at(&self) -> Instant {
        self.acquired + Duration::from_secs(self.lease_secs.into())
    }
}

/// What the client tells the addressing code.
#[derive(Debug, Clone)]
pub enum Event {
    /// A new lease (first bind, or after a NAK or expiry): configure it.
    Bound(Lease),
    /// The same address, extended: refresh times (and options).
    Extended(Lease),
    /// The lease is gone (expired or NAKed): deconfigure it.
    Lost { lease: Lease, reason: String },
}

/// Client timing; the defaults follow RFC 2131 but start faster, because a
/// booting node waits on its first lease.
#[derive(Debug, Clone)]
pub struct Timing {
    pub first_retransmit: Duration,
    pub max_retransmit: Duration,
    /// Requests sent in REQUESTING before going back to INIT.
    pub request_tries: u32,
    /// Floor of the wait between renew/rebind retransmissions (RFC: 60 s).
    pub min_renew_retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            first_retransmit: Duration::from_secs(1),
            max_retransmit: Duration::from_secs(32),
            request_tries: 4,
            min_renew_retry: Duration::from_secs(60),
        }
    }
}

/// A small xorshift generator for transaction ids and jitter: neither needs
/// to be unpredictable, only different between nodes and attempts.
struct Rng(u64);

impl Rng {
    fn new(mac: [u8; 6]) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut seed = nanos ^ u64::from(std::process::id()) << 32;
        for b in mac {
            seed = seed.rotate_left(8) ^ u64::from(b);
        }
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn xid(&mut self) -> u32 {
        self.next() as u32
    }
    /// `d` plus or minus up to a quarter of it.
    fn jitter(&mut self, d: Duration) -> Duration {
        let quarter = d.as_millis() as u64 / 4;
        if quarter == 0 {
            return d;
        }
        let offset = self.next() % (2 * quarter);
        Duration::from_millis(d.as_millis() as u64 - quarter + offset)
    }
}

const PARAMS: [OptionCode; 9] = [
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::Hostname,
    OptionCode::DomainName,
    OptionCode::AddressLeaseTime,
    OptionCode::Renewal,
    OptionCode::Rebinding,
    OptionCode::InterfaceMtu,
];

fn base_message(xid: u32, mac: [u8; 6], kind: MessageType, ciaddr: Ipv4Addr) -> Message {
    let mut m = Message::new_with_id(
        xid,
        ciaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    m.set_opcode(Opcode::BootRequest);
    m.set_flags(Flags::default());
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    let mut client_id = vec![1u8];
    client_id.extend_from_slice(&mac);
    opts.insert(DhcpOption::ClientIdentifier(client_id));
    if kind != MessageType::Release {
        opts.insert(DhcpOption::ParameterRequestList(PARAMS.to_vec()));
        opts.insert(DhcpOption::MaxMessageSize(1500));
    }
    m
}

pub fn discover(xid: u32, mac: [u8; 6]) -> Message {
    base_message(xid, mac, MessageType::Discover, Ipv4Addr::UNSPECIFIED)
}

/// REQUEST in SELECTING: names the offered address and the chosen server.
pub fn request_offer(xid: u32, mac: [u8; 6], address: Ipv4Addr, server: Ipv4Addr) -> Message {
    let mut m = base_message(xid, mac, MessageType::Request, Ipv4Addr::UNSPECIFIED);
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(address));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    m
}

/// REQUEST in RENEWING/REBINDING: the address goes in ciaddr, no server id.
pub fn request_extend(xid: u32, mac: [u8; 6], address: Ipv4Addr) -> Message {
    base_message(xid, mac, MessageType::Request, address)
}

pub fn release(xid: u32, mac: [u8; 6], lease: &Lease) -> Message {
    let mut m = base_message(xid, mac, MessageType::Release, lease.address);
    m.opts_mut()
        .insert(DhcpOption::ServerIdentifier(lease.server));
    m
}

/// Why a reply was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// Not a DHCP message at all (or one that does not decode).
    Malformed(String),
    /// A DHCP message, but not an answer to us (other xid, other client).
    NotOurs,
    /// Ours, but unusable: the reason.
    Unusable(String),
}

/// What a reply to us says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Offer { address: Ipv4Addr, server: Ipv4Addr },
    Ack(LeaseFields),
    Nak(String),
}

/// The lease part of an ACK, before it gets its times anchored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseFields {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub hostname: Option<String>,
    pub domain: Option<String>,
    pub server: Option<Ipv4Addr>,
    pub lease_secs: u32,
    pub renew_secs: u32,
    pub rebind_secs: u32,
}

fn usable_host(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback())
}

/// Decodes and checks one reply payload against our `xid` and `mac`.
pub fn parse_reply(payload: &[u8], xid: u32, mac: [u8; 6]) -> Result<Reply, Rejected> {
    let msg = Message::from_bytes(payload).map_err(|e| Rejected::Malformed(e.to_string()))?;
    if msg.opcode() != Opcode::BootReply
        || msg.xid() != xid
        || msg.chaddr().get(..6) != Some(&mac[..])
    {
        return Err(Rejected::NotOurs);
    }
    let opts = msg.opts();
    let server = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => Some(*s),
        _ => None,
    };
    match opts.msg_type() {
        Some(MessageType::Offer) => {
            let address = msg.yiaddr();
            if !usable_host(address) {
                return Err(Rejected::Unusable(format!("offer of address {address}")));
            }
            let server = server
                .ok_or_else(|| Rejected::Unusable("offer without a server identifier".into()))?;
            Ok(Reply::Offer { address, server })
        }
        Some(MessageType::Ack) => lease_fields(&msg, server).map(Reply::Ack),
        Some(MessageType::Nak) => {
            let why = match opts.get(OptionCode::Message) {
                Some(DhcpOption::Message(m)) => m.clone(),
                _ => "no reason given".to_string(),
            };
            Ok(Reply::Nak(why))
        }
        other => Err(Rejected::Unusable(format!("message type {other:?}"))),
    }
}

fn lease_fields(msg: &Message, server: Option<Ipv4Addr>) -> Result<LeaseFields, Rejected> {
    let opts = msg.opts();
    let address = msg.yiaddr();
    if !usable_host(address) {
        return Err(Rejected::Unusable(format!("ack of address {address}")));
    }
    let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) if *t > 0 => *t,
        _ => return Err(Rejected::Unusable("ack without a lease time".into())),
    };
    let prefix = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => {
            let bits = u32::from(*m);
            if bits.leading_ones() != bits.count_ones() || bits.count_ones() == 0 {
                return Err(Rejected::Unusable(format!(
                    "subnet mask {m} is not contiguous"
                )));
            }
            bits.count_ones() as u8
        }
        // RFC 2131 leaves the mask optional; a /32 would leave the gateway
        // off-link, so assume the common /24.
        _ => 24,
    };
    let gateway = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.iter().copied().find(|g| usable_host(*g)),
        _ => None,
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => {
            d.iter().copied().filter(|a| usable_host(*a)).collect()
        }
        _ => Vec::new(),
    };
    let hostname = match opts.get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) if valid_hostname(h) => Some(h.clone()),
        _ => None,
    };
    let domain = match opts.get(OptionCode::DomainName) {
        Some(DhcpOption::DomainName(d))
            if !d.is_empty() && d.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Some(d.clone())
        }
        _ => None,
    };
    // Sanitise server-given T1/T2: T1 <= T2 <= lease, defaults 1/2 and 7/8.
    let rebind_secs = match opts.get(OptionCode::Rebinding) {
        Some(DhcpOption::Rebinding(t)) if *t > 0 && *t <= lease_secs => *t,
        _ => (u64::from(lease_secs) * 7 / 8) as u32,
    };
    let renew_secs = match opts.get(OptionCode::Renewal) {
        Some(DhcpOption::Renewal(t)) if *t > 0 && *t <= rebind_secs => *t,
        _ => (lease_secs / 2).min(rebind_secs),
    };
    Ok(LeaseFields {
        address,
        prefix,
        gateway,
        dns,
        hostname,
        domain,
        server,
        lease_secs,
        renew_secs,
        rebind_secs,
    })
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && !h.starts_with('-')
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The client on one link.
pub struct Client {
    sock: PacketSocket,
    ifname: String,
    mac: [u8; 6],
    timing: Timing,
    rng: Rng,
    /// Replies ignored so far; logged in full only now and then so that a
    /// flood of garbage cannot flood the log.
    ignored: u64,
}

enum Outcome {
    Reply(Reply),
    Timeout,
}

impl Client {
    pub fn new(ifindex: u32, ifname: &str, mac: [u8; 6], timing: Timing) -> std::io::Result<Self> {
        Ok(Client {
            sock: PacketSocket::open(ifindex)?,
            ifname: ifname.to_string(),
            mac,
            timing,
            rng: Rng::new(mac),
            ignored: 0,
        })
    }

    async fn send_broadcast(&self, msg: &Message, src: Ipv4Addr) {
        let payload = match msg.to_vec() {
            Ok(p) => p,
            Err(e) => {
                return tracing::error!("dhcp: cannot encode {:?}: {e}", msg.opts().msg_type())
            }
        };
        let pkt = packet::build_udp(
            src,
            Ipv4Addr::BROADCAST,
            DHCP_CLIENT_PORT,
            DHCP_SERVER_PORT,
            &payload,
        );
        if let Err(e) = self.sock.send_broadcast(&pkt).await {
            tracing::warn!("dhcp: {}: send: {e}", self.ifname);
        }
    }

    /// Sends from our leased address to the server through the kernel's UDP
    /// stack (RENEWING and RELEASE are unicast and need routing and ARP).
    fn send_unicast(&self, msg: &Message, from: Ipv4Addr, to: Ipv4Addr) {
        let res = (|| -> std::io::Result<()> {
            let payload = msg
                .to_vec()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            let sock = UdpSocket::bind(SocketAddrV4::new(from, DHCP_CLIENT_PORT))?;
            sock.send_to(&payload, SocketAddrV4::new(to, DHCP_SERVER_PORT))?;
            Ok(())
        })();
        if let Err(e) = res {
            tracing::warn!("dhcp: {}: unicast to {to}: {e}", self.ifname);
        }
    }

    /// Waits until `deadline` for a reply to `xid`; everything else is
    /// skipped, garbage with a log line.
    /// Logs an ignored reply: the first 10, then every power of two.
    fn ignored(&mut self, why: std::fmt::Arguments<'_>) {
        self.ignored += 1;
        let n = self.ignored;
        if n <= 10 || n.is_power_of_two() {
            tracing::warn!("dhcp: {}: ignoring {why} ({n} ignored so far)", self.ifname);
        }
    }

    async fn wait_reply(&mut self, xid: u32, deadline: Instant) -> Outcome {
        let mut buf = vec![0u8; 4096];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Outcome::Timeout;
            }
            let n = match tokio::time::timeout(deadline - now, self.sock.recv(&mut buf)).await {
                Err(_) => return Outcome::Timeout,
                Ok(Err(e)) => {
                    tracing::warn!("dhcp: {}: receive: {e}", self.ifname);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Ok(Ok(n)) => n,
            };
            let Some(dgram) = packet::parse_udp(&buf[..n]) else {
                continue;
            };
            if dgram.dst_port != DHCP_CLIENT_PORT {
                continue;
            }
            match parse_reply(dgram.payload, xid, self.mac) {
                Ok(reply) => return Outcome::Reply(reply),
                Err(Rejected::NotOurs) => {}
                Err(Rejected::Malformed(e)) => self.ignored(format_args!(
                    "malformed reply from {}:{} ({} bytes): {e}",
                    dgram.src,
                    dgram.src_port,
                    dgram.payload.len()
                )),
                Err(Rejected::Unusable(e)) => {
                    self.ignored(format_args!("reply from {}: {e}", dgram.src))
                }
            }
        }
    }

    fn backoff(&mut self, attempt: u32) -> Duration {
        let base = self
            .timing
            .first_retransmit
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.timing.max_retransmit);
        self.rng.jitter(base)
    }

    /// INIT through BOUND: returns the first acknowledged lease, or `None`
    /// when `give_up` passes first.
    pub async fn acquire(&mut self, give_up: Option<Instant>) -> Option<Lease> {
        'init: loop {
            let xid = self.rng.xid();
            let disc = discover(xid, self.mac);
            let mut attempt = 0;
            let (address, server) = loop {
                if give_up.is_some_and(|g| Instant::now() >= g) {
                    return None;
                }
                tracing::debug!("dhcp: {}: DISCOVER xid {xid:#x}", self.ifname);
                self.send_broadcast(&disc, Ipv4Addr::UNSPECIFIED).await;
                let wait = self.backoff(attempt);
                attempt += 1;
                match self.wait_reply(xid, Instant::now() + wait).await {
                    Outcome::Reply(Reply::Offer { address, server }) => break (address, server),
                    Outcome::Reply(other) => {
                        tracing::warn!("dhcp: {}: expected an OFFER, got {other:?}", self.ifname)
                    }
                    Outcome::Timeout => {}
                }
            };
            tracing::info!("dhcp: {}: offer of {address} from {server}", self.ifname);
            let req = request_offer(xid, self.mac, address, server);
            for attempt in 0..self.timing.request_tries {
                self.send_broadcast(&req, Ipv4Addr::UNSPECIFIED).await;
                let wait = self.backoff(attempt);
                match self.wait_reply(xid, Instant::now() + wait).await {
                    Outcome::Reply(Reply::Ack(f)) if f.address == address => {
                        return Some(self.anchor(f, server, 0));
                    }
                    Outcome::Reply(Reply::Ack(f)) => tracing::warn!(
                        "dhcp: {}: ACK for {} after requesting {address}: ignored",
                        self.ifname,
                        f.address
                    ),
                    Outcome::Reply(Reply::Nak(why)) => {
                        tracing::warn!(
                            "dhcp: {}: NAK from {server}: {why}; starting over",
                            self.ifname
                        );
                        tokio::time::sleep(self.timing.first_retransmit).await;
                        continue 'init;
                    }
                    // A second server's late OFFER: we already chose.
                    Outcome::Reply(Reply::Offer { .. }) | Outcome::Timeout => {}
                }
            }
            tracing::warn!("dhcp: {}: no ACK from {server}; starting over", self.ifname);
        }
    }

    fn anchor(&self, f: LeaseFields, server: Ipv4Addr, renewals: u32) -> Lease {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Lease {
            address: f.address,
            prefix: f.prefix,
            gateway: f.gateway,
            dns: f.dns,
            hostname: f.hostname,
            domain: f.domain,
            server: f.server.unwrap_or(server),
            lease_secs: f.lease_secs,
            renew_secs: f.renew_secs,
            rebind_secs: f.rebind_secs,
            acquired_unix: now,
            renew_unix: now + u64::from(f.renew_secs),
            rebind_unix: now + u64::from(f.rebind_secs),
            expires_unix: now + u64::from(f.lease_secs),
            renewals,
            acquired: Instant::now(),
        }
    }

    /// BOUND -> RENEWING -> REBINDING: returns the extended lease, or the
    /// reason it is lost (NAK or expiry).
    async fn extend(&mut self, lease: &Lease) -> Result<Lease, String> {
        tokio::time::sleep_until(lease.renew_at().into()).await;
        let xid = self.rng.xid();
        let req = request_extend(xid, self.mac, lease.address);
        loop {
            let now = Instant::now();
            if now >= lease.expires_at() {
                return Err(format!("lease of {} expired", lease.address));
            }
            let rebinding = now >= lease.rebind_at();
            let until = if rebinding {
                lease.expires_at()
            } else {
                lease.rebind_at()
            };
            if rebinding {
                tracing::info!(
                    "dhcp: {}: REBINDING {} (broadcast)",
                    self.ifname,
                    lease.address
                );
                self.send_broadcast(&req, lease.address).await;
            } else {
                tracing::info!(
                    "dhcp: {}: RENEWING {} with {}",
                    self.ifname,
                    lease.address,
                    lease.server
                );
                self.send_unicast(&req, lease.address, lease.server);
            }
            // RFC 2131 4.4.5: wait half the time left to T2 (or expiry).
            let wait = ((until - now) / 2)
                .max(self.timing.min_renew_retry)
                .min(until - now);
            match self.wait_reply(xid, now + wait).await {
                Outcome::Reply(Reply::Ack(f)) if f.address == lease.address => {
                    return Ok(self.anchor(f, lease.server, lease.renewals + 1));
                }
                Outcome::Reply(Reply::Ack(f)) => {
                    tracing::warn!(
                        "dhcp: {}: ACK for {} while extending {}: ignored",
                        self.ifname,
                        f.address,
                        lease.address
                    )
                }
                Outcome::Reply(Reply::Nak(why)) => {
                    return Err(format!("server refused renewal: {why}"))
                }
                Outcome::Reply(Reply::Offer { .. }) | Outcome::Timeout => {}
            }
        }
    }

    /// Runs for ever: acquires (unless given a lease `first`, already
    /// reported), reports, renews, rebinds; after a loss it starts over.
    /// Stops when `events` is closed.
    pub async fn run(mut self, mut first: Option<Lease>, events: mpsc::Sender<Event>) {
        loop {
            let mut lease = match first.take() {
                Some(l) => l,
                None => {
                    let Some(l) = self.acquire(None).await else {
                        continue;
                    };
                    if events.send(Event::Bound(l.clone())).await.is_err() {
                        return;
                    }
                    l
                }
            };
            loop {
                match self.extend(&lease).await {
                    Ok(extended) => {
                        tracing::info!(
                            "dhcp: {}: lease of {} extended for {} s",
                            self.ifname,
                            extended.address,
                            extended.lease_secs
                        );
                        lease = extended;
                        if events.send(Event::Extended(lease.clone())).await.is_err() {
                            return;
                        }
                    }
                    Err(reason) => {
                        tracing::warn!("dhcp: {}: {reason}", self.ifname);
                        if events.send(Event::Lost { lease, reason }).await.is_err() {
                            return;
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Sends DHCPRELEASE for `lease` (unicast to its server).
    pub fn release(&mut self, lease: &Lease) {
        let msg = release(self.rng.xid(), self.mac, lease);
        self.send_unicast(&msg, lease.address, lease.server);
    }
}

/// Sends DHCPRELEASE for `lease` from a fresh client state (used at shutdown,
/// after the running client task was stopped).
pub fn send_release(mac: [u8; 6], lease: &Lease) -> std::io::Result<()> {
    let msg = release(Rng::new(mac).xid(), mac, lease);
    let payload = msg
        .to_vec()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    let sock = UdpSocket::bind(SocketAddrV4::new(lease.address, DHCP_CLIENT_PORT))?;
    sock.send_to(&payload, SocketAddrV4::new(lease.server, DHCP_SERVER_PORT))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn server_reply(xid: u32, kind: MessageType, opts: Vec<DhcpOption>) -> Vec<u8> {
        let mut m = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 2, 15),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        m.set_opcode(Opcode::BootReply);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in opts {
            m.opts_mut().insert(o);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn discover_asks_for_the_lease_options() {
        let d = Message::from_bytes(&discover(7, MAC).to_vec().unwrap()).unwrap();
        assert_eq!(d.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(d.xid(), 7);
        assert_eq!(&d.chaddr()[..6], &MAC);
        match d.opts().get(OptionCode::ParameterRequestList) {
            Some(DhcpOption::ParameterRequestList(p)) => {
                assert!(
                    p.contains(&OptionCode::Router) && p.contains(&OptionCode::DomainNameServer)
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ack_becomes_a_lease_with_sane_timers() {
        let server = Ipv4Addr::new(10, 0, 2, 2);
        let ack = server_reply(
            9,
            MessageType::Ack,
            vec![
                DhcpOption::ServerIdentifier(server),
                DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
                DhcpOption::Router(vec![server]),
                DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 0, 2, 3)]),
                DhcpOption::AddressLeaseTime(3600),
                // T1 beyond T2: must be replaced by the default.
                DhcpOption::Renewal(4000),
                DhcpOption::Hostname("node-1".into()),
            ],
        );
        let Reply::Ack(f) = parse_reply(&ack, 9, MAC).unwrap() else {
            panic!()
        };
        assert_eq!(f.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(f.prefix, 24);
        assert_eq!(f.gateway, Some(server));
        assert_eq!(f.dns, [Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(f.hostname.as_deref(), Some("node-1"));
        assert_eq!(
            (f.lease_secs, f.rebind_secs, f.renew_secs),
            (3600, 3150, 1800)
        );
    }

    #[test]
    fn garbage_and_strangers_are_rejected_not_fatal() {
        assert!(matches!(
            parse_reply(b"", 1, MAC),
            Err(Rejected::Malformed(_))
        ));
        assert!(matches!(
            parse_reply(&[0xff; 300], 1, MAC),
            Err(Rejected::Malformed(_)) | Err(Rejected::NotOurs)
        ));
        let offer = server_reply(
            1,
            MessageType::Offer,
            vec![DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2))],
        );
        assert_eq!(
            parse_reply(&offer, 2, MAC),
            Err(Rejected::NotOurs),
            "other xid"
        );
        assert!(matches!(
            parse_reply(&offer, 1, MAC),
            Ok(Reply::Offer { .. })
        ));
        // Truncated at every length: never a panic.
        for n in 0..offer.len() {
            let _ = parse_reply(&offer[..n], 1, MAC);
        }
        let no_server = server_reply(1, MessageType::Offer, vec![]);
        assert!(matches!(
            parse_reply(&no_server, 1, MAC),
            Err(Rejected::Unusable(_))
        ));
        let no_time = server_reply(1, MessageType::Ack, vec![]);
        assert!(matches!(
            parse_reply(&no_time, 1, MAC),
            Err(Rejected::Unusable(_))
        ));
        let bad_mask = server_reply(
            1,
            MessageType::Ack,
            vec![
                DhcpOption::AddressLeaseTime(60),
                DhcpOption::SubnetMask(Ipv4Addr::new(255, 0, 255, 0)),
            ],
        );
        assert!(matches!(
            parse_reply(&bad_mask, 1, MAC),
            Err(Rejected::Unusable(_))
        ));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let mut rng = Rng::new(MAC);
        for _ in 0..100 {
            let d = rng.jitter(Duration::from_secs(4));
            assert!(
                d >= Duration::from_secs(3) && d <= Duration::from_secs(5),
                "{d:?}"
            );
        }
    }
}
