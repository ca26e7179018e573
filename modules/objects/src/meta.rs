//! What an object is made of, and how that description is stored: the
//! metadata (coding, stripes, shard locations and hashes, nonce, size and
//! hash of the original) is JSON sealed with the owner's metadata key inside
//! a small binary envelope, one copy on every backend. Every copy carries a
//! generation, raised by each rebuild, so the newest copy wins.
//!
//! Also the shard framing: each stored shard starts with a header naming the
//! object, stripe and index and carrying the blake3 of its payload, so a shard
//! can be checked on its own and a shard under the wrong key is noticed.

use serde::{Deserialize, Serialize};

use crate::backend::BackendLocation;
use crate::coding::MAX_SHARDS;
use crate::crypto::{self, OwnerKey, NONCE_LEN, OBJECT_NONCE_LEN, TAG_LEN};
use crate::error::{Error, Result};

pub const ID_LEN: usize = 16;
/// Largest plaintext stripe: bounds the memory a stripe takes and keeps each
/// shard under 0-db's 8 MiB value limit for k >= 8 (for smaller k pick a
/// smaller stripe; `StoreOptions::validate` enforces the shard limit).
pub const MAX_STRIPE_SIZE: u64 = 64 << 20;
/// 0-db refuses values over 8 MiB.
pub const MAX_VALUE_SIZE: u64 = 8 << 20;
const ENVELOPE_MAGIC: &[u8; 4] = b"ZNOM";
const ENVELOPE_VERSION: u8 = 1;
const ENVELOPE_HEADER_LEN: usize = 4 + 1 + ID_LEN + 8 + NONCE_LEN;
const META_VERSION: u32 = 1;
pub const SHARD_MAGIC: &[u8; 4] = b"ZNS1";
pub const SHARD_HEADER_LEN: usize = 4 + 4 + 8 + ID_LEN + 32;

/// An object's name: 16 random bytes, shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectId(pub [u8; ID_LEN]);

impl ObjectId {
    pub fn random() -> Result<Self> {
        let mut id = [0u8; ID_LEN];
        crypto::random(&mut id)?;
        Ok(Self(id))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let mut id = [0u8; ID_LEN];
        hex::decode_to_slice(text.trim(), &mut id)
            .map_err(|_| Error::ObjectId(text.to_string()))?;
        Ok(Self(id))
    }

    pub fn metadata_key(&self) -> Vec<u8> {
        format!("zn:m:{self}").into_bytes()
    }

    pub fn shard_key(&self, stripe: u64, index: usize) -> Vec<u8> {
        format!("zn:o:{self}:{stripe}:{index}").into_bytes()
    }
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

/// A blake3 hash, hex in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Hash(pub [u8; 32]);

impl Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&text, &mut out)
            .map_err(|_| serde::de::Error::custom("hash must be 64 hex digits"))?;
        Ok(Self(out))
    }
}

