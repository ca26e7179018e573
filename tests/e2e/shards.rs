//! Shards across nodes: three nodes boot together, each gets a zdb
//! namespace from a signed deployment, an object is stored 2+1 across the
//! three, one node is powered off, and the object comes back intact.

use std::path::Path;
use std::process::{Command, Output};

use zeronode_qemu::{free_port, Boot, Forward, Node};

use super::provision::{api_target, wait_all_ok, Zn};
use super::storage::power_off;
use super::{ensure, opts, start, Check, BOOT_TIMEOUT};

const ID: &str = "e2e-shard";
const PASSWORD: &str = "shard secret 7";
/// The shard store's RESP port on the node (image/services/shards.toml).
const GUEST_RESP_PORT: u16 = 9900;

fn spec() -> String {
    format!(
        r#"id = "{ID}"
description = "one 0-db namespace for objects"
valid_for = 86400
[[workloads]]
name = "db"
type = "zdb"
data = {{ size = 67108864, mode = "user", password = "{PASSWORD}" }}
"#
    )
}

/// `zn-objects --key objects.key --backend ... ARGS` in `dir`.
fn objects(dir: &Path, backends: &[String], args: &[&str]) -> Result<Output, String> {
    let mut cmd = Command::new(zeronode_e2e::zn_objects_binary()?);
    cmd.current_dir(dir)
        .args(["--key", "objects.key", "--timeout", "60"]);
    for b in backends {
        cmd.args(["--backend", b]);
    }
    cmd.args(args)
        .output()
        .map_err(|e| format!("running zn-objects {args:?}: {e}"))
}

fn said(out: &Output) -> String {
    format!(
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Deploys the zdb on the booted node; answers the backend the objects
/// client reaches it by (the node's RESP port as forwarded to the host).
fn deploy_zdb(node: &mut Node, zn: &Zn, host_port: u16) -> Result<String, String> {
    let t = api_target(node, zn)?;
    zn.on(&t, "owner.key", &["deploy", "spec.toml"])?;
    let v = wait_all_ok(zn, &t, ID, "the zdb deployment")?;
    // "namespace <name> <host>:<port>": where the node says it listens.
    let detail = v["workloads"][0]["detail"].as_str().unwrap_or_default();
    let fields: Vec<&str> = detail.split(' ').collect();
    ensure(
        fields.len() == 3
            && fields[0] == "namespace"
            && fields[2].ends_with(&format!(":{GUEST_RESP_PORT}")),
        || format!("zdb result detail {detail:?}: namespace, name, host:port expected"),
    )?;
    Ok(format!("127.0.0.1:{host_port}/{}:{PASSWORD}", fields[1]))
}

pub fn object_survives_a_node_powered_off() -> Check {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = work.path();
    let (zn, owner) = Zn::with_owner(dir)?;
    std::fs::write(dir.join("spec.toml"), spec()).map_err(|e| e.to_string())?;

    // Three nodes, one blank disk each, booting at once on the 2 host
    // cores (one vCPU each keeps TCG from thrashing).
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let mut o = opts(Boot::Direct);
        o.disks = 1;
        o.cpus = 1;
        o.append = Some(format!("zeronode.owner={owner}"));
        let port = free_port().map_err(|e| e.to_string())?;
        o.forwards = vec![Forward {
            host: port,
            guest: GUEST_RESP_PORT,
        }];
        nodes.push((start(&o)?, port));
    }
    let mut backends = Vec::new();
    for (i, (node, port)) in nodes.iter_mut().enumerate() {
        node.wait_ready(BOOT_TIMEOUT * 2)
            .map_err(|e| format!("node {i}: {e}"))?;
        backends.push(deploy_zdb(node, &zn, *port).map_err(|e| format!("node {i}: {e}"))?);
    }

    // 6 MiB that do not compress, so every shard carries real bytes: two
    // stripes of 2 data + 1 parity shards, one shard of each on each node.
    let mut data = vec![0u8; 6 << 20];
    blake3::Hasher::new()
        .update(b"zeronode e2e object")
        .finalize_xof()
        .fill(&mut data);
    std::fs::write(dir.join("object.bin"), &data).map_err(|e| e.to_string())?;
    let out = objects(dir, &[], &["keygen", "objects.key"])?;
    ensure(out.status.success(), || format!("keygen: {}", said(&out)))?;
    let out = objects(
        dir,
        &backends,
        &["store", "object.bin", "--data", "2", "--parity", "1"],
    )?;
    ensure(out.status.success(), || format!("store: {}", said(&out)))?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = objects(dir, &backends, &["check", &id])?;
    ensure(out.status.code() == Some(0), || {
        format!("check with every node up: {}", said(&out))
    })?;

    // One node powered off (ACPI, as a person would): what is left still
    // holds every byte.
    let (off, _) = nodes.remove(1);
    power_off(off).map_err(|e| format!("powering node 1 off: {e}"))?;
    let out = objects(dir, &backends, &["check", &id])?;
    ensure(out.status.code() == Some(3), || {
        format!(
            "check with a node off: degraded (3) expected: {}",
            said(&out)
        )
    })?;
    let out = objects(dir, &backends, &["retrieve", &id, "back.bin"])?;
    ensure(out.status.success(), || {
        format!("retrieve with a node off: {}", said(&out))
    })?;
    let back = std::fs::read(dir.join("back.bin")).map_err(|e| e.to_string())?;
    ensure(back == data, || {
        format!(
            "the object came back different: {} bytes, blake3 {} (stored {})",
            back.len(),
            blake3::hash(&back),
            blake3::hash(&data)
        )
    })?;
    eprintln!("    {}", String::from_utf8_lossy(&out.stderr).trim());
    // The others are dropped, which stops their QEMU.
    drop(nodes);
    Ok(())
}
