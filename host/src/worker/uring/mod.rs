//! The worker loop's io_uring backend (`--io uring`): the connections' receives and sends go
//! through one ring, so a loop turn enters the kernel once (`io_uring_enter`) for all of them,
//! where the epoll backend makes one `recvfrom` and one `sendto` per connection and request.
//!
//! What goes through the ring:
//! - every accepted stream's receive: one multishot `RECV` per connection into a ring of
//!   provided buffers ([`BufRing`]); what a completion brings is copied into the connection's
//!   inbox and the buffer given back at once, so a few dozen buffers serve any number of
//!   connections. The loop reads the inbox through [`RingSocket`]'s `Read` exactly as it reads
//!   a socket (`WouldBlock` when it is empty), so framing, TLS, pausing and lingering are the
//!   transport's code, unchanged;
//! - its sends: `write` appends to the connection's queue (at most [`SEND_CAP`] bytes, then
//!   `WouldBlock` as a full socket would), and [`Ring::turn`] submits one `SEND` per connection
//!   with bytes queued, all in the same `io_uring_enter` that waits for the next completions;
//! - the listener's accepts: one multishot `ACCEPT` ([`Ring::listen_on`]) whose completions
//!   are queued for the loop ([`Ring::take_accepted`]); cancelled when the worker stops
//!   accepting ([`Ring::accepting`], or [`Ring::stop_accepting`], which waits for its end so that
//!   later clients stay in the listener's queue), armed again when it resumes or the kernel ends it;
//! - the mio poller itself: its epoll descriptor is watched with a multishot `POLL_ADD`, so the
//!   master's channel, the signals, the mailbox, the wakers, outbound connections and UDP stay
//!   on epoll (read with a zero timeout when it has something) and a turn still
//!   blocks in one place.
//!
//! What stays a system call: `sendfile` of a file range (when nothing is queued before it; a
//! socket it finds full is waited for with a one-shot `POLL_ADD` for `POLLOUT`), `shutdown`
//! (after the queued bytes are sent). Not used: registered files (every
//! connection's descriptor is an ordinary one, so `sendfile`, `shutdown`, an export and the
//! transport's other calls work on it). A fixed file table was built and measured (bench/README.md,
//! "io_uring", run 5): no saving above the noise under keep-alive, two `io_uring_register` calls
//! per connection (fill and clear its slot), and before Linux 6.13 a cleared slot's socket stays
//! open until every older request completes (the kernel retired its resource nodes in order: a
//! long-lived multishot receive would hold every later-closed socket open).
//!
//! A connection's state lives in the ring's table ([`Sock`]) as long as the kernel may still
//! use its buffers: a socket dropped with bytes still queued or in flight keeps a duplicate of
//! its descriptor there until they are sent (or [`ORPHAN_MS`] pass), then it is closed; a
//! dropped socket's receive is cancelled.
//!
//! A socket leaves the ring whole for an export ([`RingSocket::leave`]): its receive, send and
//! `POLLOUT` wait are cancelled and their completions awaited (the socket enters the ring
//! itself: the ring is shared with the sockets, [`Engine`]); then what it received is read as
//! ever, what it had not sent is taken ([`RingSocket::take_unsent`]), and the descriptor alone
//! holds the connection.
//!
//! Like `host/src/sys/`, this module is an OS boundary and may use `unsafe`: the ring shares
//! memory with the kernel (the provided buffers, the bytes of a send in flight), which no safe
//! interface can check; each block says who owns what until when.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use nix::libc;

use super::transport::{SocketIo, Stream};

/// Submission queue entries (a turn with more submits in several steps).
const SQ_ENTRIES: u32 = 256;
/// Completion queue entries: multishot receives can complete many times per submission (the
/// kernel keeps what overflows and hands it over later).
const CQ_ENTRIES: u32 = 4096;
/// Provided buffers for the receives, and their size: what one completion carries at most.
/// They are given back as soon as a completion is copied out, so they only have to cover the
/// completions of one turn; a receive that finds none ends (`ENOBUFS`) and is armed again next
/// turn, its bytes waiting in the kernel. 512 KiB in all, every page of it touched in time:
/// the ring's part of a worker's memory (with the queues, about 600 KiB).
const BUF_COUNT: u16 = 256;
const BUF_SIZE: usize = 2048;
/// The buffer group of the provided buffers.
const BGID: u16 = 0;
/// Bytes a connection may have queued for sending (not yet submitted) before `write` says
/// `WouldBlock`: the ring's share of a socket's send buffer.
pub const SEND_CAP: usize = 256 * 1024;
/// Unread bytes at which a connection's receive is stopped (the plugin paused it, or it is
/// slower than its peer): the rest waits in the kernel, as it does on epoll.
const INBOX_HIGH: usize = 64 * 1024;
/// How long a socket dropped with bytes still to send keeps sending them before they are
/// cancelled and it is closed.
const ORPHAN_MS: u64 = 10_000;
/// How long a socket leaving the ring waits for its cancelled operations at most.
const LEAVE_WAIT: Duration = Duration::from_millis(200);

/// What a completion was for (the top byte of its user data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Recv = 1,
    Send = 2,
    PollOut = 3,
    Cancel = 4,
    Epoll = 5,
    Accept = 6,
}

fn user_data(kind: Kind, key: u32, gen: u32) -> u64 {
    (kind as u64) << 56 | u64::from(gen & 0x00ff_ffff) << 32 | u64::from(key)
}

fn split_user_data(data: u64) -> (u8, u32, u32) {
    ((data >> 56) as u8, ((data >> 32) & 0x00ff_ffff) as u32, data as u32)
}

