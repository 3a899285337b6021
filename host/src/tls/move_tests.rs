//! A TLS connection moved from rustls to the user-space record layer, against a real rustls
//! client, in memory: handshake with the host's server config, data both ways, extraction in
//! the middle of things (a record half received, records not sent), the state through bytes,
//! then the same client going on with the record layer — for TLS 1.3 and 1.2 and each AEAD.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::crypto::ring as provider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection, SupportedCipherSuite};

use super::moved::{freeze_rustls, CannotMove, DecodeError, MovedTls};
use super::record::{Aead, Opened, RecordError, RecordLayer, Version, MAX_FRAGMENT};
use super::tail::RecordTail;
use super::{server_config, TlsSpec};

/// One direction of the wire: bytes written wait to be read; reading nothing is `WouldBlock`.
#[derive(Default)]
struct Pipe(VecDeque<u8>);

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.0.len());
        for (b, v) in buf.iter_mut().zip(self.0.drain(..n)) {
            *b = v;
        }
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A socket over bytes: `WouldBlock` once they are read.
struct Wire<'a>(&'a [u8]);

impl Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.0.read(buf)
    }
}

/// A certificate for `localhost` made for the test, as the host's spec and as a client's root.
pub(crate) struct Certs {
    pub spec: TlsSpec,
    pub root: CertificateDer<'static>,
}

pub(crate) fn certs() -> Certs {
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
    let spec = TlsSpec {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        alpn: vec!["moving/1".into()],
        tickets: None,
        alpn_fixed: true,
    };
    Certs { spec, root: cert.der().clone() }
}

/// The cases: each protocol version with each AEAD the host offers (ECDSA certificates, so TLS
/// 1.2's suites are ECDHE-ECDSA).
fn cases() -> Vec<(Version, Aead, SupportedCipherSuite)> {
    use provider::cipher_suite::*;
    vec![
        (Version::Tls13, Aead::Aes128Gcm, TLS13_AES_128_GCM_SHA256),
        (Version::Tls13, Aead::Aes256Gcm, TLS13_AES_256_GCM_SHA384),
        (Version::Tls13, Aead::Chacha20Poly1305, TLS13_CHACHA20_POLY1305_SHA256),
        (Version::Tls12, Aead::Aes128Gcm, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        (Version::Tls12, Aead::Aes256Gcm, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
        (Version::Tls12, Aead::Chacha20Poly1305, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
    ]
}

/// A client and the host's rustls server, connected by two pipes; the server reads through
/// [`RecordTail`] as the transport does.
struct Pair {
    client: ClientConnection,
    server: ServerConnection,
    tail: RecordTail,
    c2s: Pipe,
    s2c: Pipe,
}

/// A rustls client of `localhost` that trusts `certs` and offers only `suite` (and its version).
pub(crate) fn client(certs: &Certs, suite: SupportedCipherSuite) -> ClientConnection {
    let mut roots = RootCertStore::empty();
    roots.add(certs.root.clone()).unwrap();
    let provider = rustls::crypto::CryptoProvider { cipher_suites: vec![suite], ..provider::default_provider() };
    let version = match suite {
        SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
        SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
    };
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"moving/1".to_vec()];
    let name = ServerName::try_from("localhost").unwrap();
    ClientConnection::new(Arc::new(config), name).unwrap()
}

impl Pair {
    fn new(certs: &Certs, suite: SupportedCipherSuite) -> Pair {
        let client = client(certs, suite);
        let server = ServerConnection::new(server_config(&certs.spec).unwrap()).unwrap();
        Pair { client, server, tail: RecordTail::default(), c2s: Pipe::default(), s2c: Pipe::default() }
    }

    /// The server reads what the client sent; its plaintext is returned.
    fn server_reads(&mut self) -> Vec<u8> {
        let mut got = Vec::new();
        loop {
            let mut buf = [0u8; 4096];
            match self.server.reader().read(&mut buf) {
                Ok(n) if n > 0 => {
                    got.extend_from_slice(&buf[..n]);
                    continue;
                }
                _ => {}
            }
            match self.server.read_tls(&mut self.tail.reader(&mut self.c2s)) {
                Ok(0) => return got,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return got,
                Err(e) => panic!("{e}"),
            }
            self.server.process_new_packets().unwrap();
        }
    }

    fn client_flushes(&mut self) {
        while self.client.wants_write() {
            self.client.write_tls(&mut self.c2s).unwrap();
        }
    }

    fn server_flushes(&mut self) {
        while self.server.wants_write() {
            self.server.write_tls(&mut self.s2c).unwrap();
        }
    }

    fn handshake(&mut self) {
        while self.client.is_handshaking() || self.server.is_handshaking() {
            self.client_flushes();
            self.server_reads();
            // The server's last flight (TLS 1.3 session tickets after the client's Finished)
            // stays unsent: it must move with the connection.
            if self.server.is_handshaking() || self.client.is_handshaking() {
                self.server_flushes();
            }
            client_reads(&mut self.client, &mut self.s2c);
        }
    }
}

/// The client reads what reached it: its plaintext, and whether the server closed cleanly.
fn client_reads(client: &mut ClientConnection, s2c: &mut Pipe) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    loop {
        match client.read_tls(s2c) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        let io = client.process_new_packets().expect("the client accepts what the server sent");
        let mut buf = vec![0u8; io.plaintext_bytes_to_read()];
        client.reader().read_exact(&mut buf).unwrap();
        got.extend_from_slice(&buf);
        if s2c.0.is_empty() {
            return (got, io.peer_has_closed());
        }
    }
}

/// The layer reads what `wire` has (`step` bytes at a time): plaintext, and whether it ended.
fn layer_reads(layer: &mut RecordLayer, wire: &mut Pipe, step: usize) -> Result<(Vec<u8>, bool), RecordError> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 3000];
    loop {
        match layer.read_plain(&mut buf)? {
            Opened::Data(n) => got.extend_from_slice(&buf[..n]),
            Opened::End => return Ok((got, true)),
            Opened::NeedMore => {
                let n = step.min(wire.0.len());
                if n == 0 {
                    return Ok((got, false));
                }
                let chunk: Vec<u8> = wire.0.drain(..n).collect();
                let mut rd = &chunk[..];
                while !rd.is_empty() {
                    layer.read_tls(&mut rd).unwrap();
                }
            }
        }
    }
}

