//! The ring under real loopback sockets: receive, send, backpressure, end of input, a deferred
//! shutdown, a socket dropped with bytes still queued, and a reader that does not keep up.
//! Skipped (with a line saying so) where io_uring is unavailable.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::*;

const TOKEN: usize = 42;
const DEADLINE: Duration = Duration::from_secs(10);

/// A ring over a fresh poll (kept: the ring watches its descriptor), or None where io_uring
/// is unavailable.
fn ring() -> Option<(Ring, mio::Poll)> {
    let poll = mio::Poll::new().unwrap();
    match Ring::new(poll.as_raw_fd()) {
        Ok(ring) => Some((ring, poll)),
        Err(e) => {
            eprintln!("io_uring unavailable ({e}): test skipped");
            None
        }
    }
}

/// A connected pair: the server's end on the ring (armed under `TOKEN`), the client's a
/// blocking std stream with a read timeout.
fn pair(ring: &Ring) -> (RingSocket, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let (server, _) = listener.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    let Stream::Ring(socket) = ring.adopt(Stream::Tcp(mio::net::TcpStream::from_std(server))) else {
        panic!("a TCP stream goes on the ring");
    };
    socket.arm(TOKEN);
    (socket, client)
}

/// Turns the ring until `want` holds for an event of `TOKEN` (bounded by `DEADLINE`).
fn turn_until(ring: &mut Ring, want: impl Fn(&RingEvent) -> bool) -> RingEvent {
    let start = Instant::now();
    let mut events = Vec::new();
    while start.elapsed() < DEADLINE {
        ring.turn(Some(Duration::from_millis(100)), 0, &mut events).unwrap();
        if let Some(e) = events.iter().find(|e| e.token == TOKEN && want(e)) {
            return *e;
        }
    }
    panic!("no such event in {DEADLINE:?}");
}

