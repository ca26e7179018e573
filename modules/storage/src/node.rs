//! Bring-up: every disk through the policy (pool it, reuse it, or leave it
//! alone), then the node cache on the first pool.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use crate::btrfs;
use crate::btrfs_format;
use crate::dbus::read_node;
use crate::error::{io, Result, StorageError};
use crate::mounts;
use crate::probe::{self, Content, MIB};
use crate::sysfs::{Disk, Sysfs};

/// Smaller blank disks are not worth a pool.
pub const MIN_POOL_BYTES: u64 = 128 * MIB;
/// The subvolume of a pool that holds the node cache.
pub const CACHE_SUBVOLUME: &str = "cache";

#[derive(Debug, Clone)]
pub struct Config {
    /// Pools mount at `<mnt_root>/<label>`.
    pub mnt_root: PathBuf,
    /// The node cache (/var/cache/zeronode on a node).
    pub cache_dir: PathBuf,
    /// Explicit devices instead of scanning /sys/block (loop devices allowed).
    pub devices: Option<Vec<PathBuf>>,
    pub sysfs: Sysfs,
    /// `zeronode.wipe=` values: serials or /dev/disk/by-id/ paths.
    pub wipe: Vec<String>,
}

/// A mounted pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub label: String,
    pub device: PathBuf,
    pub mount_point: PathBuf,
    pub ssd: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskState {
    /// Part of pool `label`; `formatted` now (blank, or wiped first).
    Pool {
        label: String,
        formatted: bool,
        wiped: bool,
    },
    /// Not touched; why.
    LeftAlone(String),
    /// The policy wanted to pool it and failed; the error.
    Failed(String),
    /// Blank, and waiting for its format as a pool ([`finish_pending`]: on
    /// a node after the ready line, see `--format-more-after`); it then
    /// takes one of the states above.
    Formatting,
}

#[derive(Debug, Clone)]
pub struct DiskReport {
    pub disk: Disk,
    pub state: DiskState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    pub path: PathBuf,
    /// The pool holding it; None: tmpfs, lost at reboot.
    pub pool: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub pools: Vec<Pool>,
    pub disks: Vec<DiskReport>,
    pub cache: Cache,
    /// What the console should show (wipe naming no disk, no disk at all).
    pub warnings: Vec<String>,
}

/// Brings every disk up under the policy and sets up the cache: what the
/// service does before it answers ([`bring_up_for_cache`]), then the blank
/// disks that could wait ([`finish_pending`]). Disks and pools are listed
/// in disk order.
pub fn bring_up(cfg: &Config) -> Result<Node> {
    let BringUp {
        node,
        pending,
        order,
    } = bring_up_for_cache(cfg)?;
    let node = RwLock::new(node);
    finish_pending(cfg, &node, pending);
    let mut node = node.into_inner().unwrap_or_else(|p| p.into_inner());
    let at = |dev: &Path| order.iter().position(|d| d == dev);
    node.disks.sort_by_key(|r| at(&r.disk.dev));
    node.pools.sort_by_key(|p| at(&p.device));
    Ok(node)
}

/// The disks as far as the node cache needs them, and the blank disks
/// still to format.
#[derive(Debug)]
pub struct BringUp {
    pub node: Node,
    /// Blank disks to format once the service answers: the cache is on a
    /// pool already, so nothing on the way to the node's ready line waits
    /// for their format. `Disks` and `Pools` list each once it is done.
    pub pending: Vec<Pending>,
    /// Every disk, in disk order.
    order: Vec<PathBuf>,
}

/// A blank disk [`bring_up_for_cache`] left for [`finish_pending`].
#[derive(Debug)]
pub struct Pending {
    disk: Disk,
    plan: Plan,
}

impl Pending {
    pub fn disk(&self) -> &Disk {
        &self.disk
    }
}

