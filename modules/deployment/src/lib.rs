//! The documents of the order path, shared by the node (provision) and the
//! owner's client (zn): Deployment, DeleteOrder, Grant and the node's
//! Receipt; their schema; the signing rule (RFC 8785 canonical bytes of the
//! document without its `signatures` member, blake3, ed25519 over the 32-byte
//! hash, see docs/signing.md); signature requirement and threshold checks;
//! quota arithmetic. No I/O.

pub mod doc;
pub mod hex;
pub mod jcs;
pub mod sign;
pub mod strict;

pub use doc::*;
pub use sign::*;
