//! `image/zeronode.toml`: the declaration of what goes into the image.

use std::path::Path;

use crate::kmod::canonical;
use serde::Deserialize;
use thiserror::Error;

/// The program the `multicall` names link to.
pub const MULTICALL: &str = "zeronode";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("{path}: {field}: {reason}")]
    Invalid {
        path: String,
        field: &'static str,
        reason: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    pub release: Release,
    pub kernel: Kernel,
    pub initramfs: Initramfs,
    pub system: System,
    #[serde(default)]
    pub runtime: Runtime,
    pub cmdline: Cmdline,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Debian package name, e.g. `linux-image-6.1.0-50-amd64`.
    pub package: String,
    /// Exact Debian version to download, e.g. `6.1.176-1`.
    pub version: String,
    /// `uname -r` of that kernel: the directory under /lib/modules.
    pub release: String,
    /// Whether the image's modules keep Debian's signatures.
    #[serde(default)]
    pub module_signatures: ModuleSignatures,
    /// Whether the modules keep their tables of inline static-call sites.
    #[serde(default)]
    pub module_static_call_sites: StaticCallSites,
    /// Whether the modules keep their function-tracing call sites.
    #[serde(default)]
    pub module_ftrace_sites: FtraceSites,
    /// Whether the modules keep their BPF type information.
    #[serde(default)]
    pub module_btf: ModuleBtf,
    /// Modules built again from Debian's source of this kernel.
    #[serde(default)]
    pub rebuild: Vec<Rebuild>,
}

/// A module built from Debian's source of the pinned kernel (the source
/// directory its modules.dep path names), with some of Debian's options
/// off, in place of Debian's build of it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rebuild {
    /// Module name, e.g. `raid6_pq`.
    pub module: String,
    /// Kernel options off for this module's code, e.g.
    /// `CONFIG_RAID6_PQ_BENCHMARK`.
    pub unset: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleSignatures {
    /// As Debian ships them: the kernel checks each one as it loads.
    #[default]
    Keep,
    /// Removed: the pinned image hash covers the modules already.
    Strip,
}

/// A module's `.static_call_sites` lists each call it makes through a
/// static call (`cond_resched()`, tracepoints, KVM's vendor hooks), so that
/// the kernel can rewrite the call to go straight to the current target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StaticCallSites {
    /// As Debian ships them: every site is rewritten as the module loads.
    #[default]
    Keep,
    /// Emptied: each call goes through its static call's trampoline (one
    /// direct jump more), which the kernel keeps pointing at the target.
    Drop,
}

/// A module's `__mcount_loc` lists the `call __fentry__` that starts each of
/// its functions, for ftrace to patch (see `ftrace_sites`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FtraceSites {
    /// As Debian ships them: the kernel NOPs and checks each as it loads.
    #[default]
    Keep,
    /// NOPped here: the same code, which ftrace cannot attach to.
    Drop,
}

