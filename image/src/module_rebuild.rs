//! Modules built again from Debian's source of the pinned kernel, with some
//! of Debian's options off (`[kernel] rebuild` in zeronode.toml).
//!
//! Everything comes from Debian's archive at the kernel's own version:
//! linux-source-X.Y for the module's directory, linux-headers-<release> and
//! its -common part for the configuration, Module.symvers and the build
//! rules, linux-kbuild-X.Y for modpost and objtool, and the compiler the
//! headers name (gcc-12). The module is built out of tree against those
//! headers, so its vermagic and symbol CRCs are the kernel's; options are
//! turned off by a header forced in after the kernel's autoconf.h. The
//! result is stripped of debug info, as Debian's modules are, and cached
//! under out/cache by everything that went into it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{Kernel, Rebuild};
use crate::error::{io, run, Error, Result};
use crate::kernel::{download, UnpackedKernel};
use crate::kmod::{canonical, name_of};

/// Debian's package names for building modules of `release`
/// (`6.1.0-50-amd64`): the headers, their common part, kbuild and source.
#[derive(Debug, PartialEq, Eq)]
pub struct BuildPackages {
    pub headers: String,
    pub headers_common: String,
    pub kbuild: String,
    pub source: String,
}

impl BuildPackages {
    /// From Debian's naming: `<major>.<minor>.<patch>-<abi>-<flavour>`.
    pub fn of(release: &str) -> Option<Self> {
        let (abi, flavour) = release.rsplit_once('-')?;
        let mut numbers = abi.split(['.', '-']);
        let (major, minor) = (numbers.next()?, numbers.next()?);
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(major) || !all_digits(minor) || flavour.is_empty() || !abi.contains('-') {
            return None;
        }
        Some(Self {
            headers: format!("linux-headers-{release}"),
            headers_common: format!("linux-headers-{abi}-common"),
            kbuild: format!("linux-kbuild-{major}.{minor}"),
            source: format!("linux-source-{major}.{minor}"),
        })
    }
}

/// Builds (or takes from the cache) every module `k.rebuild` names and
/// records each in `kernel.rebuilt`, to be staged in place of Debian's.
pub fn rebuild_all(k: &Kernel, cache: &Path, kernel: &mut UnpackedKernel) -> Result<()> {
    if k.rebuild.is_empty() {
        return Ok(());
    }
    let packages = BuildPackages::of(&k.release).ok_or_else(|| Error::Rebuild {
        module: k.rebuild[0].module.clone(),
        reason: format!(
            "kernel.release {:?} is not Debian's <version>-<abi>-<flavour>, so its headers' \
             package names are unknown",
            k.release
        ),
    })?;
    let dep_paths = module_paths(kernel)?;
    let tree = BuildTree::fetch(&packages, k, cache).map_err(|reason| Error::Rebuild {
        module: k
            .rebuild
            .iter()
            .map(|r| r.module.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        reason,
    })?;
    for r in &k.rebuild {
        let dep_path = dep_paths
            .get(&canonical(&r.module))
            .ok_or_else(|| Error::Rebuild {
                module: r.module.clone(),
                reason: format!("kernel {} has no such loadable module", k.release),
            })?;
        let built = tree.module(r, dep_path, &kernel.module_file(dep_path))?;
        kernel.rebuilt.insert(dep_path.clone(), built);
    }
    Ok(())
}

/// Module name -> its path in the kernel's modules.dep.
fn module_paths(kernel: &UnpackedKernel) -> Result<BTreeMap<String, String>> {
    let dep = kernel.modules_dir().join("modules.dep");
    let text = std::fs::read_to_string(&dep).map_err(io("reading", &dep))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(path, _)| (name_of(path), path.to_string()))
        .collect())
}

/// Debian's headers, kbuild and source for the pinned kernel, unpacked
/// together so the headers' relative links to kbuild resolve.
struct BuildTree {
    root: PathBuf,
    /// The headers' two halves: each package's directory under usr/src.
    headers: PathBuf,
    headers_common: PathBuf,
    source_tarball: PathBuf,
    /// `linux-source-X.Y`: the tarball's top directory.
    source_top: String,
    /// What the built module depends on besides its recipe: the packages
    /// and the compiler.
    toolchain: String,
}

