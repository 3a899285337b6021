//! Reload.

use super::*;

// SIGUSR1 and `host reload` replace every worker (same count, no pid kept), the master stays,
// and the service answers after each reload.
#[test]
fn reload_replaces_every_worker_while_serving() {
    let mut host = Host::start("http", &["--count", "2"]);
    let port = host.port();
    let master = host.pid();
    let mut workers = host.wait_workers(2, Duration::from_secs(2), |_| true).unwrap();
    let probe = Probe::start(port);
    for (round, how) in ["SIGUSR1", "host reload"].into_iter().enumerate() {
        if how == "SIGUSR1" {
            host.signal(Signal::SIGUSR1);
        } else {
            let out = host.command(["reload"], COMMAND_TIMEOUT);
            assert_ok(&out, "reload");
            assert_contains!(out.stdout, "reload done", "{how}");
        }
        host.log().wait_for_nth("reload done", round + 1, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
        let old = workers.clone();
        workers = host
            .wait_workers(2, Duration::from_secs(5), |pids| pids.iter().all(|p| !old.contains(p)))
            .unwrap_or_else(|e| panic!("{how}: workers not all replaced ({old:?} before): {e}"));
        for pid in &old {
            assert!(wait_gone(*pid, Duration::from_secs(3)), "{how}: old worker {pid} still runs");
        }
        assert!(is_alive(master) && host.wait_exit(Duration::ZERO).is_none(), "{how}: the master is gone");
    }
    // A plain reload stops the old workers at once: a request that one of them had accepted
    // and not answered yet may fail (that is what `reload -g` is for, tested below). So this
    // only asserts that the service answered, and answers after each reload.
    let (answered, _failures) = probe.finish();
    assert!(answered > 0, "the probe never got an answer");
    let r = host_tests::Client::connect(port).request(&host_tests::get("/"));
    assert_eq!(r.status, 200, "{}", r.head);
    let out = host.command(["status"], COMMAND_TIMEOUT);
    assert_contains!(out.stdout, format!("master pid {master} "));
    assert_eq!(row_pids(&out.stdout), workers, "{}", out.stdout);
}

// SIGHUP, SIGQUIT and `host reload -g` drain the old worker when hand-overs are off
// (`--no-handover`; with them the connection moves: handover_http.rs): a keep-alive connection
// that was answered before gets its next response with `Connection: close`, then EOF (not a
// reset); the old worker exits and a new one serves.
#[test]
fn graceful_reload_drains_keep_alive_connections() {
    let mut host = Host::start("http", &["--no-handover"]);
    let port = host.port();
    for (round, how) in ["SIGHUP", "SIGQUIT", "host reload -g"].into_iter().enumerate() {
        let old = host.wait_workers(1, Duration::from_secs(5), |_| true).unwrap()[0];
        let mut conn = KeepAlive::connect(port);
        let head = conn.get();
        assert!(!head.to_ascii_lowercase().contains("connection: close"), "{head}");
        match how {
            "SIGHUP" => host.signal(Signal::SIGHUP),
            "SIGQUIT" => host.signal(Signal::SIGQUIT),
            _ => {
                let out = host.command(["reload", "-g"], COMMAND_TIMEOUT);
                assert_ok(&out, "reload -g");
                assert_contains!(out.stdout, "reload done");
            }
        }
        host.log()
            .wait_for_all(&["draining", &format!("pid={old}}}")], Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{how}: the old worker {old} did not drain: {e}"));
        let head = conn.get();
        assert_contains!(head.to_ascii_lowercase(), "connection: close", "{how}");
        conn.expect_eof();
        assert!(
            wait_gone(old, Duration::from_secs(5)),
            "{how}: old worker {old} did not exit after its last connection"
        );
        host.log().wait_for_nth("reload done", round + 1, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
        let new = host.wait_workers(1, Duration::from_secs(2), |p| p[0] != old).unwrap();
        assert!(!new.contains(&old));
        hello(port);
    }
}
