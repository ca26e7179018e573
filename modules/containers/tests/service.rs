//! The module's binary over D-Bus against a real containerd, with the
//! network module's workload networks in a namespace of ours: a container's
//! output, env, volume and cgroup limits; a process allocating past its
//! memory limit is killed; a second container reaches the first over their
//! workload network; Create is idempotent; restart policies with back-off;
//! Delete removes only its container; a restarted module brings back a
//! container whose task was lost (as after a reboot).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use zeronode_containers::dbus::Containers1Proxy;
use zeronode_containers::Status;

fn module(dir: &Path, ctd: &Containerd, net_sock: &Path, cgroup: &str) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zeronode-containers"));
    cmd.arg("--containerd")
        .arg(&ctd.socket)
        .args(["--namespace", &ctd.ns])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--network-socket")
        .arg(net_sock)
        .arg("--socket")
        .arg(dir.join("containers.sock"))
        .args(["--cgroup-parent", cgroup])
        .arg("--resolv-conf")
        .arg(dir.join("resolv.conf"))
        .args(["--backoff-initial-ms", "200", "--backoff-max-ms", "800"])
        .args(["--log-cap", "8192", "--log-check-ms", "200"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    Proc::spawn(cmd)
}

async fn proxy(dir: &Path) -> Containers1Proxy<'static> {
    let sock = dir.join("containers.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no socket {}", sock.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let conn = zeronode_types::bus::connect(&sock).await.unwrap();
    Containers1Proxy::new(&conn).await.unwrap()
}

async fn status(p: &Containers1Proxy<'_>, name: &str) -> Status {
    serde_json::from_str(&p.status(name).await.unwrap()).unwrap()
}

async fn logs_with(p: &Containers1Proxy<'_>, name: &str, needle: &str) -> String {
    let what = format!("{needle:?} in the logs of {name}");
    eventually(Duration::from_secs(30), &what, || async {
        let l = p.logs(name, 1 << 20).await.unwrap();
        l.contains(needle).then_some(l)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_over_dbus() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ctd = Containerd::start(dir.path());
    let cgroup = CgroupParent::new();
    let archive = busybox_archive("svc").unwrap();
    let sha = sha256_hex(&archive);
    let http = HttpServer::start(HashMap::from([("/bb.tar".to_string(), archive)])).unwrap();
    let url = format!("{}/bb.tar", http.base);
    let node = Netns::new("node");
    let net_sock = dir.path().join("network.sock");
    let net = NetworkModule::start(&node, &net_sock, &dir.path().join("netstate"));
    {
        let conn = zeronode_types::bus::connect(&net_sock).await.unwrap();
        let n = zeronode_network::dbus::Network1Proxy::new(&conn)
            .await
            .unwrap();
        assert_eq!(
            n.network_create("blue", "10.231.0.0/24").await.unwrap(),
            "10.231.0.1/24"
        );
    }
    std::fs::write(dir.path().join("resolv.conf"), "nameserver 10.231.0.1\n").unwrap();
    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::write(volume.join("in.txt"), "from-the-host\n").unwrap();

    let mut m = module(dir.path(), &ctd, &net_sock, &cgroup.0);
    m.wait_line(
        "containers: 0 container(s) restored",
        Duration::from_secs(20),
    );
    let p = proxy(dir.path()).await;

    // A bad spec: a clear error, nothing made.
    let e = p.create(r#"{"name":"x"}"#).await.unwrap_err().to_string();
    assert!(e.contains("InvalidArgument") && e.contains("image"), "{e}");

    // The web container: env, volume, limits, workload network.
    let web = serde_json::json!({
        "name": "web",
        "image": {"url": url, "sha256": sha},
        "entrypoint": ["/bin/sh", "-c"],
        "args": ["env; cat /data/in.txt /etc/resolv.conf; echo from-the-container > /data/out.txt; \
                  echo pong > /www/index.html; echo serving; exec httpd -f -p 8080 -h /www"],
        "env": {"GREETING": "hello", "SECRET": "s3cr3t"},
        "workdir": "/tmp",
        "cpu": 0.5,
        "memory": 64u64 << 20,
        "mounts": [{"source": volume.display().to_string(), "target": "/data"}],
        "network": {"name": "blue"},
        "restart": "always",
    })
    .to_string();
    let st: Status = serde_json::from_str(&p.create(&web).await.unwrap()).unwrap();
    assert_eq!(st.state, "running", "{st:?}");
    assert_eq!(st.address.as_deref(), Some("10.231.0.2/24"));
    let logs = logs_with(&p, "web", "serving").await;
    for want in [
        "GREETING=hello",
        "FROM_IMAGE=yes",
        "HOSTNAME=web",
        "PWD=/tmp",
        "from-the-host",
        "nameserver 10.231.0.1",
    ] {
        assert!(logs.contains(want), "{want} missing: {logs}");
    }
    assert_eq!(
        std::fs::read_to_string(volume.join("out.txt")).unwrap(),
        "from-the-container\n"
    );
    assert_eq!(
        cgroup.memory_limit("web").as_deref(),
        Some("67108864"),
        "memory limit in the cgroup"
    );
    assert_eq!(cgroup.cpu_limit("web").as_deref(), Some("50000 100000"));

    // Idempotent: the same spec again changes nothing.
    let again: Status = serde_json::from_str(&p.create(&web).await.unwrap()).unwrap();
    assert_eq!((again.pid, again.restarts), (st.pid, 0));

    // A second container on the same network reaches the first.
    let client = serde_json::json!({
        "name": "client",
        "image": {"url": url, "sha256": sha},
        // busybox-static's wget crashes; nc speaks the HTTP request itself.
        "args": ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do \
                  printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 10.231.0.2 8080 | grep pong && exit 0; \
                  sleep 0.5; done; exit 1"],
        "network": {"name": "blue"},
        "restart": "never",
    })
    .to_string();
    let st: Status = serde_json::from_str(&p.create(&client).await.unwrap()).unwrap();
    assert_eq!(st.address.as_deref(), Some("10.231.0.3/24"));
    eprintln!(
        "Create to running with the image present: {} ms",
        st.start_ms.unwrap()
    );
    logs_with(&p, "client", "pong").await;
    let st = eventually(Duration::from_secs(20), "client exits", || async {
        let s = status(&p, "client").await;
        (s.state == "exited").then_some(s)
    })
    .await;
    assert_eq!(st.exit_status, Some(0));

    // Past its memory limit a process is killed (OOM: SIGKILL, 137).
    let hog = serde_json::json!({
        "name": "hog",
        "image": {"url": url, "sha256": sha},
        "args": ["sh", "-c", "echo start; x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived ${#x}"],
        "memory": 32u64 << 20,
        "restart": "never",
    })
    .to_string();
    p.create(&hog).await.unwrap();
    let st = eventually(Duration::from_secs(30), "hog exits", || async {
        let s = status(&p, "hog").await;
        (s.state == "exited").then_some(s)
    })
    .await;
    assert_eq!(st.exit_status, Some(137), "{st:?}");
    let l = p.logs("hog", 4096).await.unwrap();
    assert!(l.contains("start") && !l.contains("survived"), "{l}");

    // on-failure: restarted with back-off until it stops failing.
    let flaky = serde_json::json!({
        "name": "flaky",
        "image": {"url": url, "sha256": sha},
        "args": ["sh", "-c", "echo run; exit 3"],
        "restart": "on-failure",
    })
    .to_string();
    p.create(&flaky).await.unwrap();
    let st = eventually(Duration::from_secs(30), "three restarts", || async {
        let s = status(&p, "flaky").await;
        (s.restarts >= 3).then_some(s)
    })
    .await;
    assert_eq!(st.exit_status, Some(3));
    let runs = p.logs("flaky", 4096).await.unwrap().matches("run").count();
    assert!(runs >= 3, "{runs}");

    // A chatty container's log is capped: the newest output stays.
    let chatty = serde_json::json!({
        "name": "chatty",
        "image": {"url": url, "sha256": sha},
        "args": ["sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; \
                  i=$((i+1)); done; echo last-line; sleep 600"],
        "restart": "never",
    })
    .to_string();
    p.create(&chatty).await.unwrap();
    let logs_dir = dir.path().join("state/logs");
    // Rotated, and all written: the first rotation comes long before the
    // last line, and a read in between missed it (seen once in CI).
    eventually(
        Duration::from_secs(20),
        "chatty's log rotated and complete",
        || async {
            let cur = std::fs::read_to_string(logs_dir.join("chatty.log")).ok()?;
            let old = std::fs::read_to_string(logs_dir.join("chatty.log.1")).ok()?;
            let done = cur.contains("last-line") || old.contains("last-line");
            (cur.len() <= 8192 && old.len() <= 8192 && done).then_some(())
        },
    )
    .await;
    let l = p.logs("chatty", 1 << 20).await.unwrap();
    assert!(
        l.len() <= 2 * 8192 && l.contains("last-line"),
        "{}",
        l.len()
    );
    assert!(!l.contains("line-0-"), "the oldest output is gone");
    p.delete("chatty").await.unwrap();
    assert!(!logs_dir.join("chatty.log").exists() && !logs_dir.join("chatty.log.1").exists());

    // Delete removes that container and nothing else.
    let c = ctd.client().await;
    let before = c.inventory().await.unwrap();
    p.delete("flaky").await.unwrap();
    let after = c.inventory().await.unwrap();
    let gone = |v: &Vec<String>, w: &Vec<String>| -> Vec<String> {
        v.iter().filter(|x| !w.contains(x)).cloned().collect()
    };
    assert_eq!(gone(&before.containers, &after.containers), vec!["flaky"]);
    assert_eq!(gone(&before.snapshots, &after.snapshots), vec!["flaky"]);
    assert_eq!(before.images, after.images);
    assert_eq!(before.content, after.content);
    assert!(after.containers.contains(&"web".to_string()));
    assert_eq!(status(&p, "web").await.state, "running");
    let e = p.status("flaky").await.unwrap_err().to_string();
    assert!(e.contains("NotFound"), "{e}");
    let list: Vec<Status> = serde_json::from_str(&p.list().await.unwrap()).unwrap();
    let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["client", "hog", "web"]);
    assert!(volume.join("in.txt").exists(), "volumes are never touched");

    // Self-healing: the module stops (containers keep running), web's task
    // is lost as in a reboot; the restarted module brings it back with the
    // same address and the volume's data.
    assert!(m.terminate().success());
    let webpid = status_pid(&c, "web").await;
    c.task_kill("web", 9).await.unwrap();
    let _ = c.task_wait("web").await;
    c.task_delete("web").await.unwrap();
    assert!(webpid > 0);
    let m2 = module(dir.path(), &ctd, &net_sock, &cgroup.0);
    m2.wait_line(
        "containers: 3 container(s) restored",
        Duration::from_secs(30),
    );
    m2.wait_line(
        "container hog: exited with status 137 before; left so",
        Duration::from_secs(5),
    );
    let p = proxy(dir.path()).await;
    let st = status(&p, "web").await;
    assert_eq!(st.state, "running");
    assert_eq!(st.address.as_deref(), Some("10.231.0.2/24"));
    let out = eventually(Duration::from_secs(20), "web answers again", || async {
        let o = node.exec(&[
            "sh",
            "-c",
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 2 10.231.0.2 8080",
        ]);
        String::from_utf8_lossy(&o.stdout)
            .ends_with("\r\n\r\npong\n")
            .then_some(o)
    })
    .await;
    assert!(out.status.success());

    for n in ["web", "client", "hog"] {
        p.delete(n).await.unwrap();
    }
    let inv = c.inventory().await.unwrap();
    assert!(
        inv.containers.is_empty() && inv.images.is_empty(),
        "{inv:?}"
    );
    drop(m2);
    drop(net);
    drop(ctd);
    drop(cgroup);
}

async fn status_pid(c: &zeronode_containers::containerd::Ctd, name: &str) -> u32 {
    c.task_get(name).await.unwrap().map(|t| t.pid).unwrap_or(0)
}