impl BuildTree {
    /// Errors are the reason a rebuild cannot start.
    fn fetch(p: &BuildPackages, k: &Kernel, cache: &Path) -> std::result::Result<Self, String> {
        let mut debs = Vec::new();
        for (package, size) in [
            (&p.headers, "about 2 MB"),
            (&p.headers_common, "about 10 MB"),
            (&p.kbuild, "about 1 MB"),
            (&p.source, "about 140 MB"),
        ] {
            let deb = download(package, &k.version, cache, size)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!(
                        "{package}={} is not in Debian's archive: the rebuild needs the \
                         kernel's own source and headers",
                        k.version
                    )
                })?;
            debs.push(deb);
        }
        let root = cache.join(format!("kbuild-{}-{}", k.release, k.version));
        // Written last: an interrupted unpack starts over.
        let done = root.join(".unpacked");
        if !done.exists() {
            tracing::info!("unpacking the kernel's headers, kbuild and source");
            let unpack = || -> Result<()> {
                if root.exists() {
                    std::fs::remove_dir_all(&root).map_err(io("removing", &root))?;
                }
                for deb in &debs {
                    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
                }
                std::fs::write(&done, b"").map_err(io("writing", &done))
            };
            unpack().map_err(|e| e.to_string())?;
        }
        // make runs in the headers' directory: every path it gets is absolute.
        let root = std::fs::canonicalize(&root)
            .map_err(|e| format!("resolving {}: {e}", root.display()))?;
        let src = root.join("usr/src");
        let (headers, headers_common) = (src.join(&p.headers), src.join(&p.headers_common));
        let compiler = compiler(&headers)?;
        let version = Command::new(&compiler)
            .arg("--version")
            .output()
            .map_err(|e| {
                format!(
                    "cannot run {compiler}, the compiler Debian built the kernel with \
                     (scripts/build-image installs it): {e}"
                )
            })?;
        let toolchain = format!(
            "{}\n{}\n{}",
            k.version,
            compiler,
            String::from_utf8_lossy(&version.stdout)
        );
        Ok(Self {
            source_tarball: src.join(format!("{}.tar.xz", p.source)),
            source_top: p.source.clone(),
            root,
            headers,
            headers_common,
            toolchain,
        })
    }

    /// Builds `r`'s module from the source directory of `dep_path`, or
    /// returns the cached build; checks it against Debian's `original`.
    fn module(&self, r: &Rebuild, dep_path: &str, original: &Path) -> Result<PathBuf> {
        let fail = |reason: String| Error::Rebuild {
            module: r.module.clone(),
            reason,
        };
        // kernel/lib/raid6/raid6_pq.ko -> lib/raid6, raid6_pq.ko
        let (dir, file) = dep_path
            .strip_prefix("kernel/")
            .and_then(|p| p.rsplit_once('/'))
            .ok_or_else(|| {
                fail(format!(
                    "{dep_path} is not a module of the kernel's own tree"
                ))
            })?;
        let recipe = format!("{dep_path}\n{}\n{}", r.unset.join(" "), self.toolchain);
        let key = &blake3::hash(recipe.as_bytes()).to_hex()[..16];
        let built = self
            .root
            .join("built")
            .join(format!("{}-{key}.ko", r.module));
        if built.exists() {
            tracing::info!("{} rebuilt earlier: {}", r.module, built.display());
            return Ok(built);
        }
        tracing::info!(
            "building {} from {dir} without {}",
            r.module,
            r.unset.join(", ")
        );
        let work = self.root.join("work").join(&r.module);
        if work.exists() {
            std::fs::remove_dir_all(&work).map_err(io("removing", &work))?;
        }
        std::fs::create_dir_all(&work).map_err(io("creating", &work))?;
        let member = format!("{}/{dir}", self.source_top);
        run(Command::new("tar")
            .arg("-xJf")
            .arg(&self.source_tarball)
            .arg("-C")
            .arg(&work)
            .arg(format!("--strip-components={}", member.split('/').count()))
            .arg(&member))?;
        let makefile = work.join("Makefile");
        let rules = std::fs::read_to_string(&makefile).map_err(io("reading", &makefile))?;
        std::fs::write(&makefile, out_of_tree_rules(&rules)).map_err(io("writing", &makefile))?;
        std::fs::write(work.join(UNSET_HEADER), unset_header(&r.unset))
            .map_err(io("writing", work.join(UNSET_HEADER)))?;
        std::fs::write(work.join("Kbuild"), KBUILD).map_err(io("writing", work.join("Kbuild")))?;

        let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
        run(Command::new("make")
            .arg("-C")
            .arg(&self.headers)
            .arg("-f")
            .arg(self.headers_common.join("Makefile"))
            .arg(format!("M={}", work.display()))
            .arg(format!("-j{jobs}"))
            .arg("modules")
            .env("LC_ALL", "C")
            // Paths in the debug info (stripped later, but hashed into the
            // build ID first) relative to the tree: a checkout elsewhere
            // builds the same bytes.
            .env(
                "KCFLAGS",
                format!("-ffile-prefix-map={}/=", self.root.display()),
            )
            .env_remove("MAKEFLAGS"))?;
        let ko = work.join(file);
        let stripped = work.join(format!("{file}.stripped"));
        run(Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&stripped)
            .arg(&ko))?;
        let ours = std::fs::read(&stripped).map_err(io("reading", &stripped))?;
        let theirs = std::fs::read(original).map_err(io("reading", original))?;
        match (modinfo(&ours, "vermagic"), modinfo(&theirs, "vermagic")) {
            (Some(a), Some(b)) if a == b => {}
            (a, b) => {
                return Err(fail(format!(
                    "built with vermagic {a:?}, but the kernel's modules have {b:?}: the \
                     kernel would refuse it"
                )))
            }
        }
        if let Some(parent) = built.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        // Renamed into place: a cached build is always a whole one.
        let partial = built.with_extension("partial");
        std::fs::write(&partial, &ours).map_err(io("writing", &partial))?;
        std::fs::rename(&partial, &built).map_err(io("renaming", &partial))?;
        std::fs::remove_dir_all(&work).map_err(io("removing", &work))?;
        Ok(built)
    }
}

