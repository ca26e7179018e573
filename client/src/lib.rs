//! zn's library: keys, specs, signing, and the pinned HTTPS client for a
//! node's provision API. The binary (src/main.rs) is a thin clap layer, and
//! the node's host tests drive the same functions.

pub mod api;
pub mod keys;
pub mod spec;
pub mod tls;

pub use api::{Client, ClientError};
