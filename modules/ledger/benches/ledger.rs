//! Ledger benchmark (harness = false): prints a table.
//!
//! - durable appends/s with 1 writer and with 64 concurrent writers
//!   (every append answered only after its commit is synced)
//! - full-chain verify speed in MB/s for 1 KiB and 4 KiB payloads
//! - inclusion and consistency proof generation at 1M entries
//! - open time after a SIGKILL at 1M entries
//!
//! `LEDGER_BENCH_ENTRIES` changes the 1M (for a quick run);
//! `LEDGER_BENCH_ONLY=appends|verify|big` runs one part (to profile it).
//! The crash child is this binary run again with `CHILD_ENV` set.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zeronode_ledger::verifier;
use zeronode_ledger::{EntryMeta, KeySigner, Kind, Ledger, Options};

const CHILD_ENV: &str = "ZN_LEDGER_BENCH_CHILD";

fn signer() -> Arc<KeySigner> {
    Arc::new(KeySigner::from_seed(&[77; 32]))
}

fn open(dir: &Path) -> Ledger {
    Ledger::open(dir, signer(), Options::default()).expect("open ledger")
}

/// A payload shaped like a signed deployment document of `size` bytes.
fn document(i: u64, size: usize) -> Vec<u8> {
    let head = format!(
        "{{\"deployment\":\"dep-{}\",\"version\":{i},\"twin\":\"twin-{}\",\"workloads\":[",
        i % 1000,
        i % 50
    );
    let tail = "],\"signature\":\"ed25519:00\"}";
    let mut doc = head.into_bytes();
    while doc.len() + tail.len() < size {
        doc.extend_from_slice(b"{\"name\":\"web\",\"image\":\"registry/app:1\",\"cpu\":2},");
    }
    doc.truncate(size - tail.len());
    doc.extend_from_slice(tail.as_bytes());
    doc
}

fn meta(i: u64) -> EntryMeta {
    EntryMeta {
        deployment: format!("dep-{}", i % 1000),
        version: i,
        owner: format!("twin-{}", i % 50),
        workloads: vec![format!("wl-{}", i % 200)],
    }
}