/// A module's `.BTF` describes its types for BPF programs (CO-RE
/// relocations, bpftrace's struct access, /sys/kernel/btf/<module>).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleBtf {
    /// As Debian ships them: the kernel parses and checks it as it loads.
    #[default]
    Keep,
    /// Emptied: the kernel skips it, and BPF sees the module's functions
    /// but not its own types.
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    /// lz4's legacy format, the one the kernel's unlz4 reads.
    Lz4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SquashfsCompression {
    Zstd,
    Xz,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Initramfs {
    /// Loaded by stage 1 before it mounts the system image.
    pub modules: Vec<String>,
    /// Loaded from the start of stage 1 by a process of their own, while
    /// the boot goes on, because a service on the way to ready needs them:
    /// the initramfs's /etc/zeronode/modules-early.
    #[serde(default)]
    pub early: Vec<String>,
    /// Soft dependencies (`softdep X pre:` names: modules or aliases) of
    /// the two lists above that stay in the system image, for the kernel
    /// to ask for when it needs them.
    #[serde(default)]
    pub soft_left_out: Vec<String>,
    pub compression: Compression,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct System {
    pub compression: SquashfsCompression,
    /// squashfs block size of system.img in KiB (4 to 1024, a power of two).
    #[serde(default = "default_block_kib")]
    pub block_kib: u32,
    /// Module names, or globs over modules.dep paths.
    pub modules: Vec<String>,
    /// Loaded at every boot once the node is ready: /etc/zeronode/modules-load.
    pub load: Vec<String>,
    /// Absolute paths of Debian binaries on the build machine.
    #[serde(default)]
    pub binaries: Vec<String>,
    /// Static binaries of this workspace (besides zeronode-init): files of
    /// the initramfs in [`PROGRAMS_DIR`], linked from /usr/bin.
    #[serde(default)]
    pub programs: Vec<String>,
    /// Names linked to /usr/bin/zeronode (the multicall binary, one of the
    /// `programs`), which runs the module it is called as.
    #[serde(default)]
    pub multicall: Vec<String>,
    /// Configuration files written into the image as they are given here.
    #[serde(default)]
    pub files: Vec<FileSpec>,
}

/// Where the config's `programs` are: files of the initramfs, which PID 1
/// binds read-only at the same path in the system image (an empty directory
/// there) before it switches root; the image's /usr/bin/<name> links here.
/// zeronode-init's `rootfs::PROGRAMS` is this path.
pub const PROGRAMS_DIR: &str = "/usr/lib/zeronode/programs";
/// Where PID 1 mounts the runtime image once it has verified it. The
/// system image links every runtime file's usual path to the same path under
/// here. zeronode-init's `runtime_image` mounts at this path.
pub const RUNTIME_MOUNT: &str = "/usr/lib/zeronode/runtime";
/// The runtime image's blake3 (hex), inside the system image, whose own hash
/// the command line pins: one chain of trust for both.
pub const RUNTIME_HASH_FILE: &str = "/etc/zeronode/runtime.blake3";

/// Debian programs only workloads use (container and VM runtimes): they go
/// into a second squashfs, `runtime.img`, that PID 1 verifies and mounts
/// after the ready line, so their bytes are not hashed on the way to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Absolute paths on the build machine, as `system.binaries`; what the
    /// system image holds already (a shared library) stays there.
    #[serde(default)]
    pub binaries: Vec<String>,
    /// squashfs block size of runtime.img in KiB, as `system.block_kib`.
    #[serde(default = "default_block_kib")]
    pub block_kib: u32,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            binaries: Vec::new(),
            block_kib: default_block_kib(),
        }
    }
}

fn default_block_kib() -> u32 {
    512
}

/// A file of the system image, its text declared in place.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Absolute path in the image, e.g. `/etc/containerd/config.toml`.
    pub path: String,
    pub text: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cmdline {
    pub extra: Vec<String>,
}

