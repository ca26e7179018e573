//! Bringing workloads to their declared state through the modules, one
//! small driver per workload type, and self-healing: at start and whenever
//! a module's socket reappears, every live workload is applied again (the
//! drivers are idempotent); expired deployments are torn down.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::json;
use zeronode_deployment::{Deployment, ImageRef, Workload, WorkloadData, WorkloadType};

use crate::app::{now_secs, App, Config, KIND_DELETE, KIND_RESULT};
use crate::modules::{
    method_error, Containers1Proxy, ModuleConn, Network1Proxy, Shards1Proxy, Storage1Proxy,
    Vms1Proxy,
};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadResult {
    /// ok, error or deleted.
    pub state: String,
    pub reason: String,
    /// What the module made (a volume's path, a network's gateway).
    pub detail: String,
    pub version: u64,
}

/// One workload type's link to the module that runs it. A module that
/// does not exist yet (containers, shards) plugs in by implementing this.
pub trait Driver: Send + Sync {
    /// Makes it so; repeating an apply of the same spec is ok. Answers
    /// a detail string for the status.
    fn apply<'a>(&'a self, dep: &'a str, w: &'a Workload) -> BoxFuture<'a, Result<String, String>>;
    fn remove<'a>(&'a self, dep: &'a str, w: &'a Workload) -> BoxFuture<'a, Result<(), String>>;
    /// Whether an applied workload can change into `new` in place.
    fn can_change(&self, _old: &Workload, _new: &Workload) -> Result<(), String> {
        Ok(())
    }
    /// The module connection, watched for restarts.
    fn module(&self) -> Option<&ModuleConn>;
    /// A workload's logs, for types that keep them (None: this type has none).
    fn logs<'a>(
        &'a self,
        _dep: &'a str,
        _workload: &'a str,
        _max_bytes: u64,
    ) -> BoxFuture<'a, Option<Result<String, String>>> {
        Box::pin(async { None })
    }
}

/// Node-side names, stable and within each module's rules: network names
/// are 1-10 of [a-z0-9-], volume names 1-64 of [A-Za-z0-9._-].
pub fn node_name(prefix: &str, dep: &str, workload: &str, hex_len: usize) -> String {
    let h = blake3::hash(format!("{dep}/{workload}").as_bytes());
    let hex = zeronode_deployment::hex::encode(h.as_bytes());
    format!("{prefix}{}", &hex[..hex_len])
}

pub fn network_name(dep: &str, w: &str) -> String {
    node_name("n", dep, w, 9)
}

pub fn volume_name(dep: &str, w: &str) -> String {
    node_name("zn-", dep, w, 32)
}

/// Container names: 1-64 of [a-z0-9_.-] in the containers module.
pub fn container_name(dep: &str, w: &str) -> String {
    node_name("zn-", dep, w, 32)
}

/// zdb namespace names: 1-128 of [A-Za-z0-9._-] in the shards module.
pub fn namespace_name(dep: &str, w: &str) -> String {
    node_name("zn-", dep, w, 32)
}

/// VM names: 1-64 of [a-z0-9_.-] in the vms module.
pub fn vm_name(dep: &str, w: &str) -> String {
    node_name("zn-", dep, w, 32)
}

/// A failed call as a result reason. A transport error (not an error the
/// module answered) drops the connection, so the next call reconnects.
async fn failed(m: &ModuleConn, e: zbus::Error) -> String {
    if method_error(&e).is_none() {
        m.reset().await;
    }
    call_error(m, e)
}

/// The module answered that the thing is not there: a removal is done.
fn is_not_found(e: &zbus::Error) -> bool {
    method_error(e).is_some_and(|(n, _)| n.ends_with(".NotFound"))
}

fn call_error(m: &ModuleConn, e: zbus::Error) -> String {
    match method_error(&e) {
        Some((name, msg)) => format!("{name}: {msg}"),
        None => format!("{} module: {e}", m.name),
    }
}

pub struct NetworkDriver(pub ModuleConn);

