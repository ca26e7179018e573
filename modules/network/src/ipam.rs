//! Workload networks and their address assignments, kept in one JSON file
//! in the state directory. Written atomically (temp file, fsync, rename,
//! fsync of the directory) so a crash leaves the old or the new state, and
//! a workload gets the same address after a restart.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

pub const STATE_FILE: &str = "networks.json";

/// An IPv4 subnet in CIDR form, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }
    pub fn contains(self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.network)
    }
    pub fn overlaps(self, other: Subnet) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }
    /// The bridge's address: the first host.
    pub fn gateway(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("subnet {s:?} is not in a.b.c.d/n form"))?;
        let network: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("subnet {s:?}: {a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("subnet {s:?}: {p:?} is not a prefix length"))?;
        // /30 leaves two hosts: the bridge and one workload.
        if !(8..=30).contains(&prefix) {
            return Err(format!("subnet {s:?}: prefix must be between /8 and /30"));
        }
        let sub = Subnet { network, prefix };
        if u32::from(network) & !sub.mask() != 0 {
            return Err(format!(
                "subnet {s:?} has host bits set (did you mean {}/{prefix}?)",
                Ipv4Addr::from(u32::from(network) & sub.mask())
            ));
        }
        if network.is_loopback()
            || network.is_multicast()
            || network.is_unspecified()
            || u32::from(network) >= 0xf000_0000
        {
            return Err(format!("subnet {s:?} is not usable for hosts"));
        }
        Ok(sub)
    }
}

impl Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub address: Ipv4Addr,
    /// The workload's network namespace; empty for a tap (a VM's NIC).
    pub netns: PathBuf,
    /// The host side of the veth pair, or the tap itself.
    pub host_veth: String,
    /// A tap made by its workload (the VM configures the address itself):
    /// the module only puts it on the bridge.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tap: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub subnet: Subnet,
    pub bridge: String,
    /// Workload name -> its attachment.
    pub attachments: BTreeMap<String, Attachment>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipam {
    pub networks: BTreeMap<String, Network>,
}

/// Network names become part of interface names (at most 15 bytes).
pub fn check_network_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 10
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "network name {name:?}: use 1-10 characters a-z, 0-9, '-' (not first)"
        )))
    }
}

pub fn check_workload_name(name: &str) -> Result<(), Error> {
    if !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "workload name {name:?}: use 1-128 printable characters without spaces"
        )))
    }
}

pub fn bridge_name(network: &str) -> String {
    format!("znb-{network}")
}

/// FNV-1a: stable across builds and releases, unlike std's hasher.
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// A stable, short interface name for the host side of a workload's veth.
pub fn veth_name(network: &str, workload: &str) -> String {
    let h = fnv1a(network.bytes().chain([b'/']).chain(workload.bytes()));
    format!("znv{h:08x}")
}

/// A fixed MAC for a network's bridge (locally administered, unicast).
/// Without one the bridge takes the lowest MAC of its ports, which changes
/// as workloads come and go and leaves stale ARP entries for the gateway.
pub fn bridge_mac(network: &str) -> [u8; 6] {
    let h = fnv1a(network.bytes()).to_be_bytes();
    [0x02, 0x5a, h[0], h[1], h[2], h[3]]
}

