//! Index keys. Every index is an LMDB database whose keys end in the entry
//! seq (values empty), so one entry can appear under many keys and a scan
//! pages by seq. All are derived from entries and can be rebuilt.

use crate::entry::Kind;

/// `u16 length || bytes`: a string key part that cannot run into the next.
pub fn str_prefix(s: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + s.len() + 16);
    k.extend_from_slice(&(s.len() as u16).to_be_bytes());
    k.extend_from_slice(s.as_bytes());
    k
}

/// `deploy` index: `str(deployment) || version || seq`.
pub fn deploy_key(deployment: &str, version: u64, seq: u64) -> Vec<u8> {
    let mut k = str_prefix(deployment);
    k.extend_from_slice(&version.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `owner` and `workload` indexes: `str(name) || seq`.
pub fn name_key(name: &str, seq: u64) -> Vec<u8> {
    let mut k = str_prefix(name);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `kind` index: `kind code || seq`.
pub fn kind_key(kind: Kind, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = kind.code();
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// `time` index: `time || seq`.
pub fn time_key(time_ms: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&time_ms.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// `live` value: `version || seq` of a deployment's latest live entry.
pub fn live_value(version: u64, seq: u64) -> [u8; 16] {
    time_key(version, seq)
}

/// The seq that ends every index key.
pub fn seq_suffix(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// Splits a `live` value into version and seq.
pub fn split_live(v: &[u8]) -> Option<(u64, u64)> {
    if v.len() != 16 {
        return None;
    }
    let version = u64::from_be_bytes(v[..8].try_into().ok()?);
    let seq = u64::from_be_bytes(v[8..].try_into().ok()?);
    Some((version, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_name_then_version_then_seq() {
        assert!(deploy_key("a", 2, 0) < deploy_key("a", 10, 0));
        assert!(deploy_key("a", 2, 5) < deploy_key("a", 2, 6));
        // "a" and "ab" never interleave: the length comes first.
        assert!(!deploy_key("ab", 0, 0).starts_with(&str_prefix("a")));
        assert_eq!(seq_suffix(&name_key("x", 77)), Some(77));
        assert_eq!(split_live(&live_value(3, 9)), Some((3, 9)));
    }
}
