//! Crash loop: the server as a child process under concurrent writers,
//! killed with SIGKILL 200 times at random moments. After each restart every
//! acknowledged SET is there with its exact value and every acknowledged DEL
//! stays deleted. Rounds alternate `--sync always` and `--sync everysec`
//! (whose acknowledged writes are in the page cache, which a killed process
//! does not lose).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::{Duration, Instant};

use common::{encode, value_for, Proc, Raw, Reply};

const ROUNDS: usize = 200;
const WRITERS: usize = 4;
const OPS_PER_WRITER: usize = 120;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn len_for(key: &str) -> usize {
    16 + (blake3::hash(key.as_bytes()).as_bytes()[0] as usize) * 4
}

enum Ack {
    Set(String),
    Del(String),
    /// A DEL sent but not answered when the server died: either outcome is right.
    Unsure(String),
}

/// One writer: SETs (alone or pipelined by 4) and DELs of its own earlier
/// keys, until the connection breaks. Returns what was acknowledged.
fn writer(addr: String, round: usize, id: usize, seed: u64) -> Vec<Ack> {
    let mut acks = Vec::new();
    let Ok(stream) = std::net::TcpStream::connect(&addr) else {
        return acks;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut r = Raw::from_stream(stream);
    let mut rng = Rng(seed | 1);
    let mut mine: Vec<String> = Vec::new();
    let mut i = 0;
    while i < OPS_PER_WRITER {
        let pipeline = if rng.below(3) == 0 { 4 } else { 1 };
        let mut sent = Vec::new();
        let mut batch = Vec::new();
        for _ in 0..pipeline {
            if !mine.is_empty() && rng.below(6) == 0 {
                let k = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                batch.extend(encode(&[b"DEL", k.as_bytes()]));
                sent.push((true, k));
            } else {
                let k = format!("r{round}-w{id}-{i}");
                batch.extend(encode(&[b"SET", k.as_bytes(), &value_for(&k, len_for(&k))]));
                sent.push((false, k));
            }
            i += 1;
        }
        if r.stream.write_all(&batch).is_err() {
            for (del, k) in sent {
                if del {
                    acks.push(Ack::Unsure(k));
                }
            }
            return acks;
        }
        let mut sent = sent.into_iter();
        while let Some((del, k)) = sent.next() {
            let Some(reply) = r.try_reply() else {
                for (del, k) in std::iter::once((del, k)).chain(sent) {
                    if del {
                        acks.push(Ack::Unsure(k));
                    }
                }
                return acks;
            };
            if del {
                assert_eq!(reply, Reply::Status("OK".into()), "DEL {k}");
                acks.push(Ack::Del(k));
            } else {
                assert_eq!(reply.bulk(), Some(k.as_bytes()), "SET {k}");
                mine.push(k.clone());
                acks.push(Ack::Set(k));
            }
        }
    }
    acks
}

/// GETs `keys` pipelined; checks present ones have their exact value and
/// that presence (Some(true)) or absence (Some(false)) holds.
fn verify(p: &Proc, keys: &[(String, Option<bool>)], round: usize) {
    let mut r = p.raw();
    for chunk in keys.chunks(500) {
        let mut batch = Vec::new();
        for (k, _) in chunk {
            batch.extend(encode(&[b"GET", k.as_bytes()]));
        }
        r.stream.write_all(&batch).unwrap();
        for (k, present) in chunk {
            match r.reply() {
                Reply::Bulk(Some(v)) => {
                    assert!(
                        *present != Some(false),
                        "round {round}: deleted key {k} is back"
                    );
                    assert!(
                        v == value_for(k, len_for(k)),
                        "round {round}: {k} has a wrong value"
                    );
                }
                Reply::Bulk(None) => {
                    assert!(
                        *present != Some(true),
                        "round {round}: acknowledged key {k} is missing"
                    )
                }
                other => panic!("round {round}: GET {k}: {other:?}"),
            }
        }
    }
}

#[test]
fn acknowledged_writes_survive_200_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    // ZN_KEEP=1 keeps the data directory for a post-mortem.
    let path = if std::env::var_os("ZN_KEEP").is_some() {
        tmp.keep()
    } else {
        tmp.path().to_path_buf()
    };
    eprintln!("crash loop dir {}", path.display());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("crash loop seed {seed}");
    let mut rng = Rng(seed | 1);
    // Key -> present after its last acknowledged operation.
    let mut state: HashMap<String, Option<bool>> = HashMap::new();
    let mut last_round: HashSet<String> = HashSet::new();
    let started = Instant::now();
    let mut acked_total = 0;
    for round in 0..ROUNDS {
        let policy = if round % 2 == 0 { "always" } else { "everysec" };
        let mut p = Proc::start_with(
            &path,
            &["--sync", policy, "--snapshot-interval-ms", "15"],
            false,
        );
        // Everything the last round acknowledged, and a sample of older keys.
        let mut check: Vec<(String, Option<bool>)> =
            last_round.iter().map(|k| (k.clone(), state[k])).collect();
        if !state.is_empty() {
            let all: Vec<(&String, &Option<bool>)> = state.iter().collect();
            for _ in 0..50 {
                let (k, v) = all[rng.below(all.len() as u64) as usize];
                check.push((k.clone(), *v));
            }
        }
        verify(&p, &check, round);

        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let addr = p.addr.clone();
                let s = rng.next();
                std::thread::spawn(move || writer(addr, round, w, s))
            })
            .collect();
        std::thread::sleep(Duration::from_micros(500 + rng.below(12_000)));
        p.kill();
        last_round.clear();
        for h in handles {
            for ack in h.join().expect("writer") {
                acked_total += 1;
                let (k, present) = match ack {
                    Ack::Set(k) => (k, Some(true)),
                    Ack::Del(k) => (k, Some(false)),
                    Ack::Unsure(k) => (k, None),
                };
                last_round.insert(k.clone());
                state.insert(k, present);
            }
        }
    }
    let p = Proc::start_with(&path, &[], false);
    let all: Vec<(String, Option<bool>)> = state.iter().map(|(k, v)| (k.clone(), *v)).collect();
    verify(&p, &all, ROUNDS);
    eprintln!(
        "{ROUNDS} kills, {acked_total} acknowledged operations, {} keys checked, {:.1} s",
        all.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        acked_total > ROUNDS * 5,
        "the writers hardly wrote: {acked_total}"
    );
}

