//! Kernel modules without kmod: the index files depmod wrote, device
//! modaliases from /sys, and finit_module(2).
//!
//! Coldplug loads each module once its dependencies are in, and goes on
//! with the drivers of the devices that loading brings (virtio_pci brings
//! the virtio devices) while the rest still load: no round waits for the
//! slowest module of the one before.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use thiserror::Error;
use zeronode_types::uevent::{Uevent, UeventSocket};

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

/// Where a word of a text is: byte offset and length.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    /// The place of `word`, a slice of `text`, in `text`.
    fn of(text: &str, word: &str) -> Self {
        Span {
            start: (word.as_ptr() as usize - text.as_ptr() as usize) as u32,
            len: word.len() as u32,
        }
    }

    fn in_text<'a>(&self, text: &'a str) -> &'a str {
        let start = self.start as usize;
        text.get(start..start + self.len as usize)
            .unwrap_or_default()
    }
}

/// One line of modules.alias: `alias PATTERN MODULE`.
#[derive(Debug, Clone, Copy)]
struct AliasAt {
    pattern: Span,
    module: Span,
}

#[derive(Debug, Default)]
pub struct ModuleIndex {
    dir: PathBuf,
    /// name -> (path relative to dir, direct and indirect dependencies by name)
    modules: HashMap<String, (String, Vec<String>)>,
    /// modules.alias as read: `aliases` points into it.
    alias_text: String,
    /// Alias patterns grouped by the bus before the first ':' so a device is
    /// matched against its bus's patterns only. Places in `alias_text`
    /// rather than strings of their own: the system image's ~1800 aliases
    /// were three allocations each, most of the index's 40-55 ms under TCG
    /// on the way to coldplug, and again in every modprobe helper.
    aliases: HashMap<String, Vec<AliasAt>>,
    builtin: HashSet<String>,
    /// `softdep X pre: A B`: modules to load before X.
    softdep_pre: HashMap<String, Vec<String>>,
    /// The CPU feature patterns (`cpu:type:x86,...:feature:*0094*`) of
    /// modules that name some: they are for CPUs with those features.
    cpu_aliases: HashMap<String, Vec<String>>,
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
            let deps = deps.split_ascii_whitespace().map(name_of).collect();
            idx.modules
                .insert(name_of(module), (module.trim().to_string(), deps));
        }
        if let Some(text) = read_optional(&dir.join("modules.alias"))? {
            for line in text.lines() {
                let mut words = line.split_ascii_whitespace();
                if let (Some("alias"), Some(pattern), Some(module)) =
                    (words.next(), words.next(), words.next())
                {
                    // A pattern whose bus part has wildcards (`acpi*:LNXPWRBN:*`)
                    // could match any bus: it goes in the "" group, tried for all.
                    let bus = pattern.split(':').next().unwrap_or("");
                    if bus == "cpu" {
                        idx.cpu_aliases
                            .entry(canonical(module))
                            .or_default()
                            .push(pattern.to_string());
                    }
                    let key = if bus.contains(['*', '?', '[']) {
                        ""
                    } else {
                        bus
                    };
                    let at = AliasAt {
                        pattern: Span::of(&text, pattern),
                        module: Span::of(&text, module),
                    };
                    match idx.aliases.get_mut(key) {
                        Some(group) => group.push(at),
                        None => {
                            idx.aliases.insert(key.to_string(), vec![at]);
                        }
                    }
                }
            }
            idx.alias_text = text;
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
                let mut words = line.split_ascii_whitespace();
                if let (Some("softdep"), Some(module)) = (words.next(), words.next()) {
                    let mut pre = Vec::new();
                    let mut in_pre = false;
                    for w in words {
                        match w {
                            "pre:" => in_pre = true,
                            "post:" => in_pre = false,
                            // As written: an alias keeps its dashes.
                            m if in_pre => pre.push(m.to_string()),
                            _ => {}
                        }
                    }
                    idx.softdep_pre
                        .entry(canonical(module))
                        .or_default()
                        .extend(pre);
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
            .filter(|a| {
                glob_match(
                    a.pattern.in_text(&self.alias_text).as_bytes(),
                    modalias.as_bytes(),
                )
            })
            .map(|a| canonical(a.module.in_text(&self.alias_text)))
            .collect();
        found.sort();
        found.dedup();
        found
    }

    /// Whether `name` is for CPUs with features this one (`cpu`, the CPU's
    /// modalias) lacks: it names CPU features by alias and none matches.
    /// Its init would say ENODEV, but only after the kernel read, relocated
    /// and linked it: a third of a second for crc32c_intel under emulation
    /// (no SSE4.2), taken from the boot's way to ready.
    pub fn for_other_cpu(&self, name: &str, cpu: &str) -> bool {
        self.cpu_aliases
            .get(&canonical(name))
            .is_some_and(|ps| !ps.iter().any(|p| glob_match(p.as_bytes(), cpu.as_bytes())))
    }

    /// Modules to load before `name` if they can be (`softdep NAME pre:`);
    /// a soft dependency may name an alias (`crc32c`), and one that is not
    /// in the image is skipped.
    pub fn soft_dependencies(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for pre in self.softdep_pre.get(&canonical(name)).into_iter().flatten() {
            let module = canonical(pre);
            if self.modules.contains_key(&module) {
                out.push(module);
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

    /// What loading `roots` takes: every module not `present` with its file
    /// and its hard and soft dependencies, the names this index lacks, and
    /// the modules left out as made for other CPUs (with what only they
    /// needed), judged against `cpu`, the CPU's modalias, when known.
    pub fn plan(
        &self,
        roots: Vec<String>,
        present: impl Fn(&str) -> bool,
        cpu: Option<&str>,
    ) -> (BTreeMap<String, Planned>, Vec<String>, Vec<String>) {
        let mut plan = BTreeMap::new();
        let mut unknown = Vec::new();
        let mut other_cpu = Vec::new();
        let mut stack = roots;
        while let Some(m) = stack.pop() {
            if present(&m)
                || plan.contains_key(&m)
                || unknown.contains(&m)
                || other_cpu.contains(&m)
            {
                continue;
            }
            if cpu.is_some_and(|c| self.for_other_cpu(&m, c)) {
                other_cpu.push(m);
                continue;
            }
            let Some((path, hard)) = self.modules.get(&m) else {
                unknown.push(m);
                continue;
            };
            let soft = self.soft_dependencies(&m);
            stack.extend(hard.iter().cloned());
            stack.extend(soft.iter().cloned());
            plan.insert(
                m,
                Planned {
                    path: self.dir.join(path),
                    hard: hard.clone(),
                    soft,
                },
            );
        }
        (plan, unknown, other_cpu)
    }
}

/// One module of a load plan.
#[derive(Debug)]
pub struct Planned {
    pub path: PathBuf,
    pub hard: Vec<String>,
    /// Loaded first when they can be; their failure stops nothing.
    pub soft: Vec<String>,
}

/// The modules of `plan` whose dependencies are all `settled` (in, or
/// given up on): what can load now, side by side. Workers take them in
/// this order, so those the most planned modules wait for come first,
/// then by name: in name order the input drivers (button, evdev) held both
/// workers at boot while virtio, which the disks and NICs wait for, queued
/// behind them (~170 ms under TCG).
pub fn next_wave(plan: &BTreeMap<String, Planned>, settled: impl Fn(&str) -> bool) -> Vec<String> {
    let mut wave: Vec<(usize, &String)> = plan
        .iter()
        .filter(|(_, p)| p.hard.iter().chain(&p.soft).all(|d| settled(d)))
        .map(|(n, _)| (waiting_for(plan, n), n))
        .collect();
    wave.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    wave.into_iter().map(|(_, n)| n.clone()).collect()
}

/// How many modules of `plan` wait for `module`, directly or through others.
fn waiting_for(plan: &BTreeMap<String, Planned>, module: &str) -> usize {
    let mut seen: HashSet<&str> = HashSet::new();
    let mut todo = vec![module];
    while let Some(m) = todo.pop() {
        for (n, p) in plan {
            if p.hard.iter().chain(&p.soft).any(|d| d == m) && seen.insert(n) {
                todo.push(n);
            }
        }
    }
    seen.len()
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

impl LoadReport {
    /// On the console: counts, failures as warnings, names with
    /// zeronode.debug.
    pub fn log(&self, what: &str) {
        tracing::info!(
            "{what}: {} loaded, {} failed, {} not for this hardware",
            self.loaded.len(),
            self.failed.len(),
            self.not_applicable.len()
        );
        tracing::debug!("{what} loaded: {}", self.loaded.join(" "));
        tracing::debug!(
            "{what} not for this hardware: {}",
            self.not_applicable.join(" ")
        );
        for (module, reason) in &self.failed {
            tracing::warn!("module {module}: {reason}");
        }
    }
}

/// The running CPU's modalias (vendor, family, model and feature numbers),
/// under /sys.
const CPU_MODALIAS: &str = "devices/system/cpu/modalias";

/// Loads modules into the running kernel, remembering what is in already.
pub struct Loader {
    /// Shared: PID 1's loaders (early list, coldplug, hotplug) read one copy.
    pub index: Arc<ModuleIndex>,
    loaded: HashSet<String>,
    /// The CPU's modalias (its vendor, family, model and features), to
    /// leave out modules made for other CPUs; None when /sys lacks it.
    cpu: Option<String>,
    /// Ask the kernel to probe devices asynchronously (the generic
    /// `async_probe` module parameter): finit_module then returns without
    /// waiting for slow probes (libata's port scan takes a third of a second
    /// under emulation), and the devices announce themselves as uevents.
    async_probe: bool,
    /// finit_module's threads: one a CPU.
    workers: usize,
    /// What loads one module: `finit`, or a stand-in in tests.
    load_one: LoadOne,
    /// The kernel's list of modules in (/proc/modules; none in tests).
    proc_modules: PathBuf,
    /// Parameters the kernel command line gives modules (see
    /// [`cmdline_params`]).
    params: Arc<HashMap<String, String>>,
}

/// Loads one module file with a parameter string.
type LoadOne = fn(&Path, &str) -> Result<(), KmodError>;

impl Loader {
    pub fn new(index: impl Into<Arc<ModuleIndex>>) -> Self {
        let index = index.into();
        let proc_modules = PathBuf::from("/proc/modules");
        let loaded = std::fs::read_to_string(&proc_modules)
            .map(|t| live_modules(&t))
            .unwrap_or_default();
        let cpu = std::fs::read_to_string(Path::new("/sys").join(CPU_MODALIAS))
            .ok()
            .map(|t| t.trim().to_string());
        Loader {
            index,
            loaded,
            cpu,
            async_probe: false,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_one: finit,
            proc_modules,
            params: cmdline_module_params(),
        }
    }

    /// See [`Loader::async_probe`]; coldplug wants it, `modprobe` (whose
    /// caller needs the module working on return) does not.
    pub fn with_async_probe(mut self) -> Self {
        self.async_probe = true;
        self
    }

    /// Whether `name` is in the kernel: loaded (by anyone) or built in.
    pub fn present(&self, name: &str) -> bool {
        self.loaded.contains(name) || self.index.is_builtin(name)
    }

    /// Loads one module and what it depends on.
    pub fn load(&mut self, name: &str, report: &mut LoadReport) {
        self.load_many(vec![canonical(name)], report);
    }

    /// Loads modules and their dependencies, each as soon as what it
    /// depends on is in, on all CPUs at once (module loading is mostly
    /// signature checks and relocation, and under emulation it is the
    /// longest part of the boot). A module already in the kernel, or built
    /// in, is a success. Soft dependencies go first but their failure stops
    /// nothing.
    pub fn load_many(&mut self, roots: Vec<String>, report: &mut LoadReport) {
        let (events, heard) = mpsc::channel();
        self.load_streaming(roots, report, events, &heard, None);
    }

    /// Loads `fixed` and the drivers of every device in /sys that wants
    /// one, and of every device that shows up meanwhile, until no new
    /// device has come for a while. Returns what came too late for that:
    /// hand it to [`Loader::hotplug`] so later devices get drivers too.
    pub fn coldplug(&mut self, sys: &Path, fixed: &[String]) -> (LoadReport, LateDevices) {
        let mut report = LoadReport::default();
        let started = std::time::Instant::now();
        // Loading a bus driver makes devices appear (virtio_pci brings the
        // virtio devices), probed asynchronously: the kernel announces each
        // one as a uevent, so listen before loading anything, and load each
        // new device's driver while the rest still load.
        let uevents = Uevents::open()
            .map_err(|e| tracing::warn!("no uevent socket ({e}): late devices may lack drivers"))
            .ok();
        let mut roots = fixed.to_vec();
        let mut devices = Devices::default();
        let t = std::time::Instant::now();
        let found = modaliases(sys);
        tracing::debug!(
            "coldplug: {} devices scanned in {} ms",
            found.len(),
            t.elapsed().as_millis()
        );
        devices.awaiting = Some(Vec::new());
        roots.extend(devices.drivers(&self.index, found));
        let (events, heard) = mpsc::channel();
        let stop = Stop::new();
        let mut rescan = uevents.is_none() || stop.is_none();
        std::thread::scope(|scope| {
            if let (Some(u), Some(stop)) = (&uevents, &stop) {
                let events = events.clone();
                scope.spawn(move || u.forward(&events, stop));
            }
            let hotplug = Hotplug {
                sys,
                devices: &mut devices,
                // Without the socket, or when it lost events, /sys is read again.
                rescan: &mut rescan,
            };
            self.load_streaming(roots, &mut report, events, &heard, Some(hotplug));
            if let Some(stop) = &stop {
                stop.fire();
            }
        });
        // Binding matters only until services start: the hotplug listener
        // does not wait for it.
        devices.awaiting = None;
        let mut late = LateDevices {
            uevents,
            devices,
            pending: Vec::new(),
            rescan,
            sys: sys.to_path_buf(),
        };
        // What the uevent thread read after the last look: not lost, it
        // is the hotplug listener's first work.
        heard.try_iter().for_each(|e| late.hear(e));
        tracing::debug!(
            "coldplug: {} ms scanning /sys, loading and settling",
            started.elapsed().as_millis()
        );
        (report, late)
    }

    /// Loads the drivers of devices that come after coldplug, for as long
    /// as PID 1 runs: a SATA disk found by AHCI's asynchronous port scan
    /// (sd_mod), a USB stick (usb_storage), a disk or NIC hot-plugged.
    /// Returns only if the uevent socket fails.
    pub fn hotplug(&mut self, mut late: LateDevices) {
        let Some(uevents) = late.uevents.take() else {
            return tracing::warn!("no uevent socket: devices added from now on get no driver");
        };
        let Some(stop) = Stop::new() else { return };
        let (events, heard) = mpsc::channel();
        std::thread::scope(|scope| {
            let stop = &stop;
            // The forwarder owns the only sender: serve_hotplug returns
            // once the forwarder has ended.
            scope.spawn(move || uevents.forward(&events, stop));
            self.serve_hotplug(&mut late, &heard);
        });
        tracing::warn!("the uevent listener stopped: devices added from now on get no driver");
    }

    /// The loop behind `hotplug`: `heard` carries the uevent thread's
    /// events; returns once it is closed.
    fn serve_hotplug(&mut self, late: &mut LateDevices, heard: &mpsc::Receiver<Event>) {
        loop {
            if std::mem::take(&mut late.rescan) {
                late.pending.extend(modaliases(&late.sys));
            }
            let found = late.devices.drivers(&self.index, late.pending.drain(..));
            if !found.is_empty() {
                // Other threads load modules too (the fixed list): what is
                // in already is not loaded, nor reported, again.
                if let Ok(t) = std::fs::read_to_string(&self.proc_modules) {
                    self.loaded.extend(live_modules(&t));
                }
                let mut report = LoadReport::default();
                self.load_many(found, &mut report);
                if !(report.loaded.is_empty() && report.failed.is_empty()) {
                    report.log("hotplug");
                }
            }
            match heard.recv() {
                Ok(event) => late.hear(event),
                Err(_) => return,
            }
            // A burst (a USB hub and its devices) loads as one plan.
            heard.try_iter().for_each(|e| late.hear(e));
        }
    }

    /// The scheduler behind `load_many` and `coldplug`: workers run
    /// finit_module; this thread hands each module to them once its
    /// dependencies are in, and with `hotplug` adds the drivers of devices
    /// that show up, until nothing loads and no device comes for a while:
    /// `BOUND_QUIET` once every device a module was loaded for has its
    /// driver, else `UEVENT_IDLE` (at most `UEVENT_SETTLE_MAX` of such
    /// waiting).
    fn load_streaming(
        &mut self,
        roots: Vec<String>,
        report: &mut LoadReport,
        events: mpsc::Sender<Event>,
        heard: &mpsc::Receiver<Event>,
        mut hotplug: Option<Hotplug<'_>>,
    ) {
        let (workers, load_one) = (self.workers, self.load_one);
        let async_probe = self.async_probe;
        let params = Arc::clone(&self.params);
        let params = &*params;
        let mut run = Schedule::default();
        run.add(self, roots, report);
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = std::sync::Mutex::new(queue);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                let events = events.clone();
                let queue = &queue;
                scope.spawn(move || loop {
                    let job = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    let Ok((m, path)) = job else { return };
                    let result = load_one(&path, &param_string(async_probe, params.get(&m)));
                    if events.send(Event::Loaded(m, result)).is_err() {
                        return;
                    }
                });
            }
            drop(events);
            let mut waited = std::time::Duration::ZERO;
            let mut quiet_since = std::time::Instant::now();
            let mut looked_again = false;
            loop {
                run.dispatch(self, &jobs, report);
                let event = if !run.in_flight.is_empty() {
                    match heard.recv() {
                        Ok(e) => e,
                        Err(_) => break,
                    }
                } else {
                    run.fail_stuck(report);
                    let Some(h) = hotplug.as_mut() else { break };
                    if waited >= UEVENT_SETTLE_MAX {
                        break;
                    }
                    // A driver loaded asynchronously probes after
                    // finit_module returns, and what it finds (virtio_pci's
                    // disks and NICs) is announced then: until the devices
                    // it was loaded for are bound, more may come.
                    let unbound = h.devices.unbound(h.sys, &report.loaded);
                    let quiet = if unbound == 0 {
                        BOUND_QUIET
                    } else {
                        UEVENT_IDLE
                    };
                    let left = quiet.saturating_sub(quiet_since.elapsed());
                    let t = std::time::Instant::now();
                    let e = heard.recv_timeout(left.min(BIND_POLL));
                    waited += t.elapsed();
                    match e {
                        Ok(e) => e,
                        Err(mpsc::RecvTimeoutError::Timeout) if quiet_since.elapsed() < quiet => {
                            continue
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) if *h.rescan => {
                            *h.rescan = false;
                            let found = h.devices.drivers(&self.index, modaliases(h.sys));
                            run.add(self, found, report);
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            // A device whose uevent is still on its way to
                            // the uevent thread (starved on a busy machine)
                            // is in /sys already: one last look before done.
                            // Without it a disk's driver could come after
                            // storage had looked, and the node cache went
                            // to tmpfs (a new node key after a reset).
                            if !looked_again {
                                looked_again = true;
                                let found = h.devices.drivers(&self.index, modaliases(h.sys));
                                if !found.is_empty() {
                                    run.add(self, found, report);
                                    quiet_since = std::time::Instant::now();
                                    continue;
                                }
                            }
                            if unbound > 0 {
                                tracing::debug!(
                                    "coldplug: {unbound} device(s) still without the driver loaded for them after {} ms quiet",
                                    quiet.as_millis()
                                );
                            }
                            break;
                        }
                        Err(_) => break,
                    }
                };
                quiet_since = std::time::Instant::now();
                match event {
                    Event::Loaded(m, result) => run.finish(self, m, result, report),
                    Event::Device(device) => {
                        if let Some(h) = hotplug.as_mut() {
                            let found = h.devices.drivers(&self.index, [device]);
                            run.add(self, found, report);
                        }
                    }
                    Event::Overflow => {
                        if let Some(h) = hotplug.as_mut() {
                            *h.rescan = true;
                        }
                    }
                }
            }
            drop(jobs);
        });
    }

    /// The modules the CPU's features ask for (kvm_amd, kvm_intel, crypto
    /// accelerators...). No device waits on them, so PID 1 loads them
    /// beside the supervisor rather than before it: kvm alone is a fifth of
    /// coldplug under emulation.
    pub fn cpu_feature_modules(&self, sys: &Path) -> Vec<String> {
        // The cpu subsystem's root holds the features' modalias, and is on
        // none of the lists `modaliases` reads.
        std::fs::read_to_string(sys.join(CPU_MODALIAS))
            .map(|t| self.index.lookup_alias(t.trim()))
            .unwrap_or_default()
    }
}

/// A module for a worker: its name and its file.
type Job = (String, PathBuf);

/// What the scheduler hears.
enum Event {
    /// A worker's finit_module ended.
    Loaded(String, Result<(), KmodError>),
    /// A device was added.
    Device(Device),
    /// The uevent socket dropped messages (its buffer was full).
    Overflow,
}

/// Where coldplug finds more devices while it loads.
struct Hotplug<'a> {
    sys: &'a Path,
    devices: &'a mut Devices,
    /// Read /sys again when things are quiet: uevents were lost or never heard.
    rescan: &'a mut bool,
}