/// Where a connection's multishot receive is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum RecvOp {
    #[default]
    Idle,
    Armed,
    /// A cancel was submitted; its final completion is awaited.
    Cancelling,
}

/// One connection's state in the ring's table.
#[derive(Default)]
struct Sock {
    gen: u32,
    /// The descriptor the ring's operations use (the socket's own, or `dup` once it is dropped).
    fd: RawFd,
    /// A duplicate of the descriptor, kept while the socket is dropped with bytes to send.
    dup: Option<OwnedFd>,
    /// Its [`RingSocket`] exists.
    live: bool,
    /// The loop's token while it is registered (events are reported under it).
    token: Option<usize>,
    inbox: Vec<u8>,
    inbox_pos: usize,
    eof: bool,
    error: Option<i32>,
    recv: RecvOp,
    /// Bytes written and not submitted yet; `more`: the last of them come before a file range.
    queued: Vec<u8>,
    more: bool,
    /// The bytes of the send in flight (the kernel reads them until its completion) and how
    /// many of them were sent.
    inflight: Vec<u8>,
    sent: usize,
    sending: bool,
    poll_out: bool,
    want_poll_out: bool,
    /// The `POLLOUT` wait of a dropped socket was cancelled (it might never fire).
    poll_cancelled: bool,
    /// A write was refused (`WouldBlock`): the loop waits for a writable event.
    blocked: bool,
    shutdown: Option<Shutdown>,
    /// On the table's work list.
    listed: bool,
    /// Events for the loop, reported once per turn.
    ev_read: bool,
    ev_hup: bool,
    ev_write: bool,
    ev_listed: bool,
    /// A dropped socket's sends are cancelled at this time.
    orphan_until: Option<u64>,
    /// It is leaving the ring (an export, [`RingSocket::leave`]): nothing new is submitted for
    /// it, what is in flight is cancelled.
    leaving: bool,
    /// The send in flight was asked to stop ([`RingSocket::leave`]).
    send_cancelled: bool,
}

impl Sock {
    fn unread(&self) -> usize {
        self.inbox.len() - self.inbox_pos
    }

    fn unsent(&self) -> bool {
        self.sending || !self.queued.is_empty() || self.sent < self.inflight.len()
    }

    /// The kernel holds no operation of it (no receive, send or `POLLOUT` wait in flight).
    fn idle_in_kernel(&self) -> bool {
        self.recv == RecvOp::Idle && !self.sending && !self.poll_out
    }
}

/// What the loop learns of a connection from a turn's completions (mio's event, in effect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingEvent {
    pub token: usize,
    pub readable: bool,
    /// The peer closed or the socket failed: read to the end.
    pub hup: bool,
    pub writable: bool,
}

/// The connections' states, shared by the ring and the sockets (one thread: `Rc<RefCell>`).
#[derive(Default)]
struct Table {
    socks: Vec<Sock>,
    free: Vec<u32>,
    /// Sockets with something to submit (a receive to arm or cancel, bytes to send, a
    /// shutdown), or to free.
    work: Vec<u32>,
    /// Sockets with events for the loop.
    events: Vec<u32>,
}

impl Table {
    fn schedule(&mut self, key: u32) {
        let s = &mut self.socks[key as usize];
        if !s.listed {
            s.listed = true;
            self.work.push(key);
        }
    }

    fn notify(&mut self, key: u32, read: bool, hup: bool, write: bool) {
        let s = &mut self.socks[key as usize];
        if s.token.is_none() || !s.live {
            return;
        }
        s.ev_read |= read;
        s.ev_hup |= hup;
        s.ev_write |= write;
        if !s.ev_listed {
            s.ev_listed = true;
            self.events.push(key);
        }
    }

    fn insert(&mut self, fd: RawFd) -> u32 {
        let key = match self.free.pop() {
            Some(k) => k,
            None => {
                self.socks.push(Sock::default());
                (self.socks.len() - 1) as u32
            }
        };
        let s = &mut self.socks[key as usize];
        let gen = s.gen.wrapping_add(1) & 0x00ff_ffff;
        // The buffers' capacity is kept for the next connection in this place.
        let (mut inbox, mut queued, mut inflight) =
            (std::mem::take(&mut s.inbox), std::mem::take(&mut s.queued), std::mem::take(&mut s.inflight));
        inbox.clear();
        queued.clear();
        inflight.clear();
        *s = Sock { gen, fd, live: true, inbox, queued, inflight, ..Sock::default() };
        key
    }

    /// Frees a dropped socket's place once the kernel holds nothing of it.
    fn maybe_free(&mut self, key: u32) {
        let s = &mut self.socks[key as usize];
        if s.live || s.listed || s.recv != RecvOp::Idle || s.sending || s.poll_out || s.fd < 0 {
            return;
        }
        if s.unsent() && s.error.is_none() && s.dup.is_some() {
            return;
        }
        s.dup = None;
        s.fd = -1;
        s.token = None;
        // Large buffers are not kept for whoever gets the place next.
        for buf in [&mut s.inbox, &mut s.queued, &mut s.inflight] {
            if buf.capacity() > 16 * 1024 {
                *buf = Vec::new();
            }
        }
        self.free.push(key);
    }
}

/// A ring of provided buffers (`IORING_REGISTER_PBUF_RING`): the kernel picks one for each
/// receive completion; it is given back once its bytes are copied out.
struct BufRing {
    /// The ring of entries (page-aligned, `BUF_COUNT` of them), shared with the kernel.
    entries: *mut types::BufRingEntry,
    layout: std::alloc::Layout,
    buffers: Box<[u8]>,
    /// Our tail: entries below it are the kernel's.
    tail: u16,
}

