//! Links, addresses and routes through rtnetlink: no `ip` or `brctl` at run
//! time, so the image needs no iproute2 and every step has a typed error.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde::Serialize;

use crate::Error;

/// One link as the kernel reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: String,
    /// "bridge", "veth", ...; empty for a plain (physical) device.
    pub kind: String,
    pub up: bool,
    pub carrier: bool,
    /// Index of the bridge this link is a port of.
    pub master: Option<u32>,
}

/// An address on a link.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Address {
    pub link: String,
    pub address: IpAddr,
    pub prefix: u8,
}

/// A route of the main table.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Route {
    /// "default" or "a.b.c.d/n".
    pub destination: String,
    pub gateway: Option<IpAddr>,
    pub device: Option<String>,
}

/// Opens an rtnetlink connection in the caller's network namespace (the
/// namespace of the thread at the time of the call) and drives it on the
/// current tokio runtime.
pub fn connect() -> Result<Handle, Error> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::NetlinkSocket)?;
    tokio::spawn(conn);
    Ok(handle)
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |source| Error::Netlink { what, source }
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    for (o, p) in out.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *o = u8::from_str_radix(p, 16).ok()?;
    }
    Some(out)
}

fn to_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: String::new(),
        kind: String::new(),
        up: msg.header.flags.contains(LinkFlags::Up),
        carrier: msg.header.flags.contains(LinkFlags::LowerUp),
        master: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) => link.mac = format_mac(a),
            LinkAttribute::Carrier(c) => link.carrier = *c != 0 && link.up,
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = k.to_string();
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// True for the error a dump gets when the table changed under it (the
/// kernel flags it interrupted): the dump is to be repeated.
fn dump_interrupted(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EBUSY)
}

/// Runs the dump `f` again while it gets interrupted by concurrent changes
/// (addresses come and go while State is asked for).
async fn dump<T, F, Fut>(what: &str, f: F) -> Result<Vec<T>, Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, rtnetlink::Error>>,
{
    let mut tries = 0;
    loop {
        match f().await {
            Err(e) if dump_interrupted(&e) && tries < 10 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            r => return r.map_err(nl(what)),
        }
    }
}

pub async fn links(handle: &Handle) -> Result<Vec<Link>, Error> {
    let msgs: Vec<LinkMessage> =
        dump("list links", || handle.link().get().execute().try_collect()).await?;
    Ok(msgs.iter().map(to_link).collect())
}

pub async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<Link>, Error> {
    Ok(links(handle).await?.into_iter().find(|l| l.name == name))
}

async fn need_link(handle: &Handle, name: &str) -> Result<Link, Error> {
    link_by_name(handle, name)
        .await?
        .ok_or_else(|| Error::NoSuchLink(name.to_string()))
}

pub async fn set_up(handle: &Handle, index: u32) -> Result<(), Error> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl(format!("bring up link {index}")))
}

/// Physical NICs: they have a device behind them in sysfs and are not one of
/// the kernel's virtual kinds. `sys_class_net` is /sys/class/net on a node.
pub fn is_physical(sys_class_net: &Path, link: &Link) -> bool {
    const VIRTUAL: &[&str] = &[
        "bridge",
        "veth",
        "tun",
        "tap",
        "dummy",
        "bond",
        "vlan",
        "macvlan",
        "macvtap",
        "vxlan",
        "wireguard",
        "ipvlan",
        "team",
        "ifb",
        "gre",
        "sit",
        "ipip",
    ];
    link.name != "lo"
        && !VIRTUAL.contains(&link.kind.as_str())
        && sys_class_net.join(&link.name).join("device").exists()
}