/// Turns the ring a few times without waiting long (submissions go out).
fn spin(ring: &mut Ring, turns: usize) {
    let mut events = Vec::new();
    for _ in 0..turns {
        ring.turn(Some(Duration::from_millis(10)), 0, &mut events).unwrap();
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Reads what the socket holds now (to `WouldBlock`, or its end: then true).
fn drain(socket: &mut RingSocket, into: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 8192];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

#[test]
fn receives_and_sends_through_the_ring() {
    let Some((mut ring, _poll)) = ring() else { return };
    let (mut socket, mut client) = pair(&ring);
    let mut buf = [0u8; 64];
    assert_eq!(socket.read(&mut buf).unwrap_err().kind(), ErrorKind::WouldBlock, "nothing came yet");
    client.write_all(b"ping").unwrap();
    let event = turn_until(&mut ring, |e| e.readable);
    assert!(!event.hup);
    assert_eq!(socket.read(&mut buf).unwrap(), 4);
    assert_eq!(&buf[..4], b"ping");
    assert_eq!(socket.read(&mut buf).unwrap_err().kind(), ErrorKind::WouldBlock, "the inbox is empty again");
    assert_eq!(socket.write(b"pong").unwrap(), 4);
    spin(&mut ring, 1);
    let mut got = [0u8; 4];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    // Many requests on one connection: the multishot receive stays armed.
    for i in 0..50u32 {
        client.write_all(&i.to_be_bytes()).unwrap();
        let mut got = Vec::new();
        while got.len() < 4 {
            turn_until(&mut ring, |e| e.readable);
            drain(&mut socket, &mut got);
        }
        assert_eq!(got, i.to_be_bytes());
        socket.write_all(&got).unwrap();
        spin(&mut ring, 1);
        let mut back = [0u8; 4];
        client.read_exact(&mut back).unwrap();
        assert_eq!(back, i.to_be_bytes());
    }
}

#[test]
fn the_peer_closing_is_a_hangup_and_reads_end_with_zero() {
    let Some((mut ring, _poll)) = ring() else { return };
    let (mut socket, client) = pair(&ring);
    (&client).write_all(b"last words").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    while !drain(&mut socket, &mut got) {
        assert!(start.elapsed() < DEADLINE, "no end of input");
        turn_until(&mut ring, |e| e.readable);
    }
    assert_eq!(got, b"last words", "every byte before the end");
    assert_eq!(socket.read(&mut [0u8; 8]).unwrap(), 0, "the end stays the end");
}

#[test]
fn a_full_queue_says_wouldblock_and_its_send_makes_it_writable() {
    let Some((mut ring, _poll)) = ring() else { return };
    let (mut socket, client) = pair(&ring);
    let total = 4 * 1024 * 1024;
    let data = pattern(total);
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        (&client).take(total as u64).read_to_end(&mut got).unwrap();
        got
    });
    let (mut pos, mut blocked) = (0, 0);
    let start = Instant::now();
    while pos < total {
        assert!(start.elapsed() < DEADLINE, "the writes made no progress");
        match socket.write(&data[pos..]) {
            Ok(n) => {
                assert!(n <= SEND_CAP, "at most the queue's room");
                pos += n;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                blocked += 1;
                turn_until(&mut ring, |e| e.writable);
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
    spin(&mut ring, 3);
    let got = reader.join().unwrap();
    assert!(blocked > 0, "the queue filled up at least once");
    assert!(got == data, "every byte, in order");
}

#[test]
fn bytes_queued_when_the_socket_is_dropped_are_still_sent_then_it_closes() {
    let Some((mut ring, _poll)) = ring() else { return };
    let (mut socket, mut client) = pair(&ring);
    let data = pattern(200 * 1024);
    assert_eq!(socket.write(&data).unwrap(), data.len());
    drop(socket);
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        client.read_to_end(&mut got).map(|_| got)
    });
    let start = Instant::now();
    while !reader.is_finished() {
        assert!(start.elapsed() < DEADLINE, "the dropped socket never closed");
        spin(&mut ring, 1);
    }
    let got = reader.join().unwrap().expect("a clean end after the bytes");
    assert!(got == data, "every queued byte before the end ({} of {})", got.len(), data.len());
    // Its place in the table is free once the kernel is done with it.
    spin(&mut ring, 2);
    assert_eq!(ring.table.borrow().free.len(), 1);
}

#[test]
fn a_shutdown_waits_for_the_queued_bytes() {
    let Some((mut ring, _poll)) = ring() else { return };
    let (mut socket, mut client) = pair(&ring);
    let data = pattern(300 * 1024);
    let mut pos = 0;
    while pos < data.len() {
        match socket.write(&data[pos..]) {
            Ok(n) => pos += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                turn_until(&mut ring, |e| e.writable);
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
    SocketIo::shutdown(&socket, Shutdown::Write).unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        client.read_to_end(&mut got).map(|_| got)
    });
    let start = Instant::now();
    while !reader.is_finished() {
        assert!(start.elapsed() < DEADLINE, "no end after the bytes");
        spin(&mut ring, 1);
    }
    let got = reader.join().unwrap().unwrap();
    assert!(got == data, "every byte before the end ({} of {})", got.len(), data.len());
}

#[test]
fn a_reader_that_does_not_keep_up_stops_the_receive_and_loses_nothing() {
    let Some((mut ring, _poll)) = ring() else { return };
    let (mut socket, client) = pair(&ring);
    let total = 3 * 1024 * 1024;
    let data = pattern(total);
    let writer = std::thread::spawn(move || {
        let mut client = client;
        client.write_all(&pattern(total)).unwrap();
        client
    });
    // Not read: the inbox stops near its high mark, the rest waits in the kernel.
    let start = Instant::now();
    let unread = || ring_unread(&socket);
    while unread() < INBOX_HIGH {
        assert!(start.elapsed() < DEADLINE, "the inbox never filled");
        spin(&mut ring, 1);
    }
    spin(&mut ring, 20);
    let held = unread();
    assert!(held < INBOX_HIGH + usize::from(BUF_COUNT) * BUF_SIZE, "the receive went on past the mark: {held}");
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < total {
        assert!(start.elapsed() < DEADLINE, "the receive never resumed ({} of {total})", got.len());
        drain(&mut socket, &mut got);
        spin(&mut ring, 1);
    }
    drop(writer.join().unwrap());
    assert!(got == data, "every byte, in order");
}

fn ring_unread(socket: &RingSocket) -> usize {
    socket.table.borrow().socks[socket.key as usize].unread()
}

#[test]
fn kernels_are_compared_by_release() {
    assert!(kernel_at_least(2, 6).is_ok());
    let err = kernel_at_least(999, 0).unwrap_err();
    assert!(err.to_string().contains("older than 999.0"), "{err}");
}

#[test]
fn a_socket_dropped_while_it_waits_to_send_a_file_is_freed() {
    let Some((mut ring, _poll)) = ring() else { return };
    let (mut socket, client) = pair(&ring);
    let dir = std::env::temp_dir().join(format!("host-uring-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("file.bin");
    std::fs::write(&path, pattern(16 * 1024 * 1024)).unwrap();
    let file = File::open(&path).unwrap();
    // The client reads nothing: sendfile fills the socket, then waits for POLLOUT.
    let mut offset = 0u64;
    loop {
        match socket.send_file(&file, offset, 1 << 20) {
            Ok(n) => offset += n as u64,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("sendfile failed: {e}"),
        }
        assert!(offset < 16 << 20, "the socket took the whole file without a reader");
    }
    spin(&mut ring, 2);
    assert!(ring.table.borrow().socks[socket.key as usize].poll_out, "waiting for POLLOUT");
    drop(socket);
    let start = Instant::now();
    while ring.table.borrow().free.is_empty() {
        assert!(start.elapsed() < DEADLINE, "the dropped socket's place was never freed");
        spin(&mut ring, 1);
    }
    drop(client);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The export's part of the ring: a socket with bytes received and not read, and bytes written
/// and not sent (its peer reads nothing), leaves the ring. What it received before is read from
/// it; what the peer sends after stays in the socket (its receive was stopped, not left to take
/// bytes nobody would read); what it had not sent is given back, so that the peer gets every
/// byte once, in order, once the new owner sends them.
#[test]
fn a_socket_leaves_the_ring_with_what_it_received_and_had_not_sent() {
    let Some((mut ring, _poll)) = ring() else { return };
    let (mut socket, mut client) = pair(&ring);
    client.write_all(b"first").unwrap();
    turn_until(&mut ring, |e| e.readable);
    // Written until the kernel's buffers and the ring's queue are full, a send waiting.
    let data = pattern(16 << 20);
    let (mut written, mut stalled) = (0, 0);
    while stalled < 5 {
        let before = written;
        loop {
            match socket.write(&data[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("write failed: {e}"),
            }
        }
        assert!(written < data.len(), "the socket took 16 MiB without a reader");
        spin(&mut ring, 1);
        stalled = if written == before { stalled + 1 } else { 0 };
    }
    assert!(ring.table.borrow().socks[socket.key as usize].sending, "a send waits for room");

    socket.leave().unwrap();
    assert!(ring.table.borrow().socks[socket.key as usize].idle_in_kernel(), "nothing of it in flight");
    client.write_all(b"second").unwrap();
    spin(&mut ring, 3);
    let mut got = Vec::new();
    assert!(!drain(&mut socket, &mut got));
    assert_eq!(got, b"first", "what came before the leave, and only that");
    let unsent = socket.take_unsent();
    assert!(!unsent.is_empty(), "bytes were queued");
    assert!(socket.is_settled());

    let Stream::Tcp(stream) = socket.into_inner() else { panic!("a TCP stream") };
    let mut stream = TcpStream::from(std::os::fd::OwnedFd::from(stream));
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut second = [0u8; 6];
    stream.read_exact(&mut second).unwrap();
    assert_eq!(&second, b"second", "what came after the leave waits in the socket");
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; written];
        client.read_exact(&mut got).unwrap();
        (client, got)
    });
    stream.write_all(&unsent).unwrap();
    let (mut client, got) = reader.join().unwrap();
    assert!(got == data[..written], "every byte written once, in order ({written} bytes)");
    // Its new owner closes it: the peer sees the end (nothing of the ring holds it open).
    spin(&mut ring, 1);
    drop(stream);
    assert_eq!(client.read(&mut [0u8; 16]).unwrap(), 0, "the end of the stream");
}

/// A socket that left the ring and stays (the export did not happen) receives and sends again,
/// its unsent bytes first.
#[test]
fn a_socket_that_stays_after_leaving_goes_on() {
    let Some((mut ring, _poll)) = ring() else { return };
    let (mut socket, mut client) = pair(&ring);
    socket.write_all(b"one ").unwrap();
    socket.leave().unwrap();
    let unsent = socket.take_unsent();
    socket.stay(unsent);
    socket.write_all(b"two").unwrap();
    spin(&mut ring, 2);
    let mut got = [0u8; 7];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"one two");
    client.write_all(b"more").unwrap();
    turn_until(&mut ring, |e| e.readable);
    let mut got = Vec::new();
    drain(&mut socket, &mut got);
    assert_eq!(got, b"more");
}

/// A non-blocking listener on loopback whose accepts go through the ring.
fn ring_listener(ring: &mut Ring) -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    ring.listen_on(listener.as_raw_fd());
    ring.accepting(true);
    listener
}

