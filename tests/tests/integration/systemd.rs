//! systemd behaviour, tested without systemd: a datagram socket the test owns stands for
//! `NOTIFY_SOCKET` and records what the master tells the service manager, in order.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use host_tests::{run_host_in, Host, Signal, TempDir};

/// The messages received on `socket` until one contains `until` (or the timeout).
fn read_until(socket: &UnixDatagram, until: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))
            .unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                let done = msg.contains(until);
                got.push(msg);
                if done {
                    return got;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no message with {until:?} within {timeout:?}; got {got:?}");
}

// READY=1 (with a STATUS=) once every worker is ready; RELOADING=1 with MONOTONIC_USEC when a
// reload begins and READY=1 when it ends; STOPPING=1 on stop. Workers never notify.
#[test]
fn the_master_tells_the_service_manager_its_state() {
    let dir = TempDir::new();
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut host = Host::spawn_with_env(
        ["--plugin", "http", "--count", "2", "--listen", "127.0.0.1:0"],
        &[("NOTIFY_SOCKET", path.as_os_str())],
    );
    let ready = read_until(&socket, "READY=1", Duration::from_secs(10));
    let last = ready.last().unwrap();
    assert!(last.contains("STATUS=2 workers ready"), "{ready:?}");
    let pid_file = host.pid_file();
    let out =
        run_host_in(host.dir().path(), ["reload", "--pid-file", pid_file.to_str().unwrap()], Duration::from_secs(30));
    assert!(out.status.success(), "{out:?}");
    let reload = read_until(&socket, "READY=1", Duration::from_secs(10));
    assert!(reload[0].contains("RELOADING=1") && reload[0].contains("MONOTONIC_USEC="), "{reload:?}");
    assert!(reload.last().unwrap().contains("last reload: done: 2 workers replaced"), "{reload:?}");
    host.signal(Signal::SIGTERM);
    let stopping = read_until(&socket, "STOPPING=1", Duration::from_secs(10));
    assert_eq!(stopping.len(), 1, "only the master speaks: {stopping:?}");
    host.wait_exit(Duration::from_secs(15)).expect("the master exits");
}
