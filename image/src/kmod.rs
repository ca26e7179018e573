//! Choosing kernel modules: names and globs from zeronode.toml, plus
//! everything they depend on (closure over the full tree's modules.dep),
//! copied into a staging tree that depmod then indexes on its own, so the
//! image's modules.dep/alias/softdep list exactly what it holds, in the
//! kernel's own line format.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::config::{Kernel, ModuleSignatures, StaticCallSites};
use crate::error::{io, Error, Result};
use crate::kernel::{depmod, UnpackedKernel};

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

/// What the kernel's `sign-file` appends to a module: the PKCS#7
/// signature, a 12-byte `struct module_signature` ending in the
/// signature's length (big-endian), and this marker.
const SIGNATURE_MARKER: &[u8] = b"~Module signature appended~\n";

/// A module without its appended signature; unsigned bytes as they are.
/// The image's modules are covered by the pinned hash of the image they
/// ship in, and the kernel (not enforcing signatures) would load them
/// unsigned anyway: checking each one again is a SHA-256 over every byte
/// loaded, and under emulation that is a good part of loading.
fn unsigned(module: &[u8]) -> &[u8] {
    let Some(rest) = module.strip_suffix(SIGNATURE_MARKER) else {
        return module;
    };
    let Some(info_at) = rest.len().checked_sub(12) else {
        return module;
    };
    let len = u32::from_be_bytes([
        rest[info_at + 8],
        rest[info_at + 9],
        rest[info_at + 10],
        rest[info_at + 11],
    ]);
    match info_at.checked_sub(len as usize) {
        Some(end) => &module[..end],
        None => module,
    }
}

/// Empties a module's table of inline static-call sites and the
/// relocations that fill it in (both sections' sizes become 0; no byte
/// moves). Loading a module otherwise rewrites each listed call in place
/// with `text_poke_bp`, which stops every CPU three times a site: btrfs has
/// 529 sites, and under TCG that was a third of its load (~270 -> ~175 ms).
/// An unlisted call keeps going through the static call's trampoline,
/// which the kernel retargets on every update, so behaviour is the same.
fn without_static_call_sites(module: &mut [u8], path: &Path) -> Result<()> {
    use goblin::elf::section_header::{SHT_REL, SHT_RELA};
    let bad = |reason: String| Error::Elf {
        path: path.to_path_buf(),
        reason,
    };
    let elf = goblin::elf::Elf::parse(module).map_err(|e| bad(format!("not a module: {e}")))?;
    if !elf.is_64 || !elf.little_endian {
        return Err(bad("not a 64-bit little-endian module".into()));
    }
    let name = |i: usize| elf.shdr_strtab.get_at(elf.section_headers[i].sh_name);
    let Some(sites) =
        (0..elf.section_headers.len()).find(|&i| name(i) == Some(".static_call_sites"))
    else {
        return Ok(());
    };
    let emptied: Vec<usize> = (0..elf.section_headers.len())
        .filter(|&i| {
            let s = &elf.section_headers[i];
            i == sites || (matches!(s.sh_type, SHT_RELA | SHT_REL) && s.sh_info as usize == sites)
        })
        .collect();
    let (shoff, shentsize) = (elf.header.e_shoff as usize, elf.header.e_shentsize as usize);
    for i in emptied {
        // sh_size is the 8 bytes at offset 32 of an Elf64_Shdr.
        let at = shoff + i * shentsize + 32;
        let size = module
            .get_mut(at..at + 8)
            .ok_or_else(|| bad(format!("section header {i} lies outside the file")))?;
        size.copy_from_slice(&0u64.to_le_bytes());
    }
    Ok(())
}

/// Names of the built-in modules (modules.builtin).
pub fn builtin(modules_dir: &Path) -> Result<BTreeSet<String>> {
    let path = modules_dir.join("modules.builtin");
    let text = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
    Ok(text.lines().map(name_of).collect())
}

