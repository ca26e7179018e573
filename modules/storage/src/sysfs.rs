//! Block devices as /sys/block shows them, and the names udev would give
//! them under /dev/disk/by-id (the node runs no udev, so we compute them).

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{io, Result, StorageError};

/// One whole disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name: `vda`, `sda`, `nvme0n1`, `loop3`.
    pub name: String,
    /// Device node: `/dev/<name>`.
    pub dev: PathBuf,
    pub size_bytes: u64,
    /// `queue/rotational` = 1: a spinning disk (HDD); 0: SSD/NVMe/virtual.
    pub rotational: bool,
    pub removable: bool,
    pub read_only: bool,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// Names udev would create under /dev/disk/by-id (without the directory).
    pub by_id: Vec<String>,
    /// Devices stacked on this one (`holders/`: dm, md, bcache).
    pub holders: Vec<String>,
}

impl Disk {
    /// True when `reference` (a `zeronode.wipe=` value: a serial or a
    /// `/dev/disk/by-id/NAME` path) names this disk.
    pub fn matches(&self, reference: &str) -> bool {
        match reference.strip_prefix("/dev/disk/by-id/") {
            Some(name) => self.by_id.iter().any(|n| n == name),
            None => self.serial.as_deref() == Some(reference),
        }
    }
}

/// Why a device under /sys/block is not a disk for us at all.
pub fn virtual_kind(name: &str) -> Option<&'static str> {
    const PREFIXES: [(&str, &str); 8] = [
        ("loop", "loop device"),
        ("zram", "compressed RAM disk"),
        ("ram", "RAM disk"),
        ("dm-", "device-mapper device"),
        ("md", "software RAID device"),
        ("sr", "optical drive"),
        ("fd", "floppy drive"),
        ("nbd", "network block device"),
    ];
    PREFIXES
        .iter()
        .find(|(p, _)| name.starts_with(p))
        .map(|(_, what)| *what)
}

/// Reads disks from a sysfs tree (`/sys` on a node, a fake one in tests).
#[derive(Debug, Clone)]
pub struct Sysfs {
    pub root: PathBuf,
    pub dev_dir: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs {
            root: "/sys".into(),
            dev_dir: "/dev".into(),
        }
    }
}

