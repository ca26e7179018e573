//! What the module knows about the management side, shared between the
//! addressing task and the D-Bus interface.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::dhcp::Lease;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// The NIC enslaved to the management bridge.
    pub mgmt_nic: Option<String>,
    pub mgmt_mac: Option<String>,
    /// "dhcp", "static" or "off".
    pub mode: String,
    /// The current DHCP lease, when bound.
    pub lease: Option<Lease>,
    /// The static address, `a.b.c.d/n`, in static mode.
    pub static_address: Option<String>,
    pub gateway: Option<String>,
    pub dns: Vec<String>,
    pub hostname: Option<String>,
    /// Milliseconds from process start to the first address on zn0.
    pub configured_after_ms: Option<u64>,
    /// Problems worth showing to an operator (bad boot config, ...).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Shared(Arc<Mutex<Status>>);

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Status> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
