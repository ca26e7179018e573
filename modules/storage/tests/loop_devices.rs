//! The disk policy on real loop devices (root, losetup, mkfs.ext4; btrfs check).

mod common;

use std::io::Write;
use std::path::PathBuf;

use common::{hash_file, make_ext4, LoopDisk, Scratch};
use zeronode_storage::node::{add_late_disk, bring_up_for_cache, finish_pending, remove_disk};
use zeronode_storage::probe::{self, Content};
use zeronode_storage::sysfs::Sysfs;
use zeronode_storage::{bring_up, btrfs, mounts, volumes, Config, DiskState};

fn config(scratch: &Scratch, devices: Vec<PathBuf>, wipe: &[&str]) -> Config {
    Config {
        mnt_root: scratch.mnt_root(),
        cache_dir: scratch.cache(),
        devices: Some(devices),
        sysfs: Sysfs::default(),
        wipe: wipe.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn blank_disk_is_formatted_labelled_and_holds_the_cache() {
    let scratch = Scratch::new();
    let disk = LoopDisk::new(&scratch.path().join("blank.img"), 256);
    let node = bring_up(&config(&scratch, vec![disk.dev.clone()], &[])).unwrap();

    assert_eq!(node.pools.len(), 1, "{:?}", node.disks);
    let pool = &node.pools[0];
    assert!(probe::is_pool_label(&pool.label), "{}", pool.label);
    assert!(matches!(
        &node.disks[0].state,
        DiskState::Pool { formatted: true, wiped: false, label } if *label == pool.label
    ));
    // The label is on the disk, where the next boot reads it.
    assert_eq!(
        probe::probe(&disk.dev, 256 << 20).unwrap(),
        Content::Pool {
            label: pool.label.clone()
        }
    );
    assert_eq!(pool.mount_point, scratch.mnt_root().join(&pool.label));
    let m = mounts::mounted_at(&pool.mount_point)
        .unwrap()
        .expect("pool mounted");
    assert_eq!(m.fs_type, "btrfs");
    // The cache is the pool's `cache` subvolume.
    let c = mounts::mounted_at(&scratch.cache())
        .unwrap()
        .expect("cache mounted");
    assert_eq!((c.fs_type.as_str(), c.root.as_str()), ("btrfs", "/cache"));
    assert_eq!(node.cache.pool.as_deref(), Some(pool.label.as_str()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(scratch.cache())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "the cache holds the node key");
    assert!(node.warnings.is_empty(), "{:?}", node.warnings);
}

#[test]
fn pool_is_reused_and_its_files_survive_a_remount() {
    let scratch = Scratch::new();
    let disk = LoopDisk::new(&scratch.path().join("reuse.img"), 256);
    let cfg = config(&scratch, vec![disk.dev.clone()], &[]);
    let first = bring_up(&cfg).unwrap();
    let label = first.pools[0].label.clone();
    std::fs::write(scratch.cache().join("node.key"), b"marker-42").unwrap();
    std::fs::write(first.pools[0].mount_point.join("marker"), b"pool-marker").unwrap();
    scratch.unmount_all();
    assert!(!scratch.cache().join("node.key").exists());

    let second = bring_up(&cfg).unwrap();
    assert_eq!(second.pools[0].label, label);
    assert!(matches!(
        &second.disks[0].state,
        DiskState::Pool {
            formatted: false,
            ..
        }
    ));
    assert_eq!(
        std::fs::read(scratch.cache().join("node.key")).unwrap(),
        b"marker-42"
    );
    assert_eq!(
        std::fs::read(second.pools[0].mount_point.join("marker")).unwrap(),
        b"pool-marker"
    );

    // A restarted module finds everything mounted and changes nothing.
    let third = bring_up(&cfg).unwrap();
    assert_eq!(third.pools, second.pools);
}

#[test]
fn blank_disks_come_up_together_and_a_copied_pool_is_left_alone() {
    let scratch = Scratch::new();
    let a = LoopDisk::new(&scratch.path().join("a.img"), 256);
    let b = LoopDisk::new(&scratch.path().join("b.img"), 256);
    let first = bring_up(&config(&scratch, vec![a.dev.clone(), b.dev.clone()], &[])).unwrap();
    assert_eq!(first.pools.len(), 2, "{:?}", first.disks);
    assert_ne!(first.pools[0].label, first.pools[1].label);
    // The cache is on the first disk's pool, as in disk order.
    assert_eq!(first.cache.pool.as_ref(), Some(&first.pools[0].label));
    let label_a = first.pools[0].label.clone();
    scratch.unmount_all();
    drop(b);

    // b becomes a byte copy of a (a cloned disk): same label, same fsid.
    std::fs::copy(&a.file, scratch.path().join("b.img")).unwrap();
    let b = LoopDisk::new(&scratch.path().join("b.img"), 256);
    for order in [
        vec![a.dev.clone(), b.dev.clone()],
        vec![b.dev.clone(), a.dev.clone()],
    ] {
        let node = bring_up(&config(&scratch, order.clone(), &[])).unwrap();
        assert_eq!(node.pools.len(), 1, "{:?}", node.disks);
        // The disk listed first is used, whichever thread got there first.
        assert_eq!(node.pools[0].device, order[0]);
        assert_eq!(node.pools[0].label, label_a);
        assert!(
            matches!(&node.disks[1].state, DiskState::LeftAlone(r) if r.contains("already mounted from another disk")),
            "{:?}",
            node.disks[1].state
        );
        scratch.unmount_all();
    }
}

#[test]
fn foreign_disk_is_left_byte_identical() {
    let scratch = Scratch::new();
    let file = scratch.path().join("foreign.img");
    make_ext4(&file, 200);
    let before = hash_file(&file);
    {
        let disk = LoopDisk::new(&file, 0);
        // A wipe naming a disk that is not here changes nothing but warns.
        let node = bring_up(&config(
            &scratch,
            vec![disk.dev.clone()],
            &["NO-SUCH-SERIAL"],
        ))
        .unwrap();
        assert!(node.pools.is_empty());
        match &node.disks[0].state {
            DiskState::LeftAlone(why) => assert!(why.contains("ext4"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(
            node.warnings
                .iter()
                .any(|w| w.contains("NO-SUCH-SERIAL") && w.contains("nothing was erased")),
            "{:?}",
            node.warnings
        );
        // No pool: the cache is on tmpfs.
        assert_eq!(node.cache.pool, None);
        scratch.unmount_all();
    }
    assert_eq!(hash_file(&file), before, "the foreign disk's bytes changed");
}

#[test]
fn foreign_disk_is_erased_only_when_named_by_serial_or_by_id() {
    let scratch = Scratch::new();
    let by_serial = scratch.path().join("old-a.img");
    let by_id = scratch.path().join("old-b.img");
    let kept = scratch.path().join("old-c.img");
    for f in [&by_serial, &by_id, &kept] {
        make_ext4(f, 200);
    }
    let kept_hash = hash_file(&kept);
    let disks = [
        LoopDisk::new(&by_serial, 0),
        LoopDisk::new(&by_id, 0),
        LoopDisk::new(&kept, 0),
    ];
    // Loop devices: the serial is the backing file's name, the by-id name loop-<that>.
    let node = bring_up(&config(
        &scratch,
        disks.iter().map(|d| d.dev.clone()).collect(),
        &["old-a.img", "/dev/disk/by-id/loop-old-b.img"],
    ))
    .unwrap();
    assert_eq!(node.pools.len(), 2, "{:?}", node.disks);
    for (report, disk) in node.disks.iter().zip(&disks).take(2) {
        assert!(
            matches!(
                &report.state,
                DiskState::Pool {
                    formatted: true,
                    wiped: true,
                    ..
                }
            ),
            "{report:?}"
        );
        assert!(matches!(
            probe::probe(&disk.dev, 200 << 20).unwrap(),
            Content::Pool { .. }
        ));
    }
    assert!(matches!(&node.disks[2].state, DiskState::LeftAlone(_)));
    scratch.unmount_all();
    drop(disks);
    assert_eq!(hash_file(&kept), kept_hash);
}

#[test]
fn a_wiped_disk_that_is_already_a_pool_is_not_erased_again() {
    let scratch = Scratch::new();
    let disk = LoopDisk::new(&scratch.path().join("again.img"), 256);
    let cfg = config(&scratch, vec![disk.dev.clone()], &["again.img"]);
    let first = bring_up(&cfg).unwrap();
    std::fs::write(scratch.cache().join("keep"), b"1").unwrap();
    scratch.unmount_all();
    // The same command line on the next boot must not erase the new pool.
    let second = bring_up(&cfg).unwrap();
    assert_eq!(second.pools[0].label, first.pools[0].label);
    assert!(scratch.cache().join("keep").exists());
}

#[test]
fn volume_size_limit_is_enforced() {
    let scratch = Scratch::new();
    let disk = LoopDisk::new(&scratch.path().join("vol.img"), 512);
    let node = bring_up(&config(&scratch, vec![disk.dev.clone()], &[])).unwrap();
    let limit = 16 << 20;
    let path = volumes::create(&node.pools, "web-1", limit).unwrap();
    assert!(btrfs::is_subvolume(&path));
    assert!(matches!(
        volumes::create(&node.pools, "web-1", limit),
        Err(zeronode_storage::StorageError::VolumeExists(_))
    ));

    let mut f = std::fs::File::create(path.join("fill")).unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    let mut written = 0u64;
    let err = loop {
        match f.write_all(&chunk).and_then(|_| f.sync_data()) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(
            written <= 64 << 20,
            "wrote {written} bytes past a {limit}-byte limit"
        );
    };
    let code = err.raw_os_error();
    assert!(
        code == Some(nix::libc::EDQUOT) || code == Some(nix::libc::ENOSPC),
        "{err}"
    );
    assert!(written <= limit, "wrote {written} bytes, limit {limit}");
    drop(f);

    let list = volumes::list(&node.pools).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].name.as_str(), list[0].limit), ("web-1", limit));
    assert!(
        list[0].used >= written,
        "{:?} after {written} bytes",
        list[0]
    );

    volumes::delete(&node.pools, "web-1").unwrap();
    assert!(volumes::list(&node.pools).unwrap().is_empty());
    assert!(matches!(
        volumes::delete(&node.pools, "web-1"),
        Err(zeronode_storage::StorageError::NoSuchVolume(_))
    ));
}

/// A pool is written by our own format (btrfs_format), not mkfs.btrfs:
/// the kernel grows it past its first chunks (a volume with a quota, 200
/// MiB of files where the format made an 8 MiB data chunk) and, unmounted,
/// btrfs-progs' checker finds nothing wrong with any tree.
#[test]
fn a_pool_grows_past_its_first_chunks_and_checks_clean() {
    let scratch = Scratch::new();
    let disk = LoopDisk::new(&scratch.path().join("grow.img"), 512);
    let node = bring_up(&config(&scratch, vec![disk.dev.clone()], &[])).unwrap();
    let vol = volumes::create(&node.pools, "data-1", 300 << 20).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    for i in 0..20 {
        let mut f = std::fs::File::create(vol.join(format!("f{i}"))).unwrap();
        for _ in 0..10 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    std::fs::write(scratch.cache().join("node.key"), b"k").unwrap();
    let used = volumes::list(&node.pools).unwrap()[0].used;
    assert!(used >= 200 << 20, "{used} bytes used");
    scratch.unmount_all();
    let out = std::process::Command::new("btrfs")
        .args(["check", "--readonly"])
        .arg(&disk.dev)
        .output()
        .expect("btrfs (btrfs-progs) runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_disk_means_a_tmpfs_cache_and_a_warning() {
    let scratch = Scratch::new();
    let node = bring_up(&config(&scratch, vec![], &[])).unwrap();
    assert!(node.pools.is_empty());
    assert_eq!(node.cache.pool, None);
    assert!(
        node.warnings.iter().any(|w| w.contains("survive a reboot")),
        "{:?}",
        node.warnings
    );
    let m = mounts::mounted_at(&scratch.cache())
        .unwrap()
        .expect("tmpfs on the cache");
    assert_eq!(m.fs_type, "tmpfs");
}

#[test]
fn a_partition_or_a_missing_device_is_refused_before_anything_changes() {
    let scratch = Scratch::new();
    let err = bring_up(&config(&scratch, vec!["/dev/nonexistent".into()], &[])).unwrap_err();
    assert!(err.to_string().contains("/dev/nonexistent"), "{err}");
    let err = bring_up(&config(&scratch, vec!["/dev/null".into()], &[])).unwrap_err();
    assert!(err.to_string().contains("not a block device"), "{err}");
    assert!(
        !scratch.cache().exists(),
        "nothing may be set up on bad input"
    );
}

/// Marks a loop device as an SSD (queue/rotational is writable), undone on drop.
struct Rotational(PathBuf);

impl Rotational {
    fn ssd(dev: &std::path::Path) -> Rotational {
        let name = dev.file_name().unwrap().to_string_lossy().into_owned();
        let attr = PathBuf::from(format!("/sys/block/{name}/queue/rotational"));
        std::fs::write(&attr, "0").unwrap();
        Rotational(attr)
    }
}

impl Drop for Rotational {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "1");
    }
}

#[test]
fn cache_prefers_an_ssd_and_then_stays_on_its_pool() {
    let scratch = Scratch::new();
    let hdd = LoopDisk::new(&scratch.path().join("hdd.img"), 256);
    let ssd = LoopDisk::new(&scratch.path().join("ssd.img"), 256);
    let _ssd_flag = Rotational::ssd(&ssd.dev);
    let node = bring_up(&config(
        &scratch,
        vec![hdd.dev.clone(), ssd.dev.clone()],
        &[],
    ))
    .unwrap();
    assert_eq!(node.pools.len(), 2);
    assert!(!node.pools[0].ssd && node.pools[1].ssd);
    assert_eq!(node.cache.pool.as_ref(), Some(&node.pools[1].label));
    std::fs::write(scratch.cache().join("node.key"), b"k").unwrap();
    scratch.unmount_all();

    // A new blank SSD listed first must not take the cache away.
    let new_ssd = LoopDisk::new(&scratch.path().join("new.img"), 256);
    let _new_flag = Rotational::ssd(&new_ssd.dev);
    let devices = vec![new_ssd.dev.clone(), hdd.dev.clone(), ssd.dev.clone()];
    let node2 = bring_up(&config(&scratch, devices, &[])).unwrap();
    assert_eq!(node2.pools.len(), 3);
    assert_eq!(node2.cache.pool, node.cache.pool);
    assert_eq!(
        std::fs::read(scratch.cache().join("node.key")).unwrap(),
        b"k"
    );
}

/// What the service does before it answers: only the blank disk the cache
/// goes to is formatted (an SSD before a disk listed earlier); the other
/// blank disk waits for `finish_pending`. With a pool to reuse, no blank
/// disk is formatted before.
#[test]
fn only_the_cache_waits_for_a_format() {
    let scratch = Scratch::new();
    let hdd = LoopDisk::new(&scratch.path().join("hdd.img"), 256);
    let ssd = LoopDisk::new(&scratch.path().join("ssd.img"), 256);
    let _ssd_flag = Rotational::ssd(&ssd.dev);
    let cfg = config(&scratch, vec![hdd.dev.clone(), ssd.dev.clone()], &[]);
    let up = bring_up_for_cache(&cfg).unwrap();
    assert_eq!(up.node.pools.len(), 1, "{:?}", up.node.disks);
    assert_eq!(up.node.pools[0].device, ssd.dev);
    assert_eq!(up.node.cache.pool.as_ref(), Some(&up.node.pools[0].label));
    // The waiting disk is listed already, as waiting.
    assert_eq!(up.node.disks.len(), 2);
    assert_eq!(up.node.disks[1].disk.dev, hdd.dev);
    assert!(matches!(up.node.disks[1].state, DiskState::Formatting));
    let pending: Vec<_> = up.pending.iter().map(|p| p.disk().dev.clone()).collect();
    assert_eq!(pending, std::slice::from_ref(&hdd.dev));
    assert_eq!(probe::probe(&hdd.dev, 256 << 20).unwrap(), Content::Blank);
    let node = std::sync::RwLock::new(up.node);
    finish_pending(&cfg, &node, up.pending);
    let n = node.read().unwrap();
    assert_eq!(n.pools.len(), 2, "{:?}", n.disks);
    // Listed once, now as the pool it became.
    assert_eq!(n.disks.len(), 2, "{:?}", n.disks);
    assert!(matches!(
        &n.disks[1].state,
        DiskState::Pool {
            formatted: true,
            ..
        }
    ));
    assert_eq!(n.cache.pool.as_ref(), Some(&n.pools[0].label));
    drop(n);
    scratch.unmount_all();

    // Next boot, a new blank disk beside the two pools: nothing is formatted
    // before the service answers.
    let new = LoopDisk::new(&scratch.path().join("new.img"), 256);
    let devices = vec![new.dev.clone(), hdd.dev.clone(), ssd.dev.clone()];
    let up = bring_up_for_cache(&config(&scratch, devices, &[])).unwrap();
    assert_eq!(up.node.pools.len(), 2, "{:?}", up.node.disks);
    assert!(up.node.disks.iter().all(|d| match d.state {
        DiskState::Pool { formatted, .. } => !formatted,
        DiskState::Formatting => d.disk.dev == new.dev,
        _ => false,
    }));
    assert_eq!(up.pending.len(), 1);
    assert_eq!(up.pending[0].disk().dev, new.dev);
}

#[test]
fn disk_with_an_efi_system_partition_is_never_erased() {
    let scratch = Scratch::new();
    let file = scratch.path().join("boot.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    // sfdisk (util-linux): a GPT with one EFI system partition, as our image has.
    let mut sfdisk = std::process::Command::new("sfdisk")
        .args(["--quiet"])
        .arg(&file)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk runs");
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: gpt\n,64M,U\n")
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    let before = hash_file(&file);
    {
        let disk = LoopDisk::new(&file, 0);
        let node = bring_up(&config(&scratch, vec![disk.dev.clone()], &["boot.img"])).unwrap();
        match &node.disks[0].state {
            DiskState::LeftAlone(why) => {
                assert!(
                    why.contains("EFI system partition") && why.contains("never erased"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        scratch.unmount_all();
    }
    assert_eq!(hash_file(&file), before);
}

/// The /sys/block scan path on loop devices: a fake sysfs tree whose disks
/// are virtio-style (`vd*`) and whose /dev nodes are links to loop devices.
#[test]
fn scanned_disks_follow_the_policy_and_wipe_by_virtio_by_id() {
    let scratch = Scratch::new();
    let sys = scratch.path().join("sys");
    let dev = scratch.path().join("dev");
    std::fs::create_dir_all(&dev).unwrap();
    let foreign = scratch.path().join("f.img");
    make_ext4(&foreign, 200);
    let loops = [
        LoopDisk::new(&foreign, 0),
        LoopDisk::new(&scratch.path().join("ro.img"), 200),
        LoopDisk::new(&scratch.path().join("held.img"), 200),
        LoopDisk::new(&scratch.path().join("usb.img"), 200),
    ];
    let fake = |name: &str, target: &std::path::Path, extra: &[(&str, &str)]| {
        let d = sys.join("block").join(name);
        std::fs::create_dir_all(d.join("queue")).unwrap();
        std::fs::create_dir_all(d.join("holders")).unwrap();
        std::fs::write(d.join("size"), format!("{}", (200u64 << 20) / 512)).unwrap();
        for (k, v) in [("queue/rotational", "0"), ("removable", "0"), ("ro", "0")]
            .iter()
            .chain(extra)
        {
            let p = d.join(k);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        }
        std::os::unix::fs::symlink(target, dev.join(name)).unwrap();
    };
    fake("vdz", &loops[0].dev, &[("serial", "WIPE-ME")]);
    fake("vdy", &loops[1].dev, &[("serial", "RO-1"), ("ro", "1")]);
    fake(
        "vdx",
        &loops[2].dev,
        &[("serial", "HELD-1"), ("holders/dm-0", "")],
    );
    fake(
        "vdw",
        &loops[3].dev,
        &[("serial", "USB-1"), ("removable", "1")],
    );
    fake("loop9", &loops[3].dev, &[]);
    fake("zram0", &loops[3].dev, &[]);

    let mut cfg = config(
        &scratch,
        vec![],
        &[
            "/dev/disk/by-id/virtio-WIPE-ME",
            "/dev/disk/by-id/virtio-NOPE",
        ],
    );
    cfg.devices = None;
    cfg.sysfs = Sysfs {
        root: sys.clone(),
        dev_dir: dev.clone(),
    };
    let node = bring_up(&cfg).unwrap();
    let states: Vec<(&str, String)> = node
        .disks
        .iter()
        .map(|r| (r.disk.name.as_str(), format!("{:?}", r.state)))
        .collect();
    assert_eq!(states.len(), 4, "loop and zram are not disks: {states:?}");
    let state = |name: &str| states.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    assert!(state("vdw").contains("removable"), "{states:?}");
    assert!(state("vdx").contains("in use by dm-0"), "{states:?}");
    assert!(state("vdy").contains("read-only"), "{states:?}");
    assert!(state("vdz").contains("wiped: true"), "{states:?}");
    assert_eq!(node.pools.len(), 1);
    assert!(node.pools[0].ssd);
    assert!(
        node.warnings.iter().any(|w| w.contains("virtio-NOPE")),
        "{:?}",
        node.warnings
    );
    // The disks left alone are still all zero.
    for l in &loops[1..] {
        assert_eq!(probe::probe(&l.dev, 200 << 20).unwrap(), Content::Blank);
    }
}

#[test]
fn a_mounted_disk_named_in_wipe_is_refused_by_the_kernel() {
    let scratch = Scratch::new();
    let file = scratch.path().join("busy.img");
    make_ext4(&file, 200);
    let disk = LoopDisk::new(&file, 0);
    let mnt = scratch.path().join("busy");
    std::fs::create_dir_all(&mnt).unwrap();
    nix::mount::mount(
        Some(&disk.dev),
        &mnt,
        Some("ext4"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let node = bring_up(&config(&scratch, vec![disk.dev.clone()], &["busy.img"])).unwrap();
    match &node.disks[0].state {
        DiskState::Failed(e) => assert!(e.contains("exclusively"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(std::fs::read(mnt.join("precious.txt"))
        .unwrap()
        .starts_with(b"someone's"));
    assert!(matches!(
        probe::probe(&disk.dev, 200 << 20).unwrap(),
        Content::Foreign { what, .. } if what.contains("ext4")
    ));
}

#[test]
fn a_late_disk_becomes_a_pool_once_leaves_when_unplugged_and_comes_back() {
    let scratch = Scratch::new();
    let first = LoopDisk::new(&scratch.path().join("first.img"), 256);
    let cfg = config(&scratch, vec![first.dev.clone()], &[]);
    let node = std::sync::RwLock::new(bring_up(&cfg).unwrap());
    let cache_pool = node.read().unwrap().cache.pool.clone();
    assert!(cache_pool.is_some());

    let late = LoopDisk::new(&scratch.path().join("late.img"), 256);
    let name = late.dev.file_name().unwrap().to_str().unwrap().to_string();
    let state = add_late_disk(&cfg, &node, &name).expect("a new disk is taken");
    let DiskState::Pool {
        label,
        formatted: true,
        ..
    } = state
    else {
        panic!("late disk not pooled: {state:?}");
    };
    {
        let n = node.read().unwrap();
        assert_eq!(n.pools.len(), 2);
        let pool = n.pools.iter().find(|p| p.label == label).unwrap();
        let m = mounts::mounted_at(&pool.mount_point).unwrap().unwrap();
        assert_eq!(m.fs_type, "btrfs");
        // Volumes may go there; the cache stays where bring-up put it.
        assert_eq!(n.cache.pool, cache_pool);
        assert_eq!(n.disks.len(), 2);
    }
    // Announced twice (a rescan after lost events): nothing happens again.
    assert_eq!(add_late_disk(&cfg, &node, &name), None);
    assert_eq!(node.read().unwrap().pools.len(), 2);
    // A disk that is gone again by the time it is looked at is skipped.
    assert_eq!(add_late_disk(&cfg, &node, "loop-gone"), None);

    // Unplugged: the pool leaves service and its mount goes.
    let mount_point = {
        let n = node.read().unwrap();
        n.pools
            .iter()
            .find(|p| p.label == label)
            .unwrap()
            .mount_point
            .clone()
    };
    let report = remove_disk(&node, &name).expect("a known disk is dropped");
    assert!(matches!(report.state, DiskState::Pool { .. }));
    {
        let n = node.read().unwrap();
        assert_eq!(n.pools.len(), 1);
        assert!(n.pools.iter().all(|p| p.label != label));
        assert_eq!(n.disks.len(), 1);
        assert_eq!(n.cache.pool, cache_pool);
    }
    assert!(mounts::mounted_at(&mount_point).unwrap().is_none());
    assert!(!mount_point.exists());
    assert!(remove_disk(&node, &name).is_none(), "removed twice");
    // Plugged back: its pool is reused as it was.
    let state = add_late_disk(&cfg, &node, &name).expect("a disk back is taken");
    assert_eq!(
        state,
        DiskState::Pool {
            label: label.clone(),
            formatted: false,
            wiped: false,
        }
    );
    assert_eq!(node.read().unwrap().pools.len(), 2);
}
