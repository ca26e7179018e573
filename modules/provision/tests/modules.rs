//! The order path against the real network and storage modules on the
//! host: a network namespace for zeronode-network, a loop device for
//! zeronode-storage (root, iproute2, losetup, nft). Their
//! binaries come from the workspace's test build
//! (`common::workspace_binary`). Skipped when not root.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn can_run() -> bool {
    let ok = nix_is_root() && ["ip", "losetup", "nft", "unshare"].iter().all(|c| have(c));
    if !ok {
        eprintln!("SKIP: needs root, iproute2, losetup, nft");
    }
    ok
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Guard(Vec<Vec<String>>);
impl Drop for Guard {
    fn drop(&mut self) {
        for c in self.0.iter().rev() {
            let _ = Command::new(&c[0]).args(&c[1..]).output();
        }
    }
}

struct Proc(Child, mpsc::Receiver<String>);
impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Proc(child, rx)
    }
    fn wait_line(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(l) = self.1.recv_timeout(Duration::from_millis(200)) {
                if l.contains(needle) {
                    return;
                }
                seen.push(l);
            }
        }
        panic!("no line {needle:?}; saw {seen:?}");
    }
}
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_and_volume_on_real_modules_survive_a_restart() {
    if !can_run() {
        return;
    }
    let (net_bin, sto_bin) = (
        workspace_binary("zeronode-network"),
        workspace_binary("zeronode-storage"),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tag = std::process::id() % 100_000;
    let (ns, peer) = (format!("znpn{tag}"), format!("znpp{tag}"));
    let mut guard = Guard(Vec::new());

    // The node's network namespace with eth0 wired to a peer.
    run(&["ip", "netns", "add", &ns]);
    guard
        .0
        .push(vec!["ip".into(), "netns".into(), "del".into(), ns.clone()]);
    run(&["ip", "netns", "add", &peer]);
    guard.0.push(vec![
        "ip".into(),
        "netns".into(),
        "del".into(),
        peer.clone(),
    ]);
    let (ta, tb) = (format!("zpa{tag}"), format!("zpb{tag}"));
    run(&[
        "ip", "link", "add", &ta, "type", "veth", "peer", "name", &tb,
    ]);
    run(&["ip", "link", "set", &ta, "netns", &ns, "name", "eth0"]);
    run(&["ip", "link", "set", &tb, "netns", &peer, "name", "up0"]);
    run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
    run(&["ip", "-n", &peer, "link", "set", "up0", "up"]);
    run(&[
        "ip",
        "-n",
        &peer,
        "addr",
        "add",
        "10.99.0.1/24",
        "dev",
        "up0",
    ]);
    std::fs::write(
        d.join("cmdline"),
        "ip=10.99.0.7::10.99.0.1:255.255.255.0::eth0:off",
    )
    .unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns, "unshare", "--uts"])
        .arg(&net_bin)
        .arg("--socket")
        .arg(d.join("network.sock"))
        .arg("--state-dir")
        .arg(d.join("netstate"))
        .arg("--cmdline")
        .arg(d.join("cmdline"))
        .arg("--resolv-conf")
        .arg(d.join("resolv.conf"))
        .args([
            "--mgmt",
            "eth0",
            "--carrier-wait-ms",
            "1000",
            "--nft",
            "nft",
        ]);
    let network = Proc::spawn(cmd);
    network.wait_line("network: zn0 static");

    // A blank loop disk for storage to make a pool of.
    let img = d.join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success());
    let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mnt = d.join("mnt");
    let cache = d.join("cache");
    guard
        .0
        .push(vec!["losetup".into(), "-d".into(), dev.clone()]);
    guard.0.push(vec![
        "sh".into(),
        "-c".into(),
        format!(
            "grep -F ' {}' /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l",
            d.display()
        ),
    ]);
    std::fs::write(d.join("scmdline"), "").unwrap();
    let mut cmd = Command::new(&sto_bin);
    cmd.arg("--socket")
        .arg(d.join("storage.sock"))
        .arg("--cmdline")
        .arg(d.join("scmdline"))
        .arg("--mnt-root")
        .arg(&mnt)
        .arg("--cache")
        .arg(&cache)
        .arg("--device")
        .arg(&dev);
    let storage = Proc::spawn(cmd);
    storage.wait_line("mounted, cache on");

    let mut node = Node::start_with(
        false,
        &[],
        Some((d.join("network.sock"), d.join("storage.sock"))),
    )
    .await;
    let owner = node.owner.clone();
    let c = node.client();
    let mut doc = deployment(&owner, "real", 1);
    doc["workloads"][0]["data"]["subnet"] = json!("10.231.0.0/24");
    c.deploy(signed(doc, &[&owner])).await.unwrap();
    let v = settled(&c, "real", &owner).await;
    assert_eq!(v["workloads"][0]["state"], "ok", "{v}");
    assert_eq!(v["workloads"][1]["state"], "ok", "{v}");
    let bridge = format!(
        "znb-{}",
        zeronode_provision::reconcile::network_name("real", "net")
    );
    let link = Command::new("ip")
        .args(["-n", &ns, "addr", "show", &bridge])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("10.231.0.1/24"),
        "{link:?}"
    );
    let vol = PathBuf::from(v["workloads"][1]["detail"].as_str().unwrap());
    std::fs::write(vol.join("hello"), b"kept").unwrap();

    // Provision restarts: no new order, everything comes back ok, data intact.
    let count = node.ledger_count().await;
    node.restart_provision().await;
    let c = node.client();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = settled(&c, "real", &owner).await;
    assert_eq!(v["workloads"][0]["state"], "ok", "{v}");
    assert_eq!(v["workloads"][1]["state"], "ok", "{v}");
    assert_eq!(std::fs::read(vol.join("hello")).unwrap(), b"kept");
    // Only results were added (two per heal), no order.
    let ch = c.changes("real", &owner).await.unwrap();
    let orders = ch["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["kind"] != "result")
        .count();
    assert_eq!(orders, 1);
    assert!(node.ledger_count().await >= count + 2);
    c.proof("real", &owner).await.unwrap();

    // Delete: the volume and the bridge go.
    let del = signed(
        json!({"kind": "delete", "id": "real", "version": 2, "twin": node.owner_hex()}),
        &[&owner],
    );
    c.delete("real", del).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while vol.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!vol.exists(), "volume still there");
    for _ in 0..50 {
        if !Command::new("ip")
            .args(["-n", &ns, "link", "show", &bridge])
            .output()
            .unwrap()
            .status
            .success()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!Command::new("ip")
        .args(["-n", &ns, "link", "show", &bridge])
        .output()
        .unwrap()
        .status
        .success());
    drop(node);
    drop(storage);
    drop(network);
}
