//! One ledger entry and its binary encoding, versions 1 and 2.
//!
//! The layout (all integers big-endian) is written out in the crate's
//! README so an auditor can re-implement it:
//!
//! ```text
//! body:
//!   0x45 'E'            1   tag, separates entry hashes from tree-head hashes
//!   0x01 or 0x02        1   encoding version
//!   seq                 8   u64, 0 for the first entry
//!   time                8   u64, unix milliseconds, never decreasing
//!   kind                1   1 grant, 2 deploy, 3 update, 4 delete, 5 result, 6 event
//!   prev                32  blake3 hash of the previous entry's body, zeros for seq 0
//!   (version 2 only)
//!   sigs upto           8   u64 m: the entries before seq m ...
//!   sigs hash           32  ... have their signatures chained into this hash
//!   deployment          2+n u16 length, UTF-8 (empty: none)
//!   version             8   u64 deployment version
//!   owner               2+n u16 length, UTF-8 owner or twin key (empty: none)
//!   workloads           2   u16 count, then each 2+n (u16 length, UTF-8)
//!   payload             4+n u32 length, bytes exactly as received
//! signature             64  ed25519 over blake3(body)
//! ```
//!
//! The entry's hash is `blake3(body)`; the stored record is `body || signature`.
//!
//! Version 2 adds the signature chain: `C = 0^32`, then for each version-2
//! entry in seq order `C = blake3(0x53 || C || signature)`. An entry's
//! `(m, hash)` says that `hash` is `C` over the version-2 entries before
//! seq `m`, where `m` is the first seq of the group commit it was sealed in
//! (the signatures of its own group are not known when it is encoded). So
//! a node signature on a later entry also vouches for the signatures
//! before it; see `verify` and the README for how the audit uses that.

use std::fmt;

/// Bytes before the variable part of the body.
const FIXED_HEADER: usize = 2 + 8 + 8 + 1 + 32;
/// The signature that closes every record.
pub const SIGNATURE_LEN: usize = 64;
/// The first byte of every entry body.
pub const ENTRY_TAG: u8 = 0x45;
/// The encoding this code writes; it reads 1 and 2.
pub const ENCODING_VERSION: u8 = 2;
/// Bytes the version-2 signature chain adds after `prev`.
const SIG_CHAIN_LEN: usize = 8 + 32;
/// The first byte of each step of the signature chain ('S').
pub const SIG_CHAIN_TAG: u8 = 0x53;
/// Largest payload accepted: a signed deployment document is far smaller.
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// Largest index string (deployment id, owner, workload name).
pub const MAX_META_STRING: usize = 1024;
/// Most workload names one entry may carry.
pub const MAX_WORKLOADS: usize = 1024;

/// A 32-byte blake3 hash.
pub type Hash = [u8; 32];

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A twin was authorised (or de-authorised) by the owner.
    Grant,
    /// A new deployment.
    Deploy,
    /// A new version of a deployment.
    Update,
    /// A deployment removed.
    Delete,
    /// A result the node reported (workload state, error).
    Result,
    /// Anything else worth recording (boot, key events).
    Event,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Grant,
        Kind::Deploy,
        Kind::Update,
        Kind::Delete,
        Kind::Result,
        Kind::Event,
    ];

    pub fn code(self) -> u8 {
        match self {
            Kind::Grant => 1,
            Kind::Deploy => 2,
            Kind::Update => 3,
            Kind::Delete => 4,
            Kind::Result => 5,
            Kind::Event => 6,
        }
    }

    pub fn from_code(code: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.code() == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Grant => "grant",
            Kind::Deploy => "deploy",
            Kind::Update => "update",
            Kind::Delete => "delete",
            Kind::Result => "result",
            Kind::Event => "event",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The index keys of an entry. Payloads are opaque signed documents, so
/// whoever appends (the provision module) names them; they are part of the
/// signed body, which is what lets indexes be rebuilt from entries alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryMeta {
    /// Deployment id, empty when the entry is about no deployment.
    pub deployment: String,
    /// Deployment version (0 when not applicable).
    pub version: u64,
    /// Owner or twin key the order came from, empty when none.
    pub owner: String,
    /// Workload names the entry concerns.
    pub workloads: Vec<String>,
}

