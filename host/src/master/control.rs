//! The control socket: `host stop|reload|status|connections|reopen-logs` talk to the master here. Mode 0600,
//! beside the pid file. Each client sends one request line and gets one JSON answer line, so
//! concurrent commands never mix their answers.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use crate::ctl::LineConn;
use crate::status::Answer;

/// What a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Stop {
        graceful: bool,
    },
    Reload {
        graceful: bool,
        /// Answer once the hand-overs the reload starts have ended too, with their outcome.
        handovers: bool,
    },
    Status,
    Connections,
    /// Replace the master's own program with the binary now installed at its path.
    Upgrade {
        /// Answer once the hand-overs of the upgrade's chain have ended too, with their outcome.
        handovers: bool,
    },
    /// Reopen the host's log file (daemon) and every access log (logrotate).
    ReopenLogs,
}

impl Request {
    pub fn parse(line: &str) -> Option<Self> {
        match line.trim() {
            "stop" => Some(Request::Stop { graceful: false }),
            "stop graceful" => Some(Request::Stop { graceful: true }),
            "reload" => Some(Request::Reload { graceful: false, handovers: false }),
            "reload graceful" => Some(Request::Reload { graceful: true, handovers: false }),
            "reload handovers" => Some(Request::Reload { graceful: false, handovers: true }),
            "reload graceful handovers" => Some(Request::Reload { graceful: true, handovers: true }),
            "status" => Some(Request::Status),
            "connections" => Some(Request::Connections),
            "upgrade" => Some(Request::Upgrade { handovers: false }),
            "upgrade handovers" => Some(Request::Upgrade { handovers: true }),
            "reopen-logs" => Some(Request::ReopenLogs),
            _ => None,
        }
    }

    pub fn encode(self) -> &'static str {
        match self {
            Request::Stop { graceful: false } => "stop\n",
            Request::Stop { graceful: true } => "stop graceful\n",
            Request::Reload { graceful: false, handovers: false } => "reload\n",
            Request::Reload { graceful: true, handovers: false } => "reload graceful\n",
            Request::Reload { graceful: false, handovers: true } => "reload handovers\n",
            Request::Reload { graceful: true, handovers: true } => "reload graceful handovers\n",
            Request::Status => "status\n",
            Request::Connections => "connections\n",
            Request::Upgrade { handovers: false } => "upgrade\n",
            Request::Upgrade { handovers: true } => "upgrade handovers\n",
            Request::ReopenLogs => "reopen-logs\n",
        }
    }
}

struct Client {
    conn: LineConn<UnixStream>,
    /// Its request went to the master: it is kept until answered, even if it half-closed.
    asked: bool,
    /// Answered: close once the answer is written.
    answered: bool,
}

pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    clients: HashMap<usize, Client>,
    next_token: usize,
    token_base: usize,
}

impl ControlServer {
    /// Binds the socket at `path` (a stale file there is replaced) with mode 0600.
    pub fn bind(path: &Path, registry: &Registry, listener_token: Token, token_base: usize) -> io::Result<Self> {
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        // Only the owner may connect: the umask applies while the socket file is created.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let mut listener = bound?;
        registry.register(&mut listener, listener_token, Interest::READABLE)?;
        Ok(ControlServer { listener, path: path.to_path_buf(), clients: HashMap::new(), next_token: 0, token_base })
    }

    /// The control socket the master's previous image listened on (a binary upgrade: the file at
    /// `path` stays what it was, so no command finds it missing).
    pub fn adopt(
        listener: std::os::fd::OwnedFd,
        path: &Path,
        registry: &Registry,
        listener_token: Token,
        token_base: usize,
    ) -> io::Result<Self> {
        let listener = std::os::unix::net::UnixListener::from(listener);
        listener.set_nonblocking(true)?;
        let mut listener = UnixListener::from_std(listener);
        registry.register(&mut listener, listener_token, Interest::READABLE)?;
        Ok(ControlServer { listener, path: path.to_path_buf(), clients: HashMap::new(), next_token: 0, token_base })
    }

