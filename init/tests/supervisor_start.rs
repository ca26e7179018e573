//! Starting: dependency order, oneshots, health gates, refusals, the
//! ready line. Each test drives the real `zeronode-init` binary.

#[path = "supervisor_harness.rs"]
mod harness;

use harness::{lines, Init};

#[test]
fn dependencies_start_in_order_and_the_rest_in_parallel() {
    let init = Init::start(&[
        // Slow on purpose: if its dependents did not wait, they would write first.
        (
            "first",
            r#"command = ["/bin/sh", "-c", "sleep 0.3; echo first >> @DIR@/order"]
               kind = "oneshot""#,
        ),
        (
            "second",
            r#"command = ["/bin/sh", "-c", "sleep 0.2; echo second >> @DIR@/order; touch @DIR@/second.up; exec sleep 1000"]
               after = ["first"]
               health = { command = ["/bin/test", "-e", "@DIR@/second.up"], start_interval_ms = 20 }"#,
        ),
        (
            "third",
            r#"command = ["/bin/sh", "-c", "echo third >> @DIR@/order; exec sleep 1000"]
               after = ["second", "first"]
               ready = true"#,
        ),
        (
            "independent",
            r#"command = ["/bin/sh", "-c", "echo independent >> @DIR@/order; exec sleep 1000"]"#,
        ),
    ]);
    let order = init.path("order");
    init.wait_until("all four", || lines(&order).len() == 4);
    assert_eq!(lines(&order), ["independent", "first", "second", "third"]);
    assert_eq!(init.state("first"), "done");
    init.wait_until("ready line", || init.ready_lines().len() == 1);
}

#[test]
fn a_failed_oneshot_holds_back_its_dependents() {
    let init = Init::start(&[
        (
            "setup",
            r#"command = ["/bin/sh", "-c", "exit 4"]
               kind = "oneshot""#,
        ),
        (
            "app",
            r#"command = ["/bin/sleep", "1000"]
               after = ["setup"]"#,
        ),
        (
            "web",
            r#"command = ["/bin/sleep", "1000"]
                   after = ["app"]"#,
        ),
        ("other", r#"command = ["/bin/sleep", "1000"]"#),
    ]);
    init.wait_state("setup", "failed");
    let setup = init.json(&["status", "setup"]);
    assert_eq!(setup["detail"], "exited with status 4");
    let app = init.json(&["status", "app"]);
    assert_eq!(
        (app["state"].as_str(), app["detail"].as_str()),
        (Some("failed"), Some("dependency setup failed"))
    );
    assert_eq!(
        init.json(&["status", "web"])["detail"],
        "dependency app failed"
    );
    assert_eq!(init.state("other"), "running");
    // No service is marked ready: the line comes once all were started or failed.
    init.wait_until("ready line", || init.ready_lines().len() == 1);
}

#[test]
fn cycles_missing_dependencies_and_bad_files_are_refused_loudly() {
    let init = Init::start(&[
        (
            "cyc1",
            r#"command = ["/bin/sleep", "1000"]
                    after = ["cyc2"]"#,
        ),
        (
            "cyc2",
            r#"command = ["/bin/sleep", "1000"]
                    after = ["cyc1"]"#,
        ),
        (
            "orphan",
            r#"command = ["/bin/sleep", "1000"]
                      after = ["ghost"]"#,
        ),
        (
            "typo",
            r#"command = ["/bin/sleep", "1000"]
                    restart = { policy = "sometimes" }"#,
        ),
        (
            "fine",
            r#"command = ["/bin/sleep", "1000"]
                    ready = true"#,
        ),
    ]);
    init.wait_until("ready line", || init.ready_lines().len() == 1);
    // stderr is read by its own thread: the ready line on stdout can come first.
    init.wait_until("the refusals on stderr", || {
        let err = init.stderr();
        err.contains("service cyc1 refused")
            && err.contains("service orphan refused")
            && err.contains("typo.toml")
    });
    let err = init.stderr();
    assert!(
        err.contains("service cyc1 refused: dependency cycle: cyc1 -> cyc2 -> cyc1"),
        "{err}"
    );
    assert!(
        err.contains("service orphan refused: depends on \"ghost\", which does not exist"),
        "{err}"
    );
    assert!(
        err.contains("typo.toml: line 2") && err.contains("sometimes"),
        "{err}"
    );
    assert_eq!(init.state("fine"), "running");
    assert_eq!(init.state("cyc2"), "refused");
    let out = init.znctl(&["start", "cyc1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cyc1 -> cyc2"));
    // The bad file is not a service at all.
    assert_eq!(init.znctl(&["status", "typo"]).status.code(), Some(1));
}

#[test]
fn dependents_wait_for_a_health_check_to_pass() {
    let init = Init::start(&[
        (
            "db",
            r#"command = ["/bin/sh", "-c", "sleep 0.4; touch @DIR@/db.ok; exec sleep 1000"]
               health = { command = ["/bin/test", "-e", "@DIR@/db.ok"], start_interval_ms = 20, interval_ms = 50, retries = 2 }"#,
        ),
        (
            "web",
            r#"command = ["/bin/sh", "-c", "touch @DIR@/web.started; exec sleep 1000"]
               after = ["db"]
               ready = true"#,
        ),
    ]);
    init.wait_until("db started", || init.state("db") == "starting");
    assert_eq!(init.state("web"), "waiting");
    assert!(!init.path("web.started").exists());
    assert!(init.ready_lines().is_empty());
    init.wait_state("web", "running");
    assert!(init.path("db.ok").exists());
    assert_eq!(init.state("db"), "running");
    init.wait_until("ready line", || init.ready_lines().len() == 1);
    let ms: u64 = init.ready_lines()[0]
        .trim_start_matches("zeronode: ready in ")
        .trim_end_matches(" ms")
        .parse()
        .unwrap();
    assert!(
        ms >= 400,
        "ready after {ms} ms, before db's check could pass"
    );

    // Healthy, then the check fails twice in a row: stopped and restarted.
    std::fs::remove_file(init.path("db.ok")).unwrap();
    init.wait_stderr("db: unhealthy after 2 failed checks");
    init.wait_until("db restarted", || {
        init.json(&["status", "db"])["restarts"] == 1
    });
    init.wait_state("db", "running");
}

#[test]
fn the_ready_line_waits_for_marked_services_and_comes_once() {
    let init = Init::start(&[
        (
            "slow",
            r#"command = ["/bin/sh", "-c", "sleep 0.3; exit 0"]
               kind = "oneshot"
               ready = true"#,
        ),
        (
            "fast",
            r#"command = ["/bin/sleep", "1000"]
                    ready = true"#,
        ),
        // Not marked: its crash loop does not hold the line back.
        (
            "crashy",
            r#"command = ["/bin/false"]
                      restart = { initial_ms = 10, max_ms = 20 }"#,
        ),
    ]);
    init.wait_until("ready line", || init.ready_lines().len() == 1);
    let line = init.ready_lines()[0].clone();
    let ms: u64 = line["zeronode: ready in ".len()..line.len() - 3]
        .parse()
        .unwrap();
    assert!(ms >= 300, "{line}");
    // Restarts and state changes later do not print it again.
    init.znctl(&["restart", "fast"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(init.ready_lines().len(), 1, "{:?}", init.stdout());
}
