//! The `vm` workload as a deployment carries it. Provision depends on this
//! crate for the type, so the JSON on D-Bus and the deployment's workload
//! are the same document.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Error;

/// A file fetched once, pinned by its sha256 (same shape as a container
/// image's source).
pub type Source = zeronode_containers::ImageSource;

/// Smallest guest memory: a kernel with an initramfs needs this much.
pub const MIN_MEMORY: u64 = 64 << 20;
pub const MAX_CPU: u32 = 64;
pub const MAX_DISKS: usize = 16;
/// The disk file inside a volume unless `file` says otherwise.
pub const DEFAULT_DISK_FILE: &str = "disk.raw";

/// A VM workload. Unknown fields are refused: a typo in a deployment must
/// not silently drop a disk or a limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// 1-64 of `[a-z0-9_.-]`, starting with a letter or digit; unique on the node.
    pub name: String,
    /// Direct kernel boot: the kernel (a bzImage, or an ELF vmlinux with a
    /// PVH entry, which boots without decompressing itself) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Source>,
    /// ... its initrd ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<Source>,
    /// ... and command line (`console=ttyS0` is put first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Or a raw disk image the firmware boots; the VM gets its own copy
    /// as its first disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_image: Option<Source>,
    /// Virtual CPUs.
    pub cpu: u32,
    /// Guest memory in bytes, a whole number of MiB, at least 64 MiB.
    pub memory: u64,
    /// virtio-blk disks, in this order after the boot disk.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskSpec>,
    /// The workload network the VM's one NIC is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkRef>,
    /// What the NoCloud config drive carries besides the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInit>,
}

/// A raw disk file inside a volume (the path the storage module's
/// `VolumeCreate` returned): made sparse at `size` when missing, grown
/// when smaller, never shrunk. The volume's quota bounds what it really uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub volume: String,
    /// A plain file name inside the volume.
    #[serde(default = "default_disk_file")]
    pub file: String,
    /// Bytes, a whole number of MiB.
    pub size: u64,
    #[serde(default)]
    pub readonly: bool,
}

fn default_disk_file() -> String {
    DEFAULT_DISK_FILE.into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRef {
    pub name: String,
}

/// The cloud-init seed: written as `#cloud-config` user-data unless
/// `user_data` is given whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudInit {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
    /// Written to /etc/environment in the guest. Never shown by Status.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Replaces the generated user-data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
}

