//! A socket the unit tests play: bytes the test puts in are read, what is written is kept, and
//! the test decides how much the socket takes before it is full and when the peer closes. Shared
//! (`Rc`) between the connection that owns it and the test that drives it.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::FileExt;
use std::rc::Rc;

use super::transport::SocketIo;

#[derive(Debug, Default)]
pub struct FakeState {
    /// Bytes the peer sent that were not read yet.
    pub incoming: Vec<u8>,
    /// The peer closed its sending side: a read past `incoming` gives 0.
    pub peer_closed: bool,
    /// Everything written, in order.
    pub written: Vec<u8>,
    /// The size of each write that took bytes (to see batching).
    pub writes: Vec<usize>,
    /// Bytes the socket still takes before it is full (`WouldBlock`).
    pub room: usize,
    /// Our sending side is shut down.
    pub shut_write: bool,
}

/// One end of a fake connection; clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct FakeSocket(pub Rc<RefCell<FakeState>>);

impl FakeSocket {
    /// A socket that takes `room` bytes before it is full.
    pub fn with_room(room: usize) -> Self {
        let s = FakeSocket::default();
        s.0.borrow_mut().room = room;
        s
    }

    /// The peer sends `bytes`.
    pub fn peer_sends(&self, bytes: &[u8]) {
        self.0.borrow_mut().incoming.extend_from_slice(bytes);
    }

    /// The peer reads: the socket takes `room` more bytes.
    pub fn peer_reads(&self, room: usize) {
        self.0.borrow_mut().room += room;
    }

    pub fn written(&self) -> Vec<u8> {
        self.0.borrow().written.clone()
    }

    fn absorb(&self, data: &[u8]) -> io::Result<usize> {
        let mut s = self.0.borrow_mut();
        if s.shut_write {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = data.len().min(s.room);
        if n == 0 && !data.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        s.room -= n;
        s.written.extend_from_slice(&data[..n]);
        if n > 0 {
            s.writes.push(n);
        }
        Ok(n)
    }
}

impl Read for FakeSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.0.borrow_mut();
        if s.incoming.is_empty() {
            return if s.peer_closed { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
        }
        let n = buf.len().min(s.incoming.len());
        buf[..n].copy_from_slice(&s.incoming[..n]);
        s.incoming.drain(..n);
        Ok(n)
    }
}

impl Write for FakeSocket {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.absorb(data)
    }

    /// As `writev(2)`: one write of the slices in order, as much as the socket takes.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.absorb(&bufs.iter().flat_map(|b| b.iter().copied()).collect::<Vec<u8>>())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SocketIo for FakeSocket {
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            self.0.borrow_mut().shut_write = true;
        }
        Ok(())
    }

    fn write_more(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.absorb(buf)
    }

    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        let room = self.0.borrow().room;
        if room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut buf = vec![0; len.min(room)];
        let n = file.read_at(&mut buf, offset)?;
        self.absorb(&buf[..n])
    }
}
