//! zeronode-provision: the node's signed-deployment API. Orders come over
//! HTTPS (src/http.rs), are checked in a fixed order and recorded in the
//! ledger before anything happens (src/app.rs), then reconciled through the
//! modules over D-Bus and healed after restarts (src/reconcile.rs). See
//! docs/provision.md.

pub mod app;
pub mod capacity;
pub mod http;
pub mod metrics;
pub mod modules;
pub mod reconcile;
pub mod tls;

pub use app::{ApiError, App, Config};
pub use capacity::Capacity;