impl VmSpec {
    pub fn from_json(json: &str) -> Result<Self, Error> {
        let spec: VmSpec =
            serde_json::from_str(json).map_err(|e| Error::Invalid(format!("vm spec: {e}")))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Every source the VM needs, with what it is for.
    pub fn sources(&self) -> Vec<(&'static str, &Source)> {
        let mut out = Vec::new();
        if let Some(k) = &self.kernel {
            out.push(("kernel", k));
        }
        if let Some(i) = &self.initrd {
            out.push(("initrd", i));
        }
        if let Some(d) = &self.disk_image {
            out.push(("disk image", d));
        }
        out
    }

    /// Checks everything that can be checked before touching anything, so
    /// a bad spec changes nothing.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Invalid(m));
        if !zeronode_containers::spec::valid_name(&self.name) {
            return bad(format!(
                "vm name {:?}: 1-64 of [a-z0-9_.-], starting with a letter or digit",
                self.name
            ));
        }
        match (&self.kernel, &self.disk_image) {
            (Some(_), Some(_)) => {
                return bad(format!(
                    "vm {}: either kernel or disk_image, not both",
                    self.name
                ))
            }
            (None, None) => return bad(format!("vm {}: kernel or disk_image needed", self.name)),
            (None, Some(_)) if self.initrd.is_some() || self.cmdline.is_some() => {
                return bad(format!(
                    "vm {}: initrd and cmdline go with a kernel",
                    self.name
                ))
            }
            _ => {}
        }
        for (what, s) in self.sources() {
            let hex = s.hex();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!(
                    "{what} sha256 {:?}: 64 hex digits expected",
                    s.sha256
                ));
            }
            if !["http://", "https://", "file:///"]
                .iter()
                .any(|p| s.url.starts_with(p))
            {
                return bad(format!(
                    "{what} url {:?}: only http://, https:// and file:/// are supported",
                    s.url
                ));
            }
        }
        if let Some(c) = &self.cmdline {
            if c.len() > 2048 || c.contains(['\0', '\n']) {
                return bad("cmdline: at most 2048 bytes, one line".into());
            }
        }
        if !(1..=MAX_CPU).contains(&self.cpu) {
            return bad(format!("cpu {}: between 1 and {MAX_CPU}", self.cpu));
        }
        if self.memory < MIN_MEMORY || self.memory % (1 << 20) != 0 {
            return bad(format!(
                "memory {}: a whole number of MiB, at least 64 MiB",
                self.memory
            ));
        }
        if self.disks.len() > MAX_DISKS {
            return bad(format!("{} disks: at most {MAX_DISKS}", self.disks.len()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for d in &self.disks {
            let v = Path::new(&d.volume);
            if !v.is_absolute() || !v.is_dir() {
                return bad(format!(
                    "disk volume {:?}: not an existing absolute directory",
                    d.volume
                ));
            }
            if d.file.is_empty()
                || d.file.contains('/')
                || d.file.starts_with('.')
                || d.file.contains('\0')
                || d.file.contains(',')
            {
                return bad(format!(
                    "disk file {:?}: a plain file name (no '/', ',', leading '.')",
                    d.file
                ));
            }
            if d.size < 1 << 20 || d.size % (1 << 20) != 0 {
                return bad(format!(
                    "disk size {}: a whole number of MiB, at least 1 MiB",
                    d.size
                ));
            }
            if !seen.insert(v.join(&d.file)) {
                return bad(format!("disk {}/{} given twice", d.volume, d.file));
            }
        }
        if let Some(n) = &self.network {
            if n.name.is_empty() {
                return bad("network name is empty".into());
            }
        }
        if let Some(ci) = &self.cloud_init {
            for k in &ci.ssh_keys {
                if k.trim().is_empty() || k.contains(['\n', '\r', '\0']) {
                    return bad("ssh key: one non-empty line each".into());
                }
            }
            for (k, v) in &ci.env {
                let ok_name = !k.is_empty()
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !k.as_bytes()[0].is_ascii_digit();
                if !ok_name || v.contains(['\n', '\0']) {
                    return bad(format!(
                        "env {k:?}: a name of [A-Za-z0-9_] not starting with a digit, a one-line value"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec::from_json(&format!(
            r#"{{"name":"vm-1","kernel":{{"url":"http://127.0.0.1/k","sha256":"{}"}},"cpu":1,"memory":134217728}}"#,
            "a".repeat(64)
        ))
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let s = spec();
        let back = VmSpec::from_json(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn refusals_name_the_field() {
        let check = |f: &dyn Fn(&mut VmSpec), want: &str| {
            let mut s = spec();
            f(&mut s);
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        };
        check(&|s| s.name = "Bad".into(), "vm name");
        check(&|s| s.kernel = None, "kernel or disk_image");
        check(&|s| s.disk_image = s.kernel.clone(), "not both");
        check(
            &|s| s.kernel.as_mut().unwrap().sha256 = "x".into(),
            "kernel sha256",
        );
        check(
            &|s| s.kernel.as_mut().unwrap().url = "ftp://x".into(),
            "kernel url",
        );
        check(&|s| s.cpu = 0, "cpu");
        check(&|s| s.memory = 1 << 20, "memory");
        check(&|s| s.memory = (64 << 20) + 1, "memory");
        check(
            &|s| {
                s.disks.push(DiskSpec {
                    volume: "/nonexistent-zn".into(),
                    file: "d".into(),
                    size: 1 << 20,
                    readonly: false,
                })
            },
            "disk volume",
        );
        check(
            &|s| {
                s.disks.push(DiskSpec {
                    volume: "/tmp".into(),
                    file: "../x".into(),
                    size: 1 << 20,
                    readonly: false,
                })
            },
            "disk file",
        );
        check(
            &|s| {
                s.cloud_init = Some(CloudInit {
                    ssh_keys: vec!["a\nb".into()],
                    ..Default::default()
                })
            },
            "ssh key",
        );
        let e = VmSpec::from_json(r#"{"name":"a","cpu":1,"memory":1,"bogus":1}"#).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
