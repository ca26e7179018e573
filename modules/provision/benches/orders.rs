//! Signed orders on the host: how many are verified and recorded per
//! second, and the time from POST to receipt. A real identity and ledger
//! (library code on unix sockets in this process, ledger on /var/tmp so
//! fsync is real), the real provision binary, the zn client library; fake
//! network and storage modules answer reconcile.
//!
//! `cargo bench -p zeronode-provision --bench orders`
//! (ORDERS_BENCH_N, ORDERS_BENCH_CONCURRENCY change the sizes).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let n = env("ORDERS_BENCH_N", 2000);
    let conc = env("ORDERS_BENCH_CONCURRENCY", 64);
    std::env::set_var("TMPDIR", "/var/tmp");
    let node = Node::start(true, &[]).await;
    let owner = node.owner.clone();

    // Verification alone (decode, schema, canonical hash, signature), in process.
    let doc = signed(deployment(&owner, "cpu", 1), &[&owner]);
    let t = Instant::now();
    let k = 5000;
    for _ in 0..k {
        let p = zeronode_deployment::decode::<zeronode_deployment::Deployment>(&doc).unwrap();
        zeronode_deployment::check_signatures(
            &p.hash,
            &p.doc.signatures,
            &p.doc.signature_requirement,
        )
        .unwrap();
    }
    let verify_rate = k as f64 / t.elapsed().as_secs_f64();

    // Latency: one client, one order at a time.
    let c = node.client();
    c.health().await.unwrap();
    let mut lat = Vec::new();
    for i in 0..200 {
        let body = signed(deployment(&owner, &format!("lat-{i}"), 1), &[&owner]);
        let t = Instant::now();
        c.deploy(body).await.unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();

    // Throughput: `conc` clients, each on its own connection, `n` orders.
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| signed(deployment(&owner, &format!("tp-{i}"), 1), &[&owner]))
        .collect();
    let bodies = Arc::new(bodies);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let before = node.ledger_count().await;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let c = node.client();
        let bodies = bodies.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= bodies.len() {
                    break;
                }
                c.deploy(bodies[i].clone()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let after = node.ledger_count().await;
    println!("| measure | value |");
    println!("|---|---|");
    println!("| verify only (decode, schema, JCS, blake3, ed25519), 1 thread | {verify_rate:.0} orders/s |");
    println!(
        "| POST to receipt, 1 client, sequential, 200 orders | p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms |",
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 0.99),
        pct(&lat, 1.0)
    );
    println!(
        "| orders verified and recorded, {conc} clients, {n} orders | {:.0} orders/s ({} ledger entries incl. reconcile results, {:.1} s) |",
        n as f64 / secs,
        after - before,
        secs
    );
}