/// Creates (or finds) bridge `name`, with `mac` so that a DHCP server keyed on
/// the MAC sees the same client as before bridging; brings it up.
pub async fn ensure_bridge(
    handle: &Handle,
    name: &str,
    mac: Option<[u8; 6]>,
) -> Result<Link, Error> {
    if link_by_name(handle, name).await?.is_none() {
        handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(nl(format!("create bridge {name}")))?;
    }
    let bridge = need_link(handle, name).await?;
    let mut set = LinkUnspec::new_with_index(bridge.index).up();
    if let Some(mac) = mac {
        set = set.address(mac.to_vec());
    }
    handle
        .link()
        .set(set.build())
        .execute()
        .await
        .map_err(nl(format!("configure bridge {name}")))?;
    need_link(handle, name).await
}

pub async fn enslave(handle: &Handle, port: u32, bridge: u32) -> Result<(), Error> {
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(port)
                .controller(bridge)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("enslave link {port} to bridge {bridge}")))
}

pub async fn release_port(handle: &Handle, port: u32) -> Result<(), Error> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(port).nocontroller().build())
        .execute()
        .await
        .map_err(nl(format!("release link {port} from its bridge")))
}

pub async fn delete_link(handle: &Handle, index: u32) -> Result<(), Error> {
    handle
        .link()
        .del(index)
        .execute()
        .await
        .map_err(nl(format!("delete link {index}")))
}

pub async fn rename(handle: &Handle, index: u32, name: &str) -> Result<(), Error> {
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .name(name.to_string())
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("rename link {index} to {name}")))
}

/// Creates veth pair `host`/`peer` and moves `peer` into the namespace at
/// `netns`.
pub async fn veth_into_netns(
    handle: &Handle,
    host: &str,
    peer: &str,
    netns: &Path,
) -> Result<(), Error> {
    let ns = std::fs::File::open(netns).map_err(|e| Error::Netns {
        path: netns.to_path_buf(),
        source: e,
    })?;
    handle
        .link()
        .add(LinkVeth::new(host, peer).build())
        .execute()
        .await
        .map_err(nl(format!("create veth {host}/{peer}")))?;
    let p = need_link(handle, peer).await?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(p.index)
                .setns_by_fd(ns.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("move {peer} into {}", netns.display())))
}

pub async fn addresses(handle: &Handle, links: &[Link]) -> Result<Vec<Address>, Error> {
    let msgs: Vec<AddressMessage> = dump("list addresses", || {
        handle.address().get().execute().try_collect()
    })
    .await?;
    let mut out = Vec::new();
    for m in msgs {
        let link = links
            .iter()
            .find(|l| l.index == m.header.index)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| m.header.index.to_string());
        // IFA_LOCAL is the address of a v4 point-to-point peer's local side
        // and equals IFA_ADDRESS otherwise; v6 only has IFA_ADDRESS.
        let addr = m
            .attributes
            .iter()
            .find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            })
            .or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
        if let Some(address) = addr {
            out.push(Address {
                link,
                address,
                prefix: m.header.prefix_len,
            });
        }
    }
    Ok(out)
}

pub async fn add_address(
    handle: &Handle,
    index: u32,
    addr: Ipv4Addr,
    prefix: u8,
) -> Result<(), Error> {
    handle
        .address()
        .add(index, IpAddr::V4(addr), prefix)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("add {addr}/{prefix} to link {index}")))
}

pub async fn del_address(
    handle: &Handle,
    index: u32,
    addr: Ipv4Addr,
    prefix: u8,
) -> Result<(), Error> {
    let msgs: Vec<AddressMessage> = dump("list addresses", || {
        handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
    })
    .await?;
    for m in msgs {
        let matches = m.header.prefix_len == prefix
            && m.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(a)) if *a == addr));
        if matches {
            handle
                .address()
                .del(m)
                .execute()
                .await
                .map_err(nl(format!("remove {addr}/{prefix} from link {index}")))?;
        }
    }
    Ok(())
}