impl Driver for NetworkDriver {
    fn apply<'a>(&'a self, dep: &'a str, w: &'a Workload) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let Ok(WorkloadData::Network(n)) = w.typed() else {
                return Err("not a network".into());
            };
            let conn = self.0.get().await?;
            let p = Network1Proxy::new(&conn).await.map_err(|e| e.to_string())?;
            let name = network_name(dep, &w.name);
            // NetworkCreate is idempotent for the same name and subnet.
            match p.network_create(&name, &n.subnet).await {
                Ok(gw) => Ok(format!("bridge znb-{name} {gw}")),
                Err(e) => Err(failed(&self.0, e).await),
            }
        })
    }

    fn remove<'a>(&'a self, dep: &'a str, w: &'a Workload) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let conn = self.0.get().await?;
            let p = Network1Proxy::new(&conn).await.map_err(|e| e.to_string())?;
            match p.network_delete(&network_name(dep, &w.name)).await {
                Ok(()) => Ok(()),
                // Gone already: the order is met.
                Err(e) if method_error(&e).is_some_and(|(_, m)| m.contains("no network")) => Ok(()),
                Err(e) => Err(call_error(&self.0, e)),
            }
        })
    }

    fn module(&self) -> Option<&ModuleConn> {
        Some(&self.0)
    }
}

pub struct VolumeDriver(pub ModuleConn);

impl Driver for VolumeDriver {
    fn apply<'a>(&'a self, dep: &'a str, w: &'a Workload) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let Ok(WorkloadData::Volume(v)) = w.typed() else {
                return Err("not a volume".into());
            };
            let conn = self.0.get().await?;
            let p = Storage1Proxy::new(&conn).await.map_err(|e| e.to_string())?;
            let name = volume_name(dep, &w.name);
            match p.volume_create(&name, v.size).await {
                Ok(path) => Ok(path),
                Err(e) if method_error(&e).is_some_and(|(n, _)| n.ends_with(".Exists")) => {
                    // Idempotent: the same volume with the same limit is ok.
                    let list = p.volume_list().await.map_err(|e| call_error(&self.0, e))?;
                    match list.into_iter().find(|x| x.0 == name) {
                        Some((_, _, path, _, limit)) if limit == v.size => Ok(path),
                        Some((_, _, _, _, limit)) => Err(format!(
                            "volume {name} exists with limit {limit}, not {}",
                            v.size
                        )),
                        None => Err(format!("volume {name}: exists but is not listed")),
                    }
                }
                Err(e) => Err(failed(&self.0, e).await),
            }
        })
    }

    fn remove<'a>(&'a self, dep: &'a str, w: &'a Workload) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let conn = self.0.get().await?;
            let p = Storage1Proxy::new(&conn).await.map_err(|e| e.to_string())?;
            match p.volume_delete(&volume_name(dep, &w.name)).await {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(failed(&self.0, e).await),
            }
        })
    }

    fn can_change(&self, old: &Workload, new: &Workload) -> Result<(), String> {
        if old.data != new.data {
            // Remove + create would lose the data in it.
            return Err("a volume's size cannot change in place; add a new volume instead".into());
        }
        Ok(())
    }

    fn module(&self) -> Option<&ModuleConn> {
        Some(&self.0)
    }
}

/// Builds the containers module's spec (docs/containers.md) from a
/// `container` workload: names become node names, each mount's volume
/// becomes its node path (`volume_path` answers it by node volume name).
/// The members provision does not interpret (entrypoint, args, env,
/// workdir, restart) are passed as received; the module refuses bad ones.
pub fn container_spec(
    dep: &str,
    w: &Workload,
    volume_path: &dyn Fn(&str) -> Option<String>,
) -> Result<serde_json::Value, String> {
    let Ok(WorkloadData::Container(c)) = w.typed() else {
        return Err("not a container".into());
    };
    let image = match &c.image {
        ImageRef::Archive { url, sha256 } => json!({"url": url, "sha256": sha256}),
        ImageRef::Reference(r) => {
            return Err(format!(
                "image {r:?}: registry images are not supported by the containers module; \
                 give image = {{url, sha256}} of an OCI archive"
            ))
        }
    };
    let mut mounts = Vec::new();
    for m in &c.mounts {
        let name = volume_name(dep, &m.volume);
        let Some(path) = volume_path(&name) else {
            return Err(format!("volume {:?} ({name}) is not on the node", m.volume));
        };
        mounts.push(json!({"source": path, "target": m.path, "readonly": m.readonly}));
    }
    let mut spec = serde_json::Map::new();
    for k in ["entrypoint", "args", "env", "workdir", "restart"] {
        if let Some(v) = c.rest.get(k) {
            spec.insert(k.into(), v.clone());
        }
    }
    if let Some(k) = c
        .rest
        .keys()
        .find(|k| !["entrypoint", "args", "env", "workdir", "restart"].contains(&k.as_str()))
    {
        return Err(format!("unknown container member {k:?}"));
    }
    spec.insert("name".into(), json!(container_name(dep, &w.name)));
    spec.insert("image".into(), image);
    spec.insert("cpu".into(), json!(c.cpu as f64));
    spec.insert("memory".into(), json!(c.memory));
    if !mounts.is_empty() {
        spec.insert("mounts".into(), json!(mounts));
    }
    if let Some(n) = &c.network {
        spec.insert("network".into(), json!({"name": network_name(dep, n)}));
    }
    Ok(serde_json::Value::Object(spec))
}

