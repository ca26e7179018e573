//! Choosing kernel modules: names and globs from zeronode.toml, plus
//! everything they depend on (closure over the full tree's modules.dep),
//! copied into a staging tree that depmod then indexes on its own, so the
//! image's modules.dep/alias/softdep list exactly what it holds, in the
//! kernel's own line format.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::config::{FtraceSites, Kernel, ModuleBtf, ModuleSignatures, StaticCallSites};
use crate::error::{io, Error, Result};
use crate::kernel::{depmod, UnpackedKernel};
use crate::module_edits::{unsigned, without_btf, without_ftrace_sites, without_static_call_sites};

/// Module names treat `-` and `_` alike, as the kernel does.
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// `kernel/net/bridge/bridge.ko` -> `bridge`.
pub fn name_of(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    canonical(base.split(".ko").next().unwrap_or(base))
}

/// Shell-style match of a modules.dep path: `*` stays within a directory,
/// `**` crosses them, so `kernel/drivers/net/ethernet/intel/**` is every
/// Intel NIC driver. A pattern ending in `/` means everything below it.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p {
            [] => s.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| go(rest, &s[i..])),
            [b'*', rest @ ..] => (0..=s.len())
                .take_while(|&i| i == 0 || s[i - 1] != b'/')
                .any(|i| go(rest, &s[i..])),
            [c, rest @ ..] => s.first() == Some(c) && go(rest, &s[1..]),
        }
    }
    if let Some(dir) = pattern.strip_suffix('/') {
        return path.starts_with(dir) && path[dir.len()..].starts_with('/');
    }
    go(pattern.as_bytes(), path.as_bytes())
}

fn is_pattern(wanted: &str) -> bool {
    wanted.contains(['/', '*'])
}

/// modules.dep as path -> dependency paths.
pub struct DepGraph {
    deps: BTreeMap<String, Vec<String>>,
    by_name: BTreeMap<String, String>,
    /// path -> paths of the modules its `softdep ... pre:` names: the
    /// image's loader loads them first (btrfs's checksums, crc32c by alias),
    /// so an image holding a module holds them too.
    soft: BTreeMap<String, Vec<String>>,
}

impl DepGraph {
    pub fn parse(text: &str, file: &Path) -> Result<Self> {
        let mut deps = BTreeMap::new();
        let mut by_name = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (m, d) = line.split_once(':').ok_or_else(|| Error::ModulesDep {
                file: file.to_path_buf(),
                line: i + 1,
                reason: format!("no ':' in {line:?}"),
            })?;
            by_name.insert(name_of(m), m.to_string());
            deps.insert(
                m.to_string(),
                d.split_whitespace().map(str::to_string).collect(),
            );
        }
        Ok(DepGraph {
            deps,
            by_name,
            soft: BTreeMap::new(),
        })
    }

    /// Adds the soft dependencies of modules.softdep, each name resolved
    /// as a module name or else as an exact alias of modules.alias
    /// (`crypto-crc32c` is crc32c_generic and crc32c_intel). A name
    /// nothing provides is skipped, as the loader skips it.
    pub fn with_soft_dependencies(mut self, softdep: &str, alias: &str) -> Self {
        let mut by_alias: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(pattern), Some(module)) =
                (words.next(), words.next(), words.next())
            {
                if let Some(path) = self.by_name.get(&canonical(module)) {
                    by_alias.entry(pattern).or_default().push(path.clone());
                }
            }
        }
        for line in softdep.lines() {
            let mut words = line.split_whitespace();
            let (Some("softdep"), Some(module)) = (words.next(), words.next()) else {
                continue;
            };
            let Some(path) = self.by_name.get(&canonical(module)).cloned() else {
                continue;
            };
            let mut pre = false;
            for w in words {
                match w {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    name if pre => {
                        let found = match self.by_name.get(&canonical(name)) {
                            Some(p) => vec![p.clone()],
                            None => by_alias.get(name).cloned().unwrap_or_default(),
                        };
                        self.soft.entry(path.clone()).or_default().extend(found);
                    }
                    _ => {}
                }
            }
        }
        self
    }

    /// The module files `wanted` names (module names or path globs), with
    /// their dependencies. A name the kernel lacks, or a glob matching
    /// nothing, is an error naming every such entry.
    pub fn select(
        &self,
        wanted: &[String],
        builtin: &BTreeSet<String>,
        release: &str,
    ) -> Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        let mut missing = Vec::new();
        for w in wanted {
            if is_pattern(w) {
                let hits: Vec<&String> = self.deps.keys().filter(|p| glob_match(w, p)).collect();
                if hits.is_empty() {
                    missing.push(format!("{w} (matches no module)"));
                }
                for p in hits {
                    self.closure(p, &mut out);
                }
            } else if let Some(p) = self.by_name.get(&canonical(w)) {
                self.closure(p, &mut out);
            } else if !builtin.contains(&canonical(w)) {
                missing.push(w.clone());
            }
        }
        if !missing.is_empty() {
            return Err(Error::MissingModules {
                release: release.into(),
                names: missing.join(", "),
            });
        }
        Ok(out)
    }

    fn closure(&self, path: &str, out: &mut BTreeSet<String>) {
        if out.insert(path.to_string()) {
            let hard = self.deps.get(path).into_iter().flatten();
            for d in hard.chain(self.soft.get(path).into_iter().flatten()) {
                self.closure(d, out);
            }
        }
    }
}

