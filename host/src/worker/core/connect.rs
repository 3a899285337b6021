//! The table's side of outbound connections (`RawHost::connect`): a non-blocking connect
//! registered in the worker's loop (writable, then `take_error`), names handed to the resolver
//! thread, addresses tried in turn, connect deadlines. Each step returns what became of the
//! connection as an [`OutboundEvent`]; the loop tells the plugin (`dispatch::outbound`).

use std::io;
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Interest, Token};
use plugin_api::abi::{ConnErrorCode, ConnectErrorCode};
use plugin_api::ConnId;

use super::super::outbound::{
    self, error_code, OutboundEvent, Pending, PendingState, Resolver, Target, DEFAULT_CONNECT_TIMEOUT_MS,
};
use super::super::phase::ConnPhase;
use super::super::transport::Transport;
use super::{Core, CONN_TOKEN_BASE};

impl Core {
    /// `RawHost::connect`: an IP address starts connecting now, a name goes to the resolver;
    /// either way the id is the plugin's at once.
    pub fn connect(&mut self, addr: &str, timeout_ms: u64) -> Result<ConnId, ConnectErrorCode> {
        let target = outbound::parse_target(addr).ok_or(ConnectErrorCode::INVALID_ADDRESS)?;
        if self.len() >= self.limits.max_connections {
            return Err(ConnectErrorCode::LIMIT);
        }
        let timeout_ms = if timeout_ms == 0 { DEFAULT_CONNECT_TIMEOUT_MS } else { timeout_ms };
        let deadline_ms = self.now_ms.saturating_add(timeout_ms);
        let id = self.reserve_id();
        match target {
            Target::Addr(addr) => match self.start_connect(id, addr, deadline_ms) {
                Ok(()) => {}
                Err(e) => {
                    tracing::debug!(conn = id.0, %addr, "connect failed at once: {e}");
                    self.pending.push(Pending { id, deadline_ms, state: PendingState::Failed(error_code(&e)) });
                }
            },
            Target::Name(host, port) => {
                let resolver = match self.resolver.as_mut() {
                    Some(r) => r,
                    None => match Resolver::start(&self.registry) {
                        Ok(r) => self.resolver.insert(r),
                        Err(e) => {
                            tracing::warn!("could not start the name resolver: {e}");
                            self.release_id(id);
                            return Err(ConnectErrorCode::IO);
                        }
                    },
                };
                resolver.resolve(id, host, port);
                self.pending.push(Pending { id, deadline_ms, state: PendingState::Resolving });
            }
        }
        Ok(id)
    }

    /// Opens the socket of reserved `id` and starts its non-blocking connect.
    fn start_connect(&mut self, id: ConnId, addr: SocketAddr, deadline_ms: u64) -> io::Result<()> {
        // Outbound connections are plain TCP (the host terminates TLS for accepted ones only).
        let stream = Transport::plain(TcpStream::connect(addr)?);
        self.place(id, stream, Some(deadline_ms))?;
        self.connecting.push(id);
        Ok(())
    }

    /// Connects the connecting `id` to `addr` instead, on a new socket (the address it tried
    /// refused).
    fn restart_connect(&mut self, id: ConnId, addr: SocketAddr) -> io::Result<()> {
        let mut stream = Transport::plain(TcpStream::connect(addr)?);
        let index = id.index();
        let Some(Some(c)) = self.conns.get_mut(index).map(|c| c.as_mut().filter(|c| c.id == id)) else {
            return Err(io::ErrorKind::NotFound.into());
        };
        let token = Token(index + CONN_TOKEN_BASE);
        let _ = self.registry.deregister(&mut c.stream);
        self.registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        let _ = stream.set_nodelay(true);
        c.local = stream.local_addr().ok();
        c.stream = stream;
        c.sched.write_interest = true;
        Ok(())
    }

    /// The plugin closes a connection that has no socket yet: true when `id` was one.
    pub fn cancel_pending(&mut self, id: ConnId) -> bool {
        match self.pending.iter_mut().find(|p| p.id == id) {
            Some(p) => {
                p.state = PendingState::Cancelled;
                true
            }
            None => false,
        }
    }