/// What coldplug leaves to the hotplug listener: its uevent socket (the
/// kernel keeps queueing on it in between), the devices it matched, and
/// what it heard after its last look.
pub struct LateDevices {
    uevents: Option<Uevents>,
    devices: Devices,
    pending: Vec<Device>,
    /// Events were lost (or never heard): read /sys again first.
    rescan: bool,
    sys: PathBuf,
}

impl LateDevices {
    /// Notes what the uevent thread sent, for the next plan.
    fn hear(&mut self, event: Event) {
        match event {
            Event::Device(device) => self.pending.push(device),
            Event::Overflow => self.rescan = true,
            Event::Loaded(..) => {}
        }
    }
}

/// A device that may want a driver: its modalias, and its directory
/// relative to /sys (through a bus or class list, or the uevent's DEVPATH).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub alias: String,
    pub dir: PathBuf,
}

/// The devices coldplug and hotplug have matched, by modalias.
#[derive(Default)]
struct Devices {
    /// Each modalias seen, with its modules: looking one up is a glob
    /// match over all of modules.alias, once a modalias.
    seen: HashMap<String, Vec<String>>,
    /// While coldplug runs: devices with matching modules, whose binding
    /// `unbound` watches, with those modules.
    awaiting: Option<Vec<(PathBuf, Vec<String>)>>,
}

