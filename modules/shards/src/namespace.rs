//! One namespace on disk: append-only data files, an in-memory index with
//! snapshot files, a sync thread for group commit, and compaction.
//!
//! Files in the namespace's directory:
//! - `namespace.json`: settings (mode, maxsize, public, password hash, sync).
//! - `MANIFEST`: which data files make up the log, in order; replaced
//!   atomically (write, fsync, rename, fsync dir). Files it does not list are
//!   leftovers of an interrupted compaction or rotation and are removed.
//! - `NNNNNNNN.dat`: data files of [`crate::record`]s. Only the last one is
//!   appended to.
//! - `index.snap`: the index at a log position, written only after the data
//!   up to that position is synced. On open it is loaded and the log after
//!   its position replayed; when it is missing, damaged or from another
//!   manifest generation, the index is rebuilt from all data files.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::record::{self, Header, FLAG_TOMBSTONE, HEADER, MAX_KEY, MAX_VALUE};

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// After fdatasync (group commit: one sync covers every write that
    /// arrived while the previous one ran).
    Always,
    /// After write(2): in the page cache, so a killed process loses
    /// nothing; synced in the background each second.
    Everysec,
}

impl std::str::FromStr for SyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "always" => Ok(SyncPolicy::Always),
            "everysec" => Ok(SyncPolicy::Everysec),
            _ => Err(format!("sync policy {s:?}: always or everysec")),
        }
    }
}

impl SyncPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncPolicy::Always => "always",
            SyncPolicy::Everysec => "everysec",
        }
    }
}

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The client names its keys.
    User,
    /// The store assigns keys: 4-byte little-endian sequence numbers.
    Sequential,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "user" | "userkey" => Ok(Mode::User),
            "seq" | "sequential" => Ok(Mode::Sequential),
            _ => Err(format!("mode {s:?}: user or seq")),
        }
    }
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::User => "userkey",
            Mode::Sequential => "sequential",
        }
    }
}

/// A salted blake3 hash of a password; the password itself is not kept.
#[derive(Clone, Serialize, Deserialize)]
pub struct PasswordHash {
    salt: String,
    hash: String,
}

impl PasswordHash {
    pub fn new(password: &str) -> Result<Self> {
        let mut salt = [0u8; 16];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut salt))
            .map_err(|e| Error::io("reading /dev/urandom", e))?;
        let salt = hex(&salt);
        let hash = Self::digest(&salt, password).to_hex().to_string();
        Ok(PasswordHash { salt, hash })
    }

    fn digest(salt: &str, password: &str) -> blake3::Hash {
        let mut h = blake3::Hasher::new_derive_key("zeronode-shards 2026 namespace password");
        h.update(salt.as_bytes());
        h.update(password.as_bytes());
        h.finalize()
    }

    pub fn matches(&self, password: &str) -> bool {
        match blake3::Hash::from_hex(&self.hash) {
            // blake3::Hash compares in constant time.
            Ok(want) => Self::digest(&self.salt, password) == want,
            Err(_) => false,
        }
    }
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHash(<hidden>)")
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A namespace's settings (`namespace.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub mode: Mode,
    /// Largest live data (keys + values) in bytes; 0 = no limit.
    pub maxsize: u64,
    /// Readable without the password (writes still need it).
    pub public: bool,
    pub password: Option<PasswordHash>,
    /// Overrides the server's policy when set.
    pub sync: Option<SyncPolicy>,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            mode: Mode::User,
            maxsize: 0,
            public: true,
            password: None,
            sync: None,
        }
    }
}

/// Tuning shared by the namespaces of a store.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// A data file is closed and a new one started past this size.
    pub file_size: u64,
    /// The server's sync policy.
    pub sync: SyncPolicy,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            file_size: 256 << 20,
            sync: SyncPolicy::Everysec,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    gen: u64,
    files: Vec<u32>,
    next_file: u32,
    /// Sequential mode: the next key, kept here because compaction drops
    /// the records and tombstones a rebuild would otherwise count from.
    #[serde(default)]
    next_id: u64,
}

/// Where a live record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    file: u32,
    offset: u64,
    key_len: u16,
    value_len: u32,
    time: u32,
    /// Position in log order (for SCAN); in memory only.
    seq: u64,
}

impl Loc {
    fn record_len(&self) -> u64 {
        HEADER as u64 + u64::from(self.key_len) + u64::from(self.value_len)
    }
    fn payload(&self) -> u64 {
        u64::from(self.key_len) + u64::from(self.value_len)
    }
}

/// An entry as SCAN shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEntry {
    pub key: Vec<u8>,
    pub size: u32,
    pub time: u32,
}

/// Figures for NSINFO / D-Bus.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub entries: u64,
    /// Live keys + values.
    pub data_bytes: u64,
    /// Bytes in the data files (live, dead and headers).
    pub disk_bytes: u64,
    pub files: usize,
    /// fdatasync calls of the log since open.
    pub syncs: u64,
}

/// What a SET did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetOutcome {
    /// Stored; the key (the assigned one in sequential mode) and the log
    /// position to flush and sync up to.
    Stored { key: Vec<u8>, lsn: u64 },
    /// The same value was stored already: nothing written (0-db answers nil).
    Unchanged,
}