/// A version-2 entry's claim on the signature chain: `hash` is the chain
/// over the signatures of the version-2 entries before seq `upto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SigChain {
    pub upto: u64,
    pub hash: Hash,
}

/// One step of the signature chain: `blake3(0x53 || chain || signature)`.
pub fn chain_signature(chain: &Hash, signature: &[u8; SIGNATURE_LEN]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[SIG_CHAIN_TAG]);
    h.update(chain);
    h.update(signature);
    *h.finalize().as_bytes()
}

/// A decoded entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub time_ms: u64,
    pub kind: Kind,
    pub prev: Hash,
    /// Version 2's signature chain; `None` is a version-1 entry.
    pub sig_chain: Option<SigChain>,
    pub meta: EntryMeta,
    pub payload: Vec<u8>,
    pub signature: [u8; SIGNATURE_LEN],
}

/// Why bytes are not an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is {0} bytes, shorter than any entry")]
    TooShort(usize),
    #[error("tag byte is {0:#04x}, not an entry (0x45)")]
    BadTag(u8),
    #[error("encoding version {0} is not supported (this code reads 1 and 2)")]
    BadVersion(u8),
    #[error("kind code {0} is unknown")]
    BadKind(u8),
    #[error("{field} runs past the end of the record")]
    Truncated { field: &'static str },
    #[error("{field} is {len} long, more than the limit {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} is not UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("{0} bytes follow the payload")]
    TrailingBytes(usize),
}

/// Why an entry cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{field} is {len} long, more than the limit {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
}

/// Checks that meta and payload fit the encoding's limits.
pub fn check_limits(meta: &EntryMeta, payload: &[u8]) -> Result<(), EncodeError> {
    let too_long = |field, len, max| Err(EncodeError::TooLong { field, len, max });
    if payload.len() > MAX_PAYLOAD {
        return too_long("payload", payload.len(), MAX_PAYLOAD);
    }
    for (field, s) in [("deployment", &meta.deployment), ("owner", &meta.owner)] {
        if s.len() > MAX_META_STRING {
            return too_long(field, s.len(), MAX_META_STRING);
        }
    }
    if meta.workloads.len() > MAX_WORKLOADS {
        return too_long("workloads", meta.workloads.len(), MAX_WORKLOADS);
    }
    for w in &meta.workloads {
        if w.len() > MAX_META_STRING {
            return too_long("workload name", w.len(), MAX_META_STRING);
        }
    }
    Ok(())
}

/// Encodes an entry's body (everything the signature covers): version 2
/// with a signature chain, version 1 without. Limits must have been
/// checked with [`check_limits`].
#[allow(clippy::too_many_arguments)]
pub fn encode_body(
    seq: u64,
    time_ms: u64,
    kind: Kind,
    prev: &Hash,
    sig_chain: Option<&SigChain>,
    meta: &EntryMeta,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    out.reserve(FIXED_HEADER + SIG_CHAIN_LEN + 32 + payload.len() + SIGNATURE_LEN);
    out.push(ENTRY_TAG);
    out.push(if sig_chain.is_some() { 2 } else { 1 });
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&time_ms.to_be_bytes());
    out.push(kind.code());
    out.extend_from_slice(prev);
    if let Some(c) = sig_chain {
        out.extend_from_slice(&c.upto.to_be_bytes());
        out.extend_from_slice(&c.hash);
    }
    put_str(out, &meta.deployment);
    out.extend_from_slice(&meta.version.to_be_bytes());
    put_str(out, &meta.owner);
    out.extend_from_slice(&(meta.workloads.len() as u16).to_be_bytes());
    for w in &meta.workloads {
        put_str(out, w);
    }
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The entry hash: blake3 over the body.
pub fn body_hash(body: &[u8]) -> Hash {
    *blake3::hash(body).as_bytes()
}

/// A record split into body and signature, without decoding the body.
pub fn split_record(record: &[u8]) -> Result<(&[u8], &[u8; SIGNATURE_LEN]), DecodeError> {
    if record.len() < FIXED_HEADER + SIGNATURE_LEN {
        return Err(DecodeError::TooShort(record.len()));
    }
    let (body, sig) = record.split_at(record.len() - SIGNATURE_LEN);
    let sig: &[u8; SIGNATURE_LEN] = sig
        .try_into()
        .map_err(|_| DecodeError::TooShort(record.len()))?;
    Ok((body, sig))
}

