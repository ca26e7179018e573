//! Time from process start to a bound DHCP lease on zn0, against dnsmasq in
//! a peer network namespace, over repeated cold starts of the module (fresh
//! namespaces each run: no bridge, no lease). Reads the module's own
//! "network: zn0 bound ... in N ms" line. Needs root, iproute2, dnsmasq.
//!
//! cargo bench -p zeronode-network --bench dhcp_bind

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;

const RUNS: usize = 10;

fn bound_ms(line: &str) -> u64 {
    line.split(" in ")
        .nth(1)
        .and_then(|t| t.split(" ms").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no time in {line:?}"))
}

fn main() {
    if !can_run() {
        return;
    }
    let mut dhcp = Vec::new();
    let mut stat = Vec::new();
    for _ in 0..RUNS {
        let dir = tempfile::tempdir().unwrap();
        let net = lan();
        let _server = dnsmasq(&net.peer, "up0", dir.path(), &[]);
        let mut node = module(&net.node, dir.path(), "ip=dhcp");
        dhcp.push(bound_ms(
            &node.wait_line("network: zn0 bound", Duration::from_secs(30)),
        ));
        node.terminate();
        drop(net);

        let dir = tempfile::tempdir().unwrap();
        let net = lan();
        let node = module(
            &net.node,
            dir.path(),
            "ip=10.99.0.7::10.99.0.1:255.255.255.0::eth0:off",
        );
        stat.push(bound_ms(
            &node.wait_line("network: zn0 static", Duration::from_secs(30)),
        ));
    }
    println!();
    println!(
        "| process start -> address on zn0 ({RUNS} cold starts) | min ms | median ms | max ms |"
    );
    println!("|---|---|---|---|");
    for (name, mut v) in [("DHCP (dnsmasq, veth)", dhcp), ("static ip=", stat)] {
        v.sort_unstable();
        println!(
            "| {name} | {} | {} | {} |",
            v[0],
            v[v.len() / 2],
            v[v.len() - 1]
        );
    }
}
