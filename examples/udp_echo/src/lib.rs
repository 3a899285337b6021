//! Run: cargo build --release && target/release/host --plugin udp_echo --listen udp://127.0.0.1:5353
//! Try: echo hello | nc -u -q1 127.0.0.1 5353
//!
//! An echo for every transport. Over UDP (`--listen udp://ADDR:PORT`) each datagram is one
//! message (the host does no framing for datagrams) and the reply goes back to its sender as one
//! datagram; over TCP or a Unix socket (`--listen unix:/run/echo.sock`) each line is one message.
//! The message `whoami` is answered with what the host knows of the peer instead of an echo:
//! `uid=… gid=… pid=…` on a Unix socket (`Host::peer_cred`), `addr=IP:PORT` otherwise.
//!
//! It keeps no state: in a hand-over (a reload, `host upgrade`, a recycle) every UDP session
//! and stream connection moves to the new worker as it is (the host moves what it buffered),
//! and a peer's next datagram reaches its session there.
//!
//! No config keys.

use plugin_api::{export_plugin, ConnId, Frame, Host, Protocol, StateWriter, WorkerInfo};

pub struct UdpEcho;

/// What `whoami` answers about `conn` (without a newline).
pub fn whoami(host: &Host<'_>, conn: ConnId) -> String {
    if let Some(cred) = host.peer_cred(conn) {
        return format!("uid={} gid={} pid={}", cred.uid, cred.gid, cred.pid);
    }
    match host.peer_addr(conn) {
        Some(addr) => format!("addr={addr}"),
        None => "unknown".to_string(),
    }
}

impl Protocol for UdpEcho {
    /// Version 1: no state of its own (nothing is written per connection).
    const HANDOVER_VERSION: u32 = 1;

    fn new(_config: &str, _worker: &WorkerInfo) -> Result<Self, String> {
        Ok(UdpEcho)
    }

    /// Streams: one line. (Never called for datagrams: each one is a message.)
    fn input(&mut self, _host: &mut Host<'_>, _conn: ConnId, buf: &[u8]) -> Frame {
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => Frame::Complete(i + 1),
            None => Frame::NeedMore,
        }
    }

    fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, msg: &[u8]) {
        let line = msg.strip_suffix(b"\n").unwrap_or(msg);
        if line == b"whoami" {
            let answer = format!("{}\n", whoami(host, conn));
            host.send(conn, answer.as_bytes());
        } else {
            host.send(conn, msg);
        }
    }

    fn export_conn(&mut self, _host: &mut Host<'_>, _conn: ConnId, _out: &mut StateWriter<'_>) -> bool {
        true
    }

    fn adopt_conn(&mut self, _host: &mut Host<'_>, _conn: ConnId, version: u32, state: &[u8]) -> bool {
        version == Self::HANDOVER_VERSION && state.is_empty()
    }
}

export_plugin!(UdpEcho);
