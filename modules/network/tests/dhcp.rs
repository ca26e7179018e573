//! The management side in fresh network namespaces: a real DHCP exchange
//! with dnsmasq (bind, renewal at T1, rebinding at T2, release), the static
//! ip= form, a malformed ip= and a DHCP server that sends garbage.

mod common;

use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dhcp_lease_is_bound_renewed_rebound_and_released() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lan = lan();
    // dnsmasq's shortest lease is 2 minutes, but it hands out the T1/T2 we
    // set: renewal after 3 s and rebinding after 6 s happen within the test.
    let mut server = dnsmasq(
        &lan.peer,
        "up0",
        dir.path(),
        &[
            "--dhcp-option=option:T1,3",
            "--dhcp-option=option:T2,6",
            &format!("--dhcp-host={NODE_MAC},node-a"),
        ],
    );
    let mut node = module(&lan.node, dir.path(), "console=ttyS0 ip=dhcp");
    let bound = node.wait_line("network: zn0 bound", Duration::from_secs(30));
    eprintln!("FIGURE dhcp bound: {bound}");
    assert!(bound.contains(" via 10.99.0.1 in "), "{bound}");
    let p = proxy(dir.path()).await;
    let s = state(&p).await;
    let addr = v4_on(&s, "zn0");
    assert_eq!(addr.len(), 1, "{s:#}");
    assert!(
        addr[0].starts_with("10.99.0.") && addr[0].ends_with("/24"),
        "{addr:?}"
    );
    assert!(has_default_via(&s, "10.99.0.1"), "{s:#}");
    assert_eq!(s["mode"], "dhcp");
    assert_eq!(s["mgmt_nic"], "eth0");
    assert_eq!(s["hostname"], "node-a", "host name from the lease");
    assert_eq!(s["lease"]["server"], "10.99.0.1");
    assert_eq!(s["lease"]["lease_secs"], 120);
    assert_eq!(s["lease"]["renew_secs"], 3);
    let at = |k: &str| s["lease"][k].as_u64().unwrap();
    assert_eq!(at("expires_unix") - at("acquired_unix"), 120);
    assert_eq!(at("renew_unix") - at("acquired_unix"), 3);
    assert_eq!(at("rebind_unix") - at("acquired_unix"), 6);
    // zn0 carries the NIC's MAC and the NIC is its port.
    let ifs = s["interfaces"].as_array().unwrap();
    let zn0 = ifs.iter().find(|l| l["name"] == "zn0").unwrap();
    let eth0 = ifs.iter().find(|l| l["name"] == "eth0").unwrap();
    assert_eq!(zn0["mac"], NODE_MAC);
    assert_eq!(eth0["master"], zn0["index"]);
    let resolv = std::fs::read_to_string(dir.path().join("resolv.conf")).unwrap();
    assert!(resolv.contains("nameserver 10.99.0.1"), "{resolv}");
    assert!(lan.node.ping("10.99.0.1"), "the node reaches its gateway");

    // T1: a unicast renewal that dnsmasq acknowledges.
    wait_state(&p, Duration::from_secs(15), "a renewal", |s| {
        s["lease"]["renewals"].as_u64() >= Some(1)
    })
    .await;
    assert!(node.count("RENEWING") >= 1);
    assert!(server.count("DHCPACK") >= 2, "{}", server.output());

    // T2: with unicast to the server dropped, only a broadcast rebinding
    // can extend the lease.
    let nft = nft_path();
    let rules = "table ip t { chain i { type filter hook input priority 0; ip daddr 10.99.0.1 udp dport 67 drop; }; }";
    let out = lan.peer.exec(&[nft, rules]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = state(&p).await["lease"]["renewals"].as_u64().unwrap();
    wait_state(&p, Duration::from_secs(20), "a rebinding", |s| {
        s["lease"]["renewals"].as_u64() > Some(before)
    })
    .await;
    node.wait_line("REBINDING", Duration::from_secs(1));
    lan.peer.exec(&[nft, "delete table ip t"]);

    // SIGTERM: DHCPRELEASE to the server, address gone, clean exit.
    let status = node.terminate();
    assert!(status.success(), "exit {status:?}");
    server.wait_line("DHCPRELEASE", Duration::from_secs(5));
    let out = lan.node.exec(&["ip", "-4", "addr", "show", "dev", "zn0"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("10.99.0."),
        "address left on zn0"
    );
    assert!(server.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_ip_is_applied() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lan = lan();
    let node = module(
        &lan.node,
        dir.path(),
        "ip=10.99.0.7::10.99.0.1:255.255.255.0:static-a:eth0:off:10.99.0.53",
    );
    let line = node.wait_line("network: zn0 static", Duration::from_secs(20));
    assert!(line.contains("10.99.0.7/24 via 10.99.0.1"), "{line}");
    let p = proxy(dir.path()).await;
    let s = state(&p).await;
    assert_eq!(v4_on(&s, "zn0"), ["10.99.0.7/24"]);
    assert!(has_default_via(&s, "10.99.0.1"));
    assert_eq!(s["mode"], "static");
    assert_eq!(s["hostname"], "static-a");
    let resolv = std::fs::read_to_string(dir.path().join("resolv.conf")).unwrap();
    assert!(resolv.contains("nameserver 10.99.0.53"), "{resolv}");
    assert!(lan.node.ping("10.99.0.1"));
    assert!(lan.peer.ping("10.99.0.7"));
    // IPv6 is the kernel's: router advertisements accepted on zn0.
    let ra = lan
        .node
        .exec(&["cat", "/proc/sys/net/ipv6/conf/zn0/accept_ra"]);
    assert_eq!(String::from_utf8_lossy(&ra.stdout).trim(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ip_is_reported_and_falls_back_to_dhcp() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lan = lan();
    let _server = dnsmasq(&lan.peer, "up0", dir.path(), &[]);
    // A netmask with a hole.
    let node = module(
        &lan.node,
        dir.path(),
        "ip=10.99.0.7::10.99.0.1:255.0.255.0::eth0:off zeronode.hostname=named-node",
    );
    let warn = node.wait_line("falling back to DHCP", Duration::from_secs(10));
    assert!(
        warn.contains("malformed") && warn.contains("contiguous"),
        "{warn}"
    );
    node.wait_line("network: zn0 bound 10.99.0.", Duration::from_secs(30));
    let p = proxy(dir.path()).await;
    let s = state(&p).await;
    assert_eq!(s["mode"], "dhcp");
    assert_eq!(s["hostname"], "named-node", "zeronode.hostname= wins");
    assert!(s["warnings"][0]
        .as_str()
        .unwrap()
        .contains("falling back to DHCP"));
}

/// Answers every DHCP request in `ns` with garbage of several kinds until
/// stopped.
fn garbage_server(
    ns: &Netns,
    ifname: &str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    let path = ns.path();
    let ifname = ifname.to_string();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let sock = UdpSocket::bind("0.0.0.0:67").unwrap();
        nix::sys::socket::setsockopt(
            &sock,
            nix::sys::socket::sockopt::BindToDevice,
            &std::ffi::OsString::from(ifname),
        )
        .unwrap();
        sock.set_broadcast(true).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 1500];
        let mut sent = 0;
        while !stop.load(Ordering::SeqCst) {
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if n < 240 {
                continue;
            }
            let req = &buf[..n];
            let mut replies: Vec<Vec<u8>> = Vec::new();
            // Plain noise.
            replies.push((0..300u32).map(|i| (i * 7 + 3) as u8).collect());
            // A BOOTREPLY header with our xid, cut short.
            let mut short = req[..100].to_vec();
            short[0] = 2;
            replies.push(short);
            // A full reply with the xid and magic cookie but options that
            // overrun the packet.
            let mut overrun = req[..240].to_vec();
            overrun[0] = 2;
            overrun.extend_from_slice(&[53, 1, 2, 54, 200, 10, 99]);
            replies.push(overrun);
            // A well-formed OFFER of 0.0.0.0 without a server identifier.
            let mut zero = req[..240].to_vec();
            zero[0] = 2;
            zero.extend_from_slice(&[53, 1, 2, 255]);
            replies.push(zero);
            // An ACK for 10.99.0.66 without a lease time, mask with a hole.
            let mut ack = req[..240].to_vec();
            ack[0] = 2;
            ack[16..20].copy_from_slice(&[10, 99, 0, 66]);
            ack.extend_from_slice(&[53, 1, 5, 54, 4, 10, 99, 0, 1, 1, 4, 255, 0, 255, 0, 255]);
            replies.push(ack);
            for r in replies {
                if sock.send_to(&r, "255.255.255.255:68").is_ok() {
                    sent += 1;
                }
            }
        }
        sent
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_dhcp_server_is_logged_and_survived() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lan = lan();
    let stop = Arc::new(AtomicBool::new(false));
    let junk = garbage_server(&lan.peer, "up0", stop.clone());
    let mut node = module(&lan.node, dir.path(), "ip=dhcp");
    node.wait_line("ignoring malformed reply", Duration::from_secs(20));
    node.wait_line("ignoring reply from", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let sent = junk.join().unwrap();
    assert!(sent >= 10, "garbage sent: {sent}");
    assert!(node.alive(), "the module survived {sent} garbage replies");
    assert_eq!(node.count("network: zn0 bound"), 0);
    // A real server afterwards: the client still gets its lease.
    let _server = dnsmasq(&lan.peer, "up0", dir.path(), &[]);
    node.wait_line("network: zn0 bound 10.99.0.", Duration::from_secs(40));
    assert!(node.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nic_that_gets_a_lease_becomes_the_management_nic() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lan = lan();
    // eno1 sorts first and has a carrier, but nothing answers behind it.
    let dead = Netns::new("dead");
    veth(&lan.node, "eno1", &dead, "x0");
    let _server = dnsmasq(&lan.peer, "up0", dir.path(), &[]);
    // Veths are not physical NICs, so the candidates are named (in order).
    let node = module_with(
        &lan.node,
        dir.path(),
        "ip=dhcp",
        &["--mgmt", "eno1,eth0", "--candidate-timeout-ms", "2000"],
    );
    node.wait_line("no DHCP lease through eno1", Duration::from_secs(20));
    node.wait_line("network: zn0 bound 10.99.0.", Duration::from_secs(30));
    let p = proxy(dir.path()).await;
    let s = state(&p).await;
    assert_eq!(s["mgmt_nic"], "eth0", "{s:#}");
    assert_eq!(s["mgmt_mac"], NODE_MAC);
    let ifs = s["interfaces"].as_array().unwrap();
    let zn0 = ifs.iter().find(|l| l["name"] == "zn0").unwrap();
    let eno1 = ifs.iter().find(|l| l["name"] == "eno1").unwrap();
    assert!(eno1["master"].is_null(), "eno1 was taken off zn0: {eno1}");
    assert_eq!(zn0["mac"], NODE_MAC, "zn0 took the winning NIC's MAC");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgmt_on_the_command_line_names_the_nic_by_mac() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lan = lan();
    let other = Netns::new("other");
    veth(&lan.node, "eno1", &other, "x0");
    let _server = dnsmasq(&lan.peer, "up0", dir.path(), &[]);
    let node = module_with(
        &lan.node,
        dir.path(),
        &format!("ip=dhcp zeronode.mgmt={}", NODE_MAC.to_uppercase()),
        &[],
    );
    node.wait_line("network: zn0 bound 10.99.0.", Duration::from_secs(30));
    assert_eq!(
        node.count("no DHCP lease through"),
        0,
        "no other NIC was tried"
    );
    let p = proxy(dir.path()).await;
    assert_eq!(state(&p).await["mgmt_nic"], "eth0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nak_on_renewal_drops_the_address_and_gets_a_new_lease() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lan = lan();
    let server = dnsmasq(&lan.peer, "up0", dir.path(), &["--dhcp-option=option:T1,4"]);
    let node = module(&lan.node, dir.path(), "ip=dhcp");
    node.wait_line("network: zn0 bound 10.99.0.", Duration::from_secs(30));
    let p = proxy(dir.path()).await;
    let old = state(&p).await["lease"]["address"]
        .as_str()
        .unwrap()
        .to_string();
    // Before T1, the server comes back serving another range, its leases
    // forgotten:
    // being authoritative, it refuses the renewal of the old address.
    drop(server);
    std::fs::remove_file(dir.path().join("dnsmasq.leases")).unwrap();
    let mut cmd = std::process::Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &lan.peer.name,
        "dnsmasq",
        "--no-daemon",
        "--port=0",
        "--interface=up0",
    ])
    .args([
        "--bind-interfaces",
        "--dhcp-authoritative",
        "--no-ping",
        "--log-dhcp",
        "--pid-file=",
        "--conf-file=/dev/null",
    ])
    .args([
        "--dhcp-range=10.99.0.150,10.99.0.199,255.255.255.0,2m",
        "--dhcp-option=option:router,10.99.0.1",
    ])
    .arg(format!(
        "--dhcp-leasefile={}",
        dir.path().join("dnsmasq.leases").display()
    ));
    let server = Proc::spawn(cmd);
    server.wait_line("DHCPNAK", Duration::from_secs(20));
    node.wait_line("server refused renewal", Duration::from_secs(5));
    let s = wait_state(
        &p,
        Duration::from_secs(20),
        "a lease in the new range",
        |s| {
            s["lease"]["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("10.99.0.1") && a.len() == 11)
        },
    )
    .await;
    let new = s["lease"]["address"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(
        v4_on(&s, "zn0"),
        [format!("{new}/24")],
        "only the new address is left"
    );
    assert_eq!(node.count("network: zn0 bound"), 2);
}

/// A minimal DHCP server in `ns` with a 4 s lease (dnsmasq will not go below
/// 2 minutes): offers 10.99.0.42 and acknowledges requests while `serve` is
/// set, and stays silent otherwise. Returns the number of ACKs sent.
fn short_lease_server(
    ns: &Netns,
    ifname: &str,
    serve: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
    use dhcproto::{Decodable, Encodable};
    use std::net::Ipv4Addr;
    let path = ns.path();
    let ifname = ifname.to_string();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let sock = UdpSocket::bind("0.0.0.0:67").unwrap();
        nix::sys::socket::setsockopt(
            &sock,
            nix::sys::socket::sockopt::BindToDevice,
            &std::ffi::OsString::from(ifname),
        )
        .unwrap();
        sock.set_broadcast(true).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let server = Ipv4Addr::new(10, 99, 0, 1);
        let mut buf = [0u8; 1500];
        let mut acks = 0;
        while !stop.load(Ordering::SeqCst) {
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if !serve.load(Ordering::SeqCst) {
                continue;
            }
            let Ok(req) = Message::from_bytes(&buf[..n]) else {
                continue;
            };
            let kind = match req.opts().msg_type() {
                Some(MessageType::Discover) => MessageType::Offer,
                Some(MessageType::Request) => MessageType::Ack,
                _ => continue,
            };
            let mut reply = Message::new_with_id(
                req.xid(),
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::new(10, 99, 0, 42),
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                &req.chaddr()[..6],
            );
            reply.set_opcode(Opcode::BootReply);
            let o = reply.opts_mut();
            o.insert(DhcpOption::MessageType(kind));
            o.insert(DhcpOption::ServerIdentifier(server));
            o.insert(DhcpOption::AddressLeaseTime(4));
            o.insert(DhcpOption::Renewal(2));
            o.insert(DhcpOption::Rebinding(3));
            o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
            o.insert(DhcpOption::Router(vec![server]));
            if sock
                .send_to(&reply.to_vec().unwrap(), "255.255.255.255:68")
                .is_ok()
                && kind == MessageType::Ack
            {
                acks += 1;
            }
        }
        acks
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_removed_and_the_client_starts_over() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lan = lan();
    let serve = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let server = short_lease_server(&lan.peer, "up0", serve.clone(), stop.clone());
    let node = module(&lan.node, dir.path(), "ip=dhcp");
    node.wait_line("network: zn0 bound 10.99.0.42/24", Duration::from_secs(30));
    let p = proxy(dir.path()).await;
    // The server goes silent: renewal at 2 s and rebinding at 3 s go
    // unanswered, and at 4 s the lease is gone.
    serve.store(false, Ordering::SeqCst);
    let s = wait_state(&p, Duration::from_secs(10), "the lease to expire", |s| {
        s["lease"].is_null()
    })
    .await;
    assert!(
        v4_on(&s, "zn0").is_empty(),
        "the address left with the lease: {s:#}"
    );
    assert!(!has_default_via(&s, "10.99.0.1"));
    node.wait_line("expired", Duration::from_secs(1));
    assert!(node.count("RENEWING") >= 1 && node.count("REBINDING") >= 1);
    // Back to INIT: when the server answers again, a new lease is bound.
    serve.store(true, Ordering::SeqCst);
    wait_state(&p, Duration::from_secs(40), "a new lease", |s| {
        s["lease"]["address"] == "10.99.0.42"
    })
    .await;
    assert_eq!(node.count("network: zn0 bound"), 2);
    stop.store(true, Ordering::SeqCst);
    assert!(server.join().unwrap() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_waiting_for_a_lease_exits_cleanly() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lan = lan();
    // No server: the client keeps sending DISCOVERs.
    let mut node = module(&lan.node, dir.path(), "ip=dhcp");
    node.wait_line("zn0: bridge over eth0", Duration::from_secs(20));
    let p = proxy(dir.path()).await;
    assert_eq!(
        state(&p).await["mode"],
        "dhcp",
        "State answers before a lease"
    );
    let status = node.terminate();
    assert!(status.success(), "exit {status:?}");
    assert!(!dir.path().join("network.sock").exists(), "socket removed");
}
