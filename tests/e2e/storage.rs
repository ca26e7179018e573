//! Disks at boot: blank disks become pools, pools and the node key survive
//! a reboot with their data, a disk holding anything else is never written;
//! the management bridge gets QEMU's DHCP lease on the way.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use zeronode_qemu::{Boot, Node, NodeOptions};

use super::{ensure, start, Check, BOOT_TIMEOUT};

const MARKER: &str = "zeronode-e2e-marker";

/// What one boot said about its disks and identity.
struct Boot1 {
    /// Pools formatted before storage's own line (`... mounted, cache on
    /// ...`): the ones its socket, and so the ready line, waited for. The
    /// module's output comes through one pipe, so the order is its own.
    formatted: Vec<String>,
    reused: Vec<String>,
    node_id: String,
    new_key: bool,
    console: String,
}

fn node_with(disks: &[PathBuf], append: Option<&str>) -> NodeOptions {
    let mut o = NodeOptions::new(crate::image_dir(), Boot::Direct);
    o.disks = 0;
    o.disk_files = disks.to_vec();
    o.append = append.map(str::to_string);
    o
}

/// The word after `key` in `line`.
fn word_after(line: &str, key: &str) -> Option<String> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split([' ', ',']).next().map(str::to_string)
}

/// Boots until ready and reads the storage and identity lines.
fn boot_and_read(o: &NodeOptions) -> Result<(Node, Boot1), String> {
    let mut node = start(o)?;
    node.wait_ready(BOOT_TIMEOUT).map_err(|e| e.to_string())?;
    let console = node.console().to_string();
    let formatted = console
        .lines()
        .take_while(|l| !l.contains("mounted, cache on"))
        .filter_map(|l| word_after(l, "formatted as pool "))
        .collect();
    let reused = console
        .lines()
        .filter_map(|l| word_after(l, ": pool "))
        .collect();
    let id_line = console
        .lines()
        .find(|l| l.contains("identity: node id "))
        .ok_or("no identity line on the console")?;
    let node_id = word_after(id_line, "identity: node id ").unwrap_or_default();
    let new_key = id_line.contains("(new key)");
    Ok((
        node,
        Boot1 {
            formatted,
            reused,
            node_id,
            new_key,
            console,
        },
    ))
}

/// The console line `pred` picks (waiting up to 2 min for it), printed
/// under the case's result.
fn shown(node: &mut Node, what: &str, pred: impl Fn(&str) -> bool) -> Result<String, String> {
    let line = node
        .find_or_wait_for_line(what, Duration::from_secs(120), pred)
        .map_err(|e| e.to_string())?;
    eprintln!("    {}", line.trim());
    Ok(line)
}

/// Waits for the lease QEMU's user network hands out (10.0.2.15), as the
/// network module reports it; it may come before or after the ready line.
fn wait_for_lease(node: &mut Node) -> Result<String, String> {
    node.find_or_wait_for_line(
        "the DHCP lease (network: zn0 bound 10.0.2.15/...)",
        Duration::from_secs(60),
        |l| l.contains("network: zn0 bound 10.0.2.15/"),
    )
    .map_err(|e| e.to_string())
}

/// Powers off through ACPI and waits for a clean end.
pub(crate) fn power_off(mut node: Node) -> Check {
    node.powerdown().map_err(|e| e.to_string())?;
    node.wait_for_line("unmount summary", Duration::from_secs(90), |l| {
        l.starts_with("zeronode: filesystems unmounted")
    })
    .map_err(|e| e.to_string())?;
    node.wait_exit(Duration::from_secs(60))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// A sparse raw disk image of `mib` MiB.
pub(crate) fn blank_disk(path: &Path, mib: u64) -> Result<(), String> {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(mib << 20))
        .map_err(|e| format!("creating {}: {e}", path.display()))
}

fn run(cmd: &mut Command) -> Check {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    ensure(out.status.success(), || {
        format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr))
    })
}

/// A disk image mounted on the host, unmounted when dropped.
pub(crate) struct HostMount {
    dir: tempfile::TempDir,
}

impl HostMount {
    pub(crate) fn new(image: &Path) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(dir.path()))?;
        Ok(HostMount { dir })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn file_hash(path: &Path) -> Result<blake3::Hash, String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path).map_err(|e| e.to_string())?)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(h.finalize())
}