    /// A client of the previous image that waits for its answer (`host upgrade`); returns its id.
    pub fn adopt_client(&mut self, stream: std::os::fd::OwnedFd, registry: &Registry) -> io::Result<u64> {
        let stream = std::os::unix::net::UnixStream::from(stream);
        stream.set_nonblocking(true)?;
        let mut stream = UnixStream::from_std(stream);
        self.next_token += 1;
        let token = self.token_base + self.next_token;
        registry.register(&mut stream, Token(token), Interest::READABLE)?;
        let conn = LineConn::new(stream, crate::ctl::MAX_REQUEST_LINE);
        self.clients.insert(token, Client { conn, asked: true, answered: false });
        Ok(token as u64)
    }

    /// The listening socket, to hand over across exec.
    pub fn listener_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.listener)
    }

    /// A client's connection, to hand over across exec.
    pub fn client_fd(&self, client: u64) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.clients.get(&(client as usize)).map(|c| std::os::fd::AsFd::as_fd(&c.conn.stream))
    }

    pub fn accept_all(&mut self, registry: &Registry) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    self.next_token += 1;
                    let token = self.token_base + self.next_token;
                    if registry.register(&mut stream, Token(token), Interest::READABLE).is_ok() {
                        self.clients.insert(
                            token,
                            Client {
                                conn: LineConn::new(stream, crate::ctl::MAX_REQUEST_LINE),
                                asked: false,
                                answered: false,
                            },
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Reads a client's request (its first line); bad requests are answered here.
    pub fn read(&mut self, token: Token, registry: &Registry) -> Option<(u64, Request)> {
        let client = self.clients.get_mut(&token.0)?;
        let lines = client.conn.read_lines();
        let mut request = None;
        // One request per client: what follows its first line is ignored.
        if !client.answered && !client.asked {
            if let Some(line) = lines.first() {
                match Request::parse(line) {
                    Some(r) => {
                        client.asked = true;
                        request = Some((token.0 as u64, r));
                    }
                    None => {
                        let msg = format!("unknown request {line:?}");
                        self.answer(token.0 as u64, &Answer::Error { message: msg }, registry);
                        return None;
                    }
                }
            }
        }
        self.flush(token.0, registry);
        request
    }

    /// Sends the answer to a client (gone clients are skipped) and closes it once written.
    pub fn answer(&mut self, client: u64, answer: &Answer, registry: &Registry) {
        let token = client as usize;
        let Some(c) = self.clients.get_mut(&token) else { return };
        let mut line = serde_json::to_string(answer).expect("answers always serialize");
        line.push('\n');
        c.answered = true;
        let _ = c.conn.send(line.as_bytes());
        self.flush(token, registry);
    }

    fn flush(&mut self, token: usize, registry: &Registry) {
        let Some(c) = self.clients.get_mut(&token) else { return };
        let done = c.conn.flush();
        // A client that shut its writing side down after its request still gets the answer; one
        // that did so without a request gets none.
        let finished = match done {
            Err(_) => true,
            Ok(_) if c.conn.closed => true,
            Ok(flushed) if c.answered => flushed,
            Ok(_) => c.conn.eof && !c.asked,
        };
        if finished {
            if let Some(mut c) = self.clients.remove(&token) {
                let _ = registry.deregister(&mut c.conn.stream);
            }
        } else {
            let interest = if c.conn.pending() { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            let _ = registry.reregister(&mut c.conn.stream, Token(token), interest);
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        // A new image that fails after `host upgrade` gives the socket back to the previous one.
        if super::upgrade::rollback_armed() {
            return;
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Stop { graceful: false },
            Request::Stop { graceful: true },
            Request::Reload { graceful: false, handovers: false },
            Request::Reload { graceful: true, handovers: false },
            Request::Reload { graceful: false, handovers: true },
            Request::Reload { graceful: true, handovers: true },
            Request::Status,
            Request::Connections,
            Request::Upgrade { handovers: false },
            Request::Upgrade { handovers: true },
            Request::ReopenLogs,
        ] {
            assert_eq!(Request::parse(r.encode()), Some(r));
        }
        assert_eq!(Request::parse("format disk"), None);
    }
}