/// `container` -> `Containers1.Create` (idempotent in the module for the
/// same spec). Mount sources come from `Storage1.VolumeList`, so the
/// storage module is asked too.
pub struct ContainerDriver {
    pub containers: ModuleConn,
    pub storage: ModuleConn,
}

/// Node volume name -> its path, from `Storage1.VolumeList`.
async fn volume_paths(storage: &ModuleConn) -> Result<HashMap<String, String>, String> {
    let conn = storage.get().await?;
    let p = Storage1Proxy::new(&conn).await.map_err(|e| e.to_string())?;
    match p.volume_list().await {
        Ok(list) => Ok(list.into_iter().map(|v| (v.0, v.2)).collect()),
        Err(e) => Err(failed(storage, e).await),
    }
}

impl ContainerDriver {
    async fn volume_paths(&self) -> Result<HashMap<String, String>, String> {
        volume_paths(&self.storage).await
    }

    /// The container's logs (stdout and stderr, the last `max_bytes`).
    pub async fn logs(&self, dep: &str, workload: &str, max_bytes: u64) -> Result<String, String> {
        let conn = self.containers.get().await?;
        let p = Containers1Proxy::new(&conn)
            .await
            .map_err(|e| e.to_string())?;
        p.logs(&container_name(dep, workload), max_bytes)
            .await
            .map_err(|e| call_error(&self.containers, e))
    }
}

impl Driver for ContainerDriver {
    fn apply<'a>(&'a self, dep: &'a str, w: &'a Workload) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let needs_volumes =
                matches!(w.typed(), Ok(WorkloadData::Container(c)) if !c.mounts.is_empty());
            let paths = if needs_volumes {
                self.volume_paths().await?
            } else {
                HashMap::new()
            };
            let spec = container_spec(dep, w, &|n| paths.get(n).cloned())?;
            let conn = self.containers.get().await?;
            let p = Containers1Proxy::new(&conn)
                .await
                .map_err(|e| e.to_string())?;
            // No call timeout (zbus has none by default): a first Create
            // downloads and unpacks the image, which can take minutes.
            match p.create(&spec.to_string()).await {
                Ok(status) => Ok(container_detail(&status)),
                Err(e) => Err(failed(&self.containers, e).await),
            }
        })
    }

    fn remove<'a>(&'a self, dep: &'a str, w: &'a Workload) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let conn = self.containers.get().await?;
            let p = Containers1Proxy::new(&conn)
                .await
                .map_err(|e| e.to_string())?;
            match p.delete(&container_name(dep, &w.name)).await {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(failed(&self.containers, e).await),
            }
        })
    }

    fn module(&self) -> Option<&ModuleConn> {
        Some(&self.containers)
    }

    fn logs<'a>(
        &'a self,
        dep: &'a str,
        workload: &'a str,
        max_bytes: u64,
    ) -> BoxFuture<'a, Option<Result<String, String>>> {
        Box::pin(async move { Some(ContainerDriver::logs(self, dep, workload, max_bytes).await) })
    }
}

/// The status detail: `container NAME STATE ADDRESS` (the address when it
/// is on a network), from the module's status JSON.
fn container_detail(status: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(status).unwrap_or_default();
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let mut d = format!("container {} {}", s("name"), s("state"));
    let addr = s("address");
    if !addr.is_empty() {
        d.push(' ');
        d.push_str(&addr);
    }
    d
}

