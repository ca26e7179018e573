//! `org.zeronode.Ledger1` at `/org/zeronode/Ledger1`: the ledger for the
//! other modules, served with `zeronode_types::bus`. Records travel as the
//! stored bytes (`body || signature`) so a client can check them with
//! [`crate::verifier`] without trusting this process.

use serde::{Deserialize, Serialize};
use zbus::{interface, proxy, DBusError, Type};

use crate::entry::{EntryMeta, Kind};
use crate::store::{Ledger, LedgerError, Scan};

pub const OBJECT_PATH: &str = "/org/zeronode/Ledger1";
pub const INTERFACE: &str = "org.zeronode.Ledger1";

/// The errors of `org.zeronode.Ledger1`, as D-Bus error names
/// `org.zeronode.Ledger1.Error.<Variant>`.
#[derive(Debug, DBusError)]
#[zbus(prefix = "org.zeronode.Ledger1.Error")]
pub enum Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The request itself is wrong (unknown kind, oversized field).
    Invalid(String),
    /// No such entry.
    NotFound(String),
    /// A seq or tree size beyond the ledger.
    OutOfRange(String),
    /// The ledger could not do it (storage, signing).
    Failed(String),
}

impl From<LedgerError> for Error {
    fn from(e: LedgerError) -> Self {
        let msg = e.to_string();
        match e {
            LedgerError::Invalid(_) => Error::Invalid(msg),
            LedgerError::OutOfRange { .. } => Error::OutOfRange(msg),
            _ => Error::Failed(msg),
        }
    }
}

/// What Append answers: D-Bus `(tayt)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct AppendReceipt {
    pub seq: u64,
    pub hash: Vec<u8>,
    pub time_ms: u64,
}

/// An entry as stored: D-Bus `(tay)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct Record {
    pub seq: u64,
    pub record: Vec<u8>,
}

/// A deployment's latest live entry: D-Bus `(sttay)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct LiveDeployment {
    pub deployment: String,
    pub version: u64,
    pub seq: u64,
    pub record: Vec<u8>,
}

/// A page of a scan: D-Bus `(a(tay)x)`; `next` is -1 on the last page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ScanPage {
    pub records: Vec<Record>,
    pub next: i64,
}

/// A signed tree head: D-Bus `(ttayay)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct TreeHead {
    pub size: u64,
    pub time_ms: u64,
    pub root: Vec<u8>,
    pub signature: Vec<u8>,
}

/// What Verify found: D-Bus `(bttts)`; `bad_seq` and `reason` mean
/// something only when `ok` is false.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct VerifyResult {
    pub ok: bool,
    pub entries: u64,
    pub bytes: u64,
    pub bad_seq: u64,
    pub reason: String,
}

/// The served object; clones share the ledger.
#[derive(Clone)]
pub struct LedgerService {
    ledger: Ledger,
}

impl LedgerService {
    pub fn new(ledger: Ledger) -> Self {
        LedgerService { ledger }
    }

    /// Runs a read off the async threads: LMDB reads are quick, but
    /// Verify and long scans are not.
    async fn blocking<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Ledger) -> Result<T, LedgerError> + Send + 'static,
    {
        let ledger = self.ledger.clone();
        tokio::task::spawn_blocking(move || f(&ledger))
            .await
            .map_err(|e| Error::Failed(format!("ledger task: {e}")))?
            .map_err(Error::from)
    }
}

fn hash32(hash: &[u8]) -> Result<[u8; 32], Error> {
    hash.try_into()
        .map_err(|_| Error::Invalid(format!("hash is {} bytes, not 32", hash.len())))
}

fn records(l: &Ledger, seqs: &[u64]) -> Result<Vec<Record>, LedgerError> {
    Ok(seqs
        .iter()
        .zip(l.records(seqs)?)
        .map(|(&seq, record)| Record { seq, record })
        .collect())
}