impl Ipam {
    pub fn load(dir: &Path) -> Result<Ipam, Error> {
        let path = dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::State {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ipam::default()),
            Err(e) => Err(Error::State {
                path,
                reason: e.to_string(),
            }),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        let path = dir.join(STATE_FILE);
        let fail = |reason: String| Error::State {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("create {}: {e}", dir.display())))?;
        let tmp: PathBuf = dir.join(format!(".{STATE_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self).map_err(|e| fail(e.to_string()))?;
        let mut f = std::fs::File::create(&tmp)
            .map_err(|e| fail(format!("create {}: {e}", tmp.display())))?;
        f.write_all(&json)
            .and_then(|_| f.sync_all())
            .map_err(|e| fail(format!("write {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(|e| fail(format!("rename into place: {e}")))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail(format!("sync {}: {e}", dir.display())))
    }

    /// Adds network `name`; refuses a name in use or an overlapping subnet
    /// (`reserved` holds subnets used elsewhere, e.g. the management one).
    pub fn create(
        &mut self,
        name: &str,
        subnet: &str,
        reserved: &[Subnet],
    ) -> Result<&Network, Error> {
        check_network_name(name)?;
        let subnet: Subnet = subnet.parse().map_err(Error::Invalid)?;
        if let Some(existing) = self.networks.get(name) {
            if existing.subnet == subnet {
                // Idempotent: the orchestrator may repeat itself after a restart.
                return self
                    .networks
                    .get(name)
                    .ok_or_else(|| Error::Invalid(name.into()));
            }
            return Err(Error::Invalid(format!(
                "network {name:?} exists with subnet {}",
                existing.subnet
            )));
        }
        if let Some((other, net)) = self
            .networks
            .iter()
            .find(|(_, n)| n.subnet.overlaps(subnet))
        {
            return Err(Error::Invalid(format!(
                "subnet {subnet} overlaps network {other:?} ({})",
                net.subnet
            )));
        }
        if let Some(r) = reserved.iter().find(|r| r.overlaps(subnet)) {
            return Err(Error::Invalid(format!(
                "subnet {subnet} overlaps {r}, in use on this node"
            )));
        }
        self.networks.insert(
            name.to_string(),
            Network {
                subnet,
                bridge: bridge_name(name),
                attachments: BTreeMap::new(),
            },
        );
        self.networks
            .get(name)
            .ok_or_else(|| Error::Invalid(name.into()))
    }

    /// The address of the VM `workload` whose NIC is the tap `tap`: the one
    /// it had, or the lowest free host address.
    pub fn assign_tap(
        &mut self,
        network: &str,
        workload: &str,
        tap: &str,
    ) -> Result<Attachment, Error> {
        let mut att = self.assign(network, workload, Path::new(""))?;
        att.host_veth = tap.to_string();
        att.tap = true;
        if let Some(a) = self
            .networks
            .get_mut(network)
            .and_then(|n| n.attachments.get_mut(workload))
        {
            *a = att.clone();
        }
        Ok(att)
    }

    /// The workload's address on `network`: the one it had, or the lowest
    /// free host address.
    pub fn assign(
        &mut self,
        network: &str,
        workload: &str,
        netns: &Path,
    ) -> Result<Attachment, Error> {
        check_workload_name(workload)?;
        let net = self
            .networks
            .get_mut(network)
            .ok_or_else(|| Error::Invalid(format!("no network {network:?}")))?;
        if let Some(a) = net.attachments.get_mut(workload) {
            a.netns = netns.to_path_buf();
            return Ok(a.clone());
        }
        let first = u32::from(net.subnet.gateway()) + 1;
        let last = u32::from(net.subnet.broadcast()) - 1;
        let address = (first..=last)
            .map(Ipv4Addr::from)
            .find(|a| !net.attachments.values().any(|x| x.address == *a))
            .ok_or_else(|| {
                Error::Invalid(format!("network {network:?} ({}) is full", net.subnet))
            })?;
        let att = Attachment {
            address,
            netns: netns.to_path_buf(),
            host_veth: veth_name(network, workload),
            tap: false,
        };
        net.attachments.insert(workload.to_string(), att.clone());
        Ok(att)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_strictly() {
        let s: Subnet = "10.200.0.0/24".parse().unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 200, 0, 255));
        assert!(s.contains(Ipv4Addr::new(10, 200, 0, 77)));
        assert!(!s.contains(Ipv4Addr::new(10, 200, 1, 1)));
        for bad in [
            "10.200.0.1/24",
            "10.200.0.0",
            "10.200.0.0/31",
            "x/24",
            "127.0.0.0/8",
            "224.0.0.0/24",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
        assert!("10.200.0.1/24"
            .parse::<Subnet>()
            .unwrap_err()
            .contains("10.200.0.0/24"));
    }

    #[test]
    fn addresses_are_stable_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut ipam = Ipam::default();
        ipam.create("blue", "10.200.0.0/29", &[]).unwrap();
        let ns = Path::new("/run/netns/x");
        let a = ipam.assign("blue", "w1", ns).unwrap();
        let b = ipam.assign("blue", "w2", ns).unwrap();
        assert_eq!(a.address, Ipv4Addr::new(10, 200, 0, 2));
        assert_eq!(b.address, Ipv4Addr::new(10, 200, 0, 3));
        assert_eq!(
            ipam.assign("blue", "w1", ns).unwrap(),
            a,
            "same workload, same address"
        );
        ipam.save(dir.path()).unwrap();
        let mut again = Ipam::load(dir.path()).unwrap();
        assert_eq!(again, ipam);
        assert_eq!(again.assign("blue", "w2", ns).unwrap().address, b.address);
        // /29: .2 to .6 for workloads, then full.
        for w in ["w3", "w4", "w5"] {
            again.assign("blue", w, ns).unwrap();
        }
        assert!(again
            .assign("blue", "w6", ns)
            .unwrap_err()
            .to_string()
            .contains("full"));
    }

    #[test]
    fn bad_requests_change_nothing() {
        let mut ipam = Ipam::default();
        ipam.create("blue", "10.200.0.0/24", &[]).unwrap();
        let before = ipam.clone();
        assert!(
            ipam.create("red", "10.200.0.128/25", &[]).is_err(),
            "overlap"
        );
        assert!(ipam
            .create("red", "10.0.2.0/24", &["10.0.2.0/24".parse().unwrap()])
            .is_err());
        assert!(ipam.create("Bad Name", "10.201.0.0/24", &[]).is_err());
        assert!(ipam.create("blue", "10.201.0.0/24", &[]).is_err());
        assert!(ipam.assign("nope", "w", Path::new("/x")).is_err());
        assert!(ipam.assign("blue", "has space", Path::new("/x")).is_err());
        assert_eq!(ipam, before);
        assert!(
            ipam.create("blue", "10.200.0.0/24", &[]).is_ok(),
            "repeat is fine"
        );
    }

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        assert!(bridge_name("abcdefghij").len() <= 15);
        assert_eq!(veth_name("n", "w").len(), 11);
        assert_ne!(veth_name("n", "w1"), veth_name("n", "w2"));
        assert_eq!(bridge_mac("blue")[0] & 0x03, 0x02, "local, unicast");
        assert_ne!(bridge_mac("blue"), bridge_mac("red"));
    }
}
