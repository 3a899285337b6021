//! The connection core without sockets: a fake socket (`fake_socket.rs`) and a recording plugin
//! drive the table and the dispatch as the loop does (readiness in, `settle` at the end of the
//! turn), and the tests check what the plugin heard and what reached the socket.

use std::cell::RefCell;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RString};
use mio::Poll;
use plugin_api::abi::{
    CallStatus, ConnError, ConnErrorCode, PluginExtension, RawFrame, RawHandover, RawHostRef, RawInputEnd, RawPlugin,
    RawPluginBox, RawPluginExt, RawPluginExt_TO, RawPlugin_TO,
};
use plugin_api::{ConnId, TimerId};

use super::core::{BadSession, Core, Ctx, ExportError, FileRange};
use super::dispatch;
use super::fake_socket::FakeSocket;
use super::phase::{ConnPhase, Exit, WorkerPhase};
use super::transport::{Stream, Transport};
use crate::config::Limits;

/// What the plugin heard, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Heard {
    Connect(ConnId),
    Message(ConnId, Vec<u8>),
    Close(ConnId),
    BufferFull(ConnId),
    BufferDrain(ConnId),
    Error(ConnId, ConnErrorCode),
    Drain(ConnId),
    InputEnd(ConnId),
    /// `on_publish`: the topic and the message's length.
    Published(Vec<u8>, usize),
    /// `on_publish_missed`: the connection and the message.
    Missed(ConnId, Vec<u8>),
}

/// How the plugin answers.
#[derive(Debug, Default)]
struct Script {
    /// Each message is answered with this many bytes (0: the message itself).
    reply_len: usize,
    /// Each message pauses receiving.
    pause_on_message: bool,
    /// `on_drain` closes with these last bytes.
    bye: Option<Vec<u8>>,
    /// The answer to `on_input_end`; None: a plugin without the event (older than 0.1.3).
    input_end: Option<RawInputEnd>,
    /// `on_publish` sends each message to these connections (a plugin that delivers topic
    /// messages itself, as resp's pattern subscriptions).
    relay: Vec<ConnId>,
    /// `handover_export_conn` declares that the connection hears this topic
    /// (`handover_hears`) and moves it when the host says yes.
    hears: Option<Vec<u8>>,
    /// `handover_adopt_conn` subscribes the worker to this topic and adopts.
    adopt_listens: Option<Vec<u8>>,
}

#[derive(Default)]
struct Shared {
    heard: Vec<Heard>,
    script: Script,
}

/// A line protocol: each `\n`-terminated line is a message.
struct LinePlugin(Rc<RefCell<Shared>>);

impl LinePlugin {
    fn hear(&self, what: Heard) -> CallStatus {
        self.0.borrow_mut().heard.push(what);
        CallStatus::Ok
    }
}

impl RawPlugin for LinePlugin {
    fn on_worker_start(&mut self, _: RawHostRef<'_>) -> RResult<(), RString> {
        RResult::ROk(())
    }
    fn on_worker_stop(&mut self, _: RawHostRef<'_>) -> CallStatus {
        CallStatus::Ok
    }
    fn on_worker_reload(&mut self, _: RawHostRef<'_>) -> CallStatus {
        CallStatus::Ok
    }
    fn on_connect(&mut self, _: RawHostRef<'_>, conn: ConnId) -> CallStatus {
        self.hear(Heard::Connect(conn))
    }
    fn input(&mut self, _: RawHostRef<'_>, _: ConnId, buf: RSlice<'_, u8>) -> RawFrame {
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => RawFrame::Complete(i as u64 + 1),
            None => RawFrame::NeedMore,
        }
    }
    fn on_message(&mut self, mut host: RawHostRef<'_>, conn: ConnId, msg: RSlice<'_, u8>) -> CallStatus {
        self.hear(Heard::Message(conn, msg.to_vec()));
        let (reply_len, pause) = {
            let s = &self.0.borrow().script;
            (s.reply_len, s.pause_on_message)
        };
        let reply = if reply_len == 0 { msg.to_vec() } else { vec![b'x'; reply_len] };
        host.send(conn, RSlice::from_slice(&reply));
        if pause {
            host.pause_recv(conn, true);
        }
        CallStatus::Ok
    }
    fn on_close(&mut self, _: RawHostRef<'_>, conn: ConnId) -> CallStatus {
        self.hear(Heard::Close(conn))
    }
    fn on_error(&mut self, _: RawHostRef<'_>, _: ConnId, _: ConnError) -> CallStatus {
        unreachable!("the host calls on_conn_error")
    }
    fn on_conn_error(&mut self, _: RawHostRef<'_>, conn: ConnId, err: ConnErrorCode) -> CallStatus {
        self.hear(Heard::Error(conn, err))
    }
    fn on_buffer_full(&mut self, _: RawHostRef<'_>, conn: ConnId) -> CallStatus {
        self.hear(Heard::BufferFull(conn))
    }
    fn on_buffer_drain(&mut self, _: RawHostRef<'_>, conn: ConnId) -> CallStatus {
        self.hear(Heard::BufferDrain(conn))
    }
    fn on_timer(&mut self, _: RawHostRef<'_>, _: TimerId, _: u64) -> CallStatus {
        CallStatus::Ok
    }
    fn on_drain(&mut self, mut host: RawHostRef<'_>, conn: ConnId) -> CallStatus {
        let bye = self.0.borrow().script.bye.clone();
        if let Some(bye) = bye {
            host.close(conn, RSlice::from_slice(&bye));
        }
        self.hear(Heard::Drain(conn))
    }
    fn extension(&mut self) -> PluginExtension<'_> {
        if self.0.borrow().script.input_end.is_none() {
            return PluginExtension::none();
        }
        PluginExtension::new(RawPluginExt_TO::from_ptr(self, TD_Opaque))
    }
}

impl RawPluginExt for LinePlugin {
    fn api_version(&self) -> abi_stable::std_types::RStr<'static> {
        abi_stable::std_types::RStr::from_str(env!("CARGO_PKG_VERSION"))
    }
    fn on_input_end(&mut self, _: RawHostRef<'_>, conn: ConnId) -> RawInputEnd {
        self.hear(Heard::InputEnd(conn));
        self.0.borrow().script.input_end.expect("asked only when the plugin has the event")
    }
    fn on_publish(&mut self, mut host: RawHostRef<'_>, topic: RSlice<'_, u8>, msg: RSlice<'_, u8>) -> CallStatus {
        let relay = self.0.borrow().script.relay.clone();
        for conn in relay {
            host.send(conn, msg);
        }
        self.hear(Heard::Published(topic.to_vec(), msg.len()))
    }
    fn on_publish_missed(
        &mut self,
        mut host: RawHostRef<'_>,
        conn: ConnId,
        _: RSlice<'_, u8>,
        msg: RSlice<'_, u8>,
    ) -> CallStatus {
        host.send(conn, msg);
        self.hear(Heard::Missed(conn, msg.to_vec()))
    }
    fn handover_export_conn(
        &mut self,
        mut host: RawHostRef<'_>,
        conn: ConnId,
        _: plugin_api::abi::RawStateSinkRef<'_>,
    ) -> RawHandover {
        let hears = self.0.borrow().script.hears.clone();
        match hears {
            Some(topic) if host.extension().ext.handover_hears(conn, RSlice::from_slice(&topic)) => RawHandover::MOVE,
            _ => RawHandover::DECLINE,
        }
    }
    fn handover_adopt_conn(&mut self, mut host: RawHostRef<'_>, _: ConnId, _: u32, _: RSlice<'_, u8>) -> RawHandover {
        let listens = self.0.borrow().script.adopt_listens.clone();
        if let Some(topic) = listens {
            host.extension().ext.subscribe(plugin_api::abi::WORKER_CONN, RSlice::from_slice(&topic));
        }
        RawHandover::MOVE
    }
}