/// Removes every IPv4 address on link `index` but `keep` (addresses left
/// by an earlier run that did not get to release its lease).
pub async fn remove_other_v4(handle: &Handle, index: u32, keep: Ipv4Addr) -> Result<(), Error> {
    let msgs: Vec<AddressMessage> = dump("list addresses", || {
        handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
    })
    .await?;
    for m in msgs {
        let stale = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(a)) if *a != keep => Some(*a),
            _ => None,
        });
        if let Some(a) = stale {
            tracing::info!(
                "removing stale address {a}/{} from link {index}",
                m.header.prefix_len
            );
            handle
                .address()
                .del(m)
                .execute()
                .await
                .map_err(nl(format!("remove stale {a} from link {index}")))?;
        }
    }
    Ok(())
}

pub async fn replace_default_route(
    handle: &Handle,
    index: u32,
    gateway: Ipv4Addr,
) -> Result<(), Error> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .output_interface(index)
        .gateway(gateway)
        .build();
    handle
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("default route via {gateway}")))
}

pub async fn del_default_route(handle: &Handle, gateway: Ipv4Addr) -> Result<(), Error> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .build();
    match handle.route().del(route).execute().await {
        Ok(()) => Ok(()),
        // Already gone with its address: the kernel drops routes through a
        // removed address by itself.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
        Err(e) => Err(nl(format!("remove default route via {gateway}"))(e)),
    }
}

pub async fn routes(handle: &Handle, links: &[Link]) -> Result<Vec<Route>, Error> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        let msgs: Vec<RouteMessage> = dump("list routes", || {
            handle.route().get(req.clone()).execute().try_collect()
        })
        .await?;
        for m in msgs {
            // Main table only: the local and multicast tables are the
            // kernel's bookkeeping, not routing decisions anyone set.
            let table = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(m.header.table as u32);
            if table != 254 {
                continue;
            }
            let addr = |ra: &RouteAddress| match ra {
                RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
                RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
                _ => None,
            };
            let mut dest = None;
            let mut gateway = None;
            let mut device = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(d) => dest = addr(d),
                    RouteAttribute::Gateway(g) => gateway = addr(g),
                    RouteAttribute::Oif(i) => {
                        device = links.iter().find(|l| l.index == *i).map(|l| l.name.clone())
                    }
                    _ => {}
                }
            }
            let destination = match dest {
                Some(d) => format!("{d}/{}", m.header.destination_prefix_length),
                None if m.header.destination_prefix_length == 0 => "default".to_string(),
                None => continue,
            };
            out.push(Route {
                destination,
                gateway,
                device,
            });
        }
    }
    Ok(out)
}

/// Writes a sysctl under /proc/sys (per network namespace for net.*).
pub fn sysctl(path: &str, value: &str) -> Result<(), Error> {
    let full = Path::new("/proc/sys").join(path);
    std::fs::write(&full, value).map_err(|source| Error::Io {
        what: format!("write {value} to {}", full.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, kind: &str) -> Link {
        Link {
            index: 1,
            name: name.into(),
            mac: "52:54:00:00:00:01".into(),
            kind: kind.into(),
            up: true,
            carrier: true,
            master: None,
        }
    }

    #[test]
    fn physical_means_a_device_behind_it_and_no_virtual_kind() {
        let dir = tempfile::tempdir().unwrap();
        for l in ["eno1", "br0", "veth0", "lo"] {
            std::fs::create_dir_all(dir.path().join(l).join("device")).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("tap0")).unwrap();
        assert!(is_physical(dir.path(), &link("eno1", "")));
        assert!(!is_physical(dir.path(), &link("br0", "bridge")));
        assert!(!is_physical(dir.path(), &link("veth0", "veth")));
        assert!(!is_physical(dir.path(), &link("lo", "")));
        assert!(
            !is_physical(dir.path(), &link("tap0", "")),
            "no device behind it"
        );
    }

    #[test]
    fn macs_round_trip() {
        let m = parse_mac("52:54:00:AB:cd:01").unwrap();
        assert_eq!(format_mac(&m), "52:54:00:ab:cd:01");
        assert!(parse_mac("52:54:00:ab:cd").is_none());
        assert!(parse_mac("52:54:00:ab:cd:zz").is_none());
    }
}
