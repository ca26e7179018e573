//! The 0-db command set against the real binary, through the `redis` crate,
//! raw RESP, and Debian's redis-cli.

mod common;

use common::{Proc, Reply};
use redis::Commands;

fn redis_cli(p: &Proc, args: &[&str]) -> String {
    let (host, port) = p.addr.rsplit_once(':').unwrap();
    let out = std::process::Command::new("redis-cli")
        .args(["-h", host, "-p", port])
        .args(args)
        .output()
        .expect("redis-cli (Debian redis-tools) is installed");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

#[test]
fn command_set_with_the_redis_crate() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), &[]);
    let mut c = p.redis();
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
    // 0-db answers SET with the key.
    let k: String = c.set("alpha", "one").unwrap();
    assert_eq!(k, "alpha");
    let v: String = c.get("alpha").unwrap();
    assert_eq!(v, "one");
    // Same value again: nothing written, nil.
    let same: Option<String> = c.set("alpha", "one").unwrap();
    assert_eq!(same, None);
    let _: String = c.set("alpha", "two").unwrap();
    assert_eq!(c.get::<_, String>("alpha").unwrap(), "two");
    assert!(c.exists::<_, bool>("alpha").unwrap());
    assert!(!c.exists::<_, bool>("nope").unwrap());
    let check: i64 = redis::cmd("CHECK").arg("alpha").query(&mut c).unwrap();
    assert_eq!(check, 1);
    let missing: Option<Vec<u8>> = c.get("nope").unwrap();
    assert_eq!(missing, None);
    // A binary value with CRLF and NULs inside, and a 1 MiB one.
    let bin: Vec<u8> = (0..=255u8).chain(b"\r\n\0\r\n".iter().copied()).collect();
    let _: Vec<u8> = c.set(b"bin", &bin).unwrap();
    assert_eq!(c.get::<_, Vec<u8>>(b"bin").unwrap(), bin);
    let big = common::value_for("big", 1 << 20);
    let _: Vec<u8> = c.set("big", &big).unwrap();
    assert_eq!(c.get::<_, Vec<u8>>("big").unwrap(), big);
    let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(n, 3);
    let ok: String = c.del("alpha").unwrap();
    assert_eq!(ok, "OK");
    let err = c.del::<_, String>("alpha").unwrap_err();
    assert!(format!("{err:?}").contains("not found"), "{err:?}");
    assert!(!c.exists::<_, bool>("alpha").unwrap());
    let (secs, _usecs): (String, String) = redis::cmd("TIME").query(&mut c).unwrap();
    assert!(secs.parse::<u64>().unwrap() > 1_600_000_000);
    let info: String = redis::cmd("INFO").query(&mut c).unwrap();
    assert!(info.contains("server_name: zeronode-shards"), "{info}");
    let err = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query::<Vec<String>>(&mut c)
        .unwrap_err();
    assert!(format!("{err:?}").contains("not supported"), "{err:?}");
    // Over the key and value limits: refused, connection still fine.
    let long_key = vec![b'k'; 256];
    assert!(c.set::<_, _, Vec<u8>>(&long_key, "v").is_err());
    assert_eq!(redis::cmd("PING").query::<String>(&mut c).unwrap(), "PONG");
}