/// Two blank disks become two pools; a third, plugged in once the node
/// runs, on a SCSI controller that had no disk (so its driver, sd_mod, is
/// not in yet: as a SATA or USB disk that comes after coldplug), becomes a
/// pool too, and unplugged leaves service; the host writes a marker into
/// each of the first two; the next boot reuses all three pools (none
/// formatted), keeps the node id, and the markers are intact afterwards.
pub fn pools_and_node_id_survive_a_reboot() -> Check {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let disks: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("d{i}.raw")))
        .collect();
    for d in &disks {
        blank_disk(d, 1024)?;
    }
    let late = dir.path().join("late.raw");
    blank_disk(&late, 1024)?;
    let mut o = node_with(&disks, None);
    o.scsi_hotplug = true;
    let (mut node, first) = boot_and_read(&o)?;
    node.hot_plug_disk(&late, "zeronode-late")
        .map_err(|e| format!("hot-plugging a disk: {e}"))?;
    let line = shown(
        &mut node,
        "the hot-plugged disk pooled (late disk sd..: pool ... is in service)",
        |l| l.contains("late disk sd") && l.contains("is in service"),
    )?;
    let late_pool = line
        .split("pool ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or_default()
        .to_string();
    // Unplugged again: its pool leaves service (and comes back below).
    node.unplug_disk("zeronode-late")
        .map_err(|e| format!("unplugging the disk: {e}"))?;
    let gone = shown(&mut node, "the unplugged disk's pool out of service", |l| {
        l.contains("removed: pool ") && l.contains("is out of service")
    })?;
    ensure(gone.contains(&format!("pool {late_pool} ")), || {
        format!("another pool went out of service: {gone}")
    })?;
    let lease = wait_for_lease(&mut node)?;
    eprintln!("    {}", lease.trim());
    for l in first
        .console
        .lines()
        .filter(|l| l.contains("mounted, cache on"))
    {
        eprintln!("    {}", l.trim());
    }
    // Only the cache's pool is formatted before storage answers; the other
    // blank disk right after (and before the hot-plugged one was taken).
    let console = node.console().to_string();
    power_off(node)?;
    let mut formatted: Vec<String> = console
        .lines()
        .filter_map(|l| word_after(l, "formatted as pool "))
        .filter(|p| *p != late_pool)
        .collect();
    formatted.sort();
    ensure(
        first.formatted.len() == 1 && formatted.len() == 2 && first.new_key,
        || {
            format!(
                "first boot: expected 1 pool formatted before storage answered, 2 in all, and a new key:\n{console}"
            )
        },
    )?;
    for d in &disks {
        let m = HostMount::new(d)?;
        std::fs::write(m.path().join(MARKER), d.to_string_lossy().as_bytes())
            .map_err(|e| e.to_string())?;
    }

    // The late disk is there from the start this time.
    let all: Vec<PathBuf> = disks.iter().cloned().chain([late]).collect();
    let (node, second) = boot_and_read(&node_with(&all, None))?;
    power_off(node)?;
    let mut reused = second.reused.clone();
    reused.sort();
    let mut expected = formatted.clone();
    expected.push(late_pool);
    expected.sort();
    ensure(second.formatted.is_empty() && reused == expected, || {
        format!(
            "second boot: expected pools {expected:?} reused, none formatted:\n{}",
            second.console
        )
    })?;
    ensure(second.node_id == first.node_id && !second.new_key, || {
        format!(
            "node id changed across the reboot: {} then {}",
            first.node_id, second.node_id
        )
    })?;
    for d in &disks {
        let m = HostMount::new(d)?;
        let marker = std::fs::read(m.path().join(MARKER)).map_err(|e| e.to_string())?;
        ensure(marker == d.to_string_lossy().as_bytes(), || {
            format!("marker on {} changed", d.display())
        })?;
    }
    Ok(())
}

/// A disk with an ext4 filesystem on it is left byte for byte as it was,
/// beside a blank disk that becomes the pool.
pub fn foreign_disk_is_left_untouched() -> Check {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let foreign = dir.path().join("foreign.raw");
    let blank = dir.path().join("blank.raw");
    blank_disk(&foreign, 256)?;
    blank_disk(&blank, 1024)?;
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&foreign))?;
    let before = file_hash(&foreign)?;
    let o = node_with(&[foreign.clone(), blank], None);
    let (node, boot) = boot_and_read(&o)?;
    power_off(node)?;
    ensure(
        boot.console.contains("left alone") && boot.formatted.len() == 1,
        || {
            format!(
                "expected the ext4 disk reported as left alone and one pool:\n{}",
                boot.console
            )
        },
    )?;
    let after = file_hash(&foreign)?;
    ensure(before == after, || {
        format!("the foreign disk changed: {before} before, {after} after")
    })
}

/// Malformed boot input is reported clearly and the node still comes up.
pub fn bad_boot_input_is_reported() -> Check {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let disk = dir.path().join("d0.raw");
    blank_disk(&disk, 1024)?;
    let o = node_with(&[disk], Some("ip=10.0.0.1:::: zeronode.wipe=no-such-disk"));
    let (node, boot) = boot_and_read(&o)?;
    power_off(node)?;
    for (what, needle) in [
        ("the malformed ip=", "ip=10.0.0.1::::"),
        ("the wipe of an absent disk", "no-such-disk"),
    ] {
        ensure(
            boot.console
                .lines()
                .any(|l| l.contains(needle) && (l.contains("WARN") || l.contains("WARNING"))),
            || format!("{what} was not reported:\n{}", boot.console),
        )?;
    }
    Ok(())
}
