//! Workload networks: a bridge per network with the subnet's first address,
//! a veth pair per attached workload (the peer moved into the workload's
//! network namespace, addressed and routed via the bridge), IPAM persisted
//! in the state directory, NAT rules rebuilt on every change.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rtnetlink::Handle;
use tokio::sync::Mutex;

use crate::ipam::{self, Attachment, Ipam, Subnet};
use crate::{links, nat, Error, MGMT_BRIDGE};

pub struct Workloads {
    handle: Handle,
    state_dir: PathBuf,
    nft: PathBuf,
    /// Loaded on first use: the state directory may sit on the node cache,
    /// which storage mounts after this module started.
    ipam: Mutex<Option<Ipam>>,
}

/// The name the workload sees for its interface, when free.
const WORKLOAD_IFNAME: &str = "eth0";

impl Workloads {
    pub fn new(handle: Handle, state_dir: &Path, nft: &Path) -> Result<Self, Error> {
        Ok(Workloads {
            handle,
            state_dir: state_dir.to_path_buf(),
            nft: nft.to_path_buf(),
            ipam: Mutex::new(None),
        })
    }

    fn state_file_exists(&self) -> bool {
        self.state_dir.join(ipam::STATE_FILE).exists()
    }

    /// The IPAM, loaded (and its networks restored) on first use.
    async fn loaded(&self) -> Result<tokio::sync::MappedMutexGuard<'_, Ipam>, Error> {
        let mut guard = self.ipam.lock().await;
        if guard.is_none() {
            let ipam = Ipam::load(&self.state_dir)?;
            self.restore_networks(&ipam).await?;
            *guard = Some(ipam);
        }
        Ok(tokio::sync::MutexGuard::map(guard, |g| {
            g.get_or_insert_with(Ipam::default)
        }))
    }

    pub async fn snapshot(&self) -> Ipam {
        if self.ipam.lock().await.is_none() && !self.state_file_exists() {
            return Ipam::default();
        }
        match self.loaded().await {
            Ok(ipam) => ipam.clone(),
            Err(e) => {
                tracing::error!("workload networks: {e}");
                Ipam::default()
            }
        }
    }

    async fn ensure_network_bridge(
        &self,
        name: &str,
        bridge: &str,
        subnet: Subnet,
    ) -> Result<(), Error> {
        let link = links::ensure_bridge(&self.handle, bridge, Some(ipam::bridge_mac(name))).await?;
        links::add_address(&self.handle, link.index, subnet.gateway(), subnet.prefix).await
    }

    /// Creates network `name` with `subnet`; returns the bridge's address.
    pub async fn create(
        &self,
        name: &str,
        subnet: &str,
        reserved: &[Subnet],
    ) -> Result<String, Error> {
        let mut ipam = self.loaded().await?;
        let mut next = ipam.clone();
        let net = next.create(name, subnet, reserved)?.clone();
        self.ensure_network_bridge(name, &net.bridge, net.subnet)
            .await?;
        links::sysctl("net/ipv4/ip_forward", "1")?;
        nat::apply(&self.nft, &nat::ruleset(&next, MGMT_BRIDGE))?;
        next.save(&self.state_dir)?;
        *ipam = next;
        tracing::info!(
            "network {name}: bridge {} with {}/{}",
            net.bridge,
            net.subnet.gateway(),
            net.subnet.prefix
        );
        Ok(format!("{}/{}", net.subnet.gateway(), net.subnet.prefix))
    }

    /// Deletes network `name`, its bridge and the veths of its workloads.
    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        let mut ipam = self.loaded().await?;
        let mut next = ipam.clone();
        let net = next
            .networks
            .remove(name)
            .ok_or_else(|| Error::Invalid(format!("no network {name:?}")))?;
        for att in net.attachments.values() {
            self.unplug(&att.host_veth).await?;
        }
        if let Some(b) = links::link_by_name(&self.handle, &net.bridge).await? {
            links::delete_link(&self.handle, b.index).await?;
        }
        nat::apply(&self.nft, &nat::ruleset(&next, MGMT_BRIDGE))?;
        next.save(&self.state_dir)?;
        *ipam = next;
        tracing::info!("network {name}: deleted");
        Ok(())
    }

    /// Attaches `workload`'s namespace at `netns` to `network`; returns its
    /// address `a.b.c.d/n`. Repeating it is harmless and keeps the address.
    pub async fn attach(
        &self,
        network: &str,
        workload: &str,
        netns: &Path,
    ) -> Result<String, Error> {
        if !netns.is_absolute() {
            return Err(Error::Invalid(format!(
                "netns path {} is not absolute",
                netns.display()
            )));
        }
        std::fs::File::open(netns).map_err(|source| Error::Netns {
            path: netns.to_path_buf(),
            source,
        })?;
        let mut ipam = self.loaded().await?;
        let mut next = ipam.clone();
        let att = next.assign(network, workload, netns)?;
        let net = next
            .networks
            .get(network)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("no network {network:?}")))?;
        self.plug(&net.bridge, net.subnet, &att).await?;
        next.save(&self.state_dir)?;
        *ipam = next;
        tracing::info!(
            "network {network}: {workload} attached as {} ({})",
            att.address,
            netns.display()
        );
        Ok(format!("{}/{}", att.address, net.subnet.prefix))
    }

    /// Puts the tap `tap` (made by the VM workload `workload`, which
    /// configures its address itself) on `network`'s bridge; returns the
    /// address the workload is to use, `a.b.c.d/n`, stable as for Attach.
    /// Detach deletes the tap.
    pub async fn attach_tap(
        &self,
        network: &str,
        workload: &str,
        tap: &str,
    ) -> Result<String, Error> {
        let link = links::link_by_name(&self.handle, tap)
            .await?
            .ok_or_else(|| Error::Invalid(format!("tap {tap:?} does not exist")))?;
        let mut ipam = self.loaded().await?;
        let mut next = ipam.clone();
        let att = next.assign_tap(network, workload, tap)?;
        let net = next
            .networks
            .get(network)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("no network {network:?}")))?;
        let br = links::link_by_name(&self.handle, &net.bridge)
            .await?
            .ok_or_else(|| Error::NoSuchLink(net.bridge.clone()))?;
        links::enslave(&self.handle, link.index, br.index).await?;
        next.save(&self.state_dir)?;
        *ipam = next;
        tracing::info!(
            "network {network}: {workload} attached as {} (tap {tap})",
            att.address
        );
        Ok(format!("{}/{}", att.address, net.subnet.prefix))
    }

    pub async fn detach(&self, network: &str, workload: &str) -> Result<(), Error> {
        let mut ipam = self.loaded().await?;
        let mut next = ipam.clone();
        let att = next
            .networks
            .get_mut(network)
            .ok_or_else(|| Error::Invalid(format!("no network {network:?}")))?
            .attachments
            .remove(workload)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "workload {workload:?} is not attached to {network:?}"
                ))
            })?;
        self.unplug(&att.host_veth).await?;
        next.save(&self.state_dir)?;
        *ipam = next;
        tracing::info!("network {network}: {workload} detached");
        Ok(())
    }

    async fn unplug(&self, host_veth: &str) -> Result<(), Error> {
        if let Some(l) = links::link_by_name(&self.handle, host_veth).await? {
            // The peer inside the workload goes with it.
            links::delete_link(&self.handle, l.index).await?;
        }
        Ok(())
    }

    async fn plug(&self, bridge: &str, subnet: Subnet, att: &Attachment) -> Result<(), Error> {
        let br = links::link_by_name(&self.handle, bridge)
            .await?
            .ok_or_else(|| Error::NoSuchLink(bridge.to_string()))?;
        if let Some(host) = links::link_by_name(&self.handle, &att.host_veth).await? {
            // Already plugged (a repeated Attach, or a restart of this module
            // while the workload lived on): make sure it is on its bridge.
            links::enslave(&self.handle, host.index, br.index).await?;
            return Ok(());
        }
        let peer = att.host_veth.replacen("znv", "znp", 1);
        links::veth_into_netns(&self.handle, &att.host_veth, &peer, &att.netns).await?;
        let result = async {
            let host = links::link_by_name(&self.handle, &att.host_veth)
                .await?
                .ok_or_else(|| Error::NoSuchLink(att.host_veth.clone()))?;
            links::enslave(&self.handle, host.index, br.index).await?;
            configure_inside(
                att.netns.clone(),
                peer,
                att.address,
                subnet.prefix,
                subnet.gateway(),
            )
            .await
        }
        .await;
        if result.is_err() {
            let _ = self.unplug(&att.host_veth).await;
        }
        result
    }

    /// At start: brings back the workload networks when their state is
    /// there already; otherwise that waits for the first request, by which
    /// time the node cache holding the state directory is mounted.
    pub async fn restore(&self) -> Result<(), Error> {
        if !self.state_file_exists() {
            tracing::info!(
                "no workload network state in {} yet: loading it on first use",
                self.state_dir.display()
            );
            return Ok(());
        }
        self.loaded().await.map(drop)
    }

    /// Brings back bridges, addresses, veths of still-existing namespaces,
    /// and the NAT table after a restart of the module.
    async fn restore_networks(&self, ipam: &Ipam) -> Result<(), Error> {
        for (name, net) in &ipam.networks {
            if let Err(e) = self
                .ensure_network_bridge(name, &net.bridge, net.subnet)
                .await
            {
                tracing::error!("network {name}: cannot restore bridge: {e}");
                continue;
            }
            for (workload, att) in &net.attachments {
                if att.tap {
                    // The VM module makes its tap again when it brings the VM back.
                    if let Some(l) = links::link_by_name(&self.handle, &att.host_veth).await? {
                        if let Some(br) = links::link_by_name(&self.handle, &net.bridge).await? {
                            if let Err(e) = links::enslave(&self.handle, l.index, br.index).await {
                                tracing::error!("network {name}: {workload}: tap: {e}");
                            }
                        }
                    }
                    continue;
                }
                if !att.netns.exists() {
                    tracing::warn!(
                        "network {name}: {workload}: namespace {} is gone; keeping its address {}",
                        att.netns.display(),
                        att.address
                    );
                    continue;
                }
                if let Err(e) = self.plug(&net.bridge, net.subnet, att).await {
                    tracing::error!("network {name}: {workload}: cannot re-attach: {e}");
                }
            }
        }
        if ipam.networks.is_empty() {
            return Ok(());
        }
        links::sysctl("net/ipv4/ip_forward", "1")?;
        nat::apply(&self.nft, &nat::ruleset(ipam, MGMT_BRIDGE))
    }
}