impl From<blake3::Hash> for Hash {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardMeta {
    /// Index into `ObjectMeta::backends`.
    pub backend: u32,
    /// blake3 of the shard's payload (after the header).
    pub hash: Hash,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeMeta {
    /// Plaintext bytes of the original in this stripe.
    pub plain_len: u64,
    /// Bytes after compression and encryption (tag included): the coded payload.
    pub sealed_len: u64,
    /// Payload bytes of each shard: sealed_len / k rounded up.
    pub shard_len: u64,
    /// k data then m parity shards.
    pub shards: Vec<ShardMeta>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectMeta {
    pub version: u32,
    pub id: String,
    pub generation: u64,
    pub data_shards: u32,
    pub parity_shards: u32,
    pub compression: String,
    pub cipher: String,
    /// Random per object; each stripe's nonce is this then the stripe index.
    pub nonce: String,
    pub stripe_size: u64,
    pub size: u64,
    pub hash: Hash,
    pub backends: Vec<BackendLocation>,
    pub stripes: Vec<StripeMeta>,
}

pub const COMPRESSION: &str = "zstd";
pub const CIPHER: &str = "xchacha20poly1305";

impl ObjectMeta {
    pub fn object_id(&self) -> Result<ObjectId> {
        ObjectId::parse(&self.id)
            .map_err(|_| Error::MetadataInvalid(format!("object id {:?}", self.id)))
    }

    pub fn object_nonce(&self) -> Result<[u8; OBJECT_NONCE_LEN]> {
        let mut nonce = [0u8; OBJECT_NONCE_LEN];
        hex::decode_to_slice(&self.nonce, &mut nonce)
            .map_err(|_| Error::MetadataInvalid("nonce must be 32 hex digits".into()))?;
        Ok(nonce)
    }

    pub fn k(&self) -> usize {
        self.data_shards as usize
    }

    pub fn n(&self) -> usize {
        (self.data_shards + self.parity_shards) as usize
    }

    /// Checks every invariant the reader relies on, so that no metadata, however
    /// made, can make it panic, overflow or allocate without bound.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::MetadataInvalid(reason));
        if self.version != META_VERSION {
            return bad(format!(
                "version {} (this build reads {META_VERSION})",
                self.version
            ));
        }
        self.object_id()?;
        self.object_nonce()?;
        if self.compression != COMPRESSION || self.cipher != CIPHER {
            return bad(format!(
                "compression {:?} / cipher {:?} not supported",
                self.compression, self.cipher
            ));
        }
        let (k, m) = (self.data_shards as u64, self.parity_shards as u64);
        if k == 0 || m == 0 || k + m > MAX_SHARDS as u64 {
            return bad(format!("coding {k}+{m}"));
        }
        if self.stripe_size == 0 || self.stripe_size > MAX_STRIPE_SIZE {
            return bad(format!("stripe size {}", self.stripe_size));
        }
        if self.backends.len() < self.n() || self.backends.len() > 4096 {
            return bad(format!("{} backends for {k}+{m}", self.backends.len()));
        }
        // Two names for one backend would put two shards of a stripe on it.
        let distinct: std::collections::HashSet<&BackendLocation> = self.backends.iter().collect();
        if distinct.len() != self.backends.len() {
            return bad("a backend is listed twice".into());
        }
        let want_stripes = self.size.div_ceil(self.stripe_size).max(1);
        if self.stripes.len() as u64 != want_stripes {
            return bad(format!(
                "{} stripes for {} bytes in stripes of {}",
                self.stripes.len(),
                self.size,
                self.stripe_size
            ));
        }
        let mut total: u64 = 0;
        let mut used = vec![false; self.backends.len()];
        for (index, stripe) in self.stripes.iter().enumerate() {
            let last = index + 1 == self.stripes.len();
            let expect_plain = if last {
                self.size - total
            } else {
                self.stripe_size
            };
            if stripe.plain_len != expect_plain {
                return bad(format!(
                    "stripe {index}: {} plaintext bytes, expected {expect_plain}",
                    stripe.plain_len
                ));
            }
            total += stripe.plain_len;
            let max_sealed = zstd_bound(stripe.plain_len) + TAG_LEN as u64;
            if stripe.sealed_len < TAG_LEN as u64 || stripe.sealed_len > max_sealed {
                return bad(format!(
                    "stripe {index}: sealed length {}",
                    stripe.sealed_len
                ));
            }
            if stripe.shard_len != stripe.sealed_len.div_ceil(k).max(1) {
                return bad(format!("stripe {index}: shard length {}", stripe.shard_len));
            }
            if stripe.shards.len() != self.n() {
                return bad(format!(
                    "stripe {index}: {} shards, expected {}",
                    stripe.shards.len(),
                    self.n()
                ));
            }
            used.iter_mut().for_each(|u| *u = false);
            for (shard_index, shard) in stripe.shards.iter().enumerate() {
                let Some(slot) = used.get_mut(shard.backend as usize) else {
                    return bad(format!(
                        "stripe {index} shard {shard_index}: backend {} out of range",
                        shard.backend
                    ));
                };
                if *slot {
                    return bad(format!(
                        "stripe {index}: two shards on backend {}",
                        shard.backend
                    ));
                }
                *slot = true;
            }
        }
        if total != self.size {
            return bad(format!(
                "stripes hold {total} bytes, size says {}",
                self.size
            ));
        }
        Ok(())
    }

    /// JSON bytes to validated metadata.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let meta: Self = serde_json::from_slice(bytes)
            .map_err(|e| Error::MetadataInvalid(format!("not metadata JSON: {e}")))?;
        meta.validate()?;
        Ok(meta)
    }

