//! One QEMU process running a ZeroNode image.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::qmp;

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";
/// The port of the node's API inside the guest.
pub const GUEST_API_PORT: u16 = 8443;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// `-kernel vmlinuz -initrd initramfs.img -append <cmdline>`.
    Direct,
    /// OVMF firmware booting the USB-stick image's EFI/BOOT/BOOTX64.EFI.
    Uefi,
    /// iPXE fetching boot.ipxe, the kernel and the initramfs over QEMU's TFTP.
    Pxe,
}

impl std::str::FromStr for Boot {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "direct" => Ok(Boot::Direct),
            "uefi" => Ok(Boot::Uefi),
            "pxe" => Ok(Boot::Pxe),
            other => Err(format!("{other:?} is not a boot path (direct, uefi, pxe)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The directory scripts/build-image wrote (out/image).
    pub image: PathBuf,
    pub boot: Boot,
    pub disks: u32,
    pub disk_size: String,
    pub memory_mib: u32,
    pub cpus: u32,
    /// `tcg` (the default: KVM guests hang on the CI machines) or `kvm`.
    pub accel: String,
    /// Host port forwarded to the guest's API port, on 127.0.0.1.
    pub api_port: Option<u16>,
    /// Extra kernel parameters (direct boot only: the others boot what was built).
    pub append: Option<String>,
    /// Another initramfs for direct boot (the boot benchmark's baseline).
    pub initrd: Option<PathBuf>,
    /// Print console lines on stdout as they arrive.
    pub echo: bool,
}

impl NodeOptions {
    pub fn new(image: impl Into<PathBuf>, boot: Boot) -> Self {
        NodeOptions {
            image: image.into(),
            boot,
            disks: 0,
            disk_size: "2G".into(),
            memory_mib: 1024,
            cpus: 2,
            accel: "tcg".into(),
            api_port: None,
            append: None,
            initrd: None,
            echo: false,
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
    #[error("{0} is missing: run scripts/build-image first")]
    MissingArtifact(PathBuf),
    #[error("--append and --initrd only apply to direct boot")]
    DirectOnly,
    #[error("timed out after {secs} s waiting for {what}; last console lines:\n{tail}")]
    Timeout {
        what: String,
        secs: u64,
        tail: String,
    },
    #[error("QEMU exited ({status}) while waiting for {what}; last console lines:\n{tail}")]
    Exited {
        what: String,
        status: ExitStatus,
        tail: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Io { what, source }
}

pub struct Node {
    child: Child,
    dir: tempfile::TempDir,
    console_path: PathBuf,
    console: String,
    read_offset: u64,
    /// Lines already handed out by `wait_for_line`.
    consumed: usize,
    echo: bool,
}

impl Node {
    pub fn start(opts: &NodeOptions) -> Result<Node, NodeError> {
        let dir = tempfile::Builder::new()
            .prefix("zeronode-qemu-")
            .tempdir()
            .map_err(io("creating a run directory"))?;
        let console_path = dir.path().join("console.log");
        let mut cmd = qemu_command(opts, dir.path(), Some(&console_path))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = cmd.spawn().map_err(io("starting qemu-system-x86_64"))?;
        Ok(Node {
            child,
            dir,
            console_path,
            console: String::new(),
            read_offset: 0,
            consumed: 0,
            echo: opts.echo,
        })
    }

    fn qmp_socket(&self) -> PathBuf {
        self.dir.path().join("qmp.sock")
    }

    /// Everything the console printed so far.
    pub fn console(&mut self) -> &str {
        self.poll_console();
        &self.console
    }

    fn poll_console(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.console_path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.read_offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if let Ok(n) = f.read_to_end(&mut buf) {
            self.read_offset += n as u64;
            let text = String::from_utf8_lossy(&buf).replace('\r', "");
            if self.echo {
                print!("{text}");
            }
            self.console.push_str(&text);
        }
    }

    fn tail(&mut self, n: usize) -> String {
        let lines: Vec<&str> = self.console().lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits for a console line (after the ones already returned) that
    /// satisfies `pred`, and returns it.
    pub fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, NodeError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.poll_console();
            // Only complete lines count.
            let complete = match self.console.rfind('\n') {
                Some(i) => &self.console[..i],
                None => "",
            };
            let lines: Vec<&str> = complete.lines().collect();
            if let Some((i, line)) = lines
                .iter()
                .enumerate()
                .skip(self.consumed)
                .find(|(_, l)| pred(l))
            {
                let line = line.to_string();
                self.consumed = i + 1;
                return Ok(line);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.poll_console();
                return Err(NodeError::Exited {
                    what: what.into(),
                    status,
                    tail: self.tail(40),
                });
            }
            if Instant::now() >= deadline {
                return Err(NodeError::Timeout {
                    what: what.into(),
                    secs: timeout.as_secs(),
                    tail: self.tail(40),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for `zeronode: ready in N ms` and returns N.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<u64, NodeError> {
        let line = self.wait_for_line("the ready line", timeout, |l| ready_ms(l).is_some())?;
        Ok(ready_ms(&line).unwrap_or(0))
    }

    /// The ACPI power button (QMP `system_powerdown`).
    pub fn powerdown(&self) -> Result<(), NodeError> {
        qmp::execute(&self.qmp_socket(), "system_powerdown", None)
            .map(|_| ())
            .map_err(io("QMP system_powerdown"))
    }

    /// Ctrl-Alt-Del on the keyboard.
    pub fn ctrl_alt_del(&self) -> Result<(), NodeError> {
        let keys = serde_json::json!({ "keys": [
            { "type": "qcode", "data": "ctrl" }, { "type": "qcode", "data": "alt" }, { "type": "qcode", "data": "delete" }
        ]});
        qmp::execute(&self.qmp_socket(), "send-key", Some(keys))
            .map(|_| ())
            .map_err(io("QMP send-key"))
    }

    /// Waits for QEMU to exit (the guest powered off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, NodeError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(io("waiting for QEMU"))? {
                self.poll_console();
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(NodeError::Timeout {
                    what: "QEMU to exit".into(),
                    secs: timeout.as_secs(),
                    tail: self.tail(40),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
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

/// The QEMU command line for `opts`, with run files in `dir`. With no
/// console file the serial console (and QEMU's monitor) is the terminal.
pub fn qemu_command(
    opts: &NodeOptions,
    dir: &Path,
    console: Option<&Path>,
) -> Result<Command, NodeError> {
    let need = |name: &str| -> Result<PathBuf, NodeError> {
        let p = opts.image.join(name);
        if p.exists() {
            Ok(p)
        } else {
            Err(NodeError::MissingArtifact(p))
        }
    };
    if opts.boot != Boot::Direct && (opts.append.is_some() || opts.initrd.is_some()) {
        return Err(NodeError::DirectOnly);
    }
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        &opts.accel,
        "-machine",
        "q35",
        "-m",
        &opts.memory_mib.to_string(),
    ]);
    cmd.args([
        "-smp",
        &opts.cpus.to_string(),
        "-display",
        "none",
        "-nodefaults",
        "-no-user-config",
    ]);
    cmd.arg("-qmp").arg(format!(
        "unix:{},server=on,wait=off",
        dir.join("qmp.sock").display()
    ));
    match console {
        Some(path) => cmd
            .arg("-serial")
            .arg(format!("file:{}", path.display()))
            .args(["-monitor", "none"]),
        None => cmd.args(["-serial", "mon:stdio"]),
    };
    let mut netdev = String::from("user,id=n0");
    if let Some(port) = opts.api_port {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{port}-:{GUEST_API_PORT}"));
    }
    match opts.boot {
        Boot::Direct => {
            let cmdline =
                std::fs::read_to_string(need("cmdline")?).map_err(io("reading cmdline"))?;
            let mut append = cmdline.trim().to_string();
            if let Some(extra) = &opts.append {
                append.push(' ');
                append.push_str(extra);
            }
            let initrd = match &opts.initrd {
                Some(p) => p.clone(),
                None => need("initramfs.img")?,
            };
            cmd.arg("-kernel")
                .arg(need("vmlinuz")?)
                .arg("-initrd")
                .arg(initrd)
                .arg("-append")
                .arg(append);
        }
        Boot::Uefi => {
            let vars = dir.join("OVMF_VARS.fd");
            std::fs::copy(OVMF_VARS, &vars)
                .map_err(io(format!("copying {OVMF_VARS} (Debian package ovmf)")))?;
            cmd.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
            ));
            cmd.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
            // snapshot=on: the guest never writes to the artifact.
            cmd.arg("-drive").arg(format!(
                "if=virtio,format=qcow2,snapshot=on,file={}",
                need("zeronode.qcow2")?.display()
            ));
        }
        Boot::Pxe => {
            need("boot.ipxe")?;
            netdev.push_str(&format!(
                ",tftp={},bootfile=boot.ipxe",
                opts.image.display()
            ));
            cmd.args(["-boot", "n"]);
        }
    }
    cmd.args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"]);
    for i in 0..opts.disks {
        let disk = dir.join(format!("disk{i}.qcow2"));
        let ok = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg(&opts.disk_size)
            .status()
            .map_err(io("running qemu-img"))?;
        if !ok.success() {
            return Err(NodeError::Io {
                what: format!("qemu-img create {}", disk.display()),
                source: std::io::Error::other(ok.to_string()),
            });
        }
        cmd.arg("-drive")
            .arg(format!("if=virtio,format=qcow2,file={}", disk.display()));
    }
    Ok(cmd)
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
    fn command_lines() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "cmdline",
            "vmlinuz",
            "initramfs.img",
            "zeronode.qcow2",
            "boot.ipxe",
        ] {
            std::fs::write(dir.path().join(f), "console=ttyS0\n").unwrap();
        }
        let mut o = NodeOptions::new(dir.path(), Boot::Direct);
        o.append = Some("zeronode.debug".into());
        o.api_port = Some(18443);
        let c = format!("{:?}", qemu_command(&o, dir.path(), None).unwrap());
        assert!(
            c.contains("\"console=ttyS0 zeronode.debug\"")
                && c.contains("hostfwd=tcp:127.0.0.1:18443-:8443"),
            "{c}"
        );
        o.boot = Boot::Pxe;
        assert!(matches!(
            qemu_command(&o, dir.path(), None),
            Err(NodeError::DirectOnly)
        ));
        o.append = None;
        let c = format!("{:?}", qemu_command(&o, dir.path(), None).unwrap());
        assert!(
            c.contains("bootfile=boot.ipxe") && c.contains("\"-boot\" \"n\""),
            "{c}"
        );
        std::fs::remove_file(dir.path().join("zeronode.qcow2")).unwrap();
        let o = NodeOptions::new(dir.path(), Boot::Uefi);
        assert!(
            matches!(qemu_command(&o, dir.path(), None), Err(NodeError::MissingArtifact(p)) if p.ends_with("zeronode.qcow2"))
        );
    }
}
