//! The module's state and operations: create (idempotent), delete, list,
//! status, logs; image import and garbage collection; restart policy
//! watchers; and the replay of recorded containers at start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oci_spec::image::{Descriptor as OciDescriptor, ImageConfiguration};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::containerd::{Ctd, TaskState};
use crate::spec::{ContainerSpec, ImageSource, RestartPolicy};
use crate::{dbus, fetch, logs, netns, oci, runtime_spec, Error};

/// Image records the module makes are named by the archive's digest: the
/// same pinned archive is one image however many containers use it.
pub const IMAGE_PREFIX: &str = "zeronode/archive@sha256:";
/// A half-finished import is dropped by containerd's GC after this long
/// even if the module dies before ending its lease.
const IMPORT_LEASE_SECS: u64 = 3600;
/// A run that lasted this long starts the back-off from its initial delay.
const RESET_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Config {
    pub containerd_socket: PathBuf,
    /// The containerd namespace everything of the module lives in.
    pub namespace: String,
    /// Records, logs, image configs, temporary downloads (node cache).
    pub state_dir: PathBuf,
    /// Network namespaces (tmpfs: they do not outlive a boot anyway).
    pub run_dir: PathBuf,
    /// The network module's socket; None: containers get an empty netns.
    pub network_socket: Option<PathBuf>,
    /// The cgroup parent of the containers' cgroups.
    pub cgroup_parent: String,
    /// Bind-mounted read-only as /etc/resolv.conf into containers on a
    /// workload network.
    pub resolv_conf: Option<PathBuf>,
    /// A container's log is rotated past this many bytes.
    pub log_cap: u64,
    /// Extra CA certificates (PEM) trusted for https:// archives, besides
    /// Mozilla's roots.
    pub ca_file: Option<PathBuf>,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Config {
    pub fn new(containerd_socket: PathBuf, state_dir: PathBuf, run_dir: PathBuf) -> Config {
        Config {
            containerd_socket,
            namespace: "zeronode".into(),
            state_dir,
            run_dir,
            network_socket: None,
            cgroup_parent: "/zeronode".into(),
            resolv_conf: Some("/etc/resolv.conf".into()),
            log_cap: 1 << 20,
            ca_file: None,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// What Status and List report for a container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub name: String,
    /// `running`, `created`, `exited`, `paused`, `restarting` or `unknown`.
    pub state: String,
    pub pid: u32,
    /// The last exit status (128 + signal for a killed process).
    pub exit_status: Option<u32>,
    pub restarts: u32,
    pub restart: RestartPolicy,
    /// The address on the workload network, a.b.c.d/n.
    pub address: Option<String>,
    pub network: Option<String>,
    /// The image archive's sha256.
    pub image: String,
    /// Milliseconds from Create to the task started (the last start).
    pub start_ms: Option<u64>,
}

/// What the state dir keeps per container: enough to bring it back.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    spec: ContainerSpec,
    address: Option<String>,
}

/// What the state dir keeps per image: its config (the runtime spec needs
/// it) and its top chain ID (the containers' snapshot parent).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageMeta {
    config: ImageConfiguration,
    top_chain: String,
}

struct Entry {
    spec: ContainerSpec,
    address: Option<String>,
    restarts: u32,
    last_exit: Option<u32>,
    restarting: bool,
    start_ms: Option<u64>,
    watcher: Option<JoinHandle<()>>,
}

pub struct Manager {
    cfg: Config,
    ctd: Ctd,
    tls: Arc<tokio_rustls::rustls::ClientConfig>,
    entries: Mutex<HashMap<String, Entry>>,
    /// Create, delete and restarts one at a time: image GC must never
    /// race an import that is about to use the image.
    ops: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not stop the module from serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes a directory tree when dropped (temporary download and layout).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
    let tmp = path.with_extension("tmp");
    // 0600: a record holds the workload's env, secrets included.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io(format!("create {}", tmp.display())))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(Error::io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(Error::io(format!("rename {}", path.display())))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn to_ctd_desc(d: &OciDescriptor) -> containerd_client::types::Descriptor {
    containerd_client::types::Descriptor {
        media_type: d.media_type().to_string(),
        digest: d.digest().to_string(),
        size: d.size() as i64,
        annotations: HashMap::new(),
    }
}

impl Manager {
    pub async fn new(cfg: Config) -> Result<Arc<Manager>, Error> {
        let tls = fetch::tls_config(cfg.ca_file.as_deref())?;
        let ctd = Ctd::connect(&cfg.containerd_socket, &cfg.namespace).await?;
        for d in [
            cfg.records_dir(),
            cfg.logs_dir(),
            cfg.images_dir(),
            cfg.tmp_dir(),
        ] {
            std::fs::create_dir_all(&d).map_err(Error::io(format!("create {}", d.display())))?;
        }
        // Downloads of a previous run that died half way.
        if let Ok(rd) = std::fs::read_dir(cfg.tmp_dir()) {
            for e in rd.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(Arc::new(Manager {
            cfg,
            ctd,
            tls,
            entries: Mutex::new(HashMap::new()),
            ops: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn containerd(&self) -> &Ctd {
        &self.ctd
    }

    /// Brings back every container recorded in the state dir (after a
    /// reboot or a restart of the module); failures are logged, the rest
    /// still come up. A container whose task survived (the module alone
    /// restarted) and exited is left as it is when its policy says so: a
    /// `never` container that finished does not run twice. Returns how
    /// many containers are known afterwards.
    pub async fn restore(self: &Arc<Self>) -> usize {
        let mut records = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.cfg.records_dir()) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "json") {
                    match std::fs::read(&p).map_err(|e| e.to_string()).and_then(|b| {
                        serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string())
                    }) {
                        Ok(r) => records.push(r),
                        Err(e) => tracing::error!("container record {}: {e}", p.display()),
                    }
                }
            }
        }
        records.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        let mut ok = 0;
        for r in records {
            let name = r.spec.name.clone();
            let done = match self.ctd.task_get(&name).await {
                Ok(Some(t)) if t.state == TaskState::Stopped => {
                    (!restarts(r.spec.restart, t.exit_status)).then_some(t.exit_status)
                }
                _ => None,
            };
            if let Some(code) = done {
                tracing::info!("container {name}: exited with status {code} before; left so");
                lock(&self.entries).insert(
                    name.clone(),
                    Entry {
                        spec: r.spec,
                        address: r.address,
                        restarts: 0,
                        last_exit: Some(code),
                        restarting: false,
                        start_ms: None,
                        watcher: None,
                    },
                );
                ok += 1;
                continue;
            }
            match self.create(r.spec).await {
                Ok(_) => ok += 1,
                Err(e) => tracing::error!("container {name}: not restored: {e}"),
            }
        }
        ok
    }

    /// Makes the container run as `spec` says. The same spec again is a
    /// no-op (the running container's status); a changed spec replaces the
    /// container (its image and volumes stay).
    pub async fn create(self: &Arc<Self>, spec: ContainerSpec) -> Result<Status, Error> {
        spec.validate()?;
        let t0 = Instant::now();
        let _ops = self.ops.lock().await;
        let name = spec.name.clone();
        if spec.network.is_some() && self.cfg.network_socket.is_none() {
            return Err(Error::Invalid(format!(
                "container {name} names a network but the module runs without the network module"
            )));
        }
        let known = lock(&self.entries).get(&name).map(|e| e.spec == spec);
        if known == Some(true) {
            if let Some(t) = self.ctd.task_get(&name).await? {
                if t.state == TaskState::Running {
                    return self.status_of(&name).await;
                }
            }
        }
        // The image first: a spec whose image cannot be had changes nothing,
        // not even the container it would replace.
        let image = self.ensure_image(&spec.image).await?;
        if known == Some(false) {
            tracing::info!("container {name}: spec changed: replacing it");
            self.remove(&name).await?;
        }
        let recorded = self.cfg.records_dir().join(format!("{name}.json")).exists();
        match self.bring_up(&spec, &image, t0).await {
            Ok(st) => {
                self.sync_to_disk();
                Ok(st)
            }
            Err(e) => {
                // A new container that cannot start leaves nothing behind;
                // a recorded one (being restored) keeps its record so the
                // next start or provision's replay tries again.
                if !recorded {
                    if let (Some(net), Some(sock)) = (&spec.network, &self.cfg.network_socket) {
                        let _ = dbus::network_detach(sock, &net.name, &name).await;
                    }
                    if let Err(c) = self.remove(&name).await {
                        tracing::warn!("container {name}: cleanup after a failed create: {c}");
                    }
                    if let Err(c) = self.gc_images().await {
                        tracing::warn!("image cleanup after a failed create: {c}");
                    }
                }
                Err(e)
            }
        }
    }

    /// Makes what this Create wrote durable: containerd fsyncs its
    /// metadata but not the unpacked layers nor the container's snapshot,
    /// so a power cut in the next seconds left records naming directories
    /// that were never written (seen after a hard reset in the boot test).
    /// One syncfs covers the cache's filesystem, the records included.
    fn sync_to_disk(&self) {
        let dir = &self.cfg.state_dir;
        match std::fs::File::open(dir) {
            Ok(f) => {
                if let Err(e) = nix::unistd::syncfs(&f) {
                    tracing::warn!("syncfs on {}: {e}", dir.display());
                }
            }
            Err(e) => tracing::warn!("opening {} to sync it: {e}", dir.display()),
        }
    }

    async fn bring_up(
        self: &Arc<Self>,
        spec: &ContainerSpec,
        image: &ImageMeta,
        t0: Instant,
    ) -> Result<Status, Error> {
        let name = spec.name.clone();
        let ns_path = self.cfg.netns_dir().join(&name);
        netns::create(&ns_path)?;
        let address = match (&spec.network, &self.cfg.network_socket) {
            (Some(net), Some(sock)) => Some(
                dbus::network_attach(sock, &net.name, &name, &ns_path)
                    .await
                    .map_err(|e| Error::Network(format!("attach {name} to {}: {e}", net.name)))?,
            ),
            _ => None,
        };
        let fresh = !self.ctd.container_exists(&name).await?;
        if fresh {
            // A container on a workload network resolves names like the
            // node does (the network module writes the node's resolv.conf).
            let resolv = match (&spec.network, &self.cfg.resolv_conf) {
                (Some(_), Some(r)) if r.exists() => Some(r.display().to_string()),
                _ => None,
            };
            let oci = runtime_spec::build(
                spec,
                &image.config,
                &ns_path.display().to_string(),
                &format!("{}/{}", self.cfg.cgroup_parent, name),
                resolv.as_deref(),
            )?;
            let json = serde_json::to_vec(&oci)
                .map_err(|e| Error::Invalid(format!("runtime spec: {e}")))?;
            if !self.ctd.snapshot_exists(&name).await? {
                self.ctd
                    .snapshot_prepare(&name, &image.top_chain, None)
                    .await?;
            }
            let labels = HashMap::from([("zeronode.image.sha256".to_string(), spec.image.hex())]);
            if let Err(e) = self
                .ctd
                .container_create(&name, &image_name(&spec.image), json, labels)
                .await
            {
                let _ = self.ctd.snapshot_remove(&name).await;
                return Err(e);
            }
        }
        let record = Record {
            spec: spec.clone(),
            address: address.clone(),
        };
        let rec = serde_json::to_vec_pretty(&record)
            .map_err(|e| Error::Invalid(format!("record: {e}")))?;
        write_atomic(&self.cfg.records_dir().join(format!("{name}.json")), &rec)?;
        lock(&self.entries).insert(
            name.clone(),
            Entry {
                spec: spec.clone(),
                address,
                restarts: 0,
                last_exit: None,
                restarting: false,
                start_ms: None,
                watcher: None,
            },
        );
        self.start_task(&name).await?;
        let ms = t0.elapsed().as_millis() as u64;
        tracing::info!("container {name}: running, {ms} ms from Create");
        if let Some(e) = lock(&self.entries).get_mut(&name) {
            e.start_ms = Some(ms);
        }
        self.watch(&name);
        self.status_of(&name).await
    }

    /// A task for the container: kept when it runs (module restart), made
    /// new otherwise (after an exit, or a reboot that lost the runtime state).
    async fn start_task(&self, name: &str) -> Result<(), Error> {
        if let Some(t) = self.ctd.task_get(name).await? {
            if t.state == TaskState::Running {
                return Ok(());
            }
            self.ctd.task_delete(name).await?;
        }
        let mounts = self.ctd.snapshot_mounts(name).await?;
        let log = logs::log_path(&self.cfg.logs_dir(), name);
        self.ctd
            .task_create(name, mounts, &format!("file://{}", log.display()))
            .await?;
        if let Err(e) = self.ctd.task_start(name).await {
            let _ = self.ctd.task_delete(name).await;
            return Err(e);
        }
        Ok(())
    }

    /// Watches the container's task and applies its restart policy.
    fn watch(self: &Arc<Self>, name: &str) {
        let me = self.clone();
        let n = name.to_string();
        let handle = tokio::spawn(async move { me.watcher(n).await });
        if let Some(e) = lock(&self.entries).get_mut(name) {
            if let Some(old) = e.watcher.replace(handle) {
                old.abort();
            }
        } else {
            handle.abort();
        }
    }

    async fn watcher(self: Arc<Self>, name: String) {
        let mut delay = self.cfg.backoff_initial;
        loop {
            let started = Instant::now();
            let code = match self.ctd.task_wait(&name).await {
                Ok(c) => c,
                Err(e) => {
                    // containerd restarting, most likely: look again soon.
                    tracing::warn!("container {name}: wait: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match self.ctd.task_get(&name).await {
                        Ok(Some(t)) if t.state == TaskState::Running => continue,
                        Ok(Some(t)) => t.exit_status,
                        _ => 255,
                    }
                }
            };
            let policy = {
                let mut g = lock(&self.entries);
                let Some(e) = g.get_mut(&name) else { return };
                e.last_exit = Some(code);
                e.spec.restart
            };
            let again = restarts(policy, code);
            tracing::info!(
                "container {name}: exited with status {code}{}",
                if again { ", restarting" } else { "" }
            );
            if !again {
                return;
            }
            if started.elapsed() >= RESET_AFTER {
                delay = self.cfg.backoff_initial;
            }
            if let Some(e) = lock(&self.entries).get_mut(&name) {
                e.restarting = true;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.cfg.backoff_max);
            let _ops = self.ops.lock().await;
            if !lock(&self.entries).contains_key(&name) {
                return;
            }
            let r = self.start_task(&name).await;
            if let Some(e) = lock(&self.entries).get_mut(&name) {
                e.restarting = false;
                if r.is_ok() {
                    e.restarts += 1;
                }
            }
            if let Err(e) = r {
                tracing::error!("container {name}: restart failed: {e}");
            }
        }
    }

    /// Removes the container: its task, containerd record, snapshot,
    /// network attachment and namespace, logs and record, then any image
    /// no container uses any more. Volumes are never touched.
    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        let _ops = self.ops.lock().await;
        let known = lock(&self.entries).contains_key(name)
            || self.cfg.records_dir().join(format!("{name}.json")).exists()
            || (crate::spec::valid_name(name) && self.ctd.container_exists(name).await?);
        if !known {
            return Err(Error::NotFound(name.to_string()));
        }
        self.remove(name).await?;
        self.gc_images().await
    }

    /// Delete without the lock and the image GC (also used on replace).
    async fn remove(&self, name: &str) -> Result<(), Error> {
        let entry = lock(&self.entries).remove(name);
        if let Some(w) = entry.as_ref().and_then(|e| e.watcher.as_ref()) {
            w.abort();
        }
        let record: Option<Record> =
            std::fs::read(self.cfg.records_dir().join(format!("{name}.json")))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
        let network = entry
            .as_ref()
            .and_then(|e| e.spec.network.clone())
            .or_else(|| record.as_ref().and_then(|r| r.spec.network.clone()));
        if let Some(t) = self.ctd.task_get(name).await? {
            if t.state != TaskState::Stopped {
                self.ctd.task_kill(name, libc::SIGKILL as u32).await?;
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), self.ctd.task_wait(name)).await;
            }
            self.ctd.task_delete(name).await?;
        }
        self.ctd.container_delete(name).await?;
        self.ctd.snapshot_remove(name).await?;
        if let (Some(net), Some(sock)) = (network, &self.cfg.network_socket) {
            if let Err(e) = dbus::network_detach(sock, &net.name, name).await {
                tracing::warn!("container {name}: detach from {}: {e}", net.name);
            }
        }
        netns::remove(&self.cfg.netns_dir().join(name))?;
        logs::remove(&self.cfg.logs_dir(), name);
        match std::fs::remove_file(self.cfg.records_dir().join(format!("{name}.json"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(format!("remove record of {name}"))(e))
            }
            _ => {}
        }
        tracing::info!("container {name}: deleted");
        Ok(())
    }

    /// Deletes our image records no container uses; containerd's GC then
    /// drops their content and snapshots (the image was their only root).
    pub async fn gc_images(&self) -> Result<(), Error> {
        // In use: by a known container, or by a recorded one whose restore
        // failed for now (it will need its image when it comes back).
        let mut used: std::collections::HashSet<String> = lock(&self.entries)
            .values()
            .map(|e| image_name(&e.spec.image))
            .collect();
        if let Ok(rd) = std::fs::read_dir(self.cfg.records_dir()) {
            for e in rd.flatten() {
                if let Some(r) = std::fs::read(e.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
                {
                    used.insert(image_name(&r.spec.image));
                }
            }
        }
        let inv = self.ctd.inventory().await?;
        for img in inv.images {
            if img.starts_with(IMAGE_PREFIX) && !used.contains(&img) {
                self.ctd.image_delete(&img).await?;
                let hex = &img[IMAGE_PREFIX.len()..];
                let _ = std::fs::remove_file(self.cfg.images_dir().join(format!("{hex}.json")));
                tracing::info!("image {img}: no container uses it: deleted");
            }
        }
        Ok(())
    }

    /// The image of `src`, imported when containerd does not have it yet.
    async fn ensure_image(&self, src: &ImageSource) -> Result<ImageMeta, Error> {
        let hex = src.hex();
        let name = image_name(src);
        let meta_path = self.cfg.images_dir().join(format!("{hex}.json"));
        if self.ctd.image_get(&name).await?.is_some() {
            if let Some(m) = std::fs::read(&meta_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<ImageMeta>(&b).ok())
            {
                if self.ctd.snapshot_exists(&m.top_chain).await? {
                    return Ok(m);
                }
            }
        }
        let t0 = Instant::now();
        let tmp = TempDir(self.cfg.tmp_dir().join(format!(
            "{hex}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        )));
        std::fs::create_dir_all(&tmp.0)
            .map_err(Error::io(format!("create {}", tmp.0.display())))?;
        let archive = tmp.0.join("archive.tar");
        let actual = fetch::fetch(&src.url, &archive, &self.tls).await?;
        if actual != hex {
            return Err(Error::DigestMismatch {
                url: src.url.clone(),
                expected: hex,
                actual,
            });
        }
        let layout_dir = tmp.0.join("layout");
        let layout = {
            let (a, d) = (archive.clone(), layout_dir.clone());
            tokio::task::spawn_blocking(move || oci::unpack(&a, &d))
                .await
                .map_err(|e| Error::Layout(format!("unpack task: {e}")))??
        };
        let lease = format!("zn-import-{hex}");
        self.ctd.lease_create(&lease, IMPORT_LEASE_SECS).await?;
        let r = self.import(&name, &layout, &lease).await;
        // On success the image record now holds everything; on failure the
        // lease was the only holder and its end lets GC drop what came in.
        let end = self.ctd.lease_delete(&lease).await;
        let meta = r?;
        end?;
        let json = serde_json::to_vec(&meta).map_err(|e| Error::Layout(format!("meta: {e}")))?;
        write_atomic(&meta_path, &json)?;
        tracing::info!(
            "image {name}: imported from {} in {} ms",
            src.url,
            t0.elapsed().as_millis()
        );
        Ok(meta)
    }

    async fn import(&self, name: &str, l: &oci::Layout, lease: &str) -> Result<ImageMeta, Error> {
        let diff_ids: Vec<String> = l.config.rootfs().diff_ids().clone();
        let chains = oci::chain_ids(&diff_ids);
        let top = chains
            .last()
            .cloned()
            .ok_or_else(|| Error::Layout("the image has no layers".into()))?;
        // Blobs, with the labels containerd's GC follows: manifest ->
        // config and layers, config -> the unpacked snapshot.
        let mut manifest_labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            l.manifest.config().digest().to_string(),
        )]);
        for (i, layer) in l.manifest.layers().iter().enumerate() {
            manifest_labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                layer.digest().to_string(),
            );
            self.put_blob(l, layer, HashMap::new(), lease).await?;
        }
        let config_labels = HashMap::from([(
            format!(
                "containerd.io/gc.ref.snapshot.{}",
                crate::containerd::SNAPSHOTTER
            ),
            top.clone(),
        )]);
        self.put_blob(l, l.manifest.config(), config_labels, lease)
            .await?;
        self.put_blob(l, &l.manifest_desc, manifest_labels, lease)
            .await?;
        // Layers through snapshots + diff, one chain ID at a time.
        for (i, layer) in l.manifest.layers().iter().enumerate() {
            if self.ctd.snapshot_exists(&chains[i]).await? {
                continue;
            }
            let parent = if i == 0 { "" } else { chains[i - 1].as_str() };
            let key = format!("zn-extract-{}-{}", &chains[i][7..19], std::process::id());
            let mounts = self.ctd.snapshot_prepare(&key, parent, Some(lease)).await?;
            let applied = match self.ctd.diff_apply(to_ctd_desc(layer), mounts).await {
                Ok(a) => a,
                Err(e) => {
                    let _ = self.ctd.snapshot_remove(&key).await;
                    return Err(e);
                }
            };
            if applied != diff_ids[i] {
                let _ = self.ctd.snapshot_remove(&key).await;
                return Err(Error::Layout(format!(
                    "layer {} unpacks to {applied}, the config says {}",
                    layer.digest(),
                    diff_ids[i]
                )));
            }
            self.ctd.snapshot_commit(&chains[i], &key, lease).await?;
        }
        self.ctd
            .image_create(
                name,
                to_ctd_desc(&l.manifest_desc),
                HashMap::from([("zeronode.archive".to_string(), "oci".to_string())]),
                lease,
            )
            .await?;
        Ok(ImageMeta {
            config: l.config.clone(),
            top_chain: top,
        })
    }

    async fn put_blob(
        &self,
        l: &oci::Layout,
        d: &OciDescriptor,
        labels: HashMap<String, String>,
        lease: &str,
    ) -> Result<(), Error> {
        let digest = d.digest().to_string();
        if self.ctd.content_exists(&digest).await? {
            return Ok(());
        }
        let path = oci::blob_path(&l.dir, d)?;
        self.ctd
            .content_write(&path, &digest, d.size() as i64, labels, lease)
            .await
    }

    pub async fn status(&self, name: &str) -> Result<Status, Error> {
        if !lock(&self.entries).contains_key(name) {
            return Err(Error::NotFound(name.to_string()));
        }
        self.status_of(name).await
    }

    async fn status_of(&self, name: &str) -> Result<Status, Error> {
        let task = self.ctd.task_get(name).await?;
        let g = lock(&self.entries);
        let e = g
            .get(name)
            .ok_or_else(|| Error::NotFound(name.to_string()))?;
        let (state, pid) = match (&task, e.restarting) {
            (_, true) => ("restarting", 0),
            (None, _) => ("exited", 0),
            (Some(t), _) => (
                match t.state {
                    TaskState::Running => "running",
                    TaskState::Created => "created",
                    TaskState::Stopped => "exited",
                    TaskState::Paused => "paused",
                    TaskState::Unknown => "unknown",
                },
                t.pid,
            ),
        };
        let exit_status = match &task {
            Some(t) if t.state == TaskState::Stopped => Some(t.exit_status),
            _ => e.last_exit,
        };
        Ok(Status {
            name: name.to_string(),
            state: state.into(),
            pid: if state == "running" { pid } else { 0 },
            exit_status,
            restarts: e.restarts,
            restart: e.spec.restart,
            address: e.address.clone(),
            network: e.spec.network.as_ref().map(|n| n.name.clone()),
            image: e.spec.image.hex(),
            start_ms: e.start_ms,
        })
    }

    pub async fn list(&self) -> Result<Vec<Status>, Error> {
        let mut names: Vec<String> = lock(&self.entries).keys().cloned().collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            match self.status_of(&n).await {
                Ok(s) => out.push(s),
                // Deleted meanwhile.
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The last `max_bytes` of the container's output.
    pub fn logs(&self, name: &str, max_bytes: u64) -> Result<Vec<u8>, Error> {
        if !lock(&self.entries).contains_key(name) {
            return Err(Error::NotFound(name.to_string()));
        }
        logs::tail(&self.cfg.logs_dir(), name, max_bytes)
    }

    /// Rotates the logs that passed the cap (called periodically).
    pub fn rotate_logs(&self) {
        let names: Vec<String> = lock(&self.entries).keys().cloned().collect();
        for n in names {
            match logs::rotate(&self.cfg.logs_dir(), &n, self.cfg.log_cap) {
                Ok(true) => tracing::debug!("container {n}: log rotated"),
                Ok(false) => {}
                Err(e) => tracing::warn!("container {n}: log rotation: {e}"),
            }
        }
    }
}

/// Whether `policy` restarts a container that exited with `code`.
fn restarts(policy: RestartPolicy, code: u32) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => code != 0,
        RestartPolicy::Never => false,
    }
}

pub fn image_name(src: &ImageSource) -> String {
    format!("{IMAGE_PREFIX}{}", src.hex())
}

impl Config {
    fn records_dir(&self) -> PathBuf {
        self.state_dir.join("containers")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }
    fn tmp_dir(&self) -> PathBuf {
        self.state_dir.join("tmp")
    }
    pub fn netns_dir(&self) -> PathBuf {
        self.run_dir.join("netns")
    }
}
