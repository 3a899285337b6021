//! The master's supervision of its workers, and how it stops.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use host_tests::{assert_contains, cmdline, get, is_alive, poll_until, signal_pid, Client, Host, Signal};

const EXIT_TIMEOUT: Duration = Duration::from_secs(8);
/// The master's drain timeout (5 s), plus a margin.
const DRAIN_DEADLINE: Duration = Duration::from_secs(7);

fn hello(port: u16) {
    let r = Client::connect(port).request(&get("/"));
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body_text(), "Hello, World!");
}

// `--count 4` is four worker processes, children of the master, each titled for `ps`.
#[test]
fn count_gives_that_many_worker_children() {
    let host = Host::start("http", &["--count", "4"]);
    let workers = host.wait_workers(4, Duration::from_secs(2), |_| true).unwrap_or_else(|e| panic!("{e}"));
    let mut titles: Vec<String> = workers.iter().filter_map(|&p| cmdline(p)).collect();
    titles.sort();
    for (slot, title) in titles.iter().enumerate() {
        assert_contains!(title, format!("host: worker http #{slot} "));
        // The title alone: no leftover arguments after it.
        assert_eq!(title.matches("--").count(), 0, "{title}");
        assert!(title.ends_with(&format!("http {}", env!("CARGO_PKG_VERSION"))), "{title}");
    }
    let master = cmdline(host.pid()).unwrap_or_default();
    assert_eq!(master, format!("host: master (http 127.0.0.1:{})", 0), "{master}");
    hello(host.port());
}

// A worker killed with SIGKILL is replaced at once and the service goes on.
#[test]
fn killed_worker_is_replaced() {
    let host = Host::start("http", &["--count", "2"]);
    let port = host.port();
    let before = host.wait_workers(2, Duration::from_secs(2), |_| true).unwrap();
    let victim = before[0];
    signal_pid(victim, Signal::SIGKILL);
    let after = host
        .wait_workers(2, Duration::from_secs(2), |pids| !pids.contains(&victim))
        .unwrap_or_else(|e| panic!("no replacement for worker {victim}: {e}"));
    assert!(after.contains(&before[1]), "the other worker must live on: {before:?} → {after:?}");
    assert!(!is_alive(victim), "worker {victim} still runs");
    let new = *after.iter().find(|p| !before.contains(p)).unwrap();
    host.log()
        .wait_for_all(&["worker ready", &format!("pid={new}")], Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("the replacement did not get ready: {e}"));
    // New connections land on both slots (one SO_REUSEPORT socket each): all are answered.
    for _ in 0..20 {
        hello(port);
    }
}

// SIGINT stops the workers now; the master exits 0 and leaves no process behind.
#[test]
fn sigint_stops_master_and_workers() {
    let mut host = Host::start("http", &["--count", "2"]);
    let workers = host.wait_workers(2, Duration::from_secs(2), |_| true).unwrap();
    let sent = Instant::now();
    host.signal(Signal::SIGINT);
    let status = host.wait_all_gone(EXIT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(0), "{status}");
    // Now, not after the 2 s kill timeout: the workers obeyed the stop.
    let took = sent.elapsed();
    assert!(took < Duration::from_millis(1500), "SIGINT took {took:?} to stop the host");
    for pid in workers {
        assert!(
            poll_until(Duration::from_secs(2), || (!is_alive(pid)).then_some(())).is_some(),
            "worker {pid} outlived the master"
        );
    }
}

// SIGTERM drains: an idle keep-alive connection is left open (its client may have a request on
// the wire) and closed by the server at the drain deadline (5 s); the master exits 0.
#[test]
fn sigterm_closes_idle_keep_alive_connections_and_exits() {
    let mut host = Host::start("http", &[]);
    let mut c = Client::connect(host.port());
    assert_eq!(c.request(&get("/")).status, 200);
    host.signal(Signal::SIGTERM);
    let rest = c.wait_closed(DRAIN_DEADLINE).expect("the server closes an idle connection when it drains");
    assert!(rest.is_empty(), "unexpected bytes: {:?}", String::from_utf8_lossy(&rest));
    let status = host.wait_all_gone(EXIT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(0), "{status}");
}

// A request on a keep-alive connection during the drain is answered with `Connection: close`,
// then the connection closes; with no connection left the worker and the master exit at once.
#[test]
fn sigterm_answers_the_next_request_with_connection_close() {
    let mut host = Host::start("http", &[]);
    let mut c = Client::connect(host.port());
    assert_eq!(c.request(&get("/")).status, 200);
    let sent = Instant::now();
    host.signal(Signal::SIGTERM);
    host.wait_for_log("draining", Duration::from_secs(2)).unwrap_or_else(|e| panic!("{e}"));
    let r = c.request(&get("/"));
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.header("Connection"), Some("close"), "{}", r.head);
    c.wait_closed(Duration::from_secs(2)).expect("the server closes after that response");
    let status = host.wait_all_gone(EXIT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(0), "{status}");
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(3), "the stop waited for the drain deadline: {took:?}");
}

// A port in use fails the start at once, naming the address; nothing is left running.
#[test]
fn port_in_use_fails_the_start() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut host = Host::spawn(["--plugin", "http", "--listen", &addr]);
    let status = host.wait_all_gone(EXIT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let (_, log) = host.finish(EXIT_TIMEOUT);
    assert!(!status.success(), "{status}\n{log}");
    assert_contains!(log, addr);
    assert_eq!(host.log().count("worker started"), 0, "{log}");
    drop(taken);
}