/// Brings up every disk but the blank ones, and as many of those as the
/// node cache needs: existing pools are mounted (the cache is on one of
/// them); with none, one blank disk is formatted for it (the first SSD,
/// else the first disk; the next if that fails). A bad device in
/// `cfg.devices` fails before anything is written; a disk that fails later
/// is reported and the others go on.
pub fn bring_up_for_cache(cfg: &Config) -> Result<BringUp> {
    let disks = match &cfg.devices {
        Some(devs) => devs
            .iter()
            .map(|d| cfg.sysfs.disk_of_node(d))
            .collect::<Result<Vec<_>>>()?,
        None => cfg.sysfs.scan()?,
    };
    let mut warnings = Vec::new();
    for reference in &cfg.wipe {
        if !disks.iter().any(|d| d.matches(reference)) {
            let w = format!(
                "zeronode.wipe={reference}: no disk with that serial or by-id name is present; nothing was erased"
            );
            tracing::warn!("{w}");
            warnings.push(w);
        }
    }
    let t = std::time::Instant::now();
    // Each disk is read once, all at once (the reads mostly wait on the
    // disks), then judged in disk order, so which of two copies of a pool
    // is used stays the same from boot to boot.
    let surveys: Vec<Result<Survey>> = std::thread::scope(|scope| {
        let handles: Vec<_> = disks
            .iter()
            .map(|disk| scope.spawn(move || survey(disk)))
            .collect();
        handles
            .into_iter()
            .zip(&disks)
            .map(|(h, disk)| h.join().unwrap_or_else(|_| Err(panicked(disk))))
            .collect()
    });
    tracing::debug!(
        "storage: {} disk(s) surveyed in {} ms",
        disks.len(),
        t.elapsed().as_millis()
    );
    let mut seen = BTreeSet::new();
    let plans: Vec<Result<Plan>> = disks
        .iter()
        .zip(surveys)
        .map(|(disk, survey)| {
            let wipe = cfg.wipe.iter().any(|r| disk.matches(r));
            survey.map(|survey| match survey {
                Survey::Holds(Content::Pool { label }) if !seen.insert(label.clone()) => {
                    Plan::Left(copy_of_a_mounted_pool(&label))
                }
                Survey::Holds(content) => plan(disk, wipe, content),
                Survey::Left(reason) => Plan::Left(reason),
            })
        })
        .collect();
    let reusing = plans.iter().any(|p| matches!(p, Ok(Plan::Reuse(_))));
    let mut now = Vec::new();
    let mut blanks = Vec::new();
    for (i, plan) in plans.into_iter().enumerate() {
        match plan {
            Ok(plan @ Plan::Format { .. }) => blanks.push((i, plan)),
            other => now.push((i, other)),
        }
    }
    // In the order the cache prefers them: SSDs first.
    blanks.sort_by_key(|(i, _)| (disks[*i].rotational, *i));
    let mut blanks = blanks.into_iter();
    if !reusing {
        now.extend(blanks.next().map(|(i, plan)| (i, Ok(plan))));
    }
    // In parallel: mounting and formatting mostly wait on the disk.
    let mut outcomes: Vec<(usize, Result<Outcome>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = now
            .into_iter()
            .map(|(i, plan)| {
                let disk = &disks[i];
                (i, scope.spawn(move || act(cfg, disk, plan?)))
            })
            .collect();
        handles
            .into_iter()
            .map(|(i, h)| (i, h.join().unwrap_or_else(|_| Err(panicked(&disks[i])))))
            .collect()
    });
    outcomes.sort_by_key(|(i, _)| *i);
    let mut pools: Vec<Pool> = Vec::new();
    let mut reports = Vec::new();
    let mut report = |i: usize, outcome, pools: &mut Vec<Pool>| {
        let state = settle(&disks[i], outcome, pools);
        reports.push(DiskReport {
            disk: disks[i].clone(),
            state,
        });
    };
    for (i, outcome) in outcomes {
        report(i, outcome, &mut pools);
    }
    // No pool yet (none to reuse mounted, or the first blank disk failed):
    // the next blank disk, one at a time, until one holds the cache.
    while pools.is_empty() {
        let Some((i, plan)) = blanks.next() else {
            break;
        };
        report(i, act(cfg, &disks[i], plan), &mut pools);
    }
    let pending: Vec<Pending> = blanks
        .map(|(i, plan)| Pending {
            disk: disks[i].clone(),
            plan,
        })
        .collect();
    // Listed from now on, so that Disks shows every disk while the node
    // waits to format these.
    reports.extend(pending.iter().map(|p| DiskReport {
        disk: p.disk.clone(),
        state: DiskState::Formatting,
    }));
    let t = std::time::Instant::now();
    let cache = setup_cache(cfg, &pools, &mut warnings)?;
    tracing::debug!("storage: cache set up in {} ms", t.elapsed().as_millis());
    Ok(BringUp {
        node: Node {
            pools,
            disks: reports,
            cache,
            warnings,
        },
        pending,
        order: disks.into_iter().map(|d| d.dev).collect(),
    })
}

