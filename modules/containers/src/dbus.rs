//! `org.zeronode.Containers1` at `/org/zeronode/Containers1`, and the
//! client side of the network module's interface (Attach/Detach only: the
//! module does not link the network crate).

use std::path::Path;
use std::sync::Arc;

use zbus::{interface, proxy, DBusError};

use crate::manager::Manager;
use crate::spec::ContainerSpec;
use crate::Error as CError;

pub const OBJECT_PATH: &str = "/org/zeronode/Containers1";
pub const SOCKET_NAME: &str = "containers";

#[derive(Debug, DBusError)]
#[zbus(prefix = "org.zeronode.Containers1.Error")]
pub enum Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The request itself is wrong (bad spec, digest mismatch): nothing changed.
    InvalidArgument(String),
    NotFound(String),
    Failed(String),
}

impl From<CError> for Error {
    fn from(e: CError) -> Self {
        match e {
            CError::Invalid(_) | CError::DigestMismatch { .. } | CError::Layout(_) => {
                Error::InvalidArgument(e.to_string())
            }
            CError::NotFound(_) => Error::NotFound(e.to_string()),
            _ => Error::Failed(e.to_string()),
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, Error> {
    serde_json::to_string(v).map_err(|e| Error::Failed(format!("encode: {e}")))
}

#[derive(Clone)]
pub struct Containers {
    pub manager: Arc<Manager>,
}

#[interface(name = "org.zeronode.Containers1")]
impl Containers {
    /// Creates (or, with the same spec, keeps) a container from its
    /// workload spec (JSON); returns its status (JSON).
    async fn create(&self, spec: String) -> Result<String, Error> {
        let spec = ContainerSpec::from_json(&spec)?;
        json(&self.manager.create(spec).await?)
    }

    /// Removes the container, its task, snapshot, network attachment and
    /// logs; images no container uses any more go too. Volumes stay.
    async fn delete(&self, name: String) -> Result<(), Error> {
        Ok(self.manager.delete(&name).await?)
    }

    /// Every container's status, as a JSON array.
    async fn list(&self) -> Result<String, Error> {
        json(&self.manager.list().await?)
    }

    async fn status(&self, name: String) -> Result<String, Error> {
        json(&self.manager.status(&name).await?)
    }

    /// The last `max_bytes` of the container's stdout and stderr
    /// (invalid UTF-8 replaced).
    async fn logs(&self, name: String, max_bytes: u64) -> Result<String, Error> {
        let b = self.manager.logs(&name, max_bytes.min(16 << 20))?;
        Ok(crate::logs::as_text(&b))
    }
}

#[proxy(
    interface = "org.zeronode.Containers1",
    default_service = "org.zeronode.Containers1",
    default_path = "/org/zeronode/Containers1"
)]
pub trait Containers1 {
    fn create(&self, spec: &str) -> zbus::Result<String>;
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
    fn attach(&self, network: &str, workload: &str, netns: &str) -> zbus::Result<String>;
    fn detach(&self, network: &str, workload: &str) -> zbus::Result<()>;
}

/// Attaches the namespace at `netns` to `network` as `workload` through
/// the network module; its address a.b.c.d/n.
pub async fn network_attach(
    socket: &Path,
    network: &str,
    workload: &str,
    netns: &Path,
) -> zbus::Result<String> {
    let conn = zeronode_types::bus::connect(socket).await?;
    let p = Network1Proxy::new(&conn).await?;
    p.attach(network, workload, &netns.display().to_string())
        .await
}

pub async fn network_detach(socket: &Path, network: &str, workload: &str) -> zbus::Result<()> {
    let conn = zeronode_types::bus::connect(socket).await?;
    Network1Proxy::new(&conn)
        .await?
        .detach(network, workload)
        .await
}
