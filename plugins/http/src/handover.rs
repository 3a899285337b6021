//! The hand-over of the http plugin's connections (docs/plugins.md, "Hand-over"): what moves
//! with a connection to the replacement worker, beside what the host moves itself (unread input,
//! queued output, file ranges queued by `send_file`, pause and deadlines).
//!
//! State version [`STATE_VERSION`] = 1, little-endian, byte strings as `u32` length + bytes
//! (`http_proto::handover`):
//!
//! ```text
//! conn:    kind u8 (0: nothing received yet, 1: HTTP/1.x, 2: HTTP/2) · the kind's part
//! HTTP/1:  parser (http_proto::handover::write_conn_state) · body opt · log opt
//! HTTP/2:  connection (http_proto::h2::Connection::export) · streams u32 ·
//!          streams × (id u32 · body · pooled bytes · log opt)
//! body:    (opt: a presence byte) file · close-after u8 · parts u32 · parts × (0 · bytes | 1 ·
//!          offset u64 · len u64)
//! file:    path bytes · dev u64 · ino u64 · size u64 · mtime s i64 · mtime ns u32
//! log:     remote (0 | 4 · 4 bytes | 6 · 16 bytes) · request line bytes · referer opt ·
//!          user agent opt · status u16 · body u64
//! ```
//!
//! A file body in flight moves by name: the old worker reads its path from `/proc/self/fd`
//! and its identity from `fstat`; the new one opens the path and adopts the connection only if
//! it finds the same file (device, inode, size, mtime). Otherwise (renamed, replaced, deleted,
//! changed) the connection goes back to the old worker and its body finishes there.
//!
//! What stays and drains (the reason is in the worker's debug log): a connection that is
//! closing, a large request body being received in pieces, a file read running on the task
//! pool, an HTTP/2 stream whose request body is being received, an HTTP/2 connection that ended.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use http_proto::handover::{put_bytes, put_opt_bytes, read_conn_state, write_conn_state, Decline, Reader};
use plugin_api::{ConnId, Host};

use crate::h2conn::{H2Stream, H2};
use crate::log::PendingLog;
use crate::stream::{Part, Stream};
use crate::{Conn, Http};

/// The version of the format above.
pub(crate) const STATE_VERSION: u32 = 1;

const FRESH: u8 = 0;
const HTTP1: u8 = 1;
const HTTP2: u8 = 2;

impl Http {
    /// Writes `conn`'s state to `out`, or says why it stays.
    pub(crate) fn export_state(&self, conn: ConnId, out: &mut Vec<u8>) -> Result<(), Decline> {
        let Some(c) = self.conns.get(conn) else {
            out.push(FRESH);
            return Ok(());
        };
        if let Some(h2) = &c.h2 {
            out.push(HTTP2);
            return export_h2(h2, out);
        }
        if !c.http1 {
            out.push(FRESH);
            return Ok(());
        }
        out.push(HTTP1);
        write_conn_state(&c.state, out)?;
        match &c.stream {
            None => out.push(0),
            Some(stream) => {
                if stream.reading {
                    return Err("a file read runs on the task pool");
                }
                out.push(1);
                write_body(&stream.file, stream.close, &stream.parts, out)?;
            }
        }
        write_log(c.log.as_deref(), out);
        Ok(())
    }

    /// Sets up `conn` (an id of this worker) from what [`Http::export_state`] wrote.
    pub(crate) fn adopt_state(&mut self, host: &mut Host<'_>, conn: ConnId, state: &[u8]) -> Result<(), String> {
        let mut r = Reader(state);
        let c = match r.u8()? {
            FRESH => Conn::default(),
            HTTP1 => {
                let state = read_conn_state(&mut r)?;
                let stream = match r.bool()? {
                    false => None,
                    true => {
                        let (file, close, parts) = read_body(&mut r)?;
                        Some(Stream { file, parts, close, reading: false })
                    }
                };
                let log = read_log(&mut r)?;
                Conn { state: Box::new(state), stream, log, h2: None, http1: true }
            }
            HTTP2 => {
                let h2 = adopt_h2(&mut r, host.now_ms())?;
                Conn { h2: Some(Box::new(h2)), ..Conn::default() }
            }
            other => return Err(format!("unknown connection kind {other}")),
        };
        r.end()?;
        self.conns.insert(conn, c);
        Ok(())
    }
}

fn export_h2(h2: &H2, out: &mut Vec<u8>) -> Result<(), Decline> {
    h2.conn.export(out)?;
    out.extend_from_slice(&(h2.streams.len() as u32).to_le_bytes());
    for (&id, s) in &h2.streams {
        if s.request.is_some() {
            return Err("an HTTP/2 request body is being received");
        }
        if s.reading {
            return Err("a file read runs on the task pool");
        }
        out.extend_from_slice(&id.to_le_bytes());
        match &s.sending {
            None => out.push(0),
            Some((file, parts)) => {
                out.push(1);
                write_body(file, false, parts, out)?;
            }
        }
        let (a, b) = s.pooled.as_slices();
        out.extend_from_slice(&((a.len() + b.len()) as u32).to_le_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b);
        write_log(s.log.as_deref(), out);
    }
    Ok(())
}

