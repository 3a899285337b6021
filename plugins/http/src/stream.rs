//! File bodies sent a send buffer at a time as the connection drains: by the host
//! (`Host::send_file`), or read by the plugin (from the page cache in the loop, from the disk on
//! the task pool).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use plugin_api::{ConnId, Host, SendFileError};

use crate::{Conn, Http};

/// A large body, sent as the connection drains (reading the connection is paused meanwhile, so
/// pipelined requests behind it are answered after it, in order).
#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) file: Arc<File>,
    pub(crate) parts: VecDeque<Part>,
    /// Close the connection after the last byte.
    pub(crate) close: bool,
    /// A read of the next part runs on the task pool: the pump waits for it.
    pub(crate) reading: bool,
}

/// A piece of a response body: bytes (a multipart head), or a byte range of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    Bytes(Vec<u8>),
    File { offset: u64, len: u64 },
}

impl Part {
    /// Bytes of the body it still holds.
    pub(crate) fn len(&self) -> u64 {
        match self {
            Part::Bytes(bytes) => bytes.len() as u64,
            Part::File { len, .. } => *len,
        }
    }
}

/// Bodies larger than this are streamed instead of read whole into one response.
pub(crate) const STREAM_AT: u64 = 256 * 1024;

/// Bytes read from a streamed file at a time, in the loop (from the page cache).
pub(crate) const STREAM_CHUNK: usize = 64 * 1024;

/// Bytes one read on the task pool takes at most (it reads from the disk: fewer, larger reads).
pub(crate) const TASK_READ_MAX: usize = 1024 * 1024;

/// The file shrank (or broke) under a streamed body: the length is promised, so the only honest
/// end is a closed connection.
pub(crate) fn end_early(host: &mut Host<'_>, conn: ConnId, c: &mut Conn) {
    let remaining = c.stream.as_ref().map_or(0, |s| s.parts.iter().map(Part::len).sum::<u64>());
    plugin_api::tracing::warn!(remaining, "streamed file ended early; closing");
    c.stream = None;
    c.state.closing = true;
    host.close(conn);
}

/// Reads what the page cache holds at `offset` into `buf`, without waiting for the disk
/// (`preadv2` with `RWF_NOWAIT`): `WouldBlock` when none of it is cached (or the kernel cannot
/// say: then `nowait` turns false and every later call answers `WouldBlock` at once).
pub fn read_cached(file: &File, buf: &mut [u8], offset: u64, nowait: &mut bool) -> io::Result<usize> {
    use rustix::io::{Errno, ReadWriteFlags};
    if !*nowait {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    loop {
        match rustix::io::preadv2(file, &mut [io::IoSliceMut::new(buf)], offset, ReadWriteFlags::NOWAIT) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
            // No RWF_NOWAIT here (an old kernel, a file system without it).
            Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
                *nowait = false;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A read on the task pool: up to `want` bytes at `offset` (fewer at the end of the file; none
/// when it failed, which ends the body early).
pub(crate) fn read_on_pool(file: &File, offset: u64, want: usize) -> Vec<u8> {
    let mut buf = vec![0; want];
    let mut done = 0;
    while done < want {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                plugin_api::tracing::warn!(error = %e, "could not read file");
                break;
            }
        }
    }
    buf.truncate(done);
    buf
}

impl Http {
    /// Sends the next part of a streamed body: up to the send buffer (the host then reports the
    /// connection full, and drained once it is written, which calls this again). What the page
    /// cache holds is read here; a read that would wait for the disk goes to the task pool, and
    /// its result (`on_task_done`) calls this again.
    pub(crate) fn pump(&mut self, host: &mut Host<'_>, conn: ConnId) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        let Some(stream) = c.stream.as_mut() else { return };
        if stream.reading {
            return;
        }
        // Below the window the host takes every send whole: nothing sent is ever refused.
        while host.pending_send(conn) < self.send_window {
            match stream.parts.front_mut() {
                None => break,
                Some(Part::Bytes(bytes)) => {
                    if !host.send(conn, bytes) {
                        return;
                    }
                    stream.parts.pop_front();
                }
                Some(Part::File { len: 0, .. }) => {
                    stream.parts.pop_front();
                }
                Some(&mut Part::File { offset, len }) if self.send_file => {
                    match host.send_file(conn, &stream.file, offset, len) {
                        Ok(()) => {
                            stream.parts.pop_front();
                        }
                        // An older host: read and send, as `file_io = "pool"` does.
                        Err(SendFileError::Unsupported) => self.send_file = false,
                        Err(SendFileError::BadFile | SendFileError::NotAStream) => return end_early(host, conn, c),
                        // Closed (or full, which the window rules out).
                        Err(_) => return,
                    }
                }
                Some(Part::File { offset, len }) => {
                    let left = usize::try_from(*len).unwrap_or(usize::MAX);
                    self.chunk.resize(left.min(STREAM_CHUNK), 0);
                    let read = match read_cached(&stream.file, &mut self.chunk, *offset, &mut self.nowait) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            let file = Arc::clone(&stream.file);
                            let (at, want) = (*offset, left.min(self.send_window.clamp(STREAM_CHUNK, TASK_READ_MAX)));
                            match host.spawn_task(move || read_on_pool(&file, at, want)) {
                                Ok(task) => {
                                    stream.reading = true;
                                    self.reads.insert(task, conn);
                                    return;
                                }
                                // No pool (an older host) or its queue is full: read here.
                                Err(_) => stream.file.read_at(&mut self.chunk, *offset),
                            }
                        }
                        other => other,
                    };
                    match read {
                        Ok(0) | Err(_) => return end_early(host, conn, c),
                        Ok(n) => {
                            if !host.send(conn, &self.chunk[..n]) {
                                return;
                            }
                            *offset += n as u64;
                            *len -= n as u64;
                        }
                    }
                }
            }
        }
        if stream.parts.is_empty() {
            let close = stream.close;
            c.stream = None;
            if let Some(log) = c.log.take() {
                self.log_pending(host, &log);
            }
            let Some(c) = self.conns.get_mut(conn) else { return };
            if close {
                c.state.closing = true;
                host.close(conn);
            } else {
                host.resume_recv(conn);
            }
            self.trim_buffers();
        }
    }
}
