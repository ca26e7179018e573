//! `org.zeronode.Identity1` at `/org/zeronode/Identity1`: who the node is,
//! and signatures made with its key for the modules that need one (the
//! ledger signs its entries, provision its receipts).

use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use zbus::zvariant::Type;

use crate::key::NodeKey;

pub const OBJECT_PATH: &str = "/org/zeronode/Identity1";
pub const SOCKET_NAME: &str = "identity";

/// What `Info` answers: D-Bus signature `(ssus)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct Info {
    pub node_id: String,
    /// The ed25519 public key, hex.
    pub public_key: String,
    /// `zeronode.farm=`; 0 when the command line names no farm.
    pub farm_id: u32,
    /// `zeronode.owner=`, hex; empty when the command line names no owner.
    pub owner_key: String,
}

#[derive(Clone)]
pub struct Identity {
    key: Arc<NodeKey>,
    farm_id: Option<u32>,
    owner_key: Option<[u8; 32]>,
}

impl Identity {
    pub fn new(key: NodeKey, farm_id: Option<u32>, owner_key: Option<[u8; 32]>) -> Self {
        Identity {
            key: Arc::new(key),
            farm_id,
            owner_key,
        }
    }

    pub fn info(&self) -> Info {
        Info {
            node_id: self.key.node_id().to_string(),
            public_key: hex(self.key.verifying_key().as_bytes()),
            farm_id: self.farm_id.unwrap_or(0),
            owner_key: self.owner_key.as_ref().map(|k| hex(k)).unwrap_or_default(),
        }
    }
}

#[zbus::interface(name = "org.zeronode.Identity1")]
impl Identity {
    #[zbus(name = "Info")]
    fn dbus_info(&self) -> Info {
        self.info()
    }

    /// The node's ed25519 signature over `message` (64 bytes).
    fn sign(&self, message: Vec<u8>) -> Vec<u8> {
        self.key.sign(&message).to_bytes().to_vec()
    }

    /// One signature a message, in order: one round trip for a batch (the
    /// ledger signs a whole group commit at once).
    fn sign_batch(&self, messages: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        messages
            .iter()
            .map(|m| self.key.sign(m).to_bytes().to_vec())
            .collect()
    }
}

#[zbus::proxy(
    interface = "org.zeronode.Identity1",
    default_service = "org.zeronode.Identity1",
    default_path = "/org/zeronode/Identity1"
)]
pub trait Identity1 {
    fn info(&self) -> zbus::Result<Info>;
    fn sign(&self, message: &[u8]) -> zbus::Result<Vec<u8>>;
    fn sign_batch(&self, messages: &[Vec<u8>]) -> zbus::Result<Vec<Vec<u8>>>;
}

/// Parses `Info::public_key` back into a key a verifier can use.
pub fn parse_public_key(hex_key: &str) -> Option<VerifyingKey> {
    let bytes: Vec<u8> = (0..hex_key.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex_key.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    VerifyingKey::from_bytes(&bytes.try_into().ok()?).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier};
    use zeronode_types::bus;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn info_and_signatures_over_dbus() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::load_or_create(&dir.path().join("keys")).unwrap();
        let id = key.node_id().to_string();
        let sock = dir.path().join("identity.sock");
        let server = bus::serve(
            &sock,
            OBJECT_PATH,
            Identity::new(key, Some(7), Some([1; 32])),
        )
        .unwrap();
        let conn = bus::connect(&sock).await.unwrap();
        let proxy = Identity1Proxy::new(&conn).await.unwrap();
        let info = proxy.info().await.unwrap();
        assert_eq!(info.node_id, id);
        assert_eq!(info.farm_id, 7);
        assert_eq!(info.owner_key, "01".repeat(32));
        let public = parse_public_key(&info.public_key).unwrap();
        assert_eq!(crate::NodeId::from_key(public).to_string(), id);
        let sig = proxy.sign(b"entry hash").await.unwrap();
        let sig = Signature::from_slice(&sig).unwrap();
        public.verify(b"entry hash", &sig).unwrap();
        assert!(public.verify(b"other", &sig).is_err());
        let batch = proxy
            .sign_batch(&[b"one".to_vec(), b"two".to_vec()])
            .await
            .unwrap();
        assert_eq!(batch.len(), 2);
        for (m, s) in [&b"one"[..], b"two"].iter().zip(&batch) {
            public
                .verify(m, &Signature::from_slice(s).unwrap())
                .unwrap();
        }
        server.abort();
    }
}