/// Builds the vms module's spec (docs/vms.md) from a `vm` workload: names
/// become node names, each disk's volume its node path. The members
/// provision does not interpret (kernel, initrd, cmdline, disk_image,
/// cloud_init) are passed as received; the module refuses bad ones.
pub fn vm_spec(
    dep: &str,
    w: &Workload,
    volume_path: &dyn Fn(&str) -> Option<String>,
) -> Result<serde_json::Value, String> {
    const PASSED: [&str; 5] = ["kernel", "initrd", "cmdline", "disk_image", "cloud_init"];
    let Ok(WorkloadData::Vm(v)) = w.typed() else {
        return Err("not a vm".into());
    };
    if let Some(k) = v.rest.keys().find(|k| !PASSED.contains(&k.as_str())) {
        return Err(format!("unknown vm member {k:?}"));
    }
    let mut disks = Vec::new();
    for d in &v.disks {
        let name = volume_name(dep, &d.volume);
        let Some(path) = volume_path(&name) else {
            return Err(format!("volume {:?} ({name}) is not on the node", d.volume));
        };
        let mut disk = json!({"volume": path, "size": d.size, "readonly": d.readonly});
        if let Some(f) = &d.file {
            disk["file"] = json!(f);
        }
        disks.push(disk);
    }
    let mut spec = serde_json::Map::new();
    for k in PASSED {
        if let Some(x) = v.rest.get(k) {
            spec.insert(k.into(), x.clone());
        }
    }
    spec.insert("name".into(), json!(vm_name(dep, &w.name)));
    spec.insert("cpu".into(), json!(v.cpu));
    spec.insert("memory".into(), json!(v.memory));
    if !disks.is_empty() {
        spec.insert("disks".into(), json!(disks));
    }
    if let Some(n) = &v.network {
        spec.insert("network".into(), json!({"name": network_name(dep, n)}));
    }
    Ok(serde_json::Value::Object(spec))
}

/// `vm` -> `Vms1.Create` (idempotent in the module for the same spec).
/// Disk volumes' paths come from `Storage1.VolumeList`.
pub struct VmDriver {
    pub vms: ModuleConn,
    pub storage: ModuleConn,
}

impl Driver for VmDriver {
    fn apply<'a>(&'a self, dep: &'a str, w: &'a Workload) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let needs_volumes = matches!(w.typed(), Ok(WorkloadData::Vm(v)) if !v.disks.is_empty());
            let paths = if needs_volumes {
                volume_paths(&self.storage).await?
            } else {
                HashMap::new()
            };
            let spec = vm_spec(dep, w, &|n| paths.get(n).cloned())?;
            let conn = self.vms.get().await?;
            let p = Vms1Proxy::new(&conn).await.map_err(|e| e.to_string())?;
            // No call timeout: a first Create downloads the kernel or image.
            match p.create(&spec.to_string()).await {
                Ok(status) => Ok(vm_detail(&status)),
                Err(e) => Err(failed(&self.vms, e).await),
            }
        })
    }

    fn remove<'a>(&'a self, dep: &'a str, w: &'a Workload) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let conn = self.vms.get().await?;
            let p = Vms1Proxy::new(&conn).await.map_err(|e| e.to_string())?;
            match p.delete(&vm_name(dep, &w.name)).await {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(failed(&self.vms, e).await),
            }
        })
    }

    fn module(&self) -> Option<&ModuleConn> {
        Some(&self.vms)
    }

    fn logs<'a>(
        &'a self,
        dep: &'a str,
        workload: &'a str,
        max_bytes: u64,
    ) -> BoxFuture<'a, Option<Result<String, String>>> {
        Box::pin(async move {
            let r = async {
                let conn = self.vms.get().await?;
                let p = Vms1Proxy::new(&conn).await.map_err(|e| e.to_string())?;
                p.logs(&vm_name(dep, workload), max_bytes)
                    .await
                    .map_err(|e| call_error(&self.vms, e))
            }
            .await;
            Some(r)
        })
    }
}