/// Formats the disks [`bring_up_for_cache`] left, in parallel; each joins
/// `node` (its report, and its pool in service) as soon as it is done.
pub fn finish_pending(cfg: &Config, node: &RwLock<Node>, pending: Vec<Pending>) {
    std::thread::scope(|scope| {
        for Pending { disk, plan } in pending {
            scope.spawn(move || {
                let outcome = act(cfg, &disk, plan);
                let mut n = node.write().unwrap_or_else(|p| p.into_inner());
                let state = settle(&disk, outcome, &mut n.pools);
                match n.disks.iter_mut().find(|r| r.disk.dev == disk.dev) {
                    Some(listed) => listed.state = state,
                    None => n.disks.push(DiskReport { disk, state }),
                }
            });
        }
    });
}

fn panicked(disk: &Disk) -> StorageError {
    StorageError::BadDevice {
        path: disk.dev.clone(),
        reason: "its bring-up thread panicked".into(),
    }
}

/// A disk that came after bring-up (hot-plugged, or announced late by its
/// controller: a SATA disk behind AHCI's asynchronous port scan, a USB
/// disk): the boot's policy, then it joins `node`. The cache stays where
/// bring-up put it. None when the disk is known already (or gone).
pub fn add_late_disk(cfg: &Config, node: &RwLock<Node>, name: &str) -> Option<DiskState> {
    let known = |n: &Node| n.disks.iter().any(|r| r.disk.name == name);
    if known(&read_node(node)) {
        return None;
    }
    let disk = match cfg.sysfs.disk(name) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("late disk {name}: {e}");
            return None;
        }
    };
    let wipe = cfg.wipe.iter().any(|r| disk.matches(r));
    let outcome = survey(&disk).and_then(|survey| match survey {
        Survey::Holds(Content::Pool { label })
            if read_node(node).pools.iter().any(|p| p.label == label) =>
        {
            Ok(Outcome::Left(copy_of_a_mounted_pool(&label)))
        }
        Survey::Left(reason) => Ok(Outcome::Left(reason)),
        Survey::Holds(content) => act(cfg, &disk, plan(&disk, wipe, content)),
    });
    // One watcher calls this: nobody added the disk meanwhile.
    let mut n = node.write().unwrap_or_else(|p| p.into_inner());
    let state = settle(&disk, outcome, &mut n.pools);
    n.disks.push(DiskReport {
        disk,
        state: state.clone(),
    });
    Some(state)
}

/// A disk the kernel removed (unplugged, or its controller gone): its
/// report goes, so the disk is taken anew if it comes back, and a pool on
/// it leaves service: no longer offered for volumes, and unmounted (what
/// workloads hold open fails on its own). Returns the report it dropped.
pub fn remove_disk(node: &RwLock<Node>, name: &str) -> Option<DiskReport> {
    let mut n = node.write().unwrap_or_else(|p| p.into_inner());
    let at = n.disks.iter().position(|r| r.disk.name == name)?;
    let report = n.disks.remove(at);
    if let DiskState::Pool { label, .. } = &report.state {
        if let Some(i) = n.pools.iter().position(|p| &p.label == label) {
            let pool = n.pools.remove(i);
            if let Err(e) = mounts::detach(&pool.mount_point) {
                tracing::warn!("pool {label}: {e}");
            }
            // Empty once detached; a mount point left behind would look like a pool.
            let _ = std::fs::remove_dir(&pool.mount_point);
        }
    }
    Some(report)
}

/// Why a second disk holding an already mounted pool is left alone.
fn copy_of_a_mounted_pool(label: &str) -> String {
    format!("ZeroNode pool {label} is already mounted from another disk (a copy?)")
}

/// A disk's outcome as its report says it: a pool joins `pools`; being
/// left alone or failing is logged.
fn settle(disk: &Disk, outcome: Result<Outcome>, pools: &mut Vec<Pool>) -> DiskState {
    match outcome {
        Ok(Outcome::Pooled(pool, state)) => {
            pools.push(pool);
            state
        }
        Ok(Outcome::Left(reason)) => {
            tracing::info!("{}: left alone: {reason}", disk.dev.display());
            DiskState::LeftAlone(reason)
        }
        Err(e) => {
            tracing::error!("{}: {e}", disk.dev.display());
            DiskState::Failed(e.to_string())
        }
    }
}

