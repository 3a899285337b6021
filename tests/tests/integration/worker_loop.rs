//! The worker's loop against what plugins and operators throw at it: timers that never end,
//! signals meant for the master, a SIGTERM sent by hand.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use host_tests::{is_alive, signal_pid, Host, Signal, IO_TIMEOUT};

fn echo(port: u16, line: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut got = String::new();
    BufReader::new(&s).read_line(&mut got).unwrap();
    assert_eq!(got, format!("{line}\n"));
}

// A plugin that re-arms a 0 ms timer inside its own callback does not livelock its worker: the
// timer fires once a loop turn and connections are still served.
#[test]
fn a_zero_ms_timer_rearmed_forever_does_not_stop_the_worker_serving() {
    let host = Host::start("fixture_crash", &["--plugin-config", "zero_timer = \"on\""]);
    for i in 0..20 {
        echo(host.port(), &format!("line {i}"));
    }
}

// SIGUSR1, SIGUSR2 and SIGIO mean something to the master only (`pkill -USR2 host` reaches the
// workers too): a worker that gets them lives on and serves.
#[test]
fn master_signals_sent_to_a_worker_do_not_kill_it() {
    let host = Host::start("fixture_crash", &[]);
    let worker = host.wait_workers(1, Duration::from_secs(5), |_| true).unwrap()[0];
    for sig in [Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGIO] {
        signal_pid(worker, sig);
    }
    echo(host.port(), "still here");
    assert!(is_alive(worker), "worker {worker} died of a signal meant for the master");
    assert_eq!(host.worker_pids(), vec![worker], "{}", host.log_text());
}

// A worker sent SIGTERM by hand drains with the service's configured drain timeout.
#[test]
fn a_worker_sent_sigterm_by_hand_drains_with_the_configured_timeout() {
    let host = Host::start("fixture_crash", &["--drain-timeout", "1.5"]);
    let worker = host.wait_workers(1, Duration::from_secs(5), |_| true).unwrap()[0];
    signal_pid(worker, Signal::SIGTERM);
    let line = host
        .log()
        .wait_for_all(&["draining", &format!("pid={worker}")], Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("timeout_ms=1500"), "{line}");
}