/// The status detail: `vm NAME STATE ACCEL ADDRESS` (the address when it
/// is on a network), from the module's status JSON.
fn vm_detail(status: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(status).unwrap_or_default();
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let mut d = format!("vm {} {} {}", s("name"), s("state"), s("accel"));
    if let Some(a) = v.get("address").and_then(|x| x.as_str()) {
        d.push(' ');
        d.push_str(a);
    }
    d
}

/// `zdb` -> `Shards1.NamespaceCreate`. The password goes to the module
/// only: never into a log line, an error or the result detail.
pub struct ZdbDriver {
    pub conn: ModuleConn,
}

impl ZdbDriver {
    pub fn new(conn: ModuleConn) -> Self {
        ZdbDriver { conn }
    }
}

/// A zdb mode in one spelling: the module answers 0-db's names (`userkey`,
/// `sequential`), a deployment may say `user` or `seq`.
fn zdb_mode(mode: &str) -> &str {
    match mode {
        "user" | "userkey" => "user",
        "seq" | "sequential" => "seq",
        other => other,
    }
}

struct ZdbSettings {
    size: u64,
    mode: String,
    password: String,
    public: bool,
}

fn zdb_settings(w: &Workload) -> Result<ZdbSettings, String> {
    let Ok(WorkloadData::Zdb(z)) = w.typed() else {
        return Err("not a zdb".into());
    };
    let password = match z.rest.get("password") {
        None => String::new(),
        Some(serde_json::Value::String(p)) => p.clone(),
        Some(_) => return Err("zdb password: a string expected".into()),
    };
    let public = match z.rest.get("public") {
        None => false,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(_) => return Err("zdb public: true or false expected".into()),
    };
    if let Some(k) = z.rest.keys().find(|k| *k != "password" && *k != "public") {
        return Err(format!("unknown zdb member {k:?}"));
    }
    Ok(ZdbSettings {
        size: z.size,
        mode: z.mode.unwrap_or_else(|| "user".into()),
        password,
        public,
    })
}

impl Driver for ZdbDriver {
    fn apply<'a>(&'a self, dep: &'a str, w: &'a Workload) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let z = zdb_settings(w)?;
            let conn = self.conn.get().await?;
            let p = Shards1Proxy::new(&conn).await.map_err(|e| e.to_string())?;
            let name = namespace_name(dep, &w.name);
            let r = p
                .namespace_create(&name, z.size, &z.mode, &z.password, z.public)
                .await;
            match r {
                Ok((ns, host, port)) => Ok(format!("namespace {ns} {host}:{port}")),
                Err(e) if method_error(&e).is_some_and(|(n, _)| n.ends_with(".Exists")) => {
                    // Idempotent: the same namespace with the same settings
                    // is ok (after a reboot the module still has it).
                    let info = p
                        .namespace_info(&name)
                        .await
                        .map_err(|e| call_error(&self.conn, e))?;
                    let (_, size, _, mode, public, password_set, _, _) = info;
                    let same_mode = zdb_mode(&mode) == zdb_mode(&z.mode);
                    if size != z.size
                        || !same_mode
                        || public != z.public
                        || password_set == z.password.is_empty()
                    {
                        return Err(format!(
                            "namespace {name} exists with other settings \
                             (size {size}, mode {mode}, public {public}, password set {password_set})"
                        ));
                    }
                    let (host, port) = p.listener().await.map_err(|e| call_error(&self.conn, e))?;
                    Ok(format!("namespace {name} {host}:{port}"))
                }
                Err(e) => Err(failed(&self.conn, e).await),
            }
        })
    }

    fn remove<'a>(&'a self, dep: &'a str, w: &'a Workload) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let conn = self.conn.get().await?;
            let p = Shards1Proxy::new(&conn).await.map_err(|e| e.to_string())?;
            match p.namespace_delete(&namespace_name(dep, &w.name)).await {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(failed(&self.conn, e).await),
            }
        })
    }

    fn can_change(&self, old: &Workload, new: &Workload) -> Result<(), String> {
        if old.data != new.data {
            // Remove + create would lose the namespace's data.
            return Err("a zdb's settings cannot change in place; add a new zdb instead".into());
        }
        Ok(())
    }

    fn module(&self) -> Option<&ModuleConn> {
        Some(&self.conn)
    }
}