struct State {
    index: HashMap<Arc<[u8]>, Loc>,
    order: BTreeMap<u64, Arc<[u8]>>,
    next_seq: u64,
    next_id: u64,
    /// Data files in log order; the last is the active one.
    files: Vec<u32>,
    handles: HashMap<u32, Arc<File>>,
    active: u32,
    active_file: Arc<File>,
    /// Bytes of the active file handed to the kernel.
    active_len: u64,
    /// Records appended but not yet written, logically at `active_len`.
    pending: Vec<u8>,
    /// Log sequence number: bytes handed to the kernel since open.
    written: u64,
    live_payload: u64,
    disk_bytes: u64,
    gen: u64,
    next_file: u32,
    poisoned: bool,
    snapshot_written: u64,
}

/// Sync state shared by the committers and the background thread.
struct SyncShared {
    /// Everything below this log position is on disk.
    synced: AtomicU64,
    /// fdatasync calls made (NSINFO shows them: group commit at work).
    syncs: AtomicU64,
    failed: AtomicBool,
    /// One sync at a time; a committer that waited for it usually finds
    /// its records covered and returns without syncing.
    leader: Mutex<()>,
    /// What committers under `always` want synced, and the stop flag.
    req: Mutex<SyncReq>,
    cv: Condvar,
    /// The sync thread waits on `cv` (a committer must wake it).
    idle: AtomicBool,
    /// The sync thread's progress, to one relay task in the runtime...
    remote: tokio::sync::watch::Sender<u64>,
    /// ...which passes it on to the waiting connections: one cross-thread
    /// wake-up a group instead of one a connection.
    local: Arc<tokio::sync::watch::Sender<u64>>,
    relay: AtomicBool,
}

struct SyncReq {
    wanted: u64,
    stop: bool,
}

pub struct Namespace {
    name: String,
    dir: PathBuf,
    meta: RwLock<Meta>,
    state: Arc<Mutex<State>>,
    compacting: Mutex<()>,
    /// One snapshot writer at a time (they share the temp file).
    snapshotting: Mutex<()>,
    sync: Arc<SyncShared>,
    options: Options,
    deleted: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Namespace({})", self.name)
    }
}

fn data_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08}.dat"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent-enough data for
    // readers; the store never panics by design, so just go on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync dir.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| Error::at(&tmp, "creating", e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::at(&tmp, "writing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::at(path, "renaming onto", e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::at(dir, "syncing directory", e))
}

fn now_secs() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

const SNAP_MAGIC: &[u8; 8] = b"ZNSNAP01";

impl State {
    fn apply(&mut self, mode: Mode, key: &[u8], loc: Option<Loc>) {
        if let Some(old) = self.index.remove(key) {
            self.order.remove(&old.seq);
            self.live_payload -= old.payload();
        }
        if let Some(mut loc) = loc {
            loc.seq = self.next_seq;
            self.next_seq += 1;
            let key: Arc<[u8]> = key.into();
            self.order.insert(loc.seq, key.clone());
            self.live_payload += loc.payload();
            self.index.insert(key, loc);
        }
        if mode == Mode::Sequential && key.len() == 4 {
            let id = u32::from_le_bytes([key[0], key[1], key[2], key[3]]);
            self.next_id = self.next_id.max(u64::from(id) + 1);
        }
    }

    fn handle(&self, file: u32) -> Result<Arc<File>> {
        self.handles
            .get(&file)
            .cloned()
            .ok_or_else(|| Error::Corrupt(format!("data file {file} is not open")))
    }
}

impl Namespace {
    /// Creates a namespace directory with its settings and an empty log.
    pub fn create(dir: &Path, name: &str, meta: Meta, options: Options) -> Result<Namespace> {
        if dir.exists() {
            return Err(Error::Exists(name.to_string()));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::at(dir, "creating", e))?;
        let json = serde_json::to_vec_pretty(&meta)
            .map_err(|e| Error::Invalid(format!("namespace settings: {e}")))?;
        write_atomic(&dir.join("namespace.json"), &json)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        Self::open(dir, name, options)
    }

