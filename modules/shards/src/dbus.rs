//! `org.zeronode.Shards1` at `/org/zeronode/Shards1`: how provision creates
//! and removes the namespaces of `zdb` workloads. Served with
//! `zeronode_types::bus` on `/run/zeronode/shards.sock`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zbus::{interface, proxy, DBusError, Type};

use crate::namespace::{Meta, Mode, PasswordHash};
use crate::server::set_property;
use crate::store::Store;

pub const OBJECT_PATH: &str = "/org/zeronode/Shards1";
pub const INTERFACE: &str = "org.zeronode.Shards1";

/// Errors as D-Bus names `org.zeronode.Shards1.Error.<Variant>`.
#[derive(Debug, DBusError)]
#[zbus(prefix = "org.zeronode.Shards1.Error")]
pub enum Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// Bad name, mode, size or property.
    Invalid(String),
    /// The namespace exists already (a re-run deployment can take it as done).
    Exists(String),
    NotFound(String),
    /// The store could not do it (disk).
    Failed(String),
}

impl From<crate::Error> for Error {
    fn from(e: crate::Error) -> Self {
        let msg = e.to_string();
        match e {
            crate::Error::BadName(_) | crate::Error::Invalid(_) => Error::Invalid(msg),
            crate::Error::Exists(_) => Error::Exists(msg),
            crate::Error::NotFound(_) => Error::NotFound(msg),
            _ => Error::Failed(msg),
        }
    }
}

/// Where a namespace is reached: D-Bus `(ssq)`. `host` is the listen
/// address (`0.0.0.0` means every address of the node: the caller puts the
/// node's public address in the deployment result).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct NamespaceAddress {
    pub namespace: String,
    pub host: String,
    pub port: u16,
}

/// D-Bus `(sttsbbst)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct NamespaceInfo {
    pub name: String,
    /// maxsize in bytes, 0 = unlimited.
    pub size: u64,
    /// Live keys + values in bytes.
    pub used: u64,
    pub mode: String,
    pub public: bool,
    pub password_set: bool,
    pub entries: u64,
    pub sync: String,
}

#[derive(Clone)]
pub struct ShardsService {
    store: Arc<Store>,
    host: String,
    port: u16,
}

impl ShardsService {
    /// `listen` is the RESP server's `host:port`.
    pub fn new(store: Arc<Store>, listen: std::net::SocketAddr) -> Self {
        ShardsService {
            store,
            host: listen.ip().to_string(),
            port: listen.port(),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, crate::Error> + Send + 'static,
    ) -> Result<T, Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Error::Failed(format!("store task: {e}")))?
            .map_err(Error::from)
    }
}

#[interface(name = "org.zeronode.Shards1")]
impl ShardsService {
    /// Creates a namespace. `size` is its maxsize in bytes (0 = no limit),
    /// `mode` user or seq, `password` empty for none, `public` lets anyone
    /// read it without the password.
    async fn namespace_create(
        &self,
        name: String,
        size: u64,
        mode: String,
        password: String,
        public: bool,
    ) -> Result<NamespaceAddress, Error> {
        let mode: Mode = mode.parse().map_err(Error::Invalid)?;
        let password = if password.is_empty() {
            None
        } else {
            Some(PasswordHash::new(&password).map_err(Error::from)?)
        };
        let meta = Meta {
            mode,
            maxsize: size,
            public,
            password,
            sync: None,
        };
        let n = name.clone();
        self.blocking(move |s| s.create(&n, meta).map(|_| ()))
            .await?;
        Ok(NamespaceAddress {
            namespace: name,
            host: self.host.clone(),
            port: self.port,
        })
    }

    /// The RESP listener `(host, port)`; `0.0.0.0` is any address of the
    /// node. NamespaceCreate answers it too, but a caller re-applying an
    /// existing namespace (after a reboot) needs it without creating.
    async fn listener(&self) -> (String, u16) {
        (self.host.clone(), self.port)
    }

    /// Deletes a namespace and all its data.
    async fn namespace_delete(&self, name: String) -> Result<(), Error> {
        self.blocking(move |s| s.delete(&name)).await
    }

    async fn namespace_list(&self) -> Vec<String> {
        self.store.list()
    }

    async fn namespace_info(&self, name: String) -> Result<NamespaceInfo, Error> {
        let ns = self
            .store
            .get(&name)
            .ok_or_else(|| Error::NotFound(format!("Namespace {name} not found")))?;
        let m = ns.meta();
        let s = ns.stats();
        Ok(NamespaceInfo {
            name,
            size: m.maxsize,
            used: s.data_bytes,
            mode: m.mode.as_str().into(),
            public: m.public,
            password_set: m.password.is_some(),
            entries: s.entries,
            sync: ns.policy().as_str().into(),
        })
    }

    /// Changes one property: password, maxsize, public, mode or sync (as NSSET).
    async fn namespace_set(
        &self,
        name: String,
        property: String,
        value: String,
    ) -> Result<(), Error> {
        self.blocking(move |s| {
            let ns = s.get(&name).ok_or(crate::Error::NotFound(name))?;
            set_property(&ns, &property, &value)
        })
        .await
    }

    /// Compacts a namespace now; answers the bytes reclaimed.
    async fn namespace_compact(&self, name: String) -> Result<u64, Error> {
        self.blocking(move |s| {
            let ns = s.get(&name).ok_or(crate::Error::NotFound(name))?;
            ns.compact()
        })
        .await
    }
}

#[proxy(
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
    ) -> zbus::Result<NamespaceAddress>;
    fn listener(&self) -> zbus::Result<(String, u16)>;
    fn namespace_delete(&self, name: &str) -> zbus::Result<()>;
    fn namespace_list(&self) -> zbus::Result<Vec<String>>;
    fn namespace_info(&self, name: &str) -> zbus::Result<NamespaceInfo>;
    fn namespace_set(&self, name: &str, property: &str, value: &str) -> zbus::Result<()>;
    fn namespace_compact(&self, name: &str) -> zbus::Result<u64>;
}