/// A type whose module is not on this node yet: every apply is an error
/// result that says so, never a pretended success.
pub struct Unavailable(pub &'static str);

impl Driver for Unavailable {
    fn apply<'a>(&'a self, _: &'a str, _: &'a Workload) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move { Err(format!("{} module not available", self.0)) })
    }
    fn remove<'a>(&'a self, _: &'a str, _: &'a Workload) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { Ok(()) })
    }
    fn module(&self) -> Option<&ModuleConn> {
        None
    }
}

pub struct Drivers {
    map: HashMap<WorkloadType, Arc<dyn Driver>>,
    /// What each deployment's workloads were last reconciled to.
    applied: std::sync::Mutex<HashMap<String, Deployment>>,
}

impl Drivers {
    pub fn new(cfg: &Config) -> Self {
        let mut map: HashMap<WorkloadType, Arc<dyn Driver>> = HashMap::new();
        map.insert(
            WorkloadType::Network,
            Arc::new(NetworkDriver(ModuleConn::new(
                "network",
                cfg.network_socket.clone(),
            ))),
        );
        map.insert(
            WorkloadType::Volume,
            Arc::new(VolumeDriver(ModuleConn::new(
                "storage",
                cfg.storage_socket.clone(),
            ))),
        );
        map.insert(
            WorkloadType::Container,
            Arc::new(ContainerDriver {
                containers: ModuleConn::new("containers", cfg.containers_socket.clone()),
                storage: ModuleConn::new("storage", cfg.storage_socket.clone()),
            }),
        );
        map.insert(
            WorkloadType::Vm,
            Arc::new(VmDriver {
                vms: ModuleConn::new("vms", cfg.vms_socket.clone()),
                storage: ModuleConn::new("storage", cfg.storage_socket.clone()),
            }),
        );
        map.insert(
            WorkloadType::Zdb,
            Arc::new(ZdbDriver::new(ModuleConn::new(
                "shards",
                cfg.shards_socket.clone(),
            ))),
        );
        Drivers {
            map,
            applied: Default::default(),
        }
    }

    pub fn get(&self, t: WorkloadType) -> Option<Arc<dyn Driver>> {
        self.map.get(&t).cloned()
    }

    pub fn sockets(&self) -> Vec<(WorkloadType, PathBuf)> {
        self.map
            .iter()
            .filter_map(|(t, d)| d.module().map(|m| (*t, m.socket().to_path_buf())))
            .collect()
    }

