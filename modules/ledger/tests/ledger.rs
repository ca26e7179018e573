//! The ledger as a user sees it: appends, queries, proofs, verify, tamper
//! detection, rebuilds, export and import.

use std::path::Path;
use std::sync::Arc;

use zeronode_ledger::verifier::{self, MemoryTree};
use zeronode_ledger::{
    BreakReason, Entry, EntryMeta, KeySigner, Kind, Ledger, LedgerError, Options, Scan, Signer,
};

fn signer(n: u8) -> Arc<dyn Signer> {
    Arc::new(KeySigner::from_seed(&[n; 32]))
}

fn open(dir: &Path) -> Ledger {
    Ledger::open(dir, signer(1), Options::default()).unwrap()
}

fn meta(dep: &str, version: u64, owner: &str, workloads: &[&str]) -> EntryMeta {
    EntryMeta {
        deployment: dep.into(),
        version,
        owner: owner.into(),
        workloads: workloads.iter().map(|s| s.to_string()).collect(),
    }
}

/// A mixed history: deployments created, updated, deleted, results, grants.
fn fill(l: &Ledger, n: u64) {
    for i in 0..n {
        let dep = format!("dep-{}", i % 7);
        let owner = format!("twin-{}", i % 3);
        let (kind, version) = match i % 5 {
            0 => (Kind::Deploy, i),
            1 => (Kind::Update, i),
            2 => (Kind::Result, i),
            3 if i % 4 == 3 => (Kind::Delete, i),
            _ => (Kind::Grant, 0),
        };
        let m = if kind == Kind::Grant {
            meta("", 0, &owner, &[])
        } else {
            meta(&dep, version, &owner, &[&format!("wl-{}", i % 4)])
        };
        let payload = format!(
            "{{\"doc\":{i},\"pad\":\"{}\"}}",
            "x".repeat((i % 50) as usize)
        );
        let r = l.append(kind, m, payload.into_bytes()).unwrap();
        assert_eq!(r.seq, i);
    }
}

#[test]
fn appends_chain_and_sign_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let l = open(dir.path());
    fill(&l, 100);
    let report = l.verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.entries, 100);
    let mut prev = [0u8; 32];
    let mut tree = MemoryTree::new();
    for seq in 0..100 {
        let rec = l.record(seq).unwrap().unwrap();
        let (e, hash) = verifier::verify_record(&l.public_key().unwrap(), &rec).unwrap();
        assert_eq!(e.seq, seq);
        assert_eq!(e.prev, prev);
        assert_eq!(l.seq_of(&hash).unwrap(), Some(seq));
        prev = hash;
        tree.push(&hash);
    }
    assert_eq!(l.tree_head().unwrap(), (100, tree.root()));
    assert_eq!(report.root, tree.root());
    let sth = l.signed_tree_head().unwrap();
    assert_eq!((sth.size, sth.root), (100, tree.root()));
    sth.verify(&l.public_key().unwrap()).unwrap();
    assert!(sth.verify(&signer(2).public_key()).is_err());
}

#[test]
fn payloads_are_stored_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let l = open(dir.path());
    let payload: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let r = l
        .append(Kind::Deploy, meta("d", 1, "o", &["w"]), payload.clone())
        .unwrap();
    let e = l.get(r.seq).unwrap().unwrap();
    assert_eq!(e.payload, payload);
    assert_eq!(l.get_by_hash(&r.hash).unwrap().unwrap(), e);
    assert_eq!(l.get(1).unwrap(), None);
}

#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let l = open(dir.path());
    let err = l
        .append(Kind::Deploy, meta(&"d".repeat(5000), 1, "", &[]), vec![])
        .unwrap_err();
    assert!(matches!(err, LedgerError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("deployment"), "{err}");
    assert_eq!(l.len().unwrap(), 0);
}

