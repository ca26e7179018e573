//! Kernel modules without kmod: the index files depmod wrote, device
//! modaliases from /sys, and finit_module(2).
//!
//! Coldplug runs in rounds because loading a bus driver makes new devices
//! appear (virtio_pci brings the virtio devices whose drivers load next).

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum KmodError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}:{line}: malformed line {text:?}")]
    Malformed {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error("module {0:?} is not in modules.dep")]
    Unknown(String),
    #[error("cannot open module {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("loading {path} failed: {source}")]
    Load { path: PathBuf, source: nix::Error },
}

/// Canonical module name: what the kernel shows in /sys/module (`-` is `_`).
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

fn name_of(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    canonical(stem)
}

#[derive(Debug, Default)]
pub struct ModuleIndex {
    dir: PathBuf,
    /// name -> (path relative to dir, direct and indirect dependencies by name)
    modules: HashMap<String, (String, Vec<String>)>,
    /// Alias patterns grouped by the bus before the first ':' so a device is
    /// matched against its bus's patterns only.
    aliases: HashMap<String, Vec<(String, String)>>,
    builtin: HashSet<String>,
    /// `softdep X pre: A B`: modules to load before X.
    softdep_pre: HashMap<String, Vec<String>>,
}

impl ModuleIndex {
    /// Reads modules.dep (required), modules.alias, modules.builtin and
    /// modules.softdep (optional) from a `/lib/modules/<release>` directory.
    pub fn load(dir: &Path) -> Result<Self, KmodError> {
        let mut idx = ModuleIndex {
            dir: dir.to_path_buf(),
            ..Default::default()
        };
        let dep_path = dir.join("modules.dep");
        let text = read(&dep_path)?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (module, deps) = line.split_once(':').ok_or_else(|| KmodError::Malformed {
                path: dep_path.clone(),
                line: n + 1,
                text: line.to_string(),
            })?;
            let deps = deps.split_whitespace().map(name_of).collect();
            idx.modules
                .insert(name_of(module), (module.trim().to_string(), deps));
        }
        if let Some(text) = read_optional(&dir.join("modules.alias"))? {
            for line in text.lines() {
                let mut words = line.split_whitespace();
                if let (Some("alias"), Some(pattern), Some(module)) =
                    (words.next(), words.next(), words.next())
                {
                    // A pattern whose bus part has wildcards (`acpi*:LNXPWRBN:*`)
                    // could match any bus: it goes in the "" group, tried for all.
                    let bus = pattern.split(':').next().unwrap_or("");
                    let key = if bus.contains(['*', '?', '[']) {
                        ""
                    } else {
                        bus
                    };
                    idx.aliases
                        .entry(key.to_string())
                        .or_default()
                        .push((pattern.to_string(), canonical(module)));
                }
            }
        }
        if let Some(text) = read_optional(&dir.join("modules.builtin"))? {
            idx.builtin = text
                .lines()
                .filter(|l| !l.is_empty())
                .map(name_of)
                .collect();
        }
        if let Some(text) = read_optional(&dir.join("modules.softdep"))? {
            for line in text.lines() {
                let mut words = line.split_whitespace();
                if let (Some("softdep"), Some(module)) = (words.next(), words.next()) {
                    let mut pre = Vec::new();
                    let mut in_pre = false;
                    for w in words {
                        match w {
                            "pre:" => in_pre = true,
                            "post:" => in_pre = false,
                            m if in_pre => pre.push(canonical(m)),
                            _ => {}
                        }
                    }
                    idx.softdep_pre.insert(canonical(module), pre);
                }
            }
        }
        Ok(idx)
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&canonical(name))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.modules.contains_key(&canonical(name))
    }

    /// Module names whose alias patterns match a device's modalias.
    pub fn lookup_alias(&self, modalias: &str) -> Vec<String> {
        let bus = modalias.split(':').next().unwrap_or("");
        let mut found: Vec<String> = self
            .aliases
            .get(bus)
            .into_iter()
            .chain(self.aliases.get("").filter(|_| !bus.is_empty()))
            .flatten()
            .filter(|(pattern, _)| glob_match(pattern.as_bytes(), modalias.as_bytes()))
            .map(|(_, m)| m.clone())
            .collect();
        found.sort();
        found.dedup();
        found
    }

    /// Modules to load before `name` if they can be (`softdep NAME pre:`);
    /// a soft dependency may name an alias (`crc32c`), and one that is not
    /// in the image is skipped.
    pub fn soft_dependencies(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for pre in self.softdep_pre.get(&canonical(name)).into_iter().flatten() {
            if self.modules.contains_key(pre) {
                out.push(pre.clone());
            } else {
                out.extend(self.lookup_alias(pre));
            }
        }
        out
    }

    /// What a name the kernel asks for (`request_module`) means: the module
    /// of that name, or every module with a matching alias (`fs-btrfs`).
    pub fn resolve(&self, name: &str) -> Vec<String> {
        let c = canonical(name);
        if self.modules.contains_key(&c) || self.builtin.contains(&c) {
            vec![c]
        } else {
            self.lookup_alias(name)
        }
    }

    /// The files to load for `name`, dependencies first, each once, skipping
    /// what `loaded` says is already in the kernel.
    pub fn load_order(
        &self,
        name: &str,
        loaded: &HashSet<String>,
    ) -> Result<Vec<PathBuf>, KmodError> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        self.visit(&canonical(name), loaded, &mut seen, &mut order)?;
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        loaded: &HashSet<String>,
        seen: &mut HashSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<(), KmodError> {
        if loaded.contains(name) || self.builtin.contains(name) || !seen.insert(name.to_string()) {
            return Ok(());
        }
        let (path, deps) = self
            .modules
            .get(name)
            .ok_or_else(|| KmodError::Unknown(name.to_string()))?;
        for dep in deps {
            self.visit(dep, loaded, seen, order)?;
        }
        order.push(self.dir.join(path));
        Ok(())
    }
}

