use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use super::*;
use crate::config::{Limits, WorkerSpec};
use crate::ctl::messages::{ReportKind, ToMaster, ToWorker};

type MasterSide = Channel<UnixStream, ToWorker, ToMaster>;
type WorkerSide = Channel<UnixStream, ToMaster, ToWorker>;

fn spec() -> WorkerSpec {
    WorkerSpec {
        service: "web".into(),
        slot: 3,
        plugin_path: "/tmp/x/libhttp.so".into(),
        plugin_config: "root = \"/srv\"\n[nested]\na = 1\n".into(),
        limits: Limits::default(),
        worker_count: 4,
        user: Some("www-data".into()),
        group: None,
        drain_timeout_ms: 1500,
        heartbeat_ms: 1000,
        tls: None,
        access_log: false,
        cluster: None,
        io: crate::config::IoBackend::Uring,
        await_handover: true,
        handover_batches: true,
    }
}

fn hello() -> ToWorker {
    ToWorker::Hello { protocol: PROTOCOL, spec: Box::new(spec()) }
}

/// A connected master side and worker side, both non-blocking.
fn pair() -> (MasterSide, WorkerSide) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (Channel::new(a), Channel::new(b))
}

/// The bytes `msg` is sent as.
fn encoded(msg: &ToWorker) -> Vec<u8> {
    let (a, mut b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let mut ch: MasterSide = Channel::new(a);
    ch.send(msg).unwrap();
    drop(ch);
    let mut out = Vec::new();
    b.read_to_end(&mut out).unwrap();
    out
}

/// A raw frame with `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.push(0);
    out.extend_from_slice(payload);
    out
}

#[test]
fn every_message_round_trips() {
    let (mut master, mut worker) = pair();
    let to_worker = [
        hello(),
        ToWorker::Drain { timeout_ms: 5000 },
        ToWorker::Stop,
        ToWorker::ReloadHook,
        ToWorker::Report { id: 7, kind: ReportKind::Connections },
        ToWorker::Report { id: u64::MAX, kind: ReportKind::Status },
    ];
    for m in &to_worker {
        master.send(m).unwrap();
    }
    assert_eq!(worker.read(), to_worker.to_vec());
    assert_eq!(worker.peer_protocol, Some(PROTOCOL));
    let to_master = [
        ToMaster::Hello { protocol: PROTOCOL },
        ToMaster::Error("plugin: bad thing\nsecond line".into()),
        ToMaster::Ready,
        ToMaster::Report { id: 3, kind: ReportKind::Status, json: r#"{"a": [1, 2]}"#.into() },
    ];
    for m in &to_master {
        worker.send(m).unwrap();
    }
    assert_eq!(master.read(), to_master.to_vec());
    assert!(!master.closed && !worker.closed);
}

#[test]
fn a_frame_split_at_every_byte_is_read_whole() {
    let bytes = [encoded(&hello()), encoded(&ToWorker::Report { id: 9, kind: ReportKind::Status })].concat();
    for split in 0..bytes.len() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut worker: WorkerSide = Channel::new(b);
        (&a).write_all(&bytes[..split]).unwrap();
        let mut got = worker.read();
        (&a).write_all(&bytes[split..]).unwrap();
        got.extend(worker.read());
        assert_eq!(got, vec![hello(), ToWorker::Report { id: 9, kind: ReportKind::Status }], "split at {split}");
        assert!(!worker.closed);
    }
}

#[test]
fn two_frames_in_one_read() {
    let (a, b) = UnixStream::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    let mut worker: WorkerSide = Channel::new(b);
    (&a).write_all(&[encoded(&hello()), encoded(&ToWorker::Stop)].concat()).unwrap();
    assert_eq!(worker.read(), vec![hello(), ToWorker::Stop]);
}

