//! The portable file: a ledger moved off a node or handed to an auditor.
//!
//! ```text
//! magic        8   "ZNLEDGER"
//! format       1   1
//! encoding     1   newest entry encoding the records may use (2; 1 read too)
//! public key   32  ed25519 key every entry is signed with
//! count        8   u64 BE, number of entries
//! root         32  Merkle root of the `count` entries
//! count times:
//!   length     4   u32 BE
//!   record     length bytes: entry body || signature, as stored
//! ```
//!
//! Import reads the whole file and checks it (encoding, seqs from 0, the
//! hash chain, the signature chain, every signature, the root) before it
//! writes anything.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use heed::PutFlags;

use crate::entry::{self, Hash, ENCODING_VERSION, MAX_PAYLOAD};
use crate::store::{self, entry_count, Frontier, Ledger, LedgerError, Options, Result, TreeReader};
use crate::verifier;
use crate::verify::{check_signatures, ChainWalk};

pub const MAGIC: &[u8; 8] = b"ZNLEDGER";
pub const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 8 + 1 + 1 + 32 + 8 + 32;
/// A record can be no longer than the largest entry plus its metadata.
const MAX_RECORD: usize = MAX_PAYLOAD + 4 * 1024 * 1024;
/// Entries written in one transaction on import.
const IMPORT_TXN: usize = 4096;

/// The header of an export file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportHeader {
    pub public_key: [u8; 32],
    pub count: u64,
    pub root: Hash,
}

fn bad(msg: impl Into<String>) -> LedgerError {
    LedgerError::Import(msg.into())
}

impl Ledger {
    /// Writes the ledger as it is now to `path` (created, synced).
    pub fn export(&self, path: &Path) -> Result<ExportHeader> {
        let env = self.env();
        let dbs = *self.dbs();
        let rtxn = env.read_txn()?;
        let count = entry_count(&rtxn, &dbs)?;
        let root = verifier::subtree_hash(
            &TreeReader {
                txn: &rtxn,
                db: dbs.tree,
            },
            0,
            count,
        )?;
        let header = ExportHeader {
            public_key: self.public_key()?,
            count,
            root,
        };
        let file = File::create(path)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(MAGIC)?;
        w.write_all(&[FORMAT_VERSION, ENCODING_VERSION])?;
        w.write_all(&header.public_key)?;
        w.write_all(&count.to_be_bytes())?;
        w.write_all(&root)?;
        for item in dbs.entries.iter(&rtxn)? {
            let (_, record) = item?;
            w.write_all(&(record.len() as u32).to_be_bytes())?;
            w.write_all(record)?;
        }
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(header)
    }

    /// Checks the export at `file` completely, then writes it into the
    /// empty ledger directory `dir`. Nothing is written if any check fails.
    pub fn import(file: &Path, dir: &Path, opts: Options) -> Result<ExportHeader> {
        let header = check_export(file)?;
        let (env, dbs) = store::open_env(dir, &opts)?;
        {
            let rtxn = env.read_txn()?;
            let n = entry_count(&rtxn, &dbs)?;
            if n != 0 {
                return Err(bad(format!(
                    "{} already holds {n} entries: import needs an empty ledger",
                    dir.display()
                )));
            }
        }
        let mut r = open_records(file)?;
        let mut frontier = Frontier::default();
        let mut wtxn = env.write_txn()?;
        dbs.meta.put(&mut wtxn, b"public_key", &header.public_key)?;
        let mut record = Vec::new();
        for seq in 0..header.count {
            read_record(&mut r, &mut record)?;
            let (body, _) = entry::split_record(&record)
                .map_err(|source| LedgerError::Decode { seq, source })?;
            let (h, meta, _) =
                entry::decode_body(body).map_err(|source| LedgerError::Decode { seq, source })?;
            let hash = entry::body_hash(body);
            dbs.entries
                .put_with_flags(&mut wtxn, PutFlags::APPEND, &seq.to_be_bytes(), &record)?;
            store::derive(&mut wtxn, &dbs, &mut frontier, &h, &hash, &meta)?;
            if (seq as usize + 1) % IMPORT_TXN == 0 {
                dbs.meta
                    .put(&mut wtxn, b"indexed_to", &(seq + 1).to_be_bytes())?;
                wtxn.commit()?;
                wtxn = env.write_txn()?;
            }
        }
        dbs.meta
            .put(&mut wtxn, b"indexed_to", &header.count.to_be_bytes())?;
        dbs.meta.put(
            &mut wtxn,
            b"index_version",
            &store::INDEX_VERSION.to_be_bytes(),
        )?;
        wtxn.commit()?;
        env.force_sync()?;
        Ok(header)
    }
}

