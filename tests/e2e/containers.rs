//! Container workloads on a booted node: the host serves an OCI archive
//! over QEMU's user network; the owner deploys network + volume + a web
//! container; a second container reaches the web container on the
//! workload network; a third one is held to its cgroup v2 memory limit;
//! after a hard reset the containers run again with the volume's data.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use zeronode_containers::fixture::{busybox_archive, sha256_hex, HttpServer};

use super::provision::{boot, node_opts, wait_all_ok, Target, Zn};
use super::storage::{blank_disk, power_off};
use super::{ensure, Check, BOOT_TIMEOUT};

const ID: &str = "e2e-ct";

/// One `container` workload of the busybox image, running `sh -c script`.
fn container(
    name: &str,
    image: &str,
    memory: u64,
    extra: &str,
    script: &str,
    restart: &str,
) -> String {
    format!(
        r#"[[workloads]]
name = "{name}"
type = "container"
[workloads.data]
image = {image}
cpu = 1
memory = {memory}
{extra}entrypoint = ["/bin/sh", "-c"]
args = ["{script}"]
restart = "{restart}"
"#
    )
}

/// The deployment, `probe` included once the web container's address is
/// known (version 2).
fn spec(url: &str, sha256: &str, probe_target: Option<&str>) -> String {
    let image = format!(r#"{{ url = "{url}", sha256 = "{sha256}" }}"#);
    let mut s = format!(
        r#"id = "{ID}"
valid_for = 86400
[[workloads]]
name = "net"
type = "network"
data = {{ subnet = "10.78.0.0/24" }}
[[workloads]]
name = "data"
type = "volume"
data = {{ size = 67108864 }}
"#
    );
    s += &container(
        "web",
        &image,
        33554432,
        "network = \"net\"\nmounts = [{ volume = \"data\", path = \"/data\" }]\n",
        "echo boot >> /data/boots; sync; exec httpd -f -p 8080 -h /data",
        "always",
    );
    // Prints its cgroup v2 memory limit, then fills a shell variable past
    // it: the kernel kills it (no "survived") and the restart policy
    // brings it back, so "start" shows more than once.
    s += &container(
        "hog",
        &image,
        16777216,
        "",
        "echo start memory.max=$(cat /sys/fs/cgroup/memory.max); x=$(yes | head -c 67108864); echo survived",
        "on-failure",
    );
    if let Some(addr) = probe_target {
        s += &container(
            "probe",
            &image,
            33554432,
            "network = \"net\"\n",
            &format!(
                "while true; do printf 'GET /boots HTTP/1.0\\\\r\\\\n\\\\r\\\\n' | nc {addr} 8080 | tr '\\\\n' ' '; echo; sleep 2; done"
            ),
            "always",
        );
    }
    s
}

/// A workload's state and detail from `zn get`.
fn workload(v: &Value, name: &str) -> (String, String) {
    v["workloads"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["name"] == name))
        .map(|w| {
            (
                w["state"].as_str().unwrap_or_default().to_string(),
                w["detail"].as_str().unwrap_or_default().to_string(),
            )
        })
        .unwrap_or_default()
}