fn adopt_h2(r: &mut Reader<'_>, now: u64) -> Result<H2, String> {
    let conn = http_proto::h2::Connection::adopt(r, now)?;
    let mut h2 = H2::adopted(conn);
    let count = r.u32()?;
    let mut streams = BTreeMap::new();
    for _ in 0..count {
        let id = r.u32()?;
        let sending = match r.bool()? {
            false => None,
            true => {
                let (file, _, parts) = read_body(r)?;
                Some((file, parts))
            }
        };
        let pooled: VecDeque<u8> = r.bytes()?.iter().copied().collect();
        let log = read_log(r)?;
        if streams.insert(id, H2Stream { sending, pooled, log, ..H2Stream::default() }).is_some() {
            return Err(format!("stream {id} twice"));
        }
    }
    h2.streams = streams;
    Ok(h2)
}

fn write_body(file: &File, close: bool, parts: &VecDeque<Part>, out: &mut Vec<u8>) -> Result<(), Decline> {
    let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| "the streamed file's path cannot be read")?;
    let meta = file.metadata().map_err(|_| "the streamed file cannot be examined")?;
    let path = path.as_os_str().as_bytes();
    if path.ends_with(b" (deleted)") || path.first() != Some(&b'/') {
        return Err("the streamed file has no path any more");
    }
    put_bytes(out, path);
    for n in [meta.dev(), meta.ino(), meta.size()] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(&meta.mtime().to_le_bytes());
    out.extend_from_slice(&(meta.mtime_nsec() as u32).to_le_bytes());
    out.push(close as u8);
    out.extend_from_slice(&(parts.len() as u32).to_le_bytes());
    for part in parts {
        match part {
            Part::Bytes(bytes) => {
                out.push(0);
                put_bytes(out, bytes);
            }
            Part::File { offset, len } => {
                out.push(1);
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
            }
        }
    }
    Ok(())
}

fn read_body(r: &mut Reader<'_>) -> Result<(Arc<File>, bool, VecDeque<Part>), String> {
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(r.bytes()?));
    let (dev, ino, size, mtime, mtime_ns) = (r.u64()?, r.u64()?, r.u64()?, r.i64()?, r.u32()?);
    let close = r.bool()?;
    let count = r.u32()?;
    let mut parts = VecDeque::new();
    for _ in 0..count {
        let part = match r.u8()? {
            0 => Part::Bytes(r.bytes()?.to_vec()),
            1 => {
                let (offset, len) = (r.u64()?, r.u64()?);
                if offset.checked_add(len).is_none_or(|end| end > size) {
                    return Err(format!("a range {offset}+{len} past the file's {size} bytes"));
                }
                Part::File { offset, len }
            }
            other => return Err(format!("unknown body part {other}")),
        };
        parts.push_back(part);
    }
    let file = File::open(path).map_err(|e| format!("could not open {}: {e}", path.display()))?;
    let meta = file.metadata().map_err(|e| format!("could not examine {}: {e}", path.display()))?;
    let same = (meta.dev(), meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec() as u32)
        == (dev, ino, size, mtime, mtime_ns);
    if !same {
        return Err(format!("{} is not the file being sent any more", path.display()));
    }
    Ok((Arc::new(file), close, parts))
}

fn write_log(log: Option<&PendingLog>, out: &mut Vec<u8>) {
    let Some(log) = log else {
        out.push(0);
        return;
    };
    out.push(1);
    match log.remote {
        None => out.push(0),
        Some(IpAddr::V4(a)) => {
            out.push(4);
            out.extend_from_slice(&a.octets());
        }
        Some(IpAddr::V6(a)) => {
            out.push(6);
            out.extend_from_slice(&a.octets());
        }
    }
    put_bytes(out, &log.request_line);
    put_opt_bytes(out, log.referer.as_deref());
    put_opt_bytes(out, log.user_agent.as_deref());
    out.extend_from_slice(&log.status.to_le_bytes());
    out.extend_from_slice(&log.body.to_le_bytes());
}

fn read_log(r: &mut Reader<'_>) -> Result<Option<Box<PendingLog>>, String> {
    if !r.bool()? {
        return Ok(None);
    }
    let remote = match r.u8()? {
        0 => None,
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(r.take(4)?).expect("4 bytes"))),
        6 => Some(IpAddr::from(<[u8; 16]>::try_from(r.take(16)?).expect("16 bytes"))),
        other => return Err(format!("unknown address kind {other}")),
    };
    Ok(Some(Box::new(PendingLog {
        remote,
        request_line: r.bytes()?.to_vec(),
        referer: r.opt_bytes()?.map(<[u8]>::to_vec),
        user_agent: r.opt_bytes()?.map(<[u8]>::to_vec),
        status: r.u16()?,
        body: r.u64()?,
    })))
}

#[cfg(test)]
#[path = "handover_tests.rs"]
mod tests;