fn layer_writes(layer: &mut RecordLayer, data: &[u8], wire: &mut Pipe) {
    let mut at = 0;
    while at < data.len() {
        at += layer.write_plain(&data[at..]).unwrap();
        while layer.wants_write() {
            layer.write_tls(wire).unwrap();
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// Handshake, data both ways with rustls, then moved: a record half received and the server's
/// records not sent move along.
fn moved_pair(certs: &Certs, suite: SupportedCipherSuite) -> (ClientConnection, RecordLayer, Pipe, Pipe) {
    let mut p = Pair::new(certs, suite);
    p.handshake();
    p.client.writer().write_all(b"hello over rustls").unwrap();
    p.client_flushes();
    assert_eq!(p.server_reads(), b"hello over rustls");
    p.server.writer().write_all(b"welcome").unwrap();
    // Not flushed: it moves as records not sent.
    assert!(p.server.wants_write());

    // The client sends a record, and the next arrives only in part.
    p.client.writer().write_all(b"first").unwrap();
    p.client_flushes();
    p.client.writer().write_all(b"second, cut by the move").unwrap();
    let mut next = Vec::new();
    while p.client.wants_write() {
        p.client.write_tls(&mut next).unwrap();
    }
    p.c2s.0.extend(&next[..10]);
    assert_eq!(p.server_reads(), b"first");
    assert_eq!(p.tail.bytes(), Some(&next[..10]), "the part received is known");

    let Pair { client, server, tail, c2s, s2c } = p;
    let state = freeze_rustls(Box::new(server), tail.bytes().unwrap().to_vec(), false).unwrap();
    assert_eq!(state.server_name.as_deref(), Some("localhost"));
    assert_eq!(state.alpn.as_deref(), Some(&b"moving/1"[..]));
    assert_eq!(state.received, &next[..10]);
    assert!(!state.unsent.is_empty());

    // Through bytes, as to another process.
    let bytes = state.encode();
    let back = MovedTls::decode(&bytes).unwrap();
    assert_eq!(back, state);
    let (layer, names) = back.into_layer().unwrap();
    assert_eq!(names.server_name.as_deref(), Some("localhost"));
    let mut c2s = c2s;
    c2s.0.extend(&next[10..]);
    (client, layer, c2s, s2c)
}

#[test]
fn a_moved_connection_goes_on_byte_exact_for_each_version_and_suite() {
    let certs = certs();
    for (version, aead, suite) in cases() {
        let (mut client, mut layer, mut c2s, mut s2c) = moved_pair(&certs, suite);
        assert_eq!((layer.version(), layer.aead()), (version, aead), "{suite:?}");

        // What was queued before the move reaches the client first, then what follows.
        layer_writes(&mut layer, b" and goodbye rustls", &mut s2c);
        let (got, closed) = client_reads(&mut client, &mut s2c);
        assert_eq!(got, b"welcome and goodbye rustls", "{suite:?}");
        assert!(!closed);
        // The record cut by the move is whole now.
        let (got, _) = layer_reads(&mut layer, &mut c2s, 1 << 20).unwrap();
        assert_eq!(got, b"second, cut by the move", "{suite:?}");

        // Large writes both ways, many records; the client's arrive a byte at a time.
        let down = pattern(5 * MAX_FRAGMENT + 123, 7);
        layer_writes(&mut layer, &down, &mut s2c);
        assert_eq!(client_reads(&mut client, &mut s2c).0, down, "{suite:?}");
        let up = pattern(2 * MAX_FRAGMENT + 77, 3);
        client.writer().write_all(&up).unwrap();
        while client.wants_write() {
            client.write_tls(&mut c2s).unwrap();
        }
        assert_eq!(layer_reads(&mut layer, &mut c2s, 1).unwrap(), (up, false), "{suite:?}");

        // close_notify both ways.
        client.send_close_notify();
        while client.wants_write() {
            client.write_tls(&mut c2s).unwrap();
        }
        assert_eq!(layer_reads(&mut layer, &mut c2s, 1 << 20).unwrap(), (Vec::new(), true), "{suite:?}");
        assert!(layer.peer_closed());
        layer.send_close_notify();
        assert_eq!(layer.write_plain(b"late"), Err(RecordError::Closed));
        while layer.wants_write() {
            layer.write_tls(&mut s2c).unwrap();
        }
        assert_eq!(client_reads(&mut client, &mut s2c), (Vec::new(), true), "{suite:?}");
    }
}

#[test]
fn a_moved_connection_moves_again() {
    let certs = certs();
    let (mut client, mut layer, mut c2s, mut s2c) =
        moved_pair(&certs, provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256);
    // A record arrives in part, and a record is sealed and not sent: then the second move.
    client.writer().write_all(b"across two moves").unwrap();
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).unwrap();
    }
    let (got, _) = layer_reads(&mut layer, &mut c2s, 1 << 20).unwrap();
    assert_eq!(got, b"second, cut by the move");
    let mut rd = &wire[..7];
    layer.read_tls(&mut rd).unwrap();
    assert_eq!(layer.read_plain(&mut [0u8; 64]), Ok(Opened::NeedMore));
    layer.write_plain(b"sealed before the second move").unwrap();

    let state = MovedTls::from_layer(layer, 0x1303, Some("localhost".into()), None);
    let mut layer = MovedTls::decode(&state.encode()).unwrap().into_layer().unwrap().0;
    c2s.0.extend(&wire[7..]);
    assert_eq!(layer_reads(&mut layer, &mut c2s, 1 << 20).unwrap().0, b"across two moves");
    while layer.wants_write() {
        layer.write_tls(&mut s2c).unwrap();
    }
    assert_eq!(client_reads(&mut client, &mut s2c).0, b"welcomesealed before the second move");
}

#[test]
fn a_key_update_from_the_client_closes_the_moved_connection() {
    let certs = certs();
    let (mut client, mut layer, mut c2s, mut s2c) =
        moved_pair(&certs, provider::cipher_suite::TLS13_AES_128_GCM_SHA256);
    layer_reads(&mut layer, &mut c2s, 1 << 20).unwrap();
    client.refresh_traffic_keys().unwrap();
    client.writer().write_all(b"under new keys").unwrap();
    while client.wants_write() {
        client.write_tls(&mut c2s).unwrap();
    }
    assert_eq!(layer_reads(&mut layer, &mut c2s, 1 << 20), Err(RecordError::KeyUpdate));
    assert_eq!(layer.read_plain(&mut [0u8; 16]), Err(RecordError::KeyUpdate), "it stays failed");
    // The client is told with close_notify, under the keys it still reads with.
    while layer.wants_write() {
        layer.write_tls(&mut s2c).unwrap();
    }
    let (got, closed) = client_reads(&mut client, &mut s2c);
    assert_eq!(got, b"welcome");
    assert!(closed);
}

#[test]
fn a_corrupted_record_closes_the_moved_connection_with_an_alert() {
    let certs = certs();
    for (_, _, suite) in cases() {
        let (mut client, mut layer, mut c2s, mut s2c) = moved_pair(&certs, suite);
        layer_reads(&mut layer, &mut c2s, 1 << 20).unwrap();
        client.writer().write_all(b"tampered with").unwrap();
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let last = wire.len() - 3;
        wire[last] ^= 0x40;
        c2s.0.extend(wire);
        assert_eq!(layer_reads(&mut layer, &mut c2s, 1 << 20), Err(RecordError::Decrypt), "{suite:?}");
        while layer.wants_write() {
            layer.write_tls(&mut s2c).unwrap();
        }
        client.read_tls(&mut s2c).unwrap();
        let err = client.process_new_packets().unwrap_err();
        assert_eq!(err, rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac), "{suite:?}");
    }
}