impl BufRing {
    fn new() -> io::Result<BufRing> {
        let size = usize::from(BUF_COUNT) * std::mem::size_of::<types::BufRingEntry>();
        let layout = std::alloc::Layout::from_size_align(size, 4096).map_err(io::Error::other)?;
        // SAFETY: the layout's size is not zero.
        let entries = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
        if entries.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let mut ring =
            BufRing { entries, layout, buffers: vec![0u8; usize::from(BUF_COUNT) * BUF_SIZE].into(), tail: 0 };
        for bid in 0..BUF_COUNT {
            ring.give_back(bid);
        }
        ring.publish();
        Ok(ring)
    }

    fn data(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * BUF_SIZE;
        &self.buffers[start..start + len.min(BUF_SIZE)]
    }

    /// Puts buffer `bid` at the tail (the kernel sees it once [`BufRing::publish`]ed).
    fn give_back(&mut self, bid: u16) {
        let index = usize::from(self.tail & (BUF_COUNT - 1));
        let addr = self.buffers.as_ptr() as u64 + (usize::from(bid) * BUF_SIZE) as u64;
        // SAFETY: `index` is below BUF_COUNT, the ring's length; the kernel does not read the
        // entries at or past the published tail, which this one is.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(addr);
        entry.set_len(BUF_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail is a u16 inside the ring's first entry (the kernel's layout), which
        // lives as long as `self`; it is written with release order so that the kernel sees
        // the entries before it.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries).cast_mut().cast::<std::sync::atomic::AtomicU16>();
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring that used it is gone (the
        // `Engine` drops its `IoUring` first: field order).
        unsafe { std::alloc::dealloc(self.entries.cast(), self.layout) };
    }
}

/// The ring itself and its provided buffers, shared by the [`Ring`] (a loop turn) and the
/// sockets (a socket leaving the ring waits for its cancelled operations: [`RingSocket::leave`]).
struct Engine {
    // (Dropped first: the kernel stops using the buffers before they are freed.)
    ring: IoUring,
    bufs: BufRing,
    epoll_armed: bool,
    /// The epoll descriptor's watch completed outside a turn (reported by the next one).
    epoll_ready: bool,
    /// Buffers given back, not yet published.
    recycled: bool,
    accept: Acceptor,
}

/// The listener's multishot accept ([`Ring::listen_on`]): one submission whose completions
/// are the accepted connections' descriptors, until it is cancelled or the kernel ends it.
#[derive(Default)]
struct Acceptor {
    /// The listening socket (the worker's, which outlives the ring's use of it).
    fd: Option<RawFd>,
    /// The worker accepts: the accept is armed next turn if it is not.
    want: bool,
    /// The accept is in the kernel (until its last completion, without `IORING_CQE_F_MORE`).
    armed: bool,
    /// A cancel of it was submitted.
    cancelling: bool,
    /// The kernel refused it (`EINVAL`: no multishot accept here): the listener goes on epoll.
    refused: bool,
    /// What its completions brought, oldest first: descriptors, and the error that ended it.
    queue: VecDeque<Result<OwnedFd, i32>>,
}

/// The worker's ring.
pub struct Ring {
    engine: Rc<RefCell<Engine>>,
    table: Rc<RefCell<Table>>,
    /// The mio poller's epoll descriptor, watched through the ring.
    epoll_fd: RawFd,
    /// Dropped sockets still sending, looked at again next turn (kept: no allocation a turn).
    again: Vec<u32>,
}

/// What puts a stream on the worker's ring, kept by the connection table for the connections
/// it imports (a hand-over, or one taken back after a hand-over failed).
#[derive(Clone)]
pub struct RingHandle {
    engine: Rc<RefCell<Engine>>,
    table: Rc<RefCell<Table>>,
}

impl RingHandle {
    /// Puts a stream's I/O on the ring (a UDP session's or a fake socket is given back).
    pub fn adopt(&self, stream: Stream) -> Stream {
        let fd = match &stream {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
            _ => return stream,
        };
        let key = self.table.borrow_mut().insert(fd);
        Stream::Ring(RingSocket {
            inner: Box::new(stream),
            key,
            table: self.table.clone(),
            engine: self.engine.clone(),
        })
    }
}

impl Ring {
    /// A ring for a worker whose other sources are on the epoll descriptor `epoll_fd`. Fails
    /// where io_uring is unavailable (an old kernel, a seccomp profile that forbids
    /// `io_uring_setup`, `kernel.io_uring_disabled`) or lacks what this backend needs
    /// (provided buffer rings, 5.19; multishot receive, 6.0; waits with a timeout, 5.11).
    pub fn new(epoll_fd: RawFd) -> io::Result<Ring> {
        kernel_at_least(6, 0)?;
        // One thread submits, and completions are processed when it waits (not by interrupting
        // it as each packet arrives): the kernel's task work for a whole turn runs at once.
        // (6.1; without them where refused.)
        let ring = match IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(SQ_ENTRIES)
        {
            Ok(ring) => ring,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                IoUring::builder().setup_cqsize(CQ_ENTRIES).build(SQ_ENTRIES)?
            }
            Err(e) => return Err(e),
        };
        if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_fast_poll() {
            return Err(io::Error::other("the kernel's io_uring lacks EXT_ARG or FAST_POLL"));
        }
        let bufs = BufRing::new()?;
        // SAFETY: the entries stay allocated until `bufs` is dropped, which happens after the
        // ring (see `Ring`'s field order), and the ring is not shared.
        unsafe { ring.submitter().register_buf_ring_with_flags(bufs.entries as u64, BUF_COUNT, BGID, 0)? };
        let engine =
            Engine { ring, bufs, epoll_armed: false, epoll_ready: false, recycled: false, accept: Acceptor::default() };
        Ok(Ring { engine: Rc::new(RefCell::new(engine)), table: Rc::default(), epoll_fd, again: Vec::new() })
    }