impl Devices {
    /// The drivers of the aliases not seen before.
    fn drivers(
        &mut self,
        index: &ModuleIndex,
        found: impl IntoIterator<Item = Device>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for device in found {
            let modules = match self.seen.entry(device.alias) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(new) => {
                    let modules = index.lookup_alias(new.key());
                    out.extend(modules.iter().cloned());
                    new.insert(modules)
                }
            };
            if let (Some(awaiting), false) = (self.awaiting.as_mut(), modules.is_empty()) {
                awaiting.push((device.dir, modules.clone()));
            }
        }
        out
    }

    /// How many devices that a module of `loaded` was loaded for have no
    /// driver yet; forgets those that do, and those whose modules were not
    /// loaded here (in already, or failed): they wait for nothing. A class
    /// device (an input device, which evdev serves) is never bound.
    fn unbound(&mut self, sys: &Path, loaded: &[String]) -> usize {
        let Some(awaiting) = self.awaiting.as_mut() else {
            return 0;
        };
        awaiting.retain(|(dir, modules)| {
            let dir = sys.join(dir);
            modules.iter().any(|m| loaded.contains(m))
                && std::fs::read_link(dir.join("subsystem"))
                    .is_ok_and(|s| s.to_string_lossy().contains("/bus/"))
                && !dir.join("driver").exists()
        });
        awaiting.len()
    }
}

