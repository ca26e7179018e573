//! `org.zeronode.Network1` at `/org/zeronode/Network1`.
//!
//! State() returns one JSON document (interfaces, addresses, routes, the
//! management status with the lease and its times, workload networks): it is
//! nested and grows, and every consumer (console, zn, tests) renders it.

use std::path::PathBuf;
use std::sync::Arc;

use rtnetlink::Handle;
use serde::Serialize;
use zbus::{interface, proxy, DBusError};

use crate::ipam::{Ipam, Subnet};
use crate::state::{Shared, Status};
use crate::workload::Workloads;
use crate::{links, Error as NetError};

pub const OBJECT_PATH: &str = "/org/zeronode/Network1";

#[derive(Debug, DBusError)]
#[zbus(prefix = "org.zeronode.Network1.Error")]
pub enum Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The request itself is wrong: nothing was changed.
    InvalidArgument(String),
    Failed(String),
}

impl From<NetError> for Error {
    fn from(e: NetError) -> Self {
        match e {
            NetError::Invalid(_) | NetError::Netns { .. } => Error::InvalidArgument(e.to_string()),
            _ => Error::Failed(e.to_string()),
        }
    }
}

#[derive(Serialize)]
struct StateDoc {
    #[serde(flatten)]
    status: Status,
    interfaces: Vec<links::Link>,
    addresses: Vec<links::Address>,
    routes: Vec<links::Route>,
    networks: Ipam,
}

#[derive(Clone)]
pub struct Network {
    pub handle: Handle,
    pub shared: Shared,
    pub workloads: Arc<Workloads>,
}

impl Network {
    /// The management subnet: workload networks must not overlap it.
    fn reserved(&self) -> Vec<Subnet> {
        let s = self.shared.lock();
        let cidr = s
            .lease
            .as_ref()
            .map(|l| {
                let net = u32::from(l.address)
                    & (u32::MAX.checked_shl(32 - u32::from(l.prefix)).unwrap_or(0));
                format!("{}/{}", std::net::Ipv4Addr::from(net), l.prefix)
            })
            .or_else(|| {
                s.static_address.as_ref().and_then(|a| {
                    let (ip, p) = a.split_once('/')?;
                    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
                    let p: u32 = p.parse().ok()?;
                    let net = u32::from(ip) & (u32::MAX.checked_shl(32 - p).unwrap_or(0));
                    Some(format!("{}/{p}", std::net::Ipv4Addr::from(net)))
                })
            });
        cidr.and_then(|c| c.parse().ok()).into_iter().collect()
    }

    pub async fn state_json(&self) -> Result<String, NetError> {
        // Status first: the kernel is configured before the status records
        // it, so the links read after are at least as new as the status.
        let status = self.shared.lock().clone();
        // Before the links too: the first look at the networks may restore them.
        let networks = self.workloads.snapshot().await;
        let interfaces = links::links(&self.handle).await?;
        let addresses = links::addresses(&self.handle, &interfaces).await?;
        let routes = links::routes(&self.handle, &interfaces).await?;
        let doc = StateDoc {
            status,
            interfaces,
            addresses,
            routes,
            networks,
        };
        serde_json::to_string(&doc).map_err(|e| NetError::Invalid(format!("encode state: {e}")))
    }
}

#[interface(name = "org.zeronode.Network1")]
impl Network {
    /// The whole network state as JSON.
    async fn state(&self) -> Result<String, Error> {
        Ok(self.state_json().await?)
    }

    /// Creates workload network `name` with `subnet` (a.b.c.d/n); returns
    /// the bridge's address.
    async fn network_create(&self, name: String, subnet: String) -> Result<String, Error> {
        let reserved = self.reserved();
        Ok(self.workloads.create(&name, &subnet, &reserved).await?)
    }

    async fn network_delete(&self, name: String) -> Result<(), Error> {
        Ok(self.workloads.delete(&name).await?)
    }

    /// Attaches the namespace at `netns` (e.g. /run/netns/X or
    /// /proc/PID/ns/net) as `workload`; returns its address a.b.c.d/n.
    async fn attach(
        &self,
        network: String,
        workload: String,
        netns: String,
    ) -> Result<String, Error> {
        Ok(self
            .workloads
            .attach(&network, &workload, &PathBuf::from(netns))
            .await?)
    }

    /// Puts the existing tap `tap` of VM `workload` on `network`'s bridge;
    /// returns the address a.b.c.d/n the VM is to configure. Detach
    /// deletes the tap.
    async fn attach_tap(
        &self,
        network: String,
        workload: String,
        tap: String,
    ) -> Result<String, Error> {
        Ok(self.workloads.attach_tap(&network, &workload, &tap).await?)
    }

    async fn detach(&self, network: String, workload: String) -> Result<(), Error> {
        Ok(self.workloads.detach(&network, &workload).await?)
    }
}

#[proxy(
    interface = "org.zeronode.Network1",
    default_service = "org.zeronode.Network1",
    default_path = "/org/zeronode/Network1"
)]
pub trait Network1 {
    fn state(&self) -> zbus::Result<String>;
    fn network_create(&self, name: &str, subnet: &str) -> zbus::Result<String>;
    fn network_delete(&self, name: &str) -> zbus::Result<()>;
    fn attach(&self, network: &str, workload: &str, netns: &str) -> zbus::Result<String>;
    fn attach_tap(&self, network: &str, workload: &str, tap: &str) -> zbus::Result<String>;
    fn detach(&self, network: &str, workload: &str) -> zbus::Result<()>;
}