    /// What puts streams on this ring (for the connection table's imports).
    pub fn handle(&self) -> RingHandle {
        RingHandle { engine: self.engine.clone(), table: self.table.clone() }
    }

    /// Accepts the connections of the listening socket `fd` through the ring (one multishot
    /// `ACCEPT`), once [`Ring::accepting`] says so. `fd` must stay open as long as the ring.
    pub fn listen_on(&mut self, fd: RawFd) {
        self.engine.borrow_mut().accept.fd = Some(fd);
    }

    /// Whether the listener's accept is to be in the kernel: on, it is armed next turn (and
    /// again whenever the kernel ends it, until an error does: see [`Ring::take_accepted`]);
    /// off, it is cancelled next turn (what completes before that is still queued). To stop at
    /// once, [`Ring::stop_accepting`].
    pub fn accepting(&mut self, on: bool) {
        self.engine.borrow_mut().accept.want = on;
    }

    /// Cancels the listener's accept and waits (up to [`LEAVE_WAIT`]) until the kernel has
    /// ended it: from then on the connections stay in the listener's queue (for another
    /// worker of the slot); those accepted before are in [`Ring::take_accepted`]'s queue.
    pub fn stop_accepting(&mut self) -> io::Result<()> {
        let start = std::time::Instant::now();
        let mut engine = self.engine.borrow_mut();
        let engine = &mut *engine;
        let mut table = self.table.borrow_mut();
        engine.accept.want = false;
        loop {
            let accept = &mut engine.accept;
            if !accept.armed {
                return Ok(());
            }
            if !accept.cancelling {
                let cancel = opcode::AsyncCancel::new(user_data(Kind::Accept, 0, 0)).build();
                push(&mut engine.ring, cancel.user_data(user_data(Kind::Cancel, 0, 0)))?;
                engine.accept.cancelling = true;
            }
            let left = LEAVE_WAIT.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "the ring did not end the accept in time"));
            }
            wait_some(engine, &mut table, left)?;
        }
    }

    /// The next connection the listener's accept brought (None when none is queued); an error
    /// ended the accept (it is armed again with [`Ring::accepting`]).
    pub fn take_accepted(&mut self) -> Option<io::Result<OwnedFd>> {
        let next = self.engine.borrow_mut().accept.queue.pop_front()?;
        Some(next.map_err(io::Error::from_raw_os_error))
    }

    /// Connections (or an error) wait in [`Ring::take_accepted`]'s queue.
    pub fn has_accepted(&self) -> bool {
        !self.engine.borrow().accept.queue.is_empty()
    }

    /// The kernel refused the multishot accept: the listener is to be read on epoll.
    pub fn accept_refused(&self) -> bool {
        self.engine.borrow().accept.refused
    }

    /// Puts an accepted stream's I/O on the ring.
    pub fn adopt(&self, stream: Stream) -> Stream {
        self.handle().adopt(stream)
    }

    /// One turn's wait: submits what the sockets queued (receives to arm, sends), waits up to
    /// `timeout` (None: until something completes) for completions, and reports them in
    /// `events`. True when the epoll descriptor has events (read it with a zero timeout).
    pub fn turn(&mut self, timeout: Option<Duration>, now_ms: u64, events: &mut Vec<RingEvent>) -> io::Result<bool> {
        events.clear();
        self.prepare(now_ms)?;
        let mut engine = self.engine.borrow_mut();
        // Completions handled outside a turn (a socket that left the ring) are reported now.
        let handled = engine.epoll_ready || !self.table.borrow().events.is_empty();
        let timeout = if handled { Some(Duration::ZERO) } else { timeout };
        let submitter = engine.ring.submitter();
        let result = match timeout {
            // (A zero timeout still asks for completions: deferred task work runs only then.)
            Some(t) if t.is_zero() => {
                submitter.submit_with_args(1, &types::SubmitArgs::new().timespec(&types::Timespec::new()))
            }
            None => submitter.submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos());
                submitter.submit_with_args(1, &types::SubmitArgs::new().timespec(&ts))
            }
        };
        match result {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {}
            Err(e) => return Err(e),
        }
        let mut table = self.table.borrow_mut();
        let epoll_ready = complete(&mut engine, &mut table) | std::mem::take(&mut engine.epoll_ready);
        if std::mem::take(&mut engine.recycled) {
            engine.bufs.publish();
        }
        let keys = std::mem::take(&mut table.events);
        for &key in &keys {
            let s = &mut table.socks[key as usize];
            s.ev_listed = false;
            let (readable, hup, writable) =
                (std::mem::take(&mut s.ev_read), std::mem::take(&mut s.ev_hup), std::mem::take(&mut s.ev_write));
            if let (Some(token), true) = (s.token, s.live) {
                events.push(RingEvent { token, readable: readable || hup, hup, writable });
            }
        }
        table.events = keys;
        table.events.clear();
        Ok(epoll_ready)
    }

    /// The worker is exiting: sends what the sockets still have queued or in flight (their
    /// last answers: a socket closed on epoll leaves them to the kernel, which the ring's
    /// teardown would cancel), for `within` at most.
    pub fn finish(&mut self, within: Duration) {
        let start = std::time::Instant::now();
        let mut events = Vec::new();
        while start.elapsed() < within {
            let busy = self.table.borrow().socks.iter().any(|s| s.fd >= 0 && s.error.is_none() && s.unsent());
            if !busy {
                return;
            }
            let now_ms = start.elapsed().as_millis() as u64;
            if self.turn(Some(Duration::from_millis(10)), now_ms, &mut events).is_err() {
                return;
            }
        }
    }

    /// Queues the submissions of the sockets on the work list.
    fn prepare(&mut self, now_ms: u64) -> io::Result<()> {
        let mut engine = self.engine.borrow_mut();
        let engine = &mut *engine;
        if !engine.epoll_armed {
            let poll = opcode::PollAdd::new(types::Fd(self.epoll_fd), libc::POLLIN as u32).multi(true).build();
            push(&mut engine.ring, poll.user_data(user_data(Kind::Epoll, 0, 0)))?;
            engine.epoll_armed = true;
        }
        let accept = &mut engine.accept;
        if let Some(fd) = accept.fd {
            if accept.want && !accept.armed && !accept.refused {
                // The flags are `accept4`'s: the descriptors come non-blocking and close-on-exec.
                let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
                let entry = opcode::AcceptMulti::new(types::Fd(fd)).flags(flags).build();
                push(&mut engine.ring, entry.user_data(user_data(Kind::Accept, 0, 0)))?;
                engine.accept.armed = true;
                engine.accept.cancelling = false;
            } else if !accept.want && accept.armed && !accept.cancelling {
                let cancel = opcode::AsyncCancel::new(user_data(Kind::Accept, 0, 0)).build();
                push(&mut engine.ring, cancel.user_data(user_data(Kind::Cancel, 0, 0)))?;
                engine.accept.cancelling = true;
            }
        }
        let ring = &mut engine.ring;
        let mut table = self.table.borrow_mut();
        let mut work = std::mem::take(&mut table.work);
        let mut again = std::mem::take(&mut self.again);
        for key in work.drain(..) {
            let s = &mut table.socks[key as usize];
            s.listed = false;
            let (fd, gen) = (types::Fd(s.fd), s.gen);
            if s.fd < 0 {
                continue;
            }
            let want_recv =
                s.live && !s.leaving && s.token.is_some() && !s.eof && s.error.is_none() && s.unread() < INBOX_HIGH;
            match (s.recv, want_recv) {
                (RecvOp::Idle, true) => {
                    let recv = opcode::RecvMulti::new(fd, BGID).build();
                    push(ring, recv.user_data(user_data(Kind::Recv, key, gen)))?;
                    s.recv = RecvOp::Armed;
                }
                (RecvOp::Armed, false) => {
                    let cancel = opcode::AsyncCancel::new(user_data(Kind::Recv, key, gen)).build();
                    push(ring, cancel.user_data(user_data(Kind::Cancel, key, gen)))?;
                    s.recv = RecvOp::Cancelling;
                }
                _ => {}
            }
            if !s.live && s.dup.is_some() && s.error.is_none() {
                match s.orphan_until {
                    None => s.orphan_until = Some(now_ms + ORPHAN_MS),
                    Some(t) if now_ms >= t => {
                        if s.sending {
                            let cancel = opcode::AsyncCancel::new(user_data(Kind::Send, key, gen)).build();
                            push(ring, cancel.user_data(user_data(Kind::Cancel, key, gen)))?;
                        }
                        s.error = Some(libc::ETIMEDOUT);
                    }
                    Some(_) => {}
                }
            }
            if !s.sending && s.error.is_none() && !s.leaving {
                if s.sent >= s.inflight.len() && !s.queued.is_empty() {
                    std::mem::swap(&mut s.queued, &mut s.inflight);
                    s.queued.clear();
                    s.sent = 0;
                }
                if s.sent < s.inflight.len() {
                    let rest = &s.inflight[s.sent..];
                    let mut flags = libc::MSG_NOSIGNAL;
                    if s.more && s.queued.is_empty() {
                        flags |= libc::MSG_MORE;
                    }
                    // The bytes stay where they are until the completion: `inflight` is not
                    // touched while `sending` (its heap buffer does not move with the table).
                    let send = opcode::Send::new(fd, rest.as_ptr(), rest.len() as u32).flags(flags).build();
                    push(ring, send.user_data(user_data(Kind::Send, key, gen)))?;
                    s.sending = true;
                }
            }
            if !s.live && s.poll_out && !s.poll_cancelled {
                let cancel = opcode::AsyncCancel::new(user_data(Kind::PollOut, key, gen)).build();
                push(ring, cancel.user_data(user_data(Kind::Cancel, key, gen)))?;
                s.poll_cancelled = true;
            }
            if s.want_poll_out && !s.poll_out && s.live && !s.leaving {
                let poll = opcode::PollAdd::new(fd, libc::POLLOUT as u32).build();
                push(ring, poll.user_data(user_data(Kind::PollOut, key, gen)))?;
                s.poll_out = true;
                s.want_poll_out = false;
            }
            if !s.unsent() || s.error.is_some() {
                if let Some(how) = s.shutdown.take() {
                    // (`fd` is open: the socket's own while it lives, else the duplicate.)
                    let _ = nix::sys::socket::shutdown(s.fd, shutdown_how(how));
                }
            }
            if !s.live && s.dup.is_some() && s.unsent() && s.error.is_none() {
                // Looked at again next turn (its deadline) until its bytes are sent.
                again.push(key);
            }
            table.maybe_free(key);
        }
        table.work = work;
        for key in again.drain(..) {
            table.schedule(key);
        }
        self.again = again;
        Ok(())
    }
}