/// One `load_streaming` run's book: what waits for its dependencies, what
/// the workers have, what failed.
#[derive(Default)]
struct Schedule {
    plan: BTreeMap<String, Planned>,
    in_flight: HashSet<String>,
    failed: HashSet<String>,
}

impl Schedule {
    /// Plans `roots` and the dependencies not in, planned or loading yet.
    fn add(&mut self, loader: &Loader, roots: Vec<String>, report: &mut LoadReport) {
        let (plan, unknown, other_cpu) = loader.index.plan(
            roots,
            |m| {
                loader.present(m)
                    || self.plan.contains_key(m)
                    || self.in_flight.contains(m)
                    || self.failed.contains(m)
            },
            loader.cpu.as_deref(),
        );
        for m in other_cpu {
            report.not_applicable.push(m.clone());
            self.failed.insert(m);
        }
        for m in unknown {
            report
                .failed
                .push((m.clone(), KmodError::Unknown(m.clone()).to_string()));
            self.failed.insert(m);
        }
        self.plan.extend(plan);
    }

    /// Fails every planned module whose dependencies are settled and one of
    /// them failed, then hands each idle worker the first of the modules
    /// that can load now. Only idle workers get one: a module that becomes
    /// loadable later (virtio_pci once virtio is in) then goes before the
    /// input drivers that could load from the start, instead of queueing
    /// behind all of them.
    fn dispatch(&mut self, loader: &mut Loader, jobs: &mpsc::Sender<Job>, report: &mut LoadReport) {
        let settled = |s: &Self, d: &str| loader.present(d) || s.failed.contains(d);
        loop {
            let doomed: Vec<(String, String)> = self
                .plan
                .iter()
                .filter(|(_, p)| p.hard.iter().chain(&p.soft).all(|d| settled(self, d)))
                .filter_map(|(m, p)| {
                    let d = p.hard.iter().find(|d| self.failed.contains(*d))?;
                    Some((m.clone(), d.clone()))
                })
                .collect();
            if doomed.is_empty() {
                break;
            }
            // Their dependents may fail now too: hence the loop.
            for (m, d) in doomed {
                self.plan.remove(&m);
                report
                    .failed
                    .push((m.clone(), format!("needs {d}, which did not load")));
                self.failed.insert(m);
            }
        }
        let idle = loader.workers.saturating_sub(self.in_flight.len());
        if idle == 0 {
            // Every worker busy: ranking what can load (a walk of the plan
            // for each) would be thrown away on every uevent.
            return;
        }
        let ready = next_wave(&self.plan, |d| settled(self, d));
        for m in ready.into_iter().take(idle) {
            let Some(Planned { path, .. }) = self.plan.remove(&m) else {
                continue;
            };
            if jobs.send((m.clone(), path)).is_ok() {
                self.in_flight.insert(m);
            }
        }
    }

    fn finish(
        &mut self,
        loader: &mut Loader,
        m: String,
        result: Result<(), KmodError>,
        report: &mut LoadReport,
    ) {
        self.in_flight.remove(&m);
        match result {
            Ok(()) => {
                report.loaded.push(m.clone());
                loader.loaded.insert(m);
            }
            Err(KmodError::Load {
                source: nix::Error::ENODEV,
                ..
            }) => {
                report.not_applicable.push(m.clone());
                self.failed.insert(m);
            }
            Err(e) => {
                report.failed.push((m.clone(), e.to_string()));
                self.failed.insert(m);
            }
        }
    }

    /// With nothing loading, what is still planned waits on itself: only a
    /// dependency cycle in modules.dep does that.
    fn fail_stuck(&mut self, report: &mut LoadReport) {
        for (m, _) in std::mem::take(&mut self.plan) {
            report
                .failed
                .push((m.clone(), "circular module dependencies".into()));
            self.failed.insert(m);
        }
    }
}

/// Tells the uevent thread to end: a pipe its poll also watches.
struct Stop {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
}

impl Stop {
    fn new() -> Option<Self> {
        match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok((read, write)) => Some(Stop { read, write }),
            Err(e) => {
                tracing::warn!("no pipe to stop the uevent listener ({e})");
                None
            }
        }
    }

    fn fire(&self) {
        let _ = nix::unistd::write(&self.write, b"x");
    }
}

/// The modules of a /proc/modules text that are in and working. One still
/// `Loading` (its init running in another process: the early list's btrfs
/// while storage mounts a pool) is not: loading it again makes the kernel
/// wait for that init to end, which is what a `modprobe` caller needs
/// before it uses the module.
pub fn live_modules(proc_modules: &str) -> HashSet<String> {
    proc_modules
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // name size refcount users state address
            match f.get(4) {
                Some(&"Live") => Some(canonical(f[0])),
                _ => None,
            }
        })
        .collect()
}

/// How long the uevent stream must bring no device that wants a driver for
/// coldplug to be done.
const UEVENT_IDLE: std::time::Duration = std::time::Duration::from_millis(150);
/// How long no device must come once every device a module was loaded for
/// is bound: only what a probe that just ended announced can still be on
/// its way to the uevent thread.
const BOUND_QUIET: std::time::Duration = std::time::Duration::from_millis(30);
/// How often, until then, coldplug looks at the devices' binding.
const BIND_POLL: std::time::Duration = std::time::Duration::from_millis(10);
/// And the most coldplug waits for it, whatever the hardware keeps saying.
const UEVENT_SETTLE_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// The kernel's uevent broadcast, as coldplug and hotplug read it.
pub struct Uevents {
    socket: UeventSocket,
}

impl Uevents {
    pub fn open() -> nix::Result<Self> {
        Ok(Uevents {
            socket: UeventSocket::open()?,
        })
    }

