//! The full audit: walks every entry, checks the chain, every signature
//! and every stored tree node, and names the first broken entry.
//!
//! Signatures dominate the cost for small entries, so they are checked in
//! batches (ed25519 batch verification, about twice as fast as one by
//! one) and the chain is cut into one slice a core, each slice walked by
//! its own thread with its own read transaction; the links between slices
//! are checked after.

use std::ops::Bound;

use ed25519_dalek::{Signature, VerifyingKey};

use crate::entry::{self, Hash};
use crate::store::{entry_count, tree_key, Dbs, Ledger, LedgerError, Result};
use crate::verifier;

/// Signatures checked together.
const SIG_BATCH: usize = 256;

/// Why an entry is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakReason {
    /// No entry is stored under this seq.
    Missing,
    /// The record is not a valid entry.
    Decode(String),
    /// The seq inside the entry is not the seq it is stored under.
    SeqMismatch { found: u64 },
    /// `prev` is not the hash of the entry before.
    PrevMismatch,
    /// The signature does not verify with the ledger's key.
    BadSignature,
    /// A stored Merkle node does not match the entries.
    TreeMismatch { level: u8, index: u64 },
    /// The storage refused to read it.
    Storage(String),
}

impl std::fmt::Display for BreakReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BreakReason::Missing => write!(f, "entry is missing"),
            BreakReason::Decode(e) => write!(f, "does not decode: {e}"),
            BreakReason::SeqMismatch { found } => write!(f, "holds seq {found}"),
            BreakReason::PrevMismatch => write!(f, "prev hash does not match the entry before"),
            BreakReason::BadSignature => write!(f, "signature does not verify"),
            BreakReason::TreeMismatch { level, index } => {
                write!(f, "Merkle node {level}/{index} does not match the entries")
            }
            BreakReason::Storage(e) => write!(f, "storage: {e}"),
        }
    }
}

/// The first broken entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub seq: u64,
    pub reason: BreakReason,
}

/// What a verify found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries in the ledger.
    pub entries: u64,
    /// Record bytes read and checked.
    pub bytes: u64,
    /// The Merkle root of the whole ledger (from the entries).
    pub root: Hash,
    pub first_break: Option<Break>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.first_break.is_none()
    }
}

struct SliceResult {
    start: u64,
    first_prev: Hash,
    last_hash: Hash,
    bytes: u64,
    brk: Option<Break>,
}

impl Ledger {
    /// Checks the whole ledger; see [`VerifyReport`].
    pub fn verify(&self) -> Result<VerifyReport> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.verify_with_threads(threads)
    }

    /// [`Ledger::verify`] on `threads` threads.
    pub fn verify_with_threads(&self, threads: usize) -> Result<VerifyReport> {
        self.verify_range(0, threads)
    }

    /// Checks entries from `from` to the end (linked to entry `from - 1`,
    /// taken as it is stored): the incremental audit of what was added
    /// since a previous verify. `root` still covers the whole ledger.
    pub fn verify_range(&self, from: u64, threads: usize) -> Result<VerifyReport> {
        let env = self.env();
        let dbs = *self.dbs();
        let key = VerifyingKey::from_bytes(&self.public_key())
            .map_err(|_| LedgerError::Corrupt("stored public key is not an ed25519 key".into()))?;
        let (total, link) = {
            let rtxn = env.read_txn()?;
            let total = entry_count(&rtxn, &dbs)?;
            let link = match from.checked_sub(1) {
                None => [0u8; 32],
                Some(before) => match dbs.entries.get(&rtxn, &before.to_be_bytes())? {
                    Some(r) => entry::split_record(r)
                        .map(|(body, _)| entry::body_hash(body))
                        .unwrap_or([0; 32]),
                    None => [0u8; 32],
                },
            };
            (total, link)
        };
        let from = from.min(total);
        let threads = threads.max(1) as u64;
        let per = (total - from).div_ceil(threads).max(1);
        let slices: Vec<(u64, u64)> = (0..threads)
            .map(|i| (from + i * per, (from + (i + 1) * per).min(total)))
            .filter(|(s, e)| s < e)
            .collect();
        let results: Vec<Result<SliceResult>> = std::thread::scope(|scope| {
            let handles: Vec<_> = slices
                .iter()
                .map(|&(s, e)| scope.spawn(move || verify_slice(env, &dbs, &key, s, e)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(LedgerError::Corrupt("verify thread panicked".into()))
                    })
                })
                .collect()
        });
        let mut first_break: Option<Break> = None;
        let mut note = |b: Break| {
            if first_break.as_ref().is_none_or(|f| b.seq < f.seq) {
                first_break = Some(b);
            }
        };
        let mut bytes = 0;
        let mut prev_last: Option<Hash> = None;
        for r in results {
            let r = r?;
            bytes += r.bytes;
            if let Some(b) = r.brk.clone() {
                note(b);
            }
            let expected = prev_last.unwrap_or(link);
            // The slice's first link, which its own thread could not check.
            if r.first_prev != expected && r.brk.as_ref().is_none_or(|b| b.seq > r.start) {
                note(Break {
                    seq: r.start,
                    reason: BreakReason::PrevMismatch,
                });
            }
            prev_last = Some(r.last_hash);
        }
        let root = self.root_from_tree(total)?;
        Ok(VerifyReport {
            entries: total,
            bytes,
            root,
            first_break,
        })
    }

    fn root_from_tree(&self, size: u64) -> Result<Hash> {
        // The tree nodes were all checked against the entries above when
        // there is no break; with a break the root is informative only.
        self.root_at(size).or_else(|_| Ok(verifier::empty_root()))
    }
}

