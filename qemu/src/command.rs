//! The QEMU command line for one node: firmware and boot path, blank disks,
//! user networking with the API port forwarded, serial console, QMP.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::node::{NodeError, NodeOptions};

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";
/// The port of the node's API inside the guest.
pub const GUEST_API_PORT: u16 = 8443;
/// The virtio-serial port's name, as the node looks for it.
pub const CONTROL_PORT: &str = "org.zeronode.control";
/// The host end of that port, in the run directory.
pub const CONTROL_SOCKET: &str = "control.sock";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// `-kernel vmlinux -initrd initramfs.img -append <cmdline>` (vmlinuz
    /// for an image without vmlinux).
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Emulation: slow but works everywhere (KVM guests hang on our CI
    /// machines, so this is the default).
    Tcg,
    Kvm,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcg" => Ok(Accel::Tcg),
            "kvm" => Ok(Accel::Kvm),
            other => Err(format!("{other:?} is not an accelerator (tcg, kvm)")),
        }
    }
}

/// Where the serial console goes.
pub enum Serial<'a> {
    /// A file the caller reads (QEMU's monitor is off).
    File(&'a Path),
    /// This terminal, multiplexed with QEMU's monitor (Ctrl-A X quits).
    Stdio,
}

fn need(opts: &NodeOptions, name: &str) -> Result<PathBuf, NodeError> {
    let p = opts.image.join(name);
    if p.exists() {
        Ok(p)
    } else {
        Err(NodeError::MissingArtifact(p))
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Io { what, source }
}

/// The built kernel command line plus `--append`.
fn cmdline(opts: &NodeOptions) -> Result<String, NodeError> {
    let path = need(opts, "cmdline")?;
    let text = std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
    let mut line = text.trim().to_string();
    if let Some(extra) = opts.append.as_deref().filter(|e| !e.trim().is_empty()) {
        line.push(' ');
        line.push_str(extra.trim());
    }
    Ok(line)
}

/// The kernel for a direct boot: the ELF one, which QEMU starts at its PVH
/// entry, skipping the bzImage's decompression in emulated code (about 5 s
/// of every boot under TCG); the bzImage for an image built without it.
fn direct_kernel(opts: &NodeOptions) -> Result<PathBuf, NodeError> {
    need(opts, "vmlinux").or_else(|_| need(opts, "vmlinuz"))
}

fn initrd(opts: &NodeOptions) -> Result<PathBuf, NodeError> {
    match &opts.initrd {
        Some(p) if p.exists() => Ok(p.clone()),
        Some(p) => Err(NodeError::MissingArtifact(p.clone())),
        None => need(opts, "initramfs.img"),
    }
}

/// The QEMU command line for `opts`, with per-run files (OVMF variables,
/// blank disks, QMP socket, an overriding boot disk or TFTP root) in `dir`.
pub fn qemu_command(opts: &NodeOptions, dir: &Path, serial: Serial) -> Result<Command, NodeError> {
    let mut cmd = Command::new("qemu-system-x86_64");
    let accel = match opts.accel {
        Accel::Tcg => "tcg",
        Accel::Kvm => "kvm",
    };
    cmd.args(["-accel", accel, "-machine", "q35"]);
    if opts.accel == Accel::Tcg {
        // QEMU's default CPU offers AMD's SVM, which TCG emulates: the
        // node's kvm_amd then loads (after ready) and a VM module that
        // starts after it would run its guests under nested KVM emulated by
        // TCG. A TCG node presents no virtualisation extensions, so its VMs
        // run under TCG whenever the VM module starts.
        cmd.args(["-cpu", "qemu64,svm=off"]);
    }
    cmd.args(["-m", &opts.memory_mib.to_string()]);
    cmd.args(["-smp", &opts.cpus.to_string()]);
    cmd.args(["-display", "none", "-nodefaults", "-no-user-config"]);
    cmd.arg("-qmp").arg(format!(
        "unix:{},server=on,wait=off",
        dir.join("qmp.sock").display()
    ));
    match serial {
        Serial::File(path) => cmd
            .arg("-serial")
            .arg(format!("file:{}", path.display()))
            .args(["-monitor", "none"]),
        Serial::Stdio => cmd.args(["-serial", "mon:stdio"]),
    };
    let overridden = opts.append.is_some() || opts.initrd.is_some();
    let mut netdev = String::from("user,id=n0");
    if let Some(port) = opts.api_port {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{port}-:{GUEST_API_PORT}"));
    }
    for f in &opts.forwards {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest));
    }
    let mut nic = String::from("virtio-net-pci,netdev=n0");
    match opts.boot {
        Boot::Direct => {
            cmd.arg("-kernel").arg(direct_kernel(opts)?);
            cmd.arg("-initrd").arg(initrd(opts)?);
            cmd.arg("-append").arg(cmdline(opts)?);
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
            let (file, format) = if overridden {
                (usb_image(opts, dir)?, "raw")
            } else {
                (need(opts, "zeronode.qcow2")?, "qcow2")
            };
            cmd.arg("-drive").arg(format!(
                "if=none,id=boot,format={format},snapshot=on,file={}",
                file.display()
            ));
            cmd.args(["-device", "virtio-blk-pci,drive=boot,bootindex=0"]);
        }
        Boot::Pxe => {
            let root = if overridden {
                tftp_root(opts, dir)?
            } else {
                need(opts, "boot.ipxe")?;
                opts.image.clone()
            };
            netdev.push_str(&format!(",tftp={},bootfile=boot.ipxe", root.display()));
            nic.push_str(",bootindex=0");
        }
    }
    cmd.args(["-netdev", &netdev, "-device", &nic]);
    for (i, u) in opts.udp_nics.iter().enumerate() {
        cmd.args([
            "-netdev",
            &format!(
                "socket,id=u{i},udp=127.0.0.1:{},localaddr=127.0.0.1:{}",
                u.peer_port, u.qemu_port
            ),
            "-device",
            &format!("virtio-net-pci,netdev=u{i},mac={}", u.mac),
        ]);
    }
    // Entropy from the host, as clouds give it: without it the guest's
    // getrandom(2) blocks for seconds under TCG (no RDRAND in the emulated
    // CPU) until jitter seeds the kernel's CRNG, and the node key waits.
    cmd.args([
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        "virtio-rng-pci,rng=rng0",
    ]);
    // A hardware watchdog, as boards have (iTCO, sp5100): PID 1 arms it,
    // and a node whose kernel or PID 1 hangs is reset instead of left hung.
    cmd.args(["-device", "i6300esb", "-action", "watchdog=reset"]);
    // The console tool's channel: a virtio-serial port that the node's
    // control-port service joins to PID 1's control socket, so
    // `znctl --socket <run dir>/control.sock` works from the host.
    cmd.args(["-device", "virtio-serial-pci,id=vser0"]);
    cmd.arg("-chardev").arg(format!(
        "socket,id=control,path={},server=on,wait=off",
        dir.join(CONTROL_SOCKET).display()
    ));
    cmd.args([
        "-device",
        &format!("virtserialport,bus=vser0.0,chardev=control,name={CONTROL_PORT}"),
    ]);
    for i in 0..opts.disks {
        let disk = dir.join(format!("disk{i}.qcow2"));
        create_qcow2(&disk, &opts.disk_size)?;
        cmd.arg("-drive").arg(format!(
            "if=none,id=data{i},format=qcow2,file={}",
            disk.display()
        ));
        cmd.args([
            "-device",
            &format!("virtio-blk-pci,drive=data{i},serial=zeronode-data{i}"),
        ]);
    }
    if opts.scsi_hotplug {
        cmd.args(["-device", "virtio-scsi-pci,id=scsi0"]);
    }
    for (i, file) in opts.disk_files.iter().enumerate() {
        let format = match file.extension().and_then(|e| e.to_str()) {
            Some("qcow2") => "qcow2",
            _ => "raw",
        };
        if format == "qcow2" && !file.exists() {
            create_qcow2(file, &opts.disk_size)?;
        }
        cmd.arg("-drive").arg(format!(
            "if=none,id=file{i},format={format},file={}",
            file.display()
        ));
        cmd.args([
            "-device",
            &format!("virtio-blk-pci,drive=file{i},serial=zeronode-file{i}"),
        ]);
    }
    Ok(cmd)
}

