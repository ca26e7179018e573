//! zeronode-objects: files stored as erasure-coded, compressed and encrypted
//! shards over 0-db namespaces (or any RESP server with SET/GET/DEL/EXISTS),
//! so that any m of the backends can be lost without losing data or metadata.
//!
//! - [`coding`]: Reed-Solomon k+m coding of one stripe (pure Rust build of
//!   reed-solomon-erasure; see the crate's commit history for why not simd-accel).
//! - [`crypto`]: the owner's key, XChaCha20-Poly1305 for stripes and metadata.
//! - [`meta`]: the metadata, its sealed envelope, and the framing of shards.
//! - [`resp`], [`backend`]: the RESP client and one backend namespace.
//! - [`object`]: store, retrieve, check and rebuild.
//! - [`config`]: the client's TOML configuration.

pub mod backend;
pub mod coding;
pub mod config;
pub mod crypto;
pub mod error;
pub mod meta;
pub mod object;
pub mod resp;

pub use backend::{Backend, BackendConfig, BackendLocation};
pub use crypto::OwnerKey;
pub use error::{Error, Result};
pub use meta::ObjectId;
pub use object::{
    CopyState, Health, Objects, RebuildReport, RetrieveReport, Status, StoreOptions, StoreReport,
};