/// Turns the ring until `count` accepted connections are queued (bounded by `DEADLINE`),
/// and takes them.
fn accepted(ring: &mut Ring, count: usize) -> Vec<OwnedFd> {
    let start = Instant::now();
    let mut events = Vec::new();
    let mut fds = Vec::new();
    while fds.len() < count {
        assert!(start.elapsed() < DEADLINE, "{} of {count} connections accepted in {DEADLINE:?}", fds.len());
        ring.turn(Some(Duration::from_millis(100)), 0, &mut events).unwrap();
        while let Some(next) = ring.take_accepted() {
            fds.push(next.expect("the accept succeeds"));
        }
    }
    fds
}

/// The connections waiting in the listener's own queue (nobody accepted them).
fn backlog(listener: &TcpListener) -> Vec<TcpStream> {
    let mut streams = Vec::new();
    while let Ok((stream, _)) = listener.accept() {
        streams.push(stream);
    }
    streams
}

#[test]
fn accepts_arrive_through_the_ring_non_blocking_and_close_on_exec() {
    let Some((mut ring, _poll)) = ring() else { return };
    let listener = ring_listener(&mut ring);
    spin(&mut ring, 1);
    let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(listener.local_addr().unwrap()).unwrap()).collect();
    let fds = accepted(&mut ring, 3);
    let mut peers: Vec<_> = fds
        .iter()
        .map(|fd| {
            let fl = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
            assert!(fl & libc::O_NONBLOCK != 0, "the accepted socket is non-blocking");
            let fd_flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert!(fd_flags & libc::FD_CLOEXEC != 0, "the accepted socket is close-on-exec");
            let stream = std::net::TcpStream::from(fd.try_clone().unwrap());
            stream.peer_addr().unwrap()
        })
        .collect();
    let mut locals: Vec<_> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
    peers.sort();
    locals.sort();
    assert_eq!(peers, locals, "each accepted descriptor is one of the clients' connections");
    // An accepted connection carries bytes on the ring like any.
    let server = std::net::TcpStream::from(fds.into_iter().next().unwrap());
    let peer = server.peer_addr().unwrap();
    let Stream::Ring(mut socket) = ring.adopt(Stream::Tcp(mio::net::TcpStream::from_std(server))) else {
        panic!("a TCP stream goes on the ring");
    };
    socket.arm(TOKEN);
    socket.write_all(b"hello").unwrap();
    spin(&mut ring, 2);
    let mut client = clients.into_iter().find(|c| c.local_addr().unwrap() == peer).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 5];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    assert!(backlog(&listener).is_empty());
}