#[test]
fn handshake_messages_and_stray_records_close_the_moved_connection() {
    let certs = certs();
    for (version, _, suite) in cases() {
        // A renegotiation (TLS 1.2: a ClientHello) or any post-handshake message.
        let (_, mut layer, mut c2s, _) = moved_pair(&certs, suite);
        layer_reads(&mut layer, &mut c2s, 1 << 20).unwrap();
        let mut peer = layer.mirror();
        peer.seal_raw(22, &[1, 0, 0, 2, 3, 3]);
        while peer.wants_write() {
            peer.write_tls(&mut c2s).unwrap();
        }
        assert_eq!(layer_reads(&mut layer, &mut c2s, 1 << 20), Err(RecordError::Handshake(1)), "{suite:?}");

        // A KeyUpdate sealed by hand closes as the client's own does (TLS 1.3).
        let (_, mut layer, mut c2s, _) = moved_pair(&certs, suite);
        layer_reads(&mut layer, &mut c2s, 1 << 20).unwrap();
        let mut peer = layer.mirror();
        peer.seal_raw(22, &[24, 0, 0, 1, 0]);
        while peer.wants_write() {
            peer.write_tls(&mut c2s).unwrap();
        }
        let expect = match version {
            Version::Tls13 => RecordError::KeyUpdate,
            Version::Tls12 => RecordError::Handshake(24),
        };
        assert_eq!(layer_reads(&mut layer, &mut c2s, 1 << 20), Err(expect), "{suite:?}");

        // A fatal alert ends it; an unprotected record too.
        let (_, mut layer, mut c2s, _) = moved_pair(&certs, suite);
        layer_reads(&mut layer, &mut c2s, 1 << 20).unwrap();
        let mut peer = layer.mirror();
        peer.seal_raw(21, &[2, 40]);
        while peer.wants_write() {
            peer.write_tls(&mut c2s).unwrap();
        }
        assert_eq!(layer_reads(&mut layer, &mut c2s, 1 << 20), Err(RecordError::Alert(40)), "{suite:?}");
        let (_, mut layer, mut c2s, _) = moved_pair(&certs, suite);
        layer_reads(&mut layer, &mut c2s, 1 << 20).unwrap();
        c2s.0.extend([20, 3, 3, 0, 1, 1]);
        assert!(layer_reads(&mut layer, &mut c2s, 1 << 20).is_err(), "{suite:?}");
        // A length past the protocol's.
        let (_, mut layer, mut c2s, _) = moved_pair(&certs, suite);
        layer_reads(&mut layer, &mut c2s, 1 << 20).unwrap();
        c2s.0.extend([23, 3, 3, 0x48, 0x01]);
        assert_eq!(layer_reads(&mut layer, &mut c2s, 1 << 20), Err(RecordError::Overflow), "{suite:?}");
    }
}

