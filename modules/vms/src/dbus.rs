//! `org.zeronode.Vms1` at `/org/zeronode/Vms1`, and the client side of
//! the network module's interface (AttachTap/Detach only: the module does
//! not link the network crate).

use std::path::Path;
use std::sync::Arc;

use zbus::{interface, proxy, DBusError};

use crate::manager::Manager;
use crate::spec::VmSpec;
use crate::Error as VError;

pub const OBJECT_PATH: &str = "/org/zeronode/Vms1";
pub const SOCKET_NAME: &str = "vms";

#[derive(Debug, DBusError)]
#[zbus(prefix = "org.zeronode.Vms1.Error")]
pub enum Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The request itself is wrong (bad spec, digest mismatch): nothing changed.
    InvalidArgument(String),
    NotFound(String),
    Failed(String),
}

impl From<VError> for Error {
    fn from(e: VError) -> Self {
        match e {
            VError::Invalid(_) | VError::DigestMismatch { .. } => {
                Error::InvalidArgument(e.to_string())
            }
            VError::NotFound(_) => Error::NotFound(e.to_string()),
            _ => Error::Failed(e.to_string()),
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, Error> {
    serde_json::to_string(v).map_err(|e| Error::Failed(format!("encode: {e}")))
}

#[derive(Clone)]
pub struct Vms {
    pub manager: Arc<Manager>,
}

#[interface(name = "org.zeronode.Vms1")]
impl Vms {
    /// Creates (or, with the same spec, keeps; or starts when stopped) a
    /// VM from its workload spec (JSON); returns its status (JSON).
    async fn create(&self, spec: String) -> Result<String, Error> {
        let spec = VmSpec::from_json(&spec)?;
        json(&self.manager.create(spec).await?)
    }

    /// ACPI power-down, then a kill after the stop timeout; stays stopped.
    async fn stop(&self, name: String) -> Result<String, Error> {
        json(&self.manager.stop(&name).await?)
    }

    async fn start(&self, name: String) -> Result<String, Error> {
        json(&self.manager.start(&name).await?)
    }

    /// Stops the VM and removes everything of it but its volumes' disks.
    async fn delete(&self, name: String) -> Result<(), Error> {
        Ok(self.manager.delete(&name).await?)
    }

    /// Every VM's status, as a JSON array.
    async fn list(&self) -> Result<String, Error> {
        json(&self.manager.list())
    }

    async fn status(&self, name: String) -> Result<String, Error> {
        json(&self.manager.status(&name)?)
    }

    /// The last `max_bytes` of the VM's serial console (invalid UTF-8 replaced).
    async fn logs(&self, name: String, max_bytes: u64) -> Result<String, Error> {
        let b = self.manager.logs(&name, max_bytes.min(16 << 20))?;
        Ok(zeronode_containers::logs::as_text(&b))
    }
}

#[proxy(
    interface = "org.zeronode.Vms1",
    default_service = "org.zeronode.Vms1",
    default_path = "/org/zeronode/Vms1"
)]
pub trait Vms1 {
    fn create(&self, spec: &str) -> zbus::Result<String>;
    fn stop(&self, name: &str) -> zbus::Result<String>;
    fn start(&self, name: &str) -> zbus::Result<String>;
    fn delete(&self, name: &str) -> zbus::Result<()>;
    fn list(&self) -> zbus::Result<String>;
    fn status(&self, name: &str) -> zbus::Result<String>;
    fn logs(&self, name: &str, max_bytes: u64) -> zbus::Result<String>;
}

#[proxy(
    interface = "org.zeronode.Network1",
    default_service = "org.zeronode.Network1",
    default_path = "/org/zeronode/Network1"
)]
trait Network1 {
    fn attach_tap(&self, network: &str, workload: &str, tap: &str) -> zbus::Result<String>;
    fn detach(&self, network: &str, workload: &str) -> zbus::Result<()>;
}

/// Puts the tap on `network`'s bridge as `workload` through the network
/// module; the address a.b.c.d/n the guest is to use.
pub async fn network_attach_tap(
    socket: &Path,
    network: &str,
    workload: &str,
    tap: &str,
) -> zbus::Result<String> {
    let conn = zeronode_types::bus::connect(socket).await?;
    Network1Proxy::new(&conn)
        .await?
        .attach_tap(network, workload, tap)
        .await
}

pub async fn network_detach(socket: &Path, network: &str, workload: &str) -> zbus::Result<()> {
    let conn = zeronode_types::bus::connect(socket).await?;
    Network1Proxy::new(&conn)
        .await?
        .detach(network, workload)
        .await
}
