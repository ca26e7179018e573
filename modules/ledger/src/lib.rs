//! zeronode-ledger: the node's BCDB, an append-only, hash-chained, signed
//! record of every order the node received and every result it reported,
//! on LMDB (heed). See the crate README for the on-disk and export formats.
//!
//! - [`entry`], the entry and its versioned binary encoding
//! - [`store`], the ledger: group-committed durable appends, indexes,
//!   queries, Merkle proofs
//! - [`verifier`], pure functions a client uses to check records, proofs
//!   and signed tree heads without trusting the node
//! - [`verify`], the full-chain audit
//! - [`export`], the portable file
//! - [`dbus`], `org.zeronode.Ledger1`

pub mod batch;
pub mod dbus;
pub mod entry;
pub mod export;
pub mod index;
pub mod signer;
pub mod store;
pub mod verifier;
pub mod verify;
mod writer;

pub use entry::{Entry, EntryMeta, Hash, Kind};
pub use signer::{KeySigner, Signer};
pub use store::{Ledger, LedgerError, Options, Page, Receipt, Scan};
pub use verifier::SignedTreeHead;
pub use verify::{Break, BreakReason, VerifyReport};