#[test]
fn another_key_is_refused_and_audit_copies_cannot_append() {
    let dir = tempfile::tempdir().unwrap();
    {
        let l = open(dir.path());
        fill(&l, 3);
    }
    let err = Ledger::open(dir.path(), signer(9), Options::default())
        .err()
        .unwrap();
    assert!(matches!(err, LedgerError::KeyMismatch { .. }), "{err}");
    let audit = Ledger::open_for_audit(dir.path(), Options::default()).unwrap();
    assert!(audit.verify().unwrap().is_ok());
    assert!(matches!(
        audit.append(Kind::Event, EntryMeta::default(), vec![]),
        Err(LedgerError::NoSigner)
    ));
    let empty = tempfile::tempdir().unwrap();
    assert!(Ledger::open_for_audit(empty.path(), Options::default()).is_err());
}

#[test]
fn it_serves_before_its_signer_comes_and_appends_once_it_did() {
    let dir = tempfile::tempdir().unwrap();
    let l = Ledger::open_awaiting_signer(dir.path(), Options::default()).unwrap();
    // Reads answer at once; an append waits in the queue for the signer.
    assert_eq!(l.len().unwrap(), 0);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let queued = {
        let l = l.clone();
        std::thread::spawn(move || {
            let r = l.append(Kind::Event, meta("early", 1, "", &[]), b"queued".to_vec());
            done_tx.send(()).unwrap();
            r
        })
    };
    assert!(
        done_rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err(),
        "an append finished before the ledger had a signer"
    );
    l.attach_signer(signer(1)).unwrap();
    let receipt = queued.join().unwrap().unwrap();
    assert_eq!(receipt.seq, 0);
    assert_eq!(l.public_key().unwrap(), signer(1).public_key());
    for seq in 1..4 {
        let r = l.append(Kind::Event, meta("later", seq, "", &[]), vec![]);
        assert_eq!(r.unwrap().seq, seq);
    }
    assert!(matches!(
        l.attach_signer(signer(1)),
        Err(LedgerError::SignerAttached)
    ));
    drop(l);

    // Another key is refused, and then nothing appends.
    let l = Ledger::open_awaiting_signer(dir.path(), Options::default()).unwrap();
    let err = l.attach_signer(signer(9)).unwrap_err();
    assert!(matches!(err, LedgerError::KeyMismatch { .. }), "{err}");
    let err = l
        .append(Kind::Event, EntryMeta::default(), vec![])
        .unwrap_err();
    assert!(matches!(err, LedgerError::SignerFailed(_)), "{err}");
    drop(l);

    // A signer that never came fails what waited for it and changes nothing.
    let l = Ledger::open_awaiting_signer(dir.path(), Options::default()).unwrap();
    let waiting = {
        let l = l.clone();
        std::thread::spawn(move || l.append(Kind::Event, EntryMeta::default(), vec![]))
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    l.signer_failed("identity did not answer".into());
    let err = waiting.join().unwrap().unwrap_err();
    assert!(matches!(err, LedgerError::WriterGone), "{err}");
    let err = l.signed_tree_head().unwrap_err();
    assert!(err.to_string().contains("identity did not answer"), "{err}");
    drop(l);
    let l = open(dir.path());
    assert_eq!(l.len().unwrap(), 4);
    assert!(l.verify().unwrap().is_ok());

    // A new ledger whose signer never came holds no key: the next signer's
    // key is the one it records.
    let fresh = dir.path().join("fresh");
    let l = Ledger::open_awaiting_signer(&fresh, Options::default()).unwrap();
    l.signer_failed("no".into());
    drop(l);
    let l = Ledger::open(&fresh, signer(2), Options::default()).unwrap();
    assert_eq!(l.public_key().unwrap(), signer(2).public_key());
}

#[test]
fn reopen_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    {
        let l = open(dir.path());
        fill(&l, 10);
    }
    let l = open(dir.path());
    let r = l
        .append(Kind::Event, EntryMeta::default(), b"after".to_vec())
        .unwrap();
    assert_eq!(r.seq, 10);
    assert!(l.verify().unwrap().is_ok());
    let e = l.get(10).unwrap().unwrap();
    let before = l.record(9).unwrap().unwrap();
    assert_eq!(
        e.prev,
        *blake3::hash(&before[..before.len() - 64]).as_bytes()
    );
    assert!(e.time_ms >= l.get(9).unwrap().unwrap().time_ms);
}

