//! Images through the library against a real containerd: a digest
//! mismatch is refused with nothing left behind (content, images,
//! snapshots, containers, leases, downloads); a good archive is imported,
//! unpacked under its chain ID and runs; deleting its last container
//! deletes the image, and containerd's GC its content and snapshots.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use zeronode_containers::{Config, ContainerSpec, Error, Manager};

fn spec(name: &str, url: &str, sha: &str, args: &[&str]) -> ContainerSpec {
    ContainerSpec::from_json(
        &serde_json::json!({
            "name": name,
            "image": {"url": url, "sha256": sha},
            "args": args,
            "restart": "never",
        })
        .to_string(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatch_refused_then_import_run_and_gc() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ctd = Containerd::start(dir.path());
    let archive = busybox_archive("one").unwrap();
    let sha = sha256_hex(&archive);
    let http =
        HttpServer::start(HashMap::from([("/one.tar".to_string(), archive.clone())])).unwrap();
    let url = format!("{}/one.tar", http.base);
    let file_url = {
        let p = dir.path().join("one.tar");
        std::fs::write(&p, &archive).unwrap();
        format!("file://{}", p.display())
    };
    let mut cfg = Config::new(
        ctd.socket.clone(),
        dir.path().join("state"),
        dir.path().join("run"),
    );
    cfg.namespace = ctd.ns.clone();
    let cgroup = CgroupParent::new();
    cfg.cgroup_parent = cgroup.0.clone();
    let m = Manager::new(cfg).await.unwrap();
    let client = ctd.client().await;
    let before = client.inventory().await.unwrap();

    // Wrong digest: refused, nothing anywhere.
    let wrong = "0".repeat(64);
    let e = m
        .create(spec("bad", &url, &wrong, &["true"]))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
    assert!(e.to_string().contains(&sha), "{e}");
    assert_eq!(client.inventory().await.unwrap(), before);
    assert_eq!(
        std::fs::read_dir(dir.path().join("state/tmp"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("state/containers"))
            .unwrap()
            .count(),
        0
    );
    assert!(m.list().await.unwrap().is_empty());
    // A 404 likewise.
    let e = m
        .create(spec(
            "bad",
            &format!("{}/none.tar", http.base),
            &sha,
            &["true"],
        ))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("404"), "{e}");
    assert_eq!(client.inventory().await.unwrap(), before);

    // A command the image does not have: the error from runc, and the
    // image it brought, the snapshot and the namespace are gone again.
    let mut broken = spec("broken", &url, &sha, &[]);
    broken.entrypoint = vec!["/no/such/program".into()];
    let e = m.create(broken).await.unwrap_err().to_string();
    assert!(e.contains("/no/such/program"), "{e}");
    assert_eq!(client.inventory().await.unwrap(), before);
    assert!(!dir.path().join("run/netns/broken").exists());
    assert!(m.list().await.unwrap().is_empty());

    // The good archive, from file://: imported, unpacked, runs.
    let st = m
        .create(spec(
            "once",
            &file_url,
            &sha,
            &["sh", "-c", "cat /etc/marker"],
        ))
        .await
        .unwrap();
    assert_eq!(st.image, sha);
    let inv = client.inventory().await.unwrap();
    assert_eq!(inv.images, vec![format!("zeronode/archive@sha256:{sha}")]);
    assert_eq!(inv.content.len(), 3, "manifest, config, layer: {inv:?}");
    assert!(inv.snapshots.contains(&"once".to_string()), "{inv:?}");
    assert_eq!(inv.snapshots.len(), 2, "layer chain + container: {inv:?}");
    assert!(inv.leases.is_empty(), "import lease ended: {inv:?}");
    let logs = eventually(Duration::from_secs(20), "marker in the logs", || async {
        let l = String::from_utf8_lossy(&m.logs("once", 1000).unwrap()).into_owned();
        l.contains("one").then_some(l)
    })
    .await;
    assert!(logs.contains("one"), "{logs}");
    let st = eventually(Duration::from_secs(20), "exit", || async {
        let s = m.status("once").await.unwrap();
        (s.state == "exited").then_some(s)
    })
    .await;
    assert_eq!(st.exit_status, Some(0));

    // Same archive over HTTP for a second container: no second import.
    let t = std::time::Instant::now();
    m.create(spec("twice", &url, &sha, &["sleep", "60"]))
        .await
        .unwrap();
    eprintln!("Create with the image present: {:?}", t.elapsed());
    assert_eq!(client.inventory().await.unwrap().images.len(), 1);

    // Deleting one keeps the image (the other uses it) ...
    m.delete("once").await.unwrap();
    let inv = client.inventory().await.unwrap();
    assert_eq!(inv.images.len(), 1);
    assert_eq!(inv.containers, vec!["twice".to_string()]);
    assert!(!inv.snapshots.contains(&"once".to_string()));
    assert!(matches!(
        m.delete("once").await.unwrap_err(),
        Error::NotFound(_)
    ));
    // ... deleting the last one drops image, content and snapshots.
    m.delete("twice").await.unwrap();
    let after = eventually(Duration::from_secs(10), "GC", || async {
        let inv = client.inventory().await.unwrap();
        (inv == before).then_some(inv)
    })
    .await;
    assert_eq!(after, before);
    drop(m);
    drop(ctd);
    drop(cgroup);
}

/// https:// through rustls: refused without a trusted issuer (nothing left
/// behind), fetched and run with the test's CA given as extra root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_archive_with_an_extra_ca() {
    if !can_run()
        || std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_err()
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ossl = |args: &[&str]| {
        let o = std::process::Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    ossl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                "/CN=zntest-ca",
            ],
        ]
        .concat(),
    );
    ossl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "srv.key",
                "-out",
                "srv.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    ossl(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    let www = d.join("www");
    std::fs::create_dir(&www).unwrap();
    let archive = busybox_archive("tls").unwrap();
    let sha = sha256_hex(&archive);
    std::fs::write(www.join("tls.tar"), &archive).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = std::process::Command::new("openssl");
    cmd.args(["s_server", "-quiet", "-WWW", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(d.join("srv.pem"))
        .arg("-key")
        .arg(d.join("srv.key"))
        .current_dir(&www);
    let _server = Proc::spawn(cmd);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "s_server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("https://127.0.0.1:{port}/tls.tar");

    let ctd = Containerd::start(d);
    let cgroup = CgroupParent::new();
    let client = ctd.client().await;
    let before = client.inventory().await.unwrap();
    let config = |ca: bool| {
        let mut cfg = Config::new(ctd.socket.clone(), d.join("state"), d.join("run"));
        cfg.namespace = ctd.ns.clone();
        cfg.cgroup_parent = cgroup.0.clone();
        cfg.ca_file = ca.then(|| d.join("ca.pem"));
        cfg
    };

    let m = Manager::new(config(false)).await.unwrap();
    let e = m
        .create(spec("tls", &url, &sha, &["true"]))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("TLS") && e.contains("UnknownIssuer"), "{e}");
    assert_eq!(client.inventory().await.unwrap(), before);
    drop(m);

    let m = Manager::new(config(true)).await.unwrap();
    m.create(spec("tls", &url, &sha, &["sh", "-c", "cat /etc/marker"]))
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "marker in the logs", || async {
        let l = String::from_utf8_lossy(&m.logs("tls", 1000).unwrap()).into_owned();
        l.contains("tls").then_some(())
    })
    .await;
    m.delete("tls").await.unwrap();
    drop(m);
    drop(ctd);
    drop(cgroup);
}