    /// The loop's resolver waker fired: connect the names that resolved (a failure is reported
    /// by [`Core::expire_outbound`]).
    pub fn resolved(&mut self) {
        let Some(resolver) = self.resolver.as_ref() else { return };
        for (id, result) in resolver.take_answers() {
            let Some(i) = self.pending.iter().position(|p| p.id == id) else { continue };
            let pending = self.pending[i];
            if pending.state != PendingState::Resolving {
                continue;
            }
            let addrs = match result {
                Ok(addrs) if !addrs.is_empty() => addrs,
                Ok(_) | Err(_) => {
                    tracing::debug!(conn = id.0, "could not resolve: {result:?}");
                    self.pending[i].state = PendingState::Failed(ConnErrorCode::IO);
                    continue;
                }
            };
            self.pending.swap_remove(i);
            let mut addrs = addrs.into_iter();
            let mut last = None;
            for addr in addrs.by_ref() {
                match self.start_connect(id, addr, pending.deadline_ms) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            match last {
                Some(e) => self.pending.push(Pending { state: PendingState::Failed(error_code(&e)), ..pending }),
                None if addrs.len() > 0 => self.fallbacks.push((id, addrs.rev().collect())),
                None => {}
            }
        }
    }

    /// Readiness of the connection at `index` while it is connecting: established, failed
    /// (every address it had was tried), or None: not yet (a spurious wake-up).
    pub fn connect_ready(&mut self, index: usize) -> Option<OutboundEvent> {
        let now = self.now_ms;
        let c = self.by_index(index)?;
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
            Ok(None) => None,
            Ok(Some(peer)) => {
                self.fallbacks.retain(|(f, _)| *f != id);
                let c = self.by_index(index).expect("checked above");
                c.peer = Some(peer);
                c.local = c.stream.local_addr().ok();
                c.phase = ConnPhase::Open;
                c.read.ready = true;
                c.last_active_ms = now;
                if let Err(e) = self.set_write_interest(index, false) {
                    tracing::debug!(conn = id.0, "could not register the connection: {e}");
                    return Some(OutboundEvent::Failed { id, code: ConnErrorCode::IO });
                }
                Some(OutboundEvent::Connected { id, index })
            }
            Err(e) => {
                tracing::debug!(conn = id.0, "connect failed: {e}");
                match self.try_next_address(id) {
                    true => None,
                    false => Some(OutboundEvent::Failed { id, code: error_code(&e) }),
                }
            }
        }
    }

    /// A name resolved to several addresses and the one tried failed: tries the next (same id,
    /// same deadline). False when none is left.
    fn try_next_address(&mut self, id: ConnId) -> bool {
        let Some(i) = self.fallbacks.iter().position(|(f, _)| *f == id) else { return false };
        while let Some(addr) = self.fallbacks[i].1.pop() {
            match self.restart_connect(id, addr) {
                Ok(()) => return true,
                Err(e) => tracing::debug!(conn = id.0, %addr, "connect failed at once: {e}"),
            }
        }
        self.fallbacks.swap_remove(i);
        false
    }

    /// Pending connections that failed or were closed, and connects past their deadline: what
    /// the plugin must hear. Run once a loop turn.
    pub fn expire_outbound(&mut self) -> Vec<OutboundEvent> {
        let now = self.now_ms;
        let mut events = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            let p = self.pending[i];
            let code = match p.state {
                PendingState::Resolving if now >= p.deadline_ms => Some(ConnErrorCode::CONNECT_TIMEOUT),
                PendingState::Resolving => {
                    i += 1;
                    continue;
                }
                PendingState::Failed(code) => Some(code),
                PendingState::Cancelled => None,
            };
            self.pending.swap_remove(i);
            self.release_id(p.id);
            events.push(OutboundEvent::Gone { id: p.id, code });
        }
        if self.connecting.is_empty() {
            return events;
        }
        let mut connecting = std::mem::take(&mut self.connecting);
        connecting.retain(|&id| {
            let Some(until) = self.get(id).and_then(|c| connecting_until(c.phase)) else {
                return false;
            };
            if now < until {
                return true;
            }
            tracing::debug!(conn = id.0, "connect timed out");
            events.push(OutboundEvent::Failed { id, code: ConnErrorCode::CONNECT_TIMEOUT });
            false
        });
        self.connecting = connecting;
        if !self.fallbacks.is_empty() {
            let mut fallbacks = std::mem::take(&mut self.fallbacks);
            fallbacks.retain(|(id, _)| self.get(*id).is_some_and(|c| connecting_until(c.phase).is_some()));
            self.fallbacks = fallbacks;
        }
        events
    }

    /// When [`Core::expire_outbound`] has work next: now for failures to report, else the
    /// nearest deadline.
    pub fn next_outbound_deadline(&self) -> Option<u64> {
        let pending = self.pending.iter().map(|p| match p.state {
            PendingState::Resolving => p.deadline_ms,
            PendingState::Failed(_) | PendingState::Cancelled => 0,
        });
        let connecting = self.connecting.iter().filter_map(|&id| connecting_until(self.get(id)?.phase));
        pending.chain(connecting).min()
    }
}

fn connecting_until(phase: ConnPhase) -> Option<u64> {
    match phase {
        ConnPhase::Connecting { until_ms } => Some(until_ms),
        _ => None,
    }
}
