//! Running and stopping: back-off, reaping orphans, log capture, ordered
//! shutdown, and the control interface end to end through `znctl`.

#[path = "supervisor_harness.rs"]
mod harness;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{cmdline, lines, processes, Init, ZNCTL};
use nix::sys::signal::Signal;

/// Start times (ms since the epoch) of each run of a service, which it
/// appends to a file.
fn run_times(init: &Init) -> Vec<u64> {
    lines(&init.path("runs"))
        .iter()
        .filter_map(|l| l.parse::<u64>().ok())
        .map(|ns| ns / 1_000_000)
        .collect()
}

#[test]
fn restarts_back_off_exponentially_up_to_the_bound() {
    let init = Init::start(&[(
        "crash",
        r#"command = ["/bin/sh", "-c", "date +%s%N >> @DIR@/runs; exit 1"]
           restart = { policy = "on-failure", initial_ms = 100, factor = 2.0, max_ms = 400 }"#,
    )]);
    init.wait_until("6 runs", || run_times(&init).len() >= 6);
    let t = run_times(&init);
    let gaps: Vec<u64> = t.windows(2).map(|w| w[1] - w[0]).collect();
    // Delays 100, 200, 400, 400, 400; each gap adds a shell start (a few ms,
    // more on a loaded machine) but can never be shorter than the delay.
    for (gap, want) in gaps.iter().zip([100, 200, 400, 400, 400]) {
        assert!(
            *gap >= want && *gap < want + 150,
            "gaps {gaps:?}: {gap} for a delay of {want}"
        );
    }
    let status = init.json(&["status", "crash"]);
    assert!(status["restarts"].as_u64().unwrap() >= 5, "{status}");
}

