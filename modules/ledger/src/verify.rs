//! The full audit: walks every entry, checks its encoding, its link to the
//! entry before, the stored Merkle nodes, and that the node signed it, and
//! names the first broken entry.
//!
//! Signatures: a version-2 entry carries the signature chain over every
//! signature before its group commit ([`entry::SigChain`]). Walking the
//! entries recomputes that chain and checks each claim, so the node's
//! signature on a later entry vouches for every signature before its group,
//! byte for byte. Only what no later entry vouches for is checked with
//! ed25519 (batched): the last group's signatures (the last one anchors
//! the whole chain of bodies) and version-1 entries'. When anything breaks
//! at seq k, the signatures of k's group before k, which the break leaves
//! unvouched for, are checked with ed25519 too, so the break named is the
//! first. docs/ledger.md gives the argument.
//!
//! The chain is cut into one slice a core, each slice walked by its own
//! thread with its own read transaction; the links between slices are
//! checked after.

use std::ops::Bound;

use ed25519_dalek::{Signature, VerifyingKey};

use crate::entry::{self, Hash, SigChain};
use crate::store::{entry_count, tree_key, Dbs, Ledger, LedgerError, Result};
use crate::verifier;

/// Signatures checked together.
const SIG_BATCH: usize = 256;
/// An ed25519 check (batched) against the rest of an entry's checks, for
/// 1 KiB entries: what balances the slices.
const DIRECT_COST: u64 = 5;

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
    /// The entry's signature chain does not match the signatures before
    /// it (or a version-1 entry follows a version-2 one).
    SigChainMismatch,
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
            BreakReason::SigChainMismatch => {
                write!(f, "signature chain does not match the signatures before it")
            }
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

/// The signature chain as a walk in seq order reaches an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChainWalk {
    /// The chain over the version-2 signatures before the next entry.
    sigs: Hash,
    /// The claim of the entry before (`None`: version 1, or none).
    last: Option<SigChain>,
}

impl ChainWalk {
    /// Before entry 0.
    pub(crate) const START: ChainWalk = ChainWalk {
        sigs: [0; 32],
        last: None,
    };

    /// Checks entry `seq`'s claim against the entries before it, then adds
    /// its signature to the chain.
    pub(crate) fn step(
        &mut self,
        seq: u64,
        claim: Option<SigChain>,
        sig: &[u8; 64],
    ) -> Result<(), BreakReason> {
        let ok = match (self.last, claim) {
            // Version 1 only before any version 2.
            (last, None) => last.is_none(),
            // Same group as the entry before.
            (Some(p), Some(c)) if c == p => true,
            // A new group: it vouches for everything before it.
            (_, Some(c)) => c.upto == seq && c.hash == self.sigs,
        };
        if !ok {
            return Err(BreakReason::SigChainMismatch);
        }
        if claim.is_some() {
            self.sigs = entry::chain_signature(&self.sigs, sig);
            self.last = claim;
        }
        Ok(())
    }

    /// The first seq of the group of the entry walked last: its signatures
    /// from there on are vouched for by no entry walked yet.
    fn group_start(&self, next: u64) -> u64 {
        self.last.map_or(next, |c| c.upto)
    }
}