/// A blank qcow2 disk of `size` (as qemu-img takes it) at `path`.
fn create_qcow2(path: &Path, size: &str) -> Result<(), NodeError> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size)
        .output()
        .map_err(io("running qemu-img (Debian package qemu-utils)"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(NodeError::Io {
        what: format!("qemu-img create {} {size}", path.display()),
        source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    })
}

/// A USB-stick image for this run: a UKI of the image's kernel with the
/// chosen initramfs and command line, made by the image builder's code.
fn usb_image(opts: &NodeOptions, dir: &Path) -> Result<PathBuf, NodeError> {
    let write = |name: &str, body: &[u8]| -> Result<PathBuf, NodeError> {
        let p = dir.join(name);
        std::fs::write(&p, body).map_err(io(format!("writing {}", p.display())))?;
        Ok(p)
    };
    let osrel = write("os-release", b"NAME=ZeroNode\nID=zeronode\n")?;
    let cmdline = write("cmdline", cmdline(opts)?.as_bytes())?;
    let efi = dir.join("boot.efi");
    zeronode_image::uki::build(
        &efi,
        &osrel,
        &cmdline,
        &need(opts, "vmlinuz")?,
        &initrd(opts)?,
        0,
    )?;
    let bytes = std::fs::read(&efi).map_err(io(format!("reading {}", efi.display())))?;
    let esp = zeronode_image::fat::image(&[("EFI/BOOT/BOOTX64.EFI", &bytes)], 1)?;
    write(
        "boot.img",
        &zeronode_image::gpt::disk(&esp, b"zeronode-qemu"),
    )
}

/// A TFTP root for this run: the image's kernel, the chosen initramfs and a
/// boot.ipxe with the chosen command line.
fn tftp_root(opts: &NodeOptions, dir: &Path) -> Result<PathBuf, NodeError> {
    let root = dir.join("tftp");
    std::fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
    let link = |from: PathBuf, name: &str| -> Result<(), NodeError> {
        let from =
            std::fs::canonicalize(&from).map_err(io(format!("resolving {}", from.display())))?;
        std::os::unix::fs::symlink(from, root.join(name))
            .map_err(io(format!("linking {name} into {}", root.display())))
    };
    link(need(opts, "vmlinuz")?, "vmlinuz")?;
    link(initrd(opts)?, "initramfs.img")?;
    let script = format!(
        "#!ipxe\nkernel vmlinuz {}\ninitrd initramfs.img\nboot\n",
        cmdline(opts)?
    );
    std::fs::write(root.join("boot.ipxe"), script).map_err(io("writing boot.ipxe"))?;
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_dir() -> tempfile::TempDir {
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
        dir
    }

    #[test]
    fn direct_and_pxe_command_lines() {
        let img = image_dir();
        let run = tempfile::tempdir().unwrap();
        let mut o = NodeOptions::new(img.path(), Boot::Direct);
        o.append = Some("zeronode.debug".into());
        o.api_port = Some(18443);
        o.forwards = vec![crate::node::Forward {
            host: 19900,
            guest: 9900,
        }];
        o.disks = 2;
        let c = format!("{:?}", qemu_command(&o, run.path(), Serial::Stdio).unwrap());
        assert!(c.contains("\"console=ttyS0 zeronode.debug\""), "{c}");
        assert!(
            c.contains("/vmlinuz\" \"-initrd"),
            "no vmlinux: the bzImage: {c}"
        );
        assert!(c.contains("hostfwd=tcp:127.0.0.1:18443-:8443"), "{c}");
        assert!(c.contains("hostfwd=tcp:127.0.0.1:19900-:9900"), "{c}");
        assert!(c.contains("\"-accel\" \"tcg\""), "{c}");
        assert!(c.contains("\"-cpu\" \"qemu64,svm=off\""), "{c}");
        assert!(!c.contains("-no-reboot"), "Ctrl-Alt-Del must reboot: {c}");
        assert!(run.path().join("disk1.qcow2").exists());
        assert!(c.contains("serial=zeronode-data1"), "{c}");
        assert!(
            c.contains("\"i6300esb\" \"-action\" \"watchdog=reset\""),
            "{c}"
        );

        o.boot = Boot::Pxe;
        let c = format!("{:?}", qemu_command(&o, run.path(), Serial::Stdio).unwrap());
        assert!(
            c.contains("bootfile=boot.ipxe") && c.contains("bootindex=0"),
            "{c}"
        );
        // --append under PXE: a TFTP root of this run's own.
        let script = std::fs::read_to_string(run.path().join("tftp/boot.ipxe")).unwrap();
        assert!(
            script.contains("kernel vmlinuz console=ttyS0 zeronode.debug\n"),
            "{script}"
        );
        assert!(run.path().join("tftp/initramfs.img").exists());

        o.append = None;
        let c = format!("{:?}", qemu_command(&o, run.path(), Serial::Stdio).unwrap());
        assert!(
            c.contains(&format!("tftp={},", img.path().display())),
            "{c}"
        );
    }

    #[test]
    fn direct_boot_prefers_the_elf_kernel() {
        let img = image_dir();
        std::fs::write(img.path().join("vmlinux"), "\x7fELF").unwrap();
        let run = tempfile::tempdir().unwrap();
        let o = NodeOptions::new(img.path(), Boot::Direct);
        let c = format!("{:?}", qemu_command(&o, run.path(), Serial::Stdio).unwrap());
        assert!(c.contains("/vmlinux\" \"-initrd"), "{c}");
        // PXE and UEFI boot what hardware boots.
        let o = NodeOptions::new(img.path(), Boot::Pxe);
        let c = format!("{:?}", qemu_command(&o, run.path(), Serial::Stdio).unwrap());
        assert!(!c.contains("vmlinux"), "{c}");
    }

    #[test]
    fn uefi_boots_a_snapshot_of_the_artifact() {
        let img = image_dir();
        let run = tempfile::tempdir().unwrap();
        let o = NodeOptions::new(img.path(), Boot::Uefi);
        let c = format!("{:?}", qemu_command(&o, run.path(), Serial::Stdio).unwrap());
        assert!(
            c.contains("snapshot=on") && c.contains("zeronode.qcow2"),
            "{c}"
        );
        assert!(run.path().join("OVMF_VARS.fd").exists());
        std::fs::remove_file(img.path().join("zeronode.qcow2")).unwrap();
        assert!(matches!(
            qemu_command(&o, run.path(), Serial::Stdio),
            Err(NodeError::MissingArtifact(p)) if p.ends_with("zeronode.qcow2")
        ));
    }

    #[test]
    fn parse_choices() {
        assert_eq!("pxe".parse::<Boot>(), Ok(Boot::Pxe));
        assert!("bios"
            .parse::<Boot>()
            .unwrap_err()
            .contains("direct, uefi, pxe"));
        assert_eq!("kvm".parse::<Accel>(), Ok(Accel::Kvm));
        assert!("hvf".parse::<Accel>().is_err());
    }
}
