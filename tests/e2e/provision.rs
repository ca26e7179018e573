//! The order path on a booted node: the owner's client deploys a signed
//! network + volume deployment through the forwarded API port; the node
//! brings it back by itself after a reboot and after a hard reset; its
//! ledger proves it; any other key is refused.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use zeronode_qemu::{Boot, Node, NodeOptions};

use super::storage::{blank_disk, power_off, HostMount};
use super::{ensure, start, Check, BOOT_TIMEOUT};

/// The owner's seed: fixed, so a failing run can be replayed by hand.
pub(crate) const OWNER_SEED: &str =
    "5a65726f4e6f6465206f776e657220736565642c20746573747320616c6f6e65";
const MARKER: &str = "written by the host into the volume";

const SPEC: &str = r#"id = "e2e-web"
description = "a network and a volume"
valid_for = 86400
[[workloads]]
name = "net"
type = "network"
data = { subnet = "10.77.0.0/24" }
[[workloads]]
name = "data"
type = "volume"
data = { size = 104857600 }
"#;

/// `zn --json ARGS` in `dir`: exit code and parsed output.
pub(crate) struct Zn {
    pub(crate) bin: PathBuf,
    pub(crate) dir: PathBuf,
}

impl Zn {
    /// zn working in `dir`, with the owner's key imported as owner.key;
    /// returns it and the owner's public key (hex).
    pub(crate) fn with_owner(dir: &Path) -> Result<(Zn, String), String> {
        let zn = Zn {
            bin: zeronode_e2e::zn_binary()?,
            dir: dir.to_path_buf(),
        };
        let (rc, v) = zn.run(&["key", "import", "owner.key", "--seed", OWNER_SEED])?;
        ensure(rc == 0, || format!("zn key import: {v}"))?;
        let owner = v["public_key"].as_str().unwrap_or_default().to_string();
        Ok((zn, owner))
    }

