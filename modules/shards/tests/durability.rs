//! What is on disk: index snapshots and their rebuild, torn tails, tombstones,
//! compaction, CHECK against flipped bytes.

mod common;

use std::collections::BTreeMap;

use common::{dump, value_for, Proc, Reply};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Writes `n` keys, overwrites every third, deletes every fifth; returns
/// what the namespace must hold.
fn workload(p: &Proc, prefix: &str, n: usize, size: usize) -> Model {
    let mut r = p.raw();
    let mut model = Model::new();
    let mut batch = Vec::new();
    let mut replies = 0;
    for i in 0..n {
        let k = format!("{prefix}-{i}");
        let v = value_for(&k, size);
        batch.extend(common::encode(&[b"SET", k.as_bytes(), &v]));
        replies += 1;
        model.insert(k.into_bytes(), v);
    }
    for i in (0..n).step_by(3) {
        let k = format!("{prefix}-{i}");
        let v = value_for(&format!("{k}-again"), size / 2 + 1);
        batch.extend(common::encode(&[b"SET", k.as_bytes(), &v]));
        replies += 1;
        model.insert(k.into_bytes(), v);
    }
    for i in (0..n).step_by(5) {
        let k = format!("{prefix}-{i}");
        batch.extend(common::encode(&[b"DEL", k.as_bytes()]));
        replies += 1;
        model.remove(k.as_bytes());
    }
    use std::io::Write;
    r.stream.write_all(&batch).unwrap();
    for _ in 0..replies {
        assert!(!r.reply().is_error());
    }
    model
}

fn ns_dir(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("data/default")
}

fn data_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(ns_dir(dir))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "dat"))
        .collect();
    v.sort();
    v
}

#[test]
fn index_rebuilt_from_data_files_gives_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::start(dir.path(), &["--file-size-mib", "1"]);
    let mut model = workload(&p, "a", 3000, 700);
    p.stop();
    assert!(ns_dir(dir.path()).join("index.snap").exists());
    assert!(data_files(dir.path()).len() > 1, "several data files");

    // From the snapshot.
    let mut p = Proc::start(dir.path(), &["--file-size-mib", "1"]);
    assert_eq!(dump(&mut p.raw()), model);
    // Snapshot behind: more writes, then kill -9 (no new snapshot).
    model.extend(workload(&p, "b", 500, 300));
    p.raw().cmd(&[b"DEL", b"a-1"]);
    model.remove(&b"a-1"[..]);
    p.kill();
    let mut p = Proc::start(dir.path(), &["--file-size-mib", "1"]);
    assert_eq!(dump(&mut p.raw()), model);
    p.stop();

    // No snapshot at all: everything from the data files.
    std::fs::remove_file(ns_dir(dir.path()).join("index.snap")).unwrap();
    let mut p = Proc::start(dir.path(), &["--file-size-mib", "1"]);
    assert_eq!(dump(&mut p.raw()), model);
    assert_eq!(p.raw().cmd(&[b"DBSIZE"]), Reply::Int(model.len() as i64));
    p.stop();

    // A damaged snapshot is not trusted either.
    let snap = ns_dir(dir.path()).join("index.snap");
    let mut bytes = std::fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&snap, bytes).unwrap();
    let p = Proc::start(dir.path(), &["--file-size-mib", "1"]);
    assert_eq!(dump(&mut p.raw()), model);
}

#[test]
fn a_torn_tail_is_cut_off_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::start(dir.path(), &[]);
    let model = workload(&p, "t", 200, 100);
    p.kill();
    let file = data_files(dir.path()).pop().unwrap();
    let good_len = std::fs::metadata(&file).unwrap().len();
    // A whole record with a flipped byte, then half a record: what a crash
    // in the middle of a write can leave.
    let mut bad = Vec::new();
    zeronode_shards::record::encode(&mut bad, 0, b"torn-1", &[7u8; 300], 1);
    let n = bad.len();
    bad[n - 5] ^= 0xff;
    let mut half = Vec::new();
    zeronode_shards::record::encode(&mut half, 0, b"torn-2", &[9u8; 300], 1);
    bad.extend_from_slice(&half[..half.len() / 2]);
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap()
        .write_all(&bad)
        .unwrap();
    let p = Proc::start(dir.path(), &[]);
    let mut r = p.raw();
    assert_eq!(r.cmd(&[b"GET", b"torn-1"]), Reply::Bulk(None));
    assert_eq!(r.cmd(&[b"GET", b"torn-2"]), Reply::Bulk(None));
    assert_eq!(dump(&mut r), model);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), good_len);
    // Appends go on after the cut.
    assert!(r.cmd(&[b"SET", b"after", b"x"]).bulk().is_some());
    assert_eq!(r.cmd(&[b"GET", b"after"]).bulk(), Some(&b"x"[..]));
}

