//! WebSocket (RFC 6455) for host plugins, as a library: the frame parser and encoder
//! ([`frame`]), a streaming UTF-8 validator ([`utf8`]), the opening handshake ([`handshake`]),
//! and a message-level layer ([`WebSocket`], [`Handler`], [`Ws`]) that does the whole protocol
//! and calls an application with complete messages.
//!
//! This crate exports no plugin: a `cdylib` that links a crate which calls `export_plugin!`
//! gets that crate's root module symbol twice and does not link. The echo plugin is
//! `plugins/websocket` (`host --plugin websocket`); an application plugin depends on this crate
//! and exports its own handler, as `examples/ws_chat` does:
//!
//! ```
//! use plugin_api::{export_plugin, ConnId, WorkerInfo};
//! use websocket_core::{Handler, Message, WebSocket, Ws};
//!
//! pub struct Shout;
//! impl Handler for Shout {
//!     fn new(_config: &str, _worker: &WorkerInfo) -> Result<Self, String> { Ok(Shout) }
//!     fn on_message(&mut self, ws: &mut Ws<'_, '_>, conn: ConnId, msg: Message<'_>) {
//!         if let Message::Text(t) = msg {
//!             ws.send_text(conn, &t.to_uppercase());
//!         }
//!     }
//! }
//! export_plugin!(WebSocket<Shout>);
//! ```
//!
//! What [`WebSocket`] enforces: version 13 handshakes only; masked client frames (else close
//! 1002); no RSV bits but RSV1 on the first frame of a compressed message where
//! permessage-deflate was negotiated; control frames of at most 125 bytes, never fragmented;
//! continuation frames only inside a fragmented message, control frames allowed between
//! fragments; text valid UTF-8 across fragments, checked as bytes arrive, so the first invalid
//! byte fails the connection (1007) before the rest of the frame is read; close payloads (1002
//! for a bad code, 1007 for a bad reason). A message whose payload is over the service's max
//! package size closes with 1009 from the header that announces it, before it is buffered; the
//! frame headers do not count, so a message of exactly the limit passes (a data frame's payload
//! is taken in pieces as it arrives). Pings get pongs; a close is answered with the peer's code;
//! draining sends 1001 and closes once the peer answers (or at the host's drain deadline).
//!
//! permessage-deflate (RFC 7692, what browsers offer) is accepted ([`deflate`]): a compressed
//! message is inflated as it arrives into at most the max package size (past it: 1009, so a zip
//! bomb costs no more than the limit; data that does not inflate: 1007). The server answers
//! with `server_no_context_takeover`, so one compressor serves the worker and a connection keeps
//! only its decompressor (made at its first compressed message); its messages of 64 bytes and
//! more go compressed (not [`Ws::broadcast_text`]'s, encoded once for all). `permessage_deflate
//! = false` turns it off.
//!
//! A [`Handler`] also hears the worker-level events of [`plugin_api::Protocol`]
//! (`on_worker_start`, `on_worker_stop`, `on_worker_message`, `on_task_done`, `on_notify`, and
//! `on_timer` for its own timers), each with a [`Ws`], so an application can, say, relay messages
//! between workers (`examples/ws_chat`).
//!
//! Config keys (the service's TOML; other keys are left to the application):
//! ```toml
//! origins = ["https://example.com"]   # allowed Origin values (default: any)
//! protocols = ["chat", "superchat"]   # subprotocols; the client's first listed one is selected
//! ping_interval = 30                  # seconds between server pings (0: off); a peer silent for
//!                                     # one more interval after a ping is closed
//! permessage_deflate = true           # accept permessage-deflate when offered (default: true)
//! ```

pub mod deflate;
pub mod frame;
pub mod handshake;
mod socket;
pub mod utf8;

#[cfg(test)]
mod tests;

pub use frame::{close_code, FrameHeader, OpCode, ProtocolError};
pub use socket::{Config, Handler, Message, WebSocket, Ws};
