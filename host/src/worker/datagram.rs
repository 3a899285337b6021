//! UDP services, after nginx stream's UDP sessions: the first datagram from a new peer opens a
//! session (a `ConnId`, `on_connect`), each datagram is one `on_message` (no `input` framing),
//! `send` sends one datagram back to that peer, `close` forgets the session (`on_close`), and an
//! idle session ends at the idle timeout (`on_conn_error(TIMEOUT)`, `on_close`) like a TCP
//! connection. Sessions count against the max connections. A datagram over the max package
//! size, and one for a session whose plugin paused receiving are dropped and counted
//! (`datagrams dropped` in `host status`).
//!
//! A full session table makes room rather than lock new peers out for a whole idle timeout (a
//! flood of datagrams with spoofed sources fills it at no cost): the sessions idle for at least
//! [`EVICTABLE_AFTER_MS`] are evicted, the longest idle first, an eighth of the table at a time
//! (one scan makes room for many new peers), each with `on_close` as at its idle timeout. Only
//! when every session was active within that time is the new peer's datagram dropped and counted.

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

/// A session idle for this long may be evicted when the table is full.
pub const EVICTABLE_AFTER_MS: u64 = 1_000;

/// A new peer: its session, announced to the plugin (None: over the limit and nothing to evict,
/// counted as a drop).
fn open_session(plugin: &mut RawPluginBox, core: &mut Core, peer: SocketAddr) -> Option<ConnId> {
    if core.len() >= core.limits.max_connections {
        evict_idle(plugin, core);
    }
    if core.len() >= core.limits.max_connections {
        core.stats.datagrams_dropped += 1;
        tracing::debug!(%peer, "UDP session limit reached, no session idle to evict; datagram dropped");
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

/// Closes the longest-idle sessions ([`to_evict`]); the plugin hears `on_close` for each.
fn evict_idle(plugin: &mut RawPluginBox, core: &mut Core) {
    let now = core.now_ms;
    let sessions: Vec<(ConnId, u64)> =
        core.sessions.values().filter_map(|&id| core.get(id).map(|c| (id, c.last_active_ms))).collect();
    let victims = to_evict(sessions, now, (core.limits.max_connections / 8).max(1));
    if !victims.is_empty() {
        tracing::debug!(evicted = victims.len(), "UDP session table full; the longest idle sessions evicted");
    }
    for id in victims {
        dispatch::close_now(plugin, core, id.index());
    }
}

/// Which of `sessions` (id, last activity) to evict at `now`: at most `want` of those idle for at
/// least [`EVICTABLE_AFTER_MS`], the longest idle first (pure, for the tests).
fn to_evict(mut sessions: Vec<(ConnId, u64)>, now: u64, want: usize) -> Vec<ConnId> {
    sessions.retain(|&(_, last)| now.saturating_sub(last) >= EVICTABLE_AFTER_MS);
    if sessions.len() > want {
        sessions.select_nth_unstable_by_key(want, |&(_, last)| last);
        sessions.truncate(want);
    }
    sessions.sort_by_key(|&(_, last)| last);
    sessions.into_iter().map(|(id, _)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_idle_sessions_go_first_and_recent_ones_stay() {
        let now = 100_000;
        let sessions = vec![
            (ConnId(1), now - 5_000),
            (ConnId(2), now - 10),
            (ConnId(3), now - 60_000),
            (ConnId(4), now - EVICTABLE_AFTER_MS),
            (ConnId(5), now - 20_000),
        ];
        assert_eq!(to_evict(sessions.clone(), now, 2), vec![ConnId(3), ConnId(5)]);
        assert_eq!(to_evict(sessions.clone(), now, 10), vec![ConnId(3), ConnId(5), ConnId(1), ConnId(4)]);
        // Every session active within the last second: nothing is evicted.
        assert!(to_evict(vec![(ConnId(1), now - 999), (ConnId(2), now)], now, 4).is_empty());
        assert!(to_evict(Vec::new(), now, 4).is_empty());
    }
}