/// A cursor over a body that fails instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(DecodeError::Truncated { field })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4, field)?);
        Ok(u32::from_be_bytes(a))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, field)?);
        Ok(u64::from_be_bytes(a))
    }

    fn str(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let len = self.u16(field)? as usize;
        if len > MAX_META_STRING {
            return Err(DecodeError::TooLong {
                field,
                len,
                max: MAX_META_STRING,
            });
        }
        let b = self.take(len, field)?;
        std::str::from_utf8(b).map_err(|_| DecodeError::NotUtf8 { field })
    }
}

/// The fixed header of a body: what verify and the indexes need without
/// copying the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub seq: u64,
    pub time_ms: u64,
    pub kind: Kind,
    pub prev: Hash,
    pub sig_chain: Option<SigChain>,
}

impl Header {
    /// Bytes of the fixed part, where the variable fields start.
    fn len(&self) -> usize {
        FIXED_HEADER
            + if self.sig_chain.is_some() {
                SIG_CHAIN_LEN
            } else {
                0
            }
    }
}

/// Decodes only the fixed header of a body.
pub fn decode_header(body: &[u8]) -> Result<Header, DecodeError> {
    let mut r = Reader {
        bytes: body,
        pos: 0,
    };
    let tag = r.u8("tag")?;
    if tag != ENTRY_TAG {
        return Err(DecodeError::BadTag(tag));
    }
    let version = r.u8("version")?;
    if version != 1 && version != 2 {
        return Err(DecodeError::BadVersion(version));
    }
    let seq = r.u64("seq")?;
    let time_ms = r.u64("time")?;
    let code = r.u8("kind")?;
    let kind = Kind::from_code(code).ok_or(DecodeError::BadKind(code))?;
    let mut prev = [0u8; 32];
    prev.copy_from_slice(r.take(32, "prev")?);
    let sig_chain = if version == 2 {
        let upto = r.u64("sigs upto")?;
        let mut hash = [0u8; 32];
        hash.copy_from_slice(r.take(32, "sigs hash")?);
        Some(SigChain { upto, hash })
    } else {
        None
    };
    Ok(Header {
        seq,
        time_ms,
        kind,
        prev,
        sig_chain,
    })
}

/// The parts of a body, borrowed.
struct Parts<'a> {
    header: Header,
    deployment: &'a str,
    version: u64,
    owner: &'a str,
    payload: &'a [u8],
}

/// Parses a body strictly (every byte must be accounted for), handing
/// each workload name to `workload`.
fn parse_body<'a>(
    body: &'a [u8],
    mut workload: impl FnMut(&'a str),
) -> Result<Parts<'a>, DecodeError> {
    let header = decode_header(body)?;
    let mut r = Reader {
        bytes: body,
        pos: header.len(),
    };
    let deployment = r.str("deployment")?;
    let version = r.u64("version")?;
    let owner = r.str("owner")?;
    let count = r.u16("workload count")? as usize;
    if count > MAX_WORKLOADS {
        return Err(DecodeError::TooLong {
            field: "workloads",
            len: count,
            max: MAX_WORKLOADS,
        });
    }
    for _ in 0..count {
        workload(r.str("workload name")?);
    }
    let len = r.u32("payload length")? as usize;
    if len > MAX_PAYLOAD {
        return Err(DecodeError::TooLong {
            field: "payload",
            len,
            max: MAX_PAYLOAD,
        });
    }
    let payload = r.take(len, "payload")?;
    if r.pos != body.len() {
        return Err(DecodeError::TrailingBytes(body.len() - r.pos));
    }
    Ok(Parts {
        header,
        deployment,
        version,
        owner,
        payload,
    })
}

/// Decodes a body completely; strict: every byte must be accounted for.
pub fn decode_body(body: &[u8]) -> Result<(Header, EntryMeta, &[u8]), DecodeError> {
    let mut workloads = Vec::new();
    let p = parse_body(body, |w| workloads.push(w.to_owned()))?;
    let meta = EntryMeta {
        deployment: p.deployment.to_owned(),
        version: p.version,
        owner: p.owner.to_owned(),
        workloads,
    };
    Ok((p.header, meta, p.payload))
}