#[test]
fn queries_follow_the_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let l = open(dir.path());
    l.append(
        Kind::Deploy,
        meta("web", 1, "alice", &["nginx"]),
        b"v1".to_vec(),
    )
    .unwrap();
    l.append(Kind::Deploy, meta("db", 1, "bob", &["pg"]), b"db1".to_vec())
        .unwrap();
    l.append(
        Kind::Update,
        meta("web", 2, "alice", &["nginx", "cache"]),
        b"v2".to_vec(),
    )
    .unwrap();
    l.append(
        Kind::Result,
        meta("web", 2, "", &["nginx"]),
        b"running".to_vec(),
    )
    .unwrap();
    l.append(
        Kind::Update,
        meta("web", 1, "alice", &["nginx"]),
        b"replayed old".to_vec(),
    )
    .unwrap();
    l.append(Kind::Delete, meta("db", 2, "bob", &[]), b"rm".to_vec())
        .unwrap();
    l.append(
        Kind::Deploy,
        meta("api", 1, "alice", &["api"]),
        b"api".to_vec(),
    )
    .unwrap();

    assert_eq!(l.history("web").unwrap(), vec![0, 4, 2, 3]);
    assert_eq!(l.version("web", 2).unwrap(), vec![2, 3]);
    // db was deleted; web's live version is 2 (the late v1 does not win).
    assert_eq!(
        l.live().unwrap(),
        vec![("api".to_string(), 1, 6), ("web".to_string(), 2, 2)]
    );
    assert_eq!(
        l.scan(&Scan::Owner("alice".into()), None, 10).unwrap().seqs,
        vec![0, 2, 4, 6]
    );
    assert_eq!(
        l.scan(&Scan::Workload("nginx".into()), None, 10)
            .unwrap()
            .seqs,
        vec![0, 2, 3, 4]
    );
    assert_eq!(
        l.scan(&Scan::Kind(Kind::Deploy), None, 10).unwrap().seqs,
        vec![0, 1, 6]
    );
    let all = l
        .scan(
            &Scan::Time {
                from_ms: 0,
                to_ms: u64::MAX,
            },
            None,
            100,
        )
        .unwrap();
    assert_eq!(all.seqs, (0..7).collect::<Vec<_>>());
    let none = l
        .scan(
            &Scan::Time {
                from_ms: 0,
                to_ms: 1,
            },
            None,
            100,
        )
        .unwrap();
    assert!(none.seqs.is_empty());

    // Pagination: pages of 3 cover everything once, in order.
    let mut seen: Vec<u64> = Vec::new();
    let mut after = None;
    loop {
        let page = l.scan(&Scan::All, after, 3).unwrap();
        seen.extend(&page.seqs);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).collect::<Vec<_>>());
    let mut seen: Vec<u64> = Vec::new();
    let mut after = None;
    let all_time = Scan::Time {
        from_ms: 0,
        to_ms: u64::MAX,
    };
    loop {
        let page = l.scan(&all_time, after, 2).unwrap();
        seen.extend(&page.seqs);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).collect::<Vec<_>>());
    let p = l.scan(&Scan::Owner("alice".into()), Some(0), 2).unwrap();
    assert_eq!((p.seqs, p.next), (vec![2, 4], Some(4)));
    let e: Vec<Entry> = l.entries(&[6]).unwrap();
    assert_eq!(e[0].payload, b"api");
}

/// Every query the indexes answer, as one comparable value.
fn snapshot(l: &Ledger) -> Vec<String> {
    let mut out = vec![format!("{:?}", l.live().unwrap())];
    for d in 0..7 {
        out.push(format!("{:?}", l.history(&format!("dep-{d}")).unwrap()));
    }
    for o in 0..3 {
        out.push(format!(
            "{:?}",
            l.scan(&Scan::Owner(format!("twin-{o}")), None, 1000)
                .unwrap()
        ));
    }
    for w in 0..4 {
        out.push(format!(
            "{:?}",
            l.scan(&Scan::Workload(format!("wl-{w}")), None, 1000)
                .unwrap()
        ));
    }
    for k in Kind::ALL {
        out.push(format!("{:?}", l.scan(&Scan::Kind(k), None, 1000).unwrap()));
    }
    out.push(format!(
        "{:?}",
        l.scan(
            &Scan::Time {
                from_ms: 0,
                to_ms: u64::MAX
            },
            None,
            1000
        )
        .unwrap()
    ));
    for seq in 0..l.len().unwrap() {
        let h = *blake3::hash(&{
            let r = l.record(seq).unwrap().unwrap();
            r[..r.len() - 64].to_vec()
        })
        .as_bytes();
        out.push(format!("{:?}", l.seq_of(&h).unwrap()));
    }
    out.push(format!("{:?}", l.tree_head().unwrap()));
    out
}

