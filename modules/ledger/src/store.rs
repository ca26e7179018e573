//! The ledger on LMDB: group-committed appends (the pipeline of
//! [`crate::writer`]), reads from any thread, derived indexes and the
//! stored Merkle tree.
//!
//! Databases (all keys big-endian so byte order is numeric order):
//! - `entries`: seq -> record (`body || signature`), the only primary data
//! - `tree`: position(u64) in creation order -> complete subtree hash
//!   (see [`tree_key`])
//! - `hash`: entry hash -> seq
//! - `deploy`, `owner`, `workload`, `kind`, `time`: see [`crate::index`]
//! - `live`: deployment id -> version || seq of its latest live entry
//! - `meta`: `public_key`, `indexed_to` (entries whose tree nodes and index
//!   keys are written), `index_version`
//!
//! The tree and the indexes are written in the same transaction as the
//! entries, so after a crash they match; `indexed_to` lets an older or
//! damaged set of derived databases be rebuilt from the entries at open.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, RoTxn, RwTxn, WithoutTls};

use crate::entry::{self, DecodeError, EncodeError, Entry, EntryMeta, Hash, Kind};
use crate::index;
use crate::signer::Signer;
use crate::verifier::{self, NodeSource, SignedTreeHead};
use crate::writer::{self, Request, Tip};

type Db = Database<'static, Bytes, Bytes>;

/// Bumped when the derived databases change shape: a mismatch at open
/// rebuilds them all from the entries. 2: tree keys in creation order.
pub(crate) const INDEX_VERSION: u32 = 2;
/// Entries re-derived in one transaction when rebuilding.
const REBUILD_TXN: u64 = 8192;

const META_PUBLIC_KEY: &[u8] = b"public_key";
pub(crate) const META_INDEXED_TO: &[u8] = b"indexed_to";
const META_INDEX_VERSION: &[u8] = b"index_version";

/// What went wrong, with the input it concerned.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger storage in {dir}: {source}")]
    Open { dir: PathBuf, source: heed::Error },
    #[error("creating ledger directory {dir}: {source}")]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("ledger storage: {0}")]
    Storage(#[from] heed::Error),
    #[error("append failed, nothing was written: {0}")]
    WriteFailed(String),
    #[error("entry rejected: {0}")]
    Invalid(#[from] EncodeError),
    #[error("ledger holds entries signed by key {stored}, the signer has key {given}")]
    KeyMismatch { stored: String, given: String },
    #[error("ledger was opened without a signer: it cannot append or sign heads")]
    NoSigner,
    #[error("the ledger has its signer already")]
    SignerAttached,
    #[error("the ledger has no signer: {0}")]
    SignerFailed(String),
    #[error("the ledger's writer has stopped")]
    WriterGone,
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    #[error("entry {seq} does not decode: {source}")]
    Decode { seq: u64, source: DecodeError },
    #[error("seq {seq} is not below the tree size {size}")]
    OutOfRange { seq: u64, size: u64 },
    #[error("signing: {0}")]
    Sign(#[from] crate::signer::SignError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("import: {0}")]
    Import(String),
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// How to open a ledger.
#[derive(Debug, Clone)]
pub struct Options {
    /// Largest size the LMDB map may grow to (address space, not disk).
    pub map_size: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { map_size: 64 << 30 }
    }
}

/// What an append gives back once the entry is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    pub hash: Hash,
    pub time_ms: u64,
}

/// Which index a scan walks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// Every entry in seq order.
    All,
    Owner(String),
    Workload(String),
    Kind(Kind),
    /// Entries with `from_ms <= time <= to_ms`.
    Time {
        from_ms: u64,
        to_ms: u64,
    },
}

/// One page of a scan; `next` is the cursor for the following page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub seqs: Vec<u64>,
    pub next: Option<u64>,
}

#[derive(Clone, Copy)]
pub(crate) struct Dbs {
    pub entries: Db,
    pub tree: Db,
    pub meta: Db,
    pub hash: Db,
    pub deploy: Db,
    pub owner: Db,
    pub workload: Db,
    pub kind: Db,
    pub time: Db,
    pub live: Db,
}

impl Dbs {
    /// Everything derived from the entries.
    fn derived(&self) -> [Db; 8] {
        [
            self.tree,
            self.hash,
            self.deploy,
            self.owner,
            self.workload,
            self.kind,
            self.time,
            self.live,
        ]
    }
}