/// Waits until the probe's log shows `boots` lines `n` times in one answer.
fn wait_probe_sees(zn: &Zn, t: &Target, n: usize) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let v = zn.on(t, "owner.key", &["logs", ID, "probe"])?;
        let text = v["logs"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        if let Some(line) = text
            .lines()
            .rev()
            .find(|l| l.contains("200 OK") && l.matches("boot").count() >= n)
        {
            return Ok(line.to_string());
        }
        if Instant::now() > deadline {
            return Err(format!("the probe never saw {n} boot line(s): {text}"));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Waits until the hog has started twice with its 16 MiB cgroup v2 limit
/// and never got past the allocation.
fn wait_hog_killed(zn: &Zn, t: &Target) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let v = zn.on(t, "owner.key", &["logs", ID, "hog"])?;
        let text = v["logs"].as_str().unwrap_or_default().to_string();
        ensure(!text.contains("survived"), || {
            format!("the hog outgrew its memory limit: {text}")
        })?;
        if text.matches("start memory.max=16777216").count() >= 2 {
            return Ok(text);
        }
        if Instant::now() > deadline {
            return Err(format!("the hog was not killed and restarted: {text:?}"));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

pub fn container_runs_and_comes_back_after_a_hard_reset() -> Check {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let archive = busybox_archive("e2e").map_err(|e| format!("building the OCI archive: {e}"))?;
    let sha256 = sha256_hex(&archive);
    let http = HttpServer::start(HashMap::from([("/bb.tar".to_string(), archive)]))
        .map_err(|e| format!("serving the archive: {e}"))?;
    // The guest reaches the host's loopback as 10.0.2.2 on QEMU's user network.
    let port = http.base.rsplit(':').next().unwrap_or_default();
    let url = format!("http://10.0.2.2:{port}/bb.tar");

    let (zn, owner) = Zn::with_owner(work.path())?;
    let disk = work.path().join("pool.raw");
    blank_disk(&disk, 1024)?;
    let o = node_opts(&disk, &owner);

    let (mut node, t) = boot(&o, &zn)?;
    match deploy_update_reset(&zn, &t, &mut node, work.path(), &url, &sha256) {
        Ok(()) => power_off(node),
        Err(e) => {
            let said: Vec<&str> = node
                .console()
                .lines()
                .filter(|l| {
                    [
                        "WARN",
                        "ERROR",
                        "provision",
                        "containers",
                        "panicked",
                        "ready",
                    ]
                    .iter()
                    .any(|w| l.contains(w))
                })
                .collect();
            let said = said.join("\n");
            let lines: Vec<&str> = node.console().lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            let _ = power_off(node);
            Err(format!(
                "{e}\nthe node's console about it:\n{said}\nthe console's last lines:\n{tail}"
            ))
        }
    }
}

/// Deploy v1, update to v2 (a probe, a memory hog), hard reset: each step's
/// result checked from outside.
fn deploy_update_reset(
    zn: &Zn,
    t: &Target,
    node: &mut zeronode_qemu::Node,
    work: &std::path::Path,
    url: &str,
    sha256: &str,
) -> Check {
    let spec1 = work.join("v1.toml");
    std::fs::write(&spec1, spec(url, sha256, None)).map_err(|e| e.to_string())?;
    let started = Instant::now();
    zn.on(t, "owner.key", &["deploy", "v1.toml"])?;
    let v = wait_all_ok(zn, t, ID, "after the deploy")?;
    eprintln!(
        "    deploy to web container running: {:.1} s (image fetched and unpacked)",
        started.elapsed().as_secs_f64()
    );
    let (_, detail) = workload(&v, "web");
    let addr = detail
        .split_whitespace()
        .find_map(|w| w.strip_suffix("/24"))
        .ok_or_else(|| format!("no address in the web container's detail: {detail:?}"))?
        .to_string();

    // Version 2 adds a probe on the same network that fetches /boots from web.
    let spec2 = work.join("v2.toml");
    std::fs::write(&spec2, spec(url, sha256, Some(&addr))).map_err(|e| e.to_string())?;
    zn.on(
        t,
        "owner.key",
        &["build", "v2.toml", "--version", "2", "-o", "v2.json"],
    )?;
    zn.on(t, "owner.key", &["update", "v2.json"])?;
    wait_all_ok(zn, t, ID, "after the update")?;
    let seen = wait_probe_sees(zn, t, 1)?;
    eprintln!("    probe: {}", seen.trim());
    let hog = wait_hog_killed(zn, t)?;
    eprintln!("    hog: {}", hog.replace('\n', " | "));

    // Hard reset: the node brings both containers back by itself; web
    // appends to the same volume file, so the probe now sees two lines.
    node.qmp("system_reset", None).map_err(|e| e.to_string())?;
    node.wait_ready(BOOT_TIMEOUT)
        .map_err(|e| format!("after system_reset: {e}"))?;
    wait_all_ok(zn, t, ID, "after a hard reset")?;
    let seen = wait_probe_sees(zn, t, 2)?;
    eprintln!("    probe after the reset: {}", seen.trim());
    let console = node.console().to_string();
    ensure(!console.contains("panicked"), || "a module panicked".into())
}
