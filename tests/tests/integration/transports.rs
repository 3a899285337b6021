//! Transports besides TCP over IPv4: UDP services (`udp://`, `examples/udp_echo` with std
//! `UdpSocket` clients), Unix-socket services (`unix:/path`, curl `--unix-socket`, peer
//! credentials, stale and live socket files, TLS over it) and IPv6 (`[::1]`, dual-stack `[::]`).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use host_tests::{assert_contains, poll_until, run_host, Host, TempDir};

use crate::http_tools::{curl, run};

const WAIT: Duration = Duration::from_secs(10);

fn start(args: &[&str]) -> Host {
    let host = Host::spawn(args);
    if let Err(e) = host.wait_for_log("host ready", WAIT) {
        panic!("host {args:?} did not get ready: {e}");
    }
    host
}

/// A UDP client with a read deadline.
fn udp_client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Sends `msg` to `server` and returns the datagram that comes back, and from where.
fn exchange(s: &UdpSocket, server: SocketAddr, msg: &[u8]) -> (Vec<u8>, SocketAddr) {
    s.send_to(msg, server).expect("send");
    let mut buf = vec![0; 70_000];
    let (n, from) = s.recv_from(&mut buf).unwrap_or_else(|e| panic!("no answer to {msg:?}: {e}"));
    (buf[..n].to_vec(), from)
}

/// Waits until `host status` has a line containing `want`; returns the whole output.
fn wait_status(host: &mut Host, want: &str) -> String {
    let mut last = String::new();
    poll_until(WAIT, || {
        last = host.command(["status"], WAIT).stdout;
        last.contains(want).then_some(())
    })
    .unwrap_or_else(|| panic!("`host status` never showed {want:?}; last:\n{last}"));
    last
}

#[test]
fn udp_echo_answers_each_sender_and_drops_oversized_datagrams() {
    let mut host = start(&[
        "--plugin",
        "udp_echo",
        "--listen",
        "udp://127.0.0.1:0",
        "--count",
        "2",
        "--max-package-size",
        "512",
        "--idle-timeout",
        "1",
    ]);
    let server: SocketAddr = format!("127.0.0.1:{}", host.port()).parse().unwrap();
    assert_contains!(host.log_text(), "address=udp://127.0.0.1:");
    let clients: Vec<UdpSocket> = (0..8).map(|_| udp_client()).collect();
    // Every client's datagrams come back to it, and only its own, in several rounds.
    for round in 0..3 {
        for (i, c) in clients.iter().enumerate() {
            c.send_to(format!("client {i} round {round}").as_bytes(), server).unwrap();
        }
        for (i, c) in clients.iter().enumerate() {
            let mut buf = [0; 512];
            let (n, from) = c.recv_from(&mut buf).unwrap_or_else(|e| panic!("client {i}: no answer: {e}"));
            assert_eq!(from, server, "the answer comes from the service's address");
            assert_eq!(String::from_utf8_lossy(&buf[..n]), format!("client {i} round {round}"));
        }
    }
    // Each datagram is one message, newline or not; the plugin sees the sender's address.
    let me = clients[0].local_addr().unwrap();
    assert_eq!(exchange(&clients[0], server, b"whoami").0, format!("addr={me}\n").into_bytes());
    assert_eq!(exchange(&clients[0], server, b"a\nb\n").0, b"a\nb\n");

    // A datagram over the max package size is dropped (no answer) and counted; the session
    // goes on.
    clients[1].send_to(&[b'x'; 600], server).unwrap();
    assert_eq!(exchange(&clients[1], server, b"after").0, b"after", "only the next datagram is answered");
    let status = wait_status(&mut host, "datagrams dropped: 1");
    assert_contains!(status, "udp://127.0.0.1:");

    // Sessions end after the idle timeout (1 s): the plugin hears on_close, `connections` is empty.
    let listing = host.command(["connections"], WAIT).stdout;
    assert!(!listing.contains("\n0 connections"), "the sessions are listed while active:\n{listing}");
    let mut last = String::new();
    poll_until(WAIT, || {
        last = host.command(["connections"], WAIT).stdout;
        last.contains("0 connections").then_some(())
    })
    .unwrap_or_else(|| panic!("the idle sessions never ended:\n{last}"));
    // A peer whose session ended simply opens a new one.
    assert_eq!(exchange(&clients[2], server, b"again").0, b"again");
}