/// modules.softdep without the names in `left_out` (`-` and `_` alike).
fn without_soft(softdep: &str, left_out: &[String]) -> String {
    let out: Vec<String> = left_out.iter().map(|n| canonical(n)).collect();
    softdep
        .lines()
        .map(|line| {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                return format!("{line}\n");
            }
            let kept: Vec<&str> = ["softdep"]
                .into_iter()
                .chain(words.next())
                .chain(words.filter(|w| !out.contains(&canonical(w))))
                .collect();
            format!("{}\n", kept.join(" "))
        })
        .collect()
}

/// Names of the built-in modules (modules.builtin).
pub fn builtin(modules_dir: &Path) -> Result<BTreeSet<String>> {
    let path = modules_dir.join("modules.builtin");
    let text = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
    Ok(text.lines().map(name_of).collect())
}

/// Copies the chosen modules under `root/lib/modules/<release>` and indexes
/// them with depmod, with their soft dependencies but those `soft_left_out`
/// names (as written in modules.softdep: a module or an alias). Returns the
/// module files that went in.
pub fn stage(
    kernel: &UnpackedKernel,
    wanted: &[String],
    soft_left_out: &[String],
    edits: &Kernel,
    root: &Path,
) -> Result<Vec<PathBuf>> {
    let src = kernel.modules_dir();
    let dep_path = src.join("modules.dep");
    let dep_text = std::fs::read_to_string(&dep_path).map_err(io("reading", &dep_path))?;
    let optional = |name: &str| -> Result<String> {
        let path = src.join(name);
        match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            r => r.map_err(io("reading", &path)),
        }
    };
    let files = DepGraph::parse(&dep_text, &dep_path)?
        .with_soft_dependencies(
            &without_soft(&optional("modules.softdep")?, soft_left_out),
            &optional("modules.alias")?,
        )
        .select(wanted, &builtin(&src)?, &kernel.release)?;
    let dst = root.join("lib/modules").join(&kernel.release);
    let mut copied = Vec::new();
    for f in &files {
        let to = dst.join(f);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        let from = kernel.module_file(f);
        let bytes = std::fs::read(&from).map_err(io("reading module", &from))?;
        let mut bytes = match edits.module_signatures {
            ModuleSignatures::Keep => bytes,
            ModuleSignatures::Strip => unsigned(&bytes).to_vec(),
        };
        if edits.module_static_call_sites == StaticCallSites::Drop {
            without_static_call_sites(&mut bytes, &from)?;
        }
        if edits.module_ftrace_sites == FtraceSites::Drop {
            without_ftrace_sites(&mut bytes, &from)?;
        }
        if edits.module_btf == ModuleBtf::Drop {
            without_btf(&mut bytes, &from)?;
        }
        std::fs::write(&to, bytes).map_err(io("writing module", &to))?;
        copied.push(to);
    }
    // Built-in modules are part of every kernel: their lists stay whole.
    for meta in ["modules.builtin", "modules.builtin.modinfo"] {
        std::fs::copy(src.join(meta), dst.join(meta)).map_err(io("copying", src.join(meta)))?;
    }
    // modules.order, cut to what is here, keeps depmod's output in the
    // kernel's order.
    let order_path = src.join("modules.order");
    let order = std::fs::read_to_string(&order_path).map_err(io("reading", &order_path))?;
    let kept: String = order
        .lines()
        .filter(|l| files.contains(*l))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dst.join("modules.order"), kept)
        .map_err(io("writing", dst.join("modules.order")))?;
    depmod(root, &kernel.release)?;
    // The binary indexes are for kmod's tools; PID 1 reads the text files.
    for entry in std::fs::read_dir(&dst)
        .map_err(io("listing", &dst))?
        .flatten()
    {
        if entry.file_name().to_string_lossy().ends_with(".bin") {
            std::fs::remove_file(entry.path()).map_err(io("removing", entry.path()))?;
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n\
                       kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n\
                       kernel/net/llc/llc.ko:\n\
                       kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko: kernel/drivers/ptp/ptp.ko\n\
                       kernel/drivers/net/ethernet/intel/igb/igb.ko: kernel/drivers/ptp/ptp.ko kernel/drivers/dca/dca.ko\n\
                       kernel/drivers/net/ethernet/intel/e100.ko:\n\
                       kernel/drivers/ptp/ptp.ko:\n\
                       kernel/drivers/dca/dca.ko:\n\
                       kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-mod.ko\n\
                       kernel/drivers/md/dm-mod.ko:\n\
                       kernel/drivers/block/loop.ko:\n";

    fn graph() -> DepGraph {
        DepGraph::parse(DEP, Path::new("modules.dep")).unwrap()
    }

    fn names(set: &BTreeSet<String>) -> Vec<String> {
        set.iter().map(|p| name_of(p)).collect()
    }

    #[test]
    fn names_and_globs_bring_their_dependencies() {
        let builtin = BTreeSet::from(["ext4".to_string()]);
        let got = graph()
            .select(
                &[
                    "bridge".into(),
                    "kernel/drivers/net/ethernet/intel/**".into(),
                    "ext4".into(),
                    "dm-verity".into(),
                ],
                &builtin,
                "6.1",
            )
            .unwrap();
        assert_eq!(
            names(&got),
            [
                "dca",
                "dm_mod",
                "dm_verity",
                "e100",
                "e1000e",
                "igb",
                "ptp",
                "stp",
                "bridge",
                "llc"
            ]
        );
        assert!(!got.iter().any(|p| p.contains("loop")));
    }

    #[test]
    fn soft_dependencies_left_out_are_not_followed() {
        let softdep = "# Soft dependencies\n\
                       softdep btrfs pre: blake2b-256 crypto-crc32c xxhash64 post: loop\n\
                       softdep xxhash64 pre: crc32c\n";
        assert_eq!(
            without_soft(softdep, &["blake2b_256".into(), "xxhash64".into()]),
            "# Soft dependencies\n\
             softdep btrfs pre: crypto-crc32c post: loop\n\
             softdep xxhash64 pre: crc32c\n"
        );
    }

    #[test]
    fn soft_dependencies_come_along_by_name_or_alias() {
        let dep = "kernel/fs/btrfs/btrfs.ko: kernel/lib/libcrc32c.ko\n\
                   kernel/lib/libcrc32c.ko:\n\
                   kernel/crypto/crc32c_generic.ko:\n\
                   kernel/arch/x86/crypto/crc32c-intel.ko:\n\
                   kernel/crypto/xxhash_generic.ko:\n\
                   kernel/drivers/block/loop.ko:\n";
        let softdep = "# Soft dependencies\n\
                       softdep btrfs pre: crypto-crc32c xxhash64 nothing_has_this post: loop\n\
                       softdep libcrc32c pre: crc32c\n";
        let alias = "alias crypto-crc32c crc32c_generic\n\
                     alias crypto-crc32c crc32c_intel\n\
                     alias crc32c crc32c_generic\n\
                     alias xxhash64 xxhash_generic\n";
        let got = DepGraph::parse(dep, Path::new("modules.dep"))
            .unwrap()
            .with_soft_dependencies(softdep, alias)
            .select(&["btrfs".into()], &BTreeSet::new(), "6.1")
            .unwrap();
        assert_eq!(
            names(&got),
            [
                "crc32c_intel",
                "crc32c_generic",
                "xxhash_generic",
                "btrfs",
                "libcrc32c"
            ]
        );
    }

    #[test]
    fn single_star_stays_in_its_directory() {
        let got = graph()
            .select(
                &["kernel/drivers/net/ethernet/intel/*.ko".into()],
                &BTreeSet::new(),
                "6.1",
            )
            .unwrap();
        assert_eq!(names(&got), ["e100"]);
        let got = graph()
            .select(&["kernel/drivers/md/".into()], &BTreeSet::new(), "6.1")
            .unwrap();
        assert_eq!(names(&got), ["dm_mod", "dm_verity"]);
    }

    #[test]
    fn unknown_modules_and_empty_globs_are_named() {
        let err = graph()
            .select(
                &["nope".into(), "kernel/sound/**".into(), "loop".into()],
                &BTreeSet::new(),
                "6.1.0-50-amd64",
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nope")
                && err.contains("kernel/sound/** (matches no module)")
                && err.contains("6.1.0-50-amd64")
                && !err.contains("loop"),
            "{err}"
        );
    }

    #[test]
    fn a_malformed_line_is_located() {
        let err = DepGraph::parse("a.ko:\nbroken line\n", Path::new("x/modules.dep"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("x/modules.dep:2:"), "{err}");
    }

    #[test]
    fn glob_rules() {
        assert!(glob_match("kernel/a/**", "kernel/a/b/c.ko"));
        assert!(!glob_match("kernel/a/**", "kernel/ab/c.ko"));
        assert!(glob_match("kernel/a/*.ko", "kernel/a/c.ko"));
        assert!(!glob_match("kernel/a/*.ko", "kernel/a/b/c.ko"));
        assert!(glob_match("kernel/a/", "kernel/a/b/c.ko"));
        assert!(!glob_match("kernel/a/", "kernel/ab.ko"));
    }
}