/// A worker's core and plugin, driven by hand as the loop drives them.
struct Bench {
    core: Core,
    plugin: RawPluginBox,
    shared: Rc<RefCell<Shared>>,
    scratch: Vec<u8>,
    poll: Poll,
}

impl Bench {
    fn new(limits: Limits) -> Bench {
        let poll = Poll::new().unwrap();
        let core = Core::new(poll.registry().try_clone().unwrap(), "test".into(), 0, limits);
        let shared = Rc::new(RefCell::new(Shared::default()));
        let plugin = RawPlugin_TO::from_value(LinePlugin(Rc::clone(&shared)), TD_Opaque);
        Bench { core, plugin, shared, scratch: vec![0; 64 * 1024], poll }
    }

    /// The connections epoll says are readable now, read as the loop reads them.
    fn poll_readable(&mut self) -> usize {
        let mut events = mio::Events::with_capacity(64);
        self.poll.poll(&mut events, Some(std::time::Duration::ZERO)).unwrap();
        let indexes: Vec<usize> = events
            .iter()
            .filter(|e| e.is_readable() && e.token().0 >= super::core::CONN_TOKEN_BASE)
            .map(|e| e.token().0 - super::core::CONN_TOKEN_BASE)
            .collect();
        for &index in &indexes {
            if let Some(c) = self.core.by_index(index) {
                c.read.ready = true;
            }
            dispatch::read(&mut self.plugin, &mut self.core, &mut self.scratch, index, false);
        }
        self.settle();
        indexes.len()
    }

    fn script(&self) -> std::cell::RefMut<'_, Script> {
        std::cell::RefMut::map(self.shared.borrow_mut(), |s| &mut s.script)
    }

    /// What the plugin heard since the last call.
    fn heard(&self) -> Vec<Heard> {
        std::mem::take(&mut self.shared.borrow_mut().heard)
    }

    /// Accepts `socket` as the loop does (the plugin hears `on_connect`).
    fn accept(&mut self, stream: Stream) -> ConnId {
        let id = self.core.insert(stream).unwrap();
        dispatch::connect(&mut self.plugin, &mut self.core, id);
        self.settle();
        id
    }

    /// The socket of `id` is readable (`hup`: the peer hung up), then the end of the turn.
    fn readable(&mut self, id: ConnId, hup: bool) {
        if let Some(c) = self.core.by_index(id.index()) {
            c.read.ready = true;
        }
        dispatch::read(&mut self.plugin, &mut self.core, &mut self.scratch, id.index(), hup);
        self.settle();
    }

    /// The socket of `id` is writable, then the end of the turn.
    fn writable(&mut self, id: ConnId) {
        self.core.mark_dirty(id.index());
        self.settle();
    }

    fn settle(&mut self) {
        dispatch::settle(&mut self.plugin, &mut self.core, &mut self.scratch);
    }

    /// A call the plugin makes from outside a callback of this connection (a timer, say).
    fn host(&mut self) -> Ctx<'_> {
        Ctx { core: &mut self.core }
    }
}

fn limits() -> Limits {
    Limits { max_send_buffer: 100, ..Limits::default() }
}

#[test]
fn pipelined_answers_leave_in_one_write() {
    let mut b = Bench::new(limits());
    let sock = FakeSocket::with_room(1 << 20);
    let id = b.accept(Stream::Fake(sock.clone()));
    sock.peer_sends(b"one\ntwo\nthree\n");
    b.readable(id, false);
    let messages = [&b"one\n"[..], b"two\n", b"three\n"].map(|m| Heard::Message(id, m.to_vec()));
    assert_eq!(b.heard(), [vec![Heard::Connect(id)], messages.to_vec()].concat());
    assert_eq!(sock.written(), b"one\ntwo\nthree\n");
    assert_eq!(sock.0.borrow().writes, [14], "three answers, one write");
}

#[test]
fn a_full_send_buffer_holds_reading_until_it_drains() {
    let mut b = Bench::new(limits());
    b.script().reply_len = 150;
    // The peer reads nothing yet: the socket takes no byte.
    let sock = FakeSocket::with_room(0);
    let id = b.accept(Stream::Fake(sock.clone()));
    b.heard();
    sock.peer_sends(b"a\n");
    b.readable(id, false);
    assert_eq!(b.heard(), [Heard::Message(id, b"a\n".to_vec()), Heard::BufferFull(id)]);
    assert!(b.core.get(id).unwrap().hold.buffer_full);
    assert!(b.core.get(id).unwrap().sched.write_interest, "it waits for writability");
    assert!(!b.core.send(id, b"refused"), "a send into a full buffer is refused");
    b.settle();
    assert_eq!(b.heard(), [Heard::Error(id, ConnError::SendFailed.into())]);

    // What the peer sends meanwhile stays in the socket: reading is held.
    sock.peer_sends(b"b\n");
    b.readable(id, false);
    assert_eq!(b.heard(), []);
    assert_eq!(sock.0.borrow().incoming, b"b\n", "not read while the buffer is full");

    // The peer reads: the output drains, the plugin hears it, and reading resumes.
    sock.peer_reads(1000);
    b.writable(id);
    assert_eq!(
        b.heard(),
        [Heard::BufferDrain(id), Heard::Message(id, b"b\n".to_vec()), Heard::BufferFull(id), Heard::BufferDrain(id)]
    );
    assert_eq!(sock.written(), vec![b'x'; 300]);
    let c = b.core.get(id).unwrap();
    assert!(!c.hold.buffer_full && !c.sched.write_interest);
}

#[test]
fn a_paused_connection_keeps_its_input_until_it_resumes() {
    let mut b = Bench::new(limits());
    b.script().pause_on_message = true;
    let sock = FakeSocket::with_room(1 << 20);
    let id = b.accept(Stream::Fake(sock.clone()));
    b.heard();
    sock.peer_sends(b"a\nb\n");
    b.readable(id, false);
    assert_eq!(b.heard(), [Heard::Message(id, b"a\n".to_vec())]);
    assert_eq!(b.core.get(id).unwrap().input, b"b\n", "the second message waits, buffered");
    assert_eq!(b.core.get(id).unwrap().phase.name(true), "paused");

    sock.peer_sends(b"c\n");
    b.readable(id, false);
    assert_eq!(b.heard(), []);
    assert_eq!(sock.0.borrow().incoming, b"c\n", "a paused connection is not read");

    // Resumed: one message at a time, since each pauses again.
    plugin_api::abi::RawHost::pause_recv(&mut b.host(), id, false);
    b.settle();
    assert_eq!(b.heard(), [Heard::Message(id, b"b\n".to_vec())]);
    plugin_api::abi::RawHost::pause_recv(&mut b.host(), id, false);
    b.settle();
    assert_eq!(b.heard(), [Heard::Message(id, b"c\n".to_vec())]);
    assert_eq!(sock.written(), b"a\nb\nc\n");
}

#[test]
fn a_peer_that_half_closes_gets_its_answers_then_the_close() {
    let mut b = Bench::new(limits());
    let sock = FakeSocket::with_room(1 << 20);
    let id = b.accept(Stream::Fake(sock.clone()));
    b.heard();
    sock.peer_sends(b"last\nhalf");
    sock.0.borrow_mut().peer_closed = true;
    b.readable(id, true);
    assert_eq!(b.heard(), [Heard::Message(id, b"last\n".to_vec()), Heard::Close(id)]);
    assert_eq!(sock.written(), b"last\n", "what it sent before closing is answered");
    assert!(b.core.get(id).is_none(), "nothing to linger for: the peer closed first");
    assert_eq!(b.core.stats.closed, 1);
}