/// Copies the chosen modules under `root/lib/modules/<release>` and indexes
/// them with depmod. Returns the module files that went in.
pub fn stage(
    kernel: &UnpackedKernel,
    wanted: &[String],
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
        .with_soft_dependencies(&optional("modules.softdep")?, &optional("modules.alias")?)
        .select(wanted, &builtin(&src)?, &kernel.release)?;
    let dst = root.join("lib/modules").join(&kernel.release);
    let mut copied = Vec::new();
    for f in &files {
        let to = dst.join(f);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        let from = src.join(f);
        let bytes = std::fs::read(&from).map_err(io("reading module", &from))?;
        let mut bytes = match edits.module_signatures {
            ModuleSignatures::Keep => bytes,
            ModuleSignatures::Strip => unsigned(&bytes).to_vec(),
        };
        if edits.module_static_call_sites == StaticCallSites::Drop {
            without_static_call_sites(&mut bytes, &from)?;
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

    /// A relocatable ELF64 with a .text, a .static_call_sites and the
    /// .rela section that targets it, like a module's.
    fn module_with_static_call_sites() -> Vec<u8> {
        let names = b"\0.text\0.rela.static_call_sites\0.shstrtab\0";
        // sh_name offsets into `names`: .text 1, .rela.static_call_sites 7,
        // .static_call_sites 12 (its tail), .shstrtab 31.
        let data_at = 64usize;
        let text = [0x90u8; 16];
        let sites = [0xAAu8; 8];
        let rela = [0xBBu8; 24];
        let mut body = Vec::new();
        body.extend_from_slice(&text);
        body.extend_from_slice(&sites);
        body.extend_from_slice(&rela);
        body.extend_from_slice(names);
        let shoff = (data_at + body.len()).next_multiple_of(8);
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little-endian
        f[6] = 1;
        f[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[52..54].copy_from_slice(&64u16.to_le_bytes());
        f[58..60].copy_from_slice(&64u16.to_le_bytes());
        f[60..62].copy_from_slice(&5u16.to_le_bytes()); // sections
        f[62..64].copy_from_slice(&4u16.to_le_bytes()); // .shstrtab
        f.extend_from_slice(&body);
        f.resize(shoff, 0);
        // (name, type, flags, offset, size, info)
        let headers: [(u32, u32, u64, usize, usize, u32); 5] = [
            (0, 0, 0, 0, 0, 0),
            (1, 1, 6, data_at, 16, 0),
            (12, 1, 3, data_at + 16, 8, 0),
            (7, 4, 0x40, data_at + 24, 24, 2),
            (31, 3, 0, data_at + 48, names.len(), 0),
        ];
        for (name, kind, flags, offset, size, info) in headers {
            let mut h = [0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&flags.to_le_bytes());
            h[24..32].copy_from_slice(&(offset as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            h[44..48].copy_from_slice(&info.to_le_bytes());
            h[48..56].copy_from_slice(&1u64.to_le_bytes());
            f.extend_from_slice(&h);
        }
        f
    }

    #[test]
    fn static_call_sites_are_emptied_and_nothing_else_changes() {
        let module = module_with_static_call_sites();
        let sizes = |m: &[u8]| -> Vec<(String, u64)> {
            let elf = goblin::elf::Elf::parse(m).unwrap();
            elf.section_headers
                .iter()
                .map(|s| {
                    let name = elf.shdr_strtab.get_at(s.sh_name).unwrap_or("");
                    (name.to_string(), s.sh_size)
                })
                .collect()
        };
        let before = sizes(&module);
        assert_eq!(before[2], (".static_call_sites".into(), 8));
        let mut edited = module.clone();
        without_static_call_sites(&mut edited, Path::new("m.ko")).unwrap();
        let after = sizes(&edited);
        assert_eq!(after[2], (".static_call_sites".into(), 0));
        assert_eq!(after[3], (".rela.static_call_sites".into(), 0));
        assert_eq!(after[1], before[1]);
        assert_eq!(after[4], before[4]);
        assert_eq!(edited.len(), module.len());
        let changed = module.iter().zip(&edited).filter(|(a, b)| a != b).count();
        assert_eq!(changed, 2, "only the two sizes' low bytes differ");

        // A module without the table is left as it is; a non-ELF is refused.
        let mut plain = module.clone();
        let name_at = 64 + 16 + 8 + 24 + 12; // ".static_call_sites" in .shstrtab
        plain[name_at + 1] = b'S';
        let copy = plain.clone();
        without_static_call_sites(&mut plain, Path::new("m.ko")).unwrap();
        assert_eq!(plain, copy);
        let err = without_static_call_sites(&mut b"MZ".to_vec(), Path::new("x.ko")).unwrap_err();
        assert!(err.to_string().starts_with("x.ko: not a module"), "{err}");
    }

    #[test]
    fn signatures_come_off_and_unsigned_modules_stay_whole() {
        let body = b"\x7fELF module body".to_vec();
        let sig = vec![0x30u8; 681];
        let mut signed = body.clone();
        signed.extend_from_slice(&sig);
        // struct module_signature: algo, hash, id_type, signer_len,
        // key_id_len, 3 pad bytes, big-endian signature length.
        signed.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        signed.extend_from_slice(&(sig.len() as u32).to_be_bytes());
        signed.extend_from_slice(SIGNATURE_MARKER);
        assert_eq!(unsigned(&signed), &body[..]);
        assert_eq!(unsigned(&body), &body[..]);
        // A marker whose length points before the file's start: left alone.
        let mut broken = body.clone();
        broken.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        broken.extend_from_slice(SIGNATURE_MARKER);
        assert_eq!(unsigned(&broken), &broken[..]);
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