fn verify_slice(
    env: &heed::Env<heed::WithoutTls>,
    dbs: &Dbs,
    key: &VerifyingKey,
    start: u64,
    end: u64,
) -> Result<SliceResult> {
    let rtxn = env.read_txn()?;
    let mut out = SliceResult {
        start,
        first_prev: [0; 32],
        last_hash: [0; 32],
        bytes: 0,
        brk: None,
    };
    let mut pending: Vec<(u64, Hash, [u8; 64])> = Vec::with_capacity(SIG_BATCH);
    let mut expected = start;
    let mut prev: Option<Hash> = None;
    let (from, to) = (start.to_be_bytes(), end.to_be_bytes());
    let range = (Bound::Included(&from[..]), Bound::Excluded(&to[..]));
    let mut chain_break: Option<Break> = None;
    let iter = dbs.entries.range(&rtxn, &range)?;
    for item in iter {
        let (k, record) = match item {
            Ok(kv) => kv,
            Err(e) => {
                chain_break = Some(Break {
                    seq: expected,
                    reason: BreakReason::Storage(e.to_string()),
                });
                break;
            }
        };
        let seq = match <[u8; 8]>::try_from(k) {
            Ok(a) => u64::from_be_bytes(a),
            Err(_) => {
                chain_break = Some(Break {
                    seq: expected,
                    reason: BreakReason::Storage(format!("key of {} bytes", k.len())),
                });
                break;
            }
        };
        if seq != expected {
            chain_break = Some(Break {
                seq: expected,
                reason: BreakReason::Missing,
            });
            break;
        }
        out.bytes += record.len() as u64;
        match check_entry(&rtxn, dbs, seq, record, prev.as_ref()) {
            Ok((hash, sig, first_prev)) => {
                if prev.is_none() {
                    out.first_prev = first_prev;
                }
                prev = Some(hash);
                pending.push((seq, hash, sig));
                if pending.len() == SIG_BATCH {
                    if let Some(b) = check_signatures(key, &pending) {
                        out.brk = Some(b);
                        return Ok(out);
                    }
                    pending.clear();
                }
            }
            Err(reason) => {
                chain_break = Some(Break { seq, reason });
                break;
            }
        }
        expected += 1;
    }
    if chain_break.is_none() && expected < end {
        chain_break = Some(Break {
            seq: expected,
            reason: BreakReason::Missing,
        });
    }
    // A bad signature before the chain break is the first break.
    out.brk = check_signatures(key, &pending).or(chain_break);
    out.last_hash = prev.unwrap_or([0; 32]);
    Ok(out)
}

/// Checks one entry's structure, link and tree nodes; gives its hash,
/// signature and prev field.
fn check_entry(
    rtxn: &heed::RoTxn,
    dbs: &Dbs,
    seq: u64,
    record: &[u8],
    prev: Option<&Hash>,
) -> Result<(Hash, [u8; 64], Hash), BreakReason> {
    let decode = |e: entry::DecodeError| BreakReason::Decode(e.to_string());
    let (body, sig) = entry::split_record(record).map_err(decode)?;
    let (header, _, _) = entry::decode_body(body).map_err(decode)?;
    if header.seq != seq {
        return Err(BreakReason::SeqMismatch { found: header.seq });
    }
    if let Some(p) = prev {
        if &header.prev != p {
            return Err(BreakReason::PrevMismatch);
        }
    } else if seq == 0 && header.prev != [0; 32] {
        return Err(BreakReason::PrevMismatch);
    }
    let hash = entry::body_hash(body);
    check_tree(rtxn, dbs, seq, &hash)?;
    Ok((hash, *sig, header.prev))
}

/// The leaf of `seq` and every subtree it completes must be stored as the
/// entries say.
fn check_tree(rtxn: &heed::RoTxn, dbs: &Dbs, seq: u64, hash: &Hash) -> Result<(), BreakReason> {
    let read = |level: u8, index: u64| -> Result<Hash, BreakReason> {
        let mismatch = || BreakReason::TreeMismatch { level, index };
        let v = dbs
            .tree
            .get(rtxn, &tree_key(level, index))
            .map_err(|e| BreakReason::Storage(e.to_string()))?
            .ok_or_else(mismatch)?;
        v.try_into().map_err(|_| mismatch())
    };
    if read(0, seq)? != verifier::leaf_hash(hash) {
        return Err(BreakReason::TreeMismatch {
            level: 0,
            index: seq,
        });
    }
    let mut level = 0u8;
    let mut index = seq;
    while index & 1 == 1 {
        let left = read(level, index - 1)?;
        let right = read(level, index)?;
        level += 1;
        index >>= 1;
        if read(level, index)? != verifier::node_hash(&left, &right) {
            return Err(BreakReason::TreeMismatch { level, index });
        }
    }
    Ok(())
}

/// The first entry in `pending` whose signature fails, if any.
pub(crate) fn check_signatures(
    key: &VerifyingKey,
    pending: &[(u64, Hash, [u8; 64])],
) -> Option<Break> {
    if pending.is_empty() {
        return None;
    }
    let items: Vec<(&[u8], &[u8; 64])> = pending.iter().map(|(_, h, s)| (&h[..], s)).collect();
    if crate::batch::verify_same_key(key.as_bytes(), &items) {
        return None;
    }
    // The batch only says that one failed: find the first one by one.
    // Should every one pass strict checks alone, the batch still failed:
    // blame its first entry rather than pass it.
    let first = pending
        .iter()
        .find(|(_, h, s)| key.verify_strict(h, &Signature::from_bytes(s)).is_err())
        .unwrap_or(&pending[0]);
    Some(Break {
        seq: first.0,
        reason: BreakReason::BadSignature,
    })
}
