//! Time from Create to the container's task running, with the image
//! already present (the common case: a restart, a second container of a
//! deployment, provision's replay), against a real containerd started in a
//! temporary directory. Also the first Create, which imports the image.
//!
//! `cargo bench -p zeronode-containers --bench create` (root, containerd,
//! runc and busybox-static installed).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use zeronode_containers::{Config, ContainerSpec, Manager};

const RUNS: usize = 20;

fn spec(name: &str, url: &str, sha: &str) -> ContainerSpec {
    ContainerSpec::from_json(
        &serde_json::json!({
            "name": name,
            "image": {"url": url, "sha256": sha},
            "args": ["sleep", "600"],
            "memory": 64u64 << 20,
            "cpu": 1.0,
            "restart": "never",
        })
        .to_string(),
    )
    .expect("spec")
}

fn main() {
    if !can_run() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctd = Containerd::start(dir.path());
        let cgroup = CgroupParent::new();
        let archive = busybox_archive("bench").unwrap();
        let sha = sha256_hex(&archive);
        let path = dir.path().join("bb.tar");
        std::fs::write(&path, &archive).expect("archive");
        let url = format!("file://{}", path.display());
        let mut cfg = Config::new(
            ctd.socket.clone(),
            dir.path().join("state"),
            dir.path().join("run"),
        );
        cfg.namespace = ctd.ns.clone();
        cfg.cgroup_parent = cgroup.0.clone();
        let m = Manager::new(cfg).await.expect("manager");

        let t = Instant::now();
        m.create(spec("keep", &url, &sha)).await.expect("first create");
        let first = t.elapsed();

        let mut times: Vec<Duration> = Vec::with_capacity(RUNS);
        for i in 0..RUNS {
            let name = format!("b{i}");
            let t = Instant::now();
            let st = m.create(spec(&name, &url, &sha)).await.expect("create");
            times.push(t.elapsed());
            assert_eq!(st.state, "running");
            m.delete(&name).await.expect("delete");
        }
        m.delete("keep").await.expect("delete keep");
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "first Create (fetch {} KiB archive + import + unpack + start): {:.1} ms",
            archive.len() / 1024,
            ms(first)
        );
        println!(
            "Create -> running, image present, {RUNS} runs: min {:.1} ms, median {:.1} ms, max {:.1} ms",
            ms(times[0]),
            ms(times[RUNS / 2]),
            ms(times[RUNS - 1])
        );
        drop(m);
        drop(ctd);
        drop(cgroup);
    });
}