    pub(crate) fn run(&self, args: &[&str]) -> Result<(i32, Value), String> {
        let out = Command::new(&self.bin)
            .current_dir(&self.dir)
            .arg("--json")
            .args(args)
            .output()
            .map_err(|e| format!("running zn: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v = serde_json::from_str(text.trim()).map_err(|e| {
            format!(
                "zn {args:?}: {e}: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok((out.status.code().unwrap_or(-1), v))
    }

    /// Runs against the node, pinned to its id, signed with `key`; fails
    /// unless zn exits 0.
    pub(crate) fn on(&self, node: &Target, key: &str, args: &[&str]) -> Result<Value, String> {
        let mut a = vec![
            "--node",
            node.url.as_str(),
            "--node-id",
            node.id.as_str(),
            "-k",
            key,
        ];
        a.extend_from_slice(args);
        match self.run(&a)? {
            (0, v) => Ok(v),
            (rc, v) => Err(format!("zn {args:?} exited {rc}: {v}")),
        }
    }
}

pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) id: String,
}

pub(crate) fn node_opts(disk: &Path, owner: &str) -> NodeOptions {
    let mut o = NodeOptions::new(crate::image_dir(), Boot::Direct);
    o.disks = 0;
    o.disk_files = vec![disk.to_path_buf()];
    o.append = Some(format!("zeronode.owner={owner}"));
    o
}

/// Waits until every workload of the deployment is `ok`.
fn wait_ok(zn: &Zn, t: &Target, what: &str) -> Result<Value, String> {
    zn.on(t, "owner.key", &["watch", "e2e-web", "--timeout", "180"])
        .map_err(|e| format!("{what}: {e}"))?;
    let v = zn.on(t, "owner.key", &["get", "e2e-web"])?;
    let all_ok = v["workloads"]
        .as_array()
        .is_some_and(|w| w.len() == 2 && w.iter().all(|w| w["state"] == "ok"));
    ensure(all_ok, || format!("{what}: not every workload ok: {v}"))?;
    Ok(v)
}

/// Waits until every workload is `ok`. Containers may take a while under
/// TCG (the first one imports the image), and an order that comes before
/// the containers module is up gets an error result until provision sees
/// the module's socket appear and applies it again.
/// A poll that cannot reach the node (a handshake the busy node dropped) is
/// said on stderr and tried again, as a person watching would.
pub(crate) fn wait_all_ok(zn: &Zn, t: &Target, id: &str, what: &str) -> Result<Value, String> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let v = match zn.on(t, "owner.key", &["get", id]) {
            Ok(v) => v,
            Err(e) if e.contains("cannot reach the node") && Instant::now() < deadline => {
                eprintln!("    {what}: polling again after: {e}");
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
            Err(e) => return Err(e),
        };
        let states: Vec<String> = v["workloads"]
            .as_array()
            .map(|ws| ws.iter().map(|w| w["state"].to_string()).collect())
            .unwrap_or_default();
        if !states.is_empty() && states.iter().all(|s| s == "\"ok\"") {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: {v}"));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The orders (not results) the ledger holds for the deployment.
fn orders(zn: &Zn, t: &Target) -> Result<usize, String> {
    let v = zn.on(t, "owner.key", &["changes", "e2e-web"])?;
    Ok(v["changes"]
        .as_array()
        .map_or(0, |c| c.iter().filter(|c| c["kind"] != "result").count()))
}

/// Boots until ready and until the API answers; learns the node id.
pub(crate) fn boot(o: &NodeOptions, zn: &Zn) -> Result<(Node, Target), String> {
    let mut node = start(o)?;
    node.wait_ready(BOOT_TIMEOUT).map_err(|e| e.to_string())?;
    let t = api_target(&mut node, zn)?;
    Ok((node, t))
}

/// The booted node's API through its forwarded port, pinned to the node id
/// the API gives once the console is seen to show the same.
pub(crate) fn api_target(node: &mut Node, zn: &Zn) -> Result<Target, String> {
    let url = format!("https://127.0.0.1:{}", node.api_port());
    let (rc, v) = zn.run(&["--node", &url, "node"])?;
    ensure(rc == 0, || format!("zn node: {v}\n{}", node.console()))?;
    let id = v["node_id"].as_str().unwrap_or_default().to_string();
    ensure(node.console().contains(&id), || {
        format!("node id {id} from the API is not the one on the console")
    })?;
    Ok(Target { url, id })
}

/// The single volume's directory on the pool, as the host sees it.
fn volume_dir(pool: &Path) -> Result<PathBuf, String> {
    let dir = pool.join("volumes");
    let vols: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    ensure(vols.len() == 1, || format!("volumes on the pool: {vols:?}"))?;
    Ok(vols[0].clone())
}

pub fn signed_deployment_survives_a_hard_reset() -> Check {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (zn, owner) = Zn::with_owner(work.path())?;
    let (rc, v) = zn.run(&["key", "generate", "other.key"])?;
    ensure(rc == 0, || format!("zn key generate: {v}"))?;
    std::fs::write(work.path().join("spec.toml"), SPEC).map_err(|e| e.to_string())?;
    let disk = work.path().join("pool.raw");
    blank_disk(&disk, 1024)?;
    let o = node_opts(&disk, &owner);

    // Deploy: receipt, then every workload ok, and the ledger proves it.
    let (node, t) = boot(&o, &zn)?;
    let receipt = zn.on(&t, "owner.key", &["deploy", "spec.toml"])?;
    ensure(receipt["kind"] == "deploy", || {
        format!("receipt: {receipt}")
    })?;
    wait_ok(&zn, &t, "after the deploy")?;
    zn.on(&t, "owner.key", &["proof", "e2e-web"])?;
    // Anyone else is refused, and nothing is recorded.
    let (rc, v) = zn.run(&[
        "--node",
        &t.url,
        "--node-id",
        &t.id,
        "-k",
        "other.key",
        "deploy",
        "spec.toml",
    ])?;
    ensure(rc == 1 && v["error"]["code"] == "not_authorized", || {
        format!("a deployment signed by another key: exit {rc}, {v}")
    })?;
    ensure(orders(&zn, &t)? == 1, || {
        "the refused order was recorded".into()
    })?;
    power_off(node)?;

    // The host writes a file into the volume, on the pool's disk.
    {
        let m = HostMount::new(&disk)?;
        let vol = volume_dir(m.path())?;
        std::fs::write(vol.join("marker"), MARKER).map_err(|e| e.to_string())?;
    }

    // A reboot, then a hard reset: each time the node brings the
    // deployment back from its ledger, with no new order.
    let (mut node, t) = boot(&o, &zn)?;
    wait_ok(&zn, &t, "after a reboot")?;
    node.qmp("system_reset", None).map_err(|e| e.to_string())?;
    node.wait_ready(BOOT_TIMEOUT)
        .map_err(|e| format!("after system_reset: {e}"))?;
    wait_ok(&zn, &t, "after a hard reset")?;
    ensure(orders(&zn, &t)? == 1, || {
        "the node recorded a new order by itself".into()
    })?;
    let proof = zn.on(&t, "owner.key", &["proof", "e2e-web"])?;
    eprintln!(
        "    proof verified: seq {} in a tree of {}",
        proof["seq"], proof["tree_size"]
    );
    power_off(node)?;

    let m = HostMount::new(&disk)?;
    let marker = std::fs::read_to_string(volume_dir(m.path())?.join("marker"))
        .map_err(|e| format!("the volume's file after the reset: {e}"))?;
    ensure(marker == MARKER, || {
        format!("the volume's file changed: {marker:?}")
    })
}
