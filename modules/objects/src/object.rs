//! Store, retrieve, check and rebuild objects over a set of backends.
//!
//! A file is cut into stripes of `stripe_size` plaintext bytes; each stripe is
//! compressed (zstd), sealed (XChaCha20-Poly1305, owner's key) and coded into
//! k data + m parity shards, each shard on a different backend. At most two
//! stripes are in memory at once: the one being coded and the one in flight.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::backend::{Backend, BackendConfig, BackendLocation};
use crate::coding::Coder;
use crate::crypto::{self, stripe_nonce, OwnerKey, OBJECT_NONCE_LEN};
use crate::error::{Error, Result};
use crate::meta::{
    frame_shard, stripe_aad, verify_shard, Hash, ObjectId, ObjectMeta, ShardFault, ShardMeta,
    StripeMeta, CIPHER, COMPRESSION, MAX_STRIPE_SIZE, MAX_VALUE_SIZE, SHARD_HEADER_LEN,
};

/// How long retrieve waits for the other metadata copies once one is good.
const METADATA_GRACE: Duration = Duration::from_millis(500);

/// How a new object is coded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    pub data_shards: usize,
    pub parity_shards: usize,
    /// Plaintext bytes per stripe.
    pub stripe_size: usize,
    pub zstd_level: i32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            data_shards: 4,
            parity_shards: 2,
            stripe_size: 4 << 20,
            zstd_level: 3,
        }
    }
}