#[test]
fn the_aead_limit_closes_before_it_is_passed() {
    let certs = certs();
    for (version, aead, suite) in cases().into_iter().filter(|c| c.1 != Aead::Chacha20Poly1305) {
        let (_, layer, mut c2s, _) = moved_pair(&certs, suite);
        let limit = aead.confidentiality_limit(version);
        let mut state = MovedTls::from_layer(layer, 0, None, None);
        state.unsent.clear();
        state.tx.seq = limit - 1;
        let mut layer = state.into_layer().unwrap().0;
        layer_reads(&mut layer, &mut c2s, 1 << 20).unwrap();
        let mut peer = layer.mirror();
        assert_eq!(layer.write_plain(b"the last record"), Ok(15));
        assert_eq!(layer.write_plain(b"one too many"), Err(RecordError::Exhausted), "{suite:?}");
        let mut wire = Pipe::default();
        while layer.wants_write() {
            layer.write_tls(&mut wire).unwrap();
        }
        // The peer opens the last record, then close_notify (sealed with the limit's number).
        assert_eq!(layer_reads(&mut peer, &mut wire, 1 << 20).unwrap(), (b"the last record".to_vec(), true));
    }
}

#[test]
fn the_limits_are_rustls_own() {
    for suite in provider::ALL_CIPHER_SUITES {
        let (version, common) = match suite {
            SupportedCipherSuite::Tls13(s) => (Version::Tls13, &s.common),
            SupportedCipherSuite::Tls12(s) => (Version::Tls12, &s.common),
        };
        let aead = match common.suite {
            s if format!("{s:?}").contains("AES_128_GCM") => Aead::Aes128Gcm,
            s if format!("{s:?}").contains("AES_256_GCM") => Aead::Aes256Gcm,
            _ => Aead::Chacha20Poly1305,
        };
        let ours = aead.confidentiality_limit(version);
        assert_eq!(ours, common.confidentiality_limit.min(0xffff_ffff_ffff_0000), "{:?}", common.suite);
    }
}

