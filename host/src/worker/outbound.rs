//! Outbound connections (`RawHost::connect`): what a plugin may connect to, the connections that
//! have an id and no socket yet, the resolver thread, and the events the loop tells the plugin.
//! The table's side (connecting, readiness, deadlines) is `core/connect.rs`; once connected, an
//! outbound connection is an ordinary connection of the table: the same framing, output,
//! pausing and timeouts as an accepted one. Nothing here calls the plugin.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};

use mio::{Registry, Token, Waker};
use plugin_api::abi::ConnErrorCode;
use plugin_api::ConnId;

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

/// What became of an outbound connection, for the loop to tell the plugin (`dispatch::outbound`):
/// the table decides, the loop calls the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundEvent {
    /// Established: the plugin hears `on_connect`, then what already arrived is read (`index`).
    Connected { id: ConnId, index: usize },
    /// Its connect failed (or timed out): `on_conn_error(code)`, then `on_close`.
    Failed { id: ConnId, code: ConnErrorCode },
    /// Gone before it had a socket: `on_conn_error(code)` when it failed (None: the plugin
    /// closed it), then `on_close`.
    Gone { id: ConnId, code: Option<ConnErrorCode> },
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

    pub fn take_answers(&self) -> Vec<Resolved> {
        std::mem::take(&mut *self.answers.lock().unwrap_or_else(|e| e.into_inner()))
    }
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
