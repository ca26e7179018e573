//! Reed-Solomon coding of one stripe: a byte string cut into k data shards of
//! equal length plus m parity shards, and back from any k of them.

use reed_solomon_erasure::galois_8::ReedSolomon;

use crate::error::{Error, Result};

/// Most shards one stripe may have: GF(2^8) allows 256, and the metadata's
/// shard index is a u8.
pub const MAX_SHARDS: usize = 255;

/// A k+m code, built once per object and reused for every stripe (the codec
/// caches its inverted matrices across reconstructions).
pub struct Coder {
    data: usize,
    parity: usize,
    codec: ReedSolomon,
}

impl std::fmt::Debug for Coder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Coder({}+{})", self.data, self.parity)
    }
}

impl Coder {
    pub fn new(data: usize, parity: usize) -> Result<Self> {
        let invalid = |reason: &str| Error::Coding {
            data,
            parity,
            reason: reason.to_string(),
        };
        if data == 0 {
            return Err(invalid("at least one data shard is needed"));
        }
        if parity == 0 {
            return Err(invalid("at least one parity shard is needed"));
        }
        if data + parity > MAX_SHARDS {
            return Err(invalid("more than 255 shards in total"));
        }
        let codec = ReedSolomon::new(data, parity).map_err(|e| invalid(&format!("{e:?}")))?;
        Ok(Self {
            data,
            parity,
            codec,
        })
    }

    pub fn data_shards(&self) -> usize {
        self.data
    }

    pub fn parity_shards(&self) -> usize {
        self.parity
    }

    pub fn total_shards(&self) -> usize {
        self.data + self.parity
    }

    /// Shard length for a payload of `len` bytes: the payload is zero-padded
    /// to a multiple of k. Never 0, so an empty payload still has shards.
    pub fn shard_len(&self, len: usize) -> usize {
        len.div_ceil(self.data).max(1)
    }

    /// Cuts `payload` into k data shards and computes the m parity shards.
    pub fn encode(&self, stripe: u64, payload: &[u8]) -> Result<Vec<Vec<u8>>> {
        let shard_len = self.shard_len(payload.len());
        let mut shards: Vec<Vec<u8>> = (0..self.total_shards())
            .map(|i| {
                let start = (i * shard_len).min(payload.len());
                let end = ((i + 1) * shard_len).min(payload.len());
                let mut shard = Vec::with_capacity(shard_len);
                if i < self.data {
                    shard.extend_from_slice(&payload[start..end]);
                }
                shard.resize(shard_len, 0);
                shard
            })
            .collect();
        self.codec.encode(&mut shards).map_err(|e| Error::Codec {
            stripe,
            reason: format!("{e:?}"),
        })?;
        Ok(shards)
    }

    /// Fills in every missing shard (data and parity) from any k present ones,
    /// all of equal length.
    pub fn reconstruct(&self, stripe: u64, shards: &mut [Option<Vec<u8>>]) -> Result<()> {
        self.codec.reconstruct(shards).map_err(|e| Error::Codec {
            stripe,
            reason: format!("{e:?}"),
        })
    }

    /// Like `reconstruct` but only the data shards are rebuilt: what a read needs.
    pub fn reconstruct_data(&self, stripe: u64, shards: &mut [Option<Vec<u8>>]) -> Result<()> {
        self.codec
            .reconstruct_data(shards)
            .map_err(|e| Error::Codec {
                stripe,
                reason: format!("{e:?}"),
            })
    }

    /// Joins the data shards back into the payload of `len` bytes.
    pub fn join(&self, stripe: u64, shards: &[Option<Vec<u8>>], len: usize) -> Result<Vec<u8>> {
        let mut payload = Vec::with_capacity(len);
        for shard in shards.iter().take(self.data) {
            let shard = shard.as_ref().ok_or_else(|| Error::Codec {
                stripe,
                reason: "a data shard is still missing after reconstruction".into(),
            })?;
            let want = (len - payload.len()).min(shard.len());
            payload.extend_from_slice(&shard[..want]);
        }
        if payload.len() != len {
            return Err(Error::Codec {
                stripe,
                reason: format!("data shards hold {} bytes, expected {len}", payload.len()),
            });
        }
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_k_shards_give_the_payload_back() {
        let coder = Coder::new(4, 2).unwrap();
        let payload: Vec<u8> = (0..1001u32).map(|i| (i * 7 + 3) as u8).collect();
        let shards = coder.encode(0, &payload).unwrap();
        assert_eq!(shards.len(), 6);
        for a in 0..6 {
            for b in a + 1..6 {
                let mut partial: Vec<Option<Vec<u8>>> = shards.iter().cloned().map(Some).collect();
                partial[a] = None;
                partial[b] = None;
                coder.reconstruct(0, &mut partial).unwrap();
                assert_eq!(coder.join(0, &partial, payload.len()).unwrap(), payload);
                assert_eq!(partial[a].as_ref().unwrap(), &shards[a]);
            }
        }
    }

    #[test]
    fn too_few_shards_is_an_error() {
        let coder = Coder::new(4, 2).unwrap();
        let shards = coder.encode(3, b"hello world").unwrap();
        let mut partial: Vec<Option<Vec<u8>>> = shards.into_iter().map(Some).collect();
        partial[0] = None;
        partial[1] = None;
        partial[5] = None;
        let err = coder.reconstruct(3, &mut partial).unwrap_err();
        assert!(err.to_string().contains("stripe 3"), "{err}");
    }

    #[test]
    fn bad_codings_are_refused() {
        assert!(Coder::new(0, 2).is_err());
        assert!(Coder::new(4, 0).is_err());
        assert!(Coder::new(200, 56).is_err());
        let empty = Coder::new(2, 1).unwrap().encode(0, b"").unwrap();
        assert_eq!(empty.len(), 3);
        assert_eq!(empty[0].len(), 1);
    }
}