    /// Opens a namespace: settings, manifest, snapshot, replay of the tail.
    pub fn open(dir: &Path, name: &str, options: Options) -> Result<Namespace> {
        let meta_path = dir.join("namespace.json");
        let meta: Meta = serde_json::from_slice(
            &std::fs::read(&meta_path).map_err(|e| Error::at(&meta_path, "reading", e))?,
        )
        .map_err(|e| Error::Invalid(format!("{}: {e}", meta_path.display())))?;

        let manifest_path = dir.join("MANIFEST");
        let manifest = match std::fs::read(&manifest_path) {
            Ok(bytes) => serde_json::from_slice::<Manifest>(&bytes)
                .map_err(|e| Error::Corrupt(format!("{}: {e}", manifest_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let m = Manifest {
                    gen: 1,
                    files: vec![1],
                    next_file: 2,
                    next_id: 0,
                };
                File::create(data_path(dir, 1))
                    .map_err(|e| Error::at(&data_path(dir, 1), "creating", e))?;
                write_manifest(dir, &m)?;
                m
            }
            Err(e) => return Err(Error::at(&manifest_path, "reading", e)),
        };
        if manifest.files.is_empty() {
            return Err(Error::Corrupt(format!(
                "{}: no data files",
                manifest_path.display()
            )));
        }
        remove_leftovers(dir, &manifest)?;

        let mut handles = HashMap::new();
        let mut disk_bytes = 0;
        for &id in &manifest.files {
            let path = data_path(dir, id);
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| Error::at(&path, "opening", e))?;
            disk_bytes += f.metadata().map_err(|e| Error::at(&path, "stat", e))?.len();
            handles.insert(id, Arc::new(f));
        }
        let active = *manifest.files.last().unwrap_or(&1);
        let active_file = handles
            .get(&active)
            .cloned()
            .ok_or_else(|| Error::Corrupt("active data file missing".into()))?;
        let mut state = State {
            index: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            next_id: 0,
            files: manifest.files.clone(),
            handles,
            active,
            active_file,
            active_len: 0,
            pending: Vec::new(),
            written: 0,
            live_payload: 0,
            disk_bytes,
            gen: manifest.gen,
            next_file: manifest.next_file,
            poisoned: false,
            snapshot_written: 0,
        };
        let started = std::time::Instant::now();
        let from = match load_snapshot(dir, &mut state, meta.mode) {
            Ok(Some(pos)) => Some(pos),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(namespace = name, "index snapshot not used, rebuilding: {e}");
                None
            }
        };
        if from.is_none() {
            state.index.clear();
            state.order.clear();
            state.live_payload = 0;
            state.next_seq = 0;
            state.next_id = 0;
        }
        let (start_file, start_offset) = from.unwrap_or((manifest.files[0], 0));
        let mut replaying = false;
        let mut replayed = 0u64;
        for (i, &id) in manifest.files.iter().enumerate() {
            let offset = if id == start_file {
                replaying = true;
                start_offset
            } else {
                0
            };
            if !replaying {
                continue;
            }
            let last = i + 1 == manifest.files.len();
            let (end, n) = replay_file(dir, id, offset, last, &mut state, meta.mode)?;
            replayed += n;
            if last {
                state.active_len = end;
            }
        }
        state.next_id = state.next_id.max(manifest.next_id);
        state.disk_bytes = 0;
        for f in state.handles.values() {
            state.disk_bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
        }
        tracing::info!(
            namespace = name,
            entries = state.index.len(),
            replayed,
            snapshot = from.is_some(),
            ms = started.elapsed().as_millis() as u64,
            "namespace opened"
        );

        let sync = Arc::new(SyncShared {
            synced: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            leader: Mutex::new(()),
            req: Mutex::new(SyncReq {
                wanted: 0,
                stop: false,
            }),
            cv: Condvar::new(),
            idle: AtomicBool::new(false),
            remote: tokio::sync::watch::channel(0).0,
            local: Arc::new(tokio::sync::watch::channel(0).0),
            relay: AtomicBool::new(false),
        });
        let state = Arc::new(Mutex::new(state));
        let thread = {
            let state = state.clone();
            let sync = sync.clone();
            let name = name.to_string();
            std::thread::Builder::new()
                .name(format!(
                    "sync-{}",
                    name.chars().take(10).collect::<String>()
                ))
                .spawn(move || sync_loop(&name, &state, &sync))
                .map_err(|e| Error::io("starting the sync thread", e))?
        };
        Ok(Namespace {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            meta: RwLock::new(meta),
            state,
            compacting: Mutex::new(()),
            snapshotting: Mutex::new(()),
            sync,
            options,
            deleted: AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn meta(&self) -> Meta {
        self.meta.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes the settings and persists them.
    pub fn update_meta(&self, f: impl FnOnce(&mut Meta) -> Result<()>) -> Result<()> {
        let mut meta = self.meta.write().unwrap_or_else(|e| e.into_inner());
        let mut next = meta.clone();
        f(&mut next)?;
        if next.mode != meta.mode && !lock(&self.state).index.is_empty() {
            return Err(Error::Invalid(
                "the mode of a namespace that holds keys cannot change".into(),
            ));
        }
        let json = serde_json::to_vec_pretty(&next)
            .map_err(|e| Error::Invalid(format!("namespace settings: {e}")))?;
        write_atomic(&self.dir.join("namespace.json"), &json)?;
        *meta = next;
        Ok(())
    }

    pub fn policy(&self) -> SyncPolicy {
        self.meta
            .read()
            .map(|m| m.sync)
            .unwrap_or(None)
            .unwrap_or(self.options.sync)
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Relaxed)
    }

    fn check_live(&self, s: &State) -> Result<()> {
        if self.is_deleted() {
            return Err(Error::Deleted(self.name.clone()));
        }
        if s.poisoned {
            return Err(Error::Poisoned(self.name.clone()));
        }
        Ok(())
    }

    /// Appends a record to the pending buffer, rotating the active file
    /// when it is full. Returns the record's location.
    fn append(&self, s: &mut State, flags: u8, key: &[u8], value: &[u8], time: u32) -> Result<Loc> {
        let len = (HEADER + key.len() + value.len()) as u64;
        if s.active_len + s.pending.len() as u64 + len > self.options.file_size
            && s.active_len + (s.pending.len() as u64) > 0
        {
            self.rotate(s)?;
        }
        let offset = s.active_len + s.pending.len() as u64;
        record::encode(&mut s.pending, flags, key, value, time);
        s.disk_bytes += len;
        Ok(Loc {
            file: s.active,
            offset,
            key_len: key.len() as u16,
            value_len: value.len() as u32,
            time,
            seq: 0,
        })
    }

    /// Writes the pending records (one write for all of them).
    fn write_pending(&self, s: &mut State) -> Result<()> {
        write_pending(&self.name, s)
    }

    /// Closes the active file (synced) and starts a new one.
    fn rotate(&self, s: &mut State) -> Result<()> {
        self.write_pending(s)?;
        let fail = |s: &mut State, e: Error| {
            s.poisoned = true;
            e
        };
        if let Err(e) = s.active_file.sync_data() {
            return Err(fail(s, Error::io("syncing a full data file", e)));
        }
        let id = s.next_file;
        let path = data_path(&self.dir, id);
        let f = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => Arc::new(f),
            Err(e) => return Err(fail(s, Error::at(&path, "creating", e))),
        };
        let mut files = s.files.clone();
        files.push(id);
        let m = Manifest {
            gen: s.gen + 1,
            files,
            next_file: id + 1,
            next_id: s.next_id,
        };
        if let Err(e) = write_manifest(&self.dir, &m) {
            let _ = std::fs::remove_file(&path);
            return Err(fail(s, e));
        }
        s.gen = m.gen;
        s.files = m.files;
        s.next_file = m.next_file;
        s.handles.insert(id, f.clone());
        s.active = id;
        s.active_file = f;
        s.active_len = 0;
        Ok(())
    }

    /// SET. In sequential mode an empty key asks for a new one.
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<SetOutcome> {
        if value.len() > MAX_VALUE {
            return Err(Error::Invalid(format!(
                "value of {} bytes, at most {MAX_VALUE}",
                value.len()
            )));
        }
        if key.len() > MAX_KEY {
            return Err(Error::Invalid(format!(
                "key of {} bytes, at most {MAX_KEY}",
                key.len()
            )));
        }
        let (mode, maxsize) = {
            let m = self.meta.read().unwrap_or_else(|e| e.into_inner());
            (m.mode, m.maxsize)
        };
        let mut s = lock(&self.state);
        self.check_live(&s)?;
        let assigned;
        let key = match mode {
            Mode::User => {
                if key.is_empty() {
                    return Err(Error::Invalid("Invalid argument: empty key".into()));
                }
                key
            }
            Mode::Sequential if key.is_empty() => {
                let id = u32::try_from(s.next_id)
                    .map_err(|_| Error::Invalid("sequential keys exhausted".into()))?;
                assigned = id.to_le_bytes();
                &assigned[..]
            }
            Mode::Sequential => {
                if !s.index.contains_key(key) {
                    return Err(Error::Invalid(
                        "Invalid key: in sequential mode only existing keys can be updated".into(),
                    ));
                }
                key
            }
        };
        let old = s.index.get(key).copied();
        if let Some(old) = old {
            if old.value_len as usize == value.len() {
                let mut buf = Vec::new();
                if let Ok(r) = read_record(&s, &old, &mut buf) {
                    if &buf[r] == value {
                        return Ok(SetOutcome::Unchanged);
                    }
                }
            }
        }
        let used = s.live_payload - old.map_or(0, |o| o.payload());
        let add = (key.len() + value.len()) as u64;
        if maxsize > 0 && used + add > maxsize {
            return Err(Error::Full {
                limit: maxsize,
                used: s.live_payload,
            });
        }
        let loc = self.append(&mut s, 0, key, value, now_secs())?;
        s.apply(mode, key, Some(loc));
        let lsn = s.written + s.pending.len() as u64;
        Ok(SetOutcome::Stored {
            key: key.to_vec(),
            lsn,
        })
    }

    /// DEL: appends a tombstone. None when the key is not there.
    pub fn delete(&self, key: &[u8]) -> Result<Option<u64>> {
        let mode = self.meta.read().unwrap_or_else(|e| e.into_inner()).mode;
        let mut s = lock(&self.state);
        self.check_live(&s)?;
        if !s.index.contains_key(key) {
            return Ok(None);
        }
        self.append(&mut s, FLAG_TOMBSTONE, key, &[], now_secs())?;
        s.apply(mode, key, None);
        Ok(Some(s.written + s.pending.len() as u64))
    }

    /// GET: reads the record into `scratch`, verifies its checksum and
    /// answers the value's range in `scratch`.
    pub fn get(&self, key: &[u8], scratch: &mut Vec<u8>) -> Result<Option<std::ops::Range<usize>>> {
        let (loc, file) = {
            let s = lock(&self.state);
            self.check_live(&s)?;
            let Some(loc) = s.index.get(key).copied() else {
                return Ok(None);
            };
            if loc.file == s.active && loc.offset >= s.active_len {
                return read_record(&s, &loc, scratch).map(Some);
            }
            (loc, s.handle(loc.file)?)
        };
        read_at(&file, &loc, scratch).map(Some)
    }

    pub fn exists(&self, key: &[u8]) -> Result<bool> {
        let s = lock(&self.state);
        self.check_live(&s)?;
        Ok(s.index.contains_key(key))
    }

    /// CHECK: None when absent, else whether the record matches its checksum.
    pub fn check(&self, key: &[u8]) -> Result<Option<bool>> {
        let mut scratch = Vec::new();
        match self.get(key, &mut scratch) {
            Ok(None) => Ok(None),
            Ok(Some(_)) => Ok(Some(true)),
            Err(Error::Corrupt(_)) => Ok(Some(false)),
            Err(e) => Err(e),
        }
    }

    pub fn len(&self) -> u64 {
        lock(&self.state).index.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> Stats {
        let s = lock(&self.state);
        Stats {
            entries: s.index.len() as u64,
            data_bytes: s.live_payload,
            disk_bytes: s.disk_bytes,
            files: s.files.len(),
            syncs: self.sync.syncs.load(Ordering::Relaxed),
        }
    }

    /// SCAN / RSCAN: up to `count` entries after (or before) `cursor` in
    /// log order. The cursor is a key (0-db's KEYCUR gives it too).
    pub fn scan(
        &self,
        cursor: Option<&[u8]>,
        reverse: bool,
        count: usize,
    ) -> Result<Vec<ScanEntry>> {
        let s = lock(&self.state);
        self.check_live(&s)?;
        let from = match cursor {
            None => None,
            Some(c) => Some(
                s.index
                    .get(c)
                    .ok_or_else(|| Error::Invalid("Invalid cursor: key not found".into()))?
                    .seq,
            ),
        };
        let entry = |k: &[u8]| {
            let loc = s.index.get(k);
            ScanEntry {
                key: k.to_vec(),
                size: loc.map_or(0, |l| l.value_len),
                time: loc.map_or(0, |l| l.time),
            }
        };
        Ok(match (reverse, from) {
            (false, None) => s.order.values().take(count).map(|k| entry(k)).collect(),
            (false, Some(f)) => s
                .order
                .range(f + 1..)
                .take(count)
                .map(|(_, k)| entry(k))
                .collect(),
            (true, None) => s
                .order
                .values()
                .rev()
                .take(count)
                .map(|k| entry(k))
                .collect(),
            (true, Some(f)) => s
                .order
                .range(..f)
                .rev()
                .take(count)
                .map(|(_, k)| entry(k))
                .collect(),
        })
    }

    /// Hands pending records to the kernel. Returns the written LSN.
    pub fn flush(&self) -> Result<u64> {
        let mut s = lock(&self.state);
        if s.poisoned {
            return Err(Error::Poisoned(self.name.clone()));
        }
        self.write_pending(&mut s)?;
        Ok(s.written)
    }

    /// Makes the log durable up to `lsn`: group commit. The first caller
    /// writes everything pending (its own records and those every other
    /// connection appended meanwhile) with one write and syncs once; callers
    /// whose records that covered return at once. It blocks the calling
    /// thread for one fdatasync, as redis's event loop does under
    /// appendfsync always, which avoids two thread hand-offs per group.
    pub fn sync_to(&self, lsn: u64) -> Result<()> {
        if self.sync.synced.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        let _leader = lock(&self.sync.leader);
        if self.sync.failed.load(Ordering::Acquire) {
            return Err(Error::Poisoned(self.name.clone()));
        }
        if self.sync.synced.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        let (file, written) = {
            let mut s = lock(&self.state);
            self.write_pending(&mut s)?;
            (s.active_file.clone(), s.written)
        };
        self.sync.syncs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = file.sync_data() {
            self.sync.failed.store(true, Ordering::Release);
            lock(&self.state).poisoned = true;
            tracing::error!(namespace = %self.name, "fdatasync failed, namespace stops serving: {e}");
            return Err(Error::io(format!("syncing namespace {}", self.name), e));
        }
        self.sync.synced.fetch_max(written, Ordering::AcqRel);
        self.sync
            .remote
            .send_replace(self.sync.synced.load(Ordering::Acquire));
        Ok(())
    }

    /// Waits until the log is durable up to `lsn`, under `always`. The
    /// namespace's sync thread writes what is pending and syncs once for
    /// every connection waiting, while the serving thread goes on reading
    /// requests: those that arrive during a sync form the next group.
    pub async fn wait_synced(&self, lsn: u64) -> Result<()> {
        let sync = &self.sync;
        if sync.synced.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        if !sync.relay.swap(true, Ordering::AcqRel) {
            let mut remote = sync.remote.subscribe();
            let local = sync.local.clone();
            tokio::spawn(async move {
                while remote.changed().await.is_ok() {
                    let v = *remote.borrow_and_update();
                    local.send_replace(v);
                }
            });
        }
        let mut rx = sync.local.subscribe();
        {
            let mut r = lock(&sync.req);
            if r.wanted < lsn {
                r.wanted = lsn;
            }
            if sync.idle.load(Ordering::Acquire) {
                sync.cv.notify_one();
            }
        }
        let waited = rx
            .wait_for(|v| {
                *v >= lsn
                    || sync.failed.load(Ordering::Acquire)
                    || sync.synced.load(Ordering::Acquire) >= lsn
            })
            .await
            .is_ok();
        if sync.failed.load(Ordering::Acquire) || !waited {
            return Err(Error::Poisoned(self.name.clone()));
        }
        Ok(())
    }

    /// Flushes and syncs everything now.
    pub fn sync_now(&self) -> Result<()> {
        let lsn = {
            let s = lock(&self.state);
            s.written + s.pending.len() as u64
        };
        self.sync_to(lsn.max(1))
    }

    /// Bytes written since the last snapshot.
    pub fn unsnapshotted(&self) -> u64 {
        let s = lock(&self.state);
        s.written + s.pending.len() as u64 - s.snapshot_written
    }

    /// Writes `index.snap` for the current log position.
    pub fn snapshot(&self) -> Result<()> {
        let _one = lock(&self.snapshotting);
        let (bytes, file, written) = {
            let mut s = lock(&self.state);
            self.check_live(&s)?;
            self.write_pending(&mut s)?;
            let mut out = Vec::with_capacity(64 + s.index.len() * 48);
            out.extend_from_slice(SNAP_MAGIC);
            out.extend_from_slice(&s.gen.to_le_bytes());
            out.extend_from_slice(&s.active.to_le_bytes());
            out.extend_from_slice(&s.active_len.to_le_bytes());
            out.extend_from_slice(&s.next_id.to_le_bytes());
            out.extend_from_slice(&(s.index.len() as u64).to_le_bytes());
            for key in s.order.values() {
                let Some(loc) = s.index.get(key) else {
                    continue;
                };
                out.extend_from_slice(&(key.len() as u16).to_le_bytes());
                out.extend_from_slice(key);
                out.extend_from_slice(&loc.file.to_le_bytes());
                out.extend_from_slice(&loc.offset.to_le_bytes());
                out.extend_from_slice(&loc.value_len.to_le_bytes());
                out.extend_from_slice(&loc.time.to_le_bytes());
            }
            (out, s.active_file.clone(), s.written)
        };
        // The snapshot may only point at synced data.
        file.sync_data()
            .map_err(|e| Error::io(format!("syncing namespace {}", self.name), e))?;
        let mut bytes = bytes;
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(sum.as_bytes());
        write_atomic(&self.dir.join("index.snap"), &bytes)?;
        lock(&self.state).snapshot_written = written;
        Ok(())
    }

    /// Rewrites the live records of all closed data files into new files
    /// and switches to them with one manifest rename. A crash before the
    /// rename leaves the old files in charge (the new ones are removed on
    /// open); after it, the new ones (the old ones are removed). Returns
    /// the bytes reclaimed.
    pub fn compact(&self) -> Result<u64> {
        let _one = lock(&self.compacting);
        let before;
        let (sealed, live, handles) = {
            let mut s = lock(&self.state);
            self.check_live(&s)?;
            before = s.disk_bytes;
            if s.active_len + s.pending.len() as u64 > 0 {
                self.rotate(&mut s)?;
            }
            let sealed: Vec<u32> = s.files[..s.files.len() - 1].to_vec();
            if sealed.is_empty() {
                return Ok(0);
            }
            let live: Vec<(Arc<[u8]>, Loc)> = s
                .order
                .values()
                .filter_map(|k| s.index.get(k).map(|l| (k.clone(), *l)))
                .filter(|(_, l)| sealed.contains(&l.file))
                .collect();
            let handles: HashMap<u32, Arc<File>> = sealed
                .iter()
                .filter_map(|id| s.handles.get(id).map(|f| (*id, f.clone())))
                .collect();
            (sealed, live, handles)
        };

        // Copy outside the lock: reads and writes go on meanwhile.
        let mut outputs: Vec<(u32, Arc<File>, u64)> = Vec::new();
        let mut moved: Vec<(Arc<[u8]>, Loc, Loc)> = Vec::with_capacity(live.len());
        let mut buf = Vec::with_capacity(1 << 20);
        let mut scratch = Vec::new();
        let result = (|| -> Result<()> {
            let mut current: Option<(u32, Arc<File>, u64)> = None;
            for (key, loc) in &live {
                let file = handles
                    .get(&loc.file)
                    .ok_or_else(|| Error::Corrupt(format!("data file {} gone", loc.file)))?;
                read_at(file, loc, &mut scratch)?;
                let rec = &scratch[..loc.record_len() as usize];
                let need_new = match &current {
                    None => true,
                    Some((_, _, len)) => {
                        len + buf.len() as u64 + rec.len() as u64 > self.options.file_size
                            && len + buf.len() as u64 > 0
                    }
                };
                if need_new {
                    if let Some((id, f, len)) = current.take() {
                        f.write_all_at(&buf, len)
                            .map_err(|e| Error::io("compaction write", e))?;
                        outputs.push((id, f, len + buf.len() as u64));
                        buf.clear();
                    }
                    let id = {
                        let mut s = lock(&self.state);
                        let id = s.next_file;
                        s.next_file += 1;
                        id
                    };
                    let path = data_path(&self.dir, id);
                    let f = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .map_err(|e| Error::at(&path, "creating", e))?;
                    current = Some((id, Arc::new(f), 0));
                }
                let Some((id, f, len)) = current.as_mut() else {
                    return Err(Error::Invalid("compaction: no output".into()));
                };
                let new = Loc {
                    file: *id,
                    offset: *len + buf.len() as u64,
                    ..*loc
                };
                buf.extend_from_slice(rec);
                moved.push((key.clone(), *loc, new));
                if buf.len() >= 1 << 20 {
                    f.write_all_at(&buf, *len)
                        .map_err(|e| Error::io("compaction write", e))?;
                    *len += buf.len() as u64;
                    buf.clear();
                }
            }
            if let Some((id, f, len)) = current.take() {
                f.write_all_at(&buf, len)
                    .map_err(|e| Error::io("compaction write", e))?;
                outputs.push((id, f, len + buf.len() as u64));
            }
            for (_, f, _) in &outputs {
                f.sync_all().map_err(|e| Error::io("compaction sync", e))?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            // Outputs are not in the manifest: removed now, or on open.
            for (id, _, _) in &outputs {
                let _ = std::fs::remove_file(data_path(&self.dir, *id));
            }
            if let Some((_, _, new)) = moved.last() {
                let _ = std::fs::remove_file(data_path(&self.dir, new.file));
            }
            return Err(e);
        }

        // Switch: one manifest rename.
        {
            let mut s = lock(&self.state);
            let rest: Vec<u32> = s
                .files
                .iter()
                .copied()
                .filter(|id| !sealed.contains(id))
                .collect();
            let mut files: Vec<u32> = outputs.iter().map(|(id, _, _)| *id).collect();
            files.extend(rest);
            let m = Manifest {
                gen: s.gen + 1,
                files,
                next_file: s.next_file,
                next_id: s.next_id,
            };
            write_manifest(&self.dir, &m)?;
            s.gen = m.gen;
            s.files = m.files;
            for (id, f, _) in &outputs {
                s.handles.insert(*id, f.clone());
            }
            for id in &sealed {
                s.handles.remove(id);
            }
            for (key, old, new) in moved {
                if let Some(cur) = s.index.get_mut(&key) {
                    if cur.file == old.file && cur.offset == old.offset {
                        cur.file = new.file;
                        cur.offset = new.offset;
                    }
                }
            }
            let mut disk = 0;
            for f in s.handles.values() {
                disk += f.metadata().map(|m| m.len()).unwrap_or(0);
            }
            s.disk_bytes = disk + s.pending.len() as u64;
        }
        for id in &sealed {
            let path = data_path(&self.dir, *id);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(namespace = %self.name, "removing {}: {e}", path.display());
            }
        }
        sync_dir(&self.dir)?;
        self.snapshot()?;
        let after = lock(&self.state).disk_bytes;
        tracing::info!(namespace = %self.name, before, after, "compacted");
        Ok(before.saturating_sub(after))
    }

    /// Flush, sync, snapshot, stop the sync thread.
    pub fn close(&self) -> Result<()> {
        let result = if self.is_deleted() {
            Ok(())
        } else {
            self.sync_now().and_then(|_| self.snapshot())
        };
        self.stop_thread();
        result
    }

    fn stop_thread(&self) {
        lock(&self.sync.req).stop = true;
        self.sync.cv.notify_all();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }

    /// Marks the namespace deleted (connections that had it selected get an
    /// error) and stops its sync thread; the caller removes the directory.
    pub fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Relaxed);
        self.stop_thread();
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Hands the pending records to the kernel in one write.
fn write_pending(name: &str, s: &mut State) -> Result<()> {
    if s.pending.is_empty() {
        return Ok(());
    }
    if let Err(e) = s.active_file.write_all_at(&s.pending, s.active_len) {
        s.poisoned = true;
        tracing::error!(
            namespace = name,
            "write failed, namespace stops serving: {e}"
        );
        return Err(Error::io(format!("writing namespace {name}"), e));
    }
    let n = s.pending.len() as u64;
    s.active_len += n;
    s.written += n;
    s.pending.clear();
    if s.pending.capacity() > 4 << 20 {
        s.pending.shrink_to(64 << 10);
    }
    Ok(())
}

fn write_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    let json = serde_json::to_vec(m).map_err(|e| Error::Invalid(format!("manifest: {e}")))?;
    write_atomic(&dir.join("MANIFEST"), &json)
}

/// Removes data files the manifest does not list and temp files.
fn remove_leftovers(dir: &Path, m: &Manifest) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::at(dir, "listing", e))?;
    let mut removed = false;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stale = if let Some(stem) = name.strip_suffix(".dat") {
            stem.parse::<u32>()
                .map_or(true, |id| !m.files.contains(&id))
        } else {
            name.ends_with(".tmp")
        };
        if stale {
            tracing::info!("removing leftover {}", entry.path().display());
            std::fs::remove_file(entry.path())
                .map_err(|e| Error::at(&entry.path(), "removing", e))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Reads a record from the pending buffer or its file into `scratch`.
fn read_record(s: &State, loc: &Loc, scratch: &mut Vec<u8>) -> Result<std::ops::Range<usize>> {
    if loc.file == s.active && loc.offset >= s.active_len {
        let start = (loc.offset - s.active_len) as usize;
        let end = start + loc.record_len() as usize;
        let rec = s
            .pending
            .get(start..end)
            .ok_or_else(|| Error::Corrupt("pending record out of range".into()))?;
        scratch.clear();
        scratch.extend_from_slice(rec);
        return verified(scratch, loc);
    }
    let file = s.handle(loc.file)?;
    read_at(&file, loc, scratch)
}

/// One pread for the whole record, then the checksum.
fn read_at(file: &File, loc: &Loc, scratch: &mut Vec<u8>) -> Result<std::ops::Range<usize>> {
    let len = loc.record_len() as usize;
    scratch.clear();
    scratch.resize(len, 0);
    file.read_exact_at(scratch, loc.offset)
        .map_err(|e| Error::io("reading a record", e))?;
    verified(scratch, loc)
}

fn verified(rec: &[u8], loc: &Loc) -> Result<std::ops::Range<usize>> {
    match record::verify(rec) {
        Some(h) if h.key_len == loc.key_len && h.value_len == loc.value_len => {
            let start = HEADER + loc.key_len as usize;
            Ok(start..start + loc.value_len as usize)
        }
        _ => Err(Error::Corrupt(format!(
            "record at file {} offset {} fails its checksum",
            loc.file, loc.offset
        ))),
    }
}

/// Replays one data file from `offset` into the index. A record that is
/// incomplete or fails its checksum ends the file: in the last file that is
/// a torn tail from a crash, cut off; in a closed file it is damage, logged.
/// Returns the end of the good records and how many were replayed.
fn replay_file(
    dir: &Path,
    id: u32,
    offset: u64,
    last: bool,
    s: &mut State,
    mode: Mode,
) -> Result<(u64, u64)> {
    let path = data_path(dir, id);
    let file = s.handle(id)?;
    let size = file
        .metadata()
        .map_err(|e| Error::at(&path, "stat", e))?
        .len();
    let mut pos = offset;
    let mut count = 0;
    let mut chunk: Vec<u8> = Vec::new();
    let mut chunk_start = offset;
    let mut head = [0u8; HEADER];
    let mut bad: Option<&'static str> = None;
    // Reads [at, at+len) through a 4 MiB window.
    let mut fetch = |at: u64, len: usize, out: &mut Vec<u8>| -> std::io::Result<bool> {
        if at + len as u64 > size {
            return Ok(false);
        }
        if at < chunk_start || at + len as u64 > chunk_start + chunk.len() as u64 {
            let want = (size - at).min((4 << 20).max(len as u64)) as usize;
            chunk.resize(want, 0);
            file.read_exact_at(&mut chunk, at)?;
            chunk_start = at;
        }
        let from = (at - chunk_start) as usize;
        out.clear();
        out.extend_from_slice(&chunk[from..from + len]);
        Ok(true)
    };
    let mut rec = Vec::new();
    while pos < size {
        if !fetch(pos, HEADER, &mut rec).map_err(|e| Error::at(&path, "reading", e))? {
            bad = Some("incomplete header");
            break;
        }
        head.copy_from_slice(&rec);
        let Some(h): Option<Header> = Header::decode(&head) else {
            bad = Some("not a record header");
            break;
        };
        if !fetch(pos, h.record_len() as usize, &mut rec)
            .map_err(|e| Error::at(&path, "reading", e))?
        {
            bad = Some("incomplete record");
            break;
        }
        if record::verify(&rec).is_none() {
            bad = Some("checksum mismatch");
            break;
        }
        let key = &rec[HEADER..HEADER + h.key_len as usize];
        let loc = (!h.is_tombstone()).then_some(Loc {
            file: id,
            offset: pos,
            key_len: h.key_len,
            value_len: h.value_len,
            time: h.time,
            seq: 0,
        });
        s.apply(mode, key, loc);
        pos += h.record_len();
        count += 1;
    }
    if let Some(why) = bad {
        if last {
            tracing::warn!(
                "{}: {why} at offset {pos} of {size}: torn tail, truncating",
                path.display()
            );
            file.set_len(pos)
                .and_then(|_| file.sync_all())
                .map_err(|e| Error::at(&path, "truncating", e))?;
        } else {
            tracing::error!(
                "{}: {why} at offset {pos} of {size} in a closed file: the rest of it is skipped",
                path.display()
            );
        }
    }
    Ok((pos, count))
}

/// Loads `index.snap`. Ok(None) when there is none; Err when it is unusable
/// (the caller rebuilds). Returns the log position to replay from.
fn load_snapshot(dir: &Path, s: &mut State, mode: Mode) -> Result<Option<(u32, u64)>> {
    let path = dir.join("index.snap");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::at(&path, "reading", e)),
    };
    let bad = |why: &str| Error::Corrupt(format!("{}: {why}", path.display()));
    if bytes.len() < 8 + 36 + 32 || &bytes[..8] != SNAP_MAGIC {
        return Err(bad("not a snapshot"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err(bad("checksum mismatch"));
    }
    let mut r = Reader { b: body, at: 8 };
    let gen = r.u64().ok_or_else(|| bad("short"))?;
    let file = r.u32().ok_or_else(|| bad("short"))?;
    let offset = r.u64().ok_or_else(|| bad("short"))?;
    let next_id = r.u64().ok_or_else(|| bad("short"))?;
    let count = r.u64().ok_or_else(|| bad("short"))?;
    if gen != s.gen {
        return Err(bad("from another manifest generation"));
    }
    // Each entry takes at least 22 bytes: a bound on what to reserve.
    s.index.reserve((count as usize).min(body.len() / 22));
    let size = s
        .handles
        .get(&file)
        .ok_or_else(|| bad("position in a file the manifest does not list"))?
        .metadata()
        .map_err(|e| Error::at(&path, "stat", e))?
        .len();
    if offset > size {
        return Err(bad("position beyond the data"));
    }
    for _ in 0..count {
        let klen = r.u16().ok_or_else(|| bad("short"))? as usize;
        let key = r.take(klen).ok_or_else(|| bad("short"))?;
        let f = r.u32().ok_or_else(|| bad("short"))?;
        let off = r.u64().ok_or_else(|| bad("short"))?;
        let vlen = r.u32().ok_or_else(|| bad("short"))?;
        let time = r.u32().ok_or_else(|| bad("short"))?;
        if klen > MAX_KEY || !s.handles.contains_key(&f) {
            return Err(bad("entry points outside the log"));
        }
        s.apply(
            mode,
            key,
            Some(Loc {
                file: f,
                offset: off,
                key_len: klen as u16,
                value_len: vlen,
                time,
                seq: 0,
            }),
        );
    }
    if r.at != body.len() {
        return Err(bad("trailing bytes"));
    }
    s.next_id = s.next_id.max(next_id);
    Ok(Some((file, offset)))
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// The sync thread: on demand (`always` committers) or each second
/// (everysec), one write of everything pending and one fdatasync.
fn sync_loop(name: &str, state: &Mutex<State>, sync: &SyncShared) {
    loop {
        let stop = {
            let mut r = lock(&sync.req);
            loop {
                if r.stop || r.wanted > sync.synced.load(Ordering::Acquire) {
                    break;
                }
                sync.idle.store(true, Ordering::Release);
                let (g, t) = sync
                    .cv
                    .wait_timeout(r, Duration::from_secs(1))
                    .unwrap_or_else(|e| e.into_inner());
                sync.idle.store(false, Ordering::Release);
                r = g;
                if t.timed_out() {
                    break;
                }
            }
            r.stop
        };
        if sync.failed.load(Ordering::Acquire) {
            return;
        }
        {
            let _leader = lock(&sync.leader);
            let (lsn, file) = {
                let mut s = lock(state);
                if write_pending(name, &mut s).is_err() {
                    sync.failed.store(true, Ordering::Release);
                    sync.remote.send_replace(u64::MAX);
                    return;
                }
                (s.written, s.active_file.clone())
            };
            if lsn > sync.synced.load(Ordering::Acquire) {
                sync.syncs.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = file.sync_data() {
                    tracing::error!(
                        namespace = name,
                        "fdatasync failed, namespace stops serving: {e}"
                    );
                    lock(state).poisoned = true;
                    sync.failed.store(true, Ordering::Release);
                    sync.remote.send_replace(u64::MAX);
                    return;
                }
                sync.synced.fetch_max(lsn, Ordering::AcqRel);
            }
            sync.remote
                .send_replace(sync.synced.load(Ordering::Acquire));
        }
        if stop {
            return;
        }
    }
}
