//! UDP services, after nginx stream's UDP sessions: the first datagram from a new peer opens a
//! session (a `ConnId`, `on_connect`), each datagram is one `on_message` (no `input` framing),
//! `send` sends one datagram back to that peer, `close` forgets the session (`on_close`), and an
//! idle session ends at the idle timeout (`on_conn_error(TIMEOUT)`, `on_close`) like a TCP
//! connection. Sessions count against the max connections. A datagram over the max package
//! size, one that would open a session over the limit, and one for a session whose plugin
//! paused receiving are dropped and counted (`datagrams dropped` in `host status`).

use std::io;
use std::net::SocketAddr;

use plugin_api::abi::RawPluginBox;
use plugin_api::ConnId;

use super::core::Core;
use super::dispatch;
use super::transport::{Stream, Transport};

/// Datagrams read per loop turn at most (the rest next turn: a flood never starves the rest).
pub const BATCH: usize = 256;

/// Reads and dispatches up to [`BATCH`] datagrams; true when the socket may hold more.
pub fn receive(plugin: &mut RawPluginBox, core: &mut Core, buf: &mut [u8]) -> bool {
    for _ in 0..BATCH {
        let Some(udp) = core.udp.as_ref() else { return false };
        let (n, peer) = match udp.recv_from(buf) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // An ICMP error for an earlier reply (ECONNREFUSED…): the next datagram is fine.
            Err(e) => {
                tracing::debug!("UDP receive: {e}");
                continue;
            }
        };
        if n > core.limits.max_package_size {
            core.stats.datagrams_dropped += 1;
            tracing::debug!(%peer, len = n, max = core.limits.max_package_size, "datagram over the max package size dropped");
            continue;
        }
        let id = match core.sessions.get(&peer) {
            Some(id) => *id,
            None => match open_session(plugin, core, peer) {
                Some(id) => id,
                None => continue,
            },
        };
        dispatch::datagram(plugin, core, id, &buf[..n]);
    }
    true
}

/// A new peer: its session, announced to the plugin (None: over the limit, counted as a drop).
fn open_session(plugin: &mut RawPluginBox, core: &mut Core, peer: SocketAddr) -> Option<ConnId> {
    if core.len() >= core.limits.max_connections {
        core.stats.datagrams_dropped += 1;
        tracing::debug!(%peer, "UDP session limit reached; datagram dropped");
        return None;
    }
    let id = core.reserve_id();
    if let Err(e) = core.place(id, Transport::plain(Stream::Datagram(peer)), None) {
        core.release_id(id);
        tracing::warn!(%peer, "could not open a UDP session: {e}");
        return None;
    }
    core.sessions.insert(peer, id);
    core.stats.accepted += 1;
    dispatch::connect(plugin, core, id);
    Some(id)
}
