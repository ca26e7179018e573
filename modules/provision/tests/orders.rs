//! The order path end to end on the host: real identity and ledger
//! services, the real provision binary over HTTPS, the zn client library.

mod common;

use std::time::Duration;

use common::*;
use ed25519_dalek::SigningKey;
use serde_json::json;
use zeronode_client::ClientError;
use zeronode_deployment::hex;

fn code(e: &ClientError) -> String {
    e.code().unwrap_or("none").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_receipt_get_proof_update_delete() {
    let node = Node::start(true, &[]).await;
    let c = node.client();
    let owner = &node.owner;
    let before = node.ledger_count().await;

    // Deploy: a receipt signed by the node, pointing at the new entry.
    let r = c
        .deploy(signed(deployment(owner, "web-1", 1), &[owner]))
        .await
        .unwrap();
    assert_eq!(
        (r.kind.as_str(), r.deployment.as_str(), r.version),
        ("deploy", "web-1", 1)
    );
    assert_eq!(r.seq, before);
    assert!(r.tree_size > r.seq);
    assert!(r.verify(&c.node_key().unwrap()));

    // Reconciled through the (fake) modules, in order: network, then volume.
    let v = settled(&c, "web-1", owner).await;
    let states: Vec<&str> = v["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["ok", "ok"], "{v}");
    let calls = node.fakes.calls.lock().unwrap().clone();
    assert_eq!(calls[0].0, "NetworkCreate");
    assert_eq!(calls[1].0, "VolumeCreate");
    assert!(v["workloads"][1]["detail"]
        .as_str()
        .unwrap()
        .starts_with("/pool/volumes/zn-"));

    // The proof verifies with the node key alone.
    let p = c.proof("web-1", owner).await.unwrap();
    assert_eq!((p.seq, p.version), (r.seq, 1));

    // The ledger holds the order byte for byte and a result per workload.
    let ch = c.changes("web-1", owner).await.unwrap();
    let kinds: Vec<&str> = ch["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["deploy", "result", "result"]);

    // Another twin cannot read it.
    let stranger = SigningKey::from_bytes(&[9; 32]);
    assert_eq!(
        code(&c.get("web-1", &stranger).await.unwrap_err()),
        "forbidden"
    );

    // Update: only the changed workload is touched (the volume stays).
    let mut d2 = deployment(owner, "web-1", 2);
    d2["workloads"][0]["data"]["subnet"] = json!("10.78.0.0/24");
    d2["workloads"][0]["version"] = json!(2);
    let r2 = c.update("web-1", signed(d2, &[owner])).await.unwrap();
    assert_eq!(r2.kind, "update");
    for _ in 0..50 {
        if node.fakes.count("NetworkCreate") == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    settled(&c, "web-1", owner).await;
    assert_eq!(node.fakes.count("NetworkDelete"), 1);
    assert_eq!(node.fakes.count("NetworkCreate"), 2);
    assert_eq!(node.fakes.count("VolumeCreate"), 1);
    assert_eq!(node.fakes.count("VolumeDelete"), 0);

    // Delete with a signed delete order.
    let del = signed(
        json!({"kind": "delete", "id": "web-1", "version": 3, "twin": node.owner_hex()}),
        &[owner],
    );
    let r3 = c.delete("web-1", del.clone()).await.unwrap();
    assert_eq!(r3.kind, "delete");
    for _ in 0..50 {
        if node.fakes.count("VolumeDelete") == 1 && node.fakes.count("NetworkDelete") == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(node.fakes.count("VolumeDelete"), 1);
    assert_eq!(node.fakes.count("NetworkDelete"), 2);
    assert_eq!(code(&c.get("web-1", owner).await.unwrap_err()), "not_found");
    // The delete order replayed: not live any more.
    assert_eq!(
        code(&c.delete("web-1", del).await.unwrap_err()),
        "not_found"
    );
    // Re-creating needs a version above the delete's.
    let e = c
        .deploy(signed(deployment(owner, "web-1", 3), &[owner]))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "version_not_higher");
    c.deploy(signed(deployment(owner, "web-1", 4), &[owner]))
        .await
        .unwrap();

    // Open endpoints.
    let n = c.node().await.unwrap();
    assert_eq!(n["node_id"], node.node_id.as_str());
    assert_eq!(n["farm_id"], 7);
    assert!(n["ledger_head"]["size"].as_u64().unwrap() > 0);
    let (status, body) = c.raw("GET", "/metrics", &[], vec![]).await.unwrap();
    let text = String::from_utf8(body).unwrap();
    assert_eq!(status, 200);
    assert!(
        text.contains("zeronode_provision_orders_accepted_total{kind=\"deploy\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("zeronode_provision_orders_refused_total{code=\"version_not_higher\"} 1"),
        "{text}"
    );

    // A client pinned to another node id refuses to talk.
    let other =
        zeronode_identity::NodeId::from_key(SigningKey::from_bytes(&[5; 32]).verifying_key());
    let wrong = zeronode_client::Client::new(&node.url, Some(&other.to_string())).unwrap();
    assert!(
        matches!(wrong.node().await.unwrap_err(), ClientError::Connect(m) if m.contains("pinned"))
    );
}

/// Every bad order is refused with its own code, and the ledger does not grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_orders_are_refused_and_nothing_is_written() {
    let node = Node::start(false, &["--max-body", "65536"]).await;
    let c = node.client();
    let owner = &node.owner;
    let other = SigningKey::from_bytes(&[3; 32]);
    let twin2 = SigningKey::from_bytes(&[4; 32]);
    let twin3 = SigningKey::from_bytes(&[6; 32]);
    let t = |k: &SigningKey| hex::encode(k.verifying_key().as_bytes());

    // Setup that is allowed: v5 of "live", a grant for twin2 with a small
    // quota, a grant for twin3 that is then revoked.
    c.deploy(signed(deployment(owner, "live", 5), &[owner]))
        .await
        .unwrap();
    let grant = |twin: &SigningKey, version: u64, revoked: bool, disk: u64| {
        signed(
            json!({"kind": "grant", "twin": t(twin), "version": version,
                   "expiration": zeronode_client::api::now_secs() + 3600, "revoked": revoked,
                   "quota": {"cpu": 1, "memory": 1 << 30, "disk": disk, "count": 4}}),
            &[owner],
        )
    };
    c.grant(grant(&twin2, 1, false, 150 << 20)).await.unwrap();
    c.grant(grant(&twin3, 1, false, 1 << 30)).await.unwrap();
    c.grant(grant(&twin3, 2, true, 0)).await.unwrap();
    // twin2 uses 100 MiB of its 150 MiB.
    c.deploy(signed(deployment(&twin2, "t2-a", 1), &[&twin2]))
        .await
        .unwrap();
    // Their reconcile results (errors: no modules here) are in the ledger
    // before counting starts.
    settled(&c, "live", owner).await;
    settled(&c, "t2-a", &twin2).await;

    let valid = deployment(owner, "fresh", 1);
    let other_bytes = {
        // A valid signature, but over other bytes: signed, then changed.
        let mut v = valid.clone();
        zeronode_deployment::sign_value(&mut v, owner).unwrap();
        v["description"] = json!("changed after signing");
        serde_json::to_vec(&v).unwrap()
    };
    let wrong_key = {
        // Signed by another key but claiming to be the owner's signature.
        let mut v = valid.clone();
        zeronode_deployment::sign_value(&mut v, &other).unwrap();
        v["signatures"][0]["twin"] = json!(t(owner));
        serde_json::to_vec(&v).unwrap()
    };
    let two_signers = |threshold: u64, required_other: bool| {
        let mut v = valid.clone();
        v["signature_requirement"] = json!({"requests": [
            {"twin": t(owner), "weight": 1, "required": true},
            {"twin": t(&other), "weight": 1, "required": required_other}], "threshold": threshold});
        signed(v, &[owner])
    };
    let expired = {
        let mut v = valid.clone();
        v["expiration"] = json!(1000);
        signed(v, &[owner])
    };
    let unknown_type = {
        let mut v = valid.clone();
        v["workloads"][1]["type"] = json!("kubernetes");
        signed(v, &[owner])
    };
    let oversized = {
        let mut v = valid.clone();
        v["description"] = json!("x".repeat(70_000));
        signed(v, &[owner])
    };
    let over_quota = signed(deployment(&twin2, "t2-b", 1), &[&twin2]);
    let revoked = signed(deployment(&twin3, "t3", 1), &[&twin3]);
    let stranger = signed(deployment(&other, "s", 1), &[&other]);
    let grant_by_stranger = signed(
        json!({"kind": "grant", "twin": t(&other), "version": 1, "expiration": 4102444800u64,
               "quota": {"cpu": 1, "memory": 1, "disk": 1, "count": 1}}),
        &[&other],
    );

    enum Op {
        Post(Vec<u8>),
        Put(&'static str, Vec<u8>),
        Grant(Vec<u8>),
    }
    let cases: Vec<(&str, Op, u16, &str)> = vec![
        ("wrong key", Op::Post(wrong_key), 401, "signature_invalid"),
        (
            "valid signature over other bytes",
            Op::Post(other_bytes),
            401,
            "signature_invalid",
        ),
        (
            "missing required signer",
            Op::Post(two_signers(1, true)),
            401,
            "required_signer_missing",
        ),
        (
            "threshold not met",
            Op::Post(two_signers(2, false)),
            401,
            "threshold_not_met",
        ),
        (
            "replayed version",
            Op::Put("live", signed(deployment(owner, "live", 5), &[owner])),
            409,
            "version_not_higher",
        ),
        (
            "lower version",
            Op::Put("live", signed(deployment(owner, "live", 4), &[owner])),
            409,
            "version_not_higher",
        ),
        (
            "create over a live one",
            Op::Post(signed(deployment(owner, "live", 9), &[owner])),
            409,
            "deployment_exists",
        ),
        ("expired", Op::Post(expired), 422, "expired"),
        ("oversized body", Op::Post(oversized), 413, "body_too_large"),
        (
            "malformed JSON",
            Op::Post(b"{\"kind\": \"deployment\", ".to_vec()),
            400,
            "malformed_json",
        ),
        (
            "duplicate member",
            Op::Post(b"{\"kind\":\"deployment\",\"kind\":\"deployment\"}".to_vec()),
            400,
            "malformed_json",
        ),
        (
            "unknown workload type",
            Op::Post(unknown_type),
            422,
            "unknown_workload_type",
        ),
        (
            "schema",
            Op::Post(signed(json!({"kind": "deployment"}), &[owner])),
            422,
            "schema_invalid",
        ),
        (
            "quota exceeded",
            Op::Post(over_quota),
            403,
            "quota_exceeded",
        ),
        ("revoked grant", Op::Post(revoked), 403, "grant_revoked"),
        (
            "not the owner nor granted",
            Op::Post(stranger),
            403,
            "not_authorized",
        ),
        (
            "unsigned",
            Op::Post(serde_json::to_vec(&valid).unwrap()),
            401,
            "required_signer_missing",
        ),
        (
            "grant not by the owner",
            Op::Grant(grant_by_stranger),
            403,
            "not_authorized",
        ),
        (
            "grant replayed",
            Op::Grant(grant(&twin2, 1, false, 1 << 40)),
            409,
            "version_not_higher",
        ),
    ];
    let count = node.ledger_count().await;
    for (what, op, status, want) in cases {
        let r = match op {
            Op::Post(b) => c.deploy(b).await,
            Op::Put(id, b) => c.update(id, b).await,
            Op::Grant(b) => c.grant(b).await,
        };
        match r {
            Err(ClientError::Refused {
                status: s,
                code,
                message,
            }) => {
                assert_eq!((s, code.as_str()), (status, want), "{what}: {message}");
                assert!(!message.is_empty(), "{what}");
            }
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(node.ledger_count().await, count, "{what}: the ledger grew");
    }
    // Stale signed reads are refused.
    let (s, body) = c
        .raw(
            "GET",
            "/v1/deployments/live",
            zeronode_deployment::sign_read(owner, "GET", "/v1/deployments/live", 1000).as_ref(),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(s, 401);
    assert!(String::from_utf8_lossy(&body).contains("auth_stale"));
    let (s, _) = c.raw("GET", "/v1/deployments", &[], vec![]).await.unwrap();
    assert_eq!(s, 401);
    // The in-quota twin can still deploy within it (quota counts live use).
    let mut small = deployment(&twin2, "t2-c", 1);
    small["workloads"][1]["data"]["size"] = json!(40 << 20);
    let r = c.deploy(signed(small, &[&twin2])).await.unwrap();
    assert_eq!(r.seq, count);
}

/// Reconcile results are recorded honestly, and self-healing brings
/// workloads back after a provision restart and after a module restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_healing_after_restarts_and_honest_errors() {
    let mut node = Node::start(true, &[]).await;
    let owner = node.owner.clone();
    let c = node.client();
    let mut d = deployment(&owner, "heal", 1);
    d["workloads"].as_array_mut().unwrap().push(json!(
        {"name": "app", "type": "container", "version": 1,
         "data": {"image": "alpine", "cpu": 1, "memory": 67108864, "network": "net"}}));
    c.deploy(signed(d, &[&owner])).await.unwrap();
    let v = settled(&c, "heal", &owner).await;
    // A registry image: the containers module cannot pull yet, so the
    // result says so rather than pretending.
    assert_eq!(v["workloads"][2]["state"], "error");
    assert!(
        v["workloads"][2]["reason"]
            .as_str()
            .unwrap()
            .contains("registry images are not supported"),
        "{v}"
    );
    assert_eq!(node.fakes.count("ContainerCreate"), 0);
    assert_eq!(node.fakes.count("VolumeCreate"), 1);

    // Provision restarts (a node reboot, for provision): it replays the
    // ledger's live deployments and applies every workload again.
    node.restart_provision().await;
    let c = node.client();
    for _ in 0..50 {
        if node.fakes.count("VolumeCreate") == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(node.fakes.count("VolumeCreate"), 2);
    assert_eq!(node.fakes.count("NetworkCreate"), 2);
    // The volume existed: idempotent apply is ok.
    let v = settled(&c, "heal", &owner).await;
    assert_eq!(v["workloads"][1]["state"], "ok", "{v}");

    // The storage module restarts: its socket reappears, provision re-applies volumes.
    let fakes = node.fakes.clone();
    node.fakes.volumes.lock().unwrap().clear(); // it lost its volumes
    let sock = node.sock("storage");
    std::fs::remove_file(&sock).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.servers.push(
        zeronode_types::bus::serve(&sock, "/org/zeronode/Storage1", FakeStorage(fakes.clone()))
            .unwrap(),
    );
    for _ in 0..50 {
        if fakes.count("VolumeCreate") == 3 && !fakes.volumes.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fakes.count("VolumeCreate"), 3);
    assert_eq!(fakes.volumes.lock().unwrap().len(), 1);

    // Expiry: a deployment that expires soon is torn down and recorded so.
    let mut e = deployment(&owner, "short", 1);
    e["expiration"] = json!(zeronode_client::api::now_secs() + 2);
    e["workloads"][0]["data"]["subnet"] = json!("10.79.0.0/24");
    c.deploy(signed(e, &[&owner])).await.unwrap();
    settled(&c, "short", &owner).await;
    let mut gone = false;
    for _ in 0..60 {
        if c.get("short", &owner).await.is_err() && fakes.count("VolumeDelete") == 1 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "expired deployment not torn down");
    // Both workloads' results are recorded (the network's comes last).
    let mut summaries: Vec<String> = Vec::new();
    for _ in 0..50 {
        let ch = c.changes("short", &owner).await.unwrap();
        summaries = ch["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["summary"].as_str().unwrap().to_string())
            .collect();
        if summaries
            .iter()
            .filter(|s| s.ends_with("deleted: expired"))
            .count()
            == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(summaries.contains(&"expired".to_string()), "{summaries:?}");
    assert!(
        summaries
            .iter()
            .filter(|s| s.ends_with("deleted: expired"))
            .count()
            == 2,
        "{summaries:?}"
    );
}

/// A volume cannot change size in place: the update is recorded, the old
/// volume stays and the result says why. An expired grant authorises nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_resize_refused_in_place_and_grants_expire() {
    let node = Node::start(true, &[]).await;
    let c = node.client();
    let owner = node.owner.clone();
    c.deploy(signed(deployment(&owner, "vol", 1), &[&owner]))
        .await
        .unwrap();
    settled(&c, "vol", &owner).await;
    let mut d2 = deployment(&owner, "vol", 2);
    d2["workloads"][1]["data"]["size"] = json!(209715200);
    d2["workloads"][1]["version"] = json!(2);
    c.update("vol", signed(d2, &[&owner])).await.unwrap();
    let mut reason = String::new();
    for _ in 0..50 {
        let v = c.get("vol", &owner).await.unwrap();
        if v["workloads"][1]["state"] == "error" {
            reason = v["workloads"][1]["reason"].as_str().unwrap().to_string();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reason.contains("cannot change in place"), "{reason:?}");
    assert_eq!(node.fakes.count("VolumeDelete"), 0);
    assert_eq!(node.fakes.volumes.lock().unwrap()[0].1, 104857600);

    let twin = SigningKey::from_bytes(&[8; 32]);
    let g = signed(
        json!({"kind": "grant", "twin": hex::encode(twin.verifying_key().as_bytes()), "version": 1,
               "expiration": zeronode_client::api::now_secs() + 1,
               "quota": {"cpu": 1, "memory": 1, "disk": 1 << 30, "count": 4}}),
        &[&owner],
    );
    c.grant(g).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let count = node.ledger_count().await;
    let e = c
        .deploy(signed(deployment(&twin, "late", 1), &[&twin]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("grant_expired"), "{e}");
    assert_eq!(node.ledger_count().await, count);
}

/// A deployment of every type: the container and zdb drivers call their
/// (fake) modules in order, with node names, mounts resolved to volume
/// paths and the network's node name; results carry the address; logs are
/// a signed read; restarts replay; delete removes in reverse order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_and_zdbs_through_their_modules() {
    const PASSWORD: &str = "pw-never-shown-4711";
    let mut node = Node::start(true, &[]).await;
    let owner = node.owner.clone();
    let c = node.client();
    let mut d = deployment(&owner, "full", 1);
    // Listed container first: reconcile order, not list order, decides.
    d["workloads"].as_array_mut().unwrap().insert(
        0,
        json!({"name": "web", "type": "container", "version": 1,
               "data": {"image": {"url": "http://10.0.2.2:8000/web.tar", "sha256": "ab".repeat(32)},
                        "cpu": 1, "memory": 67108864, "network": "net",
                        "mounts": [{"volume": "data", "path": "/data"}],
                        "entrypoint": ["/bin/sh", "-c"], "args": ["echo hi; sleep 1000"],
                        "env": {"GREETING": "hello"}, "restart": "always"}}),
    );
    d["workloads"].as_array_mut().unwrap().push(json!(
        {"name": "db", "type": "zdb", "version": 1,
         "data": {"size": 1048576, "mode": "user", "password": PASSWORD, "public": false}}));

    // A mount of a volume the deployment does not have: refused, nothing written.
    let count = node.ledger_count().await;
    let mut bad = d.clone();
    bad["workloads"][0]["data"]["mounts"][0]["volume"] = json!("nope");
    let e = c.deploy(signed(bad, &[&owner])).await.unwrap_err();
    assert_eq!(code(&e), "schema_invalid");
    assert!(e.to_string().contains("no volume workload"), "{e}");
    assert_eq!(node.ledger_count().await, count);
    assert!(node.fakes.calls.lock().unwrap().is_empty());

    c.deploy(signed(d, &[&owner])).await.unwrap();
    let v = settled(&c, "full", &owner).await;
    let by_name = |v: &serde_json::Value, n: &str| {
        v["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == n)
            .cloned()
            .unwrap()
    };
    for n in ["net", "data", "db", "web"] {
        assert_eq!(by_name(&v, n)["state"], "ok", "{v}");
    }
    let calls: Vec<String> = node
        .fakes
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.0.clone())
        .collect();
    assert_eq!(
        calls,
        [
            "NetworkCreate",
            "VolumeCreate",
            "NamespaceCreate",
            "ContainerCreate"
        ]
    );
    let net_name = node.fakes.calls.lock().unwrap()[0].1.clone();
    let vol_name = node.fakes.calls.lock().unwrap()[1].1.clone();
    let ns_name = node.fakes.calls.lock().unwrap()[2].1.clone();
    let (cname, spec) = node.fakes.containers.lock().unwrap()[0].clone();
    assert!(cname.starts_with("zn-") && cname.len() == 35, "{cname}");
    assert_eq!(
        spec["mounts"][0]["source"],
        format!("/pool/volumes/{vol_name}")
    );
    assert_eq!(spec["mounts"][0]["target"], "/data");
    assert_eq!(spec["network"]["name"], net_name);
    assert_eq!(spec["image"]["sha256"], "ab".repeat(32));
    assert_eq!(spec["env"]["GREETING"], "hello");
    assert_eq!(spec["restart"], "always");
    assert_eq!(
        (spec["cpu"].as_f64(), spec["memory"].as_u64()),
        (Some(1.0), Some(67108864))
    );
    let web = by_name(&v, "web");
    assert!(
        web["detail"].as_str().unwrap().contains("10.77.0.2/24"),
        "{web}"
    );
    let db = by_name(&v, "db");
    assert_eq!(db["detail"], format!("namespace {ns_name} 0.0.0.0:9900"));
    // The password reached the module, and nothing the node shows.
    assert_eq!(node.fakes.namespaces.lock().unwrap()[0].3, PASSWORD);
    // (The signed order itself holds it, as signed, readable by its twin;
    // no result entry does.)
    let ch = c.changes("full", &owner).await.unwrap();
    for e in ch["changes"].as_array().unwrap() {
        if e["kind"] == "result" {
            assert!(!e.to_string().contains(PASSWORD), "{e}");
        }
    }

    // Logs: a signed read by the deployment's twin (the owner here).
    let l = c.logs("full", "web", None, &owner).await.unwrap();
    assert_eq!(l["logs"], format!("hello from {cname}\n"));
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    assert_eq!(
        code(&c.logs("full", "web", None, &stranger).await.unwrap_err()),
        "forbidden"
    );
    assert_eq!(
        code(&c.logs("full", "db", None, &owner).await.unwrap_err()),
        "not_found"
    );

    // Provision restarts: everything re-applied; the existing namespace
    // with the same settings is ok.
    node.restart_provision().await;
    let c = node.client();
    for _ in 0..50 {
        if node.fakes.count("ContainerCreate") == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(node.fakes.count("NamespaceCreate"), 2);
    assert_eq!(node.fakes.count("ContainerCreate"), 2);
    let v = settled(&c, "full", &owner).await;
    assert_eq!(by_name(&v, "db")["state"], "ok", "{v}");
    // The re-applied namespace still tells where it is reached.
    assert_eq!(
        by_name(&v, "db")["detail"],
        format!("namespace {ns_name} 0.0.0.0:9900")
    );
    assert_eq!(by_name(&v, "web")["state"], "ok", "{v}");

    // The containers module restarts: its workloads come back.
    let fakes = node.fakes.clone();
    fakes.containers.lock().unwrap().clear();
    let sock = node.sock("containers");
    std::fs::remove_file(&sock).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.servers.push(
        zeronode_types::bus::serve(
            &sock,
            "/org/zeronode/Containers1",
            FakeContainers(fakes.clone()),
        )
        .unwrap(),
    );
    for _ in 0..50 {
        if fakes.count("ContainerCreate") == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fakes.count("ContainerCreate"), 3);
    assert_eq!(fakes.containers.lock().unwrap().len(), 1);

    // Delete: removals in reverse order, then nothing left in the modules.
    fakes.calls.lock().unwrap().clear();
    let del = signed(
        json!({"kind": "delete", "id": "full", "version": 2, "twin": node.owner_hex()}),
        &[&owner],
    );
    c.delete("full", del).await.unwrap();
    for _ in 0..50 {
        if fakes.count("NetworkDelete") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls: Vec<String> = fakes
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.0.clone())
        .collect();
    assert_eq!(
        calls,
        [
            "ContainerDelete",
            "NamespaceDelete",
            "VolumeDelete",
            "NetworkDelete"
        ]
    );
    assert!(fakes.containers.lock().unwrap().is_empty());
    assert!(fakes.namespaces.lock().unwrap().is_empty());
}

/// All deployments' containers and VMs together must fit the node, whoever
/// deploys them: one that does not is refused with nothing written, and
/// fits again once another is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_must_fit_the_node_capacity() {
    let node = Node::start(
        false,
        &["--cpu-capacity", "3", "--memory-capacity", "536870912"],
    )
    .await;
    let c = node.client();
    let owner = &node.owner;
    let twin = SigningKey::from_bytes(&[7; 32]);
    let t = hex::encode(twin.verifying_key().as_bytes());
    // The twin's own quota is generous: only the node's capacity limits it.
    c.grant(signed(
        json!({"kind": "grant", "twin": t, "version": 1,
               "expiration": zeronode_client::api::now_secs() + 3600,
               "quota": {"cpu": 64, "memory": 1u64 << 40, "disk": 1u64 << 40, "count": 64}}),
        &[owner],
    ))
    .await
    .unwrap();
    let with = |key: &SigningKey, id: &str, version: u64, typ: &str, cpu: u64, memory: u64| {
        let mut d = deployment(key, id, version);
        let data = match typ {
            "vm" => json!({"kernel": {"url": "http://10.0.2.2/k", "sha256": "00".repeat(32)},
                           "cpu": cpu, "memory": memory, "network": "net"}),
            _ => json!({"image": {"url": "http://10.0.2.2/i.tar", "sha256": "00".repeat(32)},
                        "cpu": cpu, "memory": memory, "network": "net"}),
        };
        d["workloads"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "w", "type": typ, "version": 1, "data": data}));
        signed(d, &[key])
    };
    // The owner's VM takes 2 vCPUs and 256 MiB of 3 and 512 MiB.
    c.deploy(with(owner, "big", 1, "vm", 2, 256 << 20))
        .await
        .unwrap();
    settled(&c, "big", owner).await;
    let count = node.ledger_count().await;
    for (what, order, want) in [
        (
            "cpu",
            with(&twin, "small", 1, "container", 2, 64 << 20),
            "cpu: 4 ",
        ),
        (
            "memory",
            with(&twin, "small", 1, "container", 1, 300 << 20),
            "memory: 583008256 ",
        ),
    ] {
        match c.deploy(order).await {
            Err(ClientError::Refused {
                status,
                code,
                message,
            }) => {
                assert_eq!(
                    (status, code.as_str()),
                    (409, "capacity_exceeded"),
                    "{what}: {message}"
                );
                assert!(message.starts_with(want), "{what}: {message}");
            }
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(node.ledger_count().await, count, "{what}: the ledger grew");
    }
    // What fits beside it is taken; an update is counted without its old version.
    c.deploy(with(&twin, "small", 1, "container", 1, 256 << 20))
        .await
        .unwrap();
    c.update("big", with(owner, "big", 2, "vm", 2, 128 << 20))
        .await
        .unwrap();
    // Once the owner deletes the VM, the twin's larger container fits.
    let del = signed(
        json!({"kind": "delete", "id": "big", "version": 3, "twin": node.owner_hex()}),
        &[owner],
    );
    c.delete("big", del).await.unwrap();
    c.update("small", with(&twin, "small", 2, "container", 3, 512 << 20))
        .await
        .unwrap();
    let n = c.node().await.unwrap();
    assert_eq!(n["capacity"]["cpu"], 3, "{n}");
    assert_eq!(n["capacity"]["memory"], 512u64 << 20, "{n}");
    assert_eq!(n["used"], json!({"cpu": 3, "memory": 512u64 << 20}), "{n}");
}
