//! Choosing kernel modules: names and directories from zeronode.toml, plus
//! everything they depend on (from the full tree's modules.dep), copied into
//! a staging tree that depmod then indexes on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::kernel::{depmod, UnpackedKernel};

fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

fn name_of(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    canonical(base.split(".ko").next().unwrap_or(base))
}

/// modules.dep as path -> dependency paths.
pub struct DepGraph {
    deps: BTreeMap<String, Vec<String>>,
    by_name: BTreeMap<String, String>,
}

impl DepGraph {
    pub fn parse(text: &str) -> Result<Self> {
        let mut deps = BTreeMap::new();
        let mut by_name = BTreeMap::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let (m, d) = line
                .split_once(':')
                .with_context(|| format!("modules.dep:{}: no ':' in {line:?}", i + 1))?;
            by_name.insert(name_of(m), m.to_string());
            deps.insert(
                m.to_string(),
                d.split_whitespace().map(str::to_string).collect(),
            );
        }
        Ok(DepGraph { deps, by_name })
    }

    /// The module files `wanted` names (module names, or directories ending
    /// in `/`), with their dependencies. A name the kernel lacks is an error.
    pub fn select(
        &self,
        wanted: &[String],
        builtin: &BTreeSet<String>,
    ) -> Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        let mut missing = Vec::new();
        for w in wanted {
            if w.ends_with('/') {
                let hits: Vec<&String> = self
                    .deps
                    .keys()
                    .filter(|p| p.starts_with(w.as_str()))
                    .collect();
                if hits.is_empty() {
                    missing.push(w.clone());
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
            bail!(
                "modules not in this kernel (neither loadable nor built in): {}",
                missing.join(", ")
            );
        }
        Ok(out)
    }

    fn closure(&self, path: &str, out: &mut BTreeSet<String>) {
        if out.insert(path.to_string()) {
            for d in self.deps.get(path).into_iter().flatten() {
                self.closure(d, out);
            }
        }
    }
}

/// Names of the built-in modules (modules.builtin).
pub fn builtin(kernel: &UnpackedKernel) -> Result<BTreeSet<String>> {
    let path = kernel.modules_dir().join("modules.builtin");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().map(name_of).collect())
}

/// Copies the chosen modules under `root/lib/modules/<release>` and indexes
/// them. Returns how many module files went in.
pub fn stage(kernel: &UnpackedKernel, wanted: &[String], root: &Path) -> Result<usize> {
    let src = kernel.modules_dir();
    let dep_text = std::fs::read_to_string(src.join("modules.dep"))
        .context("reading the kernel's modules.dep")?;
    let files = DepGraph::parse(&dep_text)?.select(wanted, &builtin(kernel)?)?;
    let dst = root.join("lib/modules").join(&kernel.release);
    for f in &files {
        let to = dst.join(f);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::copy(src.join(f), &to).with_context(|| format!("copying module {f}"))?;
    }
    for meta in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        std::fs::copy(src.join(meta), dst.join(meta)).with_context(|| format!("copying {meta}"))?;
    }
    depmod(root, &kernel.release)?;
    // The binary indexes are for kmod; PID 1 reads the text files.
    for entry in std::fs::read_dir(&dst)?.flatten() {
        if entry.file_name().to_string_lossy().ends_with(".bin") {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(files.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n\
                       kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n\
                       kernel/net/llc/llc.ko:\n\
                       kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko: kernel/drivers/ptp/ptp.ko\n\
                       kernel/drivers/net/ethernet/intel/igb/igb.ko: kernel/drivers/ptp/ptp.ko kernel/drivers/dca/dca.ko\n\
                       kernel/drivers/ptp/ptp.ko:\n\
                       kernel/drivers/dca/dca.ko:\n\
                       kernel/drivers/block/loop.ko:\n";

    #[test]
    fn names_and_directories_bring_their_dependencies() {
        let g = DepGraph::parse(DEP).unwrap();
        let builtin = BTreeSet::from(["ext4".to_string()]);
        let got = g
            .select(
                &[
                    "bridge".into(),
                    "kernel/drivers/net/ethernet/intel/".into(),
                    "ext4".into(),
                ],
                &builtin,
            )
            .unwrap();
        let names: Vec<String> = got.iter().map(|p| name_of(p)).collect();
        assert_eq!(
            names,
            ["dca", "e1000e", "igb", "ptp", "stp", "bridge", "llc"]
        );
        assert!(!got.iter().any(|p| p.contains("loop")));
    }

    #[test]
    fn unknown_modules_are_named() {
        let g = DepGraph::parse(DEP).unwrap();
        let err = g
            .select(&["nope".into(), "kernel/sound/".into()], &BTreeSet::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nope") && err.contains("kernel/sound/"),
            "{err}"
        );
    }
}
