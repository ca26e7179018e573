//! Group commit under `--sync always`: concurrent clients share fdatasyncs,
//! and every acknowledged write is readable at once.

mod common;

use common::{Proc, Reply};

fn syncs(p: &Proc) -> u64 {
    let info = p.raw().cmd(&[b"NSINFO", b"default"]);
    let text = String::from_utf8(info.bulk().unwrap().to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("syncs: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn concurrent_writers_share_syncs_under_always() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), &["--sync", "always"]);
    let before = syncs(&p);
    const CLIENTS: usize = 16;
    const EACH: usize = 40;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let addr = p.addr.clone();
            std::thread::spawn(move || {
                let mut r = common::Raw::connect(&addr);
                for i in 0..EACH {
                    let k = format!("c{c}-{i}");
                    let v = common::value_for(&k, 1024);
                    assert_eq!(
                        r.cmd(&[b"SET", k.as_bytes(), &v]).bulk(),
                        Some(k.as_bytes())
                    );
                    assert_eq!(r.cmd(&[b"GET", k.as_bytes()]).bulk(), Some(&v[..]));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let used = syncs(&p) - before;
    let writes = (CLIENTS * EACH) as u64;
    eprintln!("{writes} acknowledged SETs took {used} fdatasyncs");
    // Every SET was synced before its answer, and groups shared syncs.
    assert!(used >= 1);
    assert!(
        used < writes * 3 / 4,
        "{used} syncs for {writes} writes: no group commit"
    );
    assert_eq!(p.raw().cmd(&[b"DBSIZE"]), Reply::Int(writes as i64));
}

#[test]
fn a_namespace_can_sync_always_under_an_everysec_server() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), &[]);
    let mut admin = p.raw();
    admin.cmd(&[b"AUTH", b"adminpw"]);
    let before = syncs(&p);
    admin.cmd(&[b"SET", b"a", b"1"]);
    admin.cmd(&[b"SET", b"b", b"2"]);
    // everysec: no sync per write (at most the background one each second)...
    assert!(syncs(&p) - before <= 1);
    // ...but within about a second the background sync covers them.
    let before = syncs(&p);
    admin.cmd(&[b"SET", b"c", b"3"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(2500);
    while syncs(&p) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "everysec: no background sync within 2.5 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    admin.cmd(&[b"NSSET", b"default", b"sync", b"always"]);
    let before = syncs(&p);
    for i in 0..5 {
        admin.cmd(&[b"SET", format!("k{i}").as_bytes(), b"v"]);
    }
    assert!(syncs(&p) - before >= 5, "always: one sync per lone write");
}
