//! Crash loop.

use super::*;

/// Seconds since midnight of a log line's timestamp (`2026-01-01T12:34:56.789012Z …`).
fn log_seconds(line: &str) -> f64 {
    let time = line.split('T').nth(1).and_then(|t| t.split('Z').next()).unwrap_or_else(|| panic!("{line:?}"));
    let parts: Vec<f64> = time.split(':').map(|p| p.parse().unwrap()).collect();
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

// A slot whose worker exits at start is restarted with exponential back-off (not in a fork
// loop), the master says so and lives on, and the slot serves again once the cause is gone.
#[test]
fn crash_loop_backs_off_and_recovers() {
    let dir = TempDir::new();
    let trigger = dir.join("crash");
    let config = format!("crash_if_exists = \"{}\"", trigger.display());
    let host = Host::start("fixture_crash", &["--plugin-config", &config]);
    let port = host.port();
    echo(port, "before");
    let victim = host.wait_workers(1, Duration::from_secs(2), |_| true).unwrap()[0];
    let started_before = host.log().count("worker started");
    let ready_before = host.log().count("start_ms=");
    std::fs::write(&trigger, "").unwrap();
    signal_pid(victim, Signal::SIGKILL);
    // The measurement window: restarts are counted over it.
    let window = Duration::from_secs(5);
    std::thread::sleep(window);
    let text = host.log_text();
    let starts: Vec<&str> = text.lines().filter(|l| l.contains("worker started")).skip(started_before).collect();
    // Delays 0, 100, 200, 400, 800, 1600 ms (then 3.2 s): about 6 starts in 5 s.
    assert!((3..=15).contains(&starts.len()), "{} restarts in {window:?}:\n{text}", starts.len());
    assert_contains!(text, "keeps dying");
    assert!(text.contains("exit code 3"), "the crashes are logged with their exit code:\n{text}");
    let times: Vec<f64> = starts.iter().map(|l| log_seconds(l)).collect();
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("note: {} starts in {window:?}, {gaps:.2?} s apart", starts.len());
    assert!(gaps.last().is_some_and(|&g| g >= 0.7), "the restarts do not back off: gaps {gaps:?} s");
    assert!(is_alive(host.pid()), "the master died");

    std::fs::remove_file(&trigger).unwrap();
    host.log()
        .wait_for_nth("start_ms=", ready_before + 1, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the slot did not recover: {e}"));
    echo(port, "after");
    assert!(is_alive(host.pid()), "the master died");
}

// While one of two slots has no live worker (its workers exit at start, backing off), new
// connections are steered to the live slot: none waits in the dead slot's accept queue. Each of
// 50 new connections is answered (within the client's read timeout); without steering about
// half would hash to the dead slot and never be. The slot serves again once the cause is gone.
#[test]
fn new_connections_avoid_a_slot_without_a_live_worker() {
    let dir = TempDir::new();
    let trigger = dir.join("crash");
    let config = format!("crash_if_exists = \"{}\"", trigger.display());
    let host = Host::start("fixture_crash", &["--count", "2", "--plugin-config", &config]);
    let port = host.port();
    let victim = host.wait_workers(2, Duration::from_secs(10), |_| true).unwrap()[0];
    let ready_before = host.log().count("start_ms=");
    std::fs::write(&trigger, "").unwrap();
    signal_pid(victim, Signal::SIGKILL);
    let steered = "new connections go to the live slots only";
    assert_eq!(host.log().count(steered), 0, "both slots were live");
    let line = host.log().wait_for_nth(steered, 1, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    assert_contains!(line, "service=fixture_crash");
    // Its next worker fails too: the slot is dead, not merely restarting.
    host.wait_for_log("exit code 3", Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..50 {
        echo(port, &format!("steered {i}"));
    }

    std::fs::remove_file(&trigger).unwrap();
    host.log()
        .wait_for_nth("start_ms=", ready_before + 1, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the slot did not recover: {e}"));
    for i in 0..20 {
        echo(port, &format!("both slots {i}"));
    }
}
