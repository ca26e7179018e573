//! redis-benchmark against our shard store and against Debian's
//! redis-server (appendonly yes) in the same run, under the same sync
//! policy: everysec, then always. Both on loopback ports, data in temp
//! dirs. Unique keys (`-r 1000000000`): 0-db answers a SET of an unchanged
//! value without writing, so a benchmark reusing keys would measure nothing
//! (ANCHORS.md). Repetitions alternate which server goes first; medians.
//!
//! `cargo bench -p zeronode-shards --bench redis_compare`
//! Env: ZN_BENCH_REPS (default 3), ZN_BENCH_N (requests per run for
//! everysec, default 100000), ZN_BENCH_N_ALWAYS (default 30000).

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const OURS: &str = env!("CARGO_BIN_EXE_zeronode-shards");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_for(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Server {
    name: &'static str,
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_ours(dir: &Path, policy: &str) -> Server {
    let port = free_port();
    let child = Command::new(OURS)
        .arg("--dir")
        .arg(dir.join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--socket")
        .arg(dir.join("shards.sock"))
        .args(["--sync", policy])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start zeronode-shards");
    wait_for(port);
    Server {
        name: "zeronode-shards",
        child,
        port,
    }
}

fn start_redis(dir: &Path, policy: &str) -> Server {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--appendonly", "yes", "--appendfsync", policy, "--save", ""])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server (Debian's redis-server package)");
    wait_for(port);
    Server {
        name: "redis-server",
        child,
        port,
    }
}

/// One redis-benchmark run: (SET, GET) requests per second.
fn run(port: u16, n: usize) -> (f64, f64) {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "set,get", "-d", "1024", "-c", "50"])
        .args(["-n", &n.to_string(), "-r", "1000000000", "-q"])
        .stderr(Stdio::null())
        .output()
        .expect("redis-benchmark (Debian's redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let rate = |what: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(what) && l.contains("requests per second"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .next_back()
            .unwrap_or_else(|| panic!("no {what} figure in {text:?}"))
    };
    (rate("SET:"), rate("GET:"))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo test --benches` runs this too: skip unless benchmarking.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let reps = env("ZN_BENCH_REPS", 3).max(1);
    let mut summary = Vec::new();
    for policy in ["everysec", "always"] {
        let n = if policy == "always" {
            env("ZN_BENCH_N_ALWAYS", 30_000)
        } else {
            env("ZN_BENCH_N", 100_000)
        };
        let ours_dir = tempfile::tempdir().expect("temp dir");
        let redis_dir = tempfile::tempdir().expect("temp dir");
        let ours = start_ours(ours_dir.path(), policy);
        let redis = start_redis(redis_dir.path(), policy);
        let (mut os, mut og, mut rs, mut rg) = (vec![], vec![], vec![], vec![]);
        for rep in 0..reps {
            let order: [&Server; 2] = if rep % 2 == 0 {
                [&ours, &redis]
            } else {
                [&redis, &ours]
            };
            for s in order {
                let (set, get) = run(s.port, n);
                println!(
                    "{policy:8} rep {rep} {:16} SET {set:>10.0}  GET {get:>10.0}",
                    s.name
                );
                if s.name == ours.name {
                    os.push(set);
                    og.push(get);
                } else {
                    rs.push(set);
                    rg.push(get);
                }
            }
        }
        let (os, og, rs, rg) = (
            median(&mut os),
            median(&mut og),
            median(&mut rs),
            median(&mut rg),
        );
        summary.push(format!(
            "{policy:8} SET ours {os:>9.0} redis {rs:>9.0} ratio {:.2} | GET ours {og:>9.0} redis {rg:>9.0} ratio {:.2}",
            os / rs,
            og / rg
        ));
    }
    println!("\nmedians of {reps} runs, req/s (redis-benchmark -d 1024 -c 50 -r 1e9):");
    for line in summary {
        println!("{line}");
    }
}
