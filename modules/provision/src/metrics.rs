//! Counters for /metrics (Prometheus text format 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    accepted: Mutex<BTreeMap<String, u64>>,
    refused: Mutex<BTreeMap<String, u64>>,
    results: Mutex<BTreeMap<String, u64>>,
    order_seconds_sum_us: AtomicU64,
    order_count: AtomicU64,
    requests: AtomicU64,
}

fn bump(m: &Mutex<BTreeMap<String, u64>>, k: &str) {
    *m.lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(k.to_string())
        .or_default() += 1;
}

impl Metrics {
    pub fn accepted(&self, kind: &str) {
        bump(&self.accepted, kind);
    }
    pub fn refused(&self, code: &str) {
        bump(&self.refused, code);
    }
    pub fn result(&self, state: &str) {
        bump(&self.results, state);
    }
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
    pub fn order_time(&self, d: std::time::Duration) {
        self.order_seconds_sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.order_count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, live: usize, grants: usize, ledger_size: Option<u64>) -> String {
        let mut s = String::new();
        let family = |s: &mut String,
                      name: &str,
                      help: &str,
                      label: &str,
                      m: &Mutex<BTreeMap<String, u64>>| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
            for (k, v) in m.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                let _ = writeln!(s, "{name}{{{label}=\"{k}\"}} {v}");
            }
        };
        family(
            &mut s,
            "zeronode_provision_orders_accepted_total",
            "Orders recorded in the ledger.",
            "kind",
            &self.accepted,
        );
        family(
            &mut s,
            "zeronode_provision_orders_refused_total",
            "Orders and reads refused, by error code.",
            "code",
            &self.refused,
        );
        family(
            &mut s,
            "zeronode_provision_workload_results_total",
            "Workload results recorded.",
            "state",
            &self.results,
        );
        let _ = writeln!(
            s,
            "# HELP zeronode_provision_order_seconds Time from request to receipt.\n# TYPE zeronode_provision_order_seconds summary\nzeronode_provision_order_seconds_sum {}\nzeronode_provision_order_seconds_count {}",
            self.order_seconds_sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            self.order_count.load(Ordering::Relaxed)
        );
        let _ = writeln!(s, "# TYPE zeronode_provision_requests_total counter\nzeronode_provision_requests_total {}", self.requests.load(Ordering::Relaxed));
        let _ = writeln!(s, "# TYPE zeronode_provision_live_deployments gauge\nzeronode_provision_live_deployments {live}");
        let _ = writeln!(
            s,
            "# TYPE zeronode_provision_grants gauge\nzeronode_provision_grants {grants}"
        );
        if let Some(n) = ledger_size {
            let _ = writeln!(s, "# TYPE zeronode_provision_ledger_entries gauge\nzeronode_provision_ledger_entries {n}");
        }
        s
    }
}
