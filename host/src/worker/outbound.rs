//! Outbound connections (`RawHost::connect`): a non-blocking connect registered in the worker's
//! loop (writable, then `take_error`), host names resolved on a helper thread that wakes the
//! loop, connect deadlines. Once connected, an outbound connection is an ordinary [`Conn`] of
//! the core: the same framing, output, pausing and timeouts as an accepted one.
//!
//! [`Conn`]: super::core::Conn

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};

use mio::{Registry, Token, Waker};
use plugin_api::abi::{ConnErrorCode, RawPluginBox};
use plugin_api::ConnId;

use super::core::Core;
use super::dispatch;

/// How long a connect may take when the plugin does not say.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;

/// The token of the resolver's waker (below `CONN_TOKEN_BASE`).
pub const RESOLVER: Token = Token(4);

/// What a plugin asked to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Addr(SocketAddr),
    Name(String, u16),
}

/// `ip:port`, `[ipv6]:port` or `name:port`.
pub fn parse_target(addr: &str) -> Option<Target> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Some(Target::Addr(a));
    }
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
    if host.is_empty() || host.len() > 253 || !host.chars().all(valid) {
        return None;
    }
    Some(Target::Name(host.to_string(), port))
}

/// The code a plugin hears for a connect that failed with `e`.
pub fn error_code(e: &io::Error) -> ConnErrorCode {
    match e.raw_os_error() {
        Some(nix::libc::ECONNREFUSED) => ConnErrorCode::CONNECT_REFUSED,
        Some(nix::libc::ETIMEDOUT) => ConnErrorCode::CONNECT_TIMEOUT,
        _ => ConnErrorCode::IO,
    }
}

/// An outbound connection with an id and no socket yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub id: ConnId,
    pub deadline_ms: u64,
    pub state: PendingState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingState {
    /// Its name is with the resolver.
    Resolving,
    /// It failed before it had a socket; the plugin hears it next turn.
    Failed(ConnErrorCode),
    /// The plugin closed it; it hears `on_close` next turn.
    Cancelled,
}

/// The plugin closes a connection that has no socket yet: true when `id` was one.
pub fn cancel_pending(core: &mut Core, id: ConnId) -> bool {
    match core.pending.iter_mut().find(|p| p.id == id) {
        Some(p) => {
            p.state = PendingState::Cancelled;
            true
        }
        None => false,
    }
}

type Resolved = (ConnId, io::Result<Vec<SocketAddr>>);

/// A thread that resolves names with the system's resolver (`getaddrinfo`, which blocks), so
/// the loop never does; it wakes the loop when an answer is ready. It ends when the worker
/// drops it.
pub struct Resolver {
    requests: Sender<(ConnId, String, u16)>,
    answers: Arc<Mutex<Vec<Resolved>>>,
}

impl Resolver {
    pub fn start(registry: &Registry) -> io::Result<Resolver> {
        let waker = Waker::new(registry, RESOLVER)?;
        let (requests, rx) = mpsc::channel::<(ConnId, String, u16)>();
        let answers = Arc::new(Mutex::new(Vec::new()));
        let out = Arc::clone(&answers);
        std::thread::Builder::new().name("host-resolver".into()).spawn(move || {
            for (id, host, port) in rx {
                let result = (host.as_str(), port).to_socket_addrs().map(Iterator::collect);
                out.lock().unwrap_or_else(|e| e.into_inner()).push((id, result));
                let _ = waker.wake();
            }
        })?;
        Ok(Resolver { requests, answers })
    }

    pub fn resolve(&mut self, id: ConnId, host: String, port: u16) {
        // The thread only ends when this sender is dropped: a send cannot fail.
        let _ = self.requests.send((id, host, port));
    }

