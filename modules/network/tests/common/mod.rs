//! Namespaces, processes and a D-Bus client for the host tests. Every
//! namespace and process a test makes is removed by a Drop guard, also when
//! the test fails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zeronode_network::dbus::Network1Proxy;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// True when the tests can make namespaces (root with iproute2).
pub fn can_run() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let ip = Command::new("ip").arg("-V").output().is_ok();
    if !(root && ip) {
        eprintln!("SKIP: needs root and iproute2 to make network namespaces");
    }
    root && ip
}

pub fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"))
}

/// Runs a command that must succeed.
pub fn run(args: &[&str]) -> String {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
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
            "znt{}-{}-{role}",
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

    /// Runs `args` inside the namespace (test side: iproute2, ping, ...).
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    pub fn ping(&self, addr: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "2", addr])
            .status
            .success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A veth pair from `a` (named `a_if`) to `b` (named `b_if`), both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    // Made in the root namespace under temporary names, then moved: the
    // final names may exist in the root namespace already.
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let tag = std::process::id() % 100_000;
    let (ta, tb) = (format!("zta{tag}x{n}"), format!("ztb{tag}x{n}"));
    run(&[
        "ip", "link", "add", &ta, "type", "veth", "peer", "name", &tb,
    ]);
    run(&["ip", "link", "set", &ta, "netns", &a.name, "name", a_if]);
    run(&["ip", "link", "set", &tb, "netns", &b.name, "name", b_if]);
    run(&["ip", "-n", &a.name, "link", "set", a_if, "up"]);
    run(&["ip", "-n", &b.name, "link", "set", b_if, "up"]);
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
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let outs: Vec<Box<dyn std::io::Read + Send>> = vec![
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

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits for a line containing `needle`; returns it.
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
                "no line with {needle:?} within {limit:?}; output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then the exit status (killed after 10 s).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("process did not stop within 10 s of SIGTERM");
            }
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

/// dnsmasq as the DHCP server on `ifname` (10.99.0.1/24) inside `ns`,
/// leases of 2 minutes (its minimum); `extra` adds options such as T1/T2.
pub fn dnsmasq(ns: &Netns, ifname: &str, dir: &Path, extra: &[&str]) -> Proc {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &ns.name,
        "dnsmasq",
        "--no-daemon",
        "--port=0",
    ])
    .arg(format!("--interface={ifname}"))
    .args([
        "--bind-interfaces",
        "--dhcp-range=10.99.0.50,10.99.0.99,255.255.255.0,2m",
        "--dhcp-option=option:router,10.99.0.1",
        "--dhcp-option=option:dns-server,10.99.0.1",
        "--dhcp-authoritative",
        // Our client is measured, not dnsmasq's ping probe of the address.
        "--no-ping",
        "--log-dhcp",
        "--pid-file=",
        "--conf-file=/dev/null",
    ])
    .arg(format!(
        "--dhcp-leasefile={}",
        dir.join("dnsmasq.leases").display()
    ))
    .args(extra);
    Proc::spawn(cmd)
}

/// The node and its upstream: `node` has eth0, `peer` has up0 10.99.0.1/24.
pub struct Lan {
    pub node: Netns,
    pub peer: Netns,
}

pub const NODE_MAC: &str = "52:54:00:99:00:01";

pub fn lan() -> Lan {
    let node = Netns::new("node");
    let peer = Netns::new("peer");
    veth(&node, "eth0", &peer, "up0");
    run(&[
        "ip", "-n", &node.name, "link", "set", "eth0", "address", NODE_MAC,
    ]);
    run(&[
        "ip",
        "-n",
        &peer.name,
        "addr",
        "add",
        "10.99.0.1/24",
        "dev",
        "up0",
    ]);
    Lan { node, peer }
}

pub fn nft_path() -> &'static str {
    if Path::new("/usr/sbin/nft").exists() {
        "/usr/sbin/nft"
    } else {
        "nft"
    }
}

/// Starts the module in `ns` with its own UTS namespace (it sets the host
/// name) and the kernel command line `cmdline`.
pub fn module(ns: &Netns, dir: &Path, cmdline: &str) -> Proc {
    module_with(ns, dir, cmdline, &["--mgmt", "eth0"])
}

/// As [`module`], with `args` instead of `--mgmt eth0`.
pub fn module_with(ns: &Netns, dir: &Path, cmdline: &str, args: &[&str]) -> Proc {
    std::fs::write(dir.join("cmdline"), cmdline).unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, "unshare", "--uts"])
        .arg(env!("CARGO_BIN_EXE_zeronode-network"))
        .arg("--socket")
        .arg(dir.join("network.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--cmdline")
        .arg(dir.join("cmdline"))
        .arg("--resolv-conf")
        .arg(dir.join("resolv.conf"))
        .args(args)
        .args(["--carrier-wait-ms", "1000", "--nft", nft_path()])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    Proc::spawn(cmd)
}

pub async fn proxy(dir: &Path) -> Network1Proxy<'static> {
    let sock = dir.join("network.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no socket {}", sock.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let conn = zeronode_types::bus::connect(&sock).await.unwrap();
    Network1Proxy::new(&conn).await.unwrap()
}

pub async fn state(p: &Network1Proxy<'_>) -> serde_json::Value {
    serde_json::from_str(&p.state().await.unwrap()).unwrap()
}

/// The IPv4 addresses on `link` in a State document, as a.b.c.d/n.
pub fn v4_on(state: &serde_json::Value, link: &str) -> Vec<String> {
    state["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["link"] == link && a["address"].as_str().is_some_and(|s| s.contains('.')))
        .map(|a| format!("{}/{}", a["address"].as_str().unwrap(), a["prefix"]))
        .collect()
}

pub fn has_default_via(state: &serde_json::Value, gw: &str) -> bool {
    state["routes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["destination"] == "default" && r["gateway"] == gw)
}

/// Waits until `pred` holds for the module's State, up to `limit`.
pub async fn wait_state(
    p: &Network1Proxy<'_>,
    limit: Duration,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let s = state(p).await;
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not seen within {limit:?}; state: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