#[test]
fn an_unfinished_handshake_cannot_move() {
    let certs = certs();
    let mut p = Pair::new(&certs, provider::cipher_suite::TLS13_AES_128_GCM_SHA256);
    p.client_flushes();
    p.server_reads();
    let (back, why) = freeze_rustls(Box::new(p.server), Vec::new(), false).unwrap_err();
    assert_eq!(why, CannotMove::Handshaking);
    assert!(back.is_some_and(|s| s.is_handshaking()), "given back as it was");
}

#[test]
fn bad_state_bytes_are_refused() {
    let certs = certs();
    let (_, layer, _, _) = moved_pair(&certs, provider::cipher_suite::TLS13_AES_256_GCM_SHA384);
    let good = MovedTls::from_layer(layer, 0x1302, Some("localhost".into()), Some(b"h2".to_vec())).encode();
    assert!(MovedTls::decode(&good).is_ok());
    assert_eq!(MovedTls::decode(b"nope"), Err(DecodeError::Magic));
    let mut future = good.to_vec();
    future[4] = 9;
    assert_eq!(MovedTls::decode(&future), Err(DecodeError::Format(9)));
    for cut in 0..good.len() {
        assert!(MovedTls::decode(&good[..cut]).is_err(), "cut at {cut}");
    }
    let mut long = good.to_vec();
    long.push(0);
    assert_eq!(MovedTls::decode(&long), Err(DecodeError::Trailing(1)));
    let mut aead = good.to_vec();
    aead[7] = 1; // AES-128 with a 32-byte key
    assert_eq!(MovedTls::decode(&aead), Err(DecodeError::Key));
}