/// Handles the completions; true when the epoll descriptor became readable.
fn complete(engine: &mut Engine, table: &mut Table) -> bool {
    let mut epoll_ready = false;
    let Engine { ring, bufs, epoll_armed, recycled, accept, .. } = engine;
    for cqe in ring.completion() {
        let (kind, gen, key) = split_user_data(cqe.user_data());
        let (res, flags) = (cqe.result(), cqe.flags());
        if kind == Kind::Accept as u8 {
            if !cqueue::more(flags) {
                accept.armed = false;
                accept.cancelling = false;
            }
            match res {
                // SAFETY: a completed accept's result is a new descriptor nothing else owns.
                fd if fd >= 0 => accept.queue.push_back(Ok(unsafe { OwnedFd::from_raw_fd(fd) })),
                e if e == -libc::ECANCELED => {}
                e if e == -libc::EINVAL || e == -libc::EOPNOTSUPP => {
                    accept.refused = true;
                    accept.want = false;
                }
                e => {
                    // It ended: the worker decides when to accept again (EMFILE waits a while).
                    accept.want = false;
                    accept.queue.push_back(Err(-e));
                }
            }
            continue;
        }
        if kind == Kind::Epoll as u8 {
            epoll_ready = true;
            if !cqueue::more(flags) {
                *epoll_armed = false;
            }
            continue;
        }
        if kind == Kind::Cancel as u8 || table.socks.get(key as usize).is_none_or(|s| s.gen != gen) {
            // (A buffer picked for a completion nobody wants still goes back.)
            if let Some(bid) = cqueue::buffer_select(flags) {
                bufs.give_back(bid);
                *recycled = true;
            }
            continue;
        }
        match kind {
            k if k == Kind::Recv as u8 => {
                let more = cqueue::more(flags);
                let s = &mut table.socks[key as usize];
                if !more {
                    s.recv = RecvOp::Idle;
                }
                let mut hup = false;
                let mut read = false;
                if res > 0 {
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        if s.live {
                            s.inbox.extend_from_slice(bufs.data(bid, res as usize));
                            read = true;
                        }
                        bufs.give_back(bid);
                        *recycled = true;
                    }
                } else if res == 0 {
                    s.eof = true;
                    hup = true;
                } else if -res != libc::ENOBUFS && -res != libc::ECANCELED {
                    s.error = Some(-res);
                    hup = true;
                }
                let over = s.unread() >= INBOX_HIGH;
                if !more || over || !s.live {
                    // Re-armed (it ended: out of buffers, or the kernel's choice),
                    // stopped (too much unread) or freed.
                    table.schedule(key);
                }
                table.notify(key, read || hup, hup, false);
            }
            k if k == Kind::Send as u8 => {
                let s = &mut table.socks[key as usize];
                s.sending = false;
                let cancelled = std::mem::take(&mut s.send_cancelled);
                if res >= 0 {
                    s.sent += res as usize;
                    if s.sent >= s.inflight.len() {
                        s.inflight.clear();
                        s.sent = 0;
                    }
                } else if -res == libc::ECANCELED && cancelled {
                    // Stopped for an export ([`RingSocket::leave`]): its bytes stay unsent.
                } else if -res != libc::ECANCELED || s.error.is_none() {
                    s.error = Some(-res);
                }
                let failed = s.error.is_some();
                let write = std::mem::take(&mut s.blocked) || failed;
                table.schedule(key);
                table.notify(key, failed, failed, write);
            }
            k if k == Kind::PollOut as u8 => {
                let s = &mut table.socks[key as usize];
                s.poll_out = false;
                s.blocked = false;
                table.schedule(key);
                table.notify(key, false, false, true);
            }
            _ => {}
        }
    }
    epoll_ready
}

