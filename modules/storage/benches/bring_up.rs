//! Time to pools mounted on loop devices: `cargo bench -p zeronode-storage`.
//! Needs root and losetup; prints a table (median of N runs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags};
use zeronode_storage::sysfs::Sysfs;
use zeronode_storage::{bring_up, mounts, volumes, Config};

const RUNS: usize = 5;
const DISK_MIB: u64 = 1024;

struct Loop(PathBuf);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let f = std::fs::File::create(file).expect("backing file");
        f.set_len(DISK_MIB << 20).expect("sparse size");
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .expect("losetup runs");
        assert!(out.status.success(), "losetup failed");
        Loop(String::from_utf8_lossy(&out.stdout).trim().into())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

fn unmount_under(root: &Path) {
    let mut under: Vec<PathBuf> = mounts::mounts()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(root))
        .collect();
    under.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in under {
        let _ = umount2(&p, MntFlags::MNT_DETACH);
    }
}

/// Unmounts on drop, also when a step panics.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        unmount_under(&self.0);
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("bring_up bench: needs root for loop devices and mounts; skipped");
        return;
    }
    let mut rows: Vec<(&str, Vec<Duration>)> = vec![
        ("2 blank disks: format + mount + cache", vec![]),
        ("2 pools reused: mount + cache", vec![]),
        ("restart, all mounted already", vec![]),
        ("VolumeCreate (quota on, subvol, limit)", vec![]),
        ("VolumeList (sync + qgroup read)", vec![]),
        ("VolumeDelete", vec![]),
    ];
    for _ in 0..RUNS {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = std::fs::canonicalize(dir.path()).expect("canonical temp dir");
        let loops = [
            Loop::attach(&root.join("a.img")),
            Loop::attach(&root.join("b.img")),
        ];
        let _unmount = Unmount(root.clone());
        let cfg = Config {
            mnt_root: root.join("mnt"),
            cache_dir: root.join("cache"),
            devices: Some(loops.iter().map(|l| l.0.clone()).collect()),
            sysfs: Sysfs::default(),
            wipe: vec![],
        };
        let t = Instant::now();
        let node = bring_up(&cfg).expect("first bring-up");
        rows[0].1.push(t.elapsed());
        assert_eq!(node.pools.len(), 2);
        unmount_under(&root);
        let t = Instant::now();
        let node = bring_up(&cfg).expect("reuse");
        rows[1].1.push(t.elapsed());
        let t = Instant::now();
        bring_up(&cfg).expect("restart");
        rows[2].1.push(t.elapsed());
        let t = Instant::now();
        volumes::create(&node.pools, "bench", 64 << 20).expect("volume");
        rows[3].1.push(t.elapsed());
        let t = Instant::now();
        volumes::list(&node.pools).expect("list");
        rows[4].1.push(t.elapsed());
        let t = Instant::now();
        volumes::delete(&node.pools, "bench").expect("delete");
        rows[5].1.push(t.elapsed());
    }
    println!(
        "storage bring-up on loop devices ({DISK_MIB} MiB sparse files), median of {RUNS} runs"
    );
    println!(
        "{:<42} {:>10} {:>10} {:>10}",
        "step", "median ms", "min ms", "max ms"
    );
    for (name, times) in rows {
        let min = times.iter().min().copied().unwrap_or_default();
        let max = times.iter().max().copied().unwrap_or_default();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:<42} {:>10.1} {:>10.1} {:>10.1}",
            name,
            ms(median(times)),
            ms(min),
            ms(max)
        );
    }
}
