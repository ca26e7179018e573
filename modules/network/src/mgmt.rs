//! The management side: lo, the management NIC, the bridge zn0 that carries
//! the NIC's MAC, and its addressing (DHCP or static `ip=`), resolv.conf
//! and the host name.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rtnetlink::Handle;
use tokio::sync::mpsc;
use zeronode_types::boot_config::IpConfig;

use crate::dhcp::{self, Event, Lease};
use crate::links::{self, Link};
use crate::state::Shared;
use crate::{Error, MGMT_BRIDGE};

#[derive(Debug, Clone)]
pub struct Config {
    /// `--mgmt` or `zeronode.mgmt=`: interface names or MACs, comma-separated,
    /// tried in that order.
    pub mgmt: Option<String>,
    pub ip: IpConfig,
    /// `zeronode.hostname=`: wins over the lease's and ip='s host name.
    pub hostname: Option<String>,
    pub resolv_conf: PathBuf,
    pub sys_class_net: PathBuf,
    /// How long to wait for a carrier on the physical NICs.
    pub carrier_wait: Duration,
    /// How long one candidate NIC gets to win a lease when there are several.
    pub candidate_timeout: Duration,
    pub started: Instant,
}

/// The management bridge as set up.
#[derive(Debug, Clone)]
pub struct Mgmt {
    pub bridge: Link,
    pub nic: Link,
    pub mac: [u8; 6],
}

fn mac_of(link: &Link) -> Result<[u8; 6], Error> {
    links::parse_mac(&link.mac).ok_or_else(|| {
        Error::NoMgmtNic(format!(
            "{} has no Ethernet MAC ({:?})",
            link.name, link.mac
        ))
    })
}

/// Finds the link `spec` names: an interface name or a MAC.
fn find_named<'a>(all: &'a [Link], spec: &str) -> Option<&'a Link> {
    let want_mac = links::parse_mac(spec).map(|m| links::format_mac(&m));
    all.iter()
        .find(|l| l.name == spec || want_mac.as_deref() == Some(l.mac.as_str()))
}