#[test]
fn a_plugin_that_answers_close_at_end_of_input_closes_after_the_flush() {
    let mut b = Bench::new(limits());
    b.script().input_end = Some(RawInputEnd::CLOSE);
    let sock = FakeSocket::with_room(1 << 20);
    let id = b.accept(Stream::Fake(sock.clone()));
    b.heard();
    sock.peer_sends(b"last\n");
    sock.0.borrow_mut().peer_closed = true;
    b.readable(id, true);
    assert_eq!(b.heard(), [Heard::Message(id, b"last\n".to_vec()), Heard::InputEnd(id), Heard::Close(id)]);
    assert_eq!(sock.written(), b"last\n");
    assert!(b.core.get(id).is_none());
}

#[test]
fn a_connection_kept_open_at_end_of_input_takes_a_later_answer_until_the_plugin_closes() {
    let mut b = Bench::new(limits());
    b.script().input_end = Some(RawInputEnd::KEEP_OPEN);
    let sock = FakeSocket::with_room(1 << 20);
    let id = b.accept(Stream::Fake(sock.clone()));
    b.heard();
    sock.peer_sends(b"ask\nhalf");
    sock.0.borrow_mut().peer_closed = true;
    b.readable(id, true);
    assert_eq!(b.heard(), [Heard::Message(id, b"ask\n".to_vec()), Heard::InputEnd(id)]);
    let c = b.core.get(id).expect("kept open");
    assert_eq!(c.phase, ConnPhase::Open);
    assert!(c.read.eof && !c.read.ready);
    assert!(c.input.is_empty() && c.message_started_ms.is_none(), "the partial message is dropped");

    // Another readiness (a writable edge still says "read closed"): not heard twice.
    b.readable(id, true);
    assert_eq!(b.heard(), []);

    // The answer comes later (an upstream's, say): it is written, the connection stays.
    assert!(b.core.send(id, b"later\n"));
    b.settle();
    assert_eq!(sock.written(), b"ask\nlater\n");
    assert!(b.core.get(id).is_some());

    // The plugin closes: after the flush it is gone (nothing to linger for).
    plugin_api::abi::RawHost::close(&mut b.host(), id, RSlice::from_slice(b"bye\n"));
    b.settle();
    assert_eq!(b.heard(), [Heard::Close(id)]);
    assert_eq!(sock.written(), b"ask\nlater\nbye\n");
    assert!(b.core.get(id).is_none());
}

#[test]
fn a_drain_lets_the_plugin_say_goodbye_then_lingers_until_the_peer_closes() {
    let mut b = Bench::new(limits());
    b.script().bye = Some(b"bye\n".to_vec());
    let sock = FakeSocket::with_room(1 << 20);
    let id = b.accept(Stream::Fake(sock.clone()));
    b.heard();

    assert!(b.core.phase.drain(5000));
    dispatch::drain(&mut b.plugin, &mut b.core, id);
    b.settle();
    assert_eq!(b.heard(), [Heard::Drain(id), Heard::Close(id)]);
    assert_eq!(sock.written(), b"bye\n");
    assert!(sock.0.borrow().shut_write, "our side is shut down after the last bytes");
    let lingering = b.core.get(id).unwrap().phase;
    assert!(matches!(lingering, ConnPhase::Lingering { .. }), "{lingering:?}");
    assert_eq!(b.core.open_count(), 0, "a lingering connection does not hold up the drain");
    assert_eq!(b.core.phase.after_turn(|| b.core.open_count() == 0, 0), Some(Exit::Drained));

    // What the client still sends is read and dropped; its close ends the connection, and the
    // plugin hears no second close.
    sock.peer_sends(b"late\n");
    sock.0.borrow_mut().peer_closed = true;
    b.readable(id, true);
    assert_eq!(b.heard(), []);
    assert!(b.core.get(id).is_none());
}

#[test]
fn the_worker_phase_is_what_the_plugin_sees() {
    let mut b = Bench::new(limits());
    assert!(!plugin_api::abi::RawHost::is_draining(&b.host()));
    b.core.phase.drain(10);
    assert!(plugin_api::abi::RawHost::is_draining(&b.host()));
    b.core.phase.stop(Exit::Stopped);
    assert!(plugin_api::abi::RawHost::is_draining(&b.host()), "a drain that is cut short still says so");
    assert!(matches!(b.core.phase, WorkerPhase::Exiting { exit: Exit::Stopped, .. }));
}

