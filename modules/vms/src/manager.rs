//! The module's state and operations: create (idempotent), start, stop,
//! delete, list, status, logs; downloads pinned by digest and their
//! garbage collection; one supervisor task per running VM that starts a
//! QEMU that died again with back-off; and the replay of recorded VMs at
//! start.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::process::{self, Process};
use crate::qemu::{self, Drive, Engine, Launch};
use crate::seed::{self, NicConfig};
use crate::spec::{Source, VmSpec};
use crate::{dbus, qmp::Qmp, tap, Error};

/// A run that lasted this long starts the back-off from its initial delay.
const RESET_AFTER: Duration = Duration::from_secs(10);
/// QEMU has this long to open its QMP socket after it started.
const QMP_WAIT: Duration = Duration::from_secs(30);

/// Which engine runs the guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when /dev/kvm works, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(format!("accel {s:?}: auto, kvm or tcg")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// qemu-system-x86_64.
    pub qemu: PathBuf,
    /// `-L`: where QEMU finds bios-256k.bin, linuxboot_dma.bin and pvh.bin; None
    /// for QEMU's built-in path.
    pub firmware_dir: Option<PathBuf>,
    pub accel: Accel,
    /// Records, downloads, config drives, boot disks, serial logs (node cache).
    pub state_dir: PathBuf,
    /// QMP sockets, pid files, QEMU's own output (tmpfs).
    pub run_dir: PathBuf,
    /// The network module's socket; None: a VM naming a network is refused.
    pub network_socket: Option<PathBuf>,
    /// A serial log is rotated past this many bytes.
    pub log_cap: u64,
    pub ca_file: Option<PathBuf>,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// After an ACPI power-down, the guest is killed when still running then.
    pub stop_timeout: Duration,
}

impl Config {
    pub fn new(state_dir: PathBuf, run_dir: PathBuf) -> Config {
        Config {
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            firmware_dir: None,
            accel: Accel::Auto,
            state_dir,
            run_dir,
            network_socket: None,
            log_cap: 1 << 20,
            ca_file: None,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(30),
        }
    }

    fn records_dir(&self) -> PathBuf {
        self.state_dir.join("vms")
    }
    fn record_path(&self, name: &str) -> PathBuf {
        self.records_dir().join(format!("{name}.json"))
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }
    fn image_path(&self, s: &Source) -> PathBuf {
        self.images_dir().join(s.hex())
    }
    fn seeds_dir(&self) -> PathBuf {
        self.state_dir.join("seeds")
    }
    fn boot_disks_dir(&self) -> PathBuf {
        self.state_dir.join("disks")
    }
    fn tmp_dir(&self) -> PathBuf {
        self.state_dir.join("tmp")
    }
    pub fn qmp_path(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.qmp"))
    }
    fn pid_path(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.pid"))
    }
    /// QEMU's own stdout and stderr (its errors), not the guest's.
    pub fn output_path(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.out"))
    }
}

/// What Status and List report for a VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub name: String,
    /// `running`, `stopped` or `restarting`.
    pub state: String,
    pub pid: u32,
    /// `kvm` or `tcg`.
    pub accel: String,
    pub cpu: u32,
    pub memory: u64,
    /// The address on the workload network, a.b.c.d/n.
    pub address: Option<String>,
    pub network: Option<String>,
    pub mac: Option<String>,
    pub restarts: u32,
    /// QEMU's last exit status (128 + signal when killed).
    pub last_exit: Option<i32>,
    /// Milliseconds from Create (or Start) to QEMU answering on QMP.
    pub start_ms: Option<u64>,
}

/// What the state dir keeps per VM: enough to bring it back.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    spec: VmSpec,
    address: Option<String>,
    /// Stopped through Stop: not started at restore.
    #[serde(default)]
    stopped: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Running,
    Stopped,
    Restarting,
}