    /// Seals the metadata into an envelope with a fresh nonce.
    pub fn seal(&self, key: &OwnerKey) -> Result<Vec<u8>> {
        let id = self.object_id()?;
        let json = serde_json::to_vec(self)
            .map_err(|e| Error::MetadataInvalid(format!("cannot encode: {e}")))?;
        let mut nonce = [0u8; NONCE_LEN];
        crypto::random(&mut nonce)?;
        let mut envelope = Vec::with_capacity(ENVELOPE_HEADER_LEN + json.len() + TAG_LEN);
        envelope.extend_from_slice(ENVELOPE_MAGIC);
        envelope.push(ENVELOPE_VERSION);
        envelope.extend_from_slice(&id.0);
        envelope.extend_from_slice(&self.generation.to_le_bytes());
        envelope.extend_from_slice(&nonce);
        let sealed = key.seal_metadata(&nonce, &envelope, &json)?;
        envelope.extend_from_slice(&sealed);
        if envelope.len() as u64 > MAX_VALUE_SIZE {
            return Err(Error::MetadataInvalid(format!(
                "metadata of {} bytes exceeds the 8 MiB value limit: use larger stripes",
                envelope.len()
            )));
        }
        Ok(envelope)
    }

    /// Opens an envelope read from a backend: checks the header, the tag (the
    /// header is authenticated too) and the contents, and that it is the
    /// object asked for.
    pub fn open(key: &OwnerKey, expected: &ObjectId, envelope: &[u8]) -> Result<Self> {
        if envelope.len() < ENVELOPE_HEADER_LEN + TAG_LEN || &envelope[..4] != ENVELOPE_MAGIC {
            return Err(Error::MetadataInvalid("not a metadata envelope".into()));
        }
        if envelope[4] != ENVELOPE_VERSION {
            return Err(Error::MetadataInvalid(format!(
                "envelope version {}",
                envelope[4]
            )));
        }
        let (header, sealed) = envelope.split_at(ENVELOPE_HEADER_LEN);
        if header[5..5 + ID_LEN] != expected.0 {
            return Err(Error::MetadataInvalid(
                "envelope is for another object".into(),
            ));
        }
        let mut generation = [0u8; 8];
        generation.copy_from_slice(&header[5 + ID_LEN..5 + ID_LEN + 8]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&header[5 + ID_LEN + 8..]);
        let json = key
            .open_metadata(&nonce, header, sealed)
            .ok_or(Error::MetadataAuthentication)?;
        let meta = Self::from_json(&json)?;
        if meta.object_id()? != *expected || meta.generation != u64::from_le_bytes(generation) {
            return Err(Error::MetadataInvalid(
                "envelope header and contents disagree".into(),
            ));
        }
        Ok(meta)
    }
}

/// zstd's worst case for `len` input bytes (as ZSTD_COMPRESSBOUND).
pub fn zstd_bound(len: u64) -> u64 {
    let small = if len < (128 << 10) {
        ((128 << 10) - len) >> 11
    } else {
        0
    };
    len + (len >> 8) + small
}

/// The associated data of a stripe's encryption: binds the ciphertext to its
/// object, position and length, so stripes cannot be swapped or cut.
pub fn stripe_aad(id: &ObjectId, stripe: u64, plain_len: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(14 + ID_LEN + 16);
    aad.extend_from_slice(b"zn-stripe-v1");
    aad.extend_from_slice(&id.0);
    aad.extend_from_slice(&stripe.to_le_bytes());
    aad.extend_from_slice(&plain_len.to_le_bytes());
    aad
}

/// Frames a shard payload for storage.
pub fn frame_shard(
    id: &ObjectId,
    stripe: u64,
    index: usize,
    k: usize,
    m: usize,
    payload: &[u8],
) -> (Vec<u8>, Hash) {
    let hash = Hash::from(blake3::hash(payload));
    let mut value = Vec::with_capacity(SHARD_HEADER_LEN + payload.len());
    value.extend_from_slice(SHARD_MAGIC);
    value.push(k as u8);
    value.push(m as u8);
    value.push(index as u8);
    value.push(0);
    value.extend_from_slice(&stripe.to_le_bytes());
    value.extend_from_slice(&id.0);
    value.extend_from_slice(&hash.0);
    value.extend_from_slice(payload);
    (value, hash)
}

/// Why a stored shard is not good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardFault {
    Missing,
    Corrupt(String),
    Unreachable(String),
}

