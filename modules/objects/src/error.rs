//! The library's one error type: every variant says what failed and with which input.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid coding {data}+{parity}: {reason}")]
    Coding {
        data: usize,
        parity: usize,
        reason: String,
    },
    #[error("erasure coding of stripe {stripe} failed: {reason}")]
    Codec { stripe: u64, reason: String },
    #[error("backend {backend}: {reason}")]
    Backend { backend: String, reason: String },
    #[error("backend {backend}: RESP protocol error: {reason}")]
    Protocol { backend: String, reason: String },
    #[error("backend {backend}: timed out after {seconds:.1} s during {operation}")]
    Timeout {
        backend: String,
        operation: &'static str,
        seconds: f64,
    },
    #[error("need {needed} reachable backends, only {reachable} of {configured} answered")]
    NotEnoughBackends {
        needed: usize,
        reachable: usize,
        configured: usize,
    },
    #[error("key: {0}")]
    Key(String),
    #[error("object {object}: no usable metadata copy ({details})")]
    MetadataUnavailable { object: String, details: String },
    #[error("metadata is invalid: {0}")]
    MetadataInvalid(String),
    #[error("metadata failed authentication: wrong key or tampered metadata")]
    MetadataAuthentication,
    #[error("object {object}: none of the {copies} metadata copies found opens with this key: wrong key or tampered metadata")]
    WrongKey { object: String, copies: usize },
    #[error("stripe {stripe}: compression failed: {reason}")]
    Compress { stripe: u64, reason: String },
    #[error("object {object} stripe {stripe}: only {good} good shards of the {needed} needed ({details})")]
    StripeLost {
        object: String,
        stripe: u64,
        good: usize,
        needed: usize,
        details: String,
    },
    #[error("object {object} stripe {stripe}: decryption failed (wrong key or tampered data)")]
    StripeAuthentication { object: String, stripe: u64 },
    #[error("object {object} stripe {stripe}: decompression failed: {reason}")]
    Decompress {
        object: String,
        stripe: u64,
        reason: String,
    },
    #[error("object {object}: {reason}")]
    Integrity { object: String, reason: String },
    #[error("invalid object id {0:?}: expected 32 hex digits")]
    ObjectId(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error("object {object} not found on any of the {backends} backends")]
    NotFound { object: String, backends: usize },
    #[error("internal task failed: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