#[test]
fn scan_rscan_keycur_walk_in_write_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), &[]);
    let mut r = p.raw();
    let keys: Vec<String> = (0..150).map(|i| format!("key-{i:03}")).collect();
    for k in &keys {
        assert_eq!(
            r.cmd(&[b"SET", k.as_bytes(), b"v"]).bulk(),
            Some(k.as_bytes())
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let reply = match &cursor {
            None => r.cmd(&[b"SCAN"]),
            Some(c) => r.cmd(&[b"SCAN", c]),
        };
        match reply {
            Reply::Error(e) => {
                assert_eq!(e, "No more data");
                break;
            }
            Reply::Array(parts) => {
                let Reply::Array(entries) = &parts[1] else {
                    panic!("{parts:?}")
                };
                for e in entries {
                    let Reply::Array(f) = e else { panic!() };
                    seen.push(String::from_utf8(f[0].bulk().unwrap().to_vec()).unwrap());
                    assert_eq!(f[1], Reply::Int(1));
                }
                cursor = Some(parts[0].bulk().unwrap().to_vec());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, keys);
    // RSCAN from the cursor of key-010 goes backwards.
    let cur = r.cmd(&[b"KEYCUR", b"key-010"]);
    let Reply::Array(parts) = r.cmd(&[b"RSCAN", cur.bulk().unwrap()]) else {
        panic!()
    };
    let Reply::Array(entries) = &parts[1] else {
        panic!()
    };
    let Reply::Array(first) = &entries[0] else {
        panic!()
    };
    assert_eq!(first[0].bulk().unwrap(), b"key-009");
    assert_eq!(entries.len(), 10);
    assert!(r.cmd(&[b"KEYCUR", b"nope"]).is_error());
}

#[test]
fn namespaces_passwords_public_and_maxsize() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), &[]);
    let mut admin = p.raw();
    // Namespace management needs AUTH.
    assert!(admin.cmd(&[b"NSNEW", b"ns1"]).is_error());
    assert!(admin.cmd(&[b"AUTH", b"wrong"]).is_error());
    assert_eq!(
        admin.cmd(&[b"AUTH", b"adminpw"]),
        Reply::Status("OK".into())
    );
    assert_eq!(admin.cmd(&[b"NSNEW", b"ns1"]), Reply::Status("OK".into()));
    assert!(admin.cmd(&[b"NSNEW", b"ns1"]).is_error());
    assert!(admin.cmd(&[b"NSNEW", b"../x"]).is_error());
    for (prop, value) in [("password", "secret"), ("maxsize", "1000"), ("public", "0")] {
        assert_eq!(
            admin.cmd(&[b"NSSET", b"ns1", prop.as_bytes(), value.as_bytes()]),
            Reply::Status("OK".into()),
            "{prop}"
        );
    }
    assert!(admin.cmd(&[b"NSSET", b"ns1", b"color", b"red"]).is_error());
    let Reply::Array(list) = admin.cmd(&[b"NSLIST"]) else {
        panic!()
    };
    assert_eq!(list.len(), 2);
    let info = admin.cmd(&[b"NSINFO", b"ns1"]);
    let text = String::from_utf8(info.bulk().unwrap().to_vec()).unwrap();
    assert!(
        text.contains("password: yes") && text.contains("public: no"),
        "{text}"
    );
    assert!(!text.contains("secret"));

    // A private namespace: no password, no entry; wrong password refused.
    let mut c = p.raw();
    assert!(c.cmd(&[b"SELECT", b"ns1"]).is_error());
    let Reply::Error(e) = c.cmd(&[b"SELECT", b"ns1", b"nope"]) else {
        panic!()
    };
    assert!(!e.contains("nope"));
    assert!(c.cmd(&[b"SELECT", b"missing"]).is_error());
    assert_eq!(
        c.cmd(&[b"SELECT", b"ns1", b"secret"]),
        Reply::Status("OK".into())
    );
    let v = vec![b'x'; 600];
    assert!(c.cmd(&[b"SET", b"a", &v]).bulk().is_some());
    // maxsize 1000: a second 600-byte value does not fit.
    let Reply::Error(full) = c.cmd(&[b"SET", b"b", &v]) else {
        panic!()
    };
    assert!(full.contains("No space left"), "{full}");
    assert_eq!(c.cmd(&[b"EXISTS", b"b"]), Reply::Int(0));
    // Replacing a value within the limit is fine.
    assert!(c.cmd(&[b"SET", b"a", &v[..500]]).bulk().is_some());
    assert_eq!(c.cmd(&[b"DBSIZE"]), Reply::Int(1));

    // Public: readable without the password, not writable.
    admin.cmd(&[b"NSSET", b"ns1", b"public", b"1"]);
    let mut reader = p.raw();
    assert_eq!(reader.cmd(&[b"SELECT", b"ns1"]), Reply::Status("OK".into()));
    assert_eq!(reader.cmd(&[b"GET", b"a"]).bulk(), Some(&v[..500]));
    assert!(reader.cmd(&[b"SET", b"c", b"x"]).is_error());
    assert!(reader.cmd(&[b"DEL", b"a"]).is_error());
    // Namespaces are separate.
    assert_eq!(
        reader.cmd(&[b"SELECT", b"default"]),
        Reply::Status("OK".into())
    );
    assert_eq!(reader.cmd(&[b"GET", b"a"]), Reply::Bulk(None));

    // Sequential mode: the store picks keys.
    admin.cmd(&[b"NSNEW", b"seq"]);
    assert_eq!(
        admin.cmd(&[b"NSSET", b"seq", b"mode", b"seq"]),
        Reply::Status("OK".into())
    );
    admin.cmd(&[b"SELECT", b"seq"]);
    let k0 = admin.cmd(&[b"SET", b"", b"first"]);
    let k1 = admin.cmd(&[b"SET", b"", b"second"]);
    assert_eq!(k0.bulk(), Some(&0u32.to_le_bytes()[..]));
    assert_eq!(k1.bulk(), Some(&1u32.to_le_bytes()[..]));
    assert_eq!(
        admin.cmd(&[b"GET", &1u32.to_le_bytes()]).bulk(),
        Some(&b"second"[..])
    );
    assert!(admin.cmd(&[b"SET", &9u32.to_le_bytes(), b"x"]).is_error());
    assert!(admin
        .cmd(&[b"SET", &0u32.to_le_bytes(), b"updated"])
        .bulk()
        .is_some());
    assert!(admin.cmd(&[b"NSSET", b"seq", b"mode", b"user"]).is_error());

    // NSDEL: gone, and a connection that had it selected is told so.
    assert_eq!(
        admin.cmd(&[b"SELECT", b"default"]),
        Reply::Status("OK".into())
    );
    assert_eq!(admin.cmd(&[b"NSDEL", b"ns1"]), Reply::Status("OK".into()));
    assert!(c.cmd(&[b"GET", b"a"]).is_error());
    assert!(admin.cmd(&[b"NSDEL", b"default"]).is_error());
    assert!(!dir.path().join("data/ns1").exists());
}

