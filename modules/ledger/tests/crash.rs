//! Crash test: a child process appends from several threads and prints
//! each seq the ledger acknowledged; the parent kills it with SIGKILL at
//! random moments, 200 times, and after each kill opens the ledger,
//! verifies it, and checks that every acknowledged entry is there with the
//! hash the child was given.
//!
//! The child is this test binary run again with `CHILD_ENV` set.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zeronode_ledger::{EntryMeta, KeySigner, Kind, Ledger, LedgerError, Options};

const CHILD_ENV: &str = "ZN_LEDGER_CRASH_CHILD";
const ROUNDS: usize = 200;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The child's side: append until killed.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let signer = Arc::new(KeySigner::from_seed(&[42; 32]));
    let l = Ledger::open(dir.as_ref(), signer, Options::default()).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let l = l.clone();
            std::thread::spawn(move || {
                for i in 0u64.. {
                    let meta = EntryMeta {
                        deployment: format!("dep-{t}"),
                        version: i,
                        owner: "crash".into(),
                        workloads: vec![format!("w{t}")],
                    };
                    let payload = format!(
                        "{{\"thread\":{t},\"i\":{i},\"pad\":\"{}\"}}",
                        "p".repeat(300)
                    );
                    let r = l.append(Kind::Update, meta, payload.into_bytes()).unwrap();
                    // One println is one locked write of a whole line.
                    println!("ack {} {}", r.seq, hex(&r.hash));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Kills the child if the test fails before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_entry() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = XorShift(seed);
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut verified_to = 0u64;
    let mut unacked_but_committed = 0u64;
    let start = Instant::now();
    for round in 0..ROUNDS {
        let child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let stdout = child.0.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|line| {
                    let mut parts = line.strip_prefix("ack ")?.split(' ');
                    let seq: u64 = parts.next()?.parse().ok()?;
                    Some((seq, parts.next()?.to_string()))
                })
                .collect::<Vec<_>>()
        });
        // Anywhere from during start-up and open to deep in the appends.
        std::thread::sleep(Duration::from_millis(rng.next() % 120));
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        let new_acks = reader.join().unwrap();

        for (seq, hash) in &new_acks {
            if let Some(old) = acked.insert(*seq, hash.clone()) {
                panic!("round {round}: seq {seq} acknowledged twice ({old} then {hash}): an acknowledged entry was lost");
            }
        }
        let l = match Ledger::open_for_audit(dir.path(), Options::default()) {
            Ok(l) => l,
            // Killed before the very first open committed: nothing to hold.
            Err(LedgerError::Corrupt(_)) if acked.is_empty() => continue,
            Err(e) => panic!("round {round}: open after kill: {e}"),
        };
        let report = l.verify_range(verified_to, 2).unwrap();
        assert!(report.is_ok(), "round {round}: {:?}", report.first_break);
        for (seq, hash) in &new_acks {
            let record = l
                .record(*seq)
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: acknowledged seq {seq} is missing"));
            let body = &record[..record.len() - 64];
            assert_eq!(
                &hex(blake3::hash(body).as_bytes()),
                hash,
                "round {round}: seq {seq}"
            );
        }
        if let Some((&last, _)) = acked.last_key_value() {
            assert!(
                report.entries > last,
                "round {round}: ledger ends before acked seq {last}"
            );
            unacked_but_committed += report.entries - 1 - last;
        }
        verified_to = report.entries;
    }

    // The whole ledger once more, and every acknowledged entry in it.
    let l = Ledger::open_for_audit(dir.path(), Options::default()).unwrap();
    let report = l.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.first_break);
    for (seq, hash) in &acked {
        let record = l.record(*seq).unwrap().unwrap();
        assert_eq!(
            &hex(blake3::hash(&record[..record.len() - 64]).as_bytes()),
            hash
        );
    }
    assert!(
        acked.len() > ROUNDS,
        "only {} appends were acknowledged",
        acked.len()
    );
    eprintln!(
        "{ROUNDS} kills in {:.1}s: {} entries, {} acknowledged, {} committed after the last ack seen",
        start.elapsed().as_secs_f64(),
        report.entries,
        acked.len(),
        unacked_but_committed
    );
}
