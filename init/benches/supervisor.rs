//! Supervisor benchmark against the targets of ANCHORS.md (zinit's figures):
//! 200 `sleep` services with logs captured running in < 200 ms, RSS < 4 MiB
//! with no thread per service, 200 services stopped in < 2 s.
//!
//! `cargo bench -p zeronode-init --bench supervisor` builds the release
//! `zeronode-init` and cargo hands its path to the bench as
//! `CARGO_BIN_EXE_zeronode-init`; `ZERONODE_INIT=/path/to/zeronode-init`
//! measures another build instead. `BENCH_RUNS=N` sets the repeats (10).
//!
//! Each run writes the services into a temporary directory, starts
//! `zeronode-init --services DIR`, and takes the time from the spawn to the
//! `zeronode: ready in N ms` line (every service is marked `ready`, so the
//! line means all 200 are running). Then it reads VmRSS and Threads from
//! /proc, sends SIGTERM and takes the time until init has exited, which is
//! after every service has.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SERVICES: usize = 200;
const LEVELS: usize = 20;

/// Writes one scenario's service files into a directory.
type WriteServices = Box<dyn Fn(&Path)>;

struct Sample {
    ready: Duration,
    /// The figure init printed itself (from its own start).
    reported_ms: u64,
    rss_kib: u64,
    threads: u64,
    stop: Duration,
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let init = std::env::var_os("ZERONODE_INIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_zeronode-init")));
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    println!("zeronode-init: {}", init.display());
    println!("{runs} runs each; figures are min / median / max\n");

    let scenarios: [(&str, WriteServices); 3] = [
        (
            "200 services, no deps",
            Box::new(|d| write_flat(d, SERVICES)),
        ),
        (
            "200 services, 20 levels",
            Box::new(|d| write_levels(d, SERVICES, LEVELS)),
        ),
        ("0 services (idle)", Box::new(|d| write_flat(d, 0))),
    ];
    let mut table = Vec::new();
    for (name, write) in &scenarios {
        let samples: Vec<Sample> = (0..runs).map(|_| run_once(&init, write)).collect();
        table.push((*name, samples));
    }

    println!(
        "{:<26} {:>24} {:>22} {:>20} {:>8} {:>22}",
        "scenario",
        "spawn -> ready (ms)",
        "init's own N (ms)",
        "RSS (MiB)",
        "threads",
        "SIGTERM -> exit (ms)"
    );
    for (name, samples) in &table {
        println!(
            "{:<26} {:>24} {:>22} {:>20} {:>8} {:>22}",
            name,
            spread(samples.iter().map(|s| s.ready.as_secs_f64() * 1e3)),
            spread(samples.iter().map(|s| s.reported_ms as f64)),
            spread(samples.iter().map(|s| s.rss_kib as f64 / 1024.0)),
            samples.iter().map(|s| s.threads).max().unwrap_or(0),
            spread(samples.iter().map(|s| s.stop.as_secs_f64() * 1e3)),
        );
    }
    let flat = &table[0].1;
    let worst = |f: &dyn Fn(&Sample) -> f64| flat.iter().map(f).fold(0.0, f64::max);
    let median = |f: &dyn Fn(&Sample) -> f64| {
        let mut v: Vec<f64> = flat.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("\ntargets (200 services, no deps):");
    check(
        "running < 200 ms (median)",
        median(&|s| s.ready.as_secs_f64() * 1e3) < 200.0,
    );
    check("RSS < 4 MiB (max)", worst(&|s| s.rss_kib as f64) < 4096.0);
    check("no thread per service", worst(&|s| s.threads as f64) < 8.0);
    check("stop < 2 s (max)", worst(&|s| s.stop.as_secs_f64()) < 2.0);
}

fn check(what: &str, ok: bool) {
    println!("  {:<28} {}", what, if ok { "yes" } else { "NO" });
}

fn spread(values: impl Iterator<Item = f64>) -> String {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(f64::total_cmp);
    let p = |x: f64| {
        if x < 10.0 {
            format!("{x:.2}")
        } else {
            format!("{x:.0}")
        }
    };
    format!(
        "{} / {} / {}",
        p(v[0]),
        p(v[v.len() / 2]),
        p(v[v.len() - 1])
    )
}

fn service(dir: &Path, name: &str, after: &[String]) {
    let after: Vec<String> = after.iter().map(|a| format!("{a:?}")).collect();
    let text = format!(
        "command = [\"/bin/sleep\", \"1000\"]\nready = true\nafter = [{}]\n",
        after.join(", ")
    );
    if let Err(e) = std::fs::write(dir.join(format!("{name}.toml")), text) {
        panic!("writing {name}: {e}");
    }
}

fn write_flat(dir: &Path, n: usize) {
    for i in 0..n {
        service(dir, &format!("s{i:03}"), &[]);
    }
}

/// `levels` levels of `n / levels` services; each depends on every service
/// of the level before.
fn write_levels(dir: &Path, n: usize, levels: usize) {
    let per = n / levels;
    let name = |l: usize, i: usize| format!("l{l:02}-{i:02}");
    for l in 0..levels {
        let after: Vec<String> = if l == 0 {
            Vec::new()
        } else {
            (0..per).map(|i| name(l - 1, i)).collect()
        };
        for i in 0..per {
            service(dir, &name(l, i), &after);
        }
    }
}

fn run_once(init: &Path, write: &dyn Fn(&Path)) -> Sample {
    let dir = std::env::temp_dir().join(format!("zn-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("{}: {e}", dir.display());
    }
    write(&dir);
    let start = Instant::now();
    let mut child = match Command::new(init)
        .arg("--services")
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("starting {}: {e}", init.display()),
    };
    let Some(stdout) = child.stdout.take() else {
        panic!("no stdout pipe")
    };
    let mut lines = BufReader::new(stdout).lines();
    let reported_ms = loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(n) = l.strip_prefix("zeronode: ready in ") {
                    break n.trim_end_matches(" ms").parse().unwrap_or(0);
                }
            }
            _ => panic!("init ended before its ready line"),
        }
    };
    let ready = start.elapsed();
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (rss_kib, threads) = (field("VmRSS:"), field("Threads:"));
    let stop_start = Instant::now();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
        panic!("SIGTERM: {e}");
    }
    // Keep reading stdout so init never blocks on a full pipe.
    for _ in lines.by_ref() {}
    if let Err(e) = child.wait() {
        panic!("waiting for init: {e}");
    }
    let stop = stop_start.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    Sample {
        ready,
        reported_ms,
        rss_kib,
        threads,
        stop,
    }
}