fn open_records(file: &Path) -> Result<BufReader<File>> {
    let f = File::open(file).map_err(|e| bad(format!("opening {}: {e}", file.display())))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut skip = [0u8; HEADER_LEN];
    r.read_exact(&mut skip)?;
    Ok(r)
}

fn read_record(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<()> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|e| bad(format!("record length: {e}")))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_RECORD {
        return Err(bad(format!("record of {len} bytes exceeds {MAX_RECORD}")));
    }
    buf.resize(len, 0);
    r.read_exact(buf)
        .map_err(|e| bad(format!("record of {len} bytes: {e}")))?;
    Ok(())
}

/// Reads and checks a whole export file without writing anything.
pub fn check_export(file: &Path) -> Result<ExportHeader> {
    let f = File::open(file).map_err(|e| bad(format!("opening {}: {e}", file.display())))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut h = [0u8; HEADER_LEN];
    r.read_exact(&mut h)
        .map_err(|e| bad(format!("header: {e}")))?;
    if &h[..8] != MAGIC {
        return Err(bad("not a ledger export (magic is not ZNLEDGER)"));
    }
    if h[8] != FORMAT_VERSION {
        return Err(bad(format!("export format {} is not supported", h[8])));
    }
    if h[9] == 0 || h[9] > ENCODING_VERSION {
        return Err(bad(format!("entry encoding {} is not supported", h[9])));
    }
    let mut public_key = [0u8; 32];
    public_key.copy_from_slice(&h[10..42]);
    let count = u64::from_be_bytes(h[42..50].try_into().map_err(|_| bad("count"))?);
    let mut root = [0u8; 32];
    root.copy_from_slice(&h[50..82]);
    let key = VerifyingKey::from_bytes(&public_key)
        .map_err(|_| bad("public key is not an ed25519 key"))?;

    let mut record = Vec::new();
    let mut prev = [0u8; 32];
    let mut frontier = Frontier::default();
    let mut walk = ChainWalk::START;
    let mut pending: Vec<(u64, Hash, [u8; 64])> = Vec::with_capacity(64);
    for seq in 0..count {
        read_record(&mut r, &mut record).map_err(|e| bad(format!("entry {seq}: {e}")))?;
        let (body, sig) =
            entry::split_record(&record).map_err(|e| bad(format!("entry {seq}: {e}")))?;
        let (header, _, _) =
            entry::decode_body(body).map_err(|e| bad(format!("entry {seq}: {e}")))?;
        if header.seq != seq {
            return Err(bad(format!("entry {seq} holds seq {}", header.seq)));
        }
        if header.prev != prev {
            return Err(bad(format!(
                "entry {seq}: prev hash does not match the entry before"
            )));
        }
        walk.step(seq, header.sig_chain, sig)
            .map_err(|e| bad(format!("entry {seq}: {e}")))?;
        let hash = entry::body_hash(body);
        frontier.push(&hash, |_, _, _| Ok::<(), ()>(())).ok();
        pending.push((seq, hash, *sig));
        if pending.len() == 64 {
            if let Some(b) = check_signatures(&key, &pending) {
                return Err(bad(format!("entry {}: signature does not verify", b.seq)));
            }
            pending.clear();
        }
        prev = hash;
    }
    if let Some(b) = check_signatures(&key, &pending) {
        return Err(bad(format!("entry {}: signature does not verify", b.seq)));
    }
    let mut rest = [0u8; 1];
    if r.read(&mut rest)? != 0 {
        return Err(bad(format!("bytes follow the {count} entries")));
    }
    if frontier.root() != root {
        return Err(bad("Merkle root of the entries does not match the header"));
    }
    Ok(ExportHeader {
        public_key,
        count,
        root,
    })
}
