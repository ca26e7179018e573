//! One QEMU process running a ZeroNode image, for tests and for people:
//! start it, wait for console lines, press its buttons, wait for it to stop.
//! Dropping a `Node` kills QEMU and removes its run directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::command::{qemu_command, Accel, Boot, Serial};
use crate::console::Console;
use crate::qmp::{self, QmpError};

#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The directory scripts/build-image wrote (out/image).
    pub image: PathBuf,
    pub boot: Boot,
    /// Blank virtio disks, created per run.
    pub disks: u32,
    /// Size of each blank disk, as qemu-img takes it (`2G`).
    pub disk_size: String,
    /// Disk images the caller keeps (raw, or qcow2 by extension), attached
    /// after the blank ones, as virtio disks with serial `zeronode-fileN`:
    /// a node's disks across reboots, or a disk a test prepared.
    pub disk_files: Vec<PathBuf>,
    pub memory_mib: u32,
    pub cpus: u32,
    pub accel: Accel,
    /// Host port on 127.0.0.1 forwarded to the guest's API port; `None`
    /// picks a free one (see `Node::api_port`).
    pub api_port: Option<u16>,
    /// Extra kernel parameters. Direct boot appends them; UEFI and PXE boot
    /// a UKI or boot.ipxe made for the run.
    pub append: Option<String>,
    /// Another initramfs (the boot benchmark's baseline), on every path.
    pub initrd: Option<PathBuf>,
    /// Write the console transcript here (replaced at start, kept after the
    /// run) instead of in the run directory.
    pub console: Option<PathBuf>,
    /// Print console lines on stdout as they are read.
    pub echo: bool,
    /// Extra NICs whose wire is a UDP socket on loopback: a test plays the
    /// network on the other end (e.g. a misbehaving DHCP server).
    pub udp_nics: Vec<UdpNic>,
    /// More TCP ports forwarded from 127.0.0.1 into the guest beside the
    /// API port (e.g. the shard store's RESP port, for several nodes).
    pub forwards: Vec<Forward>,
    /// An empty virtio-scsi controller (`scsi0`) to hot-plug disks into
    /// while the node runs (`Node::hot_plug_disk`).
    pub scsi_hotplug: bool,
}

/// Host port `host` on 127.0.0.1 forwarded to the guest's port `guest`.
#[derive(Debug, Clone, Copy)]
pub struct Forward {
    pub host: u16,
    pub guest: u16,
}

impl std::str::FromStr for Forward {
    type Err = String;

    /// `HOST:GUEST`, two TCP ports 1-65535.
    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
        match s.split_once(':').map(|(h, g)| (port(h), port(g))) {
            Some((Some(host), Some(guest))) => Ok(Forward { host, guest }),
            _ => Err(format!(
                "forward {s:?}: HOST:GUEST expected, two TCP ports 1-65535"
            )),
        }
    }
}

/// A virtio NIC whose Ethernet frames QEMU sends, one per datagram, to
/// 127.0.0.1:`peer_port` and receives on 127.0.0.1:`qemu_port`.
#[derive(Debug, Clone)]
pub struct UdpNic {
    /// `52:54:00:..`, so the test can name it in `zeronode.mgmt=`.
    pub mac: String,
    pub peer_port: u16,
    pub qemu_port: u16,
}

impl NodeOptions {
    pub fn new(image: impl Into<PathBuf>, boot: Boot) -> Self {
        NodeOptions {
            image: image.into(),
            boot,
            disks: 0,
            disk_size: "2G".into(),
            disk_files: Vec::new(),
            memory_mib: 1024,
            cpus: 2,
            accel: Accel::Tcg,
            api_port: None,
            append: None,
            initrd: None,
            console: None,
            echo: false,
            udp_nics: Vec::new(),
            forwards: Vec::new(),
            scsi_hotplug: false,
        }
    }
}