/// Submits what is queued and waits up to `left` for a completion, outside a turn: the
/// completions are handled as in a turn (the sockets' events wait for the next one, as does
/// the poll's readiness).
fn wait_some(engine: &mut Engine, table: &mut Table, left: Duration) -> io::Result<()> {
    let ts = types::Timespec::new().sec(left.as_secs()).nsec(left.subsec_nanos());
    match engine.ring.submitter().submit_with_args(1, &types::SubmitArgs::new().timespec(&ts)) {
        Ok(_) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {}
        Err(e) => return Err(e),
    }
    if complete(engine, table) {
        engine.epoll_ready = true;
    }
    if std::mem::take(&mut engine.recycled) {
        engine.bufs.publish();
    }
    Ok(())
}

/// Pushes a submission, submitting the queue first when it is full.
fn push(ring: &mut IoUring, entry: squeue::Entry) -> io::Result<()> {
    loop {
        // SAFETY: every entry's buffers (a send's bytes, the provided buffers) and descriptors
        // stay valid until its completion: see `Sock` (a send's `inflight` is not touched
        // while it is in flight, a dropped socket's descriptor is kept while it sends) and
        // `BufRing`.
        if unsafe { ring.submission().push(&entry) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
}

fn shutdown_how(how: Shutdown) -> nix::sys::socket::Shutdown {
    match how {
        Shutdown::Read => nix::sys::socket::Shutdown::Read,
        Shutdown::Write => nix::sys::socket::Shutdown::Write,
        Shutdown::Both => nix::sys::socket::Shutdown::Both,
    }
}

/// Refuses kernels older than `major.minor` (the release `uname` gives).
fn kernel_at_least(major: u32, minor: u32) -> io::Result<()> {
    let uts = nix::sys::utsname::uname().map_err(io::Error::from)?;
    let release = uts.release().to_string_lossy().into_owned();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version < (major, minor) {
        return Err(io::Error::other(format!("kernel {release} is older than {major}.{minor}")));
    }
    Ok(())
}

/// Puts one socket on the table's work list (see [`RingSocket::with`]).
struct Work<'a> {
    list: &'a mut Vec<u32>,
    key: u32,
}

impl Work<'_> {
    fn schedule(&mut self, s: &mut Sock) {
        if !s.listed {
            s.listed = true;
            self.list.push(self.key);
        }
    }
}