/// Checks a body as strictly as [`decode_body`] without copying anything
/// out of it: what the audit needs.
pub fn check_body(body: &[u8]) -> Result<Header, DecodeError> {
    parse_body(body, |_| {}).map(|p| p.header)
}

impl Entry {
    /// Decodes a stored record (`body || signature`).
    pub fn decode(record: &[u8]) -> Result<Entry, DecodeError> {
        let (body, sig) = split_record(record)?;
        let (h, meta, payload) = decode_body(body)?;
        Ok(Entry {
            seq: h.seq,
            time_ms: h.time_ms,
            kind: h.kind,
            prev: h.prev,
            sig_chain: h.sig_chain,
            meta,
            payload: payload.to_vec(),
            signature: *sig,
        })
    }

    /// The record's bytes, as stored and exported.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        check_limits(&self.meta, &self.payload)?;
        let mut out = Vec::new();
        encode_body(
            self.seq,
            self.time_ms,
            self.kind,
            &self.prev,
            self.sig_chain.as_ref(),
            &self.meta,
            &self.payload,
            &mut out,
        );
        out.extend_from_slice(&self.signature);
        Ok(out)
    }

    /// The entry hash (blake3 of the body), what the signature signs and
    /// the next entry's `prev` names.
    pub fn hash(&self) -> Result<Hash, EncodeError> {
        let record = self.encode()?;
        Ok(body_hash(&record[..record.len() - SIGNATURE_LEN]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry {
            seq: 7,
            time_ms: 1_700_000_000_000,
            kind: Kind::Deploy,
            prev: [9; 32],
            sig_chain: None,
            meta: EntryMeta {
                deployment: "dep-1".into(),
                version: 3,
                owner: "twin-42".into(),
                workloads: vec!["web".into(), "db".into()],
            },
            payload: br#"{"signed":"doc"}"#.to_vec(),
            signature: [5; 64],
        }
    }

    #[test]
    fn round_trips() {
        let e = sample();
        let bytes = e.encode().unwrap();
        assert_eq!(Entry::decode(&bytes).unwrap(), e);
    }

    #[test]
    fn layout_matches_the_documented_offsets() {
        let e = sample();
        let b = e.encode().unwrap();
        assert_eq!(b[0], 0x45);
        assert_eq!(b[1], 1);
        assert_eq!(&b[2..10], &7u64.to_be_bytes());
        assert_eq!(&b[10..18], &1_700_000_000_000u64.to_be_bytes());
        assert_eq!(b[18], 2);
        assert_eq!(&b[19..51], &[9; 32]);
        assert_eq!(&b[51..53], &5u16.to_be_bytes());
        assert_eq!(&b[53..58], b"dep-1");
        assert_eq!(&b[b.len() - 64..], &[5; 64]);
    }

    #[test]
    fn version_2_carries_the_signature_chain_after_prev() {
        let mut e = sample();
        e.sig_chain = Some(SigChain {
            upto: 5,
            hash: [3; 32],
        });
        let b = e.encode().unwrap();
        assert_eq!(b[1], 2);
        assert_eq!(&b[51..59], &5u64.to_be_bytes());
        assert_eq!(&b[59..91], &[3; 32]);
        assert_eq!(&b[91..93], &5u16.to_be_bytes());
        assert_eq!(Entry::decode(&b).unwrap(), e);
        for n in 0..b.len() {
            assert!(Entry::decode(&b[..n]).is_err(), "length {n}");
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().encode().unwrap();
        for n in 0..bytes.len() {
            assert!(Entry::decode(&bytes[..n]).is_err(), "length {n}");
        }
    }

    #[test]
    fn unknown_kind_and_trailing_bytes_are_refused() {
        let mut b = sample().encode().unwrap();
        b[18] = 99;
        assert_eq!(Entry::decode(&b), Err(DecodeError::BadKind(99)));
        let mut e = sample().encode().unwrap();
        let sig_at = e.len() - 64;
        e.insert(sig_at, 0);
        assert_eq!(Entry::decode(&e), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn oversized_meta_is_refused_before_encoding() {
        let mut e = sample();
        e.meta.owner = "x".repeat(MAX_META_STRING + 1);
        assert!(matches!(
            e.encode(),
            Err(EncodeError::TooLong { field: "owner", .. })
        ));
    }
}
