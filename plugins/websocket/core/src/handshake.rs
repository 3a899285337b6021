//! The opening handshake (RFC 6455 section 4.2): an HTTP/1.1 `GET` with `Upgrade: websocket`,
//! `Connection: Upgrade`, a 16-byte base64 `Sec-WebSocket-Key` and `Sec-WebSocket-Version: 13`,
//! answered by `101 Switching Protocols` with `Sec-WebSocket-Accept` =
//! base64(SHA-1(key + GUID)).
//!
//! Refusals: a plain `GET` that asks for no upgrade gets `426 Upgrade Required` and a one-line
//! page; a wrong version gets 426 with `Sec-WebSocket-Version: 13`; an origin outside the
//! allow-list gets 403; anything else malformed gets 400. Extension offers are handed to the
//! caller ([`Accepted::extension_offers`]), which answers the ones it takes
//! ([`Accepted::extensions`]; `permessage-deflate`: [`crate::deflate`]).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID every accept key is derived with.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Request header fields beyond this many are a 400.
pub const MAX_HEADERS: usize = 64;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// What the server accepts: allowed origins and subprotocols (both empty: anything, none).
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy<'a> {
    /// Allowed `Origin` values (exact, ASCII case-insensitive); empty: any origin, or none.
    pub origins: &'a [String],
    /// Subprotocols the server speaks; the first one the client offers that is listed here wins.
    pub protocols: &'a [String],
}

/// An accepted upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// `Sec-WebSocket-Accept`.
    pub accept: String,
    /// The subprotocol selected, if any.
    pub protocol: Option<String>,
    /// The `Sec-WebSocket-Extensions` values the client sent, for the caller to negotiate.
    pub extension_offers: Vec<Vec<u8>>,
    /// The `Sec-WebSocket-Extensions` value of the response (the caller's choice; None: no
    /// extension).
    pub extensions: Option<String>,
}

impl Accepted {
    /// The `101 Switching Protocols` response.
    pub fn response(&self) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
            self.accept
        );
        if let Some(p) = &self.protocol {
            r.push_str("Sec-WebSocket-Protocol: ");
            r.push_str(p);
            r.push_str("\r\n");
        }
        if let Some(e) = &self.extensions {
            r.push_str("Sec-WebSocket-Extensions: ");
            r.push_str(e);
            r.push_str("\r\n");
        }
        r.push_str("\r\n");
        r.into_bytes()
    }
}

/// Why an upgrade was refused; each maps to one HTTP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Malformed or not a valid upgrade request (400), with the reason.
    BadRequest(&'static str),
    /// A plain `GET` with no `Upgrade: websocket` (426 and a one-line page).
    NotUpgrade,
    /// `Sec-WebSocket-Version` is not 13 (426 with `Sec-WebSocket-Version: 13`).
    WrongVersion,
    /// `Origin` is not in the allow-list (403).
    ForbiddenOrigin,
}

impl Rejection {
    pub fn status(&self) -> u16 {
        match self {
            Rejection::BadRequest(_) => 400,
            Rejection::NotUpgrade | Rejection::WrongVersion => 426,
            Rejection::ForbiddenOrigin => 403,
        }
    }

    /// The complete HTTP response (the connection closes after it).
    pub fn response(&self) -> Vec<u8> {
        let (status, extra, body) = match self {
            Rejection::BadRequest(why) => ("400 Bad Request", "", format!("Bad WebSocket request: {why}.\n")),
            Rejection::NotUpgrade => (
                "426 Upgrade Required",
                "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
                "This is a WebSocket endpoint: connect with a WebSocket client.\n".to_string(),
            ),
            Rejection::WrongVersion => (
                "426 Upgrade Required",
                "Sec-WebSocket-Version: 13\r\n",
                "Unsupported WebSocket version: this server speaks version 13.\n".to_string(),
            ),
            Rejection::ForbiddenOrigin => ("403 Forbidden", "", "Origin not allowed.\n".to_string()),
        };
        format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Framing of the request head: its length once the blank line arrived, `Ok(None)` before.
pub fn head_len(buf: &[u8]) -> Result<Option<usize>, Rejection> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(Rejection::BadRequest("too many header fields")),
        Err(_) => Err(Rejection::BadRequest("malformed request head")),
    }
}

/// Checks a complete request head against RFC 6455 and `policy`.
pub fn handshake(head: &[u8], policy: &Policy<'_>) -> Result<Accepted, Rejection> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Rejection::BadRequest("incomplete request head")),
        Err(_) => return Err(Rejection::BadRequest("malformed request head")),
    }
    let fields = || req.headers.iter().map(|h| (h.name, h.value));
    let values = |name: &'static str| fields().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v);
    let has_token = |name: &'static str, token: &str| {
        values(name).any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(token.as_bytes())))
    };
    if req.method != Some("GET") {
        return Err(Rejection::BadRequest("the method must be GET"));
    }
    if req.version != Some(1) {
        return Err(Rejection::BadRequest("HTTP/1.1 required"));
    }
    if !has_token("upgrade", "websocket") {
        return Err(Rejection::NotUpgrade);
    }
    if !has_token("connection", "upgrade") {
        return Err(Rejection::BadRequest("Connection must include Upgrade"));
    }
    if values("host").next().is_none() {
        return Err(Rejection::BadRequest("no Host header field"));
    }
    let mut versions = values("sec-websocket-version");
    match (versions.next(), versions.next()) {
        (Some(v), None) if trim(v) == b"13" => {}
        (None, _) => return Err(Rejection::BadRequest("no Sec-WebSocket-Version")),
        _ => return Err(Rejection::WrongVersion),
    }
    let mut keys = values("sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => trim(k),
        _ => return Err(Rejection::BadRequest("exactly one Sec-WebSocket-Key is required")),
    };
    if BASE64.decode(key).map_or(true, |k| k.len() != 16) {
        return Err(Rejection::BadRequest("Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    if !policy.origins.is_empty() {
        let allowed = values("origin")
            .next()
            .is_some_and(|o| policy.origins.iter().any(|a| a.as_bytes().eq_ignore_ascii_case(trim(o))));
        if !allowed {
            return Err(Rejection::ForbiddenOrigin);
        }
    }
    let protocol = values("sec-websocket-protocol")
        .flat_map(tokens)
        .find_map(|offered| policy.protocols.iter().find(|p| p.as_bytes() == offered))
        .cloned();
    let extension_offers = values("sec-websocket-extensions").map(<[u8]>::to_vec).collect();
    Ok(Accepted { accept: accept_key(key), protocol, extension_offers, extensions: None })
}

/// The comma-separated elements of a header value, trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim).filter(|t| !t.is_empty())
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}