/// `writers` threads appending `per_writer` documents each; appends/s.
fn append_load(l: &Ledger, writers: u64, per_writer: u64, size: usize) -> f64 {
    let start = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let l = l.clone();
            std::thread::spawn(move || {
                for i in 0..per_writer {
                    let n = w * per_writer + i;
                    l.append(Kind::Deploy, meta(n), document(n, size))
                        .expect("append");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer thread");
    }
    (writers * per_writer) as f64 / start.elapsed().as_secs_f64()
}

/// `tasks` async tasks appending `per_task` documents each on a 2-thread
/// runtime: open-loop load far above 64 writers; appends/s.
fn async_load(l: &Ledger, tasks: u64, per_task: u64, size: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let start = Instant::now();
    rt.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let l = l.clone();
                tokio::spawn(async move {
                    for i in 0..per_task {
                        let n = t * per_task + i;
                        l.append_async(Kind::Deploy, meta(n), document(n, size))
                            .await
                            .expect("append");
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.expect("task");
        }
    });
    (tasks * per_task) as f64 / start.elapsed().as_secs_f64()
}

/// Seconds one 4 KiB write plus fdatasync takes in `dir`, overwriting
/// (as LMDB mostly does): the floor under a durable commit.
fn fdatasync_latency(dir: &Path) -> f64 {
    use std::io::{Seek, Write};
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).expect("probe file");
    f.write_all(&vec![0u8; 4096 * 64]).expect("write");
    f.sync_all().expect("sync");
    let n = 100;
    let start = Instant::now();
    for i in 0..n {
        f.seek(std::io::SeekFrom::Start((i % 64) * 4096))
            .expect("seek");
        f.write_all(&[i as u8; 4096]).expect("write");
        f.sync_data().expect("fdatasync");
    }
    let secs = start.elapsed().as_secs_f64() / n as f64;
    let _ = std::fs::remove_file(path);
    secs
}

fn verify_speed(l: &Ledger, threads: usize) -> (f64, u64) {
    let start = Instant::now();
    let r = l.verify_with_threads(threads).expect("verify");
    assert!(r.is_ok(), "{:?}", r.first_break);
    (
        r.bytes as f64 / 1e6 / start.elapsed().as_secs_f64(),
        r.bytes,
    )
}

fn child(dir: &str) {
    let l = open(Path::new(dir));
    let handles: Vec<_> = (0..16)
        .map(|w| {
            let l = l.clone();
            std::thread::spawn(move || {
                for i in 0u64.. {
                    let n = w * 1_000_000_000 + i;
                    let _ = l.append(Kind::Result, meta(n), document(n, 200));
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

struct Row(String, String);

fn main() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    let big: u64 = std::env::var("LEDGER_BENCH_ENTRIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let only = std::env::var("LEDGER_BENCH_ONLY").ok();
    let part = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let mut rows: Vec<Row> = Vec::new();
    let mut row = |name: &str, value: String| {
        eprintln!("{name}: {value}");
        rows.push(Row(name.to_string(), value));
    };
    let base = tempfile::Builder::new()
        .prefix("ledger-bench")
        .tempdir_in(std::env::var("LEDGER_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
        .expect("temp dir");

    let sync = fdatasync_latency(base.path());
    row(
        "fdatasync of 4 KiB on this disk",
        format!("{:.2} ms", sync * 1e3),
    );
    row(
        "bound for 64 closed-loop writers (LMDB syncs twice a commit)",
        format!("{:.0} appends/s", 64.0 / (2.0 * sync)),
    );

    // Durable appends, 1 KiB documents.
    if part("appends") {
        let l = open(&base.path().join("one"));
        let r = append_load(&l, 1, 2000, 1024);
        row("durable appends/s, 1 writer, 1 KiB", format!("{r:.0}"));
    }
    if part("appends") {
        let l = open(&base.path().join("many"));
        let r = append_load(&l, 64, 500, 1024);
        row("durable appends/s, 64 writers, 1 KiB", format!("{r:.0}"));
        let r = append_load(&l, 64, 200, 4096);
        row("durable appends/s, 64 writers, 4 KiB", format!("{r:.0}"));
        let r = async_load(&l, 1024, 40, 1024);
        row(
            "durable appends/s, 1024 async writers, 1 KiB",
            format!("{r:.0}"),
        );
    }
    // The same load where fsync costs nothing: the code's own ceiling.
    if part("appends") && Path::new("/dev/shm").is_dir() {
        let shm = tempfile::Builder::new()
            .prefix("ledger-bench")
            .tempdir_in("/dev/shm")
            .expect("shm dir");
        let l = open(shm.path());
        let r = append_load(&l, 64, 500, 1024);
        row(
            "appends/s, 64 writers, 1 KiB, on tmpfs (no real sync)",
            format!("{r:.0}"),
        );
    }

    // Verify speed on realistic documents.
    let sizes: &[(usize, u64)] = if part("verify") {
        &[(1024, 40_000), (4096, 20_000)]
    } else {
        &[]
    };
    for &(size, count) in sizes {
        let dir = base.path().join(format!("verify-{size}"));
        let l = open(&dir);
        async_load(&l, 1024, count / 1024, size);
        verify_speed(&l, 2); // warm-up: map the pages in
        let (mbs2, bytes) = verify_speed(&l, 2);
        let (mbs1, _) = verify_speed(&l, 1);
        let n = l.len().expect("len");
        row(
            &format!(
                "verify MB/s, {} KiB docs ({n} entries, {:.0} MB), 2 threads",
                size / 1024,
                bytes as f64 / 1e6
            ),
            format!(
                "{mbs2:.0} ({:.0} entries/s)",
                mbs2 * 1e6 / (bytes as f64 / n as f64)
            ),
        );
        row(
            &format!("verify MB/s, {} KiB docs, 1 thread", size / 1024),
            format!("{mbs1:.0}"),
        );
    }

    // The big ledger: proofs and recovery.
    let dir = base.path().join("big");
    if part("big") {
        let l = open(&dir);
        let start = Instant::now();
        let rate = async_load(&l, 1024, big / 1024, 200);
        let n = l.len().expect("len");
        row(
            &format!("build {n} entries (1024 async writers, 200 B docs)"),
            format!(
                "{:.1} s ({rate:.0} appends/s)",
                start.elapsed().as_secs_f64()
            ),
        );
        let (size, root) = l.tree_head().expect("head");
        let key = l.public_key().unwrap();
        let _ = key;
        // Inclusion proofs at random leaves of the full tree.
        let mut x = 0x9e3779b97f4a7c15u64;
        let samples = 20_000u64;
        let mut gen = Duration::ZERO;
        let mut check = Duration::ZERO;
        for _ in 0..samples {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let seq = x % size;
            let t = Instant::now();
            let proof = l.inclusion_proof(seq, size).expect("proof");
            gen += t.elapsed();
            let rec = l.record(seq).expect("record").expect("entry");
            let hash = *blake3::hash(&rec[..rec.len() - 64]).as_bytes();
            let t = Instant::now();
            verifier::verify_inclusion(&hash, seq, size, &proof, &root).expect("proof verifies");
            check += t.elapsed();
        }
        row(
            &format!("inclusion proof generation at {size} entries"),
            format!(
                "{:.1} µs (mean of {samples})",
                gen.as_secs_f64() * 1e6 / samples as f64
            ),
        );
        row(
            "inclusion proof verification (client)",
            format!("{:.1} µs", check.as_secs_f64() * 1e6 / samples as f64),
        );
        let mut cgen = Duration::ZERO;
        for i in 0..2000u64 {
            let old = (i * 7919 * 131) % size + 1;
            let t = Instant::now();
            let p = l.consistency_proof(old, size).expect("proof");
            cgen += t.elapsed();
            std::hint::black_box(p);
        }
        row(
            &format!("consistency proof generation at {size} entries"),
            format!("{:.1} µs", cgen.as_secs_f64() * 1e6 / 2000.0),
        );
        let t = Instant::now();
        let sth = l.signed_tree_head().expect("head");
        row(
            "signed tree head",
            format!("{:.1} µs", t.elapsed().as_secs_f64() * 1e6),
        );
        std::hint::black_box(sth);
        let (mbs, bytes) = verify_speed(&l, 2);
        row(
            &format!(
                "verify at {n} entries (200 B docs, {:.0} MB)",
                bytes as f64 / 1e6
            ),
            format!("{mbs:.0} MB/s, {:.1} s", bytes as f64 / 1e6 / mbs),
        );
    }

    // Open after a crash: a child appends to the big ledger and is killed.
    if part("big") {
        let exe = std::env::current_exe().expect("exe");
        let mut child = std::process::Command::new(exe)
            .env(CHILD_ENV, &dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn child");
        std::thread::sleep(Duration::from_millis(1500));
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        let t = Instant::now();
        let l = open(&dir);
        let opened = t.elapsed();
        let n = l.len().expect("len");
        let r = l
            .append(Kind::Event, EntryMeta::default(), b"after crash".to_vec())
            .expect("append");
        assert_eq!(r.seq, n);
        let rep = l
            .verify_range(n.saturating_sub(100_000), 2)
            .expect("verify");
        assert!(rep.is_ok(), "{:?}", rep.first_break);
        row(
            &format!("open after SIGKILL at {n} entries"),
            format!("{:.2} ms", opened.as_secs_f64() * 1e3),
        );
        let disk = std::fs::metadata(dir.join("data.mdb"))
            .map(|m| m.len())
            .unwrap_or(0);
        row(
            "data.mdb size",
            format!(
                "{:.0} MB ({:.0} B/entry)",
                disk as f64 / 1e6,
                disk as f64 / n as f64
            ),
        );
    }

    let w = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(10);
    println!();
    println!("| {:<w$} | value", "measure");
    println!("|-{}-|------", "-".repeat(w));
    for Row(k, v) in &rows {
        println!("| {k:<w$} | {v}");
    }
}