struct SliceResult {
    start: u64,
    /// The first entry's prev, claim and signature, checked against the
    /// slice before once all are done.
    first_prev: Hash,
    first_claim: Option<SigChain>,
    first_sig: [u8; 64],
    last_hash: Hash,
    end_walk: ChainWalk,
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
    /// and to the signature chain entry `from` claims, taken as stored):
    /// the incremental audit of what was added since a previous verify.
    /// `root` still covers the whole ledger.
    pub fn verify_range(&self, from: u64, threads: usize) -> Result<VerifyReport> {
        let env = self.env();
        let dbs = *self.dbs();
        let key = VerifyingKey::from_bytes(&self.public_key()?)
            .map_err(|_| LedgerError::Corrupt("stored public key is not an ed25519 key".into()))?;
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
        // The last group's signatures are vouched for by no later entry.
        // Should the last entry not decode, every signature is checked.
        let covered_below = match total.checked_sub(1) {
            None => 0,
            Some(last) => claim_of(&rtxn, &dbs, last).map_or(0, |c| c.upto),
        };
        let from = from.min(total);
        let slices = slices(from, total, covered_below, threads.max(1) as u64);
        let results: Vec<Result<SliceResult>> = std::thread::scope(|scope| {
            let handles: Vec<_> = slices
                .iter()
                .map(|&(s, e)| {
                    scope.spawn(move || verify_slice(env, &dbs, &key, s, e, covered_below))
                })
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
        let mut bytes = 0;
        let mut before: Option<(Hash, ChainWalk)> = None;
        for r in results {
            let r = r?;
            bytes += r.bytes;
            // Whatever a later slice finds comes after a break found before.
            if first_break.is_none() {
                let own_first = r.brk.as_ref().is_some_and(|b| b.seq <= r.start);
                if !own_first {
                    // The slice's first link, which its own thread could not check.
                    let (expected, mut walk) = match before {
                        Some(b) => b,
                        // From 0 the chain starts empty; from elsewhere
                        // the first entry's claim is taken as stored.
                        None if from == 0 => (link, ChainWalk::START),
                        None => (
                            link,
                            ChainWalk {
                                sigs: [0; 32],
                                last: r.first_claim,
                            },
                        ),
                    };
                    let reason = if r.first_prev != expected {
                        Some(BreakReason::PrevMismatch)
                    } else if before.is_none() && from > 0 {
                        None
                    } else {
                        walk.step(r.start, r.first_claim, &r.first_sig).err()
                    };
                    if let Some(reason) = reason {
                        let g = walk.group_start(r.start);
                        first_break = Some(attribute(&rtxn, &dbs, &key, g, r.start, reason));
                    }
                }
                first_break = earliest(first_break, r.brk.clone());
            }
            before = Some((r.last_hash, r.end_walk));
        }
        drop(rtxn);
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

/// Cuts `from..total` into `threads` slices of about equal work: an
/// entry whose signature is checked with ed25519 costs about
/// [`DIRECT_COST`] entries vouched for by the chain.
fn slices(from: u64, total: u64, covered_below: u64, threads: u64) -> Vec<(u64, u64)> {
    let split = covered_below.clamp(from, total);
    let cheap = split - from;
    let work = cheap + (total - split) * DIRECT_COST;
    let per = work.div_ceil(threads).max(1);
    let at = |w: u64| {
        if w <= cheap {
            from + w
        } else {
            (split + (w - cheap).div_ceil(DIRECT_COST)).min(total)
        }
    };
    (0..threads)
        .map(|i| (at(i * per), at((i + 1) * per)))
        .filter(|(s, e)| s < e)
        .collect()
}

fn earliest(a: Option<Break>, b: Option<Break>) -> Option<Break> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.seq < a.seq { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// The signature chain claim of entry `seq` as stored (`None`: version 1
/// or unreadable).
fn claim_of(rtxn: &heed::RoTxn, dbs: &Dbs, seq: u64) -> Option<SigChain> {
    let record = dbs.entries.get(rtxn, &seq.to_be_bytes()).ok()??;
    let (body, _) = entry::split_record(record).ok()?;
    entry::decode_header(body).ok()?.sig_chain
}

/// The walk before entry `start`, from the claim `start` makes and the
/// signatures of its group before it. A claim past `start` gives a walk
/// that the entry's own step refuses.
fn walk_before(rtxn: &heed::RoTxn, dbs: &Dbs, start: u64) -> ChainWalk {
    let Some(claim) = claim_of(rtxn, dbs, start) else {
        return ChainWalk::START;
    };
    let mut walk = ChainWalk {
        sigs: claim.hash,
        last: Some(claim),
    };
    for seq in claim.upto..start {
        // A record that does not split is a break of the slice before,
        // which comes first.
        let Some(Ok((_, sig))) = dbs
            .entries
            .get(rtxn, &seq.to_be_bytes())
            .ok()
            .flatten()
            .map(entry::split_record)
        else {
            return ChainWalk::START;
        };
        walk.sigs = entry::chain_signature(&walk.sigs, sig);
    }
    walk
}

/// The break at `seq` for `reason`, unless a signature of the group
/// before it (`from..seq`, vouched for by no entry checked) fails first.
fn attribute(
    rtxn: &heed::RoTxn,
    dbs: &Dbs,
    key: &VerifyingKey,
    from: u64,
    seq: u64,
    reason: BreakReason,
) -> Break {
    let mut items = Vec::new();
    for s in from..seq {
        // Records that do not split are breaks found by their own checks.
        if let Some(Ok((body, sig))) = dbs
            .entries
            .get(rtxn, &s.to_be_bytes())
            .ok()
            .flatten()
            .map(entry::split_record)
        {
            items.push((s, entry::body_hash(body), *sig));
        }
    }
    check_signatures(key, &items).unwrap_or(Break { seq, reason })
}

fn verify_slice(
    env: &heed::Env<heed::WithoutTls>,
    dbs: &Dbs,
    key: &VerifyingKey,
    start: u64,
    end: u64,
    covered_below: u64,
) -> Result<SliceResult> {
    let rtxn = env.read_txn()?;
    let mut walk = walk_before(&rtxn, dbs, start);
    let mut out = SliceResult {
        start,
        first_prev: [0; 32],
        first_claim: None,
        first_sig: [0; 64],
        last_hash: [0; 32],
        end_walk: walk,
        bytes: 0,
        brk: None,
    };
    let mut pending: Vec<(u64, Hash, [u8; 64])> = Vec::with_capacity(SIG_BATCH);
    let mut expected = start;
    let mut prev: Option<Hash> = None;
    let (from, to) = (start.to_be_bytes(), end.to_be_bytes());
    let range = (Bound::Included(&from[..]), Bound::Excluded(&to[..]));
    let mut chain_break: Option<(u64, BreakReason)> = None;
    let iter = dbs.entries.range(&rtxn, &range)?;
    for item in iter {
        let (k, record) = match item {
            Ok(kv) => kv,
            Err(e) => {
                chain_break = Some((expected, BreakReason::Storage(e.to_string())));
                break;
            }
        };
        let seq = match <[u8; 8]>::try_from(k) {
            Ok(a) => u64::from_be_bytes(a),
            Err(_) => {
                let reason = BreakReason::Storage(format!("key of {} bytes", k.len()));
                chain_break = Some((expected, reason));
                break;
            }
        };
        if seq != expected {
            chain_break = Some((expected, BreakReason::Missing));
            break;
        }
        out.bytes += record.len() as u64;
        let before = walk;
        match check_entry(&rtxn, dbs, seq, record, prev.as_ref(), &mut walk) {
            Ok(c) => {
                if prev.is_none() {
                    out.first_prev = c.prev;
                    out.first_claim = c.claim;
                    out.first_sig = c.sig;
                }
                prev = Some(c.hash);
                // Vouched for by a later group's claim, checked when the
                // walk reaches it; anything else is checked here.
                if c.claim.is_none() || seq >= covered_below {
                    pending.push((seq, c.hash, c.sig));
                    if pending.len() == SIG_BATCH {
                        if let Some(b) = check_signatures(key, &pending) {
                            out.brk = Some(b);
                            return Ok(out);
                        }
                        pending.clear();
                    }
                }
            }
            Err(reason) => {
                walk = before;
                chain_break = Some((seq, reason));
                break;
            }
        }
        expected += 1;
    }
    if chain_break.is_none() && expected < end {
        chain_break = Some((expected, BreakReason::Missing));
    }
    let chain_break = chain_break.map(|(seq, reason)| {
        // The signatures of the broken entry's group before it are
        // vouched for by nothing now: check them.
        let from = if seq == start {
            seq.checked_sub(1)
                .and_then(|b| claim_of(&rtxn, dbs, b))
                .map_or(seq, |c| c.upto)
        } else {
            walk.group_start(seq)
        };
        attribute(&rtxn, dbs, key, from, seq, reason)
    });
    // A bad signature before the chain break is the first break.
    out.brk = earliest(check_signatures(key, &pending), chain_break);
    out.last_hash = prev.unwrap_or([0; 32]);
    out.end_walk = walk;
    Ok(out)
}

/// What checking one entry gives.
struct Checked {
    hash: Hash,
    sig: [u8; 64],
    prev: Hash,
    claim: Option<SigChain>,
}

/// Checks one entry's structure, link, signature chain claim and tree
/// nodes.
fn check_entry(
    rtxn: &heed::RoTxn,
    dbs: &Dbs,
    seq: u64,
    record: &[u8],
    prev: Option<&Hash>,
    walk: &mut ChainWalk,
) -> Result<Checked, BreakReason> {
    let decode = |e: entry::DecodeError| BreakReason::Decode(e.to_string());
    let (body, sig) = entry::split_record(record).map_err(decode)?;
    let header = entry::check_body(body).map_err(decode)?;
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
    walk.step(seq, header.sig_chain, sig)?;
    let hash = entry::body_hash(body);
    check_tree(rtxn, dbs, seq, &hash)?;
    Ok(Checked {
        hash,
        sig: *sig,
        prev: header.prev,
        claim: header.sig_chain,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_the_range_once_and_balance_the_work() {
        for (from, total, covered, threads) in [
            (0, 100, 0, 2),
            (0, 100, 90, 2),
            (0, 100, 100, 3),
            (10, 11, 0, 4),
            (5, 1000, 700, 2),
            (0, 0, 0, 2),
        ] {
            let s = slices(from, total, covered, threads);
            let mut next = from;
            for &(a, b) in &s {
                assert_eq!(a, next, "{s:?}");
                assert!(a < b);
                next = b;
            }
            assert_eq!(next, total.max(from), "{s:?}");
            assert!(s.len() as u64 <= threads);
        }
        // 90 cheap entries and 10 direct ones (50 units): 70 units a slice.
        assert_eq!(slices(0, 100, 90, 2), vec![(0, 70), (70, 100)]);
    }
}