/// The compiler the headers' .kernelvariables name (`CC = ... gcc-12`).
fn compiler(headers: &Path) -> std::result::Result<String, String> {
    let path = headers.join(".kernelvariables");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("CC"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .filter_map(|value| value.split_whitespace().last())
        .map(|last| last.replace("$(CROSS_COMPILE)", ""))
        .next()
        .ok_or_else(|| format!("{} names no compiler (CC = ...)", path.display()))
}

const UNSET_HEADER: &str = "zeronode-unset.h";

/// Kbuild prefers this file to the directory's Makefile, which it includes;
/// the forced header comes after the kernel's autoconf.h (kconfig.h, forced
/// earlier on the command line), so its #undefs win.
const KBUILD: &str = "include $(src)/Makefile\nccflags-y += -include $(src)/zeronode-unset.h\n";

fn unset_header(options: &[String]) -> String {
    let mut h = String::from("/* Options zeronode.toml turns off for this module. */\n");
    for o in options {
        h.push_str(&format!("#undef {o}\n#undef {o}_MODULE\n"));
    }
    h
}

/// In-tree rules name their helper files `$(srctree)/$(src)/...`; out of
/// tree, `$(src)` is the module's absolute directory already.
fn out_of_tree_rules(makefile: &str) -> String {
    makefile.replace("$(srctree)/$(src)/", "$(src)/")
}

/// The value of `key=` in a module's .modinfo strings.
fn modinfo(module: &[u8], key: &str) -> Option<String> {
    let needle = format!("{key}=");
    module
        .split(|&b| b == 0)
        .find_map(|s| s.strip_prefix(needle.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_names_the_build_packages_after_the_release() {
        assert_eq!(
            BuildPackages::of("6.1.0-50-amd64"),
            Some(BuildPackages {
                headers: "linux-headers-6.1.0-50-amd64".into(),
                headers_common: "linux-headers-6.1.0-50-common".into(),
                kbuild: "linux-kbuild-6.1".into(),
                source: "linux-source-6.1".into(),
            })
        );
        for odd in ["6.1.0", "amd64", "x.1.0-50-amd64", "6-amd64", ""] {
            assert_eq!(BuildPackages::of(odd), None, "{odd}");
        }
    }

    #[test]
    fn options_are_undefined_in_both_forms() {
        let h = unset_header(&["CONFIG_RAID6_PQ_BENCHMARK".into()]);
        assert!(h.contains("#undef CONFIG_RAID6_PQ_BENCHMARK\n"));
        assert!(h.contains("#undef CONFIG_RAID6_PQ_BENCHMARK_MODULE\n"));
    }

    #[test]
    fn helper_paths_become_out_of_tree_paths() {
        let rule = "cmd_unroll = $(AWK) -v N=$* -f $(srctree)/$(src)/unroll.awk < $< > $@\n\
                    $(obj)/int%.c: $(src)/int.uc $(src)/unroll.awk FORCE\n";
        let out = out_of_tree_rules(rule);
        assert!(out.contains("-f $(src)/unroll.awk"), "{out}");
        assert!(!out.contains("$(srctree)"), "{out}");
        assert!(out.contains("$(obj)/int%.c: $(src)/int.uc"), "{out}");
    }

    #[test]
    fn modinfo_reads_a_key_among_the_strings() {
        let info =
            b"\x7fELF...\0license=GPL\0vermagic=6.1.0-50-amd64 SMP preempt mod_unload \0name=x\0";
        assert_eq!(
            modinfo(info, "vermagic").as_deref(),
            Some("6.1.0-50-amd64 SMP preempt mod_unload ")
        );
        assert_eq!(modinfo(info, "srcversion"), None);
    }
}
