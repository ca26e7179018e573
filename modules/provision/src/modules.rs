//! D-Bus links to the other modules: one peer-to-peer connection per
//! module, made on first use and made again after the module restarts.

use std::path::{Path, PathBuf};

use tokio::sync::Mutex;

/// A module's socket and the connection to it, if one is up.
pub struct ModuleConn {
    pub name: &'static str,
    pub path: PathBuf,
    conn: Mutex<Option<zbus::Connection>>,
}

impl ModuleConn {
    pub fn new(name: &'static str, path: PathBuf) -> Self {
        ModuleConn {
            name,
            path,
            conn: Mutex::new(None),
        }
    }

    /// The live connection, or a new one.
    pub async fn get(&self) -> Result<zbus::Connection, String> {
        let mut g = self.conn.lock().await;
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        let c = zeronode_types::bus::connect(&self.path)
            .await
            .map_err(|e| {
                format!(
                    "{} module not available ({}): {e}",
                    self.name,
                    self.path.display()
                )
            })?;
        *g = Some(c.clone());
        Ok(c)
    }

    /// Forget the connection after a transport error, so the next call
    /// reconnects (the module may have restarted).
    pub async fn reset(&self) {
        *self.conn.lock().await = None;
    }

    pub fn socket(&self) -> &Path {
        &self.path
    }
}

/// A D-Bus method error of the module itself (not a transport failure):
/// (error name, message).
pub fn method_error(e: &zbus::Error) -> Option<(String, String)> {
    match e {
        zbus::Error::MethodError(name, msg, _) => {
            Some((name.to_string(), msg.clone().unwrap_or_default()))
        }
        _ => None,
    }
}

/// `org.zeronode.Network1`, the calls provision makes (docs/network.md).
/// Declared here rather than taken from zeronode-network so provision does
/// not link netlink and DHCP code it never runs.
#[zbus::proxy(
    interface = "org.zeronode.Network1",
    default_service = "org.zeronode.Network1",
    default_path = "/org/zeronode/Network1"
)]
pub trait Network1 {
    fn state(&self) -> zbus::Result<String>;
    fn network_create(&self, name: &str, subnet: &str) -> zbus::Result<String>;
    fn network_delete(&self, name: &str) -> zbus::Result<()>;
}

/// `org.zeronode.Storage1`, the calls provision makes (docs/storage.md).
#[zbus::proxy(
    interface = "org.zeronode.Storage1",
    default_service = "org.zeronode.Storage1",
    default_path = "/org/zeronode/Storage1"
)]
pub trait Storage1 {
    fn volume_create(&self, name: &str, size_bytes: u64) -> zbus::Result<String>;
    fn volume_delete(&self, name: &str) -> zbus::Result<()>;
    fn volume_list(&self) -> zbus::Result<Vec<(String, String, String, u64, u64)>>;
    fn pools(&self) -> zbus::Result<Vec<(String, String, String, bool, u64, u64, u64, bool)>>;
}

/// `org.zeronode.Containers1` (docs/containers.md). Declared here rather
/// than taken from zeronode-containers, which links containerd's gRPC
/// client (tonic, prost) that provision never uses; the spec it takes is
/// built as JSON by [`crate::reconcile::container_spec`].
#[zbus::proxy(
    interface = "org.zeronode.Containers1",
    default_service = "org.zeronode.Containers1",
    default_path = "/org/zeronode/Containers1"
)]
pub trait Containers1 {
    fn create(&self, spec: &str) -> zbus::Result<String>;
    fn delete(&self, name: &str) -> zbus::Result<()>;
    fn status(&self, name: &str) -> zbus::Result<String>;
    fn logs(&self, name: &str, max_bytes: u64) -> zbus::Result<String>;
}

/// `org.zeronode.Vms1` (docs/vms.md). Declared here rather than taken
/// from zeronode-vms, which links the containers crate; the spec it takes
/// is built as JSON by [`crate::reconcile::vm_spec`].
#[zbus::proxy(
    interface = "org.zeronode.Vms1",
    default_service = "org.zeronode.Vms1",
    default_path = "/org/zeronode/Vms1"
)]
pub trait Vms1 {
    fn create(&self, spec: &str) -> zbus::Result<String>;
    fn delete(&self, name: &str) -> zbus::Result<()>;
    fn status(&self, name: &str) -> zbus::Result<String>;
    fn logs(&self, name: &str, max_bytes: u64) -> zbus::Result<String>;
}

/// `org.zeronode.Shards1` (docs/shards.md). NamespaceCreate answers
/// `(ssq)`: namespace, host, port of the RESP listener.
#[zbus::proxy(
    interface = "org.zeronode.Shards1",
    default_service = "org.zeronode.Shards1",
    default_path = "/org/zeronode/Shards1"
)]
pub trait Shards1 {
    fn namespace_create(
        &self,
        name: &str,
        size: u64,
        mode: &str,
        password: &str,
        public: bool,
    ) -> zbus::Result<(String, String, u16)>;
    /// host, port of the RESP listener.
    fn listener(&self) -> zbus::Result<(String, u16)>;
    fn namespace_delete(&self, name: &str) -> zbus::Result<()>;
    /// name, size, used, mode, public, password set, entries, sync.
    #[allow(clippy::type_complexity)]
    fn namespace_info(
        &self,
        name: &str,
    ) -> zbus::Result<(String, u64, u64, String, bool, bool, u64, String)>;
}