#[test]
fn an_oversized_frame_is_refused_without_allocating_it() {
    let (a, b) = UnixStream::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    let mut worker: WorkerSide = Channel::new(b);
    let mut header = u32::MAX.to_le_bytes().to_vec();
    header.push(0);
    (&a).write_all(&header).unwrap();
    (&a).write_all(&[0; 1000]).unwrap();
    assert!(worker.read().is_empty());
    assert!(worker.closed);
    assert!(worker.error.as_deref().unwrap().contains("limit"), "{:?}", worker.error);
    assert!(worker.input.capacity() <= 2 * READ_CHUNK, "the announced length was not allocated");
    worker.shut_down();
    let mut rest = Vec::new();
    assert_eq!((&a).read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn a_message_over_the_limit_is_not_sent() {
    let (mut master, mut worker) = pair();
    worker = worker.with_limits(1024, MAX_OUTPUT);
    master = master.with_limits(1024, MAX_OUTPUT);
    master.send(&hello()).unwrap();
    worker.send(&ToMaster::Hello { protocol: PROTOCOL }).unwrap();
    let big = ToMaster::Report { id: 1, kind: ReportKind::Status, json: "x".repeat(2000) };
    let err = worker.send(&big).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(!worker.closed, "refusing one message does not break the channel");
    worker.send(&ToMaster::Ready).unwrap();
    assert_eq!(master.read(), vec![ToMaster::Hello { protocol: PROTOCOL }, ToMaster::Ready]);
}

#[test]
fn a_peer_that_closes_mid_frame_closes_the_channel() {
    let (a, b) = UnixStream::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    let mut worker: WorkerSide = Channel::new(b);
    let bytes = [encoded(&hello()), encoded(&ToWorker::Drain { timeout_ms: 1 })].concat();
    (&a).write_all(&bytes[..bytes.len() - 3]).unwrap();
    drop(a);
    assert_eq!(worker.read(), vec![hello()]);
    assert!(worker.closed);
    assert!(worker.error.as_deref().unwrap().contains("middle of a frame"), "{:?}", worker.error);
}

#[test]
fn a_clean_close_is_no_error() {
    let (master, mut worker) = pair();
    drop(master);
    assert!(worker.read().is_empty());
    assert!(worker.closed);
    assert_eq!(worker.error, None);
    assert_eq!(worker.recv_timeout(Duration::from_secs(5)).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
}

/// The first frame of a peer of version 99: variant 0, the version first, then anything.
#[derive(Serialize)]
enum FutureHello {
    Hello { protocol: u32, shape: Vec<String> },
}

#[test]
fn a_peer_of_another_version_is_refused() {
    let (a, b) = UnixStream::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    let mut worker: WorkerSide = Channel::new(b);
    let payload = postcard::to_stdvec(&FutureHello::Hello { protocol: 99, shape: vec!["new".into()] }).unwrap();
    (&a).write_all(&frame(&payload)).unwrap();
    let err = worker.recv_timeout(Duration::from_secs(5)).unwrap_err();
    assert_eq!(err.to_string(), format!("protocol mismatch: the peer speaks version 99, this side {PROTOCOL}"));
    assert!(worker.closed);

    // The same the other way: a worker of version 99 answering the master's hello.
    let (a, b) = UnixStream::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    let mut master: MasterSide = Channel::new(b);
    (&a).write_all(&frame(&payload)).unwrap();
    assert!(master.read().is_empty());
    assert_eq!(master.error, Some(format!("protocol mismatch: the peer speaks version 99, this side {PROTOCOL}")));

    // The master hears a worker's refusal before any hello, but nothing else.
    let (mut master, mut worker) = pair();
    worker.send(&ToMaster::Error("protocol mismatch".into())).unwrap();
    assert_eq!(master.read(), vec![ToMaster::Error("protocol mismatch".into())]);
    let (mut master, mut worker) = pair();
    worker.send(&ToMaster::Ready).unwrap();
    assert!(master.read().is_empty());
    assert!(master.error.as_deref().unwrap().contains("before its hello"), "{:?}", master.error);
}

#[test]
fn the_output_queue_of_a_peer_that_does_not_read_is_bounded() {
    let (master, worker) = pair();
    let mut worker = worker.with_limits(1 << 20, 4 << 20);
    worker.send(&ToMaster::Hello { protocol: PROTOCOL }).unwrap();
    let chunk = ToMaster::Report { id: 1, kind: ReportKind::Connections, json: "x".repeat(512 << 10) };
    let mut sent = 0;
    let err = loop {
        match worker.send(&chunk) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 1000, "the queue never filled");
    };
    assert!(err.to_string().contains("does not read"), "{err}");
    assert!(worker.closed);
    assert!(worker.error.is_some());
    assert!(!worker.pending(), "the queue was dropped");
    assert!(sent >= 8, "the queue held {sent} frames: the socket buffer plus at most 4 MiB");
    drop(master);
}

#[test]
fn a_large_message_leaves_as_the_peer_reads() {
    let (mut master, mut worker) = pair();
    master.send(&hello()).unwrap();
    worker.send(&ToMaster::Hello { protocol: PROTOCOL }).unwrap();
    let big = ToMaster::Report { id: 2, kind: ReportKind::Connections, json: "y".repeat(8 << 20) };
    worker.send(&big).unwrap();
    worker.send(&ToMaster::Ready).unwrap();
    assert!(worker.pending(), "8 MiB do not fit in a socket buffer");
    let mut got = Vec::new();
    for _ in 0..100_000 {
        got.extend(master.read());
        if worker.flush().unwrap() && got.len() == 3 {
            break;
        }
    }
    assert_eq!(got, vec![ToMaster::Hello { protocol: PROTOCOL }, big, ToMaster::Ready]);
}

#[test]
fn descriptors_travel_with_their_frame() {
    let (mut master, mut worker) = pair();
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    // A frame without descriptors, then one with: read in one go, each gets its own.
    master.send(&hello()).unwrap();
    master.send_with_fds(&ToWorker::Stop, vec![write_end]).unwrap();
    let mut got = worker.read_with_fds();
    assert_eq!(got.len(), 2);
    assert!(got[0].1.is_empty());
    let (msg, mut fds) = got.pop().unwrap();
    assert_eq!(msg, ToWorker::Stop);
    assert_eq!(fds.len(), 1);
    let fd = fds.pop().unwrap();
    let flags = nix::fcntl::fcntl(std::os::fd::AsRawFd::as_raw_fd(&fd), nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert_ne!(flags & nix::libc::FD_CLOEXEC, 0, "received descriptors are close-on-exec");
    let mut writer = std::fs::File::from(fd);
    writer.write_all(b"through the passed fd").unwrap();
    drop(writer);
    let mut text = String::new();
    std::fs::File::from(read_end).read_to_string(&mut text).unwrap();
    assert_eq!(text, "through the passed fd");
}

#[test]
fn descriptors_wait_for_the_end_of_a_split_frame() {
    let (mut master, mut worker) = pair();
    master.send(&hello()).unwrap();
    assert_eq!(worker.read(), vec![hello()]);
    let (_read_end, write_end) = nix::unistd::pipe().unwrap();
    // A frame larger than the socket buffer: its descriptor arrives with the first read.
    let big = ToWorker::Hello {
        protocol: PROTOCOL,
        spec: Box::new(WorkerSpec { plugin_config: "z".repeat(4 << 20), ..spec() }),
    };
    master.send_with_fds(&big, vec![write_end]).unwrap();
    assert!(master.pending());
    let mut got = Vec::new();
    for _ in 0..100_000 {
        let read = worker.read_with_fds();
        if got.is_empty() && read.is_empty() {
            assert!(worker.in_fds.len() <= 1, "the descriptor is held until the frame is whole");
        }
        got.extend(read);
        if master.flush().unwrap() && !got.is_empty() {
            break;
        }
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, big);
    assert_eq!(got[0].1.len(), 1);
}

// A worker that cannot start says why and exits; the master's next write to it fails (EPIPE),
// and what the worker said must still be read: a failed write does not end reading (the reason
// used to be lost now and then: "it exited with exit code 2" and no more).
#[test]
fn a_failed_write_does_not_lose_what_the_peer_said_before_it_left() {
    let (mut master, mut worker) = pair();
    master.send(&hello()).unwrap();
    let _ = worker.read();
    worker.send(&ToMaster::Hello { protocol: PROTOCOL }).unwrap();
    worker.send(&ToMaster::Error("the plugin refused to start".into())).unwrap();
    assert!(worker.flush().unwrap());
    drop(worker);
    assert!(master.send(&ToWorker::Stop).is_err() || master.flush().is_err(), "the peer is gone");
    let got = master.read();
    assert!(got.contains(&ToMaster::Error("the plugin refused to start".into())), "{got:?}");
    assert!(master.closed);
}

// A hand-over lends its connections' sockets: the frame leaves only when nothing is queued
// before it (its descriptors with its first bytes), the rest of a long frame is queued without
// them, and the caller's descriptor stays open.
#[test]
fn lent_descriptors_go_with_the_first_bytes_and_stay_the_callers() {
    let (mut master, mut worker) = pair();
    master.send(&hello()).unwrap();
    assert_eq!(worker.read(), vec![hello()]);
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    let big = ToWorker::Hello {
        protocol: PROTOCOL,
        spec: Box::new(WorkerSpec { plugin_config: "z".repeat(4 << 20), ..spec() }),
    };
    assert!(master.send_lending_fds(&big, &[write_end.as_fd()]).unwrap());
    assert!(master.pending(), "the rest of a 4 MiB frame waits in the queue");
    // Something is queued: the next frame is not sent (nor its descriptor lent) yet.
    assert!(!master.send_lending_fds(&ToWorker::Stop, &[write_end.as_fd()]).unwrap());
    let mut got = Vec::new();
    for _ in 0..100_000 {
        got.extend(worker.read_with_fds());
        if master.flush().unwrap() && !got.is_empty() {
            break;
        }
    }
    assert!(master.send_lending_fds(&ToWorker::Stop, &[]).unwrap());
    got.extend(worker.read_with_fds());
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, big);
    assert_eq!(got[1].0, ToWorker::Stop);
    let mut fds = std::mem::take(&mut got[0].1);
    assert_eq!(fds.len(), 1);
    std::fs::File::from(fds.pop().unwrap()).write_all(b"theirs ").unwrap();
    // Still the caller's: it writes too.
    std::fs::File::from(write_end).write_all(b"and mine").unwrap();
    let mut text = String::new();
    std::fs::File::from(read_end).read_to_string(&mut text).unwrap();
    assert_eq!(text, "theirs and mine");
}
