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

/// The worker pids of service `name` in a `status` rendering, sorted, less those draining (a
/// worker just replaced by a reload is listed, draining, until the master has reaped it).
fn service_pids(table: &str, name: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = worker_rows(table)
        .iter()
        .filter(|r| r[0] == name && r.last().is_none_or(|state| *state != "draining"))
        .map(|r| r[2].parse().unwrap())
        .collect();
    pids.sort_unstable();
    pids
}

// A service that is down (its workers exit at start, backing off) blocks no reload of the
// others: `host reload` and SIGHUP replace every worker of the services before and after it,
// succeed, and say exactly what happened to each service (3 replaced, `looping` down). Before,
// every reload failed at the looping service ("aborted at looping #0 (0 replaced before)" after
// two retries, though `alpha` had moved), and `omega` was never reloaded.
#[test]
fn a_crash_looping_service_does_not_block_the_reload_of_the_others() {
    let dir = TempDir::new();
    let trigger = dir.join("crash");
    let service = |name: &str, count: u32, config: &str| {
        format!("[[service]]\nname = \"{name}\"\nplugin = \"fixture_crash\"\nlisten = \"127.0.0.1:0\"\ncount = {count}\n{config}\n")
    };
    let looping = format!("[service.config]\ncrash_if_exists = {:?}\n", trigger.display().to_string());
    // A config chooses its own plugin directories: name the fixtures' one.
    let dirs = format!("plugin_dirs = [{:?}]\n", host_tests::fixtures_dir().display().to_string());
    let text = [dirs, service("alpha", 2, ""), service("looping", 1, &looping), service("omega", 1, "")].concat();
    let cfg = dir.write("three.toml", &text).display().to_string();
    let mut host = Host::spawn(["-c", &cfg]);
    host.wait_for_log("host ready", READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let pid_file = host.pid_file().display().to_string();
    let status = |host: &mut Host| {
        let out = host.command(["--pid-file", &pid_file, "status"], COMMAND_TIMEOUT);
        assert_ok(&out, "status");
        out.stdout
    };
    let table = status(&mut host);
    let victim = service_pids(&table, "looping")[0];
    std::fs::write(&trigger, "").unwrap();
    signal_pid(victim, Signal::SIGKILL);
    // Its next worker fails too: the service is down, backing off.
    host.wait_for_log("exit code 3", Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));

    for (round, how) in ["host reload", "SIGHUP"].into_iter().enumerate() {
        let table = status(&mut host);
        let before = [service_pids(&table, "alpha"), service_pids(&table, "omega")];
        assert_eq!((before[0].len(), before[1].len()), (2, 1), "{table}");
        if how == "SIGHUP" {
            host.signal(Signal::SIGHUP);
        } else {
            let out = host.command(["--pid-file", &pid_file, "reload"], COMMAND_TIMEOUT);
            assert_ok(&out, "reload");
            assert_contains!(out.stdout, "reload done: 3 workers replaced");
            assert_contains!(out.stdout, "service looping is down");
        }
        let done =
            host.log().wait_for_nth("reload done", round + 1, RELOAD_WAIT).unwrap_or_else(|e| panic!("{how}: {e}"));
        assert_contains!(done, "replaced=3");
        let table = status(&mut host);
        for (name, old) in ["alpha", "omega"].iter().zip(&before) {
            let now = service_pids(&table, name);
            assert_eq!(now.len(), old.len(), "{how}: {name}\n{table}");
            assert!(now.iter().all(|p| !old.contains(p)), "{how}: {name} not replaced ({old:?} before)\n{table}");
        }
        assert_contains!(table, "3 workers replaced");
    }
    assert!(is_alive(host.pid()), "the master died");

    // Once the cause is gone, the looping service serves again.
    let ready = |host: &Host| {
        host.log_text().lines().filter(|l| l.contains("worker ready") && l.contains("service=looping")).count()
    };
    let ready_before = ready(&host);
    std::fs::remove_file(&trigger).unwrap();
    poll_until(Duration::from_secs(20), || (ready(&host) > ready_before).then_some(()))
        .expect("the looping service did not recover");
    echo(service_port(&host, "looping"), "back");
}

/// How long a reload of four workers may take.
const RELOAD_WAIT: Duration = Duration::from_secs(20);