impl std::fmt::Display for ShardFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => f.write_str("missing"),
            Self::Corrupt(why) => write!(f, "corrupt ({why})"),
            Self::Unreachable(why) => write!(f, "unreachable ({why})"),
        }
    }
}

/// Checks a stored shard value against what the metadata says and returns
/// its payload.
pub fn verify_shard(
    value: Vec<u8>,
    id: &ObjectId,
    stripe: u64,
    index: usize,
    meta: &ObjectMeta,
) -> std::result::Result<Vec<u8>, ShardFault> {
    let corrupt = |why: &str| Err(ShardFault::Corrupt(why.to_string()));
    let Some(stripe_meta) = meta.stripes.get(stripe as usize) else {
        return corrupt("stripe out of range");
    };
    let Some(shard_meta) = stripe_meta.shards.get(index) else {
        return corrupt("index out of range");
    };
    if value.len() as u64 != SHARD_HEADER_LEN as u64 + stripe_meta.shard_len {
        return corrupt("wrong length");
    }
    let (header, payload) = value.split_at(SHARD_HEADER_LEN);
    if &header[..4] != SHARD_MAGIC
        || header[4] as u32 != meta.data_shards
        || header[5] as u32 != meta.parity_shards
        || header[6] as usize != index
        || header[8..16] != stripe.to_le_bytes()
        || header[16..16 + ID_LEN] != id.0
    {
        return corrupt("header does not name this shard");
    }
    if header[16 + ID_LEN..] != shard_meta.hash.0 {
        return corrupt("header hash differs from metadata");
    }
    if blake3::hash(payload).as_bytes() != &shard_meta.hash.0 {
        return corrupt("blake3 mismatch");
    }
    let mut value = value;
    value.drain(..SHARD_HEADER_LEN);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(id: ObjectId) -> ObjectMeta {
        ObjectMeta {
            version: 1,
            id: id.to_string(),
            generation: 3,
            data_shards: 2,
            parity_shards: 1,
            compression: COMPRESSION.into(),
            cipher: CIPHER.into(),
            nonce: "00".repeat(16),
            stripe_size: 100,
            size: 150,
            hash: Hash([9; 32]),
            backends: (0..3)
                .map(|i| BackendLocation {
                    address: format!("127.0.0.1:{}", 7000 + i),
                    namespace: None,
                })
                .collect(),
            stripes: vec![
                StripeMeta {
                    plain_len: 100,
                    sealed_len: 40,
                    shard_len: 20,
                    shards: (0..3)
                        .map(|b| ShardMeta {
                            backend: b,
                            hash: Hash([b as u8; 32]),
                        })
                        .collect(),
                },
                StripeMeta {
                    plain_len: 50,
                    sealed_len: 41,
                    shard_len: 21,
                    shards: (0..3)
                        .map(|b| ShardMeta {
                            backend: 2 - b,
                            hash: Hash([b as u8; 32]),
                        })
                        .collect(),
                },
            ],
        }
    }

    #[test]
    fn envelope_round_trips_and_detects_tampering() {
        let key = OwnerKey::from_bytes(&[1; 32]);
        let id = ObjectId([7; ID_LEN]);
        let meta = sample(id);
        meta.validate().unwrap();
        let envelope = meta.seal(&key).unwrap();
        assert_eq!(ObjectMeta::open(&key, &id, &envelope).unwrap(), meta);
        for at in [0, 4, 6, 22, 30, envelope.len() / 2, envelope.len() - 1] {
            let mut bad = envelope.clone();
            bad[at] ^= 1;
            assert!(ObjectMeta::open(&key, &id, &bad).is_err(), "flip at {at}");
        }
        let wrong = OwnerKey::from_bytes(&[2; 32]);
        assert!(matches!(
            ObjectMeta::open(&wrong, &id, &envelope),
            Err(Error::MetadataAuthentication)
        ));
        assert!(ObjectMeta::open(&key, &ObjectId([8; ID_LEN]), &envelope).is_err());
    }

    #[test]
    fn inconsistent_metadata_is_refused() {
        let id = ObjectId([7; ID_LEN]);
        let mut cases: Vec<ObjectMeta> = Vec::new();
        let mut m = sample(id);
        m.size = 151;
        cases.push(m);
        let mut m = sample(id);
        m.stripes[1].shards[0].backend = 9;
        cases.push(m);
        let mut m = sample(id);
        m.stripes[0].shards[1].backend = 0;
        cases.push(m);
        let mut m = sample(id);
        m.stripes[0].shard_len = 1 << 40;
        cases.push(m);
        let mut m = sample(id);
        m.data_shards = 0;
        cases.push(m);
        let mut m = sample(id);
        m.stripe_size = u64::MAX;
        cases.push(m);
        let mut m = sample(id);
        m.stripes.pop();
        cases.push(m);
        let mut m = sample(id);
        m.backends[2] = m.backends[0].clone();
        cases.push(m);
        for case in cases {
            assert!(case.validate().is_err(), "{case:?}");
        }
    }

    #[test]
    fn shards_verify_and_faults_are_named() {
        let id = ObjectId([7; ID_LEN]);
        let mut meta = sample(id);
        let payload = vec![3u8; 20];
        let (value, hash) = frame_shard(&id, 0, 1, 2, 1, &payload);
        meta.stripes[0].shards[1].hash = hash;
        assert_eq!(
            verify_shard(value.clone(), &id, 0, 1, &meta).unwrap(),
            payload
        );
        let mut flipped = value.clone();
        *flipped.last_mut().unwrap() ^= 0x40;
        assert_eq!(
            verify_shard(flipped, &id, 0, 1, &meta),
            Err(ShardFault::Corrupt("blake3 mismatch".into()))
        );
        assert!(verify_shard(value.clone(), &id, 0, 0, &meta).is_err());
        assert!(verify_shard(value[..30].to_vec(), &id, 0, 1, &meta).is_err());
    }

    proptest! {
        #[test]
        fn no_panic_on_any_envelope_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let key = OwnerKey::from_bytes(&[1; 32]);
            let _ = ObjectMeta::open(&key, &ObjectId([7; ID_LEN]), &bytes);
        }

        #[test]
        fn no_panic_on_any_json_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ObjectMeta::from_json(&bytes);
        }

        /// Authenticated but hostile metadata: every number anything at all.
        #[test]
        fn no_panic_on_any_field_values(
            k in any::<u32>(), m in any::<u32>(), stripe_size in any::<u64>(), size in any::<u64>(),
            plain in any::<u64>(), sealed in any::<u64>(), shard_len in any::<u64>(),
            backend in any::<u32>(), generation in any::<u64>(), n_backends in 0usize..8,
        ) {
            let key = OwnerKey::from_bytes(&[1; 32]);
            let id = ObjectId([7; ID_LEN]);
            let mut meta = sample(id);
            meta.data_shards = k;
            meta.parity_shards = m;
            meta.stripe_size = stripe_size;
            meta.size = size;
            meta.generation = generation;
            meta.backends.truncate(n_backends);
            meta.stripes[0].plain_len = plain;
            meta.stripes[0].sealed_len = sealed;
            meta.stripes[0].shard_len = shard_len;
            meta.stripes[1].shards[0].backend = backend;
            let _ = meta.validate();
            if let Ok(envelope) = meta.seal(&key) {
                let _ = ObjectMeta::open(&key, &id, &envelope);
            }
        }

        #[test]
        fn no_panic_on_any_stored_shard(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let id = ObjectId([7; ID_LEN]);
            let meta = sample(id);
            let _ = verify_shard(bytes, &id, 0, 1, &meta);
        }
    }
}
