//! org.zeronode.Shards1: provision's way to create and remove namespaces.

mod common;

use std::time::{Duration, Instant};

use common::{Proc, Reply};
use zeronode_shards::dbus::Shards1Proxy;

async fn proxy(p: &Proc) -> (zbus::Connection, Shards1Proxy<'static>) {
    // The socket file appears at bind(2), a moment before listen(2):
    // until then a connect is refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    let conn = loop {
        match zeronode_types::bus::connect(&p.socket).await {
            Ok(conn) => break conn,
            Err(e) => assert!(Instant::now() < deadline, "no D-Bus socket: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let proxy = Shards1Proxy::new(&conn).await.unwrap();
    (conn, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_come_from_dbus_and_passwords_stay_out_of_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut p = Proc::start_logged(dir.path(), &["--lock-default"], &log);
    let (_conn, shards) = proxy(&p).await;
    let secret = "pw-Secret-4711";

    let addr = shards
        .namespace_create("tenant1", 4096, "user", secret, false)
        .await
        .unwrap();
    assert_eq!(addr.namespace, "tenant1");
    assert_eq!(format!("{}:{}", addr.host, addr.port), p.addr);
    let again = shards
        .namespace_create("tenant1", 4096, "user", secret, false)
        .await
        .unwrap_err();
    assert!(again.to_string().contains("Exists"), "{again}");
    // A caller re-applying the namespace learns where it is reached.
    let (host, port) = shards.listener().await.unwrap();
    assert_eq!(format!("{host}:{port}"), p.addr);
    let bad = shards
        .namespace_create("../etc", 0, "user", "", true)
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("Invalid"), "{bad}");
    let bad = shards
        .namespace_create("t2", 0, "sideways", "", true)
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("Invalid"), "{bad}");
    shards
        .namespace_create("public-seq", 0, "seq", "", true)
        .await
        .unwrap();

    let mut list = shards.namespace_list().await.unwrap();
    list.sort();
    assert_eq!(list, ["default", "public-seq", "tenant1"]);

    // The namespace works over RESP with its password, and only with it.
    let mut c = p.raw();
    assert!(c.cmd(&[b"SELECT", b"tenant1"]).is_error());
    assert!(c.cmd(&[b"SELECT", b"tenant1", b"wrong"]).is_error());
    assert_eq!(
        c.cmd(&[b"SELECT", b"tenant1", secret.as_bytes()]),
        Reply::Status("OK".into())
    );
    assert!(c.cmd(&[b"SET", b"k", &[5u8; 1000]]).bulk().is_some());
    // size 4096 is the namespace's maxsize.
    assert!(c.cmd(&[b"SET", b"k2", &[5u8; 4000]]).is_error());
    // RESP cannot manage namespaces on a node (no admin password).
    assert!(c.cmd(&[b"NSDEL", b"tenant1"]).is_error());

    let info = shards.namespace_info("tenant1").await.unwrap();
    assert_eq!(
        (info.size, info.entries, info.public, info.password_set),
        (4096, 1, false, true)
    );
    assert_eq!(info.used, 1001);
    assert_eq!(info.mode, "userkey");
    assert_eq!(info.sync, "everysec");
    assert!(shards.namespace_info("nope").await.is_err());

    shards
        .namespace_set("tenant1", "maxsize", "0")
        .await
        .unwrap();
    assert!(c.cmd(&[b"SET", b"k2", &[5u8; 4000]]).bulk().is_some());
    shards
        .namespace_set("tenant1", "sync", "always")
        .await
        .unwrap();
    assert_eq!(
        shards.namespace_info("tenant1").await.unwrap().sync,
        "always"
    );
    assert!(c.cmd(&[b"SET", b"k3", b"synced"]).bulk().is_some());
    assert!(shards
        .namespace_set("tenant1", "colour", "red")
        .await
        .is_err());
    c.cmd(&[b"DEL", b"k2"]);
    let reclaimed = shards.namespace_compact("tenant1").await.unwrap();
    assert!(reclaimed > 4000, "reclaimed {reclaimed}");
    assert_eq!(c.cmd(&[b"GET", b"k3"]).bulk(), Some(&b"synced"[..]));

    // Settings survive a restart; the namespace is still there.
    drop(c);
    p.stop();
    let p = Proc::start_logged(dir.path(), &["--lock-default"], &dir.path().join("log2"));
    let (_conn, shards) = proxy(&p).await;
    let info = shards.namespace_info("tenant1").await.unwrap();
    assert_eq!((info.entries, info.sync.as_str()), (2, "always"));
    let mut c = p.raw();
    assert_eq!(
        c.cmd(&[b"SELECT", b"tenant1", secret.as_bytes()]),
        Reply::Status("OK".into())
    );
    assert_eq!(c.cmd(&[b"GET", b"k3"]).bulk(), Some(&b"synced"[..]));

    let meta = std::fs::read_to_string(dir.path().join("data/tenant1/namespace.json")).unwrap();
    assert!(meta.contains("hash") && !meta.contains(secret), "{meta}");
    shards.namespace_delete("tenant1").await.unwrap();
    assert!(c.cmd(&[b"GET", b"k3"]).is_error());
    assert!(p
        .raw()
        .cmd(&[b"SELECT", b"tenant1", secret.as_bytes()])
        .is_error());
    assert!(shards.namespace_delete("tenant1").await.is_err());
    assert!(shards.namespace_delete("default").await.is_err());
    assert!(!dir.path().join("data/tenant1").exists());

    // Debug logs of both runs and the settings on disk never hold the password.
    let logs = std::fs::read_to_string(&log).unwrap()
        + &std::fs::read_to_string(dir.path().join("log2")).unwrap();
    assert!(logs.contains("namespace created"), "{logs}");
    assert!(!logs.contains(secret));
    let meta = std::fs::read_to_string(dir.path().join("data/public-seq/namespace.json")).unwrap();
    assert!(meta.contains("sequential"));
}