/// Inside the workload's namespace: names the interface eth0 when free,
/// gives it its address, brings it and lo up, routes via the bridge. Runs on
/// a thread of its own because setns(2) changes the calling thread only.
async fn configure_inside(
    netns: PathBuf,
    peer: String,
    address: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
) -> Result<(), Error> {
    let job = move || -> Result<(), Error> {
        let ns = std::fs::File::open(&netns).map_err(|source| Error::Netns {
            path: netns.clone(),
            source,
        })?;
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
            Error::Netns {
                path: netns.clone(),
                source: e.into(),
            }
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::io("start a runtime inside the workload namespace"))?;
        rt.block_on(async {
            let handle = links::connect()?;
            let link = links::link_by_name(&handle, &peer)
                .await?
                .ok_or_else(|| Error::NoSuchLink(peer.clone()))?;
            if links::link_by_name(&handle, WORKLOAD_IFNAME)
                .await?
                .is_none()
            {
                links::rename(&handle, link.index, WORKLOAD_IFNAME).await?;
            }
            links::add_address(&handle, link.index, address, prefix).await?;
            links::set_up(&handle, link.index).await?;
            if let Some(lo) = links::link_by_name(&handle, "lo").await? {
                links::set_up(&handle, lo.index).await?;
            }
            links::replace_default_route(&handle, link.index, gateway).await
        })
    };
    tokio::task::spawn_blocking(move || {
        std::thread::spawn(job)
            .join()
            .unwrap_or_else(|_| Err(Error::Invalid("workload namespace setup panicked".into())))
    })
    .await
    .map_err(|e| Error::Invalid(format!("workload namespace setup: {e}")))?
}