#[test]
fn tombstones_and_compaction_reclaim_space_and_keep_data() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--file-size-mib", "1"];
    let p = Proc::start(dir.path(), &args);
    let mut model = workload(&p, "c", 4000, 1024);
    // Delete most of it: tombstones only, the space stays until compaction.
    let mut r = p.raw();
    let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
    for k in keys.iter().skip(300) {
        assert_eq!(r.cmd(&[b"DEL", k]), Reply::Status("OK".into()));
        model.remove(k);
    }
    let before = common::du(&ns_dir(dir.path()));
    assert_eq!(dump(&mut r), model);
    let Reply::Int(reclaimed) = r.cmd(&[b"COMPACT"]) else {
        panic!()
    };
    let after = common::du(&ns_dir(dir.path()));
    assert!(reclaimed > 0, "reclaimed {reclaimed}");
    assert!(
        after * 4 < before,
        "compaction reclaimed too little: {before} -> {after}"
    );
    assert_eq!(dump(&mut r), model);
    // Writes and deletes after the compaction, then a kill -9: the deleted
    // keys stay deleted, also from a full rebuild.
    r.cmd(&[b"SET", b"late", b"value"]);
    model.insert(b"late".to_vec(), b"value".to_vec());
    let gone = keys[0].clone();
    r.cmd(&[b"DEL", &gone]);
    model.remove(&gone);
    drop(r);
    let mut p = p;
    p.kill();
    let mut p = Proc::start(dir.path(), &args);
    assert_eq!(dump(&mut p.raw()), model);
    for k in keys.iter().skip(300).step_by(97) {
        assert_eq!(p.raw().cmd(&[b"EXISTS", k]), Reply::Int(0));
    }
    p.stop();
    std::fs::remove_file(ns_dir(dir.path()).join("index.snap")).unwrap();
    let p = Proc::start(dir.path(), &args);
    assert_eq!(dump(&mut p.raw()), model);
    // A second compaction with nothing dead changes nothing.
    let mut r = p.raw();
    r.cmd(&[b"COMPACT"]);
    assert_eq!(dump(&mut r), model);
}

#[test]
fn leftovers_of_an_interrupted_compaction_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::start(dir.path(), &[]);
    let model = workload(&p, "l", 300, 200);
    p.kill();
    // A crash before the manifest switch leaves new files the manifest
    // does not list (with records that would shadow newer ones) and a temp
    // manifest.
    let mut stale = Vec::new();
    zeronode_shards::record::encode(&mut stale, 0, b"l-1", b"OLD", 1);
    std::fs::write(ns_dir(dir.path()).join("00000099.dat"), &stale).unwrap();
    std::fs::write(ns_dir(dir.path()).join("MANIFEST.tmp"), b"{garbage").unwrap();
    let p = Proc::start(dir.path(), &[]);
    assert_eq!(dump(&mut p.raw()), model);
    assert!(!ns_dir(dir.path()).join("00000099.dat").exists());
    assert!(!ns_dir(dir.path()).join("MANIFEST.tmp").exists());
}

#[test]
fn check_finds_a_flipped_byte_and_get_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::start(dir.path(), &[]);
    let mut r = p.raw();
    r.cmd(&[b"SET", b"first", &[1u8; 1000]]);
    r.cmd(&[b"SET", b"second", &[2u8; 1000]]);
    drop(r);
    p.stop();
    // Flip a byte inside the first record's value (header 44 + key 5).
    let file = data_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[44 + 5 + 500] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();
    let p = Proc::start(dir.path(), &[]);
    let mut r = p.raw();
    assert_eq!(r.cmd(&[b"CHECK", b"first"]), Reply::Int(0));
    assert_eq!(r.cmd(&[b"CHECK", b"second"]), Reply::Int(1));
    assert_eq!(r.cmd(&[b"CHECK", b"none"]), Reply::Bulk(None));
    let Reply::Error(e) = r.cmd(&[b"GET", b"first"]) else {
        panic!("a corrupt value was served")
    };
    assert!(e.contains("Corrupted"), "{e}");
    assert_eq!(r.cmd(&[b"GET", b"second"]).bulk(), Some(&[2u8; 1000][..]));
}

#[test]
fn sequential_keys_are_not_reused_after_compaction_and_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::start(dir.path(), &[]);
    let mut r = p.raw();
    r.cmd(&[b"AUTH", b"adminpw"]);
    r.cmd(&[b"NSNEW", b"seq"]);
    r.cmd(&[b"NSSET", b"seq", b"mode", b"seq"]);
    r.cmd(&[b"SELECT", b"seq"]);
    for i in 0..5u32 {
        assert_eq!(
            r.cmd(&[b"SET", b"", b"v"]).bulk(),
            Some(&i.to_le_bytes()[..])
        );
    }
    r.cmd(&[b"DEL", &4u32.to_le_bytes()]);
    r.cmd(&[b"DEL", &3u32.to_le_bytes()]);
    assert!(matches!(r.cmd(&[b"COMPACT"]), Reply::Int(_)));
    drop(r);
    p.stop();
    std::fs::remove_file(dir.path().join("data/seq/index.snap")).unwrap();
    let p = Proc::start(dir.path(), &[]);
    let mut r = p.raw();
    r.cmd(&[b"SELECT", b"seq"]);
    assert_eq!(r.cmd(&[b"DBSIZE"]), Reply::Int(3));
    assert_eq!(
        r.cmd(&[b"SET", b"", b"new"]).bulk(),
        Some(&5u32.to_le_bytes()[..])
    );
}

#[test]
fn connections_beyond_max_clients_get_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), &["--max-clients", "2"]);
    let mut a = p.raw();
    let mut b = p.raw();
    assert_eq!(a.cmd(&[b"PING"]), Reply::Status("PONG".into()));
    assert_eq!(b.cmd(&[b"PING"]), Reply::Status("PONG".into()));
    let mut c = p.raw();
    let Reply::Error(e) = c.reply() else { panic!() };
    assert!(e.contains("max number of clients"), "{e}");
    drop(a);
    // The slot frees once the server has seen the close.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut d = p.raw();
        d.send(&[b"PING"]);
        if d.reply() == Reply::Status("PONG".into()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