impl ImageConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: name.clone(),
            source,
        })?;
        Self::parse(&text, &name)
    }

    pub fn parse(text: &str, name: &str) -> Result<Self, ConfigError> {
        let cfg: ImageConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: name.into(),
            source,
        })?;
        let invalid = |field, reason: String| ConfigError::Invalid {
            path: name.into(),
            field,
            reason,
        };
        // These reach apt-get, file names and the os-release file: no
        // spaces, quotes or slashes.
        let safe = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-+.:~_".contains(&b))
        };
        if !safe(&cfg.release.name) {
            return Err(invalid(
                "release.name",
                format!("{:?}: letters, digits and -+.:~_ only", cfg.release.name),
            ));
        }
        if !safe(&cfg.release.version) {
            return Err(invalid(
                "release.version",
                format!("{:?}: letters, digits and -+.:~_ only", cfg.release.version),
            ));
        }
        if !safe(&cfg.kernel.package) || !cfg.kernel.package.starts_with("linux-image-") {
            return Err(invalid(
                "kernel.package",
                format!(
                    "{:?} is not a linux-image-* package name",
                    cfg.kernel.package
                ),
            ));
        }
        if !safe(&cfg.kernel.version) {
            return Err(invalid(
                "kernel.version",
                format!("{:?} is not a Debian version", cfg.kernel.version),
            ));
        }
        // Edits of the modules' bytes would break Debian's signatures on them.
        for (key, edits) in [
            (
                "kernel.module_static_call_sites",
                cfg.kernel.module_static_call_sites == StaticCallSites::Drop,
            ),
            (
                "kernel.module_ftrace_sites",
                cfg.kernel.module_ftrace_sites == FtraceSites::Drop,
            ),
            (
                "kernel.module_btf",
                cfg.kernel.module_btf == ModuleBtf::Drop,
            ),
        ] {
            if edits && cfg.kernel.module_signatures == ModuleSignatures::Keep {
                return Err(invalid(
                    key,
                    "\"drop\" changes the modules, so Debian's signatures on them would no \
                     longer match: set module_signatures = \"strip\" too"
                        .into(),
                ));
            }
        }
        for r in &cfg.kernel.rebuild {
            let name_ok = !r.module.is_empty()
                && r.module
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !name_ok {
                return Err(invalid(
                    "kernel.rebuild",
                    format!("{:?} is not a module name", r.module),
                ));
            }
            let option_ok = |o: &String| {
                o.len() > "CONFIG_".len()
                    && o.starts_with("CONFIG_")
                    && o.bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            };
            if r.unset.is_empty() || !r.unset.iter().all(option_ok) {
                return Err(invalid(
                    "kernel.rebuild",
                    format!(
                        "{}: unset must name one or more options like CONFIG_RAID6_PQ_BENCHMARK, not {:?}",
                        r.module, r.unset
                    ),
                ));
            }
            let twice = cfg
                .kernel
                .rebuild
                .iter()
                .filter(|o| canonical(&o.module) == canonical(&r.module))
                .count()
                > 1;
            if twice {
                return Err(invalid(
                    "kernel.rebuild",
                    format!("{} is named twice", r.module),
                ));
            }
            // Debian signs its own builds only.
            if cfg.kernel.module_signatures == ModuleSignatures::Keep {
                return Err(invalid(
                    "kernel.rebuild",
                    format!(
                        "{} would be unsigned among Debian's signed modules: set \
                         module_signatures = \"strip\" too",
                        r.module
                    ),
                ));
            }
        }
        if !safe(&cfg.kernel.release) {
            return Err(invalid(
                "kernel.release",
                format!("{:?} is not a kernel release", cfg.kernel.release),
            ));
        }
        for (field, kib) in [
            ("system.block_kib", cfg.system.block_kib),
            ("runtime.block_kib", cfg.runtime.block_kib),
        ] {
            if !(4..=1024).contains(&kib) || !kib.is_power_of_two() {
                return Err(invalid(
                    field,
                    format!("{kib}: a squashfs block is 4 to 1024 KiB, a power of two"),
                ));
            }
        }
        let module_ok = |m: &String| {
            !m.is_empty()
                && !m.contains("..")
                && !m.starts_with('/')
                && !m.contains(char::is_whitespace)
        };
        for (field, list) in [
            ("initramfs.modules", &cfg.initramfs.modules),
            ("system.modules", &cfg.system.modules),
            ("system.load", &cfg.system.load),
            ("initramfs.early", &cfg.initramfs.early),
            ("initramfs.soft_left_out", &cfg.initramfs.soft_left_out),
        ] {
            if let Some(m) = list.iter().find(|m| !module_ok(m)) {
                return Err(invalid(
                    field,
                    format!("{m:?} is not a module name or a glob under kernel/"),
                ));
            }
        }
        for (field, list) in [
            ("initramfs.modules", &cfg.initramfs.modules),
            ("system.load", &cfg.system.load),
            ("initramfs.early", &cfg.initramfs.early),
            ("initramfs.soft_left_out", &cfg.initramfs.soft_left_out),
        ] {
            if let Some(m) = list.iter().find(|m| m.contains(['/', '*'])) {
                return Err(invalid(
                    field,
                    format!("{m:?}: module names only here, no paths or globs"),
                ));
            }
        }
        for (field, list) in [
            ("system.binaries", &cfg.system.binaries),
            ("runtime.binaries", &cfg.runtime.binaries),
        ] {
            if let Some(b) = list
                .iter()
                .find(|b| !b.starts_with('/') || b.contains("..") || b.ends_with('/'))
            {
                return Err(invalid(
                    field,
                    format!("{b:?} is not an absolute path to a file"),
                ));
            }
        }
        // Programs and multicall names become files in /usr/bin.
        let bin_name = |n: &str| safe(n) && n != "zeronode-init" && !n.starts_with('.');
        for (field, list) in [
            ("system.programs", &cfg.system.programs),
            ("system.multicall", &cfg.system.multicall),
        ] {
            if let Some(n) = list.iter().find(|n| !bin_name(n)) {
                return Err(invalid(
                    field,
                    format!("{n:?} is not a file name for /usr/bin (letters, digits, -+.:~_)"),
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for n in cfg.system.programs.iter().chain(&cfg.system.multicall) {
            if !names.insert(n.as_str()) {
                return Err(invalid(
                    "system.multicall",
                    format!("{n:?} is named twice among programs and multicall"),
                ));
            }
        }
        if !cfg.system.multicall.is_empty() && !names.contains(MULTICALL) {
            return Err(invalid(
                "system.multicall",
                format!("the links need {MULTICALL:?} among the programs"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &cfg.system.files {
            let p = &f.path;
            if !p.starts_with('/')
                || p.ends_with('/')
                || p.split('/').any(|c| c == ".." || c == ".")
                || p.contains("//")
                || p.starts_with("/etc/zeronode/")
            {
                return Err(invalid(
                    "system.files",
                    format!(
                        "{p:?} is not an absolute path to a file outside /etc/zeronode \
                         (which the builder writes)"
                    ),
                ));
            }
            if !seen.insert(p.as_str()) {
                return Err(invalid("system.files", format!("{p:?} is given twice")));
            }
        }
        if let Some(bad) = cfg.cmdline.extra.iter().find(|a| {
            a.is_empty()
                || a.contains(char::is_whitespace)
                || a.starts_with("zeronode.root_hash")
                || a.starts_with("console=")
        }) {
            return Err(invalid(
                "cmdline.extra",
                format!(
                    "{bad:?}: one parameter an item, no spaces; console= and the root hash are \
                     set by the builder"
                ),
            ));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        ImageConfig::parse(text, "zeronode.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_shipped_declaration_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("zeronode.toml");
        let cfg = ImageConfig::load(&path).unwrap();
        assert!(cfg.system.modules.iter().any(|m| m == "virtio_net"));
        assert!(cfg.initramfs.modules.contains(&"squashfs".to_string()));
        // The network module calls nft at run time.
        assert!(cfg.system.binaries.iter().any(|b| b == "/usr/sbin/nft"));
        // Only workloads run these: they stay off the way to ready.
        for tool in [
            "/usr/bin/containerd",
            "/usr/sbin/runc",
            "/usr/bin/qemu-system-x86_64",
        ] {
            assert!(cfg.runtime.binaries.iter().any(|b| b == tool), "{tool}");
        }
        assert_eq!(cfg.kernel.package, "linux-image-6.1.0-50-amd64");
        assert_eq!((cfg.system.block_kib, cfg.runtime.block_kib), (64, 512));
    }

    /// A small declaration the bad-input cases edit.
    const FIXTURE: &str = r#"
[release]
name = "ZeroNode"
version = "0.1.0"
[kernel]
package = "linux-image-6.1.0-50-amd64"
version = "6.1.176-1"
release = "6.1.0-50-amd64"
[initramfs]
modules = ["loop", "squashfs", "overlay"]
compression = "gzip"
[system]
compression = "zstd"
modules = ["virtio_net", "kernel/drivers/net/ethernet/intel/**"]
load = ["loop"]
binaries = []
[cmdline]
extra = ["loglevel=4"]
"#;

    #[test]
    fn bad_input_names_the_file_and_field() {
        let base = FIXTURE;
        assert!(ImageConfig::parse(base, "x").is_ok());
        let err = error_of(&base.replace(
            "package = \"linux-image-",
            "package = \"rm -rf linux-image-",
        ));
        assert!(err.starts_with("zeronode.toml: kernel.package:"), "{err}");
        let err = error_of(&base.replace("[cmdline]", "[cmdline]\nextra2 = 1"));
        assert!(err.contains("extra2"), "{err}");
        let err = error_of(&base.replace("extra = [\"", "extra = [\"zeronode.root_hash=00\", \""));
        assert!(err.contains("cmdline.extra"), "{err}");
        let err = error_of(&base.replace("compression = \"gzip\"", "compression = \"lzma\""));
        assert!(err.contains("lzma"), "{err}");
        let err = error_of(&base.replace("binaries = []", "binaries = [\"usr/bin/ls\"]"));
        assert!(err.contains("system.binaries"), "{err}");
        let err = error_of(&base.replace(
            "[cmdline]",
            "[runtime]\nbinaries = [\"/usr/bin/\"]\n[cmdline]",
        ));
        assert!(err.contains("runtime.binaries"), "{err}");
        let err = error_of(&base.replace(
            "modules = [\"loop\", \"squashfs\", \"overlay\"]",
            "modules = [\"loop\", \"kernel/fs/**\"]",
        ));
        assert!(err.contains("initramfs.modules"), "{err}");
        let err = error_of(&base.replace("load = [\"loop\"]", "load = [\"../x\"]"));
        assert!(err.contains("system.load"), "{err}");
        let err = error_of(&base.replace("binaries = []", "binaries = []\nblock_kib = 96"));
        assert!(err.contains("system.block_kib: 96"), "{err}");
        let err = error_of(&base.replace("[cmdline]", "[runtime]\nblock_kib = 2048\n[cmdline]"));
        assert!(err.contains("runtime.block_kib: 2048"), "{err}");
        let err = error_of(&base.replace(
            "modules = [\"loop\", \"squashfs\", \"overlay\"]",
            "modules = [\"loop\"]\nearly = [\"fs/*\"]",
        ));
        assert!(err.contains("initramfs.early"), "{err}");
        let err = error_of(&base.replace(
            "modules = [\"loop\", \"squashfs\", \"overlay\"]",
            "modules = [\"loop\"]\nsoft_left_out = [\"kernel/crypto/x.ko\"]",
        ));
        assert!(err.contains("initramfs.soft_left_out"), "{err}");
        let err = error_of(&base.replace("binaries = []", "binaries = []\nmulticall = [\"a\"]"));
        assert!(
            err.contains("need \"zeronode\" among the programs"),
            "{err}"
        );
        let err = error_of(&base.replace(
            "binaries = []",
            "binaries = []\nprograms = [\"zeronode\", \"a\"]\nmulticall = [\"a\"]",
        ));
        assert!(err.contains("\"a\" is named twice"), "{err}");
        let err = error_of(&base.replace(
            "binaries = []",
            "binaries = []\nprograms = [\"zeronode\"]\nmulticall = [\"../sbin/x\"]",
        ));
        assert!(err.contains("system.multicall"), "{err}");
        // Edits of the modules need their signatures off.
        for key in ["module_static_call_sites", "module_ftrace_sites"] {
            let drop = format!("release = \"6.1.0-50-amd64\"\n{key} = \"drop\"");
            let err = error_of(&base.replace("release = \"6.1.0-50-amd64\"", &drop));
            assert!(
                err.contains(&format!("kernel.{key}")) && err.contains("strip"),
                "{err}"
            );
            let stripped = format!("{drop}\nmodule_signatures = \"strip\"");
            assert!(ImageConfig::parse(
                &base.replace("release = \"6.1.0-50-amd64\"", &stripped),
                "x"
            )
            .is_ok());
        }
        // Rebuilt modules: a module name, options to turn off, no Debian signatures.
        let rebuild = |entries: &str| {
            base.replace(
                "release = \"6.1.0-50-amd64\"",
                &format!(
                    "release = \"6.1.0-50-amd64\"\nmodule_signatures = \"strip\"\nrebuild = [{entries}]"
                ),
            )
        };
        let good = "{ module = \"raid6_pq\", unset = [\"CONFIG_RAID6_PQ_BENCHMARK\"] }";
        let cfg = ImageConfig::parse(&rebuild(good), "x").unwrap();
        assert_eq!(
            cfg.kernel.rebuild,
            [Rebuild {
                module: "raid6_pq".into(),
                unset: vec!["CONFIG_RAID6_PQ_BENCHMARK".into()]
            }]
        );
        for (entries, says) in [
            ("{ module = \"../x\", unset = [\"CONFIG_A\"] }", "not a module name"),
            ("{ module = \"x\", unset = [] }", "one or more options"),
            ("{ module = \"x\", unset = [\"RAID6\"] }", "one or more options"),
            ("{ module = \"x\", unset = [\"CONFIG_A B\"] }", "one or more options"),
            (
                "{ module = \"a-b\", unset = [\"CONFIG_A\"] }, { module = \"a_b\", unset = [\"CONFIG_B\"] }",
                "named twice",
            ),
            ("{ module = \"x\", unset = [\"CONFIG_A\"], dir = \"lib\" }", "dir"),
        ] {
            let err = error_of(&rebuild(entries));
            assert!(err.contains("rebuild") && err.contains(says), "{entries}: {err}");
        }
        let signed = base.replace(
            "release = \"6.1.0-50-amd64\"",
            &format!("release = \"6.1.0-50-amd64\"\nrebuild = [{good}]"),
        );
        let err = error_of(&signed);
        assert!(
            err.contains("kernel.rebuild") && err.contains("strip"),
            "{err}"
        );
        let err = error_of(&base.replace("[kernel]", "[kernal]"));
        assert!(err.contains("kernal"), "{err}");
        for path in [
            "etc/x",
            "/etc/../x",
            "/etc/x/",
            "/etc/zeronode/services/a.toml",
        ] {
            let err = error_of(&base.replace(
                "[cmdline]",
                &format!("[[system.files]]\npath = \"{path}\"\ntext = \"\"\n[cmdline]"),
            ));
            assert!(err.contains("system.files"), "{path}: {err}");
        }
        let twice = "[[system.files]]\npath = \"/etc/a\"\ntext = \"\"\n";
        let err = error_of(&base.replace("[cmdline]", &format!("{twice}{twice}[cmdline]")));
        assert!(err.contains("given twice"), "{err}");
    }
}
