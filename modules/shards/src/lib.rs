//! zeronode-shards: the node's shard store, a 0-db compatible RESP server.
//!
//! - [`resp`]: request parsing with hard bounds, reply encoding.
//! - [`record`]: the data-file record (key, value, blake3, tombstone flag).
//! - [`namespace`]: one namespace on disk: append-only files, index and
//!   snapshots, group-committed sync, compaction.
//! - [`store`]: all namespaces under a data directory.
//! - [`server`]: the RESP server with the 0-db command set.
//! - [`dbus`]: `org.zeronode.Shards1`, how provision creates namespaces.
//!
//! docs/shards.md describes the formats and the behaviour.

pub mod dbus;
pub mod error;
pub mod namespace;
pub mod record;
pub mod resp;
pub mod server;
pub mod store;

pub use error::{Error, Result};
pub use namespace::{Meta, Mode, Namespace, Options, SyncPolicy};
pub use server::{Config, Server};
pub use store::Store;