#[test]
fn udp_service_survives_a_graceful_reload() {
    let mut host = start(&["--plugin", "udp_echo", "--listen", "udp://127.0.0.1:0", "--drain-timeout", "30"]);
    let server: SocketAddr = format!("127.0.0.1:{}", host.port()).parse().unwrap();
    let c = udp_client();
    assert_eq!(exchange(&c, server, b"before").0, b"before");
    let old = host.worker_pids();
    let out = host.command(["reload", "-g"], Duration::from_secs(30));
    assert!(out.status.success(), "reload failed: {}{}", out.stdout, out.stderr);
    // The old worker hands its session over and exits at once (nothing is left to drain), well
    // before its 30 s drain deadline; the replacement reads the slot's socket.
    host.wait_workers(1, Duration::from_secs(20), |pids| pids != old.as_slice())
        .unwrap_or_else(|e| panic!("the old worker did not exit after its drain: {e}"));
    assert_eq!(exchange(&c, server, b"after").0, b"after");
}

/// A temp dir for socket files, and a socket path in it.
fn sock_dir() -> (TempDir, String) {
    let dir = TempDir::new();
    let path = dir.join("h.sock").to_str().unwrap().to_string();
    assert!(path.len() < 100, "temp dir too deep for a Unix socket path: {path}");
    (dir, path)
}

#[test]
fn http_over_a_unix_socket_with_curl() {
    let (_dir, path) = sock_dir();
    let listen = format!("unix:{path}");
    let mut host = start(&["--plugin", "http", "--listen", &listen, "--unix-mode", "0660", "--count", "2"]);
    let mode = std::fs::metadata(&path).expect("the socket file").permissions().mode();
    assert_eq!(mode & 0o777, 0o660, "--unix-mode applied");
    // Two requests on one keep-alive connection.
    let ran = curl(&["-v", "--unix-socket", &path, "http://localhost/", "http://localhost/", "-o", "/dev/null"]);
    assert_eq!(ran.stderr.matches("HTTP/1.1 200").count(), 2, "{}", ran.stderr);
    assert_contains!(ran.stderr, "Re-using existing connection");
    assert_contains!(host.command(["status"], WAIT).stdout, &listen);
    // A clean stop removes the socket file.
    let out = host.command(["stop"], Duration::from_secs(20));
    assert!(out.status.success(), "{}", out.stderr);
    assert!(!Path::new(&path).exists(), "the socket file is removed at a clean stop");
}

#[test]
fn a_stale_socket_file_is_replaced_and_a_live_one_refused() {
    let (dir, path) = sock_dir();
    // A socket file nobody listens on any more (its process died without removing it).
    drop(UnixListener::bind(&path).unwrap());
    assert!(Path::new(&path).exists());
    let listen = format!("unix:{path}");
    let _host = start(&["--plugin", "http", "--listen", &listen]);
    let ran = curl(&["--unix-socket", &path, "http://localhost/", "-o", "/dev/null", "-w", "%{http_code}"]);
    assert_eq!(ran.text(), "200");

    // A second host on the live socket is refused, like a port in use, and the first one serves on.
    let out = run_host(["--plugin", "http", "--listen", &listen], WAIT);
    assert!(!out.status.success());
    assert_contains!(out.stderr, "address in use");
    assert_contains!(out.stderr, &path);
    let ran = curl(&["--unix-socket", &path, "http://localhost/", "-o", "/dev/null", "-w", "%{http_code}"]);
    assert_eq!(ran.text(), "200", "the live socket was left alone");

    // Not a socket: refused, and the file is kept.
    let file = dir.write("data.sock", "precious");
    let out = run_host(["--plugin", "http", "--listen", &format!("unix:{}", file.display())], WAIT);
    assert!(!out.status.success());
    assert_contains!(out.stderr, "is not a socket");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
}

#[test]
fn a_plugin_sees_the_peer_credentials_of_a_unix_client() {
    let (_dir, path) = sock_dir();
    let _host = start(&["--plugin", "udp_echo", "--listen", &format!("unix:{path}")]);
    let mut s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"hello\nwhoami\n").unwrap();
    let mut lines = BufReader::new(s).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "hello");
    let expected = format!("uid={} gid={} pid={}", nix::unistd::getuid(), nix::unistd::getgid(), std::process::id());
    assert_eq!(lines.next().unwrap().unwrap(), expected);
}

