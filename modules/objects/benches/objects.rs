//! Throughput of the object path, printed as a table.
//!
//! Rows 1 and 2 count this thread's CPU time, so they say what one core
//! does even on a busy machine; row 3 is wall time.
//!
//! 1. Pure Reed-Solomon coding on one core (no compression, no encryption):
//!    4+2 and 10+4 encode, and reconstruct with m data shards lost.
//! 2. The per-stripe CPU stages on one core: zstd, XChaCha20-Poly1305, blake3.
//! 3. End to end: store and retrieve of a 256 MiB file (mixed compressible and
//!    random content) with compression and encryption, against 6 local
//!    redis-server backends (AOF off), on a 2-worker runtime.
//!
//! `cargo bench -p zeronode-objects --bench objects`; set ZN_BENCH_MB to
//! change the end-to-end file size.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use zeronode_objects::coding::Coder;
use zeronode_objects::{Objects, OwnerKey, StoreOptions};

const STRIPE: usize = 4 << 20;

fn mbps(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

/// CPU time of this thread: the machine is shared, and wall time would
/// measure the neighbours' load as much as our code.
fn thread_cpu() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// Runs `f` over `rounds` stripes, best of three passes, in thread CPU time.
fn best_of_three(rounds: usize, mut f: impl FnMut(usize)) -> Duration {
    (0..3)
        .map(|_| {
            let started = thread_cpu();
            for r in 0..rounds {
                f(r);
            }
            thread_cpu() - started
        })
        .min()
        .unwrap_or_default()
}

fn coding(k: usize, m: usize, rows: &mut Vec<(String, f64)>) {
    let coder = Coder::new(k, m).unwrap();
    let payload = common::content(STRIPE, 1);
    let rounds = 32;
    let mut shards = Vec::new();
    let encode = best_of_three(rounds, |r| {
        shards = coder.encode(r as u64, &payload).unwrap();
    });
    rows.push((
        format!("{k}+{m} encode (RS only, 1 core)"),
        mbps(STRIPE * rounds, encode),
    ));
    // Lose m data shards: the worst case, every lost byte is recomputed.
    let inputs: Vec<Vec<Option<Vec<u8>>>> = (0..rounds)
        .map(|_| {
            let mut partial: Vec<Option<Vec<u8>>> = shards.iter().cloned().map(Some).collect();
            for lost in partial.iter_mut().take(m) {
                *lost = None;
            }
            partial
        })
        .collect();
    let mut work = inputs.clone();
    let reconstruct = (0..3)
        .map(|_| {
            work.clone_from(&inputs);
            let started = thread_cpu();
            for (r, partial) in work.iter_mut().enumerate() {
                coder.reconstruct_data(r as u64, partial).unwrap();
            }
            thread_cpu() - started
        })
        .min()
        .unwrap_or_default();
    assert_eq!(coder.join(0, &work[0], STRIPE).unwrap(), payload);
    // What rebuild does: one data and one parity shard lost, both regenerated.
    let inputs: Vec<Vec<Option<Vec<u8>>>> = (0..rounds)
        .map(|_| {
            let mut partial: Vec<Option<Vec<u8>>> = shards.iter().cloned().map(Some).collect();
            partial[0] = None;
            partial[k] = None;
            partial
        })
        .collect();
    let rebuild = (0..3)
        .map(|_| {
            work.clone_from(&inputs);
            let started = thread_cpu();
            for (r, partial) in work.iter_mut().enumerate() {
                coder.reconstruct(r as u64, partial).unwrap();
            }
            thread_cpu() - started
        })
        .min()
        .unwrap_or_default();
    assert_eq!(work[0][k].as_ref(), Some(&shards[k]));
    rows.push((
        format!("{k}+{m} reconstruct, {m} data shards lost (RS only, 1 core)"),
        mbps(STRIPE * rounds, reconstruct),
    ));
    rows.push((
        format!("{k}+{m} rebuild 1 data + 1 parity shard (RS only, 1 core)"),
        mbps(STRIPE * rounds, rebuild),
    ));
}

fn stages(rows: &mut Vec<(String, f64)>) {
    let payload = common::content(STRIPE, 2);
    let rounds = 8;
    let mut compressed = Vec::new();
    let t = best_of_three(rounds, |_| {
        compressed = zstd::bulk::compress(&payload, 3).unwrap();
    });
    rows.push((
        "zstd level 3 compress (1 core)".into(),
        mbps(STRIPE * rounds, t),
    ));
    let ratio = compressed.len() as f64 / payload.len() as f64;
    let t = best_of_three(rounds, |_| {
        zstd::bulk::decompress(&compressed, STRIPE).unwrap();
    });
    rows.push((
        "zstd decompress, output bytes (1 core)".into(),
        mbps(STRIPE * rounds, t),
    ));
    let key = [3u8; 32];
    use chacha20poly1305::aead::{Aead, KeyInit};
    let cipher = chacha20poly1305::XChaCha20Poly1305::new(&key.into());
    let nonce = chacha20poly1305::XNonce::default();
    let t = best_of_three(rounds, |_| {
        cipher.encrypt(&nonce, payload.as_slice()).unwrap();
    });
    rows.push((
        "XChaCha20-Poly1305 seal (1 core)".into(),
        mbps(STRIPE * rounds, t),
    ));
    let t = best_of_three(rounds, |_| {
        blake3::hash(&payload);
    });
    rows.push(("blake3 (1 core)".into(), mbps(STRIPE * rounds, t)));
    println!("content compresses to {:.0}% with zstd 3", ratio * 100.0);
}

fn end_to_end(rows: &mut Vec<(String, f64)>) {
    let megabytes: usize = std::env::var("ZN_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let size = megabytes << 20;
    let cluster: Vec<common::Redis> = (0..6).map(|_| common::Redis::start_with(false)).collect();
    let dir = tempfile::tempdir().unwrap();
    // Written in pieces so the process's peak memory reflects the library.
    let input = dir.path().join("in");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&input).unwrap();
        for piece in 0..megabytes {
            file.write_all(&common::content(1 << 20, piece as u64))
                .unwrap();
        }
    }
    // Forget the coding rows' peak (Linux: "5" resets VmHWM) so the figure
    // below is the end-to-end runs' own.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = peak_rss_mib();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let objects = Objects::new(
        common::configs(&cluster),
        OwnerKey::from_bytes(&[9; 32]),
        Duration::from_secs(30),
    )
    .unwrap();
    let options = StoreOptions::default();
    runtime.block_on(async {
        let started = Instant::now();
        let report = objects.store(&input, &options).await.unwrap();
        rows.push((
            format!("4+2 store {megabytes} MiB, zstd+AEAD, 6 local redis"),
            mbps(size, started.elapsed()),
        ));
        println!("peak RSS during store: {} MiB", peak_rss_mib());
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let output = dir.path().join("out");
        let started = Instant::now();
        objects.retrieve(&report.id, &output).await.unwrap();
        rows.push((
            format!("4+2 retrieve {megabytes} MiB, all backends up"),
            mbps(size, started.elapsed()),
        ));
        println!("peak RSS during retrieve: {} MiB", peak_rss_mib());
        std::fs::remove_file(&output).unwrap();
        let mut cluster = cluster;
        cluster[0].stop();
        cluster[1].stop();
        let started = Instant::now();
        objects.retrieve(&report.id, &output).await.unwrap();
        rows.push((
            format!("4+2 retrieve {megabytes} MiB, 2 backends down"),
            mbps(size, started.elapsed()),
        ));
        assert_eq!(file_hash(&output), file_hash(&input));
    });
    println!(
        "peak RSS {} MiB before the end-to-end runs, {} MiB after ({megabytes} MiB object)",
        before,
        peak_rss_mib()
    );
}

/// VmHWM: the most resident memory this process has had.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

fn file_hash(path: &std::path::Path) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(std::fs::File::open(path).unwrap())
        .unwrap();
    hasher.finalize()
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is not supported.
    let mut rows = Vec::new();
    coding(4, 2, &mut rows);
    coding(10, 4, &mut rows);
    stages(&mut rows);
    end_to_end(&mut rows);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "coding and stages: thread CPU time; end to end: wall time (load average {} on {} cores)",
        load.split_whitespace().next().unwrap_or("?"),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(10);
    println!("{:width$}  {:>10}", "measurement (4 MiB stripes)", "MB/s");
    println!("{}", "-".repeat(width + 12));
    for (name, value) in rows {
        println!("{name:width$}  {value:>10.0}");
    }
}
