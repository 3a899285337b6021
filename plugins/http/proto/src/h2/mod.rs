//! HTTP/2 (RFC 9113) as a sans-IO library, server side: bytes in, events and bytes out, no
//! socket. The layers, from low to high: [`frame`] (the frame codec), [`hpack`] (header
//! compression, bounded), [`request`] (a request head checked, and the same request as an
//! HTTP/1.1 head for [`crate::Request`]), [`conn`] (one connection's state machine: SETTINGS,
//! streams, flow control, GOAWAY, and the defences against the known floods).
//!
//! ```text
//! let mut h2 = Connection::new(Config::default());   // its SETTINGS are the first output
//! let used = h2.recv(now_ms, &received);              // whole frames; keep the rest
//! while let Some(event) = h2.poll_event() { … h2.send_headers(…); h2.send_data(…); }
//! send(h2.take_output());                             // close once h2.is_done()
//! ```

pub mod conn;
pub mod frame;
pub mod hpack;
pub mod hpack_table;
pub mod request;
pub mod serve;
pub mod stats;

#[cfg(test)]
mod interop_tests;

pub use conn::{preface, Config, Connection, Event, Preface, SendError, Stats};
pub use frame::{ErrorCode, H2Error};
pub use request::{H2Request, Malformed, RequestBuilder};
pub use serve::{frame_input, mode, split_head, start, Http1Head, Mode, Start};