#[test]
fn tls_over_a_unix_socket() {
    let (dir, path) = sock_dir();
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
    let cert_file = dir.write("c.pem", cert.pem());
    let key_file = dir.write("k.pem", key.serialize_pem());
    let _host = start(&[
        "--plugin",
        "http",
        "--listen",
        &format!("unix:{path}"),
        "--tls-cert",
        cert_file.to_str().unwrap(),
        "--tls-key",
        key_file.to_str().unwrap(),
    ]);
    let ran = curl(&["-k", "--unix-socket", &path, "https://localhost/", "-o", "/dev/null", "-w", "%{http_code}"]);
    assert_eq!(ran.text(), "200");
}

/// Fails with a clear message when this machine has no IPv6 loopback (it has here and in CI).
fn require_ipv6() {
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        panic!("IPv6 loopback ::1 is not available on this machine ({e}): the IPv6 tests cannot run here");
    }
}

fn http_code(url: &str) -> String {
    curl(&["-g", url, "-o", "/dev/null", "-w", "%{http_code}"]).text()
}

#[test]
fn http_over_ipv6_loopback_is_ipv6_only() {
    require_ipv6();
    let host = start(&["--plugin", "http", "--listen", "[::1]:0"]);
    let port = host.port();
    assert_contains!(host.log_text(), &format!("address=[::1]:{port}"));
    assert_eq!(http_code(&format!("http://[::1]:{port}/")), "200");
    // Not reachable over IPv4.
    let v4 = run(
        Command::new("curl").args(["-sS", "--max-time", "5", &format!("http://127.0.0.1:{port}/")]),
        Duration::from_secs(10),
    );
    assert!(!v4.success, "[::1] must not answer on 127.0.0.1");
}

#[test]
fn the_unspecified_ipv6_address_is_dual_stack() {
    require_ipv6();
    let host = start(&["--plugin", "udp_echo", "--listen", "[::]:0", "--count", "2"]);
    let port = host.port();
    for addr in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let s = std::net::TcpStream::connect(&addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
        s.set_read_timeout(Some(WAIT)).unwrap();
        (&s).write_all(b"whoami\n").unwrap();
        let line = BufReader::new(&s).lines().next().unwrap().unwrap();
        // An IPv4 client arrives as an IPv4-mapped IPv6 address.
        let want = if addr.starts_with('[') { "addr=[::1]:" } else { "addr=[::ffff:127.0.0.1]:" };
        assert!(line.starts_with(want), "{addr}: {line}");
    }
    let http = start(&["--plugin", "http", "--listen", "[::]:0"]);
    let port = http.port();
    assert_eq!(http_code(&format!("http://127.0.0.1:{port}/")), "200");
    assert_eq!(http_code(&format!("http://[::1]:{port}/")), "200");
}

// A full session table (here 4 sessions; a flood of spoofed sources fills a real one) does not
// lock a new peer out for the whole idle timeout (60 s): once the sessions there have been idle
// for a second, the longest idle are evicted and the new peer is answered.
#[test]
fn a_full_udp_session_table_makes_room_for_a_new_peer() {
    let host = start(&["--plugin", "udp_echo", "--listen", "udp://127.0.0.1:0", "--max-connections", "4"]);
    let server: SocketAddr = format!("127.0.0.1:{}", host.port()).parse().unwrap();
    let squatters: Vec<UdpSocket> = (0..4).map(|_| udp_client()).collect();
    for (i, s) in squatters.iter().enumerate() {
        assert_eq!(exchange(s, server, format!("squat {i}").as_bytes()).0, format!("squat {i}").into_bytes());
    }
    let newcomer = UdpSocket::bind("127.0.0.1:0").unwrap();
    newcomer.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let answered = poll_until(WAIT, || {
        newcomer.send_to(b"let me in", server).unwrap();
        let mut buf = [0; 64];
        newcomer.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
    });
    assert_eq!(answered.as_deref(), Some(&b"let me in"[..]), "the new peer was never answered");
}
