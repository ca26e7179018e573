//! org.zeronode.Storage1: pools, disks, cache and volumes over D-Bus.

use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use serde::{Deserialize, Serialize};
use zbus::zvariant::Type;
use zbus::DBusError;

use crate::error::StorageError;
use crate::node::{DiskState, Node};
use crate::volumes;

pub const INTERFACE: &str = "org.zeronode.Storage1";
pub const OBJECT_PATH: &str = "/org/zeronode/Storage1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct PoolInfo {
    pub name: String,
    pub device: String,
    pub mount_point: String,
    pub ssd: bool,
    pub size: u64,
    pub used: u64,
    pub free: u64,
    /// This pool holds the node cache.
    pub cache: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct DiskInfo {
    pub name: String,
    pub device: String,
    pub serial: String,
    pub by_id: Vec<String>,
    pub model: String,
    pub ssd: bool,
    pub size: u64,
    /// "pool", "left-alone" or "failed".
    pub state: String,
    /// The pool's name, why it was left alone, or the error.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct VolumeInfo {
    pub name: String,
    pub pool: String,
    pub path: String,
    pub used: u64,
    /// 0: no limit.
    pub limit: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct CacheInfo {
    pub path: String,
    /// Empty when the cache is on tmpfs.
    pub pool: String,
    /// False: on tmpfs, lost at reboot.
    pub persistent: bool,
}

#[derive(Debug, DBusError)]
#[zbus(prefix = "org.zeronode.Storage1.Error")]
pub enum BusError {
    #[zbus(error)]
    ZBus(zbus::Error),
    InvalidArgs(String),
    Exists(String),
    NotFound(String),
    NoPool(String),
    Failed(String),
}

impl From<StorageError> for BusError {
    fn from(e: StorageError) -> Self {
        let msg = e.to_string();
        match e {
            StorageError::BadVolumeName { .. } | StorageError::BadSize { .. } => {
                BusError::InvalidArgs(msg)
            }
            StorageError::VolumeExists(_) => BusError::Exists(msg),
            StorageError::NoSuchVolume(_) => BusError::NotFound(msg),
            StorageError::NoPool => BusError::NoPool(msg),
            _ => BusError::Failed(msg),
        }
    }
}

/// The served object; clones share the node's state, which grows when a
/// disk comes late (see `node::add_late_disk`).
#[derive(Clone)]
pub struct StorageService {
    node: Arc<RwLock<Node>>,
    /// Volume changes one at a time, so two creates of one name cannot race.
    volume_lock: Arc<Mutex<()>>,
}

impl StorageService {
    pub fn new(node: Node) -> Self {
        StorageService {
            node: Arc::new(RwLock::new(node)),
            volume_lock: Arc::new(Mutex::new(())),
        }
    }

    /// The node's state, for the late-disk listener to add to.
    pub fn node(&self) -> Arc<RwLock<Node>> {
        self.node.clone()
    }

    fn read(&self) -> RwLockReadGuard<'_, Node> {
        read_node(&self.node)
    }

    /// Runs a blocking volume operation off the async executor.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Node) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, BusError> {
        let node = self.node.clone();
        let lock = self.volume_lock.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            f(&read_node(&node))
        })
        .await
        .map_err(|e| BusError::Failed(format!("volume task: {e}")))?
        .map_err(BusError::from)
    }
}

/// The node's state for reading; a writer that panicked left it whole
/// (it only pushes finished pools and reports).
pub fn read_node(node: &RwLock<Node>) -> RwLockReadGuard<'_, Node> {
    node.read().unwrap_or_else(|p| p.into_inner())
}

pub fn pool_infos(node: &Node) -> Result<Vec<PoolInfo>, StorageError> {
    node.pools
        .iter()
        .map(|p| {
            let u = volumes::usage(&p.mount_point)?;
            Ok(PoolInfo {
                name: p.label.clone(),
                device: p.device.display().to_string(),
                mount_point: p.mount_point.display().to_string(),
                ssd: p.ssd,
                size: u.size,
                used: u.used,
                free: u.free,
                cache: node.cache.pool.as_deref() == Some(p.label.as_str()),
            })
        })
        .collect()
}

pub fn disk_infos(node: &Node) -> Vec<DiskInfo> {
    node.disks
        .iter()
        .map(|r| {
            let (state, detail) = match &r.state {
                DiskState::Pool { label, .. } => ("pool", label.clone()),
                DiskState::LeftAlone(why) => ("left-alone", why.clone()),
                DiskState::Failed(e) => ("failed", e.clone()),
                DiskState::Formatting => (
                    "formatting",
                    "blank: waiting for its format as a pool".into(),
                ),
            };
            DiskInfo {
                name: r.disk.name.clone(),
                device: r.disk.dev.display().to_string(),
                serial: r.disk.serial.clone().unwrap_or_default(),
                by_id: r.disk.by_id.clone(),
                model: r.disk.model.clone().unwrap_or_default(),
                ssd: !r.disk.rotational,
                size: r.disk.size_bytes,
                state: state.into(),
                detail,
            }
        })
        .collect()
}

#[zbus::interface(name = "org.zeronode.Storage1")]
impl StorageService {
    /// Mounted pools with size, used and free bytes.
    async fn pools(&self) -> Result<Vec<PoolInfo>, BusError> {
        self.blocking(pool_infos).await
    }

    /// Every disk seen, pooled or left alone, with the reason.
    async fn disks(&self) -> Vec<DiskInfo> {
        disk_infos(&self.read())
    }

    /// Where the node cache is and whether it survives a reboot.
    async fn cache(&self) -> CacheInfo {
        let c = &self.read().cache;
        CacheInfo {
            path: c.path.display().to_string(),
            pool: c.pool.clone().unwrap_or_default(),
            persistent: c.pool.is_some(),
        }
    }

    /// Creates volume `name` limited to `size_bytes`; returns its path.
    async fn volume_create(&self, name: String, size_bytes: u64) -> Result<String, BusError> {
        self.blocking(move |n| volumes::create(&n.pools, &name, size_bytes))
            .await
            .map(|p| p.display().to_string())
    }

    /// Deletes volume `name` with its data.
    async fn volume_delete(&self, name: String) -> Result<(), BusError> {
        self.blocking(move |n| volumes::delete(&n.pools, &name))
            .await
    }

    /// Every volume with its usage and limit.
    async fn volume_list(&self) -> Result<Vec<VolumeInfo>, BusError> {
        let vols = self.blocking(|n| volumes::list(&n.pools)).await?;
        Ok(vols
            .into_iter()
            .map(|v| VolumeInfo {
                name: v.name,
                pool: v.pool,
                path: v.path.display().to_string(),
                used: v.used,
                limit: v.limit,
            })
            .collect())
    }
}

/// The client side, for other modules and tests.
#[zbus::proxy(
    interface = "org.zeronode.Storage1",
    default_service = "org.zeronode.Storage1",
    default_path = "/org/zeronode/Storage1"
)]
pub trait Storage1 {
    fn pools(&self) -> zbus::Result<Vec<PoolInfo>>;
    fn disks(&self) -> zbus::Result<Vec<DiskInfo>>;
    fn cache(&self) -> zbus::Result<CacheInfo>;
    fn volume_create(&self, name: &str, size_bytes: u64) -> zbus::Result<String>;
    fn volume_delete(&self, name: &str) -> zbus::Result<()>;
    fn volume_list(&self) -> zbus::Result<Vec<VolumeInfo>>;
}