#[test]
fn namespace_management_is_refused_without_an_admin_password() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start_with(dir.path(), &["--lock-default"], false);
    let mut c = p.raw();
    let Reply::Error(e) = c.cmd(&[b"NSNEW", b"x"]) else {
        panic!()
    };
    assert!(e.contains("provision"), "{e}");
    assert!(c.cmd(&[b"AUTH", b"anything"]).is_error());
    // --lock-default: the default namespace is read-only for clients.
    assert!(c.cmd(&[b"SET", b"k", b"v"]).is_error());
    assert_eq!(c.cmd(&[b"GET", b"k"]), Reply::Bulk(None));
}

#[test]
fn redis_cli_works_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), &[]);
    assert_eq!(redis_cli(&p, &["PING"]), "PONG");
    assert_eq!(
        redis_cli(&p, &["SET", "greeting", "hello world"]),
        "greeting"
    );
    assert_eq!(redis_cli(&p, &["GET", "greeting"]), "hello world");
    assert_eq!(redis_cli(&p, &["EXISTS", "greeting"]), "1");
    assert_eq!(redis_cli(&p, &["DBSIZE"]), "1");
    assert_eq!(redis_cli(&p, &["CHECK", "greeting"]), "1");
    assert_eq!(redis_cli(&p, &["DEL", "greeting"]), "OK");
    assert_eq!(redis_cli(&p, &["GET", "greeting"]), "");
    assert!(redis_cli(&p, &["NSLIST"]).contains("default"));
    assert!(redis_cli(&p, &["CONFIG", "GET", "save"]).contains("not supported"));
    // Several commands on one connection, the way a person types them.
    let (host, port) = p.addr.rsplit_once(':').unwrap();
    let mut child = std::process::Command::new("redis-cli")
        .args(["-h", host, "-p", port])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"AUTH adminpw\nNSNEW cli\nNSSET cli password pw\nSELECT cli pw\nSET k v\nGET k\nNSINFO cli\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..6], &["OK", "OK", "OK", "OK", "k", "v"], "{text}");
    assert!(text.contains("entries: 1"), "{text}");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), &[]);
    let mut c = p.raw();
    let mut batch = Vec::new();
    for i in 0..500 {
        let k = format!("p{i}");
        batch.extend(common::encode(&[
            b"SET",
            k.as_bytes(),
            &common::value_for(&k, 100),
        ]));
        batch.extend(common::encode(&[b"GET", k.as_bytes()]));
    }
    use std::io::Write;
    c.stream.write_all(&batch).unwrap();
    for i in 0..500 {
        let k = format!("p{i}");
        assert_eq!(c.reply().bulk(), Some(k.as_bytes()));
        assert_eq!(c.reply().bulk(), Some(&common::value_for(&k, 100)[..]));
    }
}
