//! Outbound connections (`Host::connect`) through the `fixture_outbound` plugin, which opens one
//! on a client's command and reports, line by line, what happens on it: connected to a second
//! host service (the `text` plugin echoes lines), refused, timed out, closed by its peer in the
//! middle of a message, resolved by name, and asked to wind down by a drain.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::time::Duration;

use host_tests::{Client, Host, Signal};
use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn};

fn line(c: &mut Client) -> String {
    let got = c.read_line().unwrap_or_else(|e| panic!("no line from the fixture: {e}"));
    String::from_utf8_lossy(&got).trim_end().to_string()
}

fn fixture() -> (Host, Client) {
    let host = Host::start("fixture_outbound", &["--count", "1"]);
    let client = Client::connect(host.port());
    (host, client)
}

// A plugin opens a connection to another host service, hears `on_connect` with its peer, tells
// it from its accepted connections, talks to it through the same framing and `send`, and
// closes it.
#[test]
fn a_plugin_connects_to_another_service_and_talks_to_it() {
    let peer = Host::start("text", &["--count", "1"]);
    let (_host, mut c) = fixture();
    c.send(format!("connect 127.0.0.1:{}\n", peer.port()).as_bytes());
    assert_eq!(line(&mut c), "started");
    assert_eq!(line(&mut c), format!("connected true 127.0.0.1:{}", peer.port()));
    c.send(b"kinds\n");
    assert_eq!(line(&mut c), "kinds false true", "accepted, then outbound");
    c.send(b"send hello\nsend world\n");
    assert_eq!(line(&mut c), "data hello");
    assert_eq!(line(&mut c), "data world");
    c.send(b"close\n");
    assert_eq!(line(&mut c), "closed");
    // The client's own connection lives on.
    c.send(b"kinds\n");
    assert_eq!(line(&mut c), "kinds false false");
}

// A name is resolved off the loop; `localhost` may resolve to ::1 first, where nothing listens:
// the next address is tried within the same connect.
#[test]
fn a_host_name_is_resolved_and_connected() {
    let peer = Host::start("text", &["--count", "1"]);
    let (_host, mut c) = fixture();
    c.send(format!("connect localhost:{}\n", peer.port()).as_bytes());
    assert_eq!(line(&mut c), "started");
    assert_eq!(line(&mut c), format!("connected true 127.0.0.1:{}", peer.port()));
    c.send(b"send by name\n");
    assert_eq!(line(&mut c), "data by name");
}

// Nothing listens on the port: `on_conn_error(CONNECT_REFUSED)`, then `on_close`.
#[test]
fn a_refused_connect_is_reported_then_closed() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (_host, mut c) = fixture();
    c.send(format!("connect 127.0.0.1:{port}\n").as_bytes());
    assert_eq!(line(&mut c), "started");
    assert_eq!(line(&mut c), "error ConnectRefused");
    assert_eq!(line(&mut c), "closed");
    // Sends before a connection exists are refused, and the worker serves on.
    c.send(b"send nobody\n");
    assert_eq!(line(&mut c), "unknown");
}

// A listener whose accept queue is full and never accepted makes Linux drop new SYNs: the
// connect hits its (short, per call) timeout: `CONNECT_TIMEOUT`, then `on_close`.
#[test]
fn a_connect_that_is_never_answered_times_out() {
    let (listener, addr) = listener_with_backlog_zero();
    let _queued = fill_accept_queue(addr);
    let (_host, mut c) = fixture();
    c.send(format!("connect {addr} 300\n").as_bytes());
    assert_eq!(line(&mut c), "started");
    assert_eq!(line(&mut c), "error ConnectTimeout");
    assert_eq!(line(&mut c), "closed");
    drop(listener);
}

// Addresses the host cannot read are refused by `connect` itself.
#[test]
fn an_invalid_address_is_refused_at_once() {
    let (_host, mut c) = fixture();
    for bad in ["nonsense", "127.0.0.1", "host:99999", "a b:80"] {
        c.send(format!("connect {bad}\n").as_bytes());
        assert_eq!(line(&mut c), "refused InvalidAddress", "{bad:?}");
    }
}

// The peer answers half a message and closes: the plugin gets the complete part as a message,
// then `on_close`; the half line is dropped with the connection.
#[test]
fn a_peer_closing_mid_message_closes_the_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        s.write_all(b"part one\npart-without-its-newline").unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    });
    let (_host, mut c) = fixture();
    c.send(format!("connect {addr}\n").as_bytes());
    assert_eq!(line(&mut c), "started");
    assert!(line(&mut c).starts_with("connected true"));
    c.send(b"send question\n");
    assert_eq!(line(&mut c), "data part one");
    assert_eq!(line(&mut c), "closed");
    assert_eq!(peer.join().unwrap(), "question\n");
}

// A draining worker asks the plugin to wind down its outbound connections too (`on_drain`),
// and exits once they are closed.
#[test]
fn a_drain_reaches_outbound_connections() {
    let peer = Host::start("text", &["--count", "1"]);
    let (mut host, mut c) = fixture();
    c.send(format!("connect 127.0.0.1:{}\n", peer.port()).as_bytes());
    assert_eq!(line(&mut c), "started");
    assert!(line(&mut c).starts_with("connected true"));
    host.signal(Signal::SIGTERM);
    let rest = c.wait_closed(Duration::from_secs(10)).expect("the drain closes the client");
    assert!(String::from_utf8_lossy(&rest).contains("drain\n"), "{:?}", String::from_utf8_lossy(&rest));
    host.wait_exit(Duration::from_secs(10)).expect("the host exits after the drain");
}

/// A listening socket on 127.0.0.1 with a backlog of 0 (one connection fits in its queue).
fn listener_with_backlog_zero() -> (OwnedFd, SocketAddr) {
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
    listen(&fd, Backlog::new(0).unwrap()).unwrap();
    let local: SockaddrIn = nix::sys::socket::getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd)).unwrap();
    (fd, SocketAddr::new([127, 0, 0, 1].into(), local.port()))
}

/// Connects until a connect is not answered (the queue is full), and keeps the connections.
fn fill_accept_queue(addr: SocketAddr) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..16 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => held.push(s),
            Err(_) => return held,
        }
    }
    panic!("the accept queue of {addr} never filled ({} connections queued)", held.len());
}