enum Outcome {
    Pooled(Pool, DiskState),
    Left(String),
}

/// A disk before the policy acts on it: left alone without reading it, or
/// what it holds.
enum Survey {
    Left(String),
    Holds(Content),
}

fn survey(disk: &Disk) -> Result<Survey> {
    if disk.read_only {
        return Ok(Survey::Left("read-only".into()));
    }
    if !disk.holders.is_empty() {
        return Ok(Survey::Left(format!(
            "in use by {}",
            disk.holders.join(", ")
        )));
    }
    if disk.size_bytes == 0 {
        return Ok(Survey::Left("no medium".into()));
    }
    Ok(Survey::Holds(probe::probe(&disk.dev, disk.size_bytes)?))
}

/// What the policy does with a disk, decided from what it holds before
/// anything is written.
#[derive(Debug)]
enum Plan {
    /// Mount ZeroNode pool `label` and use it as it is.
    Reuse(String),
    /// Make a new pool; first erase the signatures of `erase`, a foreign
    /// disk `zeronode.wipe=` names.
    Format {
        erase: Option<String>,
    },
    Left(String),
}

fn plan(disk: &Disk, wipe: bool, content: Content) -> Plan {
    let too_small = disk.size_bytes < MIN_POOL_BYTES;
    let small = || {
        format!(
            "smaller than {} MiB, too small for a pool",
            MIN_POOL_BYTES / MIB
        )
    };
    match content {
        Content::Pool { label } => {
            if wipe {
                tracing::warn!(
                    "{}: named in zeronode.wipe= but already ZeroNode pool {label}: reused, not erased (take it off the command line)",
                    disk.dev.display()
                );
            }
            Plan::Reuse(label)
        }
        Content::Blank if disk.removable && !wipe => {
            Plan::Left("removable medium (blank; name it in zeronode.wipe= to use it)".into())
        }
        Content::Blank if too_small => Plan::Left(format!("blank but {}", small())),
        Content::Blank => Plan::Format { erase: None },
        Content::Foreign { what, .. } if !wipe => Plan::Left(what),
        Content::Foreign {
            what,
            boot_medium: true,
        } => Plan::Left(format!(
            "{what}: a boot medium is never erased, zeronode.wipe= refused"
        )),
        Content::Foreign { what, .. } if too_small => {
            Plan::Left(format!("{what}: {}; not erased", small()))
        }
        Content::Foreign { what, .. } => Plan::Format { erase: Some(what) },
    }
}