/// An accepted stream whose receives and sends go through the worker's [`Ring`]. Reads give
/// what the receive completions brought (`WouldBlock` when nothing is left, Ok(0) after the
/// peer closed); writes queue bytes the next turn submits.
pub struct RingSocket {
    /// The stream itself (for its addresses, options, `sendfile`, and an export).
    inner: Box<Stream>,
    key: u32,
    table: Rc<RefCell<Table>>,
    engine: Rc<RefCell<Engine>>,
}

impl RingSocket {
    /// The stream under the ring's I/O.
    pub fn inner(&self) -> &Stream {
        &self.inner
    }

    /// Runs `f` on this socket's state and a [`Work`] handle that puts it on the work list.
    fn with<T>(&self, f: impl FnOnce(&mut Sock, &mut Work<'_>) -> T) -> T {
        let mut table = self.table.borrow_mut();
        let Table { socks, work, .. } = &mut *table;
        f(&mut socks[self.key as usize], &mut Work { list: work, key: self.key })
    }

    /// Starts receiving, reported under `token` (the loop's `register`).
    pub fn arm(&self, token: usize) {
        let mut table = self.table.borrow_mut();
        table.socks[self.key as usize].token = Some(token);
        table.schedule(self.key);
    }

    /// Stops receiving (the loop's `deregister`); what was received stays readable.
    pub fn disarm(&self) {
        let mut table = self.table.borrow_mut();
        table.socks[self.key as usize].token = None;
        table.schedule(self.key);
    }

    /// Nothing received is unread, nothing written is unsent and the kernel holds no operation
    /// of it: the descriptor alone holds the connection (an export may take it).
    pub fn is_settled(&self) -> bool {
        let table = self.table.borrow();
        let s = &table.socks[self.key as usize];
        s.unread() == 0 && !s.unsent() && s.idle_in_kernel()
    }

    /// Whether [`RingSocket::leave`] can take it off the ring: not when the socket failed or a
    /// shutdown waits for its queued bytes (it is closing: it stays and ends here).
    pub fn can_leave(&self) -> bool {
        let table = self.table.borrow();
        let s = &table.socks[self.key as usize];
        s.error.is_none() && s.shutdown.is_none() && s.live
    }

    /// Readies the socket to leave the ring (an export): its receive, its send in flight and
    /// its `POLLOUT` wait are cancelled and their completions awaited (what a receive brought
    /// before its cancel is in the inbox, read on with `read`; what a send had not sent stays
    /// queued, taken with [`RingSocket::take_unsent`]); nothing new is submitted for it after.
    /// Waits [`LEAVE_WAIT`] at most (the kernel answers a cancel at once: not expected); then
    /// it goes on on the ring as before, and the error says why.
    pub fn leave(&mut self) -> io::Result<()> {
        if !self.can_leave() {
            return Err(io::Error::other("the socket failed or is shutting down"));
        }
        let result = self.cancel_and_wait();
        if result.is_err() {
            // It goes on on the ring: receives again, sends what it has.
            self.with(|s, work| {
                s.leaving = false;
                s.poll_cancelled = false;
                work.schedule(s);
            });
        }
        result
    }

    /// [`RingSocket::leave`]'s cancels, and the wait for their completions.
    fn cancel_and_wait(&mut self) -> io::Result<()> {
        let key = self.key;
        let start = std::time::Instant::now();
        let mut engine = self.engine.borrow_mut();
        let engine = &mut *engine;
        let mut table = self.table.borrow_mut();
        table.socks[key as usize].leaving = true;
        loop {
            let s = &mut table.socks[key as usize];
            let gen = s.gen;
            if s.recv == RecvOp::Armed {
                let cancel = opcode::AsyncCancel::new(user_data(Kind::Recv, key, gen)).build();
                push(&mut engine.ring, cancel.user_data(user_data(Kind::Cancel, key, gen)))?;
                s.recv = RecvOp::Cancelling;
            }
            if s.sending && !s.send_cancelled {
                let cancel = opcode::AsyncCancel::new(user_data(Kind::Send, key, gen)).build();
                push(&mut engine.ring, cancel.user_data(user_data(Kind::Cancel, key, gen)))?;
                s.send_cancelled = true;
            }
            if s.poll_out && !s.poll_cancelled {
                let cancel = opcode::AsyncCancel::new(user_data(Kind::PollOut, key, gen)).build();
                push(&mut engine.ring, cancel.user_data(user_data(Kind::Cancel, key, gen)))?;
                s.poll_cancelled = true;
            }
            if s.idle_in_kernel() {
                s.poll_cancelled = false;
                break;
            }
            let left = LEAVE_WAIT.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "the ring did not give the socket up in time"));
            }
            wait_some(engine, &mut table, left)?;
        }
        Ok(())
    }

    /// The connection cannot go on (its TLS state was lost while it left the ring): the socket
    /// is shut down and fails every read and write from now on; nothing queued is sent.
    pub fn fail(&mut self) {
        self.with(|s, work| {
            s.error = Some(libc::EPIPE);
            s.queued.clear();
            s.inflight.clear();
            s.sent = 0;
            s.leaving = false;
            work.schedule(s);
        });
        let _ = match &*self.inner {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            _ => Ok(()),
        };
    }

    /// After [`RingSocket::leave`]: the bytes written and not sent, in order (the ring forgets
    /// them: whoever takes them sends them).
    pub fn take_unsent(&mut self) -> Vec<u8> {
        self.with(|s, _| {
            let mut unsent = s.inflight.split_off(s.sent.min(s.inflight.len()));
            unsent.append(&mut s.queued);
            s.inflight.clear();
            s.sent = 0;
            s.more = false;
            unsent
        })
    }

    /// Gives bytes taken by [`RingSocket::take_unsent`] back (the export did not happen): they
    /// are sent first, and the socket goes on on the ring.
    pub fn stay(&mut self, unsent: Vec<u8>) {
        self.with(|s, work| {
            let mut queued = unsent;
            queued.append(&mut s.queued);
            s.queued = queued;
            s.leaving = false;
            work.schedule(s);
        })
    }

    /// Takes the stream back off the ring (an export: see [`RingSocket::is_settled`]).
    pub fn into_inner(mut self) -> Stream {
        let dummy = Stream::Datagram(std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        *std::mem::replace(&mut self.inner, Box::new(dummy))
    }

    fn queue(&mut self, data: &[u8], more: bool) -> io::Result<usize> {
        self.with(|s, work| {
            if let Some(e) = s.error {
                return Err(io::Error::from_raw_os_error(e));
            }
            let room = SEND_CAP.saturating_sub(s.queued.len());
            if room == 0 {
                s.blocked = true;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = room.min(data.len());
            s.queued.extend_from_slice(&data[..n]);
            s.more = more;
            work.schedule(s);
            Ok(n)
        })
    }
}

impl Drop for RingSocket {
    fn drop(&mut self) {
        let fd = match &*self.inner {
            Stream::Tcp(s) => Some(s.as_fd()),
            Stream::Unix(s) => Some(s.as_fd()),
            _ => None,
        };
        // Bytes still to send go out after the socket is dropped (as the kernel sends what its
        // buffer holds after a close): on a duplicate of the descriptor, since this one closes now.
        let dup = {
            let table = self.table.borrow();
            let s = &table.socks[self.key as usize];
            (s.unsent() && s.error.is_none()).then(|| fd.and_then(|fd| fd.try_clone_to_owned().ok())).flatten()
        };
        let mut table = self.table.borrow_mut();
        let s = &mut table.socks[self.key as usize];
        s.live = false;
        s.token = None;
        match dup {
            Some(dup) => {
                s.fd = dup.as_raw_fd();
                s.dup = Some(dup);
            }
            None => {
                // Nothing will use the number again: what is queued and not sent is dropped.
                s.queued.clear();
                if !s.sending {
                    s.inflight.clear();
                    s.sent = 0;
                }
                s.shutdown = None;
            }
        }
        table.schedule(self.key);
        table.maybe_free(self.key);
    }
}

impl Read for RingSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.with(|s, work| {
            let unread = s.unread();
            if unread > 0 {
                let n = unread.min(buf.len());
                buf[..n].copy_from_slice(&s.inbox[s.inbox_pos..s.inbox_pos + n]);
                s.inbox_pos += n;
                if s.inbox_pos == s.inbox.len() {
                    s.inbox.clear();
                    s.inbox_pos = 0;
                    if s.inbox.capacity() > 64 * 1024 {
                        s.inbox.shrink_to(BUF_SIZE);
                    }
                    if s.recv == RecvOp::Idle && !s.eof && s.error.is_none() {
                        // Stopped while the inbox was full: receive again.
                        work.schedule(s);
                    }
                }
                return Ok(n);
            }
            if let Some(e) = s.error {
                return Err(io::Error::from_raw_os_error(e));
            }
            if s.eof {
                return Ok(0);
            }
            Err(io::ErrorKind::WouldBlock.into())
        })
    }
}