#[test]
fn after_a_stop_connections_stay_in_the_listeners_queue_for_another() {
    let Some((mut ring, _poll)) = ring() else { return };
    let listener = ring_listener(&mut ring);
    spin(&mut ring, 1);
    let _first = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    assert_eq!(accepted(&mut ring, 1).len(), 1);
    ring.stop_accepting().unwrap();
    assert!(!ring.engine.borrow().accept.armed, "the accept has ended when the stop returns");
    let second = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    spin(&mut ring, 3);
    assert!(!ring.has_accepted(), "the ring accepted nothing after its stop");
    let waiting = backlog(&listener);
    assert_eq!(waiting.len(), 1, "the connection waits in the listener's queue");
    assert_eq!(waiting[0].peer_addr().unwrap(), second.local_addr().unwrap());
    // Accepting again re-arms it.
    ring.accepting(true);
    spin(&mut ring, 1);
    let _third = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    assert_eq!(accepted(&mut ring, 1).len(), 1);
}

#[test]
fn connections_completed_before_a_stop_are_kept_none_is_lost() {
    let Some((mut ring, _poll)) = ring() else { return };
    let listener = ring_listener(&mut ring);
    spin(&mut ring, 1);
    // Connected while the accept is armed, not reaped yet: each is either in the ring's queue
    // (completed before the cancel) or still in the listener's, never closed.
    let clients: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(listener.local_addr().unwrap()).unwrap()).collect();
    ring.stop_accepting().unwrap();
    assert!(!ring.engine.borrow().accept.armed, "the accept has ended when the stop returns");
    let mut kept = Vec::new();
    while let Some(next) = ring.take_accepted() {
        kept.push(std::net::TcpStream::from(next.unwrap()).peer_addr().unwrap());
    }
    kept.extend(backlog(&listener).iter().map(|s| s.peer_addr().unwrap()));
    kept.sort();
    let mut locals: Vec<_> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
    locals.sort();
    assert_eq!(kept, locals);
    spin(&mut ring, 2);
    assert!(!ring.has_accepted());
}

#[test]
fn accepting_off_cancels_at_the_next_turn_and_keeps_what_came_before() {
    let Some((mut ring, _poll)) = ring() else { return };
    let listener = ring_listener(&mut ring);
    spin(&mut ring, 1);
    let _a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    ring.accepting(false);
    // The turn that submits the cancel reaps what completed before it.
    let mut got = 0;
    let start = Instant::now();
    while got + backlog(&listener).len() < 1 {
        assert!(start.elapsed() < DEADLINE);
        spin(&mut ring, 1);
        while ring.take_accepted().is_some() {
            got += 1;
        }
    }
    let _b = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    spin(&mut ring, 3);
    assert!(!ring.has_accepted(), "nothing is accepted after the cancel");
    assert_eq!(backlog(&listener).len(), 1);
}
