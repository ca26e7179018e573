//! Test fixtures shared by this crate's tests and the boot tests: a small
//! guest for QEMU made from Debian's kernel (the image builder's cache, or
//! this machine's /boot) and an initramfs written here: the static busybox,
//! the few kernel modules the guest needs, and a shell /init that prints
//! markers on the serial console, reads its disks, configures its NIC
//! from the config drive and powers off on the ACPI power button. Not used
//! by the module itself; they panic or return io errors, as fixtures do.

use std::io;
use std::path::{Path, PathBuf};

/// What the guest prints once its init runs.
pub const MARKER: &str = "ZN-GUEST-UP";

/// The guest's kernel modules, in load order (dependencies first), as
/// paths under the release's `kernel/` directory.
const GUEST_MODULES: &[&str] = &[
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/block/virtio_blk.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
    "drivers/acpi/button.ko",
    "drivers/input/evdev.ko",
    "fs/fat/fat.ko",
    "fs/fat/vfat.ko",
    "fs/nls/nls_cp437.ko",
    "fs/nls/nls_ascii.ko",
];

/// A Debian kernel and its modules directory (`.../lib/modules/<release>`).
#[derive(Debug, Clone)]
pub struct GuestKernel {
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

/// Finds a kernel with the guest's modules: `ZN_VM_KERNEL` (a vmlinuz
/// whose modules are in `ZN_VM_MODULES`), the image builder's cache under
/// `workspace/out/cache/`, or this machine's /boot with /lib/modules.
pub fn find_kernel(workspace: &Path) -> Option<GuestKernel> {
    if let (Ok(k), Ok(m)) = (
        std::env::var("ZN_VM_KERNEL"),
        std::env::var("ZN_VM_MODULES"),
    ) {
        return Some(GuestKernel {
            vmlinuz: k.into(),
            modules: m.into(),
        });
    }
    let has_modules = |m: &Path| {
        GUEST_MODULES
            .iter()
            .all(|p| m.join("kernel").join(p).exists())
    };
    let mut candidates = Vec::new();
    if let Ok(rd) = std::fs::read_dir(workspace.join("out/cache")) {
        for e in rd.flatten() {
            let root = e.path();
            if let Ok(boot) = std::fs::read_dir(root.join("boot")) {
                for b in boot.flatten() {
                    let n = b.file_name().to_string_lossy().into_owned();
                    if let Some(release) = n.strip_prefix("vmlinuz-") {
                        candidates.push((b.path(), root.join("lib/modules").join(release)));
                    }
                }
            }
        }
    }
    if let Ok(boot) = std::fs::read_dir("/boot") {
        for b in boot.flatten() {
            let n = b.file_name().to_string_lossy().into_owned();
            if let Some(release) = n.strip_prefix("vmlinuz-") {
                candidates.push((b.path(), Path::new("/lib/modules").join(release)));
            }
        }
    }
    candidates.sort();
    candidates
        .into_iter()
        .rev()
        .find(|(_, m)| has_modules(m))
        .map(|(vmlinuz, modules)| GuestKernel { vmlinuz, modules })
}

/// The guest's /init: modules, the marker, the power button, disks (a FAT
/// disk with hello.txt is read; a blank one counts boots in its first
/// bytes), the NIC from the config drive's network-config, then idles.
pub fn guest_init() -> String {
    let modules: Vec<String> = GUEST_MODULES
        .iter()
        .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
        .collect();
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {modules}; do insmod /lib/modules/$m; done
echo {MARKER}
for e in /sys/class/input/event*; do
  if [ "$(cat $e/device/name)" = "Power Button" ]; then
    # evdev hands out whole events (24 bytes on 64-bit) or EINVAL.
    (dd if=/dev/input/${{e##*/}} of=/dev/null bs=24 count=1 2>/dev/null && echo ZN-POWER-BUTTON && sync && poweroff -f) &
  fi
done
mkdir -p /mnt/d
for b in /sys/block/vd*; do
  dev=/dev/${{b##*/}}
  if mount -t vfat -o ro $dev /mnt/d 2>/dev/null; then
    if [ -f /mnt/d/network-config ]; then
      addr=$(sed -n 's/.*"addresses":\["\([^"]*\)".*/\1/p' /mnt/d/network-config)
      gw=$(sed -n 's/.*"gateway4":"\([^"]*\)".*/\1/p' /mnt/d/network-config)
      ip link set lo up
      ip link set eth0 up
      ip addr add $addr dev eth0
      ip route add default via $gw
      echo "ZN-NET: $addr via $gw"
    elif [ -f /mnt/d/hello.txt ]; then
      echo "ZN-DISK: $(cat /mnt/d/hello.txt)"
    fi
    umount /mnt/d
  else
    n=$(dd if=$dev bs=16 count=1 2>/dev/null | tr -dc 0-9)
    n=$((n+1))
    # fsync, not sync: sync(2) writes a raw device's pages but sends no
    # cache flush, so they could sit in the host's page cache (the node's,
    # in the boot test) and be lost to its hard reset.
    echo $n | dd of=$dev conv=notrunc,fsync 2>/dev/null
    echo "ZN-BOOTS: $n on $dev"
  fi
done
echo ZN-GUEST-READY
while true; do sleep 3600; done
"#,
        modules = modules.join(" ")
    )
}

/// newc cpio writer: enough for an initramfs of files, directories and
/// one device node, all owned by root with mtime 0.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }
}

/// The guest's initramfs (uncompressed newc cpio) with `init` as /init.
pub fn initramfs(kernel: &GuestKernel, init: &str) -> io::Result<Vec<u8>> {
    let mut c = Cpio {
        out: Vec::new(),
        ino: 0,
    };
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "mnt",
        "lib",
        "lib/modules",
        "tmp",
    ] {
        c.entry(d, 0o040755, &[], (0, 0));
    }
    c.entry("dev/console", 0o020600, &[], (5, 1));
    c.entry(
        "bin/busybox",
        0o100755,
        &std::fs::read("/bin/busybox")?,
        (0, 0),
    );
    c.entry("init", 0o100755, init.as_bytes(), (0, 0));
    for m in GUEST_MODULES {
        let data = std::fs::read(kernel.modules.join("kernel").join(m))?;
        let name = m.rsplit('/').next().unwrap_or(m);
        c.entry(&format!("lib/modules/{name}"), 0o100644, &data, (0, 0));
    }
    c.entry("TRAILER!!!", 0, &[], (0, 0));
    Ok(c.out)
}

/// A FAT disk image of `size` bytes holding `hello.txt` = `text`: what the
/// guest reads from its volume disk.
pub fn fat_disk_with_hello(size: usize, text: &str) -> io::Result<Vec<u8>> {
    use std::io::Write;
    let mut disk = io::Cursor::new(vec![0u8; size]);
    fatfs::format_volume(&mut disk, fatfs::FormatVolumeOptions::new())?;
    disk.set_position(0);
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())?;
        let mut f = fs.root_dir().create_file("hello.txt")?;
        f.write_all(text.as_bytes())?;
        drop(f);
        fs.unmount()?;
    }
    Ok(disk.into_inner())
}