/// kill -9 at random moments while COMPACT runs (and writes go on): after
/// every restart the namespace holds exactly what was acknowledged.
#[test]
fn compaction_survives_kill_9_at_any_moment() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--file-size-mib", "1", "--sync", "always"];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut model: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
    let (mut finished, mut cut) = (0, 0);
    for round in 0..30 {
        let mut p = Proc::start_with(dir.path(), &args, false);
        let mut r = p.raw();
        assert_eq!(common::dump(&mut r), model, "round {round}: after restart");
        // Fresh data and deletes so that every round has something to move.
        let mut batch = Vec::new();
        let mut expect = Vec::new();
        for i in 0..400 {
            let k = format!("c{round}-{i}");
            let v = value_for(&k, 2000);
            batch.extend(encode(&[b"SET", k.as_bytes(), &v]));
            expect.push((k.into_bytes(), Some(v)));
        }
        let old: Vec<Vec<u8>> = model.keys().cloned().collect();
        for k in old.iter().filter(|_| rng.below(3) == 0) {
            batch.extend(encode(&[b"DEL", k]));
            expect.push((k.clone(), None));
        }
        r.stream.write_all(&batch).unwrap();
        for (k, v) in expect {
            assert!(!r.reply().is_error());
            match v {
                Some(v) => model.insert(k, v),
                None => model.remove(&k),
            };
        }
        let mut c = Raw::connect(&p.addr);
        let compactor = std::thread::spawn(move || {
            c.send(&[b"COMPACT"]);
            c.try_reply()
        });
        std::thread::sleep(Duration::from_micros(rng.below(150_000)));
        p.kill();
        match compactor.join().unwrap() {
            Some(Reply::Int(_)) => finished += 1,
            _ => cut += 1,
        }
    }
    eprintln!("compactions finished {finished}, cut by kill -9 {cut}");
    assert!(cut > 0, "no kill landed during a compaction");
    let p = Proc::start_with(dir.path(), &args, false);
    assert_eq!(common::dump(&mut p.raw()), model);
}