/// The right edge of the Merkle tree: for every set bit `l` of `size`,
/// the complete subtree at level `l` ending at the last leaf. Enough to
/// append a leaf and to compute the root without reading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    pub size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// Adds the leaf for `entry_hash`, calling `emit(level, index, hash)`
    /// for every complete subtree it completes (the leaf itself first).
    pub fn push<E>(
        &mut self,
        entry_hash: &Hash,
        mut emit: impl FnMut(u8, u64, &Hash) -> Result<(), E>,
    ) -> Result<(), E> {
        let n = self.size;
        let mut h = verifier::leaf_hash(entry_hash);
        emit(0, n, &h)?;
        let mut level = 0usize;
        while (n >> level) & 1 == 1 {
            h = verifier::node_hash(&self.nodes[level], &h);
            level += 1;
            emit(level as u8, n >> level, &h)?;
        }
        if self.nodes.len() <= level {
            self.nodes.resize(level + 1, [0; 32]);
        }
        self.nodes[level] = h;
        self.size = n + 1;
        Ok(())
    }

    /// The Merkle root of the `size` leaves.
    pub fn root(&self) -> Hash {
        let mut acc: Option<Hash> = None;
        for level in 0..64 {
            if (self.size >> level) & 1 == 1 {
                let node = &self.nodes[level];
                acc = Some(match acc {
                    None => *node,
                    Some(right) => verifier::node_hash(node, &right),
                });
            }
        }
        acc.unwrap_or_else(verifier::empty_root)
    }

    fn load<S: NodeSource>(src: &S, size: u64) -> Result<Frontier, S::Error> {
        let mut nodes = vec![[0u8; 32]; 64 - size.leading_zeros() as usize];
        for (level, slot) in nodes.iter_mut().enumerate() {
            if (size >> level) & 1 == 1 {
                *slot = src.node(level as u8, (size >> level) - 1)?;
            }
        }
        Ok(Frontier { size, nodes })
    }
}

/// The key of the complete subtree at `level` and `index`: its position
/// in the order appends create nodes (post-order). Appends then only add
/// keys at the end of the `tree` database, so a group commit dirties its
/// last pages instead of one page per level.
pub(crate) fn tree_key(level: u8, index: u64) -> [u8; 8] {
    // The node is completed by leaf m, after the 2m - popcount(m) nodes of
    // the leaves before m, the leaf m itself and the `level - 1` nodes
    // below it on m's path.
    let m = (index.wrapping_add(1) << level).wrapping_sub(1);
    let pos = m
        .wrapping_mul(2)
        .wrapping_sub(u64::from(m.count_ones()))
        .wrapping_add(u64::from(level));
    pos.to_be_bytes()
}

/// Reads stored tree nodes inside a transaction.
pub(crate) struct TreeReader<'a> {
    pub txn: &'a RoTxn<'a>,
    pub db: Db,
}

impl NodeSource for TreeReader<'_> {
    type Error = LedgerError;
    fn node(&self, level: u8, index: u64) -> Result<Hash> {
        let v = self
            .db
            .get(self.txn, &tree_key(level, index))?
            .ok_or_else(|| LedgerError::Corrupt(format!("tree node {level}/{index} is missing")))?;
        v.try_into().map_err(|_| {
            LedgerError::Corrupt(format!("tree node {level}/{index} is {} bytes", v.len()))
        })
    }
}