fn act(cfg: &Config, disk: &Disk, plan: Plan) -> Result<Outcome> {
    let erase = match plan {
        Plan::Left(reason) => return Ok(Outcome::Left(reason)),
        Plan::Reuse(label) => return reuse(cfg, disk, label),
        Plan::Format { erase } => erase,
    };
    let wiped = erase.is_some();
    if let Some(what) = erase {
        tracing::warn!(
            "{}: erasing {what} as zeronode.wipe= asks",
            disk.dev.display()
        );
        wipe_signatures(&disk.dev, disk.size_bytes)?;
        if probe::probe(&disk.dev, disk.size_bytes)? != Content::Blank {
            return Err(StorageError::BadDevice {
                path: disk.dev.clone(),
                reason: "still not blank after erasing its signatures".into(),
            });
        }
    }
    let uuid = random_uuid()?;
    let label = probe::pool_label(&uuid);
    let t = std::time::Instant::now();
    let id = btrfs_format::Identity {
        label: label.clone(),
        fsid: uuid,
        dev_uuid: random_uuid()?,
        chunk_tree_uuid: random_uuid()?,
        fs_tree_uuid: random_uuid()?,
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    btrfs_format::format(&disk.dev, disk.size_bytes, &id)?;
    let formatted = t.elapsed();
    let pool = mount_pool(cfg, disk, &label)?;
    tracing::info!(
        "{}: formatted as pool {label} in {} ms, mounted at {} in {} ms",
        disk.dev.display(),
        formatted.as_millis(),
        pool.mount_point.display(),
        (t.elapsed() - formatted).as_millis()
    );
    Ok(Outcome::Pooled(
        pool,
        DiskState::Pool {
            label,
            formatted: true,
            wiped,
        },
    ))
}

fn reuse(cfg: &Config, disk: &Disk, label: String) -> Result<Outcome> {
    let t = std::time::Instant::now();
    let pool = mount_pool(cfg, disk, &label)?;
    tracing::info!(
        "{}: pool {label} reused at {} (mounted in {} ms)",
        disk.dev.display(),
        pool.mount_point.display(),
        t.elapsed().as_millis()
    );
    Ok(Outcome::Pooled(
        pool,
        DiskState::Pool {
            label,
            formatted: false,
            wiped: false,
        },
    ))
}

/// Mounts pool `label` from `disk` at `<mnt_root>/<label>`, unless a
/// previous run of this module mounted it there already.
fn mount_pool(cfg: &Config, disk: &Disk, label: &str) -> Result<Pool> {
    let mount_point = cfg.mnt_root.join(label);
    match mounts::mounted_at(&mount_point)? {
        Some(m) if m.fs_type == "btrfs" && m.root == "/" => {}
        Some(m) => {
            return Err(StorageError::BadDevice {
                path: mount_point,
                reason: format!("already holds a {} mount of {}", m.fs_type, m.source),
            })
        }
        None => mounts::mount_btrfs(&disk.dev, &mount_point)?,
    }
    Ok(Pool {
        label: label.into(),
        device: disk.dev.clone(),
        mount_point,
        ssd: !disk.rotational,
    })
}

/// Zeroes what any signature can live in under our blank rule: the first
/// and last MiB and the btrfs superblock copies. The device is opened
/// exclusively, so the kernel refuses it while mounted or held.
pub fn wipe_signatures(dev: &Path, size: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_EXCL)
        .open(dev)
        .map_err(io(dev, "opening exclusively to erase (mounted or in use?)"))?;
    let zeros = vec![0u8; MIB as usize];
    let mut spans = vec![
        (0, MIB.min(size)),
        (size.saturating_sub(MIB), MIB.min(size)),
    ];
    for at in [64u64 << 20, 256 << 30] {
        if at + 4096 <= size {
            spans.push((at, 4096));
        }
    }
    for (at, len) in spans {
        file.write_all_at(&zeros[..len as usize], at)
            .map_err(io(dev, "erasing signatures"))?;
    }
    file.sync_all().map_err(io(dev, "flushing the erase"))?;
    nix::ioctl_none!(blkrrpart, 0x12, 95);
    // SAFETY: BLKRRPART takes no argument. The kernel drops the partitions
    // it knew; loop devices without partition scanning say EINVAL.
    if let Err(e) = unsafe { blkrrpart(file.as_raw_fd()) } {
        tracing::debug!("{}: re-reading partitions: {e}", dev.display());
    }
    Ok(())
}

