//! The zn binary against a node on the host: the commands a QEMU test
//! runs, their --json output and exit codes. zn comes from the workspace's
//! test build (`common::workspace_binary`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::Value;

struct Zn {
    bin: PathBuf,
    dir: PathBuf,
}

impl Zn {
    /// Runs zn with --json; answers (exit code, parsed stdout).
    fn run(&self, args: &[&str]) -> (i32, Value) {
        let out = Command::new(&self.bin)
            .current_dir(&self.dir)
            .arg("--json")
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "zn {args:?}: {e}: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), v)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_qemu_test_commands() {
    let bin = workspace_binary("zn");
    let node = Node::start(true, &[]).await;
    let work = tempfile::tempdir().unwrap();
    let zn = Zn {
        bin,
        dir: work.path().to_path_buf(),
    };
    let url = node.url.as_str();

    // The owner's key (the node was started with this owner).
    let seed = zeronode_deployment::hex::encode(node.owner.as_bytes());
    let (rc, v) = zn.run(&["key", "import", "owner.key", "--seed", &seed]);
    assert_eq!(rc, 0);
    assert_eq!(v["public_key"], node.owner_hex());
    let (_, v) = zn.run(&["-k", "owner.key", "key", "pubkey"]);
    assert_eq!(v["public_key"], node.owner_hex());
    let (rc, v) = zn.run(&["key", "generate", "other.key"]);
    assert_eq!(rc, 0);
    assert_eq!(v["mnemonic"].as_str().unwrap().split(' ').count(), 24);

    // The node id, learned without a pin, then pinned.
    let (rc, v) = zn.run(&["--node", url, "node"]);
    assert_eq!(rc, 0);
    assert_eq!(v["node_id"], node.node_id.as_str());
    let id = node.node_id.as_str();

    std::fs::write(
        work.path().join("spec.toml"),
        r#"id = "web-1"
description = "a network and a volume"
valid_for = 3600
[[workloads]]
name = "net"
type = "network"
data = { subnet = "10.20.0.0/24" }
[[workloads]]
name = "data"
type = "volume"
data = { size = 104857600 }
"#,
    )
    .unwrap();
    let pinned = ["--node", url, "--node-id", id, "-k", "owner.key"];
    let with = |rest: &[&str]| -> Vec<String> {
        pinned
            .iter()
            .chain(rest.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run = |rest: &[&str]| {
        let a = with(rest);
        zn.run(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let (rc, v) = run(&["deploy", "spec.toml"]);
    assert_eq!(rc, 0, "{v}");
    assert_eq!(v["kind"], "deploy");
    let (rc, v) = run(&["watch", "web-1", "--timeout", "30"]);
    assert_eq!(rc, 0, "{v}");
    let (rc, v) = run(&["get", "web-1"]);
    assert_eq!(rc, 0);
    assert!(
        v["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["state"] == "ok"),
        "{v}"
    );
    let (rc, v) = run(&["proof", "web-1"]);
    assert_eq!(rc, 0, "{v}");
    assert_eq!(v["deployment"], "web-1");
    let (rc, v) = run(&["changes", "web-1"]);
    assert_eq!(rc, 0);
    assert_eq!(v["changes"].as_array().unwrap().len(), 3);
    let (rc, v) = run(&["list"]);
    assert_eq!(rc, 0);
    assert_eq!(v["deployments"].as_array().unwrap().len(), 1);

    // Any other key is refused, with its code, exit 1.
    let a: Vec<String> = [
        "--node",
        url,
        "--node-id",
        id,
        "-k",
        "other.key",
        "deploy",
        "spec.toml",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (rc, v) = zn.run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(rc, 1);
    assert_eq!(v["error"]["code"], "not_authorized");
    // Replaying the same order: refused.
    let (rc, v) = run(&["deploy", "spec.toml"]);
    assert_eq!(
        (rc, v["error"]["code"].as_str()),
        (1, Some("version_not_higher"))
    );

    // Build + sign as separate steps, update to version 2.
    let (rc, _) = run(&["build", "spec.toml", "--version", "2", "-o", "v2.json"]);
    assert_eq!(rc, 0);
    let (rc, v) = run(&["update", "v2.json"]);
    assert_eq!(rc, 0, "{v}");
    assert_eq!(v["kind"], "update");

    // Grant and revoke the other key.
    let other = zn.run(&["-k", "other.key", "key", "pubkey"]).1["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let (rc, v) = run(&[
        "grant",
        "--twin",
        &other,
        "--version",
        "1",
        "--disk",
        "1000000000",
        "--count",
        "4",
    ]);
    assert_eq!(rc, 0, "{v}");
    let (rc, v) = run(&["revoke", "--twin", &other, "--version", "2"]);
    assert_eq!(rc, 0, "{v}");

    // Delete, then the deployment is gone.
    let (rc, v) = run(&["delete", "web-1", "--version", "3"]);
    assert_eq!(rc, 0, "{v}");
    let (rc, v) = run(&["get", "web-1"]);
    assert_eq!((rc, v["error"]["code"].as_str()), (1, Some("not_found")));

    // A wrong pin: the client refuses the node (exit 2, not a node refusal).
    let wrong = zeronode_identity::NodeId::from_key(
        ed25519_dalek::SigningKey::from_bytes(&[5; 32]).verifying_key(),
    )
    .to_string();
    let (rc, v) = zn.run(&[
        "--node",
        url,
        "--node-id",
        &wrong,
        "-k",
        "owner.key",
        "get",
        "web-1",
    ]);
    assert_eq!(rc, 2);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("pinned"),
        "{v}"
    );
}
