//! Boot figures under QEMU TCG, in rounds that boot every case once: guest ms from kernel start to
//! `zeronode: ready` for each boot path, beside a trivial /init (prints, powers
//! off) on the same kernel and QEMU settings; wall time from QEMU start; the
//! size of every artifact. Run by scripts/bench; `ZN_BOOT_RUNS` sets the runs.
//!
//! The boot paths boot a new node: two blank disks (the pool for the node
//! cache is formatted on the way to ready, the other one after), a node key
//! made. "reboot" is a node's usual boot: the same two disks again (pools,
//! key and ledger exist), after one unmeasured first boot. "no disks" is a
//! node without any (the cache on tmpfs): what the boot costs without
//! storage's work.

use std::time::{Duration, Instant};

use zeronode_e2e::image_dir;
use zeronode_qemu::{Boot, Node, NodeOptions};

const TIMEOUT: Duration = Duration::from_secs(300);
const BASELINE: &str = "baseline /init (direct)";
const DIRECT: &str = "zeronode direct";
const REBOOT: &str = "zeronode direct, reboot";
const NO_DISKS: &str = "zeronode direct, no disks";

struct Sample {
    guest_ms: u64,
    wall_ms: u64,
    /// PID 1's resident memory at ready, in KiB (not for the baseline).
    rss_kib: Option<u64>,
}

fn one(opts: &NodeOptions, baseline: bool) -> Result<Sample, String> {
    let t = Instant::now();
    let mut node = Node::start(opts).map_err(|e| e.to_string())?;
    let guest_ms = if baseline {
        let line = node
            .wait_for_line("the baseline line", TIMEOUT, |l| {
                l.starts_with("baseline: userspace at ")
            })
            .map_err(|e| e.to_string())?;
        line.trim()
            .trim_start_matches("baseline: userspace at ")
            .trim_end_matches(" ms")
            .parse()
            .map_err(|_| line.clone())?
    } else {
        node.wait_ready(TIMEOUT).map_err(|e| e.to_string())?
    };
    let rss_kib = if baseline {
        None
    } else {
        let line = node
            .wait_for_line("PID 1's memory", TIMEOUT, |l| {
                l.contains("resident memory ")
            })
            .map_err(|e| e.to_string())?;
        line.split("resident memory ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    Ok(Sample {
        rss_kib,
        guest_ms,
        wall_ms: t.elapsed().as_millis() as u64,
    })
}

fn min_med_max(mut v: Vec<u64>) -> String {
    v.sort_unstable();
    format!("{} / {} / {}", v[0], v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    let runs: usize = std::env::var("ZN_BOOT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let image = image_dir();
    let mut baseline = NodeOptions::new(&image, Boot::Direct);
    baseline.initrd = Some(image.join("baseline-initramfs.img"));
    let disks = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("a directory for the reboot case's disks: {e}");
            std::process::exit(1);
        }
    };
    let mut reboot = NodeOptions::new(&image, Boot::Direct);
    reboot.disks = 0;
    reboot.disk_files = vec![disks.path().join("a.qcow2"), disks.path().join("b.qcow2")];
    if let Err(e) = one(&reboot, false) {
        eprintln!("first boot of the reboot case: {e}");
        std::process::exit(1);
    }
    let new_node = |boot: Boot| {
        let mut o = NodeOptions::new(&image, boot);
        o.disks = 2;
        o
    };
    let cases: Vec<(&str, NodeOptions, bool)> = vec![
        (BASELINE, baseline, true),
        (DIRECT, new_node(Boot::Direct), false),
        ("zeronode uefi", new_node(Boot::Uefi), false),
        ("zeronode pxe", new_node(Boot::Pxe), false),
        (REBOOT, reboot, false),
        (NO_DISKS, NodeOptions::new(&image, Boot::Direct), false),
    ];
    // Round by round, every case once a round: the host's speed drifts by
    // seconds over minutes, and case after case would charge the drift to
    // whichever case ran in the slow minutes.
    // A round opens with the baseline, then the node cases, starting one
    // further each round. On this host the first node boot after the short
    // baseline run (or after a pause) ran 0.5-1 s slower than the same
    // image booted right after another node, already before /init: the
    // host's doing, not the guest's. So the slot after the baseline turns
    // through the node cases (a multiple of 5 rounds gives each the same
    // share), and the baseline itself always follows a node boot. The slot
    // used to stay with the first boot path in all rounds but one.
    let nodes = cases.len() - 1;
    let mut samples: Vec<Vec<Sample>> = cases.iter().map(|_| Vec::new()).collect();
    for round in 0..runs {
        eprintln!("round {} of {runs}", round + 1);
        let order = std::iter::once(0).chain((0..nodes).map(|k| 1 + (round + k) % nodes));
        for i in order {
            let (name, opts, is_baseline) = &cases[i];
            match one(opts, *is_baseline) {
                Ok(s) => samples[i].push(s),
                Err(e) => {
                    eprintln!("{name}: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    println!("boot under QEMU TCG, {runs} rounds of every case, min / median / max");
    println!(
        "{:<26} {:>24} {:>24}",
        "path", "guest ms to user space/ready", "wall ms from QEMU start"
    );
    for ((name, _, _), s) in cases.iter().zip(&samples) {
        println!(
            "{name:<26} {:>24} {:>24}",
            min_med_max(s.iter().map(|s| s.guest_ms).collect()),
            min_med_max(s.iter().map(|s| s.wall_ms).collect())
        );
        let rss: Vec<u64> = s.iter().filter_map(|s| s.rss_kib).collect();
        if !rss.is_empty() {
            println!(
                "{:<26} PID 1 resident at ready, KiB: {}",
                "",
                min_med_max(rss)
            );
        }
    }
    let guest = |name: &str| -> Vec<u64> {
        cases
            .iter()
            .zip(&samples)
            .find(|((n, _, _), _)| *n == name)
            .map(|(_, s)| s.iter().map(|s| s.guest_ms).collect())
            .unwrap_or_default()
    };
    // Each round's own difference, then their median: a pair shares its
    // minute of host speed.
    let added = |name: &str| -> i64 {
        let mut d: Vec<i64> = guest(name)
            .iter()
            .zip(guest(BASELINE))
            .map(|(z, b)| *z as i64 - b as i64)
            .collect();
        d.sort_unstable();
        d.get(d.len() / 2).copied().unwrap_or(0)
    };
    println!(
        "ZeroNode's init adds {} ms of guest time before ready (direct boot, two blank disks, median of each round's difference; target < 1500)",
        added(DIRECT)
    );
    println!(
        "{} ms on a reboot (pools, key and ledger exist), {} ms without disks",
        added(REBOOT),
        added(NO_DISKS)
    );
    println!("\nartifacts");
    for name in [
        "vmlinuz",
        "vmlinux",
        "initramfs.img",
        "zeronode.efi",
        "zeronode.img",
        "zeronode.qcow2",
        "baseline-initramfs.img",
    ] {
        let size = std::fs::metadata(image.join(name))
            .map(|m| m.len())
            .unwrap_or(0);
        println!("{name:<26} {:>8.1} MiB", size as f64 / (1024.0 * 1024.0));
    }
}