/// Throughput of the record layer against rustls on the same suite, in memory (no sockets):
/// sealing and opening 16 KiB records, and rustls reading through [`RecordTail`] against reading
/// directly. `cargo test --release -p host --lib -- --ignored record_layer_throughput --nocapture`
#[test]
#[ignore = "a measurement: run it in release, by hand"]
fn record_layer_throughput() {
    use std::time::Instant;
    const ROUND: usize = 8 << 20;
    const ROUNDS: usize = 3;
    let certs = certs();
    let chunk = pattern(MAX_FRAGMENT, 1);
    let mut buf = vec![0u8; 64 * 1024];
    let mbps = |bytes: usize, t: std::time::Duration| bytes as f64 / t.as_secs_f64() / (1 << 20) as f64;
    for suite in
        [provider::cipher_suite::TLS13_AES_128_GCM_SHA256, provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256]
    {
        // Records from each client, made before the clocks start.
        let (mut client, mut layer, mut c2s, _) = moved_pair(&certs, suite);
        layer_reads(&mut layer, &mut c2s, 1 << 20).unwrap();
        let mut rustls_pair = Pair::new(&certs, suite);
        rustls_pair.handshake();
        let mut staged_pair = Pair::new(&certs, suite);
        staged_pair.handshake();
        let wire = |client: &mut ClientConnection| -> Vec<Vec<u8>> {
            (0..ROUNDS)
                .map(|_| {
                    let mut w = Vec::with_capacity(ROUND + ROUND / 64);
                    for _ in 0..ROUND / MAX_FRAGMENT {
                        client.writer().write_all(&chunk).unwrap();
                        while client.wants_write() {
                            client.write_tls(&mut w).unwrap();
                        }
                    }
                    w
                })
                .collect()
        };
        let layer_wire = wire(&mut client);
        let direct_wire = wire(&mut rustls_pair.client);
        let staged_wire = wire(&mut staged_pair.client);
        let (mut seal_l, mut seal_r, mut open_l, mut open_r, mut open_s) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for round in 0..ROUNDS {
            // Seal: the layer, then rustls.
            let t = Instant::now();
            for _ in 0..ROUND / MAX_FRAGMENT {
                assert_eq!(layer.write_plain(&chunk).unwrap(), MAX_FRAGMENT);
                while layer.wants_write() {
                    layer.write_tls(&mut io::sink()).unwrap();
                }
            }
            seal_l += mbps(ROUND, t.elapsed());
            let t = Instant::now();
            for _ in 0..ROUND / MAX_FRAGMENT {
                rustls_pair.server.writer().write_all(&chunk).unwrap();
                while rustls_pair.server.wants_write() {
                    rustls_pair.server.write_tls(&mut io::sink()).unwrap();
                }
            }
            seal_r += mbps(ROUND, t.elapsed());

            // Open: the layer; rustls reading directly; rustls reading through `RecordTail`.
            let t = Instant::now();
            let (mut rd, mut got) = (&layer_wire[round][..], 0);
            loop {
                match layer.read_plain(&mut buf).unwrap() {
                    Opened::Data(n) => got += n,
                    Opened::NeedMore if rd.is_empty() => break,
                    Opened::NeedMore => {
                        layer.read_tls(&mut rd).unwrap();
                    }
                    Opened::End => unreachable!(),
                }
            }
            assert_eq!(got, ROUND);
            open_l += mbps(ROUND, t.elapsed());
            for (staged, pair, wire, total) in [
                (true, &mut staged_pair, &staged_wire[round], &mut open_s),
                (false, &mut rustls_pair, &direct_wire[round], &mut open_r),
            ] {
                let mut socket = Wire(&wire[..]);
                let t = Instant::now();
                let (mut rd, mut got) = (&wire[..], 0);
                loop {
                    match pair.server.reader().read(&mut buf) {
                        Ok(n) => got += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("{e}"),
                    }
                    if got == ROUND {
                        break;
                    }
                    match staged {
                        true => match pair.server.read_tls(&mut pair.tail.reader(&mut socket)) {
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                            other => other.unwrap(),
                        },
                        false => pair.server.read_tls(&mut rd).unwrap(),
                    };
                    pair.server.process_new_packets().unwrap();
                }
                *total += mbps(ROUND, t.elapsed());
            }
        }
        let r = ROUNDS as f64;
        println!(
            "{suite:?}: seal layer {:.0} MiB/s, rustls {:.0} MiB/s ({:.2}x); open layer {:.0} MiB/s, rustls {:.0} MiB/s ({:.2}x); rustls through RecordTail {:.0} MiB/s ({:.2}x of direct)",
            seal_l / r,
            seal_r / r,
            seal_l / seal_r,
            open_l / r,
            open_r / r,
            open_l / open_r,
            open_s / r,
            open_s / open_r
        );
    }
}

