//! Workload networks over D-Bus in fresh namespaces: two workloads on one
//! network reach each other and, through NAT on zn0, an upstream host that
//! has no route back to them; networks are fenced from each other; a
//! workload keeps its address across a restart of the module.

mod common;

use std::time::Duration;

use common::*;

const STATIC: &str = "ip=10.99.0.7::10.99.0.1:255.255.255.0::eth0:off";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_reach_each_other_and_upstream_through_nat() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lan = lan();
    let (w1, w2, w3) = (Netns::new("w1"), Netns::new("w2"), Netns::new("w3"));
    let mut node = module(&lan.node, dir.path(), STATIC);
    node.wait_line("network: zn0 static", Duration::from_secs(20));
    let p = proxy(dir.path()).await;

    assert_eq!(
        p.network_create("blue", "10.200.0.0/24").await.unwrap(),
        "10.200.0.1/24"
    );
    // Bad requests: clear errors, nothing changed.
    let e = p
        .network_create("green", "10.99.0.0/24")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("InvalidArgument") && e.contains("10.99.0.0/24"),
        "{e}"
    );
    let e = p
        .network_create("Bad Name", "10.210.0.0/24")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("network name"), "{e}");
    let e = p
        .network_create("green", "10.200.0.5/24")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("host bits"), "{e}");
    let e = p
        .attach("blue", "ghost", "/run/netns/does-not-exist")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("does-not-exist"), "{e}");
    let e = p
        .attach("nope", "w1", w1.path().to_str().unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no network"), "{e}");

    let a1 = p
        .attach("blue", "w1", w1.path().to_str().unwrap())
        .await
        .unwrap();
    let a2 = p
        .attach("blue", "w2", w2.path().to_str().unwrap())
        .await
        .unwrap();
    assert_eq!(
        (a1.as_str(), a2.as_str()),
        ("10.200.0.2/24", "10.200.0.3/24")
    );
    let s = state(&p).await;
    assert_eq!(
        s["networks"]["networks"]["blue"]["attachments"]["w2"]["address"],
        "10.200.0.3"
    );
    assert!(v4_on(&s, "znb-blue").contains(&"10.200.0.1/24".to_string()));
    let inside = String::from_utf8_lossy(&w1.exec(&["ip", "-4", "addr", "show", "eth0"]).stdout)
        .into_owned();
    assert!(inside.contains("10.200.0.2/24"), "{inside}");

    let bridge_mac = |s: &serde_json::Value| {
        s["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == "znb-blue")
            .unwrap()["mac"]
            .clone()
    };
    assert!(w1.ping("10.200.0.3"), "w1 -> w2 on the same network");
    assert!(w2.ping("10.200.0.2"), "w2 -> w1");
    // The upstream has no route to 10.200.0.0/24: only NAT brings replies back.
    let routes = String::from_utf8_lossy(&lan.peer.exec(&["ip", "route"]).stdout).into_owned();
    assert!(!routes.contains("10.200."), "{routes}");
    assert!(w1.ping("10.99.0.1"), "w1 -> upstream through NAT");
    assert!(w2.ping("10.99.0.1"), "w2 -> upstream through NAT");
    assert!(
        !lan.peer.ping("10.200.0.2"),
        "the upstream cannot reach into a workload network"
    );

    // Another network is fenced off from the first.
    p.network_create("red", "10.201.0.0/24").await.unwrap();
    assert_eq!(
        p.attach("red", "w3", w3.path().to_str().unwrap())
            .await
            .unwrap(),
        "10.201.0.2/24"
    );
    assert!(w3.ping("10.99.0.1"), "w3 -> upstream");
    assert!(!w3.ping("10.200.0.2"), "red must not reach blue");

    // Restart: same addresses for the same workloads, new ones elsewhere.
    // w1's veth is lost meanwhile (as after a reboot): the restart plugs it
    // back in from the stored state.
    let w1_veth = s["networks"]["networks"]["blue"]["attachments"]["w1"]["host_veth"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(node.terminate().success());
    run(&["ip", "-n", &lan.node.name, "link", "del", &w1_veth]);
    let node = module(&lan.node, dir.path(), STATIC);
    node.wait_line("network: zn0 static", Duration::from_secs(20));
    let p = proxy(dir.path()).await;
    wait_state(&p, Duration::from_secs(10), "w1 plugged back in", |s| {
        s["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["name"] == w1_veth.as_str())
    })
    .await;
    let inside = String::from_utf8_lossy(&w1.exec(&["ip", "-4", "addr", "show", "eth0"]).stdout)
        .into_owned();
    assert!(
        inside.contains("10.200.0.2/24"),
        "w1 has its address back: {inside}"
    );
    assert_eq!(
        p.attach("blue", "w2", w2.path().to_str().unwrap())
            .await
            .unwrap(),
        "10.200.0.3/24"
    );
    let w4 = Netns::new("w4");
    assert_eq!(
        p.attach("blue", "w4", w4.path().to_str().unwrap())
            .await
            .unwrap(),
        "10.200.0.4/24"
    );
    assert_eq!(
        bridge_mac(&state(&p).await),
        bridge_mac(&s),
        "the gateway's MAC stays put"
    );
    if !w1.ping("10.99.0.1") {
        for (ns, cmd) in [
            (&lan.node, vec!["nft", "list", "ruleset"]),
            (&lan.node, vec!["ip", "-d", "link"]),
            (&lan.node, vec!["ip", "addr"]),
            (&w1, vec!["ip", "addr"]),
            (&w1, vec!["ip", "route"]),
            (&lan.node, vec!["ip", "route"]),
        ] {
            let o = ns.exec(&cmd);
            eprintln!(
                "DIAG {cmd:?}:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        eprintln!("DIAG retry: {}", w1.ping("10.99.0.1"));
        eprintln!("DIAG gw: {}", w1.ping("10.200.0.1"));
        eprintln!("DIAG node->peer: {}", lan.node.ping("10.99.0.1"));
        panic!("NAT is back after the restart");
    }
    assert!(w4.ping("10.200.0.2"), "w4 -> w1");
    assert!(!w3.ping("10.200.0.2"), "the fence is back too");

    // Detach and delete.
    p.detach("blue", "w1").await.unwrap();
    assert!(!w4.ping("10.200.0.2"), "w1 is gone");
    let s = state(&p).await;
    assert!(s["networks"]["networks"]["blue"]["attachments"]["w1"].is_null());
    p.network_delete("blue").await.unwrap();
    let s = state(&p).await;
    assert!(s["networks"]["networks"]["blue"].is_null());
    assert!(!s["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["name"] == "znb-blue"));
    let inside = String::from_utf8_lossy(&w2.exec(&["ip", "link"]).stdout).into_owned();
    assert!(
        !inside.contains("eth0"),
        "w2's veth went with the network: {inside}"
    );
    let stored = std::fs::read_to_string(dir.path().join("state/networks.json")).unwrap();
    assert!(
        stored.contains("red") && !stored.contains("blue"),
        "{stored}"
    );
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_that_appears_after_start_is_loaded_on_first_use() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lan = lan();
    let w1 = Netns::new("w1");
    let node = module(&lan.node, dir.path(), STATIC);
    node.wait_line("loading it on first use", Duration::from_secs(20));
    let p = proxy(dir.path()).await;
    assert!(state(&p).await["networks"]["networks"]
        .as_object()
        .unwrap()
        .is_empty());
    // The node cache is mounted (by storage) with state from an earlier boot.
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    let earlier = format!(
        r#"{{"networks":{{"late":{{"subnet":"10.202.0.0/24","bridge":"znb-late","attachments":{{"w1":{{"address":"10.202.0.9","netns":"{}","host_veth":"znv00000001"}}}}}}}}}}"#,
        w1.path().display()
    );
    std::fs::write(dir.path().join("state/networks.json"), earlier).unwrap();
    let s = state(&p).await;
    assert_eq!(
        s["networks"]["networks"]["late"]["attachments"]["w1"]["address"],
        "10.202.0.9"
    );
    assert!(
        s["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["name"] == "znb-late"),
        "bridge restored"
    );
    assert!(
        w1.ping("10.202.0.1"),
        "w1 plugged back in with its stored address"
    );
    assert!(w1.ping("10.99.0.1"), "and NAT restored");
    drop(node);
}