#[derive(Debug, Error)]
pub enum NodeError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{} is missing: run scripts/build-image first", .0.display())]
    MissingArtifact(PathBuf),
    #[error("making this run's boot disk: {0}")]
    Image(#[from] zeronode_image::Error),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("timed out after {secs} s waiting for {what}; last console lines:\n{tail}")]
    Timeout {
        what: String,
        secs: u64,
        tail: String,
    },
    #[error(
        "QEMU exited ({status}) while waiting for {what}{stderr}; last console lines:\n{tail}"
    )]
    Exited {
        what: String,
        status: ExitStatus,
        /// QEMU's own complaints, prefixed with ": " when there are any.
        stderr: String,
        tail: String,
    },
    #[error("the kernel panicked while waiting for {what}: {line}; last console lines:\n{tail}")]
    KernelPanic {
        what: String,
        line: String,
        tail: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Io { what, source }
}

/// How many console lines an error shows.
const TAIL: usize = 40;

pub struct Node {
    child: Child,
    dir: tempfile::TempDir,
    console: Console,
    api_port: u16,
}

impl Node {
    /// Starts QEMU; returns once it runs (its QMP socket is up), or with
    /// QEMU's complaint if it stopped at once.
    pub fn start(opts: &NodeOptions) -> Result<Node, NodeError> {
        // A port `free_port` picked is free only until someone binds it: a
        // QEMU started beside this one (the e2e lanes) can take it first,
        // and then this one stops at once. Pick another and start again.
        let mut tries = 1;
        loop {
            match Self::start_once(opts) {
                Err(NodeError::Exited { stderr, .. })
                    if opts.api_port.is_none()
                        && tries < 5
                        && stderr.contains("Could not set up host forwarding rule") =>
                {
                    tries += 1
                }
                started => return started,
            }
        }
    }