/// Parses Scan's `index` and `key` arguments.
fn parse_scan(index: &str, key: &str) -> Result<Scan, Error> {
    Ok(match index {
        "all" => Scan::All,
        "owner" => Scan::Owner(key.into()),
        "workload" => Scan::Workload(key.into()),
        "kind" => Scan::Kind(
            Kind::from_name(key).ok_or_else(|| Error::Invalid(format!("unknown kind {key:?}")))?,
        ),
        "time" => {
            let bad = || Error::Invalid(format!("time key {key:?} is not FROM_MS..TO_MS"));
            let (from, to) = key.split_once("..").ok_or_else(bad)?;
            Scan::Time {
                from_ms: from.parse().map_err(|_| bad())?,
                to_ms: to.parse().map_err(|_| bad())?,
            }
        }
        other => {
            return Err(Error::Invalid(format!(
                "unknown index {other:?}: all, owner, workload, kind or time"
            )))
        }
    })
}

#[interface(name = "org.zeronode.Ledger1")]
impl LedgerService {
    /// Appends an entry; answers once it is synced to disk. `kind` is
    /// grant, deploy, update, delete, result or event; the payload is
    /// stored byte for byte.
    async fn append(
        &self,
        kind: String,
        deployment: String,
        version: u64,
        owner: String,
        workloads: Vec<String>,
        payload: Vec<u8>,
    ) -> Result<AppendReceipt, Error> {
        let kind = Kind::from_name(&kind)
            .ok_or_else(|| Error::Invalid(format!("unknown kind {kind:?}")))?;
        let meta = EntryMeta {
            deployment,
            version,
            owner,
            workloads,
        };
        let r = self.ledger.append_async(kind, meta, payload).await?;
        Ok(AppendReceipt {
            seq: r.seq,
            hash: r.hash.to_vec(),
            time_ms: r.time_ms,
        })
    }

    /// The number of entries.
    async fn count(&self) -> Result<u64, Error> {
        self.blocking(|l| l.len()).await
    }

    /// The node's ed25519 public key, which signs entries and heads.
    /// On a node's first boot it waits for the key from identity.
    async fn public_key(&self) -> Result<Vec<u8>, Error> {
        self.blocking(|l| Ok(l.public_key()?.to_vec())).await
    }

    /// The record of entry `seq`.
    async fn get(&self, seq: u64) -> Result<Vec<u8>, Error> {
        self.blocking(move |l| l.record(seq))
            .await?
            .ok_or_else(|| Error::NotFound(format!("no entry {seq}")))
    }

    /// The entry whose hash is `hash`.
    async fn get_by_hash(&self, hash: Vec<u8>) -> Result<Record, Error> {
        let h = hash32(&hash)?;
        let found = self
            .blocking(move |l| match l.seq_of(&h)? {
                Some(seq) => Ok(l.record(seq)?.map(|record| Record { seq, record })),
                None => Ok(None),
            })
            .await?;
        found.ok_or_else(|| Error::NotFound("no entry has this hash".into()))
    }

    /// Every entry about a deployment, by version then seq.
    async fn history(&self, deployment: String) -> Result<Vec<Record>, Error> {
        self.blocking(move |l| records(l, &l.history(&deployment)?))
            .await
    }

    /// The latest live entry of every deployment not deleted.
    async fn live(&self) -> Result<Vec<LiveDeployment>, Error> {
        self.blocking(|l| {
            let live = l.live()?;
            let seqs: Vec<u64> = live.iter().map(|(_, _, s)| *s).collect();
            Ok(live
                .into_iter()
                .zip(l.records(&seqs)?)
                .map(|((deployment, version, seq), record)| LiveDeployment {
                    deployment,
                    version,
                    seq,
                    record,
                })
                .collect())
        })
        .await
    }