struct Entry {
    spec: VmSpec,
    address: Option<String>,
    state: RunState,
    process: Option<Arc<Process>>,
    /// Set by Stop and Delete: the supervisor lets the process end.
    stopping: bool,
    restarts: u32,
    last_exit: Option<i32>,
    start_ms: Option<u64>,
    watcher: Option<JoinHandle<()>>,
}

pub struct Manager {
    cfg: Config,
    engine: Engine,
    tls: Arc<tokio_rustls::rustls::ClientConfig>,
    entries: Mutex<HashMap<String, Entry>>,
    /// Create, start, stop, delete and restarts one at a time.
    ops: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not stop the module from serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
    let tmp = path.with_extension("tmp");
    // 0600: a record holds the cloud-init env, secrets included.
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

fn remove_if_exists(p: &Path) -> Result<(), Error> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("remove {}", p.display()))(e))
        }
        _ => Ok(()),
    }
}

/// The last lines of QEMU's own output, to say why it did not start.
fn output_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    let mut lines: Vec<&str> = lines.into_iter().rev().collect();
    lines.retain(|l| !l.trim().is_empty());
    if lines.is_empty() {
        "no output".into()
    } else {
        lines.join(" | ")
    }
}

impl Manager {
    pub fn new(cfg: Config) -> Result<Arc<Manager>, Error> {
        let tls = zeronode_containers::fetch::tls_config(cfg.ca_file.as_deref())?;
        for d in [
            cfg.records_dir(),
            cfg.logs_dir(),
            cfg.images_dir(),
            cfg.seeds_dir(),
            cfg.boot_disks_dir(),
            cfg.tmp_dir(),
            cfg.run_dir.clone(),
        ] {
            std::fs::create_dir_all(&d).map_err(Error::io(format!("create {}", d.display())))?;
        }
        // Downloads of a previous run that died half way.
        if let Ok(rd) = std::fs::read_dir(cfg.tmp_dir()) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let engine = match cfg.accel {
            Accel::Kvm => Engine::Kvm,
            Accel::Tcg => Engine::Tcg,
            Accel::Auto if qemu::kvm_usable() => Engine::Kvm,
            Accel::Auto => Engine::Tcg,
        };
        tracing::info!("vms: guests run with {}", engine.as_str());
        Ok(Arc::new(Manager {
            cfg,
            engine,
            tls,
            entries: Mutex::new(HashMap::new()),
            ops: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Brings back every VM recorded in the state dir: a QEMU still
    /// running (the module alone restarted) is watched again, the others
    /// are started again with their disks, tap and address; a VM stopped
    /// through Stop stays stopped. Failures are logged, the rest still
    /// come up. Returns how many VMs are known afterwards.
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
                        Err(e) => tracing::error!("vm record {}: {e}", p.display()),
                    }
                }
            }
        }
        records.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        let mut ok = 0;
        for r in records {
            let name = r.spec.name.clone();
            if r.stopped {
                lock(&self.entries).insert(name.clone(), self.entry(&r, RunState::Stopped));
                tracing::info!("vm {name}: stopped before; left so");
                ok += 1;
                continue;
            }
            let qmp = self.cfg.qmp_path(&name).display().to_string();
            if let Some(pid) = process::find_running(&self.cfg.pid_path(&name), &qmp) {
                match Process::adopt(pid) {
                    Ok(p) => {
                        let p = Arc::new(p);
                        let mut e = self.entry(&r, RunState::Running);
                        e.process = Some(p.clone());
                        lock(&self.entries).insert(name.clone(), e);
                        self.watch(&name, p);
                        tracing::info!("vm {name}: still running as pid {pid}; watching it");
                        ok += 1;
                        continue;
                    }
                    Err(e) => tracing::warn!("vm {name}: pid {pid}: {e}"),
                }
            }
            match self.create(r.spec).await {
                Ok(_) => ok += 1,
                Err(e) => tracing::error!("vm {name}: not restored: {e}"),
            }
        }
        ok
    }

    fn entry(&self, r: &Record, state: RunState) -> Entry {
        Entry {
            spec: r.spec.clone(),
            address: r.address.clone(),
            state,
            process: None,
            stopping: state == RunState::Stopped,
            restarts: 0,
            last_exit: None,
            start_ms: None,
            watcher: None,
        }
    }

    /// Makes the VM run as `spec` says. The same spec again is a no-op
    /// (the running VM's status) or starts it when it was stopped; a
    /// changed spec replaces the VM (its volumes' disks stay).
    pub async fn create(self: &Arc<Self>, spec: VmSpec) -> Result<Status, Error> {
        spec.validate()?;
        let t0 = Instant::now();
        let _ops = self.ops.lock().await;
        let name = spec.name.clone();
        if spec.network.is_some() && self.cfg.network_socket.is_none() {
            return Err(Error::Invalid(format!(
                "vm {name} names a network but the module runs without the network module"
            )));
        }
        let known = lock(&self.entries)
            .get(&name)
            .map(|e| (e.spec == spec, e.state));
        if let Some((true, state)) = known {
            if state != RunState::Stopped {
                return self.status(&name);
            }
        }
        // The downloads first: a spec whose kernel or image cannot be had
        // changes nothing, not even the VM it would replace.
        self.ensure_sources(&spec).await?;
        if let Some((false, _)) = known {
            tracing::info!("vm {name}: spec changed: replacing it");
            self.remove(&name).await?;
        }
        let recorded = self.cfg.record_path(&name).exists();
        let mut created = Vec::new();
        match self.bring_up(&spec, t0, &mut created).await {
            Ok(st) => Ok(st),
            Err(e) => {
                // A new VM that cannot start leaves nothing behind; a
                // recorded one (being restored) keeps its record so the
                // next start or provision's replay tries again.
                if !recorded {
                    if let Err(c) = self.remove(&name).await {
                        tracing::warn!("vm {name}: cleanup after a failed create: {c}");
                    }
                    for f in created {
                        let _ = std::fs::remove_file(f);
                    }
                    self.gc_images();
                }
                Err(e)
            }
        }
    }

    /// Downloads what the VM boots from unless present: into tmp while
    /// hashing, renamed into images/<sha256> only when the digest matches.
    async fn ensure_sources(&self, spec: &VmSpec) -> Result<(), Error> {
        for (what, src) in spec.sources() {
            let dest = self.cfg.image_path(src);
            if dest.exists() {
                continue;
            }
            let t0 = Instant::now();
            let tmp = self.cfg.tmp_dir().join(format!(
                "{}-{}",
                src.hex(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ));
            let got = zeronode_containers::fetch::fetch(&src.url, &tmp, &self.tls).await;
            let actual = match got {
                Ok(a) => a,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e.into());
                }
            };
            if actual != src.hex() {
                let _ = std::fs::remove_file(&tmp);
                return Err(Error::DigestMismatch {
                    what: what.into(),
                    url: src.url.clone(),
                    expected: src.hex(),
                    actual,
                });
            }
            std::fs::rename(&tmp, &dest)
                .map_err(Error::io(format!("rename into {}", dest.display())))?;
            tracing::info!(
                "{what} {}: fetched from {} in {} ms",
                src.hex(),
                src.url,
                t0.elapsed().as_millis()
            );
        }
        Ok(())
    }

    async fn bring_up(
        self: &Arc<Self>,
        spec: &VmSpec,
        t0: Instant,
        created: &mut Vec<PathBuf>,
    ) -> Result<Status, Error> {
        let name = spec.name.clone();
        for d in &spec.disks {
            let path = Path::new(&d.volume).join(&d.file);
            let have = match std::fs::metadata(&path) {
                Ok(m) => Some(m.len()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(Error::io(format!("stat {}", path.display()))(e)),
            };
            if have.is_some_and(|l| l >= d.size) {
                continue;
            }
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(Error::io(format!("create disk {}", path.display())))?;
            if have.is_none() {
                created.push(path.clone());
            }
            // Sparse: the volume's quota counts what the guest writes.
            f.set_len(d.size)
                .map_err(Error::io(format!("size disk {}", path.display())))?;
            f.sync_all()
                .map_err(Error::io(format!("sync disk {}", path.display())))?;
        }
        if let Some(img) = &spec.disk_image {
            let root = self.boot_disk_path(&name);
            if !root.exists() {
                let tmp = root.with_extension("tmp");
                // copy_file_range: a reflink on btrfs, so a fresh copy is cheap.
                std::fs::copy(self.cfg.image_path(img), &tmp).map_err(Error::io(format!(
                    "copy the disk image to {}",
                    tmp.display()
                )))?;
                std::fs::rename(&tmp, &root)
                    .map_err(Error::io(format!("rename to {}", root.display())))?;
            }
        }
        let mut address = None;
        let nic = match (&spec.network, &self.cfg.network_socket) {
            (Some(net), Some(sock)) => {
                let tap = tap::tap_name(&name);
                tap::create(&tap)?;
                let a = dbus::network_attach_tap(sock, &net.name, &name, &tap)
                    .await
                    .map_err(|e| Error::Network(format!("attach {name} to {}: {e}", net.name)))?;
                address = Some(a.clone());
                Some(NicConfig {
                    mac: tap::mac(&name),
                    gateway: seed::gateway_of(&a)?,
                    address: a,
                })
            }
            _ => None,
        };
        seed::write(&self.seed_path(&name), spec, nic.as_ref())?;
        let record = Record {
            spec: spec.clone(),
            address: address.clone(),
            stopped: false,
        };
        self.save_record(&record)?;
        lock(&self.entries).insert(name.clone(), self.entry(&record, RunState::Stopped));
        self.start_locked(&name, t0).await?;
        // Disks made, records written: durable before the caller records
        // the result (a power cut must not lose what a result promised).
        self.sync_to_disk();
        self.status(&name)
    }

    fn save_record(&self, r: &Record) -> Result<(), Error> {
        let rec =
            serde_json::to_vec_pretty(r).map_err(|e| Error::Invalid(format!("record: {e}")))?;
        write_atomic(&self.cfg.record_path(&r.spec.name), &rec)
    }

    fn set_stopped_flag(&self, name: &str, stopped: bool) -> Result<(), Error> {
        let (spec, address) = {
            let g = lock(&self.entries);
            let e = g.get(name).ok_or_else(|| Error::NotFound(name.into()))?;
            (e.spec.clone(), e.address.clone())
        };
        self.save_record(&Record {
            spec,
            address,
            stopped,
        })
    }

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

    fn seed_path(&self, name: &str) -> PathBuf {
        self.cfg.seeds_dir().join(format!("{name}.img"))
    }

    fn boot_disk_path(&self, name: &str) -> PathBuf {
        self.cfg.boot_disks_dir().join(format!("{name}.raw"))
    }

    fn launch_of(&self, spec: &VmSpec) -> Launch {
        let name = &spec.name;
        let mut drives = Vec::new();
        if spec.disk_image.is_some() {
            drives.push(Drive {
                path: self.boot_disk_path(name),
                readonly: false,
            });
        }
        for d in &spec.disks {
            drives.push(Drive {
                path: Path::new(&d.volume).join(&d.file),
                readonly: d.readonly,
            });
        }
        drives.push(Drive {
            path: self.seed_path(name),
            readonly: true,
        });
        Launch {
            name: name.clone(),
            engine: self.engine,
            cpu: spec.cpu,
            memory_mib: spec.memory >> 20,
            kernel: spec.kernel.as_ref().map(|k| {
                (
                    self.cfg.image_path(k),
                    spec.initrd.as_ref().map(|i| self.cfg.image_path(i)),
                    qemu::cmdline(spec.cmdline.as_deref()),
                )
            }),
            drives,
            nic: spec
                .network
                .as_ref()
                .map(|_| (tap::tap_name(name), tap::mac(name))),
            serial_log: zeronode_containers::logs::log_path(&self.cfg.logs_dir(), name),
            qmp_socket: self.cfg.qmp_path(name),
            firmware_dir: self.cfg.firmware_dir.clone(),
        }
    }

    /// Starts QEMU for a known VM and waits until it answers on QMP.
    async fn spawn_qemu(&self, name: &str) -> Result<Arc<Process>, Error> {
        let spec = lock(&self.entries)
            .get(name)
            .map(|e| e.spec.clone())
            .ok_or_else(|| Error::NotFound(name.into()))?;
        let launch = self.launch_of(&spec);
        remove_if_exists(&launch.qmp_socket)?;
        let out = self.cfg.output_path(name);
        // Only this start's errors: an old failure must not be reported again.
        remove_if_exists(&out)?;
        let p = Arc::new(Process::spawn(&self.cfg.qemu, &launch.args(), &out)?);
        std::fs::write(self.cfg.pid_path(name), p.pid.to_string()).map_err(Error::io(format!(
            "write {}",
            self.cfg.pid_path(name).display()
        )))?;
        let deadline = Instant::now() + QMP_WAIT;
        loop {
            if launch.qmp_socket.exists() {
                if let Ok(mut q) = Qmp::connect(&launch.qmp_socket).await {
                    let st = q.status().await?;
                    tracing::debug!("vm {name}: qemu pid {} is {st}", p.pid);
                    return Ok(p);
                }
            }
            let ended = tokio::time::timeout(Duration::from_millis(100), p.exited()).await;
            if let Ok(code) = ended {
                return Err(Error::Qemu {
                    name: name.into(),
                    reason: format!(
                        "exited at start (status {}): {}",
                        code.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
                        output_tail(&out)
                    ),
                });
            }
            if Instant::now() > deadline {
                p.kill();
                let _ = p.exited().await;
                return Err(Error::Qemu {
                    name: name.into(),
                    reason: format!("no QMP socket after {} s", QMP_WAIT.as_secs()),
                });
            }
        }
    }

    /// Starts a known VM's QEMU and its supervisor; ops lock held.
    async fn start_locked(self: &Arc<Self>, name: &str, t0: Instant) -> Result<(), Error> {
        let p = self.spawn_qemu(name).await?;
        let ms = t0.elapsed().as_millis() as u64;
        {
            let mut g = lock(&self.entries);
            let e = g
                .get_mut(name)
                .ok_or_else(|| Error::NotFound(name.into()))?;
            e.process = Some(p.clone());
            e.state = RunState::Running;
            e.stopping = false;
            e.start_ms = Some(ms);
        }
        tracing::info!(
            "vm {name}: running ({}, pid {}), {ms} ms from the request",
            self.engine.as_str(),
            p.pid
        );
        self.watch(name, p);
        Ok(())
    }

    fn watch(self: &Arc<Self>, name: &str, p: Arc<Process>) {
        let me = self.clone();
        let n = name.to_string();
        let h = tokio::spawn(async move { me.supervise(n, p).await });
        if let Some(e) = lock(&self.entries).get_mut(name) {
            if let Some(old) = e.watcher.replace(h) {
                old.abort();
            }
        }
    }

    /// Waits for QEMU to end; unless Stop or Delete asked for it, starts
    /// it again after a delay that doubles up to the ceiling (a run of
    /// RESET_AFTER or more starts the delays again).
    async fn supervise(self: Arc<Self>, name: String, mut p: Arc<Process>) {
        let mut delay = self.cfg.backoff_initial;
        let mut started = Instant::now();
        loop {
            let code = p.exited().await;
            {
                let mut g = lock(&self.entries);
                let Some(e) = g.get_mut(&name) else { return };
                e.process = None;
                e.last_exit = code.or(e.last_exit);
                if e.stopping {
                    e.state = RunState::Stopped;
                    return;
                }
                e.state = RunState::Restarting;
            }
            tracing::warn!(
                "vm {name}: qemu ended (status {}); starting it again in {} ms: {}",
                code.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
                delay.as_millis(),
                output_tail(&self.cfg.output_path(&name))
            );
            if started.elapsed() >= RESET_AFTER {
                delay = self.cfg.backoff_initial;
            }
            loop {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(self.cfg.backoff_max);
                let _ops = self.ops.lock().await;
                match lock(&self.entries).get(&name) {
                    Some(e) if !e.stopping => {}
                    _ => return,
                }
                match self.spawn_qemu(&name).await {
                    Ok(np) => {
                        let mut g = lock(&self.entries);
                        if let Some(e) = g.get_mut(&name) {
                            e.process = Some(np.clone());
                            e.state = RunState::Running;
                            e.restarts += 1;
                        }
                        p = np;
                        started = Instant::now();
                        break;
                    }
                    Err(e) => tracing::error!("vm {name}: restart failed: {e}"),
                }
            }
        }
    }

    /// Starts a stopped VM again.
    pub async fn start(self: &Arc<Self>, name: &str) -> Result<Status, Error> {
        let t0 = Instant::now();
        let _ops = self.ops.lock().await;
        let state = lock(&self.entries)
            .get(name)
            .map(|e| e.state)
            .ok_or_else(|| Error::NotFound(name.into()))?;
        if state == RunState::Stopped {
            self.set_stopped_flag(name, false)?;
            self.start_locked(name, t0).await?;
        }
        self.status(name)
    }

    /// ACPI power-down through QMP, then a kill when the guest is still
    /// running after the stop timeout. The VM stays stopped (after a
    /// reboot too) until Start or Create.
    pub async fn stop(&self, name: &str) -> Result<Status, Error> {
        let _ops = self.ops.lock().await;
        if !lock(&self.entries).contains_key(name) {
            return Err(Error::NotFound(name.into()));
        }
        self.set_stopped_flag(name, true)?;
        self.halt(name).await;
        self.status(name)
    }

    /// Ends the VM's QEMU: power button first, SIGKILL after the timeout.
    async fn halt(&self, name: &str) {
        let p = {
            let mut g = lock(&self.entries);
            let Some(e) = g.get_mut(name) else { return };
            e.stopping = true;
            e.process.clone()
        };
        let Some(p) = p else {
            if let Some(e) = lock(&self.entries).get_mut(name) {
                e.state = RunState::Stopped;
            }
            return;
        };
        let t0 = Instant::now();
        let asked = match Qmp::connect(&self.cfg.qmp_path(name)).await {
            Ok(mut q) => q.system_powerdown().await,
            Err(e) => Err(e),
        };
        if let Err(e) = &asked {
            tracing::warn!("vm {name}: power-down not sent: {e}");
        }
        let clean = asked.is_ok()
            && tokio::time::timeout(self.cfg.stop_timeout, p.exited())
                .await
                .is_ok();
        if clean {
            tracing::info!("vm {name}: powered off in {} ms", t0.elapsed().as_millis());
        } else {
            p.kill();
            let _ = p.exited().await;
            tracing::warn!(
                "vm {name}: killed after {} ms without powering off",
                t0.elapsed().as_millis()
            );
        }
        let watcher = {
            let mut g = lock(&self.entries);
            g.get_mut(name).and_then(|e| {
                e.state = RunState::Stopped;
                e.process = None;
                e.watcher.take()
            })
        };
        if let Some(w) = watcher {
            w.abort();
        }
        let _ = std::fs::remove_file(self.cfg.pid_path(name));
    }

    /// Stops the VM (as Stop), then removes its tap and address, config
    /// drive, boot disk copy, logs and record, then the downloads no VM
    /// uses any more. Disks in volumes are never touched.
    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        let _ops = self.ops.lock().await;
        let known = lock(&self.entries).contains_key(name) || self.cfg.record_path(name).exists();
        if !known {
            return Err(Error::NotFound(name.to_string()));
        }
        self.remove(name).await?;
        self.gc_images();
        Ok(())
    }

    /// Delete without the lock and the GC (also used on replace and after
    /// a failed create).
    async fn remove(&self, name: &str) -> Result<(), Error> {
        self.halt(name).await;
        let entry = lock(&self.entries).remove(name);
        let record: Option<Record> = std::fs::read(self.cfg.record_path(name))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let network = entry
            .as_ref()
            .and_then(|e| e.spec.network.clone())
            .or_else(|| record.as_ref().and_then(|r| r.spec.network.clone()));
        if let (Some(net), Some(sock)) = (network, &self.cfg.network_socket) {
            // Detach deletes the tap as well.
            if let Err(e) = dbus::network_detach(sock, &net.name, name).await {
                tracing::warn!("vm {name}: detach from {}: {e}", net.name);
            }
        }
        tap::remove(&tap::tap_name(name))?;
        remove_if_exists(&self.seed_path(name))?;
        remove_if_exists(&self.boot_disk_path(name))?;
        let logs = self.cfg.logs_dir();
        remove_if_exists(&zeronode_containers::logs::log_path(&logs, name))?;
        remove_if_exists(&logs.join(format!("{name}.log.1")))?;
        for p in [
            self.cfg.qmp_path(name),
            self.cfg.pid_path(name),
            self.cfg.output_path(name),
        ] {
            remove_if_exists(&p)?;
        }
        remove_if_exists(&self.cfg.record_path(name))?;
        tracing::info!("vm {name}: deleted");
        Ok(())
    }

    /// Removes downloads no known or recorded VM uses.
    pub fn gc_images(&self) {
        let mut used: HashSet<String> = HashSet::new();
        for e in lock(&self.entries).values() {
            used.extend(e.spec.sources().iter().map(|(_, s)| s.hex()));
        }
        if let Ok(rd) = std::fs::read_dir(self.cfg.records_dir()) {
            for e in rd.flatten() {
                if let Some(r) = std::fs::read(e.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
                {
                    used.extend(r.spec.sources().iter().map(|(_, s)| s.hex()));
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.cfg.images_dir()) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if !used.contains(&n) {
                    let _ = std::fs::remove_file(e.path());
                    tracing::info!("download {n}: no vm uses it: deleted");
                }
            }
        }
    }

    pub fn status(&self, name: &str) -> Result<Status, Error> {
        let g = lock(&self.entries);
        let e = g.get(name).ok_or_else(|| Error::NotFound(name.into()))?;
        Ok(Status {
            name: name.into(),
            state: match e.state {
                RunState::Running => "running",
                RunState::Stopped => "stopped",
                RunState::Restarting => "restarting",
            }
            .into(),
            pid: e.process.as_ref().map(|p| p.pid).unwrap_or(0),
            accel: self.engine.as_str().into(),
            cpu: e.spec.cpu,
            memory: e.spec.memory,
            address: e.address.clone(),
            network: e.spec.network.as_ref().map(|n| n.name.clone()),
            mac: e.spec.network.as_ref().map(|_| tap::mac(name)),
            restarts: e.restarts,
            last_exit: e.last_exit,
            start_ms: e.start_ms,
        })
    }

    pub fn list(&self) -> Vec<Status> {
        let mut names: Vec<String> = lock(&self.entries).keys().cloned().collect();
        names.sort();
        names.iter().filter_map(|n| self.status(n).ok()).collect()
    }

    /// The last `max_bytes` of the VM's serial console.
    pub fn logs(&self, name: &str, max_bytes: u64) -> Result<Vec<u8>, Error> {
        if !lock(&self.entries).contains_key(name) {
            return Err(Error::NotFound(name.to_string()));
        }
        Ok(zeronode_containers::logs::tail(
            &self.cfg.logs_dir(),
            name,
            max_bytes,
        )?)
    }

    /// Rotates the serial logs that passed the cap (called periodically).
    pub fn rotate_logs(&self) {
        let names: Vec<String> = lock(&self.entries).keys().cloned().collect();
        for n in names {
            if let Err(e) =
                zeronode_containers::logs::rotate(&self.cfg.logs_dir(), &n, self.cfg.log_cap)
            {
                tracing::warn!("vm {n}: log rotation: {e}");
            }
        }
    }
}