#[test]
fn index_rebuild_gives_identical_answers() {
    let dir = tempfile::tempdir().unwrap();
    let before;
    {
        let l = open(dir.path());
        fill(&l, 300);
        before = snapshot(&l);
        assert_eq!(l.rebuild_indexes().unwrap(), 300);
        assert_eq!(snapshot(&l), before);
    }
    // Derived data lagging behind the entries is caught up at open.
    zeronode_ledger::store::simulate_index_lag(dir.path(), 120, &Options::default()).unwrap();
    let l = open(dir.path());
    assert_eq!(snapshot(&l), before);
    drop(l);
    zeronode_ledger::store::simulate_index_lag(dir.path(), 0, &Options::default()).unwrap();
    let l2 = open(dir.path());
    assert_eq!(snapshot(&l2), before);
    assert!(l2.verify().unwrap().is_ok());
}

#[test]
fn proofs_verify_and_fail_for_wrong_entries_and_forks() {
    let dir = tempfile::tempdir().unwrap();
    let l = open(dir.path());
    fill(&l, 77);
    let pk = l.public_key().unwrap();
    let hashes: Vec<[u8; 32]> = (0..77)
        .map(|s| {
            verifier::verify_record(&pk, &l.record(s).unwrap().unwrap())
                .unwrap()
                .1
        })
        .collect();
    for size in [1u64, 2, 3, 8, 31, 64, 77] {
        let root = l.root_at(size).unwrap();
        for seq in 0..size {
            let proof = l.inclusion_proof(seq, size).unwrap();
            verifier::verify_inclusion(&hashes[seq as usize], seq, size, &proof, &root).unwrap();
            let wrong = hashes[((seq + 1) % 77) as usize];
            assert!(verifier::verify_inclusion(&wrong, seq, size, &proof, &root).is_err());
        }
        for old in 0..=size {
            let proof = l.consistency_proof(old, size).unwrap();
            verifier::verify_consistency(old, size, &l.root_at(old).unwrap(), &root, &proof)
                .unwrap();
        }
    }
    assert!(l.inclusion_proof(77, 77).is_err());
    assert!(l.consistency_proof(5, 78).is_err());

    // A forked node: same key, same first 40 entries, then other orders.
    let fork_dir = tempfile::tempdir().unwrap();
    let fork = open(fork_dir.path());
    fill(&fork, 40);
    for i in 40..77u64 {
        fork.append(
            Kind::Event,
            EntryMeta::default(),
            format!("fork {i}").into_bytes(),
        )
        .unwrap();
    }
    // Same prefix, same tree up to 40 only if the times matched; compare
    // with heads of the fork against proofs of the honest ledger.
    let new_root = l.root_at(77).unwrap();
    for old in [41u64, 50, 64, 76] {
        let honest = l.consistency_proof(old, 77).unwrap();
        let forked_old = fork.root_at(old).unwrap();
        assert!(verifier::verify_consistency(old, 77, &forked_old, &new_root, &honest).is_err());
        let fork_proof = fork.consistency_proof(old, 77).unwrap();
        assert!(verifier::verify_consistency(
            old,
            77,
            &l.root_at(old).unwrap(),
            &fork.root_at(77).unwrap(),
            &fork_proof
        )
        .is_err());
    }
}

