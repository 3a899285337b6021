//! HTTP/1.1 as a library for `host` plugins: the request parser and framer, the response writer,
//! the response parser a client or proxy reads an upstream with ([`client`]), and
//! [`AppServer`], which turns an [`App`] (one function from [`Request`] to
//! [`ResponseWriter`]) into a complete plugin. The `http` plugin (static files) is built on it.
//!
//! Not a plugin itself: an application crate depends on it and exports its own server,
//! `plugin_api::export_plugin!(http_proto::AppServer<MyApp>)`, then runs with
//! `host --plugin my_app`. `examples/http_app` is a complete one.
//!
//! What the library does for an application:
//! - framing (RFC 9112): `Content-Length` and chunked bodies (decoded), strict validation (one
//!   `Host`, a valid `Host` value, no ambiguous framing), `Expect: 100-continue`, limits
//!   ([`Limits`]: head, target, header count, body), pipelining (answers in order), keep-alive
//!   and HTTP/1.0;
//! - errors: 400, 408, 413, 414, 431, 501, 505 answered and the connection closed;
//! - responses: status line, `Server`, `Date`, `Content-Length` or chunked, `Connection: close`
//!   when the client asked, the application asked, or the worker is draining (graceful reload).
//!
//! [`handover`] (and `h2::Connection::export`/`adopt`) is the per-connection state a server
//! writes and reads when its connections move to a replacement worker (`AppServer` does it for
//! an [`App`] that sets `App::HANDOVER_VERSION`).
//!
//! [`access_log`] formats Common/Combined Log Format lines for `Host::access_log`.
//!
//! Layers, from low to high: [`parse`] (pure: [`parse_head`], [`Framer`]) and [`client`] (pure:
//! [`parse_response_head`], [`BodyScan`]), one set of framing rules for both, [`chunked`],
//! [`response`] (writing heads into a buffer), [`Request`] / [`ResponseWriter`], [`ConnState`]
//! (the per-connection part of a server), [`AppServer`].

pub mod access_log;
pub mod app;
mod app_h2;
mod app_handover;
pub mod chunked;
pub mod client;
pub mod conn;
pub mod h2;
pub mod handover;
pub mod parse;
pub mod request;
pub mod response;
pub mod writer;

pub use app::{App, AppServer};
pub use client::{parse_response_head, BodyScan, ResponseBody, ResponseHead};
pub use conn::{persist, ConnState, Delivered};
pub use parse::{parse_head, request_len, Body, Framer, Limits, Method, RequestHead};
pub use request::{header_fields, percent_decode, request_path, Request};
pub use response::{Persist, Status};
pub use writer::ResponseWriter;
