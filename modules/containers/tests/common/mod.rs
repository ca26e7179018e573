//! The host tests' fixtures: a real containerd (Debian's, with runc) in a
//! temporary directory, an OCI archive of a static busybox built here, a
//! small HTTP server for it, network namespaces, and the network module's
//! library serving in a namespace of ours. Drop guards undo everything,
//! also when a test fails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn can_run() -> bool {
    let ok = nix::unistd::geteuid().is_root()
        && Path::new("/usr/bin/containerd").exists()
        && Command::new("runc").arg("--version").output().is_ok()
        && Path::new("/bin/busybox").exists()
        && Command::new("ip").arg("-V").output().is_ok();
    if !ok {
        eprintln!("SKIP: needs root, containerd, runc, busybox-static and iproute2");
    }
    ok
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

/// containerd with its root, state and sockets under `dir`.
pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// A namespace of this run's own: runc keeps its state per namespace
    /// under /run/containerd/runc, outside the temporary directory.
    pub ns: String,
    child: Child,
}

impl Containerd {
    pub fn start(dir: &Path) -> Containerd {
        let dir = dir.join("containerd");
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("containerd.sock");
        let config =
            zeronode_containers::containerd_config(&dir.join("root"), &dir.join("state"), &socket);
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        // Its socket file appears at bind(2), a moment before it listens.
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let ns = format!(
            "zntest{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        Containerd {
            dir,
            socket,
            ns,
            child,
        }
    }

    pub async fn client(&self) -> zeronode_containers::containerd::Ctd {
        zeronode_containers::containerd::Ctd::connect(&self.socket, &self.ns)
            .await
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // The shims of our containerd (they outlive it by design) and
        // their containers.
        let sock = self.socket.display().to_string();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd);
                if cmd.contains("containerd-shim") && cmd.contains(&sock) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(200));
        // Rootfs overlays and the module's network namespaces.
        umount_under(self.dir.parent().unwrap_or(&self.dir));
        let _ = std::fs::remove_dir_all(Path::new("/run/containerd/runc").join(&self.ns));
    }
}

/// Lazily unmounts everything mounted under `dir` (rootfs overlays, netns
/// files), deepest first.
pub fn umount_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.display().to_string();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[allow(unused_imports)]
pub use zeronode_containers::fixture::{busybox_archive, HttpServer};

pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (/run/netns/NAME), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Netns {
        let name = format!(
            "znc{}-{}-{role}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The network module's workload networks (its library, the same code as
/// its binary) serving org.zeronode.Network1 on `socket` from a thread
/// inside `ns`: bridges, veths and nft rules all stay in that namespace.
pub struct NetworkModule {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NetworkModule {
    pub fn start(ns: &Netns, socket: &Path, state: &Path) -> NetworkModule {
        let nsfile = std::fs::File::open(ns.path()).unwrap();
        let (socket, state) = (socket.to_path_buf(), state.to_path_buf());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            nix::sched::setns(&nsfile, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let handle = zeronode_network::links::connect().unwrap();
                let workloads = Arc::new(
                    zeronode_network::workload::Workloads::new(
                        handle.clone(),
                        &state,
                        Path::new("/usr/sbin/nft"),
                    )
                    .unwrap(),
                );
                let iface = zeronode_network::dbus::Network {
                    handle,
                    shared: Default::default(),
                    workloads,
                };
                let server =
                    zeronode_types::bus::serve(&socket, zeronode_network::dbus::OBJECT_PATH, iface)
                        .unwrap();
                ready_tx.send(()).unwrap();
                let _ = rx.await;
                server.abort();
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        NetworkModule {
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for NetworkModule {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A child process with its output lines collected; killed on drop.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let outs: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for out in outs {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    eprintln!("  | {line}");
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Proc { child, lines }
    }

    pub fn wait_line(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needle:?} within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 100 ms until it gives Some, up to `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The tests' cgroup parent (`/zntest-PID`), removed from every hierarchy
/// on drop once runc removed the containers' cgroups under it.
pub struct CgroupParent(pub String);

impl CgroupParent {
    pub fn new() -> CgroupParent {
        CgroupParent(format!(
            "/zntest-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ))
    }

    /// The memory limit runc wrote for container `name`: memory.max on
    /// cgroup v2, memory.limit_in_bytes on v1.
    pub fn memory_limit(&self, name: &str) -> Option<String> {
        let v2 = format!("/sys/fs/cgroup{}/{name}/memory.max", self.0);
        let v1 = format!(
            "/sys/fs/cgroup/memory{}/{name}/memory.limit_in_bytes",
            self.0
        );
        std::fs::read_to_string(v2)
            .or_else(|_| std::fs::read_to_string(v1))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// The CPU limit: cpu.max on v2, "quota period" from v1's files.
    pub fn cpu_limit(&self, name: &str) -> Option<String> {
        let v2 = format!("/sys/fs/cgroup{}/{name}/cpu.max", self.0);
        if let Ok(s) = std::fs::read_to_string(v2) {
            return Some(s.trim().to_string());
        }
        let d = format!("/sys/fs/cgroup/cpu{}/{name}", self.0);
        let q = std::fs::read_to_string(format!("{d}/cpu.cfs_quota_us")).ok()?;
        let p = std::fs::read_to_string(format!("{d}/cpu.cfs_period_us")).ok()?;
        Some(format!("{} {}", q.trim(), p.trim()))
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        // Processes of containers a failed test left running (killing a
        // shim does not kill its container).
        for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/pids"] {
            let base = format!("{root}{}", self.0);
            let mut stack = vec![PathBuf::from(base)];
            while let Some(d) = stack.pop() {
                if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                if let Ok(rd) = std::fs::read_dir(&d) {
                    stack.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut dirs = vec![format!("/sys/fs/cgroup{}", self.0)];
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in rd.flatten() {
                dirs.push(format!("{}{}", e.path().display(), self.0));
            }
        }
        for d in dirs {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&d);
        }
    }
}
