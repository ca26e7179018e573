//! Malformed RESP: random and garbled input at the parser (never a panic,
//! never a range outside the buffer) and at a live server (the connection
//! gets an error and is closed; another client is not disturbed).

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use zeronode_shards::resp::{parse_into, Limits, Request};

fn small_limits() -> Limits {
    Limits {
        max_bulk: 1024,
        max_args: 8,
        max_line: 32,
        max_request: 2048,
    }
}

/// Parses everything in `buf` the way a connection does.
fn parse_all(buf: &[u8], limits: &Limits) -> Result<Vec<Vec<Vec<u8>>>, ()> {
    let mut at = 0;
    let mut req = Request::default();
    let mut out = Vec::new();
    loop {
        match parse_into(buf, at, limits, &mut req) {
            Ok(true) => {
                assert!(req.len > 0 && at + req.len <= buf.len());
                for r in &req.args {
                    assert!(r.start >= at && r.end <= at + req.len);
                    assert!(r.len() <= limits.max_bulk);
                }
                assert!(req.args.len() <= limits.max_args);
                out.push(req.args.iter().map(|r| buf[r.clone()].to_vec()).collect());
                at += req.len;
            }
            Ok(false) => return Ok(out),
            Err(_) => return Err(()),
        }
    }
}

fn command() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..5)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_all(&bytes, &small_limits());
        let _ = parse_all(&bytes, &Limits::default());
    }

    #[test]
    fn star_prefixed_noise_never_panics(tail in prop::collection::vec(prop::sample::select(b"*$\r\n0123456789-+ab".to_vec()), 0..200)) {
        let mut bytes = b"*".to_vec();
        bytes.extend(tail);
        let _ = parse_all(&bytes, &small_limits());
    }

    #[test]
    fn valid_commands_round_trip_at_any_split(cmds in prop::collection::vec(command(), 1..4), cut in any::<prop::sample::Index>()) {
        let mut bytes = Vec::new();
        for c in &cmds {
            let args: Vec<&[u8]> = c.iter().map(|a| a.as_slice()).collect();
            bytes.extend(common::encode(&args));
        }
        prop_assert_eq!(parse_all(&bytes, &small_limits()).unwrap(), cmds.clone());
        // A prefix parses to a prefix of the commands, never to an error.
        let cut = cut.index(bytes.len());
        let part = parse_all(&bytes[..cut], &small_limits()).unwrap();
        prop_assert!(part.len() < cmds.len() || cut == bytes.len());
        prop_assert_eq!(&cmds[..part.len()], &part[..]);
    }

    #[test]
    fn garbled_commands_never_panic(c in command(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6)) {
        let args: Vec<&[u8]> = c.iter().map(|a| a.as_slice()).collect();
        let mut bytes = common::encode(&args);
        for (at, byte, op) in edits {
            let i = at.index(bytes.len().max(1));
            match op {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i.min(bytes.len()), byte),
                _ if i < bytes.len() => { bytes.remove(i); }
                _ => {}
            }
        }
        let _ = parse_all(&bytes, &small_limits());
    }
}

/// Frames that are wrong whatever follows them.
fn malformed() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Not an array: inline or binary junk.
        (
            any::<u8>().prop_filter("not *", |b| *b != b'*'),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(b, rest)| {
                let mut v = vec![b];
                v.extend(rest);
                v
            }),
        // A count that is not a number.
        "[a-z!?]{1,8}".prop_map(|s| format!("*{s}\r\n").into_bytes()),
        // Too many arguments.
        (1025u32..1_000_000).prop_map(|n| format!("*{n}\r\n").into_bytes()),
        // A negative or oversized bulk.
        (-100i64..-1).prop_map(|n| format!("*1\r\n${n}\r\n").into_bytes()),
        ((8u64 << 20) + 1..u64::MAX / 2)
            .prop_map(|n| format!("*2\r\n$3\r\nGET\r\n${n}\r\n").into_bytes()),
        // A bulk whose CRLF is missing.
        prop::collection::vec(any::<u8>(), 2..20).prop_map(|v| {
            let mut f = format!("*2\r\n$3\r\nGET\r\n${}\r\n", v.len() - 2).into_bytes();
            f.extend(&v[..v.len() - 2]);
            f.extend(b"xy");
            f
        }),
        // A header line that never ends.
        prop::collection::vec(prop::sample::select(b"0123456789".to_vec()), 40..100).prop_map(
            |d| {
                let mut v = b"*".to_vec();
                v.extend(d);
                v
            }
        ),
        // Something other than a bulk inside the array.
        prop::sample::select(vec![b':', b'+', b'-', b'*', b'x']).prop_map(|b| {
            let mut v = b"*1\r\n".to_vec();
            v.push(b);
            v.extend(b"1\r\n");
            v
        }),
    ]
}

#[test]
fn a_live_server_closes_malformed_connections_and_serves_others() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::Proc::start(dir.path(), &[]);
    let steady = std::cell::RefCell::new(p.raw());
    assert!(steady
        .borrow_mut()
        .cmd(&[b"SET", b"steady", b"value"])
        .bulk()
        .is_some());
    let mut runner = TestRunner::new(Config {
        cases: 150,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(malformed(), any::<bool>()), |(frame, after_good)| {
            let mut s = std::net::TcpStream::connect(&p.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut expect = Vec::new();
            if after_good {
                // A good request first: answered, then the bad one closes.
                s.write_all(&common::encode(&[b"PING"])).unwrap();
                expect.extend(b"+PONG\r\n");
            }
            s.write_all(&frame).unwrap();
            let mut got = Vec::new();
            // Until EOF: the server must close.
            let _ = s.read_to_end(&mut got);
            prop_assert!(
                got.starts_with(&expect),
                "reply {:?}",
                String::from_utf8_lossy(&got)
            );
            let rest = String::from_utf8_lossy(&got[expect.len()..]).into_owned();
            prop_assert!(rest.starts_with("-ERR Protocol error"), "reply {rest:?}");
            prop_assert!(rest.ends_with("\r\n") && rest.matches("\r\n").count() == 1);
            // The steady client is untouched.
            let got = steady.borrow_mut().cmd(&[b"GET", b"steady"]);
            prop_assert_eq!(got.bulk(), Some(&b"value"[..]));
            Ok(())
        })
        .unwrap();

    // Random bytes, whatever they turn out to be: the server stays up.
    let mut runner = TestRunner::new(Config {
        cases: 100,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(any::<u8>(), 1..2048), |bytes| {
            let mut s = std::net::TcpStream::connect(&p.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let _ = s.write_all(&bytes);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
            let got = steady.borrow_mut().cmd(&[b"GET", b"steady"]);
            prop_assert_eq!(got.bulk(), Some(&b"value"[..]));
            Ok(())
        })
        .unwrap();
    let pong = steady.borrow_mut().cmd(&[b"PING"]);
    assert_eq!(pong, common::Reply::Status("PONG".into()));
}