impl Write for RingSocket {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.queue(data, false)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SocketIo for RingSocket {
    /// Shuts the side down once what is queued is sent (at once when nothing is).
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let later = self.with(|s, work| {
            if s.unsent() && s.error.is_none() {
                s.shutdown = Some(how);
                work.schedule(s);
                return true;
            }
            false
        });
        if later {
            return Ok(());
        }
        match &*self.inner {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
            _ => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    /// Queued like any write, sent with `MSG_MORE` (the file range follows in the same segments).
    fn write_more(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.queue(buf, true)
    }

    /// `sendfile(2)` once every queued byte is sent (before that `WouldBlock`: the send's
    /// completion is the writable event); a full socket is waited for with `POLLOUT`.
    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        let busy = self.with(|s, work| {
            if let Some(e) = s.error {
                return Err(io::Error::from_raw_os_error(e));
            }
            if s.unsent() {
                s.blocked = true;
                work.schedule(s);
                return Ok(true);
            }
            Ok(false)
        })?;
        if busy {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let result = match &mut *self.inner {
            Stream::Tcp(s) => s.send_file(file, offset, len),
            Stream::Unix(s) => s.send_file(file, offset, len),
            _ => Err(io::ErrorKind::Unsupported.into()),
        };
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.with(|s, work| {
                s.want_poll_out = true;
                work.schedule(s);
            });
        }
        result
    }
}

#[cfg(test)]
mod tests;