impl Sysfs {
    /// Every whole disk under `block/`, sorted by name; loop, RAM, zram,
    /// device-mapper, md, optical, floppy and nbd devices are left out.
    pub fn scan(&self) -> Result<Vec<Disk>> {
        let block = self.root.join("block");
        let mut names: Vec<String> = fs::read_dir(&block)
            .map_err(io(&block, "listing block devices"))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| virtual_kind(n).is_none())
            // Hidden: NVMe multipath paths (nvme0c0n1) and the like, reached through their head.
            .filter(|n| read_attr(&block.join(n).join("hidden")).as_deref() != Some("1"))
            .collect();
        names.sort();
        names.iter().map(|n| self.disk(n)).collect()
    }

    /// The disk whose device node is `dev` (any path to it, e.g. a
    /// /dev/disk/by-id link): must be a whole-disk block device.
    pub fn disk_of_node(&self, dev: &Path) -> Result<Disk> {
        let bad = |reason: String| StorageError::BadDevice {
            path: dev.into(),
            reason,
        };
        let meta = fs::metadata(dev).map_err(|e| bad(format!("cannot stat: {e}")))?;
        if !meta.file_type().is_block_device() {
            return Err(bad("not a block device".into()));
        }
        let rdev = meta.rdev();
        let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        let link = self.root.join(format!("dev/block/{major}:{minor}"));
        let target = fs::canonicalize(&link)
            .map_err(|e| bad(format!("{} unreadable: {e}", link.display())))?;
        if target.join("partition").exists() {
            return Err(bad(
                "is a partition; give the whole disk (pools take whole disks)".into(),
            ));
        }
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| bad("no name in sysfs".into()))?;
        let mut disk = self.disk(&name)?;
        disk.dev = dev.into();
        Ok(disk)
    }

    /// Reads `block/<name>`.
    pub fn disk(&self, name: &str) -> Result<Disk> {
        let dir = self.root.join("block").join(name);
        if !dir.is_dir() {
            return Err(StorageError::BadDevice {
                path: dir,
                reason: "no such block device".into(),
            });
        }
        let attr = |rel: &str| read_attr(&dir.join(rel));
        let flag = |rel: &str| attr(rel).as_deref() == Some("1");
        let sectors: u64 = attr("size").and_then(|s| s.parse().ok()).unwrap_or(0);
        let model = attr("device/model").filter(|m| !m.is_empty());
        let holders = fs::read_dir(dir.join("holders"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let mut disk = Disk {
            name: name.into(),
            dev: self.dev_dir.join(name),
            // The kernel counts `size` in 512-byte sectors whatever the disk's block size.
            size_bytes: sectors * 512,
            rotational: flag("queue/rotational"),
            removable: flag("removable"),
            read_only: flag("ro"),
            model: model.clone(),
            serial: None,
            by_id: Vec::new(),
            holders,
        };
        let (serial, by_id) = identify(name, &dir, model.as_deref());
        disk.serial = serial;
        disk.by_id = by_id;
        Ok(disk)
    }
}

fn read_attr(path: &Path) -> Option<String> {
    fs::read(path)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
}

/// The serial and the by-id names of disk `name` with sysfs directory `dir`,
/// following udev's 60-persistent-storage rules as far as sysfs allows.
fn identify(name: &str, dir: &Path, model: Option<&str>) -> (Option<String>, Vec<String>) {
    let attr = |rel: &str| read_attr(&dir.join(rel)).filter(|s| !s.is_empty());
    let mut by_id = Vec::new();
    let serial;
    if name.starts_with("vd") {
        // virtio-blk: the serial QEMU's `serial=` gives, up to 20 bytes.
        serial = attr("serial");
        if let Some(s) = &serial {
            by_id.push(format!("virtio-{}", udev_chars(s)));
        }
    } else if name.starts_with("nvme") {
        serial = attr("device/serial").or_else(|| attr("serial"));
        if let (Some(m), Some(s)) = (model, &serial) {
            by_id.push(format!("nvme-{}_{}", udev_chars(m), udev_chars(s)));
        }
        if let Some(w) = attr("wwid") {
            by_id.push(format!("nvme-{}", udev_chars(&w)));
        }
    } else if name.starts_with("loop") {
        // udev names no loop device; ZeroNode's own rule, so tests can name
        // one on the command line: the backing file's name is the serial.
        serial = attr("loop/backing_file").and_then(|f| {
            Path::new(&f)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        });
        if let Some(s) = &serial {
            by_id.push(format!("loop-{}", udev_chars(s)));
        }
    } else {
        // SCSI and ATA behind the SCSI layer: the unit serial number page.
        serial = attr("device/serial").or_else(|| vpd_pg80(&dir.join("device/vpd_pg80")));
        let vendor = attr("device/vendor");
        if let Some(s) = &serial {
            match (vendor.as_deref(), model) {
                (Some("ATA"), Some(m)) => {
                    by_id.push(format!("ata-{}_{}", udev_chars(m), udev_chars(s)))
                }
                (Some(v), Some(m)) => by_id.push(format!(
                    "scsi-S{}_{}_{}",
                    udev_chars(v),
                    udev_chars(m),
                    udev_chars(s)
                )),
                _ => {}
            }
        }
        if let Some(w) = attr("device/wwid") {
            if let Some(naa) = w.strip_prefix("naa.") {
                by_id.push(format!("wwn-0x{}", udev_chars(naa)));
            }
        }
    }
    (serial, by_id)
}

/// The serial in a SCSI VPD page 0x80: 4 header bytes, then ASCII.
fn vpd_pg80(path: &Path) -> Option<String> {
    let page = fs::read(path).ok()?;
    if page.len() < 4 || page[1] != 0x80 {
        return None;
    }
    let len = u16::from_be_bytes([page[2], page[3]]) as usize;
    let body = page.get(4..4 + len.min(page.len() - 4))?;
    let s = String::from_utf8_lossy(body).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// udev's cleaning of an id string: trimmed, runs of white space become one
/// `_`, and anything outside `0-9A-Za-z#+-.:=@_` becomes `_`.
pub fn udev_chars(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_space = false;
    for c in s.trim().chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push('_');
            }
            in_space = true;
            continue;
        }
        in_space = false;
        if c.is_ascii_alphanumeric() || "#+-.:=@_".contains(c) {
            out.push(c);
        } else {
            out.push('_');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, content: &[u8]) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    fn fake_disk(root: &Path, name: &str, files: &[(&str, &[u8])]) {
        put(root, &format!("block/{name}/size"), b"2097152\n");
        put(root, &format!("block/{name}/queue/rotational"), b"0\n");
        put(root, &format!("block/{name}/removable"), b"0\n");
        put(root, &format!("block/{name}/ro"), b"0\n");
        fs::create_dir_all(root.join(format!("block/{name}/holders"))).unwrap();
        for (rel, content) in files {
            put(root, &format!("block/{name}/{rel}"), content);
        }
    }

    #[test]
    fn by_id_names_follow_udev() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake_disk(root, "vda", &[("serial", b"zn-disk-1\n")]);
        fake_disk(
            root,
            "nvme0n1",
            &[
                ("device/model", b"Samsung SSD 970 EVO Plus 1TB          \n"),
                ("device/serial", b"  S4EWNX0R123456  \n"),
                ("wwid", b"eui.0025385b91b0a0e3\n"),
            ],
        );
        let mut pg80 = vec![0u8, 0x80, 0, 13];
        pg80.extend_from_slice(b"  WD-WCC4E123");
        fake_disk(
            root,
            "sda",
            &[
                ("device/vendor", b"ATA     \n"),
                ("device/model", b"WDC WD40EFRX-68N\n"),
                ("device/vpd_pg80", &pg80),
                ("device/wwid", b"naa.50014ee2b5e4c3a1\n"),
                ("queue/rotational", b"1\n"),
            ],
        );
        fake_disk(
            root,
            "sdb",
            &[
                ("device/vendor", b"QEMU    \n"),
                ("device/model", b"QEMU HARDDISK\n"),
                ("device/serial", b"abc/1\n"),
                ("removable", b"1\n"),
                ("ro", b"1\n"),
            ],
        );
        fake_disk(root, "loop0", &[]);
        fake_disk(root, "zram0", &[]);
        fake_disk(root, "dm-0", &[]);
        fake_disk(root, "nvme0c0n1", &[("hidden", b"1\n")]);

        let sys = Sysfs {
            root: root.into(),
            dev_dir: "/dev".into(),
        };
        let disks = sys.scan().unwrap();
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "sda", "sdb", "vda"]);

        let nvme = &disks[0];
        assert_eq!(nvme.serial.as_deref(), Some("S4EWNX0R123456"));
        assert_eq!(
            nvme.by_id,
            [
                "nvme-Samsung_SSD_970_EVO_Plus_1TB_S4EWNX0R123456",
                "nvme-eui.0025385b91b0a0e3"
            ]
        );
        assert!(!nvme.rotational);
        assert_eq!(nvme.size_bytes, 1 << 30);

        let sda = &disks[1];
        assert_eq!(sda.serial.as_deref(), Some("WD-WCC4E123"));
        assert_eq!(
            sda.by_id,
            ["ata-WDC_WD40EFRX-68N_WD-WCC4E123", "wwn-0x50014ee2b5e4c3a1"]
        );
        assert!(sda.rotational);
        assert!(sda.matches("WD-WCC4E123"));
        assert!(sda.matches("/dev/disk/by-id/wwn-0x50014ee2b5e4c3a1"));
        assert!(!sda.matches("/dev/disk/by-id/WD-WCC4E123"));

        let sdb = &disks[2];
        assert_eq!(sdb.by_id, ["scsi-SQEMU_QEMU_HARDDISK_abc_1"]);
        assert!(sdb.removable && sdb.read_only);

        let vda = &disks[3];
        assert_eq!(vda.by_id, ["virtio-zn-disk-1"]);
        assert!(vda.matches("zn-disk-1"));
        assert!(vda.matches("/dev/disk/by-id/virtio-zn-disk-1"));
        assert!(!vda.matches("zn-disk"));
    }

    #[test]
    fn udev_cleaning() {
        assert_eq!(udev_chars("  a  b\tc "), "a_b_c");
        assert_eq!(udev_chars("x/y*z"), "x_y_z");
        assert_eq!(udev_chars("eui.00:ab=c@d#e+f"), "eui.00:ab=c@d#e+f");
    }

    #[test]
    fn this_machine_scan_leaves_out_virtual_devices() {
        let disks = Sysfs::default().scan().unwrap();
        for d in &disks {
            assert!(virtual_kind(&d.name).is_none(), "{d:?}");
        }
    }
}