/// Writes an entry's tree nodes and index keys: the one place derived data
/// comes from, for appends, rebuilds and imports alike.
pub(crate) fn derive(
    wtxn: &mut RwTxn,
    dbs: &Dbs,
    frontier: &mut Frontier,
    header: &entry::Header,
    hash: &Hash,
    meta: &EntryMeta,
) -> Result<()> {
    let (seq, time_ms, kind) = (header.seq, header.time_ms, header.kind);
    frontier.push(hash, |level, i, h| {
        dbs.tree.put(wtxn, &tree_key(level, i), h)
    })?;
    let s = seq.to_be_bytes();
    dbs.hash.put(wtxn, hash, &s)?;
    dbs.kind.put(wtxn, &index::kind_key(kind, seq), &[])?;
    dbs.time.put(wtxn, &index::time_key(time_ms, seq), &[])?;
    if !meta.owner.is_empty() {
        dbs.owner
            .put(wtxn, &index::name_key(&meta.owner, seq), &[])?;
    }
    for w in &meta.workloads {
        dbs.workload.put(wtxn, &index::name_key(w, seq), &[])?;
    }
    if !meta.deployment.is_empty() {
        let dep = meta.deployment.as_bytes();
        dbs.deploy.put(
            wtxn,
            &index::deploy_key(&meta.deployment, meta.version, seq),
            &[],
        )?;
        match kind {
            Kind::Deploy | Kind::Update => {
                let current = dbs.live.get(wtxn, dep)?.and_then(index::split_live);
                // An older version arriving late does not replace a newer one.
                if current.is_none_or(|(v, _)| meta.version >= v) {
                    dbs.live
                        .put(wtxn, dep, &index::live_value(meta.version, seq))?;
                }
            }
            Kind::Delete => {
                dbs.live.delete(wtxn, dep)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// A key range from `from` on, in the form heed takes for byte keys.
pub(crate) fn from_key(from: &[u8]) -> (Bound<&[u8]>, Bound<&[u8]>) {
    (Bound::Included(from), Bound::Unbounded)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn u64_of(v: &[u8], what: &str) -> Result<u64> {
    let a: [u8; 8] = v
        .try_into()
        .map_err(|_| LedgerError::Corrupt(format!("{what} is {} bytes, not 8", v.len())))?;
    Ok(u64::from_be_bytes(a))
}

/// Where the ledger's signer stands.
enum Signing {
    /// Opened for audit: no signer will come.
    Never,
    /// On its way ([`Ledger::attach_signer`]): appends queue, heads wait.
    Awaiting,
    Ready(Arc<dyn Signer>),
    /// It came with another key, or not at all.
    Failed(String),
}

struct Inner {
    env: Env<WithoutTls>,
    dbs: Dbs,
    /// The key entries are signed with: the stored one, or a new ledger's
    /// signer's once it came.
    public_key: OnceLock<[u8; 32]>,
    signing: Mutex<Signing>,
    signing_changed: Condvar,
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    /// Appends queued before the signer came, for the writer it starts.
    queued: Mutex<Option<mpsc::Receiver<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer once the queue is drained.
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Ok(mut w) = self.writer.lock() {
            if let Some(handle) = w.take() {
                let _ = handle.join();
            }
        }
    }
}

/// The ledger. Clones share one open environment and one writer.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

pub(crate) fn open_env(dir: &Path, opts: &Options) -> Result<(Env<WithoutTls>, Dbs)> {
    open_env_with(dir, opts, |_, _| Ok(()))
}

/// [`open_env`], running `setup` with the `meta` database in the
/// transaction that creates the databases: what a new ledger writes at
/// once then costs one durable commit, not one each (~50 ms apiece on a
/// node's first boot under TCG). An error from `setup` writes nothing.
fn open_env_with(
    dir: &Path,
    opts: &Options,
    setup: impl FnOnce(&mut heed::RwTxn, Database<Bytes, Bytes>) -> Result<()>,
) -> Result<(Env<WithoutTls>, Dbs)> {
    std::fs::create_dir_all(dir).map_err(|source| LedgerError::CreateDir {
        dir: dir.to_owned(),
        source,
    })?;
    let open_err = |source| LedgerError::Open {
        dir: dir.to_owned(),
        source,
    };
    // SAFETY: heed's contract is that the same file is not opened twice in
    // one process without heed knowing (it refuses a second open itself)
    // and that no one truncates it under us; the ledger directory belongs
    // to this module alone.
    let env = unsafe {
        EnvOpenOptions::new()
            .read_txn_without_tls()
            .map_size(opts.map_size)
            .max_dbs(16)
            .max_readers(256)
            .open(dir)
    }
    .map_err(open_err)?;
    let wtxn = env.write_txn().map_err(open_err)?;
    let dbs = env
        .create_databases_and_commit(wtxn, |dbo, wtxn| -> Result<_> {
            let mut make = |name| {
                dbo.create_database::<Bytes, Bytes>(wtxn, Some(name))
                    .map_err(open_err)
            };
            let dbs = [
                make("entries")?,
                make("tree")?,
                make("meta")?,
                make("hash")?,
                make("deploy")?,
                make("owner")?,
                make("workload")?,
                make("kind")?,
                make("time")?,
                make("live")?,
            ];
            setup(wtxn, dbs[2])?;
            Ok(CommitOrAbort::<_, ()>::Commit(dbs))
        })?
        .unwrap_commit();
    let [entries, tree, meta, hash, deploy, owner, workload, kind, time, live] = dbs;
    Ok((
        env,
        Dbs {
            entries,
            tree,
            meta,
            hash,
            deploy,
            owner,
            workload,
            kind,
            time,
            live,
        },
    ))
}

/// Number of entries: the last seq plus one.
pub(crate) fn entry_count(txn: &RoTxn, dbs: &Dbs) -> Result<u64> {
    match dbs.entries.last(txn)? {
        None => Ok(0),
        Some((k, _)) => Ok(u64_of(k, "entry key")? + 1),
    }
}

fn no_ledger(dir: &Path) -> LedgerError {
    LedgerError::Corrupt(format!(
        "{} holds no ledger (no public key recorded)",
        dir.display()
    ))
}

/// Records that the derived databases, in this version's format, hold no
/// entry yet.
fn mark_unindexed(wtxn: &mut heed::RwTxn, meta: Database<Bytes, Bytes>) -> Result<()> {
    meta.put(wtxn, META_INDEX_VERSION, &INDEX_VERSION.to_be_bytes())?;
    meta.put(wtxn, META_INDEXED_TO, &0u64.to_be_bytes())?;
    Ok(())
}

/// Brings the derived databases up to the entries: rebuilds them from
/// scratch when their format changed, else derives the entries they lack.
/// Returns how many entries were (re)derived.
pub(crate) fn catch_up(env: &Env<WithoutTls>, dbs: &Dbs) -> Result<u64> {
    catch_up_to(env, dbs, u64::MAX)
}

/// [`catch_up`], stopping after entry `limit - 1`.
fn catch_up_to(env: &Env<WithoutTls>, dbs: &Dbs, limit: u64) -> Result<u64> {
    let mut wtxn = env.write_txn()?;
    let total = entry_count(&wtxn, dbs)?.min(limit);
    let version = dbs
        .meta
        .get(&wtxn, META_INDEX_VERSION)?
        .and_then(|v| <[u8; 4]>::try_from(v).ok())
        .map(u32::from_be_bytes);
    let mut done = match dbs.meta.get(&wtxn, META_INDEXED_TO)? {
        Some(v) => u64_of(v, "indexed_to")?,
        None => 0,
    };
    if version != Some(INDEX_VERSION) || done > total {
        for db in dbs.derived() {
            db.clear(&mut wtxn)?;
        }
        done = 0;
        mark_unindexed(&mut wtxn, dbs.meta)?;
    }
    if done == total {
        wtxn.commit()?;
        return Ok(0);
    }
    let start = done;
    tracing::info!("ledger: deriving tree and indexes for entries {done}..{total}");
    // Index keys of a partly derived entry may exist already: puts of the
    // same key are idempotent, and `live` is recomputed in seq order.
    let mut frontier = Frontier::load(
        &TreeReader {
            txn: &wtxn,
            db: dbs.tree,
        },
        done,
    )?;
    while done < total {
        let end = (done + REBUILD_TXN).min(total);
        for seq in done..end {
            let record = dbs
                .entries
                .get(&wtxn, &seq.to_be_bytes())?
                .ok_or_else(|| LedgerError::Corrupt(format!("entry {seq} is missing")))?
                .to_vec();
            let (body, _) = entry::split_record(&record)
                .map_err(|source| LedgerError::Decode { seq, source })?;
            let (h, meta, _) =
                entry::decode_body(body).map_err(|source| LedgerError::Decode { seq, source })?;
            let hash = entry::body_hash(body);
            derive(&mut wtxn, dbs, &mut frontier, &h, &hash, &meta)?;
        }
        dbs.meta
            .put(&mut wtxn, META_INDEXED_TO, &end.to_be_bytes())?;
        wtxn.commit()?;
        done = end;
        wtxn = env.write_txn()?;
    }
    wtxn.commit()?;
    Ok(total - start)
}

impl Ledger {
    /// Opens (or creates) the ledger in `dir`, signing appends with `signer`.
    /// A ledger keeps the key it was created with: another key is refused.
    pub fn open(dir: &Path, signer: Arc<dyn Signer>, opts: Options) -> Result<Ledger> {
        let ledger = Self::open_awaiting_signer(dir, opts)?;
        ledger.attach_signer(signer)?;
        Ok(ledger)
    }

    /// Opens (or creates) the ledger in `dir` to serve before its signer
    /// is here: reads answer at once, appends queue and signed heads wait
    /// until [`Ledger::attach_signer`] (or fail after
    /// [`Ledger::signer_failed`]). On a node the signer is the identity
    /// module, which starts beside the ledger: nothing waits for the one to
    /// open the other, and provision reads the ledger meanwhile.
    pub fn open_awaiting_signer(dir: &Path, opts: Options) -> Result<Ledger> {
        Self::open_inner(dir, opts, Signing::Awaiting)
    }

    /// Opens an existing ledger to read and verify it, without a key: an
    /// auditor's copy, or a ledger imported from another node.
    pub fn open_for_audit(dir: &Path, opts: Options) -> Result<Ledger> {
        if !dir.join("data.mdb").exists() {
            return Err(no_ledger(dir));
        }
        Self::open_inner(dir, opts, Signing::Never)
    }

    fn open_inner(dir: &Path, opts: Options, signing: Signing) -> Result<Ledger> {
        // A new ledger's indexes are marked current (and empty) in the
        // commit that creates it: a durable commit costs ~50 ms at boot.
        let (env, dbs) = open_env_with(dir, &opts, |wtxn, meta| {
            if meta.is_empty(wtxn)? {
                mark_unindexed(wtxn, meta)?;
            }
            Ok(())
        })?;
        // Reader slots of a process killed mid-read would pin old pages.
        let stale = env.clear_stale_readers()?;
        if stale > 0 {
            tracing::info!("ledger: cleared {stale} stale reader slots");
        }
        let stored = {
            let rtxn = env.read_txn()?;
            let k = dbs.meta.get(&rtxn, META_PUBLIC_KEY)?;
            k.map(|k| {
                <[u8; 32]>::try_from(k).map_err(|_| {
                    LedgerError::Corrupt(format!("stored public key is {} bytes", k.len()))
                })
            })
            .transpose()?
        };
        let public_key = OnceLock::new();
        match stored {
            Some(k) => {
                let _ = public_key.set(k);
            }
            None if matches!(signing, Signing::Never) => return Err(no_ledger(dir)),
            None => {}
        }
        let rederived = catch_up(&env, &dbs)?;
        if rederived > 0 {
            tracing::info!("ledger: rebuilt tree and indexes of {rederived} entries");
        }
        let (tx, queued) = match signing {
            Signing::Never => (None, None),
            _ => {
                let (tx, rx) = mpsc::channel();
                (Some(tx), Some(rx))
            }
        };
        Ok(Ledger {
            inner: Arc::new(Inner {
                env,
                dbs,
                public_key,
                signing: Mutex::new(signing),
                signing_changed: Condvar::new(),
                tx: Mutex::new(tx),
                queued: Mutex::new(queued),
                writer: Mutex::new(None),
                dir: dir.to_owned(),
            }),
        })
    }

    /// Gives the ledger its signer: checks its key against the stored one
    /// (a new ledger records it, durably), then starts the writer, which
    /// takes the appends queued meanwhile. An error leaves the ledger
    /// without a signer for good: what waits for one fails.
    pub fn attach_signer(&self, signer: Arc<dyn Signer>) -> Result<()> {
        // Held throughout: a second attach or a `signer_failed` waits, and
        // then finds the state this one left.
        let mut signing = self.signing()?;
        match &*signing {
            Signing::Never => return Err(LedgerError::NoSigner),
            Signing::Awaiting => {}
            Signing::Ready(_) | Signing::Failed(_) => return Err(LedgerError::SignerAttached),
        }
        let started = self.start_writer(signer.clone());
        *signing = match &started {
            Ok(()) => Signing::Ready(signer),
            Err(e) => {
                self.drop_queued();
                Signing::Failed(e.to_string())
            }
        };
        drop(signing);
        self.inner.signing_changed.notify_all();
        started
    }

    /// The signer will not come (say, identity never answered): queued
    /// appends and waiting heads fail with `why`. A ledger that has its
    /// signer keeps it.
    pub fn signer_failed(&self, why: String) {
        if let Ok(mut signing) = self.signing() {
            if matches!(*signing, Signing::Awaiting) {
                self.drop_queued();
                *signing = Signing::Failed(why);
            }
        }
        self.inner.signing_changed.notify_all();
    }

    /// Appends queued for a writer that will not start fail (their reply
    /// channels close).
    fn drop_queued(&self) {
        if let Ok(mut q) = self.inner.queued.lock() {
            q.take();
        }
    }

    /// Checks or records the key, then starts the writer on the queue.
    fn start_writer(&self, signer: Arc<dyn Signer>) -> Result<()> {
        let (env, dbs) = (&self.inner.env, self.inner.dbs);
        let given = signer.public_key();
        match self.inner.public_key.get() {
            Some(&stored) if stored != given => {
                return Err(LedgerError::KeyMismatch {
                    stored: hex(&stored),
                    given: hex(&given),
                })
            }
            Some(_) => {}
            None => {
                let mut wtxn = env.write_txn()?;
                dbs.meta.put(&mut wtxn, META_PUBLIC_KEY, &given)?;
                wtxn.commit()?;
                let _ = self.inner.public_key.set(given);
            }
        }
        let (tip, frontier) = Self::chain_state(env, &dbs)?;
        let rx = self
            .inner
            .queued
            .lock()
            .map_err(|_| LedgerError::WriterGone)?
            .take()
            .ok_or(LedgerError::SignerAttached)?;
        let handle = writer::spawn(env.clone(), dbs, signer, tip, frontier, rx)?;
        *self
            .inner
            .writer
            .lock()
            .map_err(|_| LedgerError::WriterGone)? = Some(handle);
        Ok(())
    }

    fn signing(&self) -> Result<std::sync::MutexGuard<'_, Signing>> {
        self.inner
            .signing
            .lock()
            .map_err(|_| LedgerError::WriterGone)
    }

    /// The signer, once here (waits while it is on its way).
    fn signer(&self) -> Result<Arc<dyn Signer>> {
        let mut s = self.signing()?;
        loop {
            match &*s {
                Signing::Never => return Err(LedgerError::NoSigner),
                Signing::Ready(signer) => return Ok(signer.clone()),
                Signing::Failed(why) => return Err(LedgerError::SignerFailed(why.clone())),
                Signing::Awaiting => {
                    s = self
                        .inner
                        .signing_changed
                        .wait(s)
                        .map_err(|_| LedgerError::WriterGone)?
                }
            }
        }
    }

    fn chain_state(env: &Env<WithoutTls>, dbs: &Dbs) -> Result<(Tip, Frontier)> {
        let rtxn = env.read_txn()?;
        let size = entry_count(&rtxn, dbs)?;
        fn header(seq: u64, record: &[u8]) -> Result<(entry::Header, &[u8], [u8; 64])> {
            entry::split_record(record)
                .and_then(|(body, sig)| Ok((entry::decode_header(body)?, body, *sig)))
                .map_err(|source| LedgerError::Decode { seq, source })
        }
        let mut tip = Tip {
            next_seq: size,
            prev: [0; 32],
            last_time: 0,
            sigs: [0; 32],
        };
        if let Some((_, record)) = dbs.entries.last(&rtxn)? {
            let (h, body, _) = header(size - 1, record)?;
            tip.prev = entry::body_hash(body);
            tip.last_time = h.time_ms;
            // The last entry names the chain up to its group; the rest of
            // the chain is that group's signatures (version 1: no chain).
            if let Some(c) = h.sig_chain {
                tip.sigs = c.hash;
                for seq in c.upto..size {
                    let record = dbs
                        .entries
                        .get(&rtxn, &seq.to_be_bytes())?
                        .ok_or_else(|| LedgerError::Corrupt(format!("entry {seq} is missing")))?;
                    let (_, _, sig) = header(seq, record)?;
                    tip.sigs = entry::chain_signature(&tip.sigs, &sig);
                }
            }
        }
        let frontier = Frontier::load(
            &TreeReader {
                txn: &rtxn,
                db: dbs.tree,
            },
            size,
        )?;
        Ok((tip, frontier))
    }

    /// The directory the ledger lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The key every entry is signed with. A new ledger learns it from its
    /// signer: until that came, this waits.
    pub fn public_key(&self) -> Result<[u8; 32]> {
        if let Some(k) = self.inner.public_key.get() {
            return Ok(*k);
        }
        self.signer()?;
        self.inner
            .public_key
            .get()
            .copied()
            .ok_or(LedgerError::NoSigner)
    }

    fn sender(&self) -> Result<mpsc::Sender<Request>> {
        match &*self.signing()? {
            Signing::Never => return Err(LedgerError::NoSigner),
            Signing::Failed(why) => return Err(LedgerError::SignerFailed(why.clone())),
            Signing::Awaiting | Signing::Ready(_) => {}
        }
        self.inner
            .tx
            .lock()
            .map_err(|_| LedgerError::WriterGone)?
            .clone()
            .ok_or(LedgerError::WriterGone)
    }

    fn enqueue(
        &self,
        kind: Kind,
        meta: EntryMeta,
        payload: Vec<u8>,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Receipt>>> {
        entry::check_limits(&meta, &payload)?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.sender()?
            .send(Request {
                kind,
                meta,
                payload,
                reply,
            })
            .map_err(|_| LedgerError::WriterGone)?;
        Ok(rx)
    }

    /// Appends an entry; returns once it is committed and synced to disk.
    /// Must not be called from inside an async runtime: use
    /// [`Ledger::append_async`] there.
    pub fn append(&self, kind: Kind, meta: EntryMeta, payload: Vec<u8>) -> Result<Receipt> {
        self.enqueue(kind, meta, payload)?
            .blocking_recv()
            .map_err(|_| LedgerError::WriterGone)?
    }

    /// [`Ledger::append`] for async callers.
    pub async fn append_async(
        &self,
        kind: Kind,
        meta: EntryMeta,
        payload: Vec<u8>,
    ) -> Result<Receipt> {
        self.enqueue(kind, meta, payload)?
            .await
            .map_err(|_| LedgerError::WriterGone)?
    }

    pub(crate) fn env(&self) -> &Env<WithoutTls> {
        &self.inner.env
    }

    pub(crate) fn dbs(&self) -> &Dbs {
        &self.inner.dbs
    }

    /// Number of entries.
    pub fn len(&self) -> Result<u64> {
        let rtxn = self.inner.env.read_txn()?;
        entry_count(&rtxn, &self.inner.dbs)
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The stored record (`body || signature`) of entry `seq`.
    pub fn record(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        let rtxn = self.inner.env.read_txn()?;
        Ok(self
            .inner
            .dbs
            .entries
            .get(&rtxn, &seq.to_be_bytes())?
            .map(<[u8]>::to_vec))
    }

    /// Entry `seq`, decoded.
    pub fn get(&self, seq: u64) -> Result<Option<Entry>> {
        self.record(seq)?
            .map(|r| Entry::decode(&r).map_err(|source| LedgerError::Decode { seq, source }))
            .transpose()
    }

    /// The seq of the entry whose hash is `hash`.
    pub fn seq_of(&self, hash: &Hash) -> Result<Option<u64>> {
        let rtxn = self.inner.env.read_txn()?;
        self.inner
            .dbs
            .hash
            .get(&rtxn, hash)?
            .map(|v| u64_of(v, "hash index value"))
            .transpose()
    }

    /// The entry whose hash is `hash`.
    pub fn get_by_hash(&self, hash: &Hash) -> Result<Option<Entry>> {
        match self.seq_of(hash)? {
            Some(seq) => self.get(seq),
            None => Ok(None),
        }
    }

    /// Decodes entries by seq.
    pub fn entries(&self, seqs: &[u64]) -> Result<Vec<Entry>> {
        let rtxn = self.inner.env.read_txn()?;
        seqs.iter()
            .map(|&seq| {
                let r = self
                    .inner
                    .dbs
                    .entries
                    .get(&rtxn, &seq.to_be_bytes())?
                    .ok_or_else(|| {
                        LedgerError::Corrupt(format!("indexed entry {seq} is missing"))
                    })?;
                Entry::decode(r).map_err(|source| LedgerError::Decode { seq, source })
            })
            .collect()
    }

    /// Records by seq, as stored.
    pub fn records(&self, seqs: &[u64]) -> Result<Vec<Vec<u8>>> {
        let rtxn = self.inner.env.read_txn()?;
        seqs.iter()
            .map(|&seq| {
                Ok(self
                    .inner
                    .dbs
                    .entries
                    .get(&rtxn, &seq.to_be_bytes())?
                    .ok_or_else(|| LedgerError::Corrupt(format!("indexed entry {seq} is missing")))?
                    .to_vec())
            })
            .collect()
    }

    /// Seqs of every entry about `deployment`, by version then seq.
    pub fn history(&self, deployment: &str) -> Result<Vec<u64>> {
        let rtxn = self.inner.env.read_txn()?;
        let prefix = index::str_prefix(deployment);
        let mut out = Vec::new();
        for item in self.inner.dbs.deploy.prefix_iter(&rtxn, &prefix)? {
            let (k, _) = item?;
            out.extend(index::seq_suffix(k));
        }
        Ok(out)
    }

    /// Seqs of the entries of one version of `deployment`.
    pub fn version(&self, deployment: &str, version: u64) -> Result<Vec<u64>> {
        let rtxn = self.inner.env.read_txn()?;
        let mut prefix = index::str_prefix(deployment);
        prefix.extend_from_slice(&version.to_be_bytes());
        let mut out = Vec::new();
        for item in self.inner.dbs.deploy.prefix_iter(&rtxn, &prefix)? {
            let (k, _) = item?;
            out.extend(index::seq_suffix(k));
        }
        Ok(out)
    }

    /// For every deployment not deleted: (id, version, seq) of its latest
    /// deploy or update entry, by id. What provision replays at boot.
    pub fn live(&self) -> Result<Vec<(String, u64, u64)>> {
        let rtxn = self.inner.env.read_txn()?;
        let mut out = Vec::new();
        for item in self.inner.dbs.live.iter(&rtxn)? {
            let (k, v) = item?;
            let (version, seq) = index::split_live(v)
                .ok_or_else(|| LedgerError::Corrupt("live index value is malformed".into()))?;
            out.push((String::from_utf8_lossy(k).into_owned(), version, seq));
        }
        Ok(out)
    }

    /// A page of at most `limit` seqs from `scan`, starting after seq
    /// `after` (None: from the start).
    pub fn scan(&self, scan: &Scan, after: Option<u64>, limit: usize) -> Result<Page> {
        let rtxn = self.inner.env.read_txn()?;
        let dbs = &self.inner.dbs;
        let first = after.map_or(0, |a| a.saturating_add(1));
        let mut seqs = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        let mut take = |seq: u64| -> bool {
            if seqs.len() == limit {
                more = true;
                return false;
            }
            seqs.push(seq);
            true
        };
        match scan {
            Scan::All => {
                let from = first.to_be_bytes();
                for item in dbs.entries.range(&rtxn, &from_key(&from))? {
                    let (k, _) = item?;
                    if !take(u64_of(k, "entry key")?) {
                        break;
                    }
                }
            }
            Scan::Owner(name) | Scan::Workload(name) => {
                let db = if matches!(scan, Scan::Owner(_)) {
                    dbs.owner
                } else {
                    dbs.workload
                };
                let prefix = index::str_prefix(name);
                let from = index::name_key(name, first);
                for item in db.range(&rtxn, &from_key(&from))? {
                    let (k, _) = item?;
                    if !k.starts_with(&prefix) {
                        break;
                    }
                    if !take(index::seq_suffix(k).unwrap_or(0)) {
                        break;
                    }
                }
            }
            Scan::Kind(kind) => {
                let from = index::kind_key(*kind, first);
                for item in dbs.kind.range(&rtxn, &from_key(&from))? {
                    let (k, _) = item?;
                    if k.first() != Some(&kind.code()) || !take(index::seq_suffix(k).unwrap_or(0)) {
                        break;
                    }
                }
            }
            Scan::Time { from_ms, to_ms } => {
                // Time never decreases along the chain, so the time index
                // in key order is also seq order: a cursor by seq works,
                // and a page starts right at the cursor entry's time.
                let cursor_time = match dbs.entries.get(&rtxn, &first.to_be_bytes())? {
                    Some(r) if after.is_some() => entry::split_record(r)
                        .and_then(|(body, _)| entry::decode_header(body))
                        .map_or(0, |h| h.time_ms),
                    _ => 0,
                };
                let from = index::time_key((*from_ms).max(cursor_time), first);
                for item in dbs.time.range(&rtxn, &from_key(&from))? {
                    let (k, _) = item?;
                    let t = u64_of(&k[..8.min(k.len())], "time key")?;
                    if t > *to_ms {
                        break;
                    }
                    let seq = index::seq_suffix(k).unwrap_or(0);
                    if seq < first {
                        continue;
                    }
                    if !take(seq) {
                        break;
                    }
                }
            }
        }
        let next = if more { seqs.last().copied() } else { None };
        Ok(Page { seqs, next })
    }

    /// The tree size and Merkle root now.
    pub fn tree_head(&self) -> Result<(u64, Hash)> {
        let rtxn = self.inner.env.read_txn()?;
        let size = entry_count(&rtxn, &self.inner.dbs)?;
        let reader = TreeReader {
            txn: &rtxn,
            db: self.inner.dbs.tree,
        };
        Ok((size, verifier::subtree_hash(&reader, 0, size)?))
    }

    /// The tree head signed with the node key.
    pub fn signed_tree_head(&self) -> Result<SignedTreeHead> {
        let signer = self.signer()?;
        let (size, root) = self.tree_head()?;
        let time_ms = now_ms();
        let signature = signer.sign(&SignedTreeHead::signed_hash(size, time_ms, &root))?;
        Ok(SignedTreeHead {
            size,
            time_ms,
            root,
            signature,
        })
    }

    /// The Merkle root of the first `size` entries.
    pub fn root_at(&self, size: u64) -> Result<Hash> {
        let rtxn = self.inner.env.read_txn()?;
        let now = entry_count(&rtxn, &self.inner.dbs)?;
        if size > now {
            return Err(LedgerError::OutOfRange {
                seq: size,
                size: now,
            });
        }
        let reader = TreeReader {
            txn: &rtxn,
            db: self.inner.dbs.tree,
        };
        verifier::subtree_hash(&reader, 0, size)
    }

    /// The inclusion proof of entry `seq` in the tree of `size` entries.
    pub fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>> {
        let rtxn = self.inner.env.read_txn()?;
        let now = entry_count(&rtxn, &self.inner.dbs)?;
        if seq >= size || size > now {
            return Err(LedgerError::OutOfRange {
                seq,
                size: size.min(now),
            });
        }
        let reader = TreeReader {
            txn: &rtxn,
            db: self.inner.dbs.tree,
        };
        verifier::inclusion_path(&reader, seq, size)
    }

    /// The consistency proof between the trees of `old` and `new` entries.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>> {
        let rtxn = self.inner.env.read_txn()?;
        let now = entry_count(&rtxn, &self.inner.dbs)?;
        if old > new || new > now {
            return Err(LedgerError::OutOfRange {
                seq: old.max(new),
                size: now,
            });
        }
        let reader = TreeReader {
            txn: &rtxn,
            db: self.inner.dbs.tree,
        };
        verifier::consistency_path(&reader, old, new)
    }

    /// Drops every derived database and derives them again from the
    /// entries. Appends wait meanwhile (LMDB has one writer).
    pub fn rebuild_indexes(&self) -> Result<u64> {
        {
            let mut wtxn = self.inner.env.write_txn()?;
            self.inner
                .dbs
                .meta
                .put(&mut wtxn, META_INDEX_VERSION, &0u32.to_be_bytes())?;
            wtxn.commit()?;
        }
        catch_up(&self.inner.env, &self.inner.dbs)
    }

    /// Forces a sync of the environment (appends already sync; this is
    /// for callers that wrote through other means, such as import).
    pub fn sync(&self) -> Result<()> {
        Ok(self.inner.env.force_sync()?)
    }
}

/// Test and tool support: leaves the derived databases (tree and
/// indexes) derived only up to entry `indexed_to`, as an interrupted
/// rebuild or a crash of an older version would leave them.
#[doc(hidden)]
pub fn simulate_index_lag(dir: &Path, indexed_to: u64, opts: &Options) -> Result<()> {
    let (env, dbs) = open_env(dir, opts)?;
    let mut wtxn = env.write_txn()?;
    for db in dbs.derived() {
        db.clear(&mut wtxn)?;
    }
    dbs.meta
        .put(&mut wtxn, META_INDEXED_TO, &0u64.to_be_bytes())?;
    wtxn.commit()?;
    catch_up_to(&env, &dbs, indexed_to)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_ledger_serves_after_one_commit_and_a_reopen_after_none() {
        use crate::signer::KeySigner;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        let opts = Options::default();
        let signer = || Arc::new(KeySigner::from_seed(&[7; 32]));
        let txn_id = |l: &Ledger| l.inner.env.info().last_txn_id;
        let ledger = Ledger::open_awaiting_signer(&path, opts.clone()).unwrap();
        assert_eq!(
            txn_id(&ledger),
            1,
            "databases and index marks in one commit"
        );
        assert_eq!(ledger.len().unwrap(), 0);
        ledger.attach_signer(signer()).unwrap();
        assert_eq!(txn_id(&ledger), 2, "the key, once it came");
        drop(ledger);
        let ledger = Ledger::open_awaiting_signer(&path, opts).unwrap();
        assert_eq!(
            txn_id(&ledger),
            2,
            "opening an existing ledger writes nothing"
        );
        assert_eq!(ledger.public_key().unwrap(), signer().public_key());
        ledger.attach_signer(signer()).unwrap();
        assert_eq!(txn_id(&ledger), 2);
    }

    #[test]
    fn tree_keys_follow_the_order_appends_create_nodes() {
        let mut frontier = Frontier::default();
        let mut next = 0u64;
        for i in 0..1000u32 {
            let h = *blake3::hash(&i.to_be_bytes()).as_bytes();
            frontier
                .push(&h, |level, index, _| {
                    assert_eq!(
                        tree_key(level, index),
                        next.to_be_bytes(),
                        "{level}/{index}"
                    );
                    next += 1;
                    Ok::<(), ()>(())
                })
                .unwrap();
        }
    }
}