impl StoreOptions {
    pub fn validate(&self) -> Result<()> {
        Coder::new(self.data_shards, self.parity_shards)?;
        if self.stripe_size == 0 || self.stripe_size as u64 > MAX_STRIPE_SIZE {
            return Err(Error::Config(format!(
                "stripe size {} must be 1 byte to {} MiB",
                self.stripe_size,
                MAX_STRIPE_SIZE >> 20
            )));
        }
        // Worst case (incompressible data) must still fit 0-db's value limit.
        let worst = crate::meta::zstd_bound(self.stripe_size as u64) + crypto::TAG_LEN as u64;
        let shard = worst.div_ceil(self.data_shards as u64) + SHARD_HEADER_LEN as u64;
        if shard > MAX_VALUE_SIZE {
            return Err(Error::Config(format!(
                "stripe size {} over {} data shards gives shards of up to {shard} bytes, over 0-db's 8 MiB limit",
                self.stripe_size, self.data_shards
            )));
        }
        if !(1..=19).contains(&self.zstd_level) {
            return Err(Error::Config(format!(
                "zstd level {} must be 1-19",
                self.zstd_level
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreReport {
    pub id: ObjectId,
    pub size: u64,
    pub stripes: usize,
    /// Bytes written to backends, shards and metadata copies together.
    pub stored_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrieveReport {
    pub size: u64,
    pub stripes: usize,
    /// Stripes that needed parity (a data shard was slow, missing or corrupt).
    pub reconstructed_stripes: usize,
}

/// The state of one metadata copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyState {
    Current,
    Stale { generation: u64 },
    Missing,
    Invalid(String),
    Unreachable(String),
}

impl std::fmt::Display for CopyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Current => f.write_str("current"),
            Self::Stale { generation } => write!(f, "stale (generation {generation})"),
            Self::Missing => f.write_str("missing"),
            Self::Invalid(why) => write!(f, "invalid ({why})"),
            Self::Unreachable(why) => write!(f, "unreachable ({why})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeHealth {
    pub index: u64,
    /// Per shard: None when good, else why not.
    pub faults: Vec<Option<ShardFault>>,
}

impl StripeHealth {
    pub fn good(&self) -> usize {
        self.faults.iter().filter(|f| f.is_none()).count()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Every shard and every metadata copy is good.
    Healthy,
    /// Readable, but some shard or metadata copy is missing, corrupt or unreachable.
    Degraded,
    /// Some stripe has fewer than k good shards.
    Lost,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub id: ObjectId,
    pub generation: u64,
    pub data_shards: usize,
    pub parity_shards: usize,
    pub size: u64,
    pub backends: Vec<BackendLocation>,
    /// For each shard: the index of its backend in `backends`.
    pub placement: Vec<Vec<u32>>,
    pub stripes: Vec<StripeHealth>,
    pub metadata: Vec<(BackendLocation, CopyState)>,
}

impl Health {
    pub fn status(&self) -> Status {
        if self.stripes.iter().any(|s| s.good() < self.data_shards) {
            Status::Lost
        } else if self.stripes.iter().any(|s| s.good() < s.faults.len())
            || self.metadata.iter().any(|(_, c)| *c != CopyState::Current)
        {
            Status::Degraded
        } else {
            Status::Healthy
        }
    }

    /// The fewest good shards of any stripe.
    pub fn min_good(&self) -> usize {
        self.stripes.iter().map(|s| s.good()).min().unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RebuildReport {
    pub generation: u64,
    /// Shards written back to the backend that had lost them.
    pub rewritten: usize,
    /// Shards placed on another backend because theirs was unreachable.
    pub moved: usize,
    /// Shards that could not be restored (no spare backend, or a write failed).
    pub unrepaired: Vec<String>,
    /// Stripes with fewer than k good shards: beyond repair.
    pub lost_stripes: Vec<u64>,
    pub metadata_copies: usize,
}

/// A set of backends and the owner's key: the entry point of the library.
pub struct Objects {
    backends: Vec<Arc<Backend>>,
    key: OwnerKey,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects")
            .field("backends", &self.backends)
            .finish()
    }
}

/// What the reading tasks of one object share.
struct ReadContext {
    id: ObjectId,
    meta: ObjectMeta,
    /// For each metadata backend index, the configured backend if there is one.
    backends: Vec<Option<Arc<Backend>>>,
}

type ShardResult = std::result::Result<Vec<u8>, ShardFault>;

impl Objects {
    pub fn new(configs: Vec<BackendConfig>, key: OwnerKey, timeout: Duration) -> Result<Self> {
        if configs.is_empty() {
            return Err(Error::Config("no backends configured".into()));
        }
        let mut seen = BTreeSet::new();
        for config in &configs {
            config.validate()?;
            if !seen.insert(config.location().to_string()) {
                return Err(Error::Config(format!("backend {config} is listed twice")));
            }
        }
        Ok(Self {
            backends: configs
                .into_iter()
                .map(|c| Arc::new(Backend::new(c, timeout)))
                .collect(),
            key,
        })
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// Pings every backend at once; true where it answered.
    async fn reachable(backends: &[Arc<Backend>]) -> Vec<bool> {
        let pings: Vec<_> = backends
            .iter()
            .map(|b| {
                let b = b.clone();
                tokio::spawn(async move { b.ping().await })
            })
            .collect();
        let mut up = Vec::with_capacity(pings.len());
        for (ping, backend) in pings.into_iter().zip(backends) {
            let ok = matches!(ping.await, Ok(Ok(())));
            if !ok {
                tracing::warn!(backend = %backend.config(), "backend does not answer");
            }
            up.push(ok);
        }
        up
    }

    /// Stores the file at `path`; returns the new object's id.
    pub async fn store(&self, path: &Path, options: &StoreOptions) -> Result<StoreReport> {
        options.validate()?;
        let coder = Arc::new(Coder::new(options.data_shards, options.parity_shards)?);
        let n = coder.total_shards();
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|source| Error::Io {
                action: "open",
                path: path.to_path_buf(),
                source,
            })?;
        let up = Self::reachable(&self.backends).await;
        let placement: Arc<Vec<usize>> =
            Arc::new((0..self.backends.len()).filter(|i| up[*i]).collect());
        if placement.len() < n {
            return Err(Error::NotEnoughBackends {
                needed: n,
                reachable: placement.len(),
                configured: self.backends.len(),
            });
        }
        let id = ObjectId::random()?;
        let mut object_nonce = [0u8; OBJECT_NONCE_LEN];
        crypto::random(&mut object_nonce)?;
        let mut written_stripes = 0u64;
        let result = self
            .store_stripes(
                path,
                &mut file,
                options,
                &coder,
                &placement,
                id,
                object_nonce,
                &mut written_stripes,
            )
            .await;
        match result {
            Ok(report) => Ok(report),
            Err(e) => {
                // Best effort: leave no orphan shards behind a failed store.
                self.delete_stripes(id, written_stripes, n, &placement)
                    .await;
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn store_stripes(
        &self,
        path: &Path,
        file: &mut tokio::fs::File,
        options: &StoreOptions,
        coder: &Arc<Coder>,
        placement: &Arc<Vec<usize>>,
        id: ObjectId,
        object_nonce: [u8; OBJECT_NONCE_LEN],
        written_stripes: &mut u64,
    ) -> Result<StoreReport> {
        let (k, m) = (coder.data_shards(), coder.parity_shards());
        let mut hasher = blake3::Hasher::new();
        let mut stripes = Vec::new();
        let mut queue: VecDeque<JoinHandle<Result<(StripeMeta, u64)>>> = VecDeque::new();
        let mut stored_bytes = 0u64;
        let mut size = 0u64;
        let depth = pipeline_depth();
        let result: Result<()> = async {
            loop {
                let mut buffer = vec![0u8; options.stripe_size];
                let filled = read_full(file, &mut buffer)
                    .await
                    .map_err(|source| Error::Io {
                        action: "read",
                        path: path.to_path_buf(),
                        source,
                    })?;
                if filled == 0 && *written_stripes > 0 {
                    break;
                }
                buffer.truncate(filled);
                hasher.update(&buffer);
                size += filled as u64;
                let index = *written_stripes;
                let coding = StripeCoding {
                    key: self.key.clone(),
                    coder: coder.clone(),
                    placement: placement.clone(),
                    id,
                    object_nonce,
                    index,
                    zstd_level: options.zstd_level,
                };
                let backends = self.backends.clone();
                // Coding runs on the blocking pool, so stripes are coded on
                // several cores while earlier ones are being written.
                queue.push_back(tokio::spawn(async move {
                    let (meta, writes) = tokio::task::spawn_blocking(move || coding.code(&buffer))
                        .await
                        .map_err(|e| Error::Internal(e.to_string()))??;
                    let writes = writes
                        .into_iter()
                        .map(|(b, key, value)| (backends[b].clone(), key, value))
                        .collect();
                    let written = write_values(writes).await?;
                    Ok((meta, written))
                }));
                *written_stripes = index + 1;
                if queue.len() >= depth {
                    if let Some(oldest) = queue.pop_front() {
                        let (meta, written) = join(oldest).await?;
                        stripes.push(meta);
                        stored_bytes += written;
                    }
                }
                if filled < options.stripe_size {
                    break;
                }
            }
            while let Some(oldest) = queue.pop_front() {
                let (meta, written) = join(oldest).await?;
                stripes.push(meta);
                stored_bytes += written;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            // No write may land after the caller's cleanup.
            for task in queue.drain(..) {
                task.abort();
                let _ = task.await;
            }
            return Err(e);
        }
        let meta = ObjectMeta {
            version: 1,
            id: id.to_string(),
            generation: 1,
            data_shards: k as u32,
            parity_shards: m as u32,
            compression: COMPRESSION.into(),
            cipher: CIPHER.into(),
            nonce: hex::encode(object_nonce),
            stripe_size: options.stripe_size as u64,
            size,
            hash: Hash::from(hasher.finalize()),
            backends: self
                .backends
                .iter()
                .map(|b| b.config().location())
                .collect(),
            stripes,
        };
        meta.validate()?;
        let envelope = meta.seal(&self.key)?;
        let writes = placement
            .iter()
            .map(|b| {
                (
                    self.backends[*b].clone(),
                    id.metadata_key(),
                    envelope.clone(),
                )
            })
            .collect();
        stored_bytes += write_values(writes).await?;
        tracing::info!(object = %id, size, stripes = meta.stripes.len(), "stored");
        Ok(StoreReport {
            id,
            size,
            stripes: meta.stripes.len(),
            stored_bytes,
        })
    }

    async fn delete_stripes(&self, id: ObjectId, stripes: u64, n: usize, placement: &[usize]) {
        for stripe in 0..stripes {
            for shard in 0..n {
                let backend =
                    &self.backends[placement[(stripe as usize + shard) % placement.len()]];
                if let Err(e) = backend.del(&id.shard_key(stripe, shard)).await {
                    tracing::warn!(object = %id, stripe, shard, error = %e, "could not remove shard of a failed store");
                }
            }
        }
    }

    /// Reads every metadata copy at once and returns the newest that opens
    /// and validates, with the state of each configured backend's copy.
    pub async fn load_metadata(&self, id: &ObjectId) -> Result<(ObjectMeta, Vec<CopyState>)> {
        self.load_metadata_within(id, None).await
    }

    /// Like `load_metadata`, but once a good copy is in, waits at most `grace`
    /// for the others. Used by retrieve only: shard contents and keys never
    /// change between generations (rebuild only moves shards), so an older
    /// copy still reads the object correctly, and a hung backend then costs
    /// the grace period instead of the full timeout. Check and rebuild wait
    /// for every copy, as they must see the newest.
    async fn load_metadata_within(
        &self,
        id: &ObjectId,
        grace: Option<Duration>,
    ) -> Result<(ObjectMeta, Vec<CopyState>)> {
        tracing::debug!(object = %id, backends = self.backends.len(), "reading metadata copies");
        let (sender, mut receiver) = mpsc::channel(self.backends.len());
        for (index, backend) in self.backends.iter().enumerate() {
            let backend = backend.clone();
            let key = id.metadata_key();
            let sender = sender.clone();
            tokio::spawn(async move {
                let _ = sender.send((index, backend.get(&key).await)).await;
            });
        }
        drop(sender);
        let mut answers: Vec<Option<std::result::Result<ObjectMeta, CopyState>>> =
            vec![None; self.backends.len()];
        let mut auth_failures = 0;
        let mut found = 0;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = match deadline {
                None => receiver.recv().await,
                Some(at) => match tokio::time::timeout_at(at, receiver.recv()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            let Some((index, read)) = next else { break };
            let state = match read {
                Err(e) => Err(CopyState::Unreachable(e.to_string())),
                Ok(None) => Err(CopyState::Missing),
                Ok(Some(envelope)) => {
                    found += 1;
                    match ObjectMeta::open(&self.key, id, &envelope) {
                        Ok(meta) => Ok(meta),
                        Err(e) => {
                            if matches!(e, Error::MetadataAuthentication) {
                                auth_failures += 1;
                            }
                            tracing::warn!(object = %id, backend = %self.backends[index].config(), error = %e, "metadata copy refused");
                            Err(CopyState::Invalid(e.to_string()))
                        }
                    }
                }
            };
            if let (Ok(_), Some(grace), None) = (&state, grace, deadline) {
                deadline = Some(tokio::time::Instant::now() + grace);
            }
            answers[index] = Some(state);
        }
        let opened: Vec<std::result::Result<ObjectMeta, CopyState>> = answers
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| {
                    Err(CopyState::Unreachable(
                        "no answer before a good copy's grace period ended".into(),
                    ))
                })
            })
            .collect();
        let newest = opened
            .iter()
            .filter_map(|o| o.as_ref().ok())
            .max_by_key(|m| m.generation)
            .cloned();
        let Some(meta) = newest else {
            if opened.iter().all(|o| matches!(o, Err(CopyState::Missing))) {
                return Err(Error::NotFound {
                    object: id.to_string(),
                    backends: self.backends.len(),
                });
            }
            if found > 0 && auth_failures == found {
                return Err(Error::WrongKey {
                    object: id.to_string(),
                    copies: found,
                });
            }
            let details = self
                .backends
                .iter()
                .zip(&opened)
                .map(|(b, o)| match o {
                    Err(state) => format!("{}: {state}", b.config()),
                    Ok(_) => format!("{}: ok", b.config()),
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(Error::MetadataUnavailable {
                object: id.to_string(),
                details,
            });
        };
        let states = opened
            .into_iter()
            .map(|o| match o {
                Ok(m) if m.generation == meta.generation => CopyState::Current,
                Ok(m) => CopyState::Stale {
                    generation: m.generation,
                },
                Err(state) => state,
            })
            .collect();
        Ok((meta, states))
    }

    fn read_context(&self, id: ObjectId, meta: ObjectMeta) -> Arc<ReadContext> {
        let backends = meta
            .backends
            .iter()
            .map(|location| {
                self.backends
                    .iter()
                    .find(|b| b.config().location() == *location)
                    .cloned()
            })
            .collect();
        Arc::new(ReadContext { id, meta, backends })
    }

    /// Writes the object to `out`, through a temporary file beside it that is
    /// renamed only once every byte has been verified.
    pub async fn retrieve(&self, id: &ObjectId, out: &Path) -> Result<RetrieveReport> {
        let (meta, _) = self.load_metadata_within(id, Some(METADATA_GRACE)).await?;
        let coder = Arc::new(Coder::new(meta.k(), meta.n() - meta.k())?);
        let object_nonce = meta.object_nonce()?;
        let context = self.read_context(*id, meta);
        let meta = &context.meta;
        let temp = PartialFile::create(out).await?;
        let mut writer = tokio::io::BufWriter::with_capacity(1 << 20, temp.file().await?);
        let mut hasher = blake3::Hasher::new();
        let mut reconstructed_stripes = 0;
        let stripes = meta.stripes.len() as u64;
        let depth = pipeline_depth() as u64;
        // Stripes are fetched and decoded ahead, in order, at most `depth` at once;
        // dropping the queue (on error) cancels the decoding still queued.
        let mut queue = AbortQueue::default();
        let spawn = |index: u64| {
            let context = context.clone();
            let decoding = StripeDecoding {
                key: self.key.clone(),
                coder: coder.clone(),
                object_nonce,
                index,
            };
            tokio::spawn(async move {
                let shards = fetch_fastest(context.clone(), index).await?;
                tokio::task::spawn_blocking(move || decoding.decode(&context, shards))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?
            })
        };
        let mut next = 0;
        while next < stripes && next < depth {
            queue.0.push_back(spawn(next));
            next += 1;
        }
        while let Some(oldest) = queue.0.pop_front() {
            let (plain, reconstructed) = join(oldest).await?;
            if next < stripes {
                queue.0.push_back(spawn(next));
                next += 1;
            }
            reconstructed_stripes += usize::from(reconstructed);
            hasher.update(&plain);
            writer
                .write_all(&plain)
                .await
                .map_err(|source| temp.io("write", source))?;
        }
        if Hash::from(hasher.finalize()) != meta.hash {
            return Err(Error::Integrity {
                object: id.to_string(),
                reason: "blake3 of the retrieved object differs from its metadata".into(),
            });
        }
        writer
            .flush()
            .await
            .map_err(|source| temp.io("write", source))?;
        let file = writer.into_inner();
        file.sync_all()
            .await
            .map_err(|source| temp.io("sync", source))?;
        drop(file);
        temp.commit().await?;
        tracing::info!(object = %id, size = meta.size, reconstructed_stripes, "retrieved");
        Ok(RetrieveReport {
            size: meta.size,
            stripes: meta.stripes.len(),
            reconstructed_stripes,
        })
    }

    /// Reads and verifies every shard and metadata copy of the object.
    pub async fn check(&self, id: &ObjectId) -> Result<Health> {
        let (meta, copies) = self.load_metadata(id).await?;
        let context = self.read_context(*id, meta);
        let mut stripes = Vec::with_capacity(context.meta.stripes.len());
        for index in 0..context.meta.stripes.len() as u64 {
            let results = fetch_all(context.clone(), index).await;
            stripes.push(StripeHealth {
                index,
                faults: results.into_iter().map(|r| r.err()).collect(),
            });
        }
        let meta = &context.meta;
        Ok(Health {
            id: *id,
            generation: meta.generation,
            data_shards: meta.k(),
            parity_shards: meta.n() - meta.k(),
            size: meta.size,
            backends: meta.backends.clone(),
            placement: meta
                .stripes
                .iter()
                .map(|s| s.shards.iter().map(|sh| sh.backend).collect())
                .collect(),
            stripes,
            metadata: self
                .backends
                .iter()
                .map(|b| b.config().location())
                .zip(copies)
                .collect(),
        })
    }

    /// Regenerates every missing or corrupt shard: onto its own backend when
    /// that answers, else onto a configured backend holding no other shard of
    /// the stripe; then writes the new metadata to every backend that answers.
    pub async fn rebuild(&self, id: &ObjectId) -> Result<RebuildReport> {
        let (mut meta, copies) = self.load_metadata(id).await?;
        let coder = Coder::new(meta.k(), meta.n() - meta.k())?;
        // Configured backends the object does not use yet are spares.
        for backend in &self.backends {
            let location = backend.config().location();
            if !meta.backends.contains(&location) {
                meta.backends.push(location);
            }
        }
        let context = self.read_context(*id, meta.clone());
        let mapped: Vec<Arc<Backend>> = context.backends.iter().flatten().cloned().collect();
        let up_list = Self::reachable(&mapped).await;
        let up: Vec<bool> = context
            .backends
            .iter()
            .map(|b| {
                b.as_ref().is_some_and(|b| {
                    mapped
                        .iter()
                        .position(|m| Arc::ptr_eq(m, b))
                        .is_some_and(|i| up_list[i])
                })
            })
            .collect();
        let mut report = RebuildReport::default();
        let mut changed = false;
        let mut load = vec![0usize; meta.backends.len()];
        for stripe in &meta.stripes {
            for shard in &stripe.shards {
                load[shard.backend as usize] += 1;
            }
        }
        for index in 0..meta.stripes.len() as u64 {
            let results = fetch_all(context.clone(), index).await;
            let bad: Vec<usize> = (0..results.len())
                .filter(|i| results[*i].is_err())
                .collect();
            if bad.is_empty() {
                continue;
            }
            if results.len() - bad.len() < coder.data_shards() {
                tracing::error!(object = %id, stripe = index, "stripe has too few good shards to rebuild");
                report.lost_stripes.push(index);
                continue;
            }
            let faults: Vec<Option<ShardFault>> =
                results.iter().map(|r| r.as_ref().err().cloned()).collect();
            let mut shards: Vec<Option<Vec<u8>>> = results.into_iter().map(|r| r.ok()).collect();
            coder.reconstruct(index, &mut shards)?;
            let stripe = &mut meta.stripes[index as usize];
            let mut holders: BTreeSet<u32> = (0..stripe.shards.len())
                .filter(|i| faults[*i].is_none())
                .map(|i| stripe.shards[i].backend)
                .collect();
            // First the shards whose own backend answers go back in place, so a
            // spare is never given to one of them.
            let mut targets: Vec<(usize, Option<u32>)> = Vec::new();
            for &shard_index in &bad {
                let own = stripe.shards[shard_index].backend;
                let in_place = up[own as usize]
                    && !matches!(faults[shard_index], Some(ShardFault::Unreachable(_)));
                if in_place {
                    holders.insert(own);
                    targets.push((shard_index, Some(own)));
                }
            }
            for &shard_index in &bad {
                if targets.iter().any(|(i, _)| *i == shard_index) {
                    continue;
                }
                let spare = (0..meta.backends.len() as u32)
                    .filter(|b| up[*b as usize] && !holders.contains(b))
                    .min_by_key(|b| load[*b as usize]);
                if let Some(b) = spare {
                    holders.insert(b);
                    load[b as usize] += 1;
                }
                targets.push((shard_index, spare));
            }
            for (shard_index, target) in targets {
                let Some(target) = target else {
                    report.unrepaired.push(format!(
                        "stripe {index} shard {shard_index}: no reachable backend free of this stripe's other shards"
                    ));
                    continue;
                };
                let Some(payload) = shards[shard_index].as_ref() else {
                    continue;
                };
                let (value, hash) = frame_shard(
                    id,
                    index,
                    shard_index,
                    coder.data_shards(),
                    coder.parity_shards(),
                    payload,
                );
                if hash != stripe.shards[shard_index].hash {
                    return Err(Error::Integrity {
                        object: id.to_string(),
                        reason: format!("rebuilt shard {shard_index} of stripe {index} does not match its recorded hash"),
                    });
                }
                let Some(backend) = context.backends[target as usize].as_ref() else {
                    continue;
                };
                match backend.set(&id.shard_key(index, shard_index), &value).await {
                    Ok(()) => {
                        let own = stripe.shards[shard_index].backend;
                        if own == target {
                            report.rewritten += 1;
                        } else {
                            report.moved += 1;
                            stripe.shards[shard_index].backend = target;
                            changed = true;
                        }
                        tracing::info!(object = %id, stripe = index, shard = shard_index, backend = %backend.config(), "shard restored");
                    }
                    Err(e) => report
                        .unrepaired
                        .push(format!("stripe {index} shard {shard_index}: {e}")),
                }
            }
        }
        let stale_copies = copies.iter().any(|c| *c != CopyState::Current);
        if changed || stale_copies || meta.backends.len() != context.meta.backends.len() {
            meta.generation += 1;
        }
        meta.validate()?;
        let envelope = meta.seal(&self.key)?;
        for (index, backend) in context.backends.iter().enumerate() {
            let Some(backend) = backend else { continue };
            if !up[index] {
                continue;
            }
            match backend.set(&id.metadata_key(), &envelope).await {
                Ok(()) => report.metadata_copies += 1,
                Err(e) => report
                    .unrepaired
                    .push(format!("metadata copy on {}: {e}", backend.config())),
            }
        }
        report.generation = meta.generation;
        tracing::info!(object = %id, ?report, "rebuild done");
        Ok(report)
    }
}

/// Stripes in flight at once: enough to keep every core coding while
/// earlier stripes are on the wire; each costs about three stripe sizes.
fn pipeline_depth() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get() + 1)
        .clamp(2, 8)
}

/// Everything needed to code one stripe away from the async tasks.
struct StripeCoding {
    key: OwnerKey,
    coder: Arc<Coder>,
    placement: Arc<Vec<usize>>,
    id: ObjectId,
    object_nonce: [u8; OBJECT_NONCE_LEN],
    index: u64,
    zstd_level: i32,
}

/// (backend index, key, value) of one write.
type Write = (usize, Vec<u8>, Vec<u8>);

impl StripeCoding {
    /// Compresses, seals and codes the stripe; returns its metadata and the
    /// framed shards with the backend each goes to.
    fn code(&self, plain: &[u8]) -> Result<(StripeMeta, Vec<Write>)> {
        let (id, index) = (&self.id, self.index);
        let compressed =
            zstd::bulk::compress(plain, self.zstd_level).map_err(|e| Error::Compress {
                stripe: index,
                reason: e.to_string(),
            })?;
        let sealed = self.key.seal_stripe(
            &stripe_nonce(&self.object_nonce, index),
            &stripe_aad(id, index, plain.len() as u64),
            &compressed,
        )?;
        drop(compressed);
        let shards = self.coder.encode(index, &sealed)?;
        let (k, m) = (self.coder.data_shards(), self.coder.parity_shards());
        let mut writes = Vec::with_capacity(shards.len());
        let mut shard_metas = Vec::with_capacity(shards.len());
        for (shard_index, payload) in shards.iter().enumerate() {
            let backend = self.placement[(index as usize + shard_index) % self.placement.len()];
            let (value, hash) = frame_shard(id, index, shard_index, k, m, payload);
            shard_metas.push(ShardMeta {
                backend: backend as u32,
                hash,
            });
            writes.push((backend, id.shard_key(index, shard_index), value));
        }
        let meta = StripeMeta {
            plain_len: plain.len() as u64,
            sealed_len: sealed.len() as u64,
            shard_len: self.coder.shard_len(sealed.len()) as u64,
            shards: shard_metas,
        };
        Ok((meta, writes))
    }
}

/// Everything needed to decode one stripe away from the async tasks.
struct StripeDecoding {
    key: OwnerKey,
    coder: Arc<Coder>,
    object_nonce: [u8; OBJECT_NONCE_LEN],
    index: u64,
}

impl StripeDecoding {
    /// From k verified shards to the plaintext, checking the AEAD tag and the
    /// length; true when parity was needed.
    fn decode(
        &self,
        context: &ReadContext,
        mut shards: Vec<Option<Vec<u8>>>,
    ) -> Result<(Vec<u8>, bool)> {
        let (index, coder) = (self.index, &self.coder);
        let object = || context.id.to_string();
        let stripe = &context.meta.stripes[index as usize];
        let reconstructed = shards[..coder.data_shards()].iter().any(|s| s.is_none());
        if reconstructed {
            coder.reconstruct_data(index, &mut shards)?;
        }
        let sealed = coder.join(index, &shards, stripe.sealed_len as usize)?;
        drop(shards);
        let compressed = self
            .key
            .open_stripe(
                &stripe_nonce(&self.object_nonce, index),
                &stripe_aad(&context.id, index, stripe.plain_len),
                &sealed,
            )
            .ok_or_else(|| Error::StripeAuthentication {
                object: object(),
                stripe: index,
            })?;
        let plain =
            zstd::bulk::decompress(&compressed, stripe.plain_len as usize).map_err(|e| {
                Error::Decompress {
                    object: object(),
                    stripe: index,
                    reason: e.to_string(),
                }
            })?;
        if plain.len() as u64 != stripe.plain_len {
            return Err(Error::Decompress {
                object: object(),
                stripe: index,
                reason: format!("{} bytes, expected {}", plain.len(), stripe.plain_len),
            });
        }
        Ok((plain, reconstructed))
    }
}

/// Tasks that are aborted when the queue is dropped.
struct AbortQueue<T>(VecDeque<JoinHandle<T>>);

impl<T> Default for AbortQueue<T> {
    fn default() -> Self {
        Self(VecDeque::new())
    }
}

impl<T> Drop for AbortQueue<T> {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Fills `buffer` unless the file ends first; returns how much was read.
async fn read_full(file: &mut tokio::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        let n = file.read(&mut buffer[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

async fn join<T>(handle: JoinHandle<Result<T>>) -> Result<T> {
    handle.await.map_err(|e| Error::Internal(e.to_string()))?
}

/// Writes all values at once; fails if any write fails. Returns bytes written.
/// The writes live in a JoinSet so that cancelling the caller cancels them.
async fn write_values(writes: Vec<(Arc<Backend>, Vec<u8>, Vec<u8>)>) -> Result<u64> {
    let mut set = tokio::task::JoinSet::new();
    for (backend, key, value) in writes {
        set.spawn(async move {
            backend.set(&key, &value).await?;
            Ok::<u64, Error>(value.len() as u64)
        });
    }
    let mut total = 0;
    let mut first_error = None;
    while let Some(done) = set.join_next().await {
        match done {
            Ok(Ok(n)) => total += n,
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(Error::Internal(e.to_string()));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// Reads one shard and checks it against the metadata; skips the check when
/// nobody waits for the answer any more (k others already verified).
async fn read_shard(
    context: Arc<ReadContext>,
    stripe: u64,
    index: usize,
    sender: &mpsc::Sender<(usize, ShardResult)>,
) -> ShardResult {
    let backend_index = context.meta.stripes[stripe as usize].shards[index].backend as usize;
    let Some(backend) = context.backends[backend_index].clone() else {
        return Err(ShardFault::Unreachable(format!(
            "backend {} is not configured",
            context.meta.backends[backend_index]
        )));
    };
    if sender.is_closed() {
        // The stripe was decoded while this read waited its turn.
        return Err(ShardFault::Missing);
    }
    match backend.get(&context.id.shard_key(stripe, index)).await {
        Err(e) => Err(ShardFault::Unreachable(e.to_string())),
        Ok(None) => Err(ShardFault::Missing),
        Ok(Some(_)) if sender.is_closed() => Err(ShardFault::Missing),
        Ok(Some(value)) => verify_shard(value, &context.id, stripe, index, &context.meta),
    }
}

fn spawn_reads(context: &Arc<ReadContext>, stripe: u64) -> mpsc::Receiver<(usize, ShardResult)> {
    let n = context.meta.n();
    let (sender, receiver) = mpsc::channel(n);
    for index in 0..n {
        let sender = sender.clone();
        let context = context.clone();
        tokio::spawn(async move {
            let result = read_shard(context, stripe, index, &sender).await;
            let _ = sender.send((index, result)).await;
        });
    }
    receiver
}

/// Reads every shard of the stripe at once and returns as soon as k have
/// verified; the slower reads finish in the background and are dropped.
async fn fetch_fastest(context: Arc<ReadContext>, stripe: u64) -> Result<Vec<Option<Vec<u8>>>> {
    let (k, n) = (context.meta.k(), context.meta.n());
    let mut receiver = spawn_reads(&context, stripe);
    let mut shards: Vec<Option<Vec<u8>>> = vec![None; n];
    let mut good = 0;
    let mut faults = Vec::new();
    while good < k {
        let Some((index, result)) = receiver.recv().await else {
            break;
        };
        match result {
            Ok(payload) => {
                shards[index] = Some(payload);
                good += 1;
            }
            Err(fault) => {
                // A dead backend fails every stripe: only bad data is worth a warning each time.
                if matches!(fault, ShardFault::Unreachable(_)) {
                    tracing::debug!(object = %context.id, stripe, shard = index, %fault, "shard not reachable");
                } else {
                    tracing::warn!(object = %context.id, stripe, shard = index, %fault, "shard not usable");
                }
                faults.push(format!("shard {index}: {fault}"));
            }
        }
    }
    if good < k {
        return Err(Error::StripeLost {
            object: context.id.to_string(),
            stripe,
            good,
            needed: k,
            details: faults.join("; "),
        });
    }
    Ok(shards)
}

/// Reads every shard of the stripe and waits for all of them.
async fn fetch_all(context: Arc<ReadContext>, stripe: u64) -> Vec<ShardResult> {
    let n = context.meta.n();
    let mut receiver = spawn_reads(&context, stripe);
    let mut results: Vec<ShardResult> = vec![Err(ShardFault::Missing); n];
    while let Some((index, result)) = receiver.recv().await {
        results[index] = result;
    }
    results
}

/// The output's temporary twin: removed on drop unless committed.
struct PartialFile {
    temp: PathBuf,
    out: PathBuf,
    committed: bool,
}

impl PartialFile {
    async fn create(out: &Path) -> Result<Self> {
        let name = out
            .file_name()
            .ok_or_else(|| Error::Config(format!("output {} has no file name", out.display())))?;
        let mut tag = [0u8; 6];
        crypto::random(&mut tag)?;
        let temp = out.with_file_name(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            hex::encode(tag)
        ));
        tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .await
            .map_err(|source| Error::Io {
                action: "create",
                path: temp.clone(),
                source,
            })?;
        Ok(Self {
            temp,
            out: out.to_path_buf(),
            committed: false,
        })
    }

    async fn file(&self) -> Result<tokio::fs::File> {
        tokio::fs::OpenOptions::new()
            .write(true)
            .open(&self.temp)
            .await
            .map_err(|source| self.io("open", source))
    }

    fn io(&self, action: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            action,
            path: self.temp.clone(),
            source,
        }
    }

    async fn commit(mut self) -> Result<()> {
        tokio::fs::rename(&self.temp, &self.out)
            .await
            .map_err(|source| Error::Io {
                action: "rename into place",
                path: self.out.clone(),
                source,
            })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