    fn take_answers(&self) -> Vec<Resolved> {
        std::mem::take(&mut *self.answers.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The loop's resolver waker fired: connect the names that resolved.
pub fn resolved(core: &mut Core) {
    let Some(resolver) = core.resolver.as_ref() else { return };
    for (id, result) in resolver.take_answers() {
        let Some(i) = core.pending.iter().position(|p| p.id == id) else { continue };
        let pending = core.pending[i];
        if pending.state != PendingState::Resolving {
            continue;
        }
        let addrs = match result {
            Ok(addrs) if !addrs.is_empty() => addrs,
            Ok(_) | Err(_) => {
                tracing::debug!(conn = id.0, "could not resolve: {result:?}");
                core.pending[i].state = PendingState::Failed(ConnErrorCode::IO);
                continue;
            }
        };
        core.pending.swap_remove(i);
        let mut addrs = addrs.into_iter();
        let mut last = None;
        for addr in addrs.by_ref() {
            match core.start_connect(id, addr, pending.deadline_ms) {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => core.pending.push(Pending { state: PendingState::Failed(error_code(&e)), ..pending }),
            None if addrs.len() > 0 => core.fallbacks.push((id, addrs.rev().collect())),
            None => {}
        }
    }
}

/// Readiness of an outbound connection whose connect is under way: established (the plugin
/// hears `on_connect`), failed (`on_conn_error`, `on_close`), or not yet (a spurious wake-up).
/// True once it is established, so that the caller reads what may already have arrived.
pub fn connect_ready(plugin: &mut RawPluginBox, core: &mut Core, index: usize) -> bool {
    let now = core.now_ms;
    let Some(c) = core.by_index(index) else { return false };
    let id = c.id;
    let outcome = match c.stream.take_error() {
        Ok(Some(e)) | Err(e) => Err(e),
        Ok(None) => match c.stream.peer_addr() {
            Ok(peer) => Ok(Some(peer)),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(None),
            Err(e) => Err(e),
        },
    };
    match outcome {
        Ok(None) => false,
        Ok(Some(peer)) => {
            core.fallbacks.retain(|(f, _)| *f != id);
            let c = core.by_index(index).expect("checked above");
            c.peer = Some(peer);
            c.local = c.stream.local_addr().ok();
            c.connecting_until_ms = None;
            c.readable = true;
            c.last_active_ms = now;
            if let Err(e) = core.set_write_interest(index, false) {
                tracing::debug!(conn = id.0, "could not register the connection: {e}");
                dispatch::connect_failed(plugin, core, id, ConnErrorCode::IO);
                return false;
            }
            dispatch::connect(plugin, core, id);
            true
        }
        Err(e) => {
            tracing::debug!(conn = id.0, "connect failed: {e}");
            if !try_next_address(core, id) {
                dispatch::connect_failed(plugin, core, id, error_code(&e));
            }
            false
        }
    }
}

/// A name resolved to several addresses and the one tried failed: tries the next (same id,
/// same deadline). False when none is left.
fn try_next_address(core: &mut Core, id: ConnId) -> bool {
    let Some(i) = core.fallbacks.iter().position(|(f, _)| *f == id) else { return false };
    while let Some(addr) = core.fallbacks[i].1.pop() {
        match core.restart_connect(id, addr) {
            Ok(()) => return true,
            Err(e) => tracing::debug!(conn = id.0, %addr, "connect failed at once: {e}"),
        }
    }
    core.fallbacks.swap_remove(i);
    false
}

/// Reports pending connections that failed or were closed, and times out connects past their
/// deadline. Run once a loop turn.
pub fn expire(plugin: &mut RawPluginBox, core: &mut Core) {
    let now = core.now_ms;
    let mut i = 0;
    while i < core.pending.len() {
        let p = core.pending[i];
        let code = match p.state {
            PendingState::Resolving if now >= p.deadline_ms => Some(ConnErrorCode::CONNECT_TIMEOUT),
            PendingState::Resolving => {
                i += 1;
                continue;
            }
            PendingState::Failed(code) => Some(code),
            PendingState::Cancelled => None,
        };
        core.pending.swap_remove(i);
        core.release_id(p.id);
        dispatch::pending_closed(plugin, core, p.id, code);
    }
    if core.connecting.is_empty() {
        return;
    }
    let mut connecting = std::mem::take(&mut core.connecting);
    connecting.retain(|&id| {
        let Some(until) = core.get(id).and_then(|c| c.connecting_until_ms) else {
            return false;
        };
        if now < until {
            return true;
        }
        tracing::debug!(conn = id.0, "connect timed out");
        dispatch::connect_failed(plugin, core, id, ConnErrorCode::CONNECT_TIMEOUT);
        false
    });
    // Connects the plugin started in those callbacks were added meanwhile.
    connecting.append(&mut core.connecting);
    core.connecting = connecting;
    if !core.fallbacks.is_empty() {
        let mut fallbacks = std::mem::take(&mut core.fallbacks);
        fallbacks.retain(|(id, _)| core.get(*id).is_some_and(|c| c.connecting_until_ms.is_some()));
        core.fallbacks = fallbacks;
    }
}

/// When [`expire`] has work next: now for failures to report, else the nearest deadline.
pub fn next_deadline(core: &Core) -> Option<u64> {
    let pending = core.pending.iter().map(|p| match p.state {
        PendingState::Resolving => p.deadline_ms,
        PendingState::Failed(_) | PendingState::Cancelled => 0,
    });
    let connecting = core.connecting.iter().filter_map(|&id| core.get(id)?.connecting_until_ms);
    pending.chain(connecting).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_addresses_or_names_with_a_port() {
        assert_eq!(parse_target("127.0.0.1:9001"), Some(Target::Addr("127.0.0.1:9001".parse().unwrap())));
        assert_eq!(parse_target("[::1]:80"), Some(Target::Addr("[::1]:80".parse().unwrap())));
        assert_eq!(parse_target("localhost:8080"), Some(Target::Name("localhost".into(), 8080)));
        for bad in ["", "localhost", "localhost:", ":80", "host:99999", "a b:80", "::1:80x", "[::1]"] {
            assert_eq!(parse_target(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn refusals_and_timeouts_have_their_own_codes() {
        let code = |errno| error_code(&io::Error::from_raw_os_error(errno));
        assert_eq!(code(nix::libc::ECONNREFUSED), ConnErrorCode::CONNECT_REFUSED);
        assert_eq!(code(nix::libc::ETIMEDOUT), ConnErrorCode::CONNECT_TIMEOUT);
        assert_eq!(code(nix::libc::ENETUNREACH), ConnErrorCode::IO);
    }
}
