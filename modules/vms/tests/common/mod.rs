//! Host-test helpers: a network namespace, the network module's library
//! serving workload networks from a thread inside it, the vms binary run
//! inside it, output capture.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Root, QEMU, busybox-static, iproute2 and a Debian kernel with the
/// guest's modules; None (and a SKIP line) otherwise.
pub fn guest_kernel() -> Option<zeronode_vms::fixture::GuestKernel> {
    let tools = nix::unistd::geteuid().is_root()
        && Path::new("/usr/bin/qemu-system-x86_64").exists()
        && Path::new("/bin/busybox").exists()
        && Command::new("ip").arg("-V").output().is_ok();
    let k = zeronode_vms::fixture::find_kernel(&workspace());
    if !tools || k.is_none() {
        eprintln!(
            "SKIP: needs root, qemu-system-x86, busybox-static, iproute2 and a Debian kernel \
             (scripts/build-image's out/cache, /boot, or ZN_VM_KERNEL + ZN_VM_MODULES)"
        );
        return None;
    }
    k
}

pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Netns {
        let name = format!(
            "znv{}-{}-{role}",
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

    pub fn has_link(&self, name: &str) -> bool {
        self.exec(&["ip", "link", "show", name]).status.success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

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

/// A process whose output lines are kept (and echoed for the test log).
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

    pub fn terminate(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
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

/// Kills every QEMU whose command line mentions `marker` (the test's
/// temporary directory): VMs outlive the module by design.
pub fn kill_qemus(marker: &str) {
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.contains("qemu-system") && cmd.contains(marker) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

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
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The fixture's HTTP server listening on 127.0.0.1 inside `ns` (where
/// the module runs): bound from a thread that entered the namespace.
pub fn http_server_in(
    ns: &Netns,
    files: std::collections::HashMap<String, Vec<u8>>,
) -> zeronode_containers::fixture::HttpServer {
    let nsfile = std::fs::File::open(ns.path()).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&nsfile, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        zeronode_containers::fixture::HttpServer::start(files).unwrap()
    })
    .join()
    .unwrap()
}
