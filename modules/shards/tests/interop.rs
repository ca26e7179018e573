//! What the objects client (modules/objects) asks of a shard store, as its
//! ignored interop test does against this binary: the `--data` flag, AUTH with
//! the admin password, NSNEW + NSSET password (what a zdb deployment does),
//! `SELECT ns password`, shard-sized values, EXISTS, DEL of a missing key
//! answered with a "not found" error, and a wrong password refused without
//! echoing it. The full scenario (a 2+1 object over three stores, one
//! stopped) runs with:
//!
//! ```text
//! cargo build --release -p zeronode-shards
//! ZN_SHARDS_BIN=target/release/zeronode-shards \
//!     cargo test -p zeronode-objects --test shards_interop -- --ignored
//! ```

mod common;

use std::process::{Command, Stdio};

use common::{value_for, Raw, Reply};

#[test]
fn the_objects_client_protocol_works() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin"), "adminpw\n").unwrap();
    let socket = dir.path().join("shards.sock");
    // Exactly the objects interop test's command line.
    let (mut child, addr) = common::start_on_free_port(&socket, |addr| {
        let mut cmd = Command::new(common::BIN);
        cmd.arg("--data")
            .arg(dir.path().join("data"))
            .args(["--listen", addr])
            .arg("--socket")
            .arg(&socket)
            .arg("--admin-password-file")
            .arg(dir.path().join("admin"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    });

    let mut admin = Raw::connect(&addr);
    for cmd in [
        &[&b"AUTH"[..], b"adminpw"][..],
        &[b"NSNEW", b"objects"],
        &[b"NSSET", b"objects", b"password", b"nspw"],
    ] {
        let reply = admin.cmd(cmd);
        assert!(!reply.is_error(), "{cmd:?}: {reply:?}");
    }
    assert!(dir.path().join("data/objects/namespace.json").exists());

    let mut c = Raw::connect(&addr);
    assert_eq!(
        c.cmd(&[b"SELECT", b"objects", b"nspw"]),
        Reply::Status("OK".into())
    );
    // Shards of a 2+1 object with 1 MiB stripes are 512 KiB; metadata is small.
    for (i, size) in [(0, 512 << 10), (1, 512 << 10), (2, 300)].into_iter() {
        let key = format!("shard-{i}");
        let value = value_for(&key, size);
        assert!(c.cmd(&[b"SET", key.as_bytes(), &value]).bulk().is_some());
        assert_eq!(c.cmd(&[b"GET", key.as_bytes()]).bulk(), Some(&value[..]));
        assert_eq!(c.cmd(&[b"EXISTS", key.as_bytes()]), Reply::Int(1));
    }
    assert_eq!(c.cmd(&[b"PING"]), Reply::Status("PONG".into()));
    let Reply::Error(e) = c.cmd(&[b"DEL", b"never-stored"]) else {
        panic!()
    };
    assert!(e.to_ascii_lowercase().contains("not found"), "{e}");

    let mut intruder = Raw::connect(&addr);
    let Reply::Error(e) = intruder.cmd(&[b"SELECT", b"objects", b"nope"]) else {
        panic!("a wrong password was accepted")
    };
    assert!(!e.contains("nope"), "{e}");
    // Without SELECT a client is in the default namespace, not in ours.
    assert_eq!(intruder.cmd(&[b"GET", b"shard-0"]), Reply::Bulk(None));

    let _ = child.kill();
    let _ = child.wait();
}