/// Brings `lo` up and finds the candidate NICs for the management bridge,
/// best first: the named one alone, else physical NICs with carrier, else
/// all physical NICs.
pub async fn candidates(
    handle: &Handle,
    cfg: &Config,
    shared: &Shared,
) -> Result<Vec<Link>, Error> {
    let all = links::links(handle).await?;
    if let Some(lo) = all.iter().find(|l| l.name == "lo") {
        links::set_up(handle, lo.index).await?;
    }
    let named = cfg.mgmt.clone().or_else(|| match &cfg.ip {
        IpConfig::Static {
            device: Some(d), ..
        }
        | IpConfig::Dhcp { device: Some(d) } => Some(d.clone()),
        _ => None,
    });
    if let Some(spec) = named {
        // A comma-separated list: candidates in that order.
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for one in spec.split(',').filter(|s| !s.is_empty()) {
            match find_named(&all, one) {
                Some(l) if l.name != MGMT_BRIDGE && l.name != "lo" => found.push(l.clone()),
                _ => missing.push(one),
            }
        }
        if !missing.is_empty() {
            let names: Vec<&str> = all.iter().map(|l| l.name.as_str()).collect();
            let msg = format!(
                "management NIC {} not found (links: {})",
                missing.join(", "),
                names.join(", ")
            );
            tracing::error!("{msg}");
            shared.lock().warnings.push(msg);
        }
        if !found.is_empty() {
            for l in &found {
                links::set_up(handle, l.index).await?;
            }
            return Ok(found);
        }
        tracing::warn!("choosing the management NIC myself");
    }
    // After a restart of this module: keep the NIC already on zn0.
    if let Some(br) = all.iter().find(|l| l.name == MGMT_BRIDGE) {
        if let Some(port) = all.iter().find(|l| l.master == Some(br.index)) {
            return Ok(vec![port.clone()]);
        }
    }
    let mut physical: Vec<Link> = all
        .iter()
        .filter(|l| links::is_physical(&cfg.sys_class_net, l))
        .cloned()
        .collect();
    physical.sort_by(|a, b| a.name.cmp(&b.name));
    if physical.is_empty() {
        let names: Vec<&str> = all.iter().map(|l| l.name.as_str()).collect();
        return Err(Error::NoMgmtNic(format!(
            "no physical NIC among {} (use zeronode.mgmt= or --mgmt to name one)",
            names.join(", ")
        )));
    }
    for l in &physical {
        links::set_up(handle, l.index).await?;
    }
    let deadline = Instant::now() + cfg.carrier_wait;
    loop {
        let now: Vec<Link> = links::links(handle).await?;
        let with_carrier: Vec<Link> = physical
            .iter()
            .filter_map(|p| {
                now.iter()
                    .find(|l| l.index == p.index && l.carrier)
                    .cloned()
            })
            .collect();
        if !with_carrier.is_empty() {
            return Ok(with_carrier);
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                "no carrier on any NIC after {:?}; trying them all",
                cfg.carrier_wait
            );
            return Ok(physical);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates zn0 with `nic`'s MAC (so DHCP servers keep seeing the same
/// client) and enslaves `nic`; lets the kernel do SLAAC on the bridge.
pub async fn bridge(handle: &Handle, nic: &Link) -> Result<Mgmt, Error> {
    let mac = mac_of(nic)?;
    let all = links::links(handle).await?;
    // A port left from another candidate: off the bridge first.
    if let Some(br) = all.iter().find(|l| l.name == MGMT_BRIDGE) {
        for port in all
            .iter()
            .filter(|l| l.master == Some(br.index) && l.index != nic.index)
        {
            links::release_port(handle, port.index).await?;
        }
    }
    let bridge = links::ensure_bridge(handle, MGMT_BRIDGE, Some(mac)).await?;
    links::enslave(handle, nic.index, bridge.index).await?;
    wait_carrier(handle, MGMT_BRIDGE, Duration::from_secs(3)).await?;
    // 2: accept router advertisements even with forwarding on.
    if let Err(e) = links::sysctl(&format!("net/ipv6/conf/{MGMT_BRIDGE}/accept_ra"), "2") {
        tracing::warn!("IPv6 SLAAC stays off: {e}");
    }
    tracing::info!("{MGMT_BRIDGE}: bridge over {} ({})", nic.name, nic.mac);
    Ok(Mgmt {
        bridge,
        nic: nic.clone(),
        mac,
    })
}

/// A bridge drops what it is given to send until a port forwards: the
/// first DISCOVER would be lost and cost a retransmission.
async fn wait_carrier(handle: &Handle, name: &str, limit: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if links::link_by_name(handle, name)
            .await?
            .is_some_and(|l| l.carrier)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!("{name}: no carrier after {limit:?}; going on");
    Ok(())
}

fn prefix_of(mask: Ipv4Addr) -> u8 {
    u32::from(mask).count_ones() as u8
}

/// The resolv.conf text for `dns` servers and a search `domain`.
pub fn resolv_conf_text(dns: &[Ipv4Addr], domain: Option<&str>, source: &str) -> String {
    let mut s = format!("# written by zeronode-network from {source}\n");
    if let Some(d) = domain {
        s += &format!("search {d}\n");
    }
    for d in dns {
        s += &format!("nameserver {d}\n");
    }
    s
}

fn write_atomic(path: &Path, text: &str) -> Result<(), Error> {
    let tmp = path.with_extension("zeronode-tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(Error::io(format!("write {}", path.display())))
}

fn set_hostname(cfg: &Config, shared: &Shared, offered: Option<&str>) {
    let Some(name) = cfg.hostname.as_deref().or(offered) else {
        return;
    };
    match nix::unistd::sethostname(name) {
        Ok(()) => {
            tracing::info!("host name {name}");
            shared.lock().hostname = Some(name.to_string());
        }
        Err(e) => tracing::warn!("cannot set host name {name}: {e}"),
    }
}

fn since_start(cfg: &Config) -> u64 {
    cfg.started.elapsed().as_millis() as u64
}

/// Applies the static `ip=` form on zn0.
#[allow(clippy::too_many_arguments)]
pub async fn apply_static(
    handle: &Handle,
    cfg: &Config,
    shared: &Shared,
    mgmt: &Mgmt,
    client: Ipv4Addr,
    netmask: Ipv4Addr,
    gateway: Option<Ipv4Addr>,
    hostname: Option<&str>,
    dns: &[Ipv4Addr],
) -> Result<(), Error> {
    let prefix = prefix_of(netmask);
    links::add_address(handle, mgmt.bridge.index, client, prefix).await?;
    links::remove_other_v4(handle, mgmt.bridge.index, client).await?;
    if let Some(gw) = gateway {
        links::replace_default_route(handle, mgmt.bridge.index, gw).await?;
    }
    if !dns.is_empty() {
        write_atomic(
            &cfg.resolv_conf,
            &resolv_conf_text(dns, None, "the ip= kernel parameter"),
        )?;
    }
    set_hostname(cfg, shared, hostname);
    let ms = since_start(cfg);
    {
        let mut s = shared.lock();
        s.static_address = Some(format!("{client}/{prefix}"));
        s.gateway = gateway.map(|g| g.to_string());
        s.dns = dns.iter().map(ToString::to_string).collect();
        s.configured_after_ms.get_or_insert(ms);
    }
    let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
    println!(
        "network: {MGMT_BRIDGE} static {client}/{prefix}{via} in {ms} ms, at {} ms since boot",
        zeronode_types::clock::since_boot_ms()
    );
    Ok(())
}

async fn apply_lease(
    handle: &Handle,
    cfg: &Config,
    mgmt: &Mgmt,
    lease: &Lease,
) -> Result<(), Error> {
    links::add_address(handle, mgmt.bridge.index, lease.address, lease.prefix).await?;
    links::remove_other_v4(handle, mgmt.bridge.index, lease.address).await?;
    if let Some(gw) = lease.gateway {
        links::replace_default_route(handle, mgmt.bridge.index, gw).await?;
    }
    if !lease.dns.is_empty() {
        write_atomic(
            &cfg.resolv_conf,
            &resolv_conf_text(
                &lease.dns,
                lease.domain.as_deref(),
                &format!("the DHCP lease of {}", lease.address),
            ),
        )?;
    }
    Ok(())
}

async fn remove_lease(handle: &Handle, mgmt: &Mgmt, lease: &Lease) -> Result<(), Error> {
    if let Some(gw) = lease.gateway {
        links::del_default_route(handle, gw).await?;
    }
    links::del_address(handle, mgmt.bridge.index, lease.address, lease.prefix).await
}

fn record_lease(shared: &Shared, lease: Option<&Lease>) {
    let mut s = shared.lock();
    s.lease = lease.cloned();
    s.gateway = lease.and_then(|l| l.gateway).map(|g| g.to_string());
    s.dns = lease
        .map(|l| l.dns.iter().map(ToString::to_string).collect())
        .unwrap_or_default();
}

/// DHCP on zn0: when there are several candidate NICs, each gets
/// `candidate_timeout` to win a lease in turn; the first that does becomes
/// the management NIC. Then the client runs for ever; returns its task and
/// the management bridge.
pub async fn run_dhcp(
    handle: Handle,
    cfg: Config,
    shared: Shared,
    candidates: Vec<Link>,
) -> Result<(Mgmt, tokio::task::JoinHandle<()>), Error> {
    let mut round = 0u32;
    let (mgmt, client, lease) = loop {
        let mut won = None;
        for nic in &candidates {
            let mgmt = bridge(&handle, nic).await?;
            let mut client = dhcp::Client::new(
                mgmt.bridge.index,
                MGMT_BRIDGE,
                mgmt.mac,
                dhcp::Timing::default(),
            )
            .map_err(Error::io(format!("open a packet socket on {MGMT_BRIDGE}")))?;
            // One candidate: wait as long as it takes.
            let give_up = (candidates.len() > 1)
                .then(|| Instant::now() + cfg.candidate_timeout * (round + 1));
            if let Some(lease) = client.acquire(give_up).await {
                won = Some((mgmt, client, lease));
                break;
            }
            tracing::warn!("no DHCP lease through {}; trying the next NIC", nic.name);
        }
        if let Some(w) = won {
            break w;
        }
        round += 1;
    };
    {
        let mut s = shared.lock();
        s.mgmt_nic = Some(mgmt.nic.name.clone());
        s.mgmt_mac = Some(mgmt.nic.mac.clone());
    }
    let (tx, mut rx) = mpsc::channel(4);
    // The lease won above goes through the same path as later ones.
    let _ = tx.send(Event::Bound(lease.clone())).await;
    // Stopping the applier (at shutdown) must stop the client with it, or
    // it would renew a lease that is being released.
    let run = AbortOnDrop(tokio::spawn(client.run(Some(lease), tx)));
    let m = mgmt.clone();
    let task = tokio::spawn(async move {
        let mut first = true;
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Bound(lease) => {
                    if let Err(e) = apply_lease(&handle, &cfg, &m, &lease).await {
                        tracing::error!("cannot apply lease of {}: {e}", lease.address);
                        continue;
                    }
                    if first {
                        set_hostname(&cfg, &shared, lease.hostname.as_deref());
                    }
                    record_lease(&shared, Some(&lease));
                    let ms = since_start(&cfg);
                    shared.lock().configured_after_ms.get_or_insert(ms);
                    let via = lease
                        .gateway
                        .map(|g| format!(" via {g}"))
                        .unwrap_or_default();
                    println!(
                        "network: {MGMT_BRIDGE} bound {}/{}{via} in {ms} ms, at {} ms since boot",
                        lease.address,
                        lease.prefix,
                        zeronode_types::clock::since_boot_ms()
                    );
                    first = false;
                }
                Event::Extended(lease) => {
                    if let Err(e) = apply_lease(&handle, &cfg, &m, &lease).await {
                        tracing::error!("cannot refresh lease of {}: {e}", lease.address);
                    }
                    record_lease(&shared, Some(&lease));
                }
                Event::Lost { lease, reason } => {
                    tracing::warn!("{MGMT_BRIDGE}: lost {}: {reason}", lease.address);
                    if let Err(e) = remove_lease(&handle, &m, &lease).await {
                        tracing::error!("cannot remove {}: {e}", lease.address);
                    }
                    record_lease(&shared, None);
                }
            }
        }
        drop(run);
    });
    Ok((mgmt, task))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// At shutdown: DHCPRELEASE for the current lease and its address removed.
pub async fn release(handle: &Handle, shared: &Shared, mgmt: &Mgmt) {
    let lease = shared.lock().lease.clone();
    let Some(lease) = lease else { return };
    match dhcp::send_release(mgmt.mac, &lease) {
        Ok(()) => tracing::info!("dhcp: released {} to {}", lease.address, lease.server),
        Err(e) => tracing::warn!("dhcp: cannot send DHCPRELEASE for {}: {e}", lease.address),
    }
    if let Err(e) = remove_lease(handle, mgmt, &lease).await {
        tracing::warn!("cannot remove {}: {e}", lease.address);
    }
    record_lease(shared, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_lists_search_and_servers() {
        let t = resolv_conf_text(&[Ipv4Addr::new(10, 0, 2, 3)], Some("lan"), "a lease");
        assert!(t.contains("search lan\nnameserver 10.0.2.3\n"));
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 252, 0)), 22);
    }

    #[test]
    fn named_nic_by_name_or_mac() {
        let l = Link {
            index: 2,
            name: "eth0".into(),
            mac: "52:54:00:12:34:56".into(),
            kind: String::new(),
            up: true,
            carrier: true,
            master: None,
        };
        let all = vec![l];
        assert_eq!(find_named(&all, "eth0").unwrap().index, 2);
        assert_eq!(find_named(&all, "52:54:00:12:34:56").unwrap().index, 2);
        assert_eq!(
            find_named(&all, "52:54:00:12:34:56".to_uppercase().as_str())
                .unwrap()
                .index,
            2
        );
        assert!(find_named(&all, "eth1").is_none());
    }
}