    /// Sends the modalias of every device added as an `Event::Device`
    /// until `stop` fires. Other events (a module loaded, a disk's
    /// partitions, a NIC's net device) need no driver, and the early
    /// module list's loads send a stream of them.
    fn forward(&self, events: &mpsc::Sender<Event>, stop: &Stop) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let mut fds = [
                PollFd::new(self.socket.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop.read.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(_) => return,
            }
            if fds[1].any().unwrap_or(true) {
                return;
            }
            loop {
                let message = match self.socket.recv(&mut buf) {
                    Ok([]) | Err(nix::Error::EAGAIN) => break,
                    Ok(msg) => added_device(msg).map(Event::Device),
                    Err(nix::Error::ENOBUFS) => Some(Event::Overflow),
                    Err(nix::Error::EINTR) => continue,
                    Err(_) => return,
                };
                if let Some(m) = message {
                    if events.send(m).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// The device of an `add` uevent (`add@/devices/...\0KEY=value\0...`)
/// with a MODALIAS.
pub fn added_device(msg: &[u8]) -> Option<Device> {
    let event = Uevent::parse(msg).filter(|e| e.action == "add")?;
    Some(Device {
        alias: event.get("MODALIAS")?.to_string(),
        dir: PathBuf::from(event.devpath.trim_start_matches('/')),
    })
}

/// Module parameters the kernel command line gives (`loop.max_loop=0`),
/// applied as each module loads, as modprobe does: module name ->
/// `param=value param2`. The kernel applies such words itself only to
/// built-in modules.
pub fn cmdline_params(cmdline: &str) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    for word in zeronode_types::boot_config::split(cmdline) {
        let key = word.split('=').next().unwrap_or_default();
        let Some((module, param)) = key.split_once('.') else {
            continue;
        };
        // zeronode.* are PID 1's own keys (boot_config), not a module's.
        if module.is_empty() || param.is_empty() || module == "zeronode" {
            continue;
        }
        let setting = &word[module.len() + 1..];
        // A value the command line quoted keeps its quotes for the
        // kernel's parser.
        let setting = match setting.split_once('=') {
            Some((p, v)) if v.contains(char::is_whitespace) => format!("{p}=\"{v}\""),
            _ => setting.to_string(),
        };
        let all = out.entry(canonical(module)).or_default();
        if !all.is_empty() {
            all.push(' ');
        }
        all.push_str(&setting);
    }
    out
}

/// [`cmdline_params`] of /proc/cmdline, read once a process: PID 1 makes
/// a loader for stage 1, the early list, coldplug and hotplug, and the
/// command line does not change while it runs. A failed read (no /proc
/// yet) is not kept.
fn cmdline_module_params() -> Arc<HashMap<String, String>> {
    static PARAMS: std::sync::OnceLock<Arc<HashMap<String, String>>> = std::sync::OnceLock::new();
    if let Some(p) = PARAMS.get() {
        return Arc::clone(p);
    }
    match std::fs::read_to_string("/proc/cmdline") {
        Ok(c) => Arc::clone(PARAMS.get_or_init(|| Arc::new(cmdline_params(&c)))),
        Err(_) => Arc::default(),
    }
}

/// What finit_module gets: the generic `async_probe` and the command
/// line's parameters for the module.
fn param_string(async_probe: bool, cmdline: Option<&String>) -> String {
    let words = async_probe
        .then_some("async_probe")
        .into_iter()
        .chain(cmdline.map(String::as_str));
    words.collect::<Vec<_>>().join(" ")
}

fn finit(path: &Path, params: &str) -> Result<(), KmodError> {
    let file = File::open(path).map_err(|source| KmodError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    // /proc/cmdline holds no NUL; an empty string is the fallback anyway.
    let c_params = CString::new(params).unwrap_or_default();
    let t = std::time::Instant::now();
    let r = nix::kmod::finit_module(&file, &c_params, nix::kmod::ModuleInitFlags::empty());
    tracing::debug!(
        "{}{}: {} ms",
        name_of(&path.to_string_lossy()),
        if params.is_empty() {
            String::new()
        } else {
            format!(" ({params})")
        },
        t.elapsed().as_millis()
    );
    match r {
        Ok(()) | Err(nix::Error::EEXIST) => Ok(()),
        Err(source) => Err(KmodError::Load {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Every device's `modalias`, found through the flat lists the kernel
/// keeps (`/sys/bus/*/devices/*` and `/sys/class/*/*`, symlinks to the
/// devices) rather than a walk of the whole /sys/devices tree: a few hundred
/// reads instead of thousands, which shows under emulation.
pub fn modaliases(sys: &Path) -> Vec<Device> {
    let mut out = Vec::new();
    let groups = [
        (sys.join("bus"), Some("devices")),
        (sys.join("class"), None),
    ];
    for (top, sub) in groups {
        let Ok(kinds) = std::fs::read_dir(&top) else {
            continue;
        };
        for kind in kinds.flatten() {
            let dir = match sub {
                Some(s) => kind.path().join(s),
                None => kind.path(),
            };
            let Ok(devices) = std::fs::read_dir(&dir) else {
                continue;
            };
            for dev in devices.flatten() {
                if let Ok(text) = std::fs::read_to_string(dev.path().join("modalias")) {
                    let alias = text.trim();
                    if let (false, Ok(dir)) = (alias.is_empty(), dev.path().strip_prefix(sys)) {
                        out.push(Device {
                            alias: alias.to_string(),
                            dir: dir.to_path_buf(),
                        });
                    }
                }
            }
        }
    }
    out
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

    #[test]
    fn a_module_still_loading_is_not_counted_as_loaded() {
        let text = "btrfs 1785856 0 - Loading 0x0000000000000000\n\
                    virtio_net 61440 0 - Live 0x0000000000000000\n\
                    raid6_pq 122880 1 btrfs, Live 0x0000000000000000\n\
                    old_mod 4096 0 - Unloading 0x0000000000000000\n";
        let live = live_modules(text);
        assert!(live.contains("virtio_net") && live.contains("raid6_pq"));
        assert!(!live.contains("btrfs"), "{live:?}");
        assert!(!live.contains("old_mod"), "{live:?}");
    }

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
             kernel/drivers/usb/storage/usb-storage.ko:\n\
             kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko:\n",
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
             alias crypto-crc32c crc32c_generic\n\
             alias acpi*:LNXPWRBN:* button\n",
        );
        w(
            "modules.builtin",
            "kernel/drivers/virtio/virtio.ko\nkernel/fs/ext4/ext4.ko\n",
        );
        w(
            "modules.softdep",
            // depmod writes a line for each MODULE_SOFTDEP of a module.
            "# Soft dependencies\nsoftdep btrfs pre: crc32c_intel\nsoftdep btrfs pre: crypto-crc32c missing_one\n",
        );
        dir
    }

    /// The waves `load_many` would run if every module loaded.
    fn waves(idx: &ModuleIndex, root: &str, present: &[&str]) -> Vec<Vec<String>> {
        let (mut plan, unknown, _) =
            idx.plan(vec![canonical(root)], |m| present.contains(&m), None);
        assert!(unknown.is_empty(), "{unknown:?}");
        let mut done: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        while !plan.is_empty() {
            let wave = next_wave(&plan, |d| done.contains(d) || present.contains(&d));
            assert!(!wave.is_empty(), "stuck with {plan:?}");
            for m in &wave {
                plan.remove(m);
                done.insert(m.clone());
            }
            out.push(wave);
        }
        out
    }

    #[test]
    fn what_more_modules_wait_for_loads_first() {
        let planned = |deps: &[&str]| Planned {
            path: PathBuf::new(),
            hard: deps.iter().map(|d| d.to_string()).collect(),
            soft: vec![],
        };
        let plan: BTreeMap<String, Planned> = [
            ("button", planned(&[])),
            ("evdev", planned(&[])),
            ("virtio", planned(&[])),
            ("virtio_ring", planned(&["virtio"])),
            ("virtio_pci", planned(&["virtio", "virtio_ring"])),
            ("virtio_blk", planned(&["virtio_pci"])),
            ("scsi_common", planned(&[])),
            ("scsi_mod", planned(&["scsi_common"])),
        ]
        .into_iter()
        .map(|(n, p)| (n.to_string(), p))
        .collect();
        assert_eq!(waiting_for(&plan, "virtio"), 3);
        assert_eq!(
            next_wave(&plan, |_| false),
            ["virtio", "scsi_common", "button", "evdev"]
        );
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let dir = fixture();
        let idx = ModuleIndex::load(dir.path()).unwrap();
        assert_eq!(
            waves(&idx, "virtio-net", &[]),
            [["failover"], ["net_failover"], ["virtio_net"]]
        );
        let (plan, _, _) = idx.plan(vec!["virtio_net".into()], |_| false, None);
        assert!(plan["virtio_net"].path.starts_with(dir.path()));
        assert_eq!(waves(&idx, "bridge", &[]), [["llc"], ["stp"], ["bridge"]]);
        assert_eq!(waves(&idx, "bridge", &["llc"]), [["stp"], ["bridge"]]);
    }

    #[test]
    fn softdeps_and_builtins() {
        let idx = ModuleIndex::load(fixture().path()).unwrap();
        assert_eq!(
            waves(&idx, "btrfs", &[]),
            [
                vec!["crc32c_generic", "crc32c_intel", "raid6_pq", "xor"],
                vec!["btrfs"]
            ]
        );
        assert_eq!(
            idx.soft_dependencies("btrfs"),
            ["crc32c_intel", "crc32c_generic"]
        );
        assert_eq!(idx.resolve("fs-btrfs"), ["btrfs"]);
        assert_eq!(idx.resolve("ext4"), ["ext4"]);
        assert!(idx.resolve("nothing-like-it").is_empty());
        assert!(idx.is_builtin("ext4"));
        let (plan, unknown, _) = idx.plan(
            vec!["ext4".into(), "nope".into()],
            |m| idx.is_builtin(m),
            None,
        );
        assert!(plan.is_empty());
        assert_eq!(unknown, ["nope"]);
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

    /// A device as the lists in /sys or a uevent give it.
    fn device(alias: &str, dir: &str) -> Device {
        Device {
            alias: alias.into(),
            dir: dir.into(),
        }
    }

    #[test]
    fn uevent_device() {
        let add = b"add@/devices/pci0000:00/virtio3\0ACTION=add\0SUBSYSTEM=virtio\0MODALIAS=virtio:d00000003v00001AF4\0SEQNUM=812\0";
        assert_eq!(
            added_device(add),
            Some(device(
                "virtio:d00000003v00001AF4",
                "devices/pci0000:00/virtio3"
            ))
        );
        let remove = b"remove@/devices/x\0ACTION=remove\0MODALIAS=virtio:d1\0";
        assert_eq!(added_device(remove), None);
        assert_eq!(added_device(b"add@/devices/x\0ACTION=add\0"), None);
        assert_eq!(added_device(b""), None);
        // libudev's own messages on the same socket family start otherwise.
        assert_eq!(added_device(b"libudev\0\xfe\xed"), None);
    }

    #[test]
    fn a_failed_module_fails_its_dependents_and_nothing_else() {
        let dir = fixture();
        // The fixture's .ko files do not exist: the kernel is never asked.
        let mut loader = Loader {
            index: ModuleIndex::load(dir.path()).unwrap().into(),
            loaded: HashSet::new(),
            cpu: None,
            async_probe: false,
            workers: 2,
            load_one: finit,
            proc_modules: PathBuf::new(),
            params: Default::default(),
        };
        let mut report = LoadReport::default();
        loader.load_many(
            vec!["virtio_net".into(), "ext4".into(), "ghost".into()],
            &mut report,
        );
        let mut failed: Vec<(String, String)> = report.failed.clone();
        failed.sort();
        assert!(report.loaded.is_empty());
        assert_eq!(failed.len(), 4, "{failed:?}");
        assert!(
            failed[0].0 == "failover" && failed[0].1.contains("cannot open"),
            "{failed:?}"
        );
        assert_eq!(
            failed[1],
            (
                "ghost".into(),
                "module \"ghost\" is not in modules.dep".into()
            )
        );
        assert_eq!(
            failed[2],
            (
                "net_failover".into(),
                "needs failover, which did not load".into()
            )
        );
        assert_eq!(
            failed[3],
            (
                "virtio_net".into(),
                "needs net_failover, which did not load".into()
            )
        );
    }

    /// A loader over `fixture()` whose modules "load" through `load_one`.
    fn stand_in(dir: &Path, load_one: LoadOne) -> Loader {
        Loader {
            index: ModuleIndex::load(dir).unwrap().into(),
            loaded: HashSet::new(),
            cpu: None,
            async_probe: false,
            workers: 2,
            load_one,
            proc_modules: dir.join("no-proc-modules"),
            params: Default::default(),
        }
    }

    /// Module loads seen by `timed_load`, in the order they ended.
    static ENDED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

    /// 300 ms for raid6_pq, 20 ms for the rest.
    fn timed_load(path: &Path, _: &str) -> Result<(), KmodError> {
        let name = name_of(&path.to_string_lossy());
        let ms = if name == "raid6_pq" { 300 } else { 20 };
        std::thread::sleep(std::time::Duration::from_millis(ms));
        ENDED.lock().unwrap().push(name);
        Ok(())
    }

    #[test]
    fn a_module_loads_once_its_own_dependencies_are_in() {
        let dir = fixture();
        let mut loader = stand_in(dir.path(), timed_load);
        let mut report = LoadReport::default();
        loader.load_many(vec!["btrfs".into(), "virtio_net".into()], &mut report);
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        let ended = ENDED.lock().unwrap().clone();
        let at = |m: &str| ended.iter().position(|e| e == m).unwrap();
        // virtio_net's chain (failover, net_failover, virtio_net) does not
        // wait for raid6_pq, which started beside failover.
        assert!(at("virtio_net") < at("raid6_pq"), "{ended:?}");
        // btrfs does wait for its dependencies.
        assert!(
            at("btrfs") > at("raid6_pq") && at("btrfs") > at("xor"),
            "{ended:?}"
        );
        assert_eq!(report.loaded.len(), ended.len());
    }

    /// Module loads seen by `paced_load`, in the order they ended.
    static PACED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

    /// 30 ms for every module.
    fn paced_load(path: &Path, _: &str) -> Result<(), KmodError> {
        std::thread::sleep(std::time::Duration::from_millis(30));
        PACED.lock().unwrap().push(name_of(&path.to_string_lossy()));
        Ok(())
    }

    #[test]
    fn a_module_that_becomes_loadable_goes_before_waiting_leaves() {
        let dir = fixture();
        let mut loader = stand_in(dir.path(), paced_load);
        let mut report = LoadReport::default();
        // failover -> net_failover -> virtio_net is a chain; the other four
        // could all load from the start, and nothing waits for them.
        let roots = [
            "virtio_net",
            "e1000e",
            "usb_storage",
            "crc32c_generic",
            "xor",
        ];
        loader.load_many(roots.map(String::from).to_vec(), &mut report);
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        let ended = PACED.lock().unwrap().clone();
        let at = |m: &str| ended.iter().position(|e| e == m).unwrap();
        // Two workers: failover and crc32c_generic, then net_failover (which
        // virtio_net waits for) beside e1000e, then virtio_net beside
        // usb_storage. Queued all at once, the leaves went first and
        // virtio_net came last.
        assert!(at("net_failover") < at("usb_storage"), "{ended:?}");
        assert!(at("virtio_net") < at("xor"), "{ended:?}");
        assert_eq!(ended.len(), 7, "{ended:?}");
    }

    fn instant_load(_: &Path, _: &str) -> Result<(), KmodError> {
        Ok(())
    }

    /// Coldplug's loop over `roots`, with `announced` heard as it starts
    /// (as the uevent thread sends it); what loaded and how long it took.
    fn coldplug_loop(
        sys: &Path,
        devices: &mut Devices,
        roots: Vec<String>,
        announced: Device,
    ) -> (LoadReport, std::time::Duration) {
        let dir = fixture();
        let mut loader = stand_in(dir.path(), instant_load);
        let (events, heard) = mpsc::channel();
        events.send(Event::Device(announced)).unwrap();
        let mut rescan = false;
        let hotplug = Hotplug {
            sys,
            devices,
            rescan: &mut rescan,
        };
        let mut report = LoadReport::default();
        let t = std::time::Instant::now();
        loader.load_streaming(roots, &mut report, events, &heard, Some(hotplug));
        (report, t.elapsed())
    }

    #[test]
    fn a_device_announced_while_loading_gets_its_driver() {
        let sys = tempfile::tempdir().unwrap();
        // A virtio NIC that a bus driver brought.
        let (report, took) = coldplug_loop(
            sys.path(),
            &mut Devices::default(),
            vec!["bridge".into()],
            device("virtio:d00000001v00001AF4", "devices/virtio1"),
        );
        let mut loaded = report.loaded.clone();
        loaded.sort();
        assert_eq!(
            loaded,
            [
                "bridge",
                "failover",
                "llc",
                "net_failover",
                "stp",
                "virtio_net"
            ]
        );
        // Done once no device came for UEVENT_IDLE, not at UEVENT_SETTLE_MAX.
        assert!(took < UEVENT_SETTLE_MAX, "{took:?}");
    }

    #[test]
    fn a_device_in_sys_whose_uevent_never_came_gets_its_driver() {
        // The uevent thread heard of virtio1 only; a NIC on the PCI bus
        // is in /sys but its uevent has not come through.
        let sys = tempfile::tempdir().unwrap();
        let dev = sys.path().join("bus/pci/devices/0000:00:03.0");
        std::fs::create_dir_all(&dev).unwrap();
        let alias = "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00";
        std::fs::write(dev.join("modalias"), format!("{alias}\n")).unwrap();
        let (report, _) = coldplug_loop(
            sys.path(),
            &mut Devices::default(),
            Vec::new(),
            device("virtio:d00000001v00001AF4", "devices/virtio1"),
        );
        assert!(report.loaded.contains(&"virtio_net".to_string()));
        assert!(
            report.loaded.contains(&"e1000e".to_string()),
            "{:?}",
            report.loaded
        );
    }

    /// A /sys with two virtio devices on their bus (virtio1 bound to
    /// virtio_net, virtio2 not) and an input device of a class.
    fn sys_with_devices() -> tempfile::TempDir {
        let sys = tempfile::tempdir().unwrap();
        let s = sys.path();
        for d in [
            "bus/virtio/drivers/virtio_net",
            "class/input",
            "devices/virtio1",
            "devices/virtio2",
            "devices/input3",
        ] {
            std::fs::create_dir_all(s.join(d)).unwrap();
        }
        let link = |target: &str, at: &str| std::os::unix::fs::symlink(target, s.join(at)).unwrap();
        link("../../bus/virtio", "devices/virtio1/subsystem");
        link("../../bus/virtio", "devices/virtio2/subsystem");
        link("../../class/input", "devices/input3/subsystem");
        link(
            "../../bus/virtio/drivers/virtio_net",
            "devices/virtio1/driver",
        );
        sys
    }

    #[test]
    fn only_bus_devices_a_module_was_loaded_for_wait_for_their_driver() {
        let dir = fixture();
        let index = ModuleIndex::load(dir.path()).unwrap();
        let sys = sys_with_devices();
        let matched = || {
            let mut devices = Devices {
                awaiting: Some(Vec::new()),
                ..Devices::default()
            };
            let found = devices.drivers(
                &index,
                [
                    device("virtio:d00000001v00001AF4", "devices/virtio1"),
                    device("virtio:d00000001v00001AF4", "devices/virtio2"),
                    device("acpi:LNXPWRBN:", "devices/input3"),
                ],
            );
            // Two NICs of one kind: one driver to load.
            assert_eq!(found, ["virtio_net", "button"]);
            devices
        };
        // Nothing loaded here (in already, or failed): nothing to wait for.
        assert_eq!(matched().unbound(sys.path(), &[]), 0);

        let mut devices = matched();
        let loaded = ["virtio_net".to_string(), "button".to_string()];
        // virtio1 is bound; input3 is a class device, never bound.
        assert_eq!(devices.unbound(sys.path(), &loaded), 1);
        std::os::unix::fs::symlink(
            "../../bus/virtio/drivers/virtio_net",
            sys.path().join("devices/virtio2/driver"),
        )
        .unwrap();
        assert_eq!(devices.unbound(sys.path(), &loaded), 0);
    }

    #[test]
    fn coldplug_waits_for_a_device_whose_driver_has_not_bound_it() {
        let sys = sys_with_devices();
        let mut devices = Devices {
            awaiting: Some(Vec::new()),
            ..Devices::default()
        };
        // virtio2's driver loads, but its (asynchronous) probe never binds it.
        let (report, took) = coldplug_loop(
            sys.path(),
            &mut devices,
            Vec::new(),
            device("virtio:d00000001v00001AF4", "devices/virtio2"),
        );
        assert!(report.loaded.contains(&"virtio_net".to_string()));
        // Not just BOUND_QUIET: the whole quiet time a probe may take.
        assert!(took >= UEVENT_IDLE, "{took:?}");
    }

    #[test]
    fn the_command_line_gives_modules_their_parameters() {
        let p = cmdline_params(
            "console=ttyS0 loop.max_loop=0 zeronode.root_hash=ab ip=10.0.0.1::10.0.0.2:255.0.0.0:n:eth0:off \
             bridge.flag \"dm-mod.name=a b\" loop.max_part=3 .x=1 y.=2 plain",
        );
        assert_eq!(p["loop"], "max_loop=0 max_part=3");
        assert_eq!(p["bridge"], "flag");
        assert_eq!(p["dm_mod"], "name=\"a b\"");
        for absent in ["ip", "console", "", "y", "plain", "zeronode"] {
            assert!(!p.contains_key(absent), "{absent}: {p:?}");
        }
        assert_eq!(
            param_string(true, p.get("loop")),
            "async_probe max_loop=0 max_part=3"
        );
        assert_eq!(param_string(false, p.get("loop")), "max_loop=0 max_part=3");
        assert_eq!(param_string(true, None), "async_probe");
        assert_eq!(param_string(false, None), "");
    }

    /// Parameter strings seen by `params_load`, by module.
    static PARAMS_SEEN: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

    fn params_load(path: &Path, params: &str) -> Result<(), KmodError> {
        PARAMS_SEEN
            .lock()
            .unwrap()
            .push((name_of(&path.to_string_lossy()), params.to_string()));
        Ok(())
    }

    #[test]
    fn each_module_loads_with_its_own_parameters() {
        let dir = fixture();
        let mut loader = stand_in(dir.path(), params_load).with_async_probe();
        loader.params = Arc::new(cmdline_params("virtio-net.napi_tx=1 failover.x=2"));
        let mut report = LoadReport::default();
        loader.load_many(vec!["virtio_net".into()], &mut report);
        let mut seen = PARAMS_SEEN.lock().unwrap().clone();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("failover".to_string(), "async_probe x=2".to_string()),
                ("net_failover".into(), "async_probe".into()),
                ("virtio_net".into(), "async_probe napi_tx=1".into()),
            ]
        );
    }

    /// Loads seen by `recorded_load`, in order.
    static RECORDED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

    fn recorded_load(path: &Path, _: &str) -> Result<(), KmodError> {
        RECORDED
            .lock()
            .unwrap()
            .push(name_of(&path.to_string_lossy()));
        Ok(())
    }

    #[test]
    fn devices_after_coldplug_get_their_drivers_once() {
        let dir = fixture();
        let sys = tempfile::tempdir().unwrap();
        let mut loader = stand_in(dir.path(), recorded_load);
        // Coldplug matched the NIC; a USB stick came as it ended (pending),
        // then, while the node runs, the NIC again (a second port) and a
        // second stick of the same kind.
        let mut devices = Devices::default();
        devices.drivers(
            &loader.index,
            [device("virtio:d00000001v00001AF4", "devices/virtio1")],
        );
        let mut late = LateDevices {
            uevents: None,
            devices,
            pending: vec![device(
                "usb:v1234p5678d0100dc00dsc00dp00ic08isc06ip50in00",
                "devices/usb1/1-1",
            )],
            rescan: false,
            sys: sys.path().to_path_buf(),
        };
        let (events, heard) = mpsc::channel();
        for alias in [
            "virtio:d00000001v00001AF4",
            "usb:v1234p5678d0100dc00dsc00dp00ic08isc06ip50in00",
            "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00",
        ] {
            events
                .send(Event::Device(device(alias, "devices/x")))
                .unwrap();
        }
        drop(events);
        loader.serve_hotplug(&mut late, &heard);
        // usb_storage for the stick that came as coldplug ended, e1000e for
        // the NIC; nothing twice, and virtio_net not again.
        assert_eq!(*RECORDED.lock().unwrap(), ["usb_storage", "e1000e"]);
    }

    #[test]
    fn modaliases_come_from_bus_and_class_lists() {
        let sys = tempfile::tempdir().unwrap();
        let dev = sys.path().join("devices/pci0000:00/0000:00:03.0");
        std::fs::create_dir_all(dev.join("virtio0")).unwrap();
        std::fs::create_dir_all(sys.path().join("devices/virtual/input/input2")).unwrap();
        std::fs::write(dev.join("modalias"), "pci:v00001AF4d00001000\n").unwrap();
        std::fs::write(dev.join("virtio0/modalias"), "virtio:d00000001v00001AF4\n").unwrap();
        std::fs::write(
            sys.path().join("devices/virtual/input/input2/modalias"),
            "input:b0019v0000\n",
        )
        .unwrap();
        for (list, target) in [
            ("bus/pci/devices/0000:00:03.0", dev.clone()),
            ("bus/virtio/devices/virtio0", dev.join("virtio0")),
            (
                "class/input/input2",
                sys.path().join("devices/virtual/input/input2"),
            ),
            ("class/net/lo", sys.path().join("devices/virtual/net/lo")),
        ] {
            let link = sys.path().join(list);
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, link).unwrap();
        }
        std::fs::create_dir_all(sys.path().join("devices/system/cpu")).unwrap();
        std::fs::write(
            sys.path().join("devices/system/cpu/modalias"),
            "cpu:type:x86,ven0000\n",
        )
        .unwrap();
        let mut found = modaliases(sys.path());
        found.sort_by(|a, b| a.alias.cmp(&b.alias));
        assert_eq!(found[2].dir, Path::new("bus/virtio/devices/virtio0"));
        let found: Vec<String> = found.into_iter().map(|d| d.alias).collect();
        // The CPU's features are cpu_feature_modules' business.
        assert_eq!(
            found,
            [
                "input:b0019v0000",
                "pci:v00001AF4d00001000",
                "virtio:d00000001v00001AF4"
            ]
        );
    }

    #[test]
    fn cpu_features_are_matched_apart_from_devices() {
        let modules = fixture();
        std::fs::write(
            modules.path().join("modules.alias"),
            "alias cpu:type:x86,ven*fam*mod*:feature:*0C1D* kvm_amd\n",
        )
        .unwrap();
        let loader = Loader::new(ModuleIndex::load(modules.path()).unwrap());
        let sys = tempfile::tempdir().unwrap();
        assert!(loader.cpu_feature_modules(sys.path()).is_empty());
        std::fs::create_dir_all(sys.path().join("devices/system/cpu")).unwrap();
        std::fs::write(
            sys.path().join("devices/system/cpu/modalias"),
            "cpu:type:x86,ven0002fam0006mod0006:feature:,0000,0C1D,00E0\n",
        )
        .unwrap();
        assert_eq!(loader.cpu_feature_modules(sys.path()), ["kvm_amd"]);
    }

    #[test]
    fn modules_for_cpu_features_this_cpu_lacks_are_left_out() {
        let modules = fixture();
        let alias = modules.path().join("modules.alias");
        let mut text = std::fs::read_to_string(&alias).unwrap();
        text += "alias crc32c crc32c_intel\n\
                 alias cpu:type:x86,ven*fam*mod*:feature:*0094* crc32c_intel\n";
        std::fs::write(&alias, text).unwrap();
        let idx = ModuleIndex::load(modules.path()).unwrap();
        // qemu64 under TCG: SSE2 (0014...) but no SSE4.2 (0094).
        let tcg = "cpu:type:x86,ven0000fam0006mod0006:feature:,0000,0001,0014,0070";
        let host = "cpu:type:x86,ven0000fam0006mod0055:feature:,0000,0001,0014,0070,0094,00E0";
        assert!(idx.for_other_cpu("crc32c_intel", tcg));
        assert!(!idx.for_other_cpu("crc32c-intel", host));
        // A module that names no CPU feature is for every CPU.
        assert!(!idx.for_other_cpu("crc32c_generic", tcg));
        let (plan, unknown, other) = idx.plan(vec!["btrfs".into()], |_| false, Some(tcg));
        assert!(unknown.is_empty(), "{unknown:?}");
        assert_eq!(other, ["crc32c_intel"]);
        assert!(plan.contains_key("crc32c_generic") && !plan.contains_key("crc32c_intel"));
        let (plan, _, other) = idx.plan(vec!["btrfs".into()], |_| false, Some(host));
        assert!(other.is_empty() && plan.contains_key("crc32c_intel"));
        // Left out is reported as not for this hardware, not as a failure,
        // and the kernel is never asked (the fixture has no .ko files).
        let mut loader = Loader {
            index: idx.into(),
            loaded: HashSet::new(),
            cpu: Some(tcg.into()),
            async_probe: false,
            workers: 2,
            load_one: finit,
            proc_modules: PathBuf::new(),
            params: Default::default(),
        };
        let mut report = LoadReport::default();
        loader.load_many(vec!["crc32c_intel".into()], &mut report);
        assert_eq!(report.not_applicable, ["crc32c_intel"]);
        assert!(report.failed.is_empty() && report.loaded.is_empty());
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