#[test]
fn appends_from_many_threads_and_tasks_keep_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let l = open(dir.path());
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let l = l.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        l.append(
                            Kind::Result,
                            meta("", 0, &format!("t{t}"), &[]),
                            format!("{t}/{i}").into_bytes(),
                        )
                        .unwrap()
                        .seq
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let async_seqs: Vec<u64> = rt.block_on(async {
        let tasks: Vec<_> = (0..64)
            .map(|t| {
                let l = l.clone();
                tokio::spawn(async move {
                    let mut v = Vec::new();
                    for i in 0..10 {
                        v.push(
                            l.append_async(
                                Kind::Event,
                                EntryMeta::default(),
                                format!("a{t}/{i}").into_bytes(),
                            )
                            .await
                            .unwrap()
                            .seq,
                        );
                    }
                    v
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    seqs.extend(async_seqs);
    seqs.sort_unstable();
    assert_eq!(seqs, (0..1440).collect::<Vec<_>>());
    let report = l.verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.entries, 1440);
    // Each writer's own appends are in its order.
    let t3 = l.scan(&Scan::Owner("t3".into()), None, 100).unwrap().seqs;
    let payloads: Vec<Vec<u8>> = l
        .entries(&t3)
        .unwrap()
        .into_iter()
        .map(|e| e.payload)
        .collect();
    let expected: Vec<Vec<u8>> = (0..50).map(|i| format!("3/{i}").into_bytes()).collect();
    assert_eq!(payloads, expected);
}

/// Every place in `file` where `needle` occurs (LMDB may keep stale
/// copies of a page in free space: flipping all of them flips the live one).
fn occurrences(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

fn flip_everywhere(file: &Path, needle: &[u8], offset: usize) -> usize {
    let mut data = std::fs::read(file).unwrap();
    let at = occurrences(&data, needle);
    for &i in &at {
        data[i + offset] ^= 0x01;
    }
    std::fs::write(file, &data).unwrap();
    at.len()
}

#[test]
fn a_flipped_byte_is_caught_at_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<Vec<u8>>;
    let leaves: Vec<[u8; 32]>;
    {
        let l = open(dir.path());
        fill(&l, 10);
        // A large entry too: it lives in LMDB overflow pages.
        l.append(Kind::Deploy, meta("big", 1, "o", &["w"]), vec![0x5a; 9000])
            .unwrap();
        fill_more(&l, 3);
        records = (0..14).map(|s| l.record(s).unwrap().unwrap()).collect();
        leaves = records
            .iter()
            .map(|r| verifier::leaf_hash(blake3::hash(&r[..r.len() - 64]).as_bytes()))
            .collect();
    }
    let data = dir.path().join("data.mdb");
    let pristine = std::fs::read(&data).unwrap();
    let mut checked = 0;
    // Every byte of a few entries (first, middle, big, last), a stride of
    // the others.
    for (seq, rec) in records.iter().enumerate() {
        let offsets: Vec<usize> = if [0, 7, 10, 13].contains(&seq) {
            if seq == 10 {
                (0..rec.len())
                    .step_by(97)
                    .chain(rec.len() - 64..rec.len())
                    .collect()
            } else {
                (0..rec.len()).collect()
            }
        } else {
            (0..rec.len()).step_by(11).collect()
        };
        for off in offsets {
            std::fs::write(&data, &pristine).unwrap();
            assert!(flip_everywhere(&data, rec, off) >= 1);
            let l = Ledger::open_for_audit(dir.path(), Options::default()).unwrap();
            let report = l.verify().unwrap();
            let b = report
                .first_break
                .unwrap_or_else(|| panic!("flip at entry {seq} byte {off} was not caught"));
            assert_eq!(
                b.seq, seq as u64,
                "flip at entry {seq} byte {off}: {:?}",
                b.reason
            );
            checked += 1;
        }
    }
    // Stored Merkle leaves, too.
    for seq in [0usize, 6, 13] {
        std::fs::write(&data, &pristine).unwrap();
        assert!(flip_everywhere(&data, &leaves[seq], 5) >= 1);
        let l = Ledger::open_for_audit(dir.path(), Options::default()).unwrap();
        let b = l.verify().unwrap().first_break.unwrap();
        assert_eq!(b.seq, seq as u64);
        assert!(
            matches!(b.reason, BreakReason::TreeMismatch { .. }),
            "{:?}",
            b.reason
        );
        checked += 1;
    }
    assert!(checked > 500, "only {checked} positions");
    std::fs::write(&data, &pristine).unwrap();
    assert!(Ledger::open_for_audit(dir.path(), Options::default())
        .unwrap()
        .verify()
        .unwrap()
        .is_ok());
}

fn fill_more(l: &Ledger, n: u64) {
    for i in 0..n {
        l.append(
            Kind::Result,
            meta("big", 1, "", &[]),
            format!("r{i}").into_bytes(),
        )
        .unwrap();
    }
}

#[test]
fn export_import_round_trips_and_tampered_files_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let l = open(dir.path());
    fill(&l, 150);
    let file = dir.path().join("ledger.export");
    let header = l.export(&file).unwrap();
    assert_eq!(header.count, 150);
    assert_eq!(header.root, l.tree_head().unwrap().1);

    let target = tempfile::tempdir().unwrap();
    Ledger::import(&file, target.path(), Options::default()).unwrap();
    let copy = Ledger::open_for_audit(target.path(), Options::default()).unwrap();
    assert!(copy.verify().unwrap().is_ok());
    assert_eq!(snapshot(&copy), snapshot(&l));
    // Importing twice is refused.
    assert!(Ledger::import(&file, target.path(), Options::default()).is_err());

    let bytes = std::fs::read(&file).unwrap();
    for pos in [
        0usize,
        9,
        20,
        45,
        60,
        82,
        85,
        100,
        bytes.len() / 2,
        bytes.len() - 1,
    ] {
        let mut bad = bytes.clone();
        bad[pos] ^= 0x40;
        let bad_file = dir.path().join(format!("bad-{pos}"));
        std::fs::write(&bad_file, &bad).unwrap();
        let empty = tempfile::tempdir().unwrap();
        let err = Ledger::import(&bad_file, empty.path(), Options::default());
        assert!(err.is_err(), "flip at {pos} imported");
        assert!(
            std::fs::read_dir(empty.path()).unwrap().next().is_none(),
            "flip at {pos}: something was written"
        );
    }
    let truncated = dir.path().join("truncated");
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    let empty = tempfile::tempdir().unwrap();
    assert!(Ledger::import(&truncated, empty.path(), Options::default()).is_err());
}

/// Appends from many threads at once, so that group commits hold many
/// entries; gives every record of the ledger.
fn fill_grouped(l: &Ledger, threads: u64, each: u64) -> Vec<Vec<u8>> {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let l = l.clone();
            std::thread::spawn(move || {
                for i in 0..each {
                    l.append(
                        Kind::Result,
                        meta(&format!("d{t}"), i, "o", &["w"]),
                        format!("{t}/{i}/{}", "p".repeat(40)).into_bytes(),
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let n = l.len().unwrap();
    (0..n).map(|s| l.record(s).unwrap().unwrap()).collect()
}

/// Every break the audit can report for one flipped byte, on 1, 2 and 3
/// threads (slices cut groups differently).
fn assert_flip_caught(dir: &Path, pristine: &[u8], rec: &[u8], off: usize, seq: u64) {
    let data = dir.join("data.mdb");
    std::fs::write(&data, pristine).unwrap();
    assert!(flip_everywhere(&data, rec, off) >= 1);
    let l = Ledger::open_for_audit(dir, Options::default()).unwrap();
    for threads in [1, 2, 3] {
        let b = l
            .verify_with_threads(threads)
            .unwrap()
            .first_break
            .unwrap_or_else(|| panic!("flip at entry {seq} byte {off} was not caught"));
        assert_eq!(
            b.seq, seq,
            "flip at entry {seq} byte {off}, {threads} threads: {b:?}"
        );
    }
}

#[test]
fn signatures_vouched_for_by_later_groups_are_still_checked_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let records = {
        let l = open(dir.path());
        fill(&l, 3);
        fill_grouped(&l, 12, 6)
    };
    let claims: Vec<_> = records
        .iter()
        .map(|r| Entry::decode(r).unwrap().sig_chain.unwrap())
        .collect();
    assert!(
        claims.iter().enumerate().any(|(s, c)| c.upto < s as u64),
        "no group held two entries"
    );
    let last_group = claims.last().unwrap().upto;
    let data = dir.path().join("data.mdb");
    let pristine = std::fs::read(&data).unwrap();
    for (seq, rec) in records.iter().enumerate() {
        let sig_at = rec.len() - 64;
        // A signature byte (vouched for by a later group, or in the last
        // group), a claim byte and a payload byte.
        for off in [sig_at, sig_at + 33, 55, 70, rec.len() - 70] {
            assert_flip_caught(dir.path(), &pristine, rec, off, seq as u64);
        }
    }
    assert!(last_group > 0);
    std::fs::write(&data, &pristine).unwrap();
    let l = Ledger::open_for_audit(dir.path(), Options::default()).unwrap();
    for threads in [1, 2, 3] {
        assert!(l.verify_with_threads(threads).unwrap().is_ok());
    }
}

#[test]
fn a_version_1_ledger_continues_in_version_2_and_verifies() {
    // A ledger written by the version-1 code, as an export file.
    let key = KeySigner::from_seed(&[1; 32]);
    let mut tree = MemoryTree::new();
    let mut prev = [0u8; 32];
    let mut body = Vec::new();
    for seq in 0..20u64 {
        let mut e = Entry {
            seq,
            time_ms: 1_000 + seq,
            kind: Kind::Event,
            prev,
            sig_chain: None,
            meta: EntryMeta::default(),
            payload: format!("v1 entry {seq}").into_bytes(),
            signature: [0; 64],
        };
        let hash = e.hash().unwrap();
        e.signature = key.sign(&hash).unwrap();
        let rec = e.encode().unwrap();
        body.extend_from_slice(&(rec.len() as u32).to_be_bytes());
        body.extend_from_slice(&rec);
        tree.push(&hash);
        prev = hash;
    }
    let mut file = b"ZNLEDGER".to_vec();
    file.extend_from_slice(&[1, 1]);
    file.extend_from_slice(&key.public_key());
    file.extend_from_slice(&20u64.to_be_bytes());
    file.extend_from_slice(&tree.root());
    file.extend_from_slice(&body);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.export");
    std::fs::write(&path, &file).unwrap();
    let ldir = dir.path().join("ledger");
    Ledger::import(&path, &ldir, Options::default()).unwrap();

    let records = {
        let l = open(&ldir);
        let r = fill_grouped(&l, 8, 4);
        assert!(l.verify().unwrap().is_ok());
        r
    };
    let first_v2 = Entry::decode(&records[20]).unwrap();
    assert_eq!(
        first_v2.sig_chain.map(|c| (c.upto, c.hash)),
        Some((20, [0; 32]))
    );
    assert!(Entry::decode(&records[19]).unwrap().sig_chain.is_none());
    let pristine = std::fs::read(ldir.join("data.mdb")).unwrap();
    for seq in [0usize, 7, 19, 20, 21, 30, records.len() - 1] {
        let rec = &records[seq];
        for off in [rec.len() - 64, rec.len() - 1, 1, 30] {
            assert_flip_caught(&ldir, &pristine, rec, off, seq as u64);
        }
    }
}

/// A signer outside the process (as identity over D-Bus is) that can be
/// made to answer a broken signature.
struct RemoteSigner {
    key: KeySigner,
    break_next: std::sync::atomic::AtomicBool,
}

impl Signer for RemoteSigner {
    fn public_key(&self) -> [u8; 32] {
        self.key.public_key()
    }

    fn sign(&self, hash: &[u8; 32]) -> Result<[u8; 64], zeronode_ledger::signer::SignError> {
        let mut sig = self.key.sign(hash)?;
        if self
            .break_next
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            sig[40] ^= 1;
        }
        Ok(sig)
    }
}

#[test]
fn a_signature_that_does_not_verify_is_never_chained_in() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Arc::new(RemoteSigner {
        key: KeySigner::from_seed(&[1; 32]),
        break_next: false.into(),
    });
    let l = Ledger::open(dir.path(), signer.clone(), Options::default()).unwrap();
    fill(&l, 5);
    signer
        .break_next
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = l
        .append(Kind::Event, EntryMeta::default(), b"x".to_vec())
        .unwrap_err();
    assert!(matches!(err, LedgerError::WriteFailed(_)), "{err}");
    assert_eq!(l.len().unwrap(), 5);
    let r = l
        .append(Kind::Event, EntryMeta::default(), b"y".to_vec())
        .unwrap();
    assert_eq!(r.seq, 5);
    assert!(l.verify().unwrap().is_ok());
}
