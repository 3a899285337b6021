//! Which connections speak HTTP/2: over TLS the handshake's ALPN decides (`h2`), in cleartext
//! the client preface (`h2c`); each has its switch.

use plugin_api::Transport;

use super::*;

/// The client preface and an empty SETTINGS frame: what every HTTP/2 client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

fn client(config: &str, transport: Transport, alpn: Option<&[u8]>) -> Client {
    let mut c = Client::new(config);
    c.host.transports.insert(c.conn, transport);
    if let Some(p) = alpn {
        c.host.alpn.insert(c.conn, p.to_vec());
    }
    c
}

/// What the connection answers to the preface: "h2" (the server's SETTINGS frame), "http/1.1"
/// (an HTTP/1.1 error response), or "closed" (nothing, closed).
fn answer_to_preface(c: &mut Client) -> &'static str {
    let out = c.feed(PREFACE).take_bytes();
    if out.len() >= 9 && out[3] == 4 && out[4] == 0 {
        "h2"
    } else if out.starts_with(b"HTTP/1.1 4") || out.starts_with(b"HTTP/1.1 5") {
        "http/1.1"
    } else if out.is_empty() && c.closed() {
        "closed"
    } else {
        panic!("unexpected answer to the preface: {:?}", String::from_utf8_lossy(&out))
    }
}

#[test]
fn cleartext_speaks_h2_by_the_preface_unless_h2c_is_off() {
    assert_eq!(answer_to_preface(&mut client("", Transport::Tcp, None)), "h2");
    assert_eq!(answer_to_preface(&mut client("", Transport::Unix, None)), "h2");
    assert_eq!(answer_to_preface(&mut client("h2 = false", Transport::Tcp, None)), "h2", "h2 is the TLS switch");
    assert_eq!(answer_to_preface(&mut client("h2c = false", Transport::Tcp, None)), "http/1.1");
    let mut http1 = client("h2c = false", Transport::Tcp, None);
    assert!(http1.feed(GET).take().starts_with("HTTP/1.1 200"));
}

#[test]
fn tls_speaks_h2_only_when_alpn_agreed_it() {
    assert_eq!(answer_to_preface(&mut client("", Transport::TlsTcp, Some(b"h2"))), "h2");
    assert_eq!(answer_to_preface(&mut client("h2c = false", Transport::TlsTcp, Some(b"h2"))), "h2");
    // Prior knowledge is for cleartext only (RFC 9113 §3.3).
    assert_eq!(answer_to_preface(&mut client("", Transport::TlsTcp, None)), "http/1.1");
    assert_eq!(answer_to_preface(&mut client("", Transport::TlsTcp, Some(b"http/1.1"))), "http/1.1");
    assert_eq!(answer_to_preface(&mut client("h2 = false", Transport::TlsTcp, Some(b"h2"))), "http/1.1");

    // ALPN agreed h2 and the client speaks HTTP/1.1: closed without an answer.
    let mut wrong = client("", Transport::TlsTcp, Some(b"h2"));
    assert_eq!(wrong.feed(GET).take(), "");
    assert!(wrong.closed());
    // ALPN agreed http/1.1: served.
    let mut http1 = client("", Transport::TlsTcp, Some(b"http/1.1"));
    assert!(http1.feed(GET).take().starts_with("HTTP/1.1 200"));
}

// A host older than plugin-api 0.1.4 cannot tell TLS from cleartext: the preface decides, and
// only while both switches are on.
#[test]
fn a_host_that_cannot_tell_lets_the_preface_decide() {
    assert_eq!(answer_to_preface(&mut client("", Transport::Unknown, None)), "h2");
    assert_eq!(answer_to_preface(&mut client("h2 = false", Transport::Unknown, None)), "http/1.1");
    assert_eq!(answer_to_preface(&mut client("h2c = false", Transport::Unknown, None)), "http/1.1");
}