fn random_uuid() -> Result<[u8; 16]> {
    let mut b = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io("/dev/urandom", "reading"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(b)
}

/// The pool for the cache: one that holds a cache already (so a disk added
/// later never takes the node key's place), else the first SSD pool, else
/// the first pool; SSD first among several with a cache.
pub fn choose_cache_pool(pools: &[Pool], has_cache: impl Fn(&Pool) -> bool) -> Option<&Pool> {
    let rank = |p: &Pool| (!has_cache(p), !p.ssd);
    pools
        .iter()
        .enumerate()
        .min_by_key(|(i, p)| (rank(p), *i))
        .map(|(_, p)| p)
}

/// The cache on the pool [`choose_cache_pool`] picks: subvolume
/// `cache` bind-mounted at `cfg.cache_dir`; with no pool, a tmpfs there.
fn setup_cache(cfg: &Config, pools: &[Pool], warnings: &mut Vec<String>) -> Result<Cache> {
    let current = mounts::mounted_at(&cfg.cache_dir)?;
    let has_cache = |p: &Pool| p.mount_point.join(CACHE_SUBVOLUME).exists();
    let Some(pool) = choose_cache_pool(pools, has_cache) else {
        let w = format!(
            "no disk for a pool: cache {} is on tmpfs, nothing in it will survive a reboot",
            cfg.cache_dir.display()
        );
        tracing::warn!("{w}");
        warnings.push(w);
        if !matches!(&current, Some(m) if m.fs_type == "tmpfs") {
            mounts::tmpfs(&cfg.cache_dir)?;
        }
        return Ok(Cache {
            path: cfg.cache_dir.clone(),
            pool: None,
        });
    };
    let subvolume = pool.mount_point.join(CACHE_SUBVOLUME);
    if !subvolume.exists() {
        btrfs::subvolume_create(&pool.mount_point, CACHE_SUBVOLUME)?;
        // The node key lives there: root only, like the tmpfs fallback.
        std::fs::set_permissions(&subvolume, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&subvolume, "making the cache private"))?;
    }
    let already = matches!(&current, Some(m) if m.fs_type == "btrfs" && m.root == format!("/{CACHE_SUBVOLUME}"));
    if !already {
        mounts::bind(&subvolume, &cfg.cache_dir)?;
    }
    Ok(Cache {
        path: cfg.cache_dir.clone(),
        pool: Some(pool.label.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(label: &str, ssd: bool) -> Pool {
        Pool {
            label: label.into(),
            device: "/dev/x".into(),
            mount_point: "/mnt/x".into(),
            ssd,
        }
    }

    #[test]
    fn the_cache_stays_where_it_is_else_goes_to_an_ssd() {
        let pools = [
            pool("zn-hdd", false),
            pool("zn-ssd1", true),
            pool("zn-ssd2", true),
        ];
        let pick = |with_cache: &[&str]| {
            choose_cache_pool(&pools, |p| with_cache.contains(&p.label.as_str()))
                .map(|p| p.label.clone())
        };
        assert_eq!(pick(&[]).as_deref(), Some("zn-ssd1"));
        assert_eq!(pick(&["zn-hdd"]).as_deref(), Some("zn-hdd"));
        assert_eq!(pick(&["zn-hdd", "zn-ssd2"]).as_deref(), Some("zn-ssd2"));
        assert_eq!(
            choose_cache_pool(&pools[..1], |_| false).unwrap().label,
            "zn-hdd"
        );
        assert!(choose_cache_pool(&[], |_| true).is_none());
    }

    /// The policy decides before anything is written; in particular a
    /// foreign disk named in `zeronode.wipe=` that is too small for a pool
    /// is left as it is, not erased first.
    #[test]
    fn plans_follow_the_policy_table() {
        let disk = |size_bytes: u64, removable: bool| Disk {
            name: "vdz".into(),
            dev: "/dev/vdz".into(),
            size_bytes,
            rotational: false,
            removable,
            read_only: false,
            model: None,
            serial: None,
            by_id: Vec::new(),
            holders: Vec::new(),
        };
        let big = disk(1 << 30, false);
        let small = disk(MIN_POOL_BYTES - 1, false);
        let foreign = |boot_medium| Content::Foreign {
            what: "ext4 filesystem".into(),
            boot_medium,
        };
        let pool = || Content::Pool {
            label: "zn-a".into(),
        };
        let left = |p: Plan, part: &str| matches!(&p, Plan::Left(r) if r.contains(part));
        assert!(matches!(
            plan(&big, false, Content::Blank),
            Plan::Format { erase: None }
        ));
        assert!(left(plan(&small, true, Content::Blank), "too small"));
        assert!(left(
            plan(&disk(1 << 30, true), false, Content::Blank),
            "removable"
        ));
        assert!(matches!(
            plan(&disk(1 << 30, true), true, Content::Blank),
            Plan::Format { erase: None }
        ));
        assert!(left(plan(&big, false, foreign(false)), "ext4"));
        assert!(matches!(
            plan(&big, true, foreign(false)),
            Plan::Format { erase: Some(w) } if w.contains("ext4")
        ));
        assert!(left(plan(&small, true, foreign(false)), "not erased"));
        assert!(left(plan(&big, true, foreign(true)), "never erased"));
        assert!(matches!(plan(&big, true, pool()), Plan::Reuse(l) if l == "zn-a"));
    }

    #[test]
    fn uuids_are_version_4() {
        let u = random_uuid().unwrap();
        assert_eq!(u[6] >> 4, 4, "{u:x?}");
        assert_eq!(u[8] >> 6, 0b10, "{u:x?}");
        assert_ne!(u, random_uuid().unwrap());
    }
}
