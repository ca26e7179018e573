//! org.zeronode.Ledger1 over a peer-to-peer socket, in process and through
//! the `zeronode-ledger` binary, checked by a client that trusts nothing
//! but the node's public key.

use std::sync::Arc;
use std::time::Duration;

use zeronode_ledger::dbus::{Ledger1Proxy, LedgerService, OBJECT_PATH};
use zeronode_ledger::verifier::{self, SignedTreeHead};
use zeronode_ledger::{KeySigner, Ledger, Options};
use zeronode_types::bus;

fn h32(v: &[u8]) -> [u8; 32] {
    v.try_into().unwrap()
}

async fn exercise(proxy: &Ledger1Proxy<'_>) {
    let pk: [u8; 32] = h32(&proxy.public_key().await.unwrap());
    let mut hashes = Vec::new();
    for i in 0..20u64 {
        let kind = if i % 4 == 3 { "result" } else { "deploy" };
        let dep = format!("d{}", i % 3);
        let r = proxy
            .append(
                kind,
                &dep,
                i,
                "owner-1",
                &["web"],
                format!("doc {i}").as_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(r.seq, i);
        hashes.push(h32(&r.hash));
    }
    assert_eq!(proxy.count().await.unwrap(), 20);

    // A record fetched over the bus checks out against the key alone.
    let rec = proxy.get(5).await.unwrap();
    let (e, hash) = verifier::verify_record(&pk, &rec).unwrap();
    assert_eq!(
        (e.seq, hash, e.payload.as_slice()),
        (5, hashes[5], &b"doc 5"[..])
    );
    assert_eq!(proxy.get_by_hash(&hashes[7]).await.unwrap().seq, 7);

    // Signed head, inclusion and consistency proofs.
    let head = proxy.head().await.unwrap();
    let sth = SignedTreeHead {
        size: head.size,
        time_ms: head.time_ms,
        root: h32(&head.root),
        signature: head.signature.as_slice().try_into().unwrap(),
    };
    sth.verify(&pk).unwrap();
    assert_eq!(sth.size, 20);
    for seq in [0u64, 5, 19] {
        let proof: Vec<[u8; 32]> = proxy
            .inclusion_proof(seq, 20)
            .await
            .unwrap()
            .iter()
            .map(|h| h32(h))
            .collect();
        verifier::verify_inclusion(&hashes[seq as usize], seq, 20, &proof, &sth.root).unwrap();
    }
    let old_root = h32(&proxy.root(7).await.unwrap());
    let cp: Vec<[u8; 32]> = proxy
        .consistency_proof(7, 20)
        .await
        .unwrap()
        .iter()
        .map(|h| h32(h))
        .collect();
    verifier::verify_consistency(7, 20, &old_root, &sth.root, &cp).unwrap();

    // Queries.
    let hist = proxy.history("d1").await.unwrap();
    assert_eq!(
        hist.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 4, 7, 10, 13, 16, 19]
    );
    let live = proxy.live().await.unwrap();
    assert_eq!(live.len(), 3);
    assert_eq!((live[0].deployment.as_str(), live[0].seq), ("d0", 18));
    let page = proxy.scan("kind", "result", -1, 3).await.unwrap();
    assert_eq!(
        page.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![3, 7, 11]
    );
    assert_eq!(page.next, 11);
    let page = proxy.scan("kind", "result", page.next, 3).await.unwrap();
    assert_eq!(
        page.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![15, 19]
    );
    assert_eq!(page.next, -1);
    assert_eq!(
        proxy
            .scan("time", "0..18446744073709551615", -1, 100)
            .await
            .unwrap()
            .records
            .len(),
        20
    );

    let v = proxy.verify().await.unwrap();
    assert!(v.ok && v.entries == 20, "{v:?}");

    // Bad requests get typed errors and change nothing.
    let err = proxy
        .append("bogus", "", 0, "", &[], b"x")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown kind"), "{err}");
    let err = proxy.get(99).await.unwrap_err();
    assert!(
        matches!(err, zeronode_ledger::dbus::Error::NotFound(_)),
        "{err}"
    );
    let err = proxy.inclusion_proof(25, 30).await.unwrap_err();
    assert!(
        matches!(err, zeronode_ledger::dbus::Error::OutOfRange(_)),
        "{err}"
    );
    assert!(proxy.scan("nope", "", -1, 1).await.is_err());
    assert_eq!(proxy.count().await.unwrap(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_interface_serves_verifiable_answers() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(
        &dir.path().join("db"),
        Arc::new(KeySigner::from_seed(&[3; 32])),
        Options::default(),
    )
    .unwrap();
    let sock = dir.path().join("run/ledger.sock");
    let server = bus::serve(&sock, OBJECT_PATH, LedgerService::new(ledger)).unwrap();
    let conn = bus::connect(&sock).await.unwrap();
    let proxy = Ledger1Proxy::new(&conn).await.unwrap();
    exercise(&proxy).await;
    server.abort();
}

/// Kills the daemon if the test fails first.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    std::fs::write(&key, "11".repeat(32)).unwrap();
    let sock = dir.path().join("ledger.sock");
    let db = dir.path().join("db");
    let bin = env!("CARGO_BIN_EXE_zeronode-ledger");
    let mut daemon = Daemon(
        std::process::Command::new(bin)
            .arg("--dir")
            .arg(&db)
            .arg("--socket")
            .arg(&sock)
            .arg("--key-file")
            .arg(&key)
            .spawn()
            .unwrap(),
    );
    let mut waited = 0;
    while !sock.exists() {
        assert!(waited < 200, "no socket after 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    {
        let conn = bus::connect(&sock).await.unwrap();
        let proxy = Ledger1Proxy::new(&conn).await.unwrap();
        exercise(&proxy).await;
    }
    nix_kill(daemon.0.id());
    let status = daemon.0.wait().unwrap();
    assert!(status.success(), "{status:?}");

    // The CLI audits and exports what the daemon wrote.
    let out = std::process::Command::new(bin)
        .arg("--dir")
        .arg(&db)
        .arg("verify")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("entries 20"));
    let file = dir.path().join("export");
    let copy = dir.path().join("copy");
    let st = std::process::Command::new(bin)
        .arg("--dir")
        .arg(&db)
        .arg("export")
        .arg(&file)
        .status()
        .unwrap();
    assert!(st.success());
    let st = std::process::Command::new(bin)
        .arg("--dir")
        .arg(&copy)
        .arg("import")
        .arg(&file)
        .status()
        .unwrap();
    assert!(st.success());

    // No key file and no identity module: a clear error and a non-zero exit.
    let out = std::process::Command::new(bin)
        .arg("--dir")
        .arg(dir.path().join("other"))
        .arg("--socket")
        .arg(&sock)
        .arg("--identity-socket")
        .arg(dir.path().join("no-identity.sock"))
        .args(["--identity-wait-secs", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("identity module") && err.contains("no-identity.sock"),
        "{err}"
    );
    assert!(!dir.path().join("other").exists(), "nothing written");
}

/// On a node the ledger never holds the key: it signs through the identity
/// module, and what it signs verifies under the node's public key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_signs_through_the_identity_module() {
    use zeronode_identity::service::{Identity, Identity1Proxy, OBJECT_PATH as IDENTITY_PATH};
    let dir = tempfile::tempdir().unwrap();
    let key = zeronode_identity::NodeKey::load_or_create(&dir.path().join("keys")).unwrap();
    let node_key = key.verifying_key().to_bytes();
    let id_sock = dir.path().join("identity.sock");
    let identity = bus::serve(&id_sock, IDENTITY_PATH, Identity::new(key, None, None)).unwrap();
    let sock = dir.path().join("ledger.sock");
    let db = dir.path().join("db");
    let mut daemon = Daemon(
        std::process::Command::new(env!("CARGO_BIN_EXE_zeronode-ledger"))
            .arg("--dir")
            .arg(&db)
            .arg("--socket")
            .arg(&sock)
            .arg("--identity-socket")
            .arg(&id_sock)
            .spawn()
            .unwrap(),
    );
    let mut waited = 0;
    while !sock.exists() {
        assert!(waited < 200, "no socket after 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    {
        let conn = bus::connect(&sock).await.unwrap();
        let proxy = Ledger1Proxy::new(&conn).await.unwrap();
        exercise(&proxy).await;
        assert_eq!(proxy.public_key().await.unwrap(), node_key.to_vec());
        let id_conn = bus::connect(&id_sock).await.unwrap();
        let info = Identity1Proxy::new(&id_conn)
            .await
            .unwrap()
            .info()
            .await
            .unwrap();
        assert_eq!(
            info.public_key,
            node_key
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
    }
    nix_kill(daemon.0.id());
    assert!(daemon.0.wait().unwrap().success());
    identity.abort();
}

fn nix_kill(pid: u32) {
    // SIGTERM through kill(1) keeps this test free of a libc dependency.
    let st = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success());
}