    /// A page of at most `limit` entries (capped at 1000) after seq `after`
    /// (-1: from the start). `index` is all, owner, workload, kind or time;
    /// `key` the owner, workload name, kind name, or `FROM_MS..TO_MS`.
    async fn scan(
        &self,
        index: String,
        key: String,
        after: i64,
        limit: u32,
    ) -> Result<ScanPage, Error> {
        let scan = parse_scan(&index, &key)?;
        let after = u64::try_from(after).ok();
        let limit = limit.min(1000) as usize;
        self.blocking(move |l| {
            let page = l.scan(&scan, after, limit)?;
            Ok(ScanPage {
                records: records(l, &page.seqs)?,
                next: page.next.map_or(-1, |n| n as i64),
            })
        })
        .await
    }

    /// The current tree head, signed with the node key.
    async fn head(&self) -> Result<TreeHead, Error> {
        let sth = self.blocking(|l| l.signed_tree_head()).await?;
        Ok(TreeHead {
            size: sth.size,
            time_ms: sth.time_ms,
            root: sth.root.to_vec(),
            signature: sth.signature.to_vec(),
        })
    }

    /// The inclusion proof of entry `seq` in the tree of `size` entries.
    async fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Vec<u8>>, Error> {
        let p = self.blocking(move |l| l.inclusion_proof(seq, size)).await?;
        Ok(p.into_iter().map(|h| h.to_vec()).collect())
    }

    /// The consistency proof from the tree of `old` entries to `new`.
    async fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Vec<u8>>, Error> {
        let p = self
            .blocking(move |l| l.consistency_proof(old, new))
            .await?;
        Ok(p.into_iter().map(|h| h.to_vec()).collect())
    }

    /// The Merkle root of the first `size` entries (unsigned; Head signs).
    async fn root(&self, size: u64) -> Result<Vec<u8>, Error> {
        Ok(self.blocking(move |l| l.root_at(size)).await?.to_vec())
    }

    /// Walks the whole chain; names the first broken entry.
    async fn verify(&self) -> Result<VerifyResult, Error> {
        let r = self.blocking(|l| l.verify()).await?;
        let (bad_seq, reason) = r
            .first_break
            .as_ref()
            .map_or((0, String::new()), |b| (b.seq, b.reason.to_string()));
        Ok(VerifyResult {
            ok: r.first_break.is_none(),
            entries: r.entries,
            bytes: r.bytes,
            bad_seq,
            reason,
        })
    }

    /// Writes the ledger as a portable file at `path` on the node.
    async fn export(&self, path: String) -> Result<u64, Error> {
        let h = self
            .blocking(move |l| l.export(std::path::Path::new(&path)))
            .await?;
        Ok(h.count)
    }
}

/// The client side of `org.zeronode.Ledger1`.
#[proxy(
    interface = "org.zeronode.Ledger1",
    default_service = "org.zeronode.Ledger1",
    default_path = "/org/zeronode/Ledger1"
)]
pub trait Ledger1 {
    fn append(
        &self,
        kind: &str,
        deployment: &str,
        version: u64,
        owner: &str,
        workloads: &[&str],
        payload: &[u8],
    ) -> Result<AppendReceipt, Error>;
    fn count(&self) -> Result<u64, Error>;
    fn public_key(&self) -> Result<Vec<u8>, Error>;
    fn get(&self, seq: u64) -> Result<Vec<u8>, Error>;
    fn get_by_hash(&self, hash: &[u8]) -> Result<Record, Error>;
    fn history(&self, deployment: &str) -> Result<Vec<Record>, Error>;
    fn live(&self) -> Result<Vec<LiveDeployment>, Error>;
    fn scan(&self, index: &str, key: &str, after: i64, limit: u32) -> Result<ScanPage, Error>;
    fn head(&self) -> Result<TreeHead, Error>;
    fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Vec<u8>>, Error>;
    fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Vec<u8>>, Error>;
    fn root(&self, size: u64) -> Result<Vec<u8>, Error>;
    fn verify(&self) -> Result<VerifyResult, Error>;
    fn export(&self, path: &str) -> Result<u64, Error>;
}