    pub async fn reset(&self, t: WorkloadType) {
        if let Some(m) = self.map.get(&t).and_then(|d| d.module()) {
            m.reset().await;
        }
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, HashMap<String, Deployment>> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn sorted(ws: &[Workload], reverse: bool) -> Vec<&Workload> {
    let mut v: Vec<&Workload> = ws.iter().collect();
    v.sort_by_key(|w| w.workload_type().map(|t| t.order()).unwrap_or(u8::MAX));
    if reverse {
        v.reverse();
    }
    v
}

impl App {
    /// Brings deployment `id` to its live version (or removes it when it is
    /// not live). Unchanged workloads are left alone unless their type is
    /// in `force` (self-healing re-applies them).
    pub async fn reconcile(&self, id: &str, force: &[WorkloadType]) {
        let _lock = self.locks.lock(&format!("reconcile:{id}")).await;
        let desired = self
            .state()
            .deployments
            .get(id)
            .and_then(|d| d.live.as_ref().map(|l| l.doc.clone()));
        let applied = self.drivers.applied().get(id).cloned();
        let version = desired
            .as_ref()
            .or(applied.as_ref())
            .map(|d| d.version)
            .unwrap_or(0);
        // Removals first (reverse order), so a replaced workload frees its
        // name or subnet before the new one asks for it.
        let mut keep_old: Vec<Workload> = Vec::new();
        if let Some(old) = &applied {
            for w in sorted(&old.workloads, true) {
                let new = desired.as_ref().and_then(|d| d.workload(&w.name));
                let gone = match new {
                    None => true,
                    Some(n) if n.kind != w.kind => true,
                    Some(n) if n.version != w.version || n.data != w.data => {
                        match self.driver_for(w).map(|d| d.can_change(w, n)) {
                            Some(Err(reason)) => {
                                self.note(id, version, w, Err(reason)).await;
                                keep_old.push(w.clone());
                                false
                            }
                            // A network changes by being made anew.
                            _ => w.workload_type() == Some(WorkloadType::Network),
                        }
                    }
                    _ => false,
                };
                if gone {
                    if let Some(d) = self.driver_for(w) {
                        let r = d.remove(id, w).await;
                        self.note_removed(id, version, w, r).await;
                    }
                }
            }
        }
        if let Some(d) = &desired {
            for w in sorted(&d.workloads, false) {
                if keep_old.iter().any(|k| k.name == w.name) {
                    continue;
                }
                let old = applied.as_ref().and_then(|a| a.workload(&w.name));
                let unchanged = old.is_some_and(|o| {
                    o.kind == w.kind && o.version == w.version && o.data == w.data
                });
                let ok_before = self
                    .state()
                    .deployments
                    .get(id)
                    .and_then(|s| s.results.get(&w.name).map(|r| r.state == "ok"))
                    .unwrap_or(false);
                let forced = w.workload_type().is_some_and(|t| force.contains(&t));
                if unchanged && ok_before && !forced {
                    continue;
                }
                let r = match self.driver_for(w) {
                    Some(drv) => drv.apply(id, w).await,
                    None => Err(format!("no driver for type {:?}", w.kind)),
                };
                self.note(id, version, w, r).await;
            }
            let mut doc = d.clone();
            // What stayed old stays recorded as applied.
            for k in keep_old {
                if let Some(slot) = doc.workloads.iter_mut().find(|x| x.name == k.name) {
                    *slot = k;
                }
            }
            self.drivers.applied().insert(id.to_string(), doc);
        } else {
            self.drivers.applied().remove(id);
            if let Some(s) = self.state().deployments.get_mut(id) {
                s.results.clear();
            }
        }
    }

    fn driver_for(&self, w: &Workload) -> Option<Arc<dyn Driver>> {
        w.workload_type().and_then(|t| self.drivers.get(t))
    }

    async fn note(&self, id: &str, version: u64, w: &Workload, r: Result<String, String>) {
        let (state, reason, detail) = match r {
            Ok(detail) => ("ok", String::new(), detail),
            Err(reason) => ("error", reason, String::new()),
        };
        self.put_result(id, version, w, state, reason, detail).await;
    }

    async fn note_removed(&self, id: &str, version: u64, w: &Workload, r: Result<(), String>) {
        let expired = self
            .state()
            .deployments
            .get(id)
            .is_some_and(|d| d.live.is_none() && d.expired);
        let (state, reason) = match r {
            Ok(()) if expired => ("deleted", "expired".to_string()),
            Ok(()) => ("deleted", String::new()),
            Err(e) => ("error", format!("removing: {e}")),
        };
        self.put_result(id, version, w, state, reason, String::new())
            .await;
    }

    async fn put_result(
        &self,
        id: &str,
        version: u64,
        w: &Workload,
        state: &str,
        reason: String,
        detail: String,
    ) {
        if state == "error" {
            tracing::warn!("{id}/{}: {reason}", w.name);
        } else {
            tracing::info!("{id}/{} ({}): {state} {detail}", w.name, w.kind);
        }
        self.metrics.result(state);
        let payload = json!({
            "kind": "result", "deployment": id, "version": version,
            "workload": w.name, "type": w.kind, "workload_version": w.version,
            "state": state, "reason": reason, "detail": detail,
        });
        if let Err(e) = self
            .record(KIND_RESULT, id, version, &[w.name.as_str()], &payload)
            .await
        {
            tracing::error!("{id}/{}: result not recorded: {}", w.name, e.message);
        }
        if let Some(s) = self.state().deployments.get_mut(id) {
            s.results.insert(
                w.name.clone(),
                WorkloadResult {
                    state: state.into(),
                    reason,
                    detail,
                    version,
                },
            );
        }
    }

    /// Self-healing: expire what is due, then re-apply every workload of
    /// the `force` types of every live deployment.
    pub async fn heal(&self, force: &[WorkloadType]) {
        self.expire_due().await;
        let ids: Vec<String> = self
            .state()
            .deployments
            .iter()
            .filter(|(_, d)| d.live.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.reconcile(&id, force).await;
        }
    }

    /// Tears down deployments past their expiration: a node-written delete
    /// entry (so the ledger no longer lists them live), then reconcile
    /// removes the workloads and records them deleted, reason "expired".
    pub async fn expire_due(&self) {
        let now = now_secs();
        let due: Vec<(String, u64)> = self
            .state()
            .deployments
            .iter()
            .filter_map(|(id, d)| {
                d.live
                    .as_ref()
                    .filter(|l| l.doc.expiration <= now)
                    .map(|l| (id.clone(), l.doc.version))
            })
            .collect();
        for (id, version) in due {
            let _l = self.locks.lock(&format!("dep:{id}")).await;
            let still = self
                .state()
                .deployments
                .get(&id)
                .and_then(|d| d.live.as_ref())
                .is_some_and(|l| l.doc.version == version);
            if !still {
                continue;
            }
            let payload =
                json!({"kind": "expired", "deployment": id, "version": version, "time": now});
            match self.record(KIND_DELETE, &id, version, &[], &payload).await {
                Ok(seq) => {
                    tracing::info!("{id} version {version} expired (ledger seq {seq})");
                    if let Some(d) = self.state().deployments.get_mut(&id) {
                        d.live = None;
                        d.expired = true;
                    }
                }
                Err(e) => {
                    tracing::error!("{id}: expiry not recorded: {}", e.message);
                    continue;
                }
            }
            drop(_l);
            self.reconcile(&id, &[]).await;
        }
    }

    /// Watches module sockets: when one appears or is replaced (the module
    /// restarted), its connection is dropped and its workloads re-applied.
    /// Also runs expiry. Never returns.
    pub async fn watch(self: Arc<Self>) {
        let mut seen: BTreeMap<WorkloadType, Option<(u64, u64)>> = BTreeMap::new();
        for (t, p) in self.drivers.sockets() {
            seen.insert(t, socket_id(&p));
        }
        loop {
            tokio::time::sleep(self.cfg.watch_interval).await;
            let mut changed = Vec::new();
            for (t, p) in self.drivers.sockets() {
                let now = socket_id(&p);
                let before = seen.insert(t, now);
                if now.is_some() && before != Some(now) {
                    tracing::info!(
                        "{} socket (re)appeared: healing {} workloads",
                        p.display(),
                        t.name()
                    );
                    self.drivers.reset(t).await;
                    changed.push(t);
                }
            }
            if changed.is_empty() {
                self.expire_due().await;
            } else {
                self.heal(&changed).await;
            }
        }
    }
}

fn socket_id(p: &std::path::Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod vm_spec_tests {
    use super::*;

    fn vm(data: serde_json::Value) -> Workload {
        Workload {
            name: "vm".into(),
            kind: "vm".into(),
            version: 1,
            data,
        }
    }

    #[test]
    fn the_vms_module_gets_node_names_and_volume_paths() {
        let w = vm(
            json!({"kernel": {"url": "http://h/k", "sha256": "ab".repeat(32)},
            "cmdline": "quiet", "cpu": 2, "memory": 134217728, "network": "net",
            "disks": [{"volume": "vol", "size": 8388608, "file": "root.raw"}],
            "cloud_init": {"ssh_keys": ["k"]}}),
        );
        let vol = volume_name("d1", "vol");
        let spec = vm_spec("d1", &w, &|n| (n == vol).then(|| "/mnt/p/v".to_string())).unwrap();
        assert_eq!(spec["name"], json!(vm_name("d1", "vm")));
        assert_eq!(spec["network"]["name"], json!(network_name("d1", "net")));
        assert_eq!(spec["disks"][0]["volume"], "/mnt/p/v");
        assert_eq!(spec["disks"][0]["file"], "root.raw");
        assert_eq!(spec["cmdline"], "quiet");
        assert_eq!(spec["cloud_init"]["ssh_keys"][0], "k");
        let e = vm_spec("d1", &w, &|_| None).unwrap_err();
        assert!(e.contains("not on the node"), "{e}");
        let mut bad = w.clone();
        bad.data["bogus"] = json!(1);
        assert!(vm_spec("d1", &bad, &|_| Some("/x".into()))
            .unwrap_err()
            .contains("bogus"));
    }
}