    fn start_once(opts: &NodeOptions) -> Result<Node, NodeError> {
        let dir = tempfile::Builder::new()
            .prefix("zeronode-qemu-")
            .tempdir()
            .map_err(io("creating a run directory"))?;
        let mut opts = opts.clone();
        let api_port = match opts.api_port {
            Some(p) => p,
            None => free_port()?,
        };
        opts.api_port = Some(api_port);
        let console_path = opts
            .console
            .clone()
            .unwrap_or_else(|| dir.path().join("console.log"));
        // A stale transcript from an earlier run must not satisfy a wait.
        match std::fs::remove_file(&console_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(format!("removing {}", console_path.display()))(e))
            }
            _ => {}
        }
        let mut cmd = qemu_command(&opts, dir.path(), Serial::File(&console_path))?;
        let stderr_path = dir.path().join("qemu.stderr");
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(io(format!("creating {}", stderr_path.display())))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd.spawn().map_err(io(
            "starting qemu-system-x86_64 (Debian package qemu-system-x86)",
        ))?;
        let mut node = Node {
            child,
            dir,
            console: Console::new(&console_path, opts.echo),
            api_port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !node.qmp_socket().exists() {
            if let Some(status) = node.child.try_wait().map_err(io("waiting for QEMU"))? {
                return Err(node.exited("QEMU to start", status));
            }
            if Instant::now() >= deadline {
                return Err(node.timeout("QEMU's QMP socket", Duration::from_secs(10)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(node)
    }

    /// The QEMU process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The host port (on 127.0.0.1) forwarded to the node's API port.
    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    /// The host end of the node's control port: give it to `znctl --socket`.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.path().join(crate::command::CONTROL_SOCKET)
    }

    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.path().join("qmp.sock")
    }

    /// Where the console transcript is being written.
    pub fn console_path(&self) -> &Path {
        self.console.path()
    }

    /// Every complete console line so far.
    pub fn console(&mut self) -> &str {
        let _ = self.console.poll();
        self.console.transcript()
    }

    /// Waits for a console line after the ones already returned that
    /// satisfies `pred`, and returns it. Fails at once if QEMU exits or the
    /// kernel panics first.
    pub fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, NodeError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            self.console
                .poll()
                .map_err(io(format!("reading {}", self.console.path().display())))?;
            if let Some(line) = self.console.next_matching(&pred) {
                return Ok(line);
            }
            if let Some(line) = self.console.panic_line().map(str::to_string) {
                // Let the backtrace reach the file before showing the tail.
                std::thread::sleep(Duration::from_millis(500));
                let _ = self.console.poll();
                return Err(NodeError::KernelPanic {
                    what: what.into(),
                    line,
                    tail: self.console.tail(TAIL),
                });
            }
            if let Some(status) = self.child.try_wait().map_err(io("waiting for QEMU"))? {
                let _ = self.console.poll();
                if let Some(line) = self.console.next_matching(&pred) {
                    return Ok(line);
                }
                return Err(self.exited(what, status));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(self.timeout(what, timeout));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Like `wait_for_line`, but a line printed at any time so far counts
    /// too: for what may come before or after the ready line (a module's
    /// background work, a DHCP lease).
    pub fn find_or_wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, NodeError> {
        if let Some(line) = self.console().lines().find(|l| pred(l)) {
            return Ok(line.to_string());
        }
        self.wait_for_line(what, timeout, pred)
    }

    /// Waits for `zeronode: ready in N ms` and returns N.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<u64, NodeError> {
        let line = self.wait_for_line("the ready line", timeout, |l| ready_ms(l).is_some())?;
        Ok(ready_ms(&line).unwrap_or(0))
    }

    /// Runs a QMP command and returns its `return` value.
    pub fn qmp(
        &self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, NodeError> {
        Ok(qmp::execute(&self.qmp_socket(), command, arguments)?)
    }

    /// Plugs the raw disk image `file` into the running node as a SCSI disk
    /// with serial `serial` (needs `NodeOptions::scsi_hotplug`), as a disk
    /// plugged into a running machine, or found late by its controller.
    pub fn hot_plug_disk(&self, file: &Path, serial: &str) -> Result<(), NodeError> {
        let node = format!("hot-{serial}");
        self.qmp(
            "blockdev-add",
            Some(serde_json::json!({
                "driver": "raw",
                "node-name": node,
                "file": { "driver": "file", "filename": file },
            })),
        )?;
        self.qmp(
            "device_add",
            Some(serde_json::json!({
                "driver": "scsi-hd",
                "id": format!("disk-{serial}"),
                "bus": "scsi0.0",
                "drive": node,
                "serial": serial,
            })),
        )
        .map(|_| ())
    }

    /// Pulls the disk `hot_plug_disk` plugged in with `serial` out of the
    /// running node (QMP device_del), as a person unplugging it would.
    pub fn unplug_disk(&self, serial: &str) -> Result<(), NodeError> {
        self.qmp(
            "device_del",
            Some(serde_json::json!({ "id": format!("disk-{serial}") })),
        )
        .map(|_| ())
    }

    /// The ACPI power button (QMP `system_powerdown`).
    pub fn powerdown(&self) -> Result<(), NodeError> {
        self.qmp("system_powerdown", None).map(|_| ())
    }

    /// Ctrl-Alt-Del on the keyboard (QMP `send-key`).
    pub fn ctrl_alt_del(&self) -> Result<(), NodeError> {
        let keys = serde_json::json!({ "keys": [
            { "type": "qcode", "data": "ctrl" },
            { "type": "qcode", "data": "alt" },
            { "type": "qcode", "data": "delete" }
        ]});
        self.qmp("send-key", Some(keys)).map(|_| ())
    }

    /// Waits for QEMU to exit (the guest powered off). `Duration::MAX`
    /// waits for ever.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, NodeError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let _ = self.console.poll();
            if let Some(status) = self.child.try_wait().map_err(io("waiting for QEMU"))? {
                let _ = self.console.poll();
                return Ok(status);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(self.timeout("QEMU to exit", timeout));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills QEMU now (the run directory stays until the `Node` is dropped).
    pub fn kill(&mut self) -> Result<ExitStatus, NodeError> {
        let _ = self.child.kill();
        self.child.wait().map_err(io("waiting for QEMU"))
    }

    fn timeout(&mut self, what: &str, timeout: Duration) -> NodeError {
        let _ = self.console.poll();
        NodeError::Timeout {
            what: what.into(),
            secs: timeout.as_secs(),
            tail: self.console.tail(TAIL),
        }
    }

    fn exited(&mut self, what: &str, status: ExitStatus) -> NodeError {
        let _ = self.console.poll();
        let stderr = std::fs::read_to_string(self.dir.path().join("qemu.stderr"))
            .unwrap_or_default()
            .trim()
            .to_string();
        NodeError::Exited {
            what: what.into(),
            status,
            stderr: if stderr.is_empty() {
                String::new()
            } else {
                format!(": {stderr}")
            },
            tail: self.console.tail(TAIL),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// N from a `zeronode: ready in N ms` line.
pub fn ready_ms(line: &str) -> Option<u64> {
    let rest = line.trim().strip_prefix("zeronode: ready in ")?;
    rest.strip_suffix(" ms")?.parse().ok()
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> Result<u16, NodeError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io("finding a free local port"))
}

/// Runs QEMU with the console on this terminal (QEMU's monitor on Ctrl-A C,
/// Ctrl-A X quits) until it exits.
pub fn run_interactive(opts: &NodeOptions) -> Result<ExitStatus, NodeError> {
    let dir = tempfile::Builder::new()
        .prefix("zeronode-qemu-")
        .tempdir()
        .map_err(io("creating a run directory"))?;
    let mut cmd: Command = qemu_command(opts, dir.path(), Serial::Stdio)?;
    eprintln!(
        "zeronode-qemu: console below (Ctrl-A X quits); from another terminal: znctl --socket {} list",
        dir.path().join(crate::command::CONTROL_SOCKET).display()
    );
    cmd.status().map_err(io("running qemu-system-x86_64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line() {
        assert_eq!(ready_ms("zeronode: ready in 4211 ms"), Some(4211));
        assert_eq!(ready_ms("[store] zeronode: ready in 1 ms"), None);
        assert_eq!(ready_ms("zeronode: ready in x ms"), None);
    }

    #[test]
    fn forward_parses_two_ports() {
        let f: Forward = "19900:9900".parse().unwrap();
        assert_eq!((f.host, f.guest), (19900, 9900));
        for bad in ["9900", "0:9900", "9900:70000", "a:b", ":9900"] {
            let err = bad.parse::<Forward>().unwrap_err();
            assert!(err.contains(bad) && err.contains("HOST:GUEST"), "{err}");
        }
    }

    #[test]
    fn missing_image_is_named_before_qemu_starts() {
        let o = NodeOptions::new("/nonexistent/out/image", Boot::Direct);
        let err = Node::start(&o).err().unwrap().to_string();
        assert!(
            err.contains("/nonexistent/out/image/") && err.contains("scripts/build-image"),
            "{err}"
        );
    }

    #[test]
    fn qemu_refusing_to_start_is_reported_with_its_words() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["cmdline", "vmlinuz", "initramfs.img"] {
            std::fs::write(dir.path().join(f), "x\n").unwrap();
        }
        // "x" is no kernel: QEMU stops while loading it.
        let o = NodeOptions::new(dir.path(), Boot::Direct);
        let err = match Node::start(&o) {
            Err(e) => e,
            Ok(mut node) => node
                .wait_for_line("a line", Duration::from_secs(20), |_| true)
                .unwrap_err(),
        };
        let err = err.to_string();
        assert!(
            err.contains("QEMU exited") && err.contains("linux kernel too old"),
            "{err}"
        );
    }
}
