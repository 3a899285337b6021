//! Run: cargo build --release && target/release/host --plugin chat --listen 127.0.0.1:7000 --count 4
//! Try: `nc 127.0.0.1 7000` in two terminals, and type.
//!
//! A line-based chat room across every worker: a line from a client reaches every other client
//! of the service, whichever worker it is on. The worker that reads a line sends it to its own
//! clients and broadcasts it to the other workers ([`Host::broadcast`]), which send it to theirs
//! ([`Protocol::on_worker_message`]). A heartbeat timer (once a second) closes clients idle for
//! longer than `idle_timeout_s`.
//!
//! Lines (up to 4096 bytes; a longer one closes the connection):
//! - `TEXT`: to every other client, as it is.
//! - `/whoami`: answers `slot N pid P` (which worker the client is on).
//! - `/to SLOT TEXT`: `TEXT` to the clients of the worker serving `SLOT` only
//!   ([`Host::send_to_worker`]); answers `! dropped` when no worker took it.
//!
//! A draining worker (graceful reload or stop) keeps its clients until they leave or the drain
//! timeout: the room goes on across a reload.
//!
//! Config (`[service.config]`, TOML): `idle_timeout_s` (60).

use std::time::Duration;

use plugin_api::{export_plugin, ConnId, ConnMap, Frame, Host, Protocol, WorkerInfo};
use serde::Deserialize;

/// The longest line.
pub const MAX_LINE: usize = 4096;

/// Messages between workers: a byte for the kind, then the line (with its newline).
const ROOM: u8 = b'R';
const DIRECT: u8 = b'D';

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_idle")]
    idle_timeout_s: u64,
}

fn default_idle() -> u64 {
    60
}

pub struct Chat {
    /// Each client's last activity (the worker's clock, ms).
    clients: ConnMap<u64>,
    ids: Vec<ConnId>,
    idle_ms: u64,
    pid: u32,
}

/// Where the next line ends in `buf`: its length with the newline.
pub fn line_length(buf: &[u8]) -> Frame {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) if i < MAX_LINE => Frame::Complete(i + 1),
        Some(_) => Frame::Invalid,
        None if buf.len() >= MAX_LINE => Frame::Invalid,
        None => Frame::NeedMore,
    }
}

impl Chat {
    /// Sends `line` to every client of this worker but `except`.
    fn send_local(&self, host: &mut Host<'_>, line: &[u8], except: Option<ConnId>) {
        for &c in &self.ids {
            if Some(c) != except {
                host.send(c, line);
            }
        }
    }
}

impl Protocol for Chat {
    fn new(config: &str, worker: &WorkerInfo) -> Result<Self, String> {
        let config: Config = toml::from_str(config).map_err(|e| format!("chat config: {e}"))?;
        Ok(Chat { clients: ConnMap::new(), ids: Vec::new(), idle_ms: config.idle_timeout_s * 1000, pid: worker.pid })
    }

    fn on_worker_start(&mut self, host: &mut Host<'_>) -> Result<(), String> {
        host.add_interval(Duration::from_secs(1), 0);
        Ok(())
    }

    fn on_connect(&mut self, host: &mut Host<'_>, conn: ConnId) {
        self.clients.insert(conn, host.now_ms());
        self.ids.push(conn);
    }

    fn input(&mut self, _host: &mut Host<'_>, _conn: ConnId, buf: &[u8]) -> Frame {
        line_length(buf)
    }

    fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, msg: &[u8]) {
        self.clients.insert(conn, host.now_ms());
        let text = msg.strip_suffix(b"\n").unwrap_or(msg);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text == b"/whoami" {
            let answer = format!("slot {} pid {}\n", host.slot(), self.pid);
            host.send(conn, answer.as_bytes());
        } else if let Some(rest) = text.strip_prefix(b"/to ") {
            let (slot, body) = match rest.iter().position(|&b| b == b' ') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b""[..]),
            };
            let slot = std::str::from_utf8(slot).ok().and_then(|s| s.parse::<u32>().ok());
            let mut out = vec![DIRECT];
            out.extend_from_slice(body);
            out.push(b'\n');
            let sent = match slot {
                Some(s) if s == host.slot() => {
                    self.send_local(host, &out[1..], Some(conn));
                    true
                }
                Some(s) => host.send_to_worker(s, &out).is_ok(),
                None => false,
            };
            if !sent {
                host.send(conn, b"! dropped\n");
            }
        } else {
            let mut out = Vec::with_capacity(text.len() + 2);
            out.push(ROOM);
            out.extend_from_slice(text);
            out.push(b'\n');
            self.send_local(host, &out[1..], Some(conn));
            if let Err(e) = host.broadcast(&out) {
                plugin_api::tracing::warn!("chat: broadcast failed: {e}");
            }
        }
    }

    fn on_worker_message(&mut self, host: &mut Host<'_>, _from_slot: u32, msg: &[u8]) {
        if let Some((&kind, line)) = msg.split_first() {
            if kind == ROOM || kind == DIRECT {
                self.send_local(host, line, None);
            }
        }
    }

    fn on_close(&mut self, _host: &mut Host<'_>, conn: ConnId) {
        self.clients.remove(conn);
        self.ids.retain(|&c| c != conn);
    }

    /// The heartbeat: closes clients idle for too long.
    fn on_timer(&mut self, host: &mut Host<'_>, _timer: plugin_api::TimerId, _data: u64) {
        let now = host.now_ms();
        for &c in &self.ids {
            if self.clients.get(c).is_some_and(|&last| now.saturating_sub(last) >= self.idle_ms) {
                host.close_with(c, b"! idle, bye\n");
            }
        }
    }

    /// Keeps the client: the room goes on while the worker drains (until the drain timeout).
    fn on_drain(&mut self, _host: &mut Host<'_>, _conn: ConnId) {}
}

export_plugin!(Chat);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_framed_and_bounded() {
        assert_eq!(line_length(b"hi\nmore"), Frame::Complete(3));
        assert_eq!(line_length(b"partial"), Frame::NeedMore);
        assert_eq!(line_length(&vec![b'x'; MAX_LINE]), Frame::Invalid);
        let mut long = vec![b'x'; MAX_LINE];
        long.push(b'\n');
        assert_eq!(line_length(&long), Frame::Invalid);
    }

    #[test]
    fn config_defaults_and_refuses_unknown_keys() {
        let info = WorkerInfo {
            service: "chat".into(),
            slot: 0,
            pid: 1,
            max_package_size: 1 << 20,
            max_send_buffer: 1 << 20,
            worker_count: Some(1),
        };
        assert_eq!(Chat::new("", &info).unwrap().idle_ms, 60_000);
        assert_eq!(Chat::new("idle_timeout_s = 5", &info).unwrap().idle_ms, 5_000);
        assert!(Chat::new("idle = 5", &info).is_err());
    }
}
