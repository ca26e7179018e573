//! The node's identity: an ed25519 key made on first boot and kept in the
//! node cache, the node id derived from it, and the farm and owner the
//! boot config names. The private key never leaves this module: other
//! modules ask it to sign over D-Bus (`org.zeronode.Identity1`).

pub mod error;
pub mod key;
pub mod node_id;
pub mod service;

pub use error::Error;
pub use key::NodeKey;
pub use node_id::NodeId;
