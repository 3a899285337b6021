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

// Socket activation: the service manager (here systemd-socket-activate) binds the port and hands
// the listening socket over (LISTEN_FDS); the host serves on it instead of binding its own, and
// the connection that started it, queued before the host ran, is answered.
#[test]
fn socket_activation_serves_on_the_socket_handed_over() {
    use std::os::unix::process::CommandExt;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let address = format!("127.0.0.1:{port}");
    let dir = TempDir::new();
    let mut child = std::process::Command::new("systemd-socket-activate")
        .args(["-l", &address, "--fdname=http"])
        .arg(host_tests::host_bin())
        .args(["--plugin", "http", "--count", "2", "--listen", &address])
        .current_dir(dir.path())
        .env("XDG_RUNTIME_DIR", dir.path())
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("systemd-socket-activate (Debian package systemd)");
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut { stderr }, &mut text);
        text
    });
    // systemd-socket-activate listens before it starts the host: connect, then ask.
    let connected = host_tests::poll_until(Duration::from_secs(10), || std::net::TcpStream::connect(&address).ok());
    drop(connected);
    let answered = host_tests::poll_until(Duration::from_secs(20), || {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        std::io::Write::write_all(&mut c, &host_tests::get("/")).ok()?;
        let mut head = [0u8; 12];
        std::io::Read::read_exact(&mut c, &mut head).ok()?;
        head.starts_with(b"HTTP/1.1 200").then_some(())
    });
    let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
    let _ = child.wait();
    let log = log.join().unwrap_or_default();
    assert!(answered.is_some(), "no answer on the activated socket:\n{log}");
    assert!(log.contains("the socket the service manager handed over"), "{log}");
}