#[test]
fn never_means_never_and_a_long_run_resets_the_back_off() {
    let init = Init::start(&[
        (
            "once",
            r#"command = ["/bin/sh", "-c", "exit 2"]
               restart = { policy = "never" }"#,
        ),
        (
            "clean",
            r#"command = ["/bin/true"]
               restart = { policy = "on-failure" }"#,
        ),
        (
            "steady",
            r#"command = ["/bin/sh", "-c", "date +%s%N >> @DIR@/runs; sleep 0.3; exit 1"]
               restart = { initial_ms = 50, factor = 10.0, max_ms = 5000, reset_after_ms = 200 }"#,
        ),
    ]);
    init.wait_state("once", "failed");
    init.wait_state("clean", "stopped");
    init.wait_until("4 runs", || run_times(&init).len() >= 4);
    let t = run_times(&init);
    // Each run lasts 0.3 s > reset_after: the delay stays at 50 ms instead of 500, 5000.
    for w in t.windows(2) {
        assert!(w[1] - w[0] < 300 + 50 + 150, "{t:?}");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(init.state("once"), "failed");
}

#[test]
fn orphans_are_reaped() {
    let init = Init::start(&[(
        "forker",
        // The inner shell exits at once: its `sleep 0.4` is orphaned and,
        // init being a child subreaper, becomes init's child.
        r#"command = ["/bin/sh", "-c", "sh -c '/bin/sleep 0.4 &'; exec /bin/sleep 1000"]"#,
    )]);
    let me = init.pid();
    init.wait_until("the orphan reparented to init", || {
        processes()
            .iter()
            .any(|(pid, _, ppid)| *ppid == me && cmdline(*pid) == "/bin/sleep 0.4")
    });
    std::thread::sleep(Duration::from_millis(700));
    let children: Vec<_> = processes()
        .into_iter()
        .filter(|(_, _, ppid)| *ppid == me)
        .collect();
    assert!(
        children.iter().all(|(_, state, _)| *state != 'Z'),
        "zombies under init: {children:?}"
    );
    assert!(!children
        .iter()
        .any(|(pid, _, _)| cmdline(*pid).contains("0.4")));
    assert_eq!(init.state("forker"), "running");
}

#[test]
fn output_goes_to_the_console_and_the_ring() {
    let init = Init::start(&[
        (
            "talker",
            r#"command = ["/bin/sh", "-c", "for i in 1 2 3 4 5; do echo out $i; done; echo oops >&2; exec sleep 1000"]"#,
        ),
        (
            "quiet",
            r#"command = ["/bin/sh", "-c", "echo secret; exec sleep 1000"]
               log = { console = false }"#,
        ),
        (
            "flood",
            r#"command = ["/bin/sh", "-c", "i=0; while [ $i -lt 500 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done; echo last; exec sleep 1000"]
               log = { ring_bytes = 1024, console = false }"#,
        ),
    ]);
    init.wait_stdout("[talker] oops");
    assert!(init.stdout().contains(&"[talker] out 3".to_string()));
    let out = init.znctl(&["logs", "-n", "2", "talker"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out 5\noops\n");
    assert_eq!(init.json(&["logs", "quiet"]), serde_json::json!(["secret"]));
    assert!(!init.stdout().iter().any(|l| l.contains("secret")));
    init.wait_until("flood's last line", || {
        init.json(&["logs", "-n", "1", "flood"]) == serde_json::json!(["last"])
    });
    let ring = init.json(&["logs", "-n", "10000", "flood"]);
    let kept: Vec<&str> = ring
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(kept.len() > 10 && kept.len() < 50, "{} lines", kept.len());
    assert!(kept.iter().map(|l| l.len()).sum::<usize>() <= 1024);
    assert_eq!(kept[kept.len() - 2], "line-499-xxxxxxxxxxxxxxxxxxxx");
}

#[test]
fn logs_follow_streams_new_lines() {
    let init = Init::start(&[(
        "ticker",
        r#"command = ["/bin/sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done"]
           log = { console = false }"#,
    )]);
    init.wait_until("a few ticks", || {
        init.json(&["logs", "ticker"]).as_array().unwrap().len() >= 3
    });
    let mut follow = Command::new(ZNCTL)
        .arg("--socket")
        .arg(&init.sock)
        .args(["logs", "-f", "-n", "1", "ticker"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(follow.stdout.take().unwrap());
    let mut got = Vec::new();
    for _ in 0..5 {
        let mut l = String::new();
        reader.read_line(&mut l).unwrap();
        got.push(
            l.trim_end()
                .trim_start_matches("tick ")
                .parse::<u32>()
                .unwrap(),
        );
    }
    follow.kill().unwrap();
    follow.wait().unwrap();
    // One line of history, then new lines in order with none missing.
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "{got:?}");
}

#[test]
fn shutdown_stops_in_reverse_dependency_order() {
    let svc = |name: &str, after: &str| {
        format!(
            r#"command = ["/bin/sh", "-c", "trap 'sleep 0.1; echo {name} >> @DIR@/stops; exit 0' TERM; while true; do sleep 0.02; done"]
               after = [{after}]"#
        )
    };
    let (base, mid, top, side) = (
        svc("base", ""),
        svc("mid", "\"base\""),
        svc("top", "\"mid\""),
        svc("side", "\"base\""),
    );
    let mut init = Init::start(&[
        ("base", &base),
        ("mid", &mid),
        ("top", &top),
        ("side", &side),
        (
            "stubborn",
            r#"command = ["/bin/sh", "-c", "trap '' TERM; while true; do sleep 0.02; done"]
               stop = { timeout_ms = 300 }"#,
        ),
    ]);
    for s in ["base", "mid", "top", "side", "stubborn"] {
        init.wait_state(s, "running");
    }
    let took = init.stop_with(Signal::SIGTERM);
    let stops = lines(&init.path("stops"));
    let pos = |n: &str| stops.iter().position(|s| s == n).unwrap_or(usize::MAX);
    assert_eq!(stops.len(), 4, "{stops:?}");
    assert!(
        pos("top") < pos("mid") && pos("mid") < pos("base"),
        "{stops:?}"
    );
    assert!(pos("side") < pos("base"), "{stops:?}");
    init.wait_stderr("stubborn: still running 300 ms after SIGTERM, killing it");
    // Three levels of 0.1 s each, stubborn's 0.3 s in parallel: well under
    // the sum of everything done one after the other.
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert!(!init.sock.exists(), "the socket is removed on exit");
}

#[test]
fn znctl_controls_services_end_to_end() {
    let mut init = Init::start(&[
        ("a", r#"command = ["/bin/sleep", "1000"]"#),
        (
            "b",
            r#"command = ["/bin/sleep", "1000"]
                 after = ["a"]"#,
        ),
    ]);
    init.wait_state("b", "running");
    let list = init.json(&["list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let pid = list[0]["pid"].as_u64().unwrap();
    assert!(pid > 0);

    // The table: a header and one aligned row per service.
    let table = String::from_utf8(init.znctl(&["list"]).stdout).unwrap();
    let rows: Vec<&str> = table.lines().collect();
    assert!(
        rows[0].starts_with("NAME  KIND     STATE    PID"),
        "{table}"
    );
    assert_eq!(rows[1].find("longrun"), rows[0].find("KIND"), "{table}");

    let stopped = init.json(&["stop", "a"]);
    assert_eq!(
        (stopped["state"].as_str(), stopped["pid"].as_u64()),
        (Some("stopped"), Some(0))
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || harness::processes().iter().all(|p| p.0 != pid as i32)
    );
    assert_eq!(
        init.state("b"),
        "running",
        "a manual stop leaves dependents alone"
    );
    assert_eq!(init.json(&["start", "a"])["state"], "running");
    let restarted = init.json(&["restart", "a"]);
    assert_eq!(restarted["state"], "running");
    assert_ne!(restarted["pid"].as_u64(), Some(pid));

    let out = init.znctl(&["status", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "znctl: no service named \"nope\"\n"
    );
    let out = Command::new(ZNCTL)
        .args(["--socket", "/nonexistent/init.sock", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot reach zeronode-init at /nonexistent/init.sock"));

    // busctl, when present, sees the interface on the same socket.
    if let Ok(out) = Command::new("busctl")
        .arg(format!("--address=unix:path={}", init.sock.display()))
        .args([
            "call",
            "org.zeronode.Init1",
            "/org/zeronode/Init1",
            "org.zeronode.Init1",
            "Status",
            "s",
            "b",
        ])
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with("sssuutsb \"b\" \"longrun\" \"running\""),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let t = Instant::now();
    assert!(init.znctl(&["poweroff"]).status.success());
    assert!(init.wait_exit().success());
    assert!(t.elapsed() < Duration::from_secs(3));
    init.wait_stderr("PowerOff requested: stopping services");
}

#[test]
fn sigint_means_reboot() {
    let mut init = Init::start(&[("a", r#"command = ["/bin/sleep", "1000"]"#)]);
    init.wait_state("a", "running");
    init.stop_with(Signal::SIGINT);
    init.wait_stderr("Reboot requested: stopping services");
}
