//! The append path: two threads in a pipeline.
//!
//! - the sealer takes queued appends, gives them seqs and the chain's prev
//!   hashes, encodes, hashes and signs them as one group;
//! - the committer writes a sealed group, its tree nodes and index keys in
//!   one LMDB transaction, commits (the commit syncs) and only then
//!   answers the group's callers.
//!
//! While one group's commit waits for the disk, the next group is being
//! signed: signing and the commit's I/O no longer add up per group.
//!
//! The committer is the authority on the chain: it commits a group only if
//! the group was sealed on exactly the tip it holds. After a failed commit
//! the sealer may already have sealed later groups on the lost tip; those
//! are refused (their callers get an error, nothing of them is written)
//! and the sealer is told the tip to continue from.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use heed::{Env, PutFlags, WithoutTls};

use crate::batch;
use crate::entry::{self, EntryMeta, Hash, Kind, SigChain};
use crate::signer::Signer;
use crate::store::{derive, now_ms, Dbs, Frontier, LedgerError, Receipt, Result, META_INDEXED_TO};

/// Most appends committed in one transaction.
const MAX_BATCH: usize = 2048;
/// Most payload bytes committed in one transaction.
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// An append on its way to the writer.
pub(crate) struct Request {
    pub kind: Kind,
    pub meta: EntryMeta,
    pub payload: Vec<u8>,
    pub reply: tokio::sync::oneshot::Sender<Result<Receipt>>,
}

/// The end of the chain a group is sealed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tip {
    pub next_seq: u64,
    pub prev: Hash,
    pub last_time: u64,
    /// The signature chain over every entry before `next_seq`.
    pub sigs: Hash,
}

/// A group encoded, hashed and signed on top of `base`.
struct Sealed {
    base: Tip,
    end: Tip,
    time_ms: u64,
    /// `body || signature` of each entry.
    records: Vec<Vec<u8>>,
    hashes: Vec<Hash>,
    requests: Vec<Request>,
}

/// Starts the sealer and the committer; the handle is the committer's,
/// which joins the sealer when it ends. Both end once `rx` is closed and
/// every queued append is answered.
pub(crate) fn spawn(
    env: Env<WithoutTls>,
    dbs: Dbs,
    signer: Arc<dyn Signer>,
    tip: Tip,
    frontier: Frontier,
    rx: mpsc::Receiver<Request>,
) -> std::io::Result<JoinHandle<()>> {
    // Rendezvous: the sealer runs at most one group ahead of the commit,
    // and appends arriving meanwhile wait to make the next group larger.
    let (sealed_tx, sealed_rx) = mpsc::sync_channel::<Sealed>(0);
    let reset: Arc<Mutex<Option<Tip>>> = Arc::new(Mutex::new(None));
    let sealer_reset = reset.clone();
    let sealer = std::thread::Builder::new()
        .name("ledger-sealer".into())
        .spawn(move || seal_loop(signer.as_ref(), tip, &sealer_reset, rx, sealed_tx))?;
    std::thread::Builder::new()
        .name("ledger-writer".into())
        .spawn(move || {
            commit_loop(&env, &dbs, tip, frontier, &reset, sealed_rx);
            let _ = sealer.join();
        })
}

fn seal_loop(
    signer: &dyn Signer,
    mut tip: Tip,
    reset: &Mutex<Option<Tip>>,
    rx: mpsc::Receiver<Request>,
    tx: mpsc::SyncSender<Sealed>,
) {
    while let Ok(first) = rx.recv() {
        let mut bytes = first.payload.len();
        let mut requests = vec![first];
        while requests.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(r) => {
                    bytes += r.payload.len();
                    requests.push(r);
                }
                Err(_) => break,
            }
        }
        if let Some(t) = reset.lock().ok().and_then(|mut r| r.take()) {
            tip = t;
        }
        match seal(signer, tip, requests) {
            Ok(group) => {
                tip = group.end;
                if tx.send(group).is_err() {
                    return;
                }
            }
            Err((e, requests)) => {
                tracing::error!("ledger: signing {} entries failed: {e}", requests.len());
                answer_error(requests, &e.to_string());
            }
        }
    }
}

