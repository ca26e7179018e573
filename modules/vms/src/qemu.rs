//! QEMU's command line for a VM: a q35 machine without default devices,
//! the serial console into a log file, QMP on a unix socket, virtio-blk
//! disks, one virtio-net NIC on a tap. q35 rather than microvm: under TCG
//! a microvm guest (no HPET, no ACPI PM timer) hung calibrating its TSC on
//! a loaded host, and q35's ACPI power button is the one every guest
//! kernel knows.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// How guest code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Kvm,
    Tcg,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Kvm => "kvm",
            Engine::Tcg => "tcg",
        }
    }
}

/// A disk as QEMU gets it.
#[derive(Debug, Clone)]
pub struct Drive {
    pub path: PathBuf,
    pub readonly: bool,
}

/// Everything one QEMU process needs.
#[derive(Debug, Clone)]
pub struct Launch {
    pub name: String,
    pub engine: Engine,
    pub cpu: u32,
    pub memory_mib: u64,
    /// Direct kernel boot: kernel, initrd, command line.
    pub kernel: Option<(PathBuf, Option<PathBuf>, String)>,
    /// In order: boot disk (if any), volumes, then the config drive.
    pub drives: Vec<Drive>,
    /// Tap name and MAC.
    pub nic: Option<(String, String)>,
    pub serial_log: PathBuf,
    pub qmp_socket: PathBuf,
    /// Where bios-256k.bin, linuxboot_dma.bin and pvh.bin are (`-L`).
    pub firmware_dir: Option<PathBuf>,
}

/// QEMU's option values separate with ','; a ',' in a path is written twice.
fn path_value(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

impl Launch {
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |x: String| a.push(OsString::from(x));
        push("-name".into());
        push(format!("{},process=zn-vm-{}", self.name, self.name));
        push("-machine".into());
        push("q35".into());
        push("-accel".into());
        push(self.engine.as_str().into());
        push("-cpu".into());
        // `host` only exists under KVM; `max` is every feature TCG emulates.
        push(match self.engine {
            Engine::Kvm => "host".into(),
            Engine::Tcg => "max".into(),
        });
        push("-smp".into());
        push(self.cpu.to_string());
        push("-m".into());
        push(format!("{}M", self.memory_mib));
        for x in [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-vga",
            "none",
            // A guest reboot ends the process; the supervisor starts it again.
            "-no-reboot",
        ] {
            push(x.into());
        }
        if let Some(fw) = &self.firmware_dir {
            push("-L".into());
            push(fw.display().to_string());
        }
        if let Some((k, i, cmdline)) = &self.kernel {
            push("-kernel".into());
            push(k.display().to_string());
            if let Some(i) = i {
                push("-initrd".into());
                push(i.display().to_string());
            }
            push("-append".into());
            push(cmdline.clone());
        }
        push("-chardev".into());
        push(format!(
            "file,id=serial0,path={},append=on",
            path_value(&self.serial_log)
        ));
        push("-serial".into());
        push("chardev:serial0".into());
        push("-qmp".into());
        push(format!(
            "unix:{},server=on,wait=off",
            path_value(&self.qmp_socket)
        ));
        for (i, d) in self.drives.iter().enumerate() {
            push("-drive".into());
            push(format!(
                "id=disk{i},file={},format=raw,if=none,cache=writeback,aio=threads{}",
                path_value(&d.path),
                if d.readonly { ",readonly=on" } else { "" }
            ));
            push("-device".into());
            push(format!("virtio-blk-pci,drive=disk{i}"));
        }
        if let Some((tap, mac)) = &self.nic {
            push("-netdev".into());
            push(format!("tap,id=net0,ifname={tap},script=no,downscript=no"));
            push("-device".into());
            // romfile=: no iPXE option ROM (one firmware file fewer in the image).
            push(format!("virtio-net-pci,netdev=net0,mac={mac},romfile="));
        }
        a
    }
}

/// The kernel command line: the serial console first, then the workload's.
pub fn cmdline(workload: Option<&str>) -> String {
    match workload {
        Some(c) if !c.trim().is_empty() => format!("console=ttyS0 {}", c.trim()),
        _ => "console=ttyS0".into(),
    }
}

/// KVM when /dev/kvm opens and answers the API version every KVM has.
pub fn kvm_usable() -> bool {
    use std::os::fd::AsRawFd;
    const KVM_GET_API_VERSION: libc::Ioctl = 0xae00;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    else {
        return false;
    };
    // SAFETY: KVM_GET_API_VERSION takes no argument; the fd is open.
    let v = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    v == 12
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let l = Launch {
            name: "vm".into(),
            engine: Engine::Tcg,
            cpu: 2,
            memory_mib: 128,
            kernel: Some(("/k".into(), Some("/i".into()), cmdline(Some("quiet")))),
            drives: vec![Drive {
                path: "/v/a,b.raw".into(),
                readonly: true,
            }],
            nic: Some(("znt1".into(), "02:7a:00:00:00:01".into())),
            serial_log: "/l/vm.log".into(),
            qmp_socket: "/r/vm.qmp".into(),
            firmware_dir: Some("/fw".into()),
        };
        let a: Vec<String> = l
            .args()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let s = a.join(" ");
        assert!(s.contains("-accel tcg -cpu max -smp 2 -m 128M"), "{s}");
        assert!(s.contains("-append console=ttyS0 quiet"), "{s}");
        assert!(s.contains("file=/v/a,,b.raw,format=raw"), "{s}");
        assert!(s.contains(",readonly=on"), "{s}");
        assert!(s.contains("ifname=znt1"), "{s}");
        assert!(s.contains("-L /fw"), "{s}");
    }
}