fn read(path: &Path) -> Result<String, KmodError> {
    std::fs::read_to_string(path).map_err(|source| KmodError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, KmodError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KmodError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// fnmatch(3) without flags, as modprobe matches aliases: `*`, `?`, `[...]`
/// (with ranges and `!`/`^` negation), everything else literal.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, text index).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p + 1, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = match_class(pattern, p, text[t]) {
                        if matched {
                            p = next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        // An unclosed '[' is a literal.
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[open] == '['`.
/// Returns (matched, index after `]`), or None if the class is not closed.
fn match_class(pattern: &[u8], open: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = open + 1;
    let negate = matches!(pattern.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *pattern.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&hi| hi != b']') {
            let hi = pattern[i + 2];
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
}

/// What a round of loading did, for the console.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    pub failed: Vec<(String, String)>,
    /// Modules whose init said ENODEV: matched by alias (often a CPU feature)
    /// but not for this machine. Not a failure.
    pub not_applicable: Vec<String>,
}

/// Loads modules into the running kernel, remembering what is in already.
pub struct Loader {
    pub index: ModuleIndex,
    loaded: HashSet<String>,
    /// Modules whose soft dependencies were tried already (stops recursion).
    soft_loading: HashSet<String>,
}

impl Loader {
    pub fn new(index: ModuleIndex) -> Self {
        let loaded = std::fs::read_to_string("/proc/modules")
            .map(|t| {
                t.lines()
                    .filter_map(|l| l.split_whitespace().next())
                    .map(canonical)
                    .collect()
            })
            .unwrap_or_default();
        Loader {
            index,
            loaded,
            soft_loading: HashSet::new(),
        }
    }

    /// Loads one module and its dependencies; a module already in the kernel
    /// (or built in) is a success.
    pub fn load(&mut self, name: &str, report: &mut LoadReport) {
        let order = match self.index.load_order(name, &self.loaded) {
            Ok(order) => order,
            Err(e) => {
                report.failed.push((canonical(name), e.to_string()));
                return;
            }
        };
        for path in order {
            let module = name_of(&path.to_string_lossy());
            // Soft dependencies are best effort: a CPU-specific crc32c may
            // refuse this machine while the generic one loads.
            if self.soft_loading.insert(module.clone()) {
                for pre in self.index.soft_dependencies(&module) {
                    if !self.loaded.contains(&pre) {
                        self.load(&pre, report);
                    }
                }
            }
            match finit(&path) {
                Ok(()) => report.loaded.push(module.clone()),
                Err(KmodError::Load {
                    source: nix::Error::ENODEV,
                    ..
                }) => {
                    report.not_applicable.push(module);
                    return;
                }
                Err(e) => {
                    report.failed.push((module, e.to_string()));
                    // Its dependents cannot load either; say so once, here.
                    return;
                }
            }
            self.loaded.insert(module);
        }
    }

    /// Loads the drivers of every device in /sys that wants one, in rounds
    /// until no new device shows up.
    pub fn coldplug(&mut self, sys_devices: &Path) -> LoadReport {
        let mut report = LoadReport::default();
        let mut seen_aliases = HashSet::new();
        for _round in 0..8 {
            let mut wanted = Vec::new();
            for alias in modaliases(sys_devices) {
                if seen_aliases.insert(alias.clone()) {
                    wanted.extend(self.index.lookup_alias(&alias));
                }
            }
            wanted.sort();
            wanted.dedup();
            wanted.retain(|m| !self.loaded.contains(m) && !self.index.is_builtin(m));
            if wanted.is_empty() {
                break;
            }
            for m in wanted {
                self.load(&m, &mut report);
            }
        }
        report
    }
}

fn finit(path: &Path) -> Result<(), KmodError> {
    let file = File::open(path).map_err(|source| KmodError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let params = CString::default();
    match nix::kmod::finit_module(&file, &params, nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::Error::EEXIST) => Ok(()),
        Err(source) => Err(KmodError::Load {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Every `modalias` under /sys/devices, read without following symlinks (the
/// tree has cycles through them).
pub fn modaliases(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() && entry.file_name() == "modalias" {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    let alias = text.trim();
                    if !alias.is_empty() {
                        out.push(alias.to_string());
                    }
                }
            }
        }
    }
    out
}

/// `modprobe [-q] [--] NAME`, as the kernel's request_module() calls it.
/// Exit status 0 when something for NAME is in the kernel afterwards.
pub fn modprobe_main(args: impl Iterator<Item = String>) -> std::process::ExitCode {
    let args: Vec<String> = args.collect();
    let quiet = args.iter().any(|a| a == "-q");
    let Some(name) = args.iter().rfind(|a| !a.starts_with('-')) else {
        eprintln!("usage: modprobe [-q] [--] MODULE");
        return std::process::ExitCode::from(2);
    };
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let index = match ModuleIndex::load(&Path::new("/lib/modules").join(release)) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("modprobe: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut loader = Loader::new(index);
    let mut report = LoadReport::default();
    let wanted = loader.index.resolve(name);
    for m in &wanted {
        loader.load(m, &mut report);
    }
    let present = wanted
        .iter()
        .any(|m| loader.loaded.contains(m) || loader.index.is_builtin(m));
    if !quiet {
        for (m, why) in &report.failed {
            eprintln!("modprobe: {m}: {why}");
        }
    }
    if present {
        std::process::ExitCode::SUCCESS
    } else {
        if !quiet {
            eprintln!("modprobe: nothing in this image provides {name:?}");
        }
        std::process::ExitCode::FAILURE
    }
}

/// The module names in a `modules-load` list: one a line, `#` comments.
pub fn parse_load_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(canonical)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        w(
            "modules.dep",
            "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n\
             kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
             kernel/net/core/failover.ko:\n\
             kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n\
             kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n\
             kernel/net/llc/llc.ko:\n\
             kernel/fs/btrfs/btrfs.ko: kernel/lib/raid6/raid6_pq.ko kernel/crypto/xor.ko\n\
             kernel/lib/raid6/raid6_pq.ko:\n\
             kernel/crypto/xor.ko:\n\
             kernel/crypto/crc32c_intel.ko:\n\
             kernel/crypto/crc32c_generic.ko:\n\
             kernel/drivers/usb/storage/usb-storage.ko:\n",
        );
        w(
            "modules.alias",
            "# Aliases extracted from modules themselves.\n\
             alias virtio:d00000001v* virtio_net\n\
             alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e\n\
             alias usb:v*p*d*dc*dsc*dp*ic08isc06ip50in* usb_storage\n\
             alias usb:v05DCpA[4-7]??d*dc*dsc*dp*ic*isc*ip*in* usb_storage\n\
             alias fs-btrfs btrfs\n\
             alias crc32c crc32c_generic\n\
             alias acpi*:LNXPWRBN:* button\n",
        );
        w(
            "modules.builtin",
            "kernel/drivers/virtio/virtio.ko\nkernel/fs/ext4/ext4.ko\n",
        );
        w(
            "modules.softdep",
            "# Soft dependencies\nsoftdep btrfs pre: crc32c_intel crc32c missing_one\n",
        );
        dir
    }

    fn names(order: &[PathBuf]) -> Vec<String> {
        order
            .iter()
            .map(|p| name_of(&p.to_string_lossy()))
            .collect()
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let dir = fixture();
        let idx = ModuleIndex::load(dir.path()).unwrap();
        let order = idx.load_order("virtio-net", &HashSet::new()).unwrap();
        assert_eq!(names(&order), ["failover", "net_failover", "virtio_net"]);
        assert!(order[2].starts_with(dir.path()));
        assert_eq!(
            names(&idx.load_order("bridge", &HashSet::new()).unwrap()),
            ["llc", "stp", "bridge"]
        );
        let loaded = HashSet::from(["llc".to_string()]);
        assert_eq!(
            names(&idx.load_order("bridge", &loaded).unwrap()),
            ["stp", "bridge"]
        );
    }

    #[test]
    fn softdeps_and_builtins() {
        let idx = ModuleIndex::load(fixture().path()).unwrap();
        assert_eq!(
            names(&idx.load_order("btrfs", &HashSet::new()).unwrap()),
            ["raid6_pq", "xor", "btrfs"]
        );
        assert_eq!(
            idx.soft_dependencies("btrfs"),
            ["crc32c_intel", "crc32c_generic"]
        );
        assert_eq!(idx.resolve("fs-btrfs"), ["btrfs"]);
        assert_eq!(idx.resolve("ext4"), ["ext4"]);
        assert!(idx.resolve("nothing-like-it").is_empty());
        assert!(idx.is_builtin("ext4"));
        assert!(idx.load_order("ext4", &HashSet::new()).unwrap().is_empty());
        assert!(
            matches!(idx.load_order("nope", &HashSet::new()), Err(KmodError::Unknown(n)) if n == "nope")
        );
    }

    #[test]
    fn aliases_match_like_modprobe() {
        let idx = ModuleIndex::load(fixture().path()).unwrap();
        assert_eq!(
            idx.lookup_alias("virtio:d00000001v00001AF4"),
            ["virtio_net"]
        );
        assert_eq!(
            idx.lookup_alias("virtio:d00000002v00001AF4"),
            Vec::<String>::new()
        );
        assert_eq!(
            idx.lookup_alias("pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00"),
            ["e1000e"]
        );
        assert_eq!(
            idx.lookup_alias("usb:v0781p5567d0100dc00dsc00dp00ic08isc06ip50in00"),
            ["usb_storage"]
        );
        assert_eq!(
            idx.lookup_alias("usb:v05DCpA512d0100dc00dsc00dp00ic03isc00ip00in00"),
            ["usb_storage"]
        );
        assert!(idx
            .lookup_alias("usb:v05DCpA812d0100dc00dsc00dp00ic03isc00ip00in00")
            .is_empty());
        assert_eq!(idx.lookup_alias("fs-btrfs"), ["btrfs"]);
        // The bus part of a pattern may itself be a wildcard.
        assert_eq!(idx.lookup_alias("acpi:LNXPWRBN:"), ["button"]);
    }

    #[test]
    fn glob() {
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"a*b*c", b"axxbyyc"));
        assert!(!glob_match(b"a*b*c", b"axxbyy"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(glob_match(b"[!a]x", b"bx"));
        assert!(!glob_match(b"[!a]x", b"ax"));
        assert!(glob_match(b"[]]", b"]"));
        assert!(glob_match(b"[a", b"[a"));
        assert!(!glob_match(b"abc", b"abcd"));
    }

    #[test]
    fn malformed_dep_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("modules.dep"),
            "kernel/a.ko:\nno colon here\n",
        )
        .unwrap();
        let err = ModuleIndex::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("modules.dep:2"), "{err}");
    }

    #[test]
    fn load_list() {
        assert_eq!(
            parse_load_list("loop\n# c\n  br-netfilter # x\n\n"),
            ["loop", "br_netfilter"]
        );
    }

    #[test]
    fn modaliases_are_found_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("pci0000:00/0000:00:03.0");
        std::fs::create_dir_all(dev.join("virtio0")).unwrap();
        std::fs::write(dev.join("modalias"), "pci:v00001AF4d00001000\n").unwrap();
        std::fs::write(dev.join("virtio0/modalias"), "virtio:d00000001v00001AF4\n").unwrap();
        std::os::unix::fs::symlink(dir.path(), dev.join("virtio0/subsystem")).unwrap();
        let mut found = modaliases(dir.path());
        found.sort();
        assert_eq!(
            found,
            ["pci:v00001AF4d00001000", "virtio:d00000001v00001AF4"]
        );
    }

    proptest::proptest! {
        #[test]
        fn glob_never_panics(p in "[a-c*?\\[\\]!^-]{0,12}", t in "[a-c\\[\\]-]{0,12}") {
            let _ = glob_match(p.as_bytes(), t.as_bytes());
        }

        #[test]
        fn literal_patterns_match_only_themselves(t in "[a-z0-9:]{0,20}", u in "[a-z0-9:]{0,20}") {
            proptest::prop_assert_eq!(glob_match(t.as_bytes(), u.as_bytes()), t == u);
        }
    }
}