/// Encodes, hashes and signs `requests` as the entries following `tip`.
fn seal(
    signer: &dyn Signer,
    tip: Tip,
    requests: Vec<Request>,
) -> std::result::Result<Sealed, (LedgerError, Vec<Request>)> {
    let time_ms = now_ms().max(tip.last_time);
    let mut records = Vec::with_capacity(requests.len());
    let mut hashes = Vec::with_capacity(requests.len());
    let mut prev = tip.prev;
    // The group's own signatures are not known yet: every entry of it
    // vouches for the signatures before the group.
    let sig_chain = SigChain {
        upto: tip.next_seq,
        hash: tip.sigs,
    };
    for (i, req) in requests.iter().enumerate() {
        let mut record = Vec::new();
        entry::encode_body(
            tip.next_seq + i as u64,
            time_ms,
            req.kind,
            &prev,
            Some(&sig_chain),
            &req.meta,
            &req.payload,
            &mut record,
        );
        prev = entry::body_hash(&record);
        records.push(record);
        hashes.push(prev);
    }
    let signatures = match signer.sign_batch(&hashes) {
        Ok(s) if s.len() == hashes.len() => s,
        Ok(s) => {
            let e = LedgerError::WriteFailed(format!(
                "signer returned {} signatures for {} hashes",
                s.len(),
                hashes.len()
            ));
            return Err((e, requests));
        }
        Err(e) => return Err((e.into(), requests)),
    };
    // Chaining a signature in vouches for it in every later entry, and
    // verify relies on that rather than check it again: only signatures
    // that verify are chained in. A signer in this process makes valid
    // ones; another's (identity over D-Bus) get one same-key batch check.
    if !signer.signs_in_process() && !signatures_verify(signer, &hashes, &signatures) {
        let e =
            LedgerError::WriteFailed("the signer returned a signature that does not verify".into());
        return Err((e, requests));
    }
    let mut sigs = tip.sigs;
    for (record, sig) in records.iter_mut().zip(&signatures) {
        record.extend_from_slice(sig);
        sigs = entry::chain_signature(&sigs, sig);
    }
    let end = Tip {
        next_seq: tip.next_seq + requests.len() as u64,
        prev,
        last_time: time_ms,
        sigs,
    };
    Ok(Sealed {
        base: tip,
        end,
        time_ms,
        records,
        hashes,
        requests,
    })
}

fn signatures_verify(signer: &dyn Signer, hashes: &[Hash], signatures: &[[u8; 64]]) -> bool {
    let items: Vec<(&[u8], &[u8; 64])> = hashes
        .iter()
        .map(|h| &h[..])
        .zip(signatures.iter())
        .collect();
    batch::verify_same_key(&signer.public_key(), &items)
}

fn commit_loop(
    env: &Env<WithoutTls>,
    dbs: &Dbs,
    mut tip: Tip,
    mut frontier: Frontier,
    reset: &Mutex<Option<Tip>>,
    rx: mpsc::Receiver<Sealed>,
) {
    while let Ok(group) = rx.recv() {
        if group.base != tip {
            // Sealed on the tip of a group that failed: not chained to
            // what is on disk.
            answer_error(
                group.requests,
                "an earlier group commit failed; nothing of this one was written",
            );
            continue;
        }
        let before = frontier.clone();
        match commit(env, dbs, &mut frontier, &group) {
            Ok(()) => {
                tip = group.end;
                for (i, req) in group.requests.into_iter().enumerate() {
                    let receipt = Receipt {
                        seq: group.base.next_seq + i as u64,
                        hash: group.hashes[i],
                        time_ms: group.time_ms,
                    };
                    // A caller that gave up waiting still got its entry.
                    let _ = req.reply.send(Ok(receipt));
                }
            }
            Err(e) => {
                tracing::error!(
                    "ledger: append of {} entries failed: {e}",
                    group.requests.len()
                );
                frontier = before;
                if let Ok(mut r) = reset.lock() {
                    *r = Some(tip);
                }
                answer_error(group.requests, &e.to_string());
            }
        }
    }
}

fn answer_error(requests: Vec<Request>, msg: &str) {
    for req in requests {
        let _ = req
            .reply
            .send(Err(LedgerError::WriteFailed(msg.to_owned())));
    }
}

/// Writes one sealed group in one transaction; on error nothing of it is
/// on disk.
fn commit(env: &Env<WithoutTls>, dbs: &Dbs, frontier: &mut Frontier, group: &Sealed) -> Result<()> {
    let mut wtxn = env.write_txn()?;
    for (i, req) in group.requests.iter().enumerate() {
        let seq = group.base.next_seq + i as u64;
        dbs.entries.put_with_flags(
            &mut wtxn,
            PutFlags::APPEND,
            &seq.to_be_bytes(),
            &group.records[i],
        )?;
        let header = entry::Header {
            seq,
            time_ms: group.time_ms,
            kind: req.kind,
            prev: if i == 0 {
                group.base.prev
            } else {
                group.hashes[i - 1]
            },
            sig_chain: Some(SigChain {
                upto: group.base.next_seq,
                hash: group.base.sigs,
            }),
        };
        derive(
            &mut wtxn,
            dbs,
            frontier,
            &header,
            &group.hashes[i],
            &req.meta,
        )?;
    }
    dbs.meta.put(
        &mut wtxn,
        META_INDEXED_TO,
        &group.end.next_seq.to_be_bytes(),
    )?;
    // The commit syncs (the environment is not opened with NOSYNC): only
    // after it returns are the callers answered.
    wtxn.commit()?;
    Ok(())
}