/// Both pipes of a connection, as the server's socket.
struct Duplex<'a> {
    rx: &'a mut Pipe,
    tx: &'a mut Pipe,
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.rx.read(buf)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_key_update_on_a_moved_session_is_counted_and_the_client_told() {
    use std::sync::atomic::Ordering;

    use super::moved::COUNTERS;
    use super::session::TlsSession;

    let certs = certs();
    let (mut client, layer, mut c2s, mut s2c) = moved_pair(&certs, provider::cipher_suite::TLS13_AES_256_GCM_SHA384);
    let mut session =
        TlsSession::from_moved(MovedTls::from_layer(layer, 0x1302, Some("localhost".into()), None)).unwrap();
    assert!(session.is_moved());
    let mut buf = [0u8; 256];
    let n = session.read(&mut Duplex { rx: &mut c2s, tx: &mut s2c }, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"second, cut by the move");

    let before = COUNTERS.closed_key_update.load(Ordering::Relaxed);
    client.refresh_traffic_keys().unwrap();
    while client.wants_write() {
        client.write_tls(&mut c2s).unwrap();
    }
    let err = session.read(&mut Duplex { rx: &mut c2s, tx: &mut s2c }, &mut buf).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(COUNTERS.closed_key_update.load(Ordering::Relaxed) > before, "counted");
    // The records sealed before the move, then close_notify, reached the client.
    assert_eq!(client_reads(&mut client, &mut s2c), (b"welcome".to_vec(), true));
}

#[test]
fn streaming_allocates_nothing_per_record_and_a_pause_lets_the_buffers_go() {
    let certs = certs();
    let (mut client, mut layer, mut c2s, mut s2c) =
        moved_pair(&certs, provider::cipher_suite::TLS13_AES_128_GCM_SHA256);
    layer_reads(&mut layer, &mut c2s, 1 << 20).unwrap();
    let chunk = pattern(MAX_FRAGMENT, 5);
    layer_writes(&mut layer, &chunk, &mut s2c);
    let warm = layer.capacities();
    assert!(warm.1 > MAX_FRAGMENT, "kept after the record was written: {warm:?}");
    for _ in 0..50 {
        layer_writes(&mut layer, &chunk, &mut s2c);
        assert_eq!(layer.capacities(), warm, "the output buffer is reused record after record");
    }
    // Records in: the input buffer is reused too, until a read finds nothing.
    let up = pattern(20 * MAX_FRAGMENT, 9);
    let mut incoming = Vec::new();
    for part in up.chunks(MAX_FRAGMENT) {
        client.writer().write_all(part).unwrap();
        while client.wants_write() {
            client.write_tls(&mut incoming).unwrap();
        }
    }
    let mut rd = &incoming[..];
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut in_caps = std::collections::BTreeSet::new();
    while got.len() < up.len() {
        match layer.read_plain(&mut buf).unwrap() {
            Opened::Data(n) => got.extend_from_slice(&buf[..n]),
            Opened::NeedMore => {
                layer.read_tls(&mut rd).unwrap();
                in_caps.insert(layer.capacities().0);
            }
            Opened::End => unreachable!(),
        }
    }
    assert!(got == up);
    assert!(in_caps.len() <= 2, "grown once to a record's size, then reused: {in_caps:?}");
    assert!(layer.capacities().0 > 4096 && layer.capacities().1 > 4096);
    assert_eq!(layer.read_tls(&mut Pipe::default()).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    assert_eq!(layer.capacities(), (0, 0), "let go at the pause");
    // And it goes on as before.
    layer_writes(&mut layer, b"after the pause", &mut s2c);
    let mut expect = b"welcome".to_vec();
    for _ in 0..51 {
        expect.extend_from_slice(&chunk);
    }
    expect.extend_from_slice(b"after the pause");
    assert!(client_reads(&mut client, &mut s2c).0 == expect, "the client got every record");
}
