//! The node id: the node's ed25519 public key, written as lowercase
//! RFC 4648 base32 without padding (52 characters). Anyone holding the id
//! holds the key that checks the node's signatures, so a client can pin a
//! node by its id alone.

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;
use ed25519_dalek::VerifyingKey;

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(VerifyingKey);

impl NodeId {
    pub fn from_key(key: VerifyingKey) -> Self {
        NodeId(key)
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE32_NOPAD.encode(self.0.as_bytes()).to_ascii_lowercase())
    }
}

impl FromStr for NodeId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::BadNodeId {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        if s.len() != 52 {
            return Err(bad(&format!("{} characters, a node id has 52", s.len())));
        }
        let bytes = BASE32_NOPAD
            .decode(s.to_ascii_uppercase().as_bytes())
            .map_err(|e| bad(&format!("not base32: {e}")))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| bad("does not decode to 32 bytes"))?;
        VerifyingKey::from_bytes(&key)
            .map(NodeId)
            .map_err(|_| bad("not an ed25519 public key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    #[test]
    fn round_trips_and_is_52_lowercase_chars() {
        let key = SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        let id = NodeId::from_key(key);
        let text = id.to_string();
        assert_eq!(text.len(), 52);
        assert!(text
            .chars()
            .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c)));
        assert_eq!(text.parse::<NodeId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<NodeId>().unwrap(), id);
    }

    #[test]
    fn bad_ids_say_why() {
        let e = "abc".parse::<NodeId>().unwrap_err().to_string();
        assert!(e.contains("3 characters"), "{e}");
        let e = "1".repeat(52).parse::<NodeId>().unwrap_err().to_string();
        assert!(e.contains("base32"), "{e}");
    }
}