/// A file of `len` known bytes, and its descriptor kept open.
fn file_of(len: usize) -> (std::fs::File, Vec<u8>) {
    let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let path = std::env::temp_dir().join(format!("host-conn-test-{}-{len}", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    (file, bytes)
}

#[test]
fn an_exported_connection_comes_back_whole() {
    let mut b = Bench::new(Limits { max_send_buffer: 1 << 20, ..Limits::default() });
    b.core.now_ms = 10_000;
    let (ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    // (A bug must fail the test, not hang it.)
    peer.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let id = b.accept(Stream::Unix(mio::net::UnixStream::from_std(ours)));
    b.heard();

    // A connection in the middle of things: half a message buffered, the next one announced
    // longer, output and a file range queued and not written, paused, idle for a while.
    let (file, file_bytes) = file_of(3000);
    {
        let c = b.core.get_mut(id).unwrap();
        c.input = b"partial".to_vec();
        c.expect = Some(12);
        c.message_started_ms = Some(9_000);
        c.hold.by_plugin = true;
        c.bytes_in = 7;
    }
    assert!(b.core.send(id, b"head;"));
    assert_eq!(b.core.send_file(id, file.as_raw_fd(), 1000, 500), Ok(()));
    assert!(b.core.send(id, b";tail"));
    b.core.now_ms = 12_000;
    let before = b.core.snapshot(id).unwrap();
    assert_eq!(before.idle_ms, 2_000);
    assert_eq!(before.message_age_ms, Some(3_000));

    let exported = b.core.export(id).unwrap();
    assert!(b.core.get(id).is_none(), "out of the table");
    assert_eq!(b.core.len(), 0);
    assert_eq!(b.core.stats.closed, 0, "an export is not a close");
    assert_eq!(b.heard(), [], "the plugin hears nothing of it");

    // Into another worker, whose clock reads otherwise: ages are kept, not instants.
    let mut other = Bench::new(Limits { max_send_buffer: 1 << 20, ..Limits::default() });
    other.core.now_ms = 500_000;
    let new_id = other.core.import(exported).unwrap();
    assert_eq!(other.core.snapshot(new_id).unwrap(), before, "the same connection, state and all");
    let c = other.core.get(new_id).unwrap();
    assert_eq!(c.last_active_ms, 498_000);
    assert_eq!(c.phase, ConnPhase::Open);

    // Its socket is the same: the queued output and the file range reach the peer, in order.
    other.settle();
    assert_eq!(other.heard(), [], "paused: the buffered input waits");
    let mut got = vec![0; 5 + 500 + 5];
    std::io::Read::read_exact(&mut peer, &mut got).unwrap();
    assert_eq!(&got[..5], b"head;");
    assert_eq!(&got[5..505], &file_bytes[1000..1500]);
    assert_eq!(&got[505..], b";tail");

    // And what the peer sends completes the message that was half there (epoll announces it;
    // paused, it is read once resumed).
    peer.write_all(b"-msg\n").unwrap();
    other.poll_readable();
    assert_eq!(other.heard(), [], "paused");
    plugin_api::abi::RawHost::pause_recv(&mut other.host(), new_id, false);
    other.settle();
    assert_eq!(other.heard(), [Heard::Message(new_id, b"partial-msg\n".to_vec())]);
    let mut echo = [0; 12];
    std::io::Read::read_exact(&mut peer, &mut echo).unwrap();
    assert_eq!(&echo, b"partial-msg\n");
}

// An imported socket is not read on the chance that something came (10,000 reads in a
// hand-over): registering it announces the bytes its peer sent while no worker watched it.
#[test]
fn bytes_sent_while_no_one_watched_are_announced_by_the_import() {
    let mut b = Bench::new(limits());
    let (ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let id = b.accept(Stream::Unix(mio::net::UnixStream::from_std(ours)));
    b.heard();
    let exported = b.core.export(id).unwrap();
    peer.write_all(b"meanwhile\n").unwrap();

    let mut other = Bench::new(limits());
    let new_id = other.core.import(exported).unwrap();
    assert!(!other.core.get(new_id).unwrap().read.ready, "not read on the chance");
    other.settle();
    assert_eq!(other.heard(), []);
    assert_eq!(other.poll_readable(), 1, "the registration announced it");
    assert_eq!(other.heard(), [Heard::Message(new_id, b"meanwhile\n".to_vec())]);
    let mut echo = [0; 10];
    std::io::Read::read_exact(&mut peer, &mut echo).unwrap();
    assert_eq!(&echo, b"meanwhile\n");
}

#[test]
fn a_connection_that_cannot_move_stays_where_it_is() {
    let mut b = Bench::new(limits());
    let id = b.core.reserve_id();
    b.core.place(id, Transport::plain(Stream::Fake(FakeSocket::default())), Some(1000)).unwrap();
    assert_eq!(b.core.export(id).unwrap_err(), ExportError::Phase(ConnPhase::Connecting { until_ms: 1000 }));
    assert!(b.core.get(id).is_some());

    let session = b.core.reserve_id();
    let peer = "127.0.0.1:9".parse().unwrap();
    b.core.place(session, Transport::plain(Stream::Datagram(peer)), None).unwrap();
    assert_eq!(b.core.export(session).unwrap_err(), ExportError::Datagram);
    let never_placed = b.core.reserve_id();
    assert_eq!(b.core.export(never_placed).unwrap_err(), ExportError::NotFound);
}

/// What the fake socket's peer has not read yet, taken.
fn take_written(sock: &FakeSocket) -> Vec<u8> {
    std::mem::take(&mut sock.0.borrow_mut().written)
}

/// The client reads what the server wrote: its plaintext, and whether the server closed cleanly.
fn client_hears(client: &mut rustls::ClientConnection, sock: &FakeSocket) -> (Vec<u8>, bool) {
    let wire = take_written(sock);
    let mut rd = &wire[..];
    let mut got = Vec::new();
    let mut closed = false;
    loop {
        if !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
        }
        let io = client.process_new_packets().expect("the client accepts what the server sent");
        let mut buf = vec![0u8; io.plaintext_bytes_to_read()];
        std::io::Read::read_exact(&mut client.reader(), &mut buf).unwrap();
        got.extend_from_slice(&buf);
        closed |= io.peer_has_closed();
        if rd.is_empty() {
            return (got, closed);
        }
    }
}

fn client_says(client: &mut rustls::ClientConnection, data: &[u8]) -> Vec<u8> {
    client.writer().write_all(data).unwrap();
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).unwrap();
    }
    wire
}

#[test]
fn a_tls_connection_moves_to_another_worker_through_bytes() {
    use super::core::ExportedConn;
    use super::transport::TlsSession;
    use crate::tls::move_tests::{certs, client};
    use crate::tls::moved::MovedTls;

    for suite in [
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ] {
        let certs = certs();
        let mut b = Bench::new(Limits { max_send_buffer: 1 << 20, ..Limits::default() });
        b.core.tls = Some(crate::tls::server_config(&certs.spec).unwrap());
        let sock = FakeSocket::with_room(1 << 20);
        let id = b.core.insert(Stream::Fake(sock.clone())).unwrap();
        let mut client = client(&certs, suite);

        // The handshake, as the loop drives it; then a line each way.
        while client.is_handshaking() {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            sock.peer_sends(&wire);
            b.readable(id, false);
            client_hears(&mut client, &sock);
        }
        sock.peer_sends(&client_says(&mut client, b"hi\n"));
        b.readable(id, false);
        assert_eq!(b.heard(), [Heard::Connect(id), Heard::Message(id, b"hi\n".to_vec())], "{suite:?}");
        assert_eq!(client_hears(&mut client, &sock).0, b"hi\n");

        // Mid-stream: half a line buffered in the connection, the next record half received,
        // and an answer sealed that the full socket did not take.
        sock.0.borrow_mut().room = 0;
        sock.peer_sends(&client_says(&mut client, b"one\ntw"));
        let second = client_says(&mut client, b"o\n");
        sock.peer_sends(&second[..9]);
        b.readable(id, false);
        assert_eq!(b.heard(), [Heard::Message(id, b"one\n".to_vec())]);
        assert!(b.core.get(id).unwrap().stream.wants_write(), "the answer waits as records");

        // Out of this worker; its TLS becomes bytes, and the bytes a connection in another.
        let ExportedConn { socket, tls, files, snapshot } = b.core.export(id).unwrap();
        assert_eq!(snapshot.input, b"tw");
        assert_eq!(snapshot.server_name.as_deref(), Some("localhost"));
        let bytes = tls.unwrap().into_moved().unwrap().encode();
        let tls = TlsSession::from_moved(MovedTls::decode(&bytes).unwrap()).unwrap();

        let mut other = Bench::new(Limits { max_send_buffer: 1 << 20, ..Limits::default() });
        let new_id = other.core.import(ExportedConn { socket, tls: Some(tls), files, snapshot }).unwrap();
        let c = other.core.get(new_id).unwrap();
        assert!(c.stream.is_moved_tls());
        assert_eq!(c.stream.server_name(), Some("localhost"));
        assert_eq!(c.stream.alpn_protocol(), Some(&b"moving/1"[..]));

        // The socket takes bytes again: the answer sealed before the move arrives, then the rest of
        // the line completes and is answered by the new worker.
        sock.peer_reads(1 << 20);
        other.writable(new_id);
        assert_eq!(client_hears(&mut client, &sock).0, b"one\n", "{suite:?}");
        sock.peer_sends(&second[9..]);
        other.readable(new_id, false);
        assert_eq!(other.heard(), [Heard::Message(new_id, b"two\n".to_vec())]);
        assert_eq!(client_hears(&mut client, &sock).0, b"two\n");

        // A line of many records each way, byte-exact.
        let mut long: Vec<u8> = (0..60_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        long.push(b'\n');
        sock.peer_sends(&client_says(&mut client, &long));
        other.readable(new_id, false);
        assert_eq!(other.heard(), [Heard::Message(new_id, long.clone())]);
        assert_eq!(client_hears(&mut client, &sock).0, long);

        // A file range goes out as records too (read a record's worth at a time).
        let (file, file_bytes) = file_of(40_000);
        assert_eq!(other.core.send_file(new_id, file.as_raw_fd(), 1000, 35_000), Ok(()));
        other.settle();
        assert!(client_hears(&mut client, &sock).0 == file_bytes[1000..36_000], "the file range, byte-exact");

        // The new worker closes with close_notify; the client's own ends the lingering.
        other.core.close_after_flush(new_id);
        other.settle();
        assert_eq!(other.heard(), [Heard::Close(new_id)]);
        assert_eq!(client_hears(&mut client, &sock), (Vec::new(), true), "{suite:?}");
        assert!(sock.0.borrow().shut_write);
        client.send_close_notify();
        sock.peer_sends(&client_says(&mut client, b""));
        other.readable(new_id, false);
        assert!(other.core.get(new_id).is_none(), "closed at the client's close_notify");
    }
}

#[test]
fn a_tls_connection_still_handshaking_stays_where_it_is() {
    let certs = crate::tls::move_tests::certs();
    let mut b = Bench::new(limits());
    b.core.tls = Some(crate::tls::server_config(&certs.spec).unwrap());
    let id = b.core.insert(Stream::Fake(FakeSocket::with_room(1 << 20))).unwrap();
    assert_eq!(b.core.export(id).unwrap_err(), ExportError::Phase(ConnPhase::Handshaking));
    assert!(b.core.get(id).is_some());
}

#[test]
fn plaintext_rustls_still_holds_moves_as_the_connection_input() {
    use super::core::ExportedConn;
    use super::transport::TlsSession;
    use crate::tls::move_tests::{certs, client};
    use crate::tls::moved::MovedTls;

    let certs = certs();
    let mut b = Bench::new(Limits { max_send_buffer: 1 << 20, ..Limits::default() });
    b.core.tls = Some(crate::tls::server_config(&certs.spec).unwrap());
    let sock = FakeSocket::with_room(1 << 20);
    let id = b.core.insert(Stream::Fake(sock.clone())).unwrap();
    let mut client = client(&certs, rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384);
    while client.is_handshaking() {
        sock.peer_sends(&client_says(&mut client, b""));
        b.readable(id, false);
        client_hears(&mut client, &sock);
    }
    // The loop reads 16 bytes at a time and the plugin pauses at the first line: rustls is left
    // holding the plaintext of the records it opened.
    b.scratch = vec![0; 16];
    b.script().pause_on_message = true;
    let mut long: Vec<u8> = (0..5000u32).map(|i| b'a' + (i % 26) as u8).collect();
    long.push(b'\n');
    let mut sent = b"x\n".to_vec();
    sent.extend_from_slice(&long);
    sock.peer_sends(&client_says(&mut client, &sent));
    b.readable(id, false);
    assert_eq!(b.heard(), [Heard::Connect(id), Heard::Message(id, b"x\n".to_vec())]);

    let ExportedConn { socket, tls, files, snapshot } = b.core.export(id).unwrap();
    assert!(
        snapshot.input == long,
        "what rustls held is in the input ({} bytes of {})",
        snapshot.input.len(),
        long.len()
    );
    let state = MovedTls::decode(&tls.unwrap().into_moved().unwrap().encode()).unwrap();
    let tls = TlsSession::from_moved(state).unwrap();
    let mut other = Bench::new(Limits { max_send_buffer: 1 << 20, ..Limits::default() });
    let new_id = other.core.import(ExportedConn { socket, tls: Some(tls), files, snapshot }).unwrap();
    plugin_api::abi::RawHost::pause_recv(&mut other.host(), new_id, false);
    other.settle();
    assert!(other.heard() == [Heard::Message(new_id, long.clone())]);
    let mut expect = b"x\n".to_vec();
    expect.extend_from_slice(&long);
    assert!(client_hears(&mut client, &sock).0 == expect, "the answers, byte-exact");
}

// A hand-over that fails gives the old worker its connection back under the same id (its plugin
// knows it by that id), reading what arrived meanwhile; the id is not reused while it is held.
#[test]
fn a_held_connection_comes_back_under_its_id() {
    let mut b = Bench::new(Limits { max_send_buffer: 1 << 20, ..Limits::default() });
    let (ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let id = b.accept(Stream::Unix(mio::net::UnixStream::from_std(ours)));
    peer.write_all(b"hal").unwrap();
    b.readable(id, false);
    b.heard();
    assert_eq!(b.core.movable(id), Ok(()));

    let held = b.core.hold(id).unwrap();
    assert!(b.core.get(id).is_none(), "out of the table");
    let other = b.core.reserve_id();
    assert_ne!(other.index(), id.index(), "a held id is not handed out again");
    b.core.release_id(other);

    // Meanwhile the peer finishes its line: nobody watches the socket.
    peer.write_all(b"f\n").unwrap();
    assert_eq!(b.core.restore(id, held).unwrap(), id);
    b.settle();
    assert_eq!(b.heard(), [], "not read on the chance");
    assert_eq!(b.poll_readable(), 1, "its registration announced what came");
    assert_eq!(b.heard(), [Heard::Message(id, b"half\n".to_vec())], "the half line completed");
    let mut echo = [0; 5];
    std::io::Read::read_exact(&mut peer, &mut echo).unwrap();
    assert_eq!(&echo, b"half\n");

    // Moved for good: the id is free again, and the socket is the other worker's (a copy here
    // closes nothing: no shutdown).
    let held = b.core.hold(id).unwrap();
    let Some(Ok((_, copy))) = held.socket.dup() else { panic!("a real socket") };
    drop(held);
    b.core.release(id);
    assert_eq!(b.core.reserve_id().index(), id.index());
    let mut copy = std::os::unix::net::UnixStream::from(copy);
    copy.write_all(b"still open\n").unwrap();
    let mut got = [0; 11];
    std::io::Read::read_exact(&mut peer, &mut got).unwrap();
    assert_eq!(&got, b"still open\n");
}

// What cannot move stays, and says why (an outbound connection moves only when carried).
#[test]
fn what_cannot_move_says_why() {
    use super::core::Stay;
    let mut b = Bench::new(limits());
    let connecting = b.core.reserve_id();
    b.core.place(connecting, Transport::plain(Stream::Fake(FakeSocket::default())), Some(1000)).unwrap();
    assert_eq!(b.core.movable(connecting), Err(Stay::NotOpen));
    let session = b.core.reserve_id();
    b.core.place(session, Transport::plain(Stream::Datagram("127.0.0.1:9".parse().unwrap())), None).unwrap();
    // A UDP session moves as a session (`Core::hold_session`), beside the connections.
    assert_eq!(b.core.movable(session), Ok(()));
    let open = b.accept(Stream::Fake(FakeSocket::default()));
    assert_eq!(b.core.movable(open), Ok(()));
    b.core.get_mut(open).unwrap().origin = super::core::Origin::Outbound;
    assert_eq!(b.core.movable(open), Err(Stay::Outbound));
    b.core.close_after_flush(open);
    assert_eq!(b.core.movable(open), Err(Stay::NotOpen));
}

// An outbound connection moves only when carried during an export: open and outbound, named
// once; never an accepted or a connecting one, never outside an export. The adopter's lookup
// answers the old id's new one, and None for one that did not come.
#[test]
fn only_an_open_outbound_connection_is_carried_during_an_export() {
    use plugin_api::abi::RawHostExt;
    let mut b = Bench::new(limits());
    let accepted = b.accept(Stream::Fake(FakeSocket::default()));
    let up = b.accept(Stream::Fake(FakeSocket::default()));
    b.core.get_mut(up).unwrap().origin = super::core::Origin::Outbound;
    let connecting = b.core.reserve_id();
    b.core.place(connecting, Transport::plain(Stream::Fake(FakeSocket::default())), Some(1000)).unwrap();
    b.core.get_mut(connecting).unwrap().origin = super::core::Origin::Outbound;
    assert!(!b.core.carry_outbound(up), "outside an export nothing is carried");
    b.core.carry.exporting = Some(Vec::new());
    assert!(b.host().handover_carry(up));
    assert!(b.host().handover_carry(up), "named twice, carried once");
    assert!(!b.host().handover_carry(accepted), "an accepted connection is offered, not carried");
    assert!(!b.host().handover_carry(connecting), "still connecting: it stays");
    assert!(!b.host().handover_carry(ConnId(u64::MAX - 1)), "no such connection");
    assert_eq!(b.core.carry.exporting.take(), Some(vec![up]));
    // It comes out whole, outbound still, and goes in under a new id the lookup gives.
    let exported = b.core.hold(up).unwrap();
    let mut other = Bench::new(limits());
    let moved = other.core.import(exported).unwrap();
    assert!(other.core.is_outbound(moved));
    other.core.carry.adopted.insert(up.0, moved);
    assert_eq!(other.host().handover_carried(up).into_option(), Some(moved));
    assert_eq!(other.host().handover_carried(accepted).into_option(), None);
}

// Topics: a publish is written to each open subscriber's queue (the worker itself hears it as
// `on_publish`, after the call); a subscriber at its send buffer misses it, counted; the
// subscriptions move with an exported connection and end with a closed one.
#[test]
fn a_publish_reaches_every_subscriber_with_room_and_the_worker_itself() {
    use plugin_api::abi::WORKER_CONN;
    let mut b = Bench::new(limits());
    b.script().input_end = Some(RawInputEnd::CLOSE); // a plugin with the extension's events
    let fast = FakeSocket::with_room(1 << 20);
    let slow = FakeSocket::with_room(0);
    let (f, s) = (b.accept(Stream::Fake(fast.clone())), b.accept(Stream::Fake(slow.clone())));
    b.heard();
    for conn in [f, s, WORKER_CONN] {
        assert_eq!(b.core.subscribe(conn, b"t"), 1);
    }
    assert_eq!(b.core.subscribe(f, b"t"), 0, "already");
    assert_eq!(b.core.subscribe(ConnId::new(99, 1), b"t"), plugin_api::abi::TopicStatus::NO_CONNECTION.0 as i64);
    let msg = [b'x'; 60];
    for round in 0..3 {
        assert_eq!(b.core.publish(b"t", &msg), if round < 2 { 2 } else { 1 }, "round {round}");
        b.settle();
    }
    assert_eq!(fast.written(), [b'x'; 180]);
    assert_eq!(b.core.get(s).unwrap().pending_output(), 120, "two copies queued, the third dropped");
    assert_eq!((b.core.topics.stats.delivered, b.core.topics.stats.dropped_slow), (5, 1));
    assert_eq!(b.heard(), [Heard::BufferFull(s)]);
    dispatch::published(&mut b.plugin, &mut b.core);
    assert_eq!(b.heard(), vec![Heard::Published(b"t".to_vec(), 60); 3]);

    // A connection the plugin closed gets nothing more.
    plugin_api::abi::RawHost::close(&mut b.host(), s, RSlice::from_slice(&[]));
    assert_eq!(b.core.publish(b"t", &msg), 1);

    // Exported: out of the topic here, in it where it is imported.
    let exported = b.core.export(f).unwrap();
    assert_eq!(exported.snapshot.topics, [b"t".to_vec()]);
    assert_eq!(b.core.topics.conn_count(b"t"), 1, "the closing one only");
    let mut other = Bench::new(limits());
    let moved = other.core.import(exported).unwrap();
    assert_eq!(other.core.topics.conn_count(b"t"), 1);
    assert_eq!(other.core.publish(b"t", b"after the move"), 1);
    let _ = moved;

    // Closed: its subscriptions end.
    dispatch::close_now(&mut b.plugin, &mut b.core, s.index());
    assert_eq!(b.core.topics.conn_count(b"t"), 0);
    assert_eq!(b.core.topics.subscription_count(), 1, "the worker's own is left");
}

// The hand-over's seam for topics (`worker::topic_seam`): a subscribed connection moves while
// publishers P and Q reach the two workers at their own pace. The old worker wrote it P up to 3
// (and read P's 4th, on another topic) and Q up to 1; the new one had read Q's 2nd (written at
// the import) but only P's first two: P's 3rd still comes to it (skipped: the old worker wrote
// it), then P's 5th (written). Each message once, in order.
#[test]
fn a_moved_subscriber_hears_each_topic_message_once() {
    const P: u64 = 77;
    const Q: u64 = 78;
    let mut old = Bench::new(limits());
    let (ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let id = old.accept(Stream::Unix(mio::net::UnixStream::from_std(ours)));
    assert_eq!(old.core.subscribe(id, b"red"), 1);
    for n in 1..=3 {
        old.core.deliver_published(Some((P, n)), b"red", format!("P{n};").as_bytes());
    }
    old.core.deliver_published(Some((P, 4)), b"blue", b"not its topic;");
    old.core.deliver_published(Some((Q, 1)), b"red", b"Q1;");
    let exported = old.core.export(id).unwrap();
    let mut marks = exported.snapshot.topic_marks.clone();
    marks.sort();
    assert_eq!(marks, [(P, 4), (Q, 1)]);

    let mut new = Bench::new(limits());
    for (from, msg) in [((P, 1), "P1;"), ((P, 2), "P2;"), ((Q, 1), "Q1;"), ((Q, 2), "Q2;")] {
        new.core.deliver_published(Some(from), b"red", msg.as_bytes());
    }
    let id = new.core.import(exported).unwrap();
    assert_eq!(new.core.topics.stats.seam_replayed, 1, "Q2");
    new.core.deliver_published(Some((P, 3)), b"red", b"P3;");
    new.core.deliver_published(Some((P, 4)), b"blue", b"not its topic;");
    assert!(new.core.topics.seam_marks.is_empty(), "read past the marks: nothing more to skip");
    new.core.deliver_published(Some((P, 5)), b"red", b"P5;");
    new.core.deliver_published(Some((Q, 3)), b"red", b"Q3;");
    new.settle();
    assert!(new.core.get(id).is_some());
    let want = b"P1;P2;P3;Q1;Q2;P5;Q3;";
    let mut got = vec![0; want.len()];
    std::io::Read::read_exact(&mut peer, &mut got).unwrap();
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
}

// A connection taken out for a hand-over and back (the new plugin refused it; the hand-over
// failed) is written what the old worker took on its topics while it was out: in batches that is
// a batch's round trip of messages, which the old worker keeps writing to the connections not
// taken out. Without the old worker keeping them (`Recent::keep_from_now`) P3 and P4 were lost.
#[test]
fn a_subscriber_taken_back_hears_what_came_while_it_was_out() {
    const P: u64 = 77;
    let mut old = Bench::new(limits());
    let (ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let id = old.accept(Stream::Unix(mio::net::UnixStream::from_std(ours)));
    let stays = old.accept(Stream::Fake(FakeSocket::with_room(1 << 20)));
    assert_eq!(old.core.subscribe(id, b"red"), 1);
    assert_eq!(old.core.subscribe(stays, b"red"), 1);
    // Long past the worker's start: a worker keeps nothing by then, but for a hand-over.
    old.core.now_ms = crate::worker::topic_seam::RECENT_MS + 1;
    old.core.deliver_published(Some((P, 1)), b"red", b"P1;");
    old.core.topics.recent.keep_from_now();
    old.core.deliver_published(Some((P, 2)), b"red", b"P2;");
    let held = old.core.hold(id).unwrap();
    old.core.deliver_published(Some((P, 3)), b"red", b"P3;");
    old.core.deliver_published(Some((P, 4)), b"red", b"P4;");
    assert_eq!(old.core.get(stays).unwrap().pending_output(), 12, "the others go on hearing them");
    assert_eq!(old.core.restore(id, held).unwrap(), id);
    old.core.deliver_published(Some((P, 5)), b"red", b"P5;");
    old.settle();
    let want = b"P1;P2;P3;P4;P5;";
    let mut got = vec![0; want.len()];
    std::io::Read::read_exact(&mut peer, &mut got).unwrap();
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    assert_eq!(old.core.topics.stats.seam_replayed, 2);
}

/// A connection of `b` on a Unix socket pair, and the peer's end (reads time out).
fn unix_conn(b: &mut Bench) -> (ConnId, std::os::unix::net::UnixStream) {
    let (ours, peer) = std::os::unix::net::UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    (b.accept(Stream::Unix(mio::net::UnixStream::from_std(ours))), peer)
}

/// Reads `want.len()` bytes from `peer` and compares them as text.
fn assert_reads(peer: &mut std::os::unix::net::UnixStream, want: &[u8]) {
    let mut got = vec![0; want.len()];
    std::io::Read::read_exact(peer, &mut got).unwrap();
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    peer.set_nonblocking(true).unwrap();
    let mut more = [0; 64];
    let extra = std::io::Read::read(peer, &mut more).map_or(0, |n| n);
    assert_eq!(String::from_utf8_lossy(&more[..extra]), "", "nothing more (no message twice)");
}

/// The old worker of the tests below, whose plugin hears the topic `*` (the worker listens to
/// it) and sends what it hears to a connection on a Unix socket pair, declaring `*` in that
/// connection's export: the bench, the connection and its peer's end.
fn old_worker_hearing() -> (Bench, ConnId, std::os::unix::net::UnixStream) {
    let mut old = Bench::new(limits());
    old.script().input_end = Some(RawInputEnd::CLOSE);
    let (id, peer) = unix_conn(&mut old);
    old.script().relay = vec![id];
    old.script().hears = Some(b"*".to_vec());
    assert_eq!(old.core.subscribe(plugin_api::abi::WORKER_CONN, b"*"), 1);
    (old, id, peer)
}

/// The new worker of the tests below: its plugin listens to `*` once it adopts a connection.
fn new_worker_listening() -> Bench {
    let new = Bench::new(limits());
    new.script().input_end = Some(RawInputEnd::CLOSE);
    new.script().adopt_listens = Some(b"*".to_vec());
    new
}

/// The publisher of the tests below.
const P: u64 = 77;

/// Publisher `P`'s messages `ns` on `*` reach `b`'s mailbox, each `P{n};`.
fn deliver_p(b: &mut Bench, ns: std::ops::RangeInclusive<u64>) {
    for n in ns {
        b.core.deliver_published(Some((P, n)), b"*", format!("P{n};").as_bytes());
    }
}

// A connection that hears a topic through the plugin's `on_publish` (resp's pattern
// subscribers) moves: the old worker's plugin wrote it P up to 3 (its queued `on_publish`
// heard first, as before each batch); the new worker took P's 2nd to 4th before its plugin
// listened to the topic (its log alone), and P's 5th after (also queued for `on_publish`).
// Adopted, the plugin writes it P4 and P5 (`on_publish_missed`) and its marks advance to 5: the
// queued P5 is not sent to it again (the drop rule), P6 is. Without the replay P4 is lost;
// without the drop rule or the advanced marks P5 comes twice.
#[test]
fn a_connection_hearing_a_topic_through_the_plugin_moves_with_each_message_once() {
    use plugin_api::abi::{RawHostExt, WORKER_CONN};
    let (mut old, id, mut peer) = old_worker_hearing();
    deliver_p(&mut old, 1..=3);
    dispatch::published(&mut old.plugin, &mut old.core);
    // Declared during its export only, and only for a topic the worker listens to.
    assert!(!old.host().handover_hears(id, RSlice::from_slice(b"*")), "no export under way");
    let mut state = Vec::new();
    old.script().hears = Some(b"other".to_vec());
    assert_eq!(dispatch::handover_export_conn(&mut old.plugin, &mut old.core, id, &mut state), RawHandover::DECLINE);
    old.script().hears = Some(b"*".to_vec());
    assert_eq!(dispatch::handover_export_conn(&mut old.plugin, &mut old.core, id, &mut state), RawHandover::MOVE);
    let exported = old.core.hold(id).unwrap();
    assert_eq!(exported.snapshot.heard, [b"*".to_vec()]);
    assert!(exported.snapshot.topics.is_empty());
    assert_eq!(exported.snapshot.topic_marks, [(P, 3)]);
    assert!(old.core.topics.handed_over.contains(&b"*"[..]), "what comes on it is forwarded");
    // Out: the old plugin's sends to it go nowhere.
    deliver_p(&mut old, 4..=4);
    dispatch::published(&mut old.plugin, &mut old.core);

    let mut new = new_worker_listening();
    deliver_p(&mut new, 2..=4);
    assert_eq!(new.core.subscribe(WORKER_CONN, b"*"), 1, "another pattern subscriber came first");
    deliver_p(&mut new, 5..=5);
    let id = new.core.import(exported).unwrap();
    assert!(new.core.topics.topics_of(id).is_empty(), "not a host subscriber of the topic");
    new.heard();
    assert_eq!(dispatch::handover_adopt_conn(&mut new.plugin, &mut new.core, id, 1, &[]), RawHandover::MOVE);
    assert_eq!(new.heard(), [Heard::Missed(id, b"P4;".to_vec()), Heard::Missed(id, b"P5;".to_vec())]);
    assert_eq!(new.core.topics.stats.seam_replayed, 2);
    new.script().relay = vec![id];
    dispatch::published(&mut new.plugin, &mut new.core);
    assert_eq!(new.heard(), [Heard::Published(b"*".to_vec(), 3)], "P5 heard, not sent to it again");
    deliver_p(&mut new, 6..=6);
    dispatch::published(&mut new.plugin, &mut new.core);
    assert!(new.core.topics.heard_marks.is_empty(), "read past its marks: no drop rule any more");
    new.settle();
    assert_reads(&mut peer, b"P1;P2;P3;P4;P5;P6;");
}

// The old worker ahead of the new one: it wrote the connection P up to 4, the new worker had
// taken P's first two only. Adopted, nothing is missed; P3 and P4 then reach the new worker late
// and its plugin's `on_publish` sends them to its subscribers, but not to this connection (the
// drop rule); P5 goes to it.
#[test]
fn a_connection_hearing_a_topic_through_the_plugin_gets_no_late_message_twice() {
    let (mut old, id, mut peer) = old_worker_hearing();
    deliver_p(&mut old, 1..=4);
    dispatch::published(&mut old.plugin, &mut old.core);
    assert_eq!(dispatch::handover_export_conn(&mut old.plugin, &mut old.core, id, &mut Vec::new()), RawHandover::MOVE);
    let exported = old.core.hold(id).unwrap();

    let mut new = new_worker_listening();
    let (other, mut other_peer) = unix_conn(&mut new);
    deliver_p(&mut new, 1..=2);
    let id = new.core.import(exported).unwrap();
    new.heard();
    assert_eq!(dispatch::handover_adopt_conn(&mut new.plugin, &mut new.core, id, 1, &[]), RawHandover::MOVE);
    assert_eq!(new.heard(), [], "nothing missed");
    new.script().relay = vec![other, id];
    deliver_p(&mut new, 3..=5);
    dispatch::published(&mut new.plugin, &mut new.core);
    new.settle();
    assert_reads(&mut peer, b"P1;P2;P3;P4;P5;");
    assert_reads(&mut other_peer, b"P3;P4;P5;");
}

// Taken back (the new plugin refused it, the hand-over failed): the old worker's plugin writes
// it what it missed while out, from the old worker's own log, and what is still queued for
// `on_publish` is not sent to it twice.
#[test]
fn a_connection_hearing_a_topic_through_the_plugin_taken_back_misses_nothing() {
    let (mut old, id, mut peer) = old_worker_hearing();
    old.core.now_ms = crate::worker::topic_seam::RECENT_MS + 1;
    deliver_p(&mut old, 1..=1);
    old.core.topics.recent.keep_from_now();
    dispatch::published(&mut old.plugin, &mut old.core);
    assert_eq!(dispatch::handover_export_conn(&mut old.plugin, &mut old.core, id, &mut Vec::new()), RawHandover::MOVE);
    let held = old.core.hold(id).unwrap();
    deliver_p(&mut old, 2..=3);
    dispatch::published(&mut old.plugin, &mut old.core);
    deliver_p(&mut old, 4..=4);
    // Back, as the worker's `restore_conn` does it.
    assert_eq!(old.core.restore(id, held).unwrap(), id);
    old.heard();
    dispatch::publish_missed(&mut old.plugin, &mut old.core, id);
    let missed: Vec<Heard> = (2..=4).map(|n| Heard::Missed(id, format!("P{n};").into_bytes())).collect();
    assert_eq!(old.heard(), missed);
    dispatch::published(&mut old.plugin, &mut old.core);
    deliver_p(&mut old, 5..=5);
    dispatch::published(&mut old.plugin, &mut old.core);
    old.settle();
    assert_reads(&mut peer, b"P1;P2;P3;P4;P5;");
}

/// A bench with a UDP socket of its own on 127.0.0.1 (its address).
fn udp_bench() -> (Bench, std::net::SocketAddr) {
    let mut b = Bench::new(limits());
    let udp = mio::net::UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = udp.local_addr().unwrap();
    b.core.udp = Some(udp);
    (b, addr)
}

/// Reads the bench's UDP socket as the loop does until the plugin heard something (bounded).
fn receive_datagrams(b: &mut Bench) -> Vec<Heard> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        super::datagram::receive(&mut b.plugin, &mut b.core, &mut b.scratch);
        b.settle();
        let heard = b.heard();
        if !heard.is_empty() || std::time::Instant::now() > deadline {
            return heard;
        }
        std::thread::yield_now();
    }
}

// A UDP session moves as plain data: out of one table (its peer no longer keyed there), through
// the hand-over's encoding, into another under a new id, where its peer's next datagram reaches
// it (no second `on_connect`) with its counters and idle age carried over.
#[test]
fn a_udp_session_moves_as_its_snapshot() {
    let (mut a, a_addr) = udp_bench();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer = client.local_addr().unwrap();
    client.send_to(b"one", a_addr).unwrap();
    let heard = receive_datagrams(&mut a);
    let old_id = *a.core.sessions.get(&peer).expect("a session for the peer");
    assert_eq!(heard, [Heard::Connect(old_id), Heard::Message(old_id, b"one".to_vec())]);
    a.core.now_ms += 700;

    assert_eq!(a.core.movable(old_id), Ok(()));
    let snapshot = a.core.hold_session(old_id).unwrap();
    assert!(a.core.get(old_id).is_none() && !a.core.sessions.contains_key(&peer));
    assert_eq!(snapshot.peer, Some(peer));
    assert_eq!((snapshot.bytes_in, snapshot.idle_ms), (3, 700));
    // Held: its id is not given to another session meanwhile.
    assert_ne!(a.core.reserve_id().index(), old_id.index());

    let moved = crate::ctl::MovedSession { snapshot, state: vec![7, 7] };
    let bytes = postcard::to_stdvec(&moved).unwrap();
    let back: crate::ctl::MovedSession = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, moved);

    let (mut b, b_addr) = udp_bench();
    b.core.now_ms = 50_000;
    let new_id = b.core.import_session(back.snapshot.clone()).unwrap();
    assert_eq!(b.core.sessions.get(&peer), Some(&new_id));
    assert_eq!(b.core.get(new_id).unwrap().last_active_ms, 50_000 - 700);
    client.send_to(b"two", b_addr).unwrap();
    assert_eq!(receive_datagrams(&mut b), [Heard::Message(new_id, b"two".to_vec())], "no new session");
    assert_eq!(b.core.get(new_id).unwrap().bytes_in, 6);
    let mut answer = [0; 16];
    let (n, _) = client.recv_from(&mut answer).unwrap();
    assert_eq!(&answer[..n], b"one", "the old worker's echo");

    // The same peer again is a duplicate: refused, the table as it was.
    assert_eq!(b.core.import_session(back.snapshot.clone()), Err(BadSession::Duplicate(peer)));
    assert_eq!(b.core.sessions.len(), 1);

    // A refused adoption backs out: the peer's next datagram opens a session of its own.
    b.core.forget_session(new_id);
    assert!(b.core.get(new_id).is_none() && b.core.sessions.is_empty());

    // Should the hand-over fail, the old worker puts it back under its id.
    assert_eq!(a.core.restore_session(old_id, back.snapshot), Ok(old_id));
    assert_eq!(a.core.sessions.get(&peer), Some(&old_id));
    assert_eq!(a.core.get(old_id).unwrap().bytes_in, 3);
}

/// A change that makes a snapshot no UDP session can have.
type Spoil = fn(&mut super::core::Snapshot);

// Garbage is refused: bytes that are no session, and snapshots no UDP session can have.
#[test]
fn a_udp_session_snapshot_that_makes_no_sense_is_refused() {
    assert!(postcard::from_bytes::<crate::ctl::MovedSession>(b"\xff\xff\xff\xff\xff\x01garbage").is_err());
    assert!(postcard::from_bytes::<crate::ctl::MovedSession>(&[]).is_err());

    let (mut a, _) = udp_bench();
    let peer: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let session = a.core.reserve_id();
    a.core.place(session, Transport::plain(Stream::Datagram(peer)), None).unwrap();
    a.core.sessions.insert(peer, session);
    let good = a.core.snapshot(session).unwrap();
    // Not a session: a stream connection is held as a connection, not as a session.
    let stream = a.accept(Stream::Fake(FakeSocket::default()));
    assert_eq!(a.core.hold_session(stream).unwrap_err(), ExportError::NotASession);

    let (mut b, _) = udp_bench();
    let cases: [(Spoil, BadSession); 6] = [
        (|s| s.peer = None, BadSession::NoPeer),
        (
            |s| s.phase = ConnPhase::Closing { announced: true },
            BadSession::Phase(ConnPhase::Closing { announced: true }),
        ),
        (|s| s.input = b"half".to_vec(), BadSession::StreamState),
        (|s| s.output = b"queued".to_vec(), BadSession::StreamState),
        (|s| s.eof = true, BadSession::StreamState),
        (|s| s.files.push(FileRange { at: 0, offset: 0, remaining: 1 }), BadSession::StreamState),
    ];
    for (spoil, why) in cases {
        let mut bad = good.clone();
        spoil(&mut bad);
        assert_eq!(b.core.import_session(bad), Err(why));
        assert!(b.core.sessions.is_empty() && b.core.ids().is_empty(), "nothing stays of a refused session");
    }
    // Without a UDP socket a worker takes no session.
    let mut c = Bench::new(limits());
    assert_eq!(c.core.import_session(good.clone()), Err(BadSession::NoSocket));
    assert_eq!(b.core.import_session(good).map(|_| ()), Ok(()));
}

/// What the io_uring ring had not sent when a connection left it goes before the output still
/// queued (`Conn::requeue_front`): the file ranges keep their place after the bytes before them,
/// and the bytes count as written once they are written again.
#[test]
fn bytes_the_ring_had_not_sent_go_before_the_queued_output() {
    let mut b = Bench::new(Limits { max_send_buffer: 1 << 20, ..Limits::default() });
    let (ours, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let id = b.accept(Stream::Unix(mio::net::UnixStream::from_std(ours)));
    let (file, _) = file_of(3000);
    assert!(b.core.send(id, b"head;"));
    assert_eq!(b.core.send_file(id, file.as_raw_fd(), 1000, 500), Ok(()));
    assert!(b.core.send(id, b";tail"));
    {
        let c = b.core.get_mut(id).unwrap();
        // As if "hea" was written already: the output's front is spent.
        c.output_pos = 3;
        c.bytes_out = 103;
        c.requeue_front(b"unsent:".to_vec());
        assert_eq!(c.bytes_out, 96);
    }
    let s = b.core.snapshot(id).unwrap();
    assert_eq!(s.output, b"unsent:d;;tail");
    assert_eq!(s.files.len(), 1);
    assert_eq!(s.files[0].at, b"unsent:d;".len(), "the file range after the bytes before it");
}
