//! The record format of the data files.
//!
//! ```text
//! magic u8 (0xA7) | flags u8 | key_len u16 | value_len u32 | time u32 | blake3 [32]
//! key | value
//! ```
//! Integers are little-endian; `time` is unix seconds; the blake3 hash covers
//! the first 12 header bytes, the key and the value, so a torn or flipped
//! record is never taken for a good one. A tombstone (flag 1) has no value.

pub const MAGIC: u8 = 0xA7;
pub const HEADER: usize = 44;
pub const FLAG_TOMBSTONE: u8 = 1;
/// 0-db's key limit.
pub const MAX_KEY: usize = 255;
/// 0-db's value limit.
pub const MAX_VALUE: usize = 8 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub flags: u8,
    pub key_len: u16,
    pub value_len: u32,
    pub time: u32,
    pub hash: [u8; 32],
}

impl Header {
    pub fn record_len(&self) -> u64 {
        HEADER as u64 + u64::from(self.key_len) + u64::from(self.value_len)
    }

    pub fn is_tombstone(&self) -> bool {
        self.flags & FLAG_TOMBSTONE != 0
    }

    /// Decodes a header; None when the bytes cannot be a header (wrong magic,
    /// unknown flags, sizes over the limits).
    pub fn decode(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER || b[0] != MAGIC || b[1] & !FLAG_TOMBSTONE != 0 {
            return None;
        }
        let key_len = u16::from_le_bytes([b[2], b[3]]);
        let value_len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let time = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if key_len as usize > MAX_KEY || value_len as usize > MAX_VALUE {
            return None;
        }
        if b[1] & FLAG_TOMBSTONE != 0 && value_len != 0 {
            return None;
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&b[12..44]);
        Some(Header {
            flags: b[1],
            key_len,
            value_len,
            time,
            hash,
        })
    }
}

fn hash_of(head: &[u8], key: &[u8], value: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(head);
    h.update(key);
    h.update(value);
    *h.finalize().as_bytes()
}

/// Appends one record to `out`; the caller has checked the sizes.
pub fn encode(out: &mut Vec<u8>, flags: u8, key: &[u8], value: &[u8], time: u32) {
    let mut head = [0u8; 12];
    head[0] = MAGIC;
    head[1] = flags;
    head[2..4].copy_from_slice(&(key.len() as u16).to_le_bytes());
    head[4..8].copy_from_slice(&(value.len() as u32).to_le_bytes());
    head[8..12].copy_from_slice(&time.to_le_bytes());
    let hash = hash_of(&head, key, value);
    out.reserve(HEADER + key.len() + value.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(&hash);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// Checks a whole record (header, key, value) against its hash.
pub fn verify(record: &[u8]) -> Option<Header> {
    let h = Header::decode(record)?;
    if record.len() as u64 != h.record_len() {
        return None;
    }
    let key_end = HEADER + h.key_len as usize;
    (hash_of(&record[..12], &record[HEADER..key_end], &record[key_end..]) == h.hash).then_some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_any_flip_is_caught() {
        let mut rec = Vec::new();
        encode(&mut rec, 0, b"key", b"value", 7);
        let h = verify(&rec).unwrap();
        assert_eq!((h.key_len, h.value_len, h.time), (3, 5, 7));
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x10;
            assert!(verify(&bad).is_none(), "flip at {i}");
        }
        assert!(verify(&rec[..rec.len() - 1]).is_none());
    }
}
