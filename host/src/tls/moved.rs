#![cfg_attr(not(test), allow(dead_code, reason = "the hand-over mechanism calls it; until it lands only the tests do"))]

//! A TLS connection moving to another worker: its state as plain bytes.
//!
//! A rustls `ServerConnection` is a value of one process; what another process needs to continue
//! the connection is much less: the protocol version and AEAD, each direction's traffic key, IV
//! and next sequence number, and the ciphertext in flight on either side of the record layer.
//! [`freeze_rustls`] takes these from rustls once its handshake is done (rustls 0.23's
//! `dangerous_extract_secrets`, which needs `enable_secret_extraction` in the server config),
//! [`MovedTls::encode`] makes bytes of them, and the new worker continues the connection with
//! [`super::record::RecordLayer`]. A connection that moved once moves again the same way
//! ([`MovedTls::from_layer`]).
//!
//! Why the buffered connection's `dangerous_extract_secrets`, not the unbuffered connection's
//! `dangerous_into_kernel_connection`: both give the same secrets and sequence numbers (the first
//! calls the second, and drops the `KernelConnection`), and the `KernelConnection` is what cannot
//! cross a process: it stays behind whichever is used. The buffered connection is what the
//! transport serves every TLS connection with; switching all of them to the unbuffered API would
//! buy nothing here. What the buffered API hides, the record rustls holds half received, is kept
//! as rustls reads it ([`super::tail`]).

use std::sync::atomic::{AtomicU64, Ordering};

use rustls::{CipherSuite, ConnectionTrafficSecrets, ProtocolVersion, ServerConnection};
use zeroize::Zeroizing;

use super::record::{Aead, KeyError, LayerParts, RecordLayer, TrafficKeys, Version};

/// The first bytes of an encoded state, and the format's version (a new field makes a new one;
/// a worker decodes the versions it knows and refuses the others).
const MAGIC: &[u8; 4] = b"HTLS";
const FORMAT: u8 = 1;
const FLAG_RX_CLOSED: u8 = 1;
const FLAG_TX_CLOSED: u8 = 2;

/// Why a TLS connection cannot move: it stays with its worker and drains there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CannotMove {
    /// The handshake is not finished: there are no traffic keys yet.
    #[error("its TLS handshake is not finished")]
    Handshaking,
    /// TLS still holds plaintext (the transport takes it out first: not expected).
    #[error("TLS holds plaintext not read yet")]
    PendingPlaintext,
    #[error("its TLS version {0} cannot be continued elsewhere")]
    Version(String),
    #[error("its cipher suite {0} cannot be continued elsewhere")]
    Suite(String),
    /// rustls refused to give up the secrets (the config lacks `enable_secret_extraction`, or
    /// the connection had failed). The connection is gone with it: close the socket.
    #[error("rustls gave no secrets: {0}")]
    Extraction(String),
    /// The peer sent what is not TLS records (rustls refuses it): the record rustls holds half
    /// received is not known.
    #[error("its peer sent bytes that are not TLS records")]
    Unframed,
    /// The connection had already failed (a TLS error): it is closing.
    #[error("its TLS connection failed: {0}")]
    Failed(String),
}

/// A moved connection's TLS state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedTls {
    pub version: Version,
    pub aead: Aead,
    /// The IANA number of the suite (for `status`: the AEAD is what the record layer needs).
    pub suite: u16,
    pub rx: TrafficKeys,
    pub tx: TrafficKeys,
    /// The peer sent `close_notify`; we did.
    pub rx_closed: bool,
    pub tx_closed: bool,
    /// The name the client asked for (SNI) and the protocol agreed (ALPN).
    pub server_name: Option<String>,
    pub alpn: Option<Vec<u8>>,
    /// Ciphertext received and not opened (a record not whole yet).
    pub received: Vec<u8>,
    /// Records sealed and not sent yet (rustls' session tickets, say): sent first.
    pub unsent: Vec<u8>,
}

/// Bytes that are not a moved TLS state this worker can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a moved TLS state")]
    Magic,
    #[error("moved TLS state format {0} is not known here")]
    Format(u8),
    #[error("the moved TLS state is cut short")]
    Short,
    #[error("the moved TLS state has {0} bytes too many")]
    Trailing(usize),
    #[error("the moved TLS state names an unknown TLS version {0:#06x}")]
    Version(u16),
    #[error("the moved TLS state names an unknown AEAD {0}")]
    Aead(u8),
    #[error("the moved TLS state has a key of the wrong length")]
    Key,
    #[error("the moved TLS state's server name is not UTF-8")]
    Name,
}

/// Moved TLS connections of this worker: what `status` and `/metrics` can show.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections whose TLS state was taken out to move.
    pub moved_out: AtomicU64,
    /// Connections continued here from moved state.
    pub moved_in: AtomicU64,
    /// Moved connections closed because the peer sent a KeyUpdate.
    pub closed_key_update: AtomicU64,
    /// Moved connections closed at the AEAD limit.
    pub closed_exhausted: AtomicU64,
}

/// This worker's counters.
pub static COUNTERS: Counters = Counters {
    moved_out: AtomicU64::new(0),
    moved_in: AtomicU64::new(0),
    closed_key_update: AtomicU64::new(0),
    closed_exhausted: AtomicU64::new(0),
};

impl Counters {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn aead_of(suite: CipherSuite) -> Option<Aead> {
    use CipherSuite::*;
    match suite {
        TLS13_AES_128_GCM_SHA256 | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => {
            Some(Aead::Aes128Gcm)
        }
        TLS13_AES_256_GCM_SHA384 | TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 | TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => {
            Some(Aead::Aes256Gcm)
        }
        TLS13_CHACHA20_POLY1305_SHA256
        | TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Some(Aead::Chacha20Poly1305),
        _ => None,
    }
}

fn keys_of(aead: Aead, seq: u64, secrets: &ConnectionTrafficSecrets) -> Result<TrafficKeys, CannotMove> {
    let (key, iv) = match (aead, secrets) {
        (Aead::Aes128Gcm, ConnectionTrafficSecrets::Aes128Gcm { key, iv })
        | (Aead::Aes256Gcm, ConnectionTrafficSecrets::Aes256Gcm { key, iv })
        | (Aead::Chacha20Poly1305, ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }) => (key, iv),
        _ => return Err(CannotMove::Extraction("the secrets are not of the suite's AEAD".into())),
    };
    let iv: [u8; 12] =
        iv.as_ref().try_into().map_err(|_| CannotMove::Extraction("an IV of the wrong length".into()))?;
    TrafficKeys::new(key.as_ref(), iv, seq).ok_or_else(|| CannotMove::Extraction("a key of the wrong length".into()))
}

/// A rustls connection that cannot move, given back as it was (None: rustls consumed it, see
/// [`CannotMove::Extraction`]), and why.
pub type Refused = (Option<Box<ServerConnection>>, CannotMove);

/// Takes the TLS state out of `conn`. The caller has read every byte of plaintext rustls held,
/// and gives the bytes of the record rustls holds half received (`received`, see
/// [`super::tail`]); `tx_closed` says whether we sent `close_notify`. Records rustls holds to
/// send are taken as they are.
pub fn freeze_rustls(mut conn: Box<ServerConnection>, received: Vec<u8>, tx_closed: bool) -> Result<MovedTls, Refused> {
    if conn.is_handshaking() {
        return Err((Some(conn), CannotMove::Handshaking));
    }
    let io = match conn.process_new_packets() {
        Ok(io) => io,
        Err(e) => return Err((Some(conn), CannotMove::Failed(e.to_string()))),
    };
    if io.plaintext_bytes_to_read() > 0 {
        return Err((Some(conn), CannotMove::PendingPlaintext));
    }
    let version = match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => Version::Tls13,
        Some(ProtocolVersion::TLSv1_2) => Version::Tls12,
        other => return Err((Some(conn), CannotMove::Version(format!("{other:?}")))),
    };
    let Some(suite) = conn.negotiated_cipher_suite().map(|s| s.suite()) else {
        return Err((Some(conn), CannotMove::Handshaking));
    };
    let Some(aead) = aead_of(suite) else {
        return Err((Some(conn), CannotMove::Suite(format!("{suite:?}"))));
    };
    let server_name = conn.server_name().map(str::to_string);
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let rx_closed = io.peer_has_closed();
    let mut unsent = Vec::new();
    while conn.wants_write() {
        if let Err(e) = conn.write_tls(&mut unsent) {
            return Err((Some(conn), CannotMove::Failed(e.to_string())));
        }
    }
    let secrets = conn.dangerous_extract_secrets().map_err(|e| (None, CannotMove::Extraction(e.to_string())))?;
    let rx = keys_of(aead, secrets.rx.0, &secrets.rx.1).map_err(|e| (None, e))?;
    let tx = keys_of(aead, secrets.tx.0, &secrets.tx.1).map_err(|e| (None, e))?;
    Counters::count(&COUNTERS.moved_out);
    Ok(MovedTls {
        version,
        aead,
        suite: u16::from(suite),
        rx,
        tx,
        rx_closed,
        tx_closed,
        server_name,
        alpn,
        received: if rx_closed { Vec::new() } else { received },
        unsent,
    })
}

impl MovedTls {
    /// The state of a connection that moved here and moves on. The caller has read the
    /// plaintext the layer held ([`RecordLayer::has_plaintext`]).
    pub fn from_layer(layer: RecordLayer, suite: u16, server_name: Option<String>, alpn: Option<Vec<u8>>) -> Self {
        let LayerParts { version, aead, rx, tx, received, unsent, rx_closed, tx_closed } = layer.into_parts();
        Counters::count(&COUNTERS.moved_out);
        MovedTls { version, aead, suite, rx, tx, rx_closed, tx_closed, server_name, alpn, received, unsent }
    }

    /// The record layer that continues the connection here.
    pub fn into_layer(self) -> Result<(RecordLayer, TlsNames), KeyError> {
        let MovedTls { version, aead, suite, rx, tx, rx_closed, tx_closed, server_name, alpn, received, unsent } = self;
        let layer = RecordLayer::new(LayerParts { version, aead, rx, tx, received, unsent, rx_closed, tx_closed })?;
        Counters::count(&COUNTERS.moved_in);
        Ok((layer, TlsNames { suite, server_name, alpn }))
    }

    /// The state as bytes (wiped when dropped: they hold the keys).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(128 + self.received.len() + self.unsent.len()));
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        out.extend_from_slice(&self.version.wire().to_be_bytes());
        out.push(self.aead.wire());
        out.extend_from_slice(&self.suite.to_be_bytes());
        let flags = (u8::from(self.rx_closed) * FLAG_RX_CLOSED) | (u8::from(self.tx_closed) * FLAG_TX_CLOSED);
        out.push(flags);
        for keys in [&self.rx, &self.tx] {
            out.extend_from_slice(&keys.seq.to_be_bytes());
            out.push(keys.key().len() as u8);
            out.extend_from_slice(keys.key());
            out.extend_from_slice(&keys.iv);
        }
        put_opt(&mut out, self.server_name.as_ref().map(String::as_bytes));
        put_opt(&mut out, self.alpn.as_deref());
        for bytes in [&self.received, &self.unsent] {
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }

    /// The state from [`MovedTls::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(DecodeError::Magic);
        }
        let format = r.u8()?;
        if format != FORMAT {
            return Err(DecodeError::Format(format));
        }
        let v = r.u16()?;
        let version = Version::from_wire(v).ok_or(DecodeError::Version(v))?;
        let a = r.u8()?;
        let aead = Aead::from_wire(a).ok_or(DecodeError::Aead(a))?;
        let suite = r.u16()?;
        let flags = r.u8()?;
        let mut keys = || -> Result<TrafficKeys, DecodeError> {
            let seq = r.u64()?;
            let len = usize::from(r.u8()?);
            if len != aead.key_len() {
                return Err(DecodeError::Key);
            }
            let key = Zeroizing::new(r.take(len)?.to_vec());
            let iv = r.take(12)?.try_into().expect("12 bytes");
            TrafficKeys::new(&key, iv, seq).ok_or(DecodeError::Key)
        };
        let rx = keys()?;
        let tx = keys()?;
        let server_name = r.opt()?.map(|b| String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Name)).transpose()?;
        let alpn = r.opt()?.map(<[u8]>::to_vec);
        let received = r.block()?.to_vec();
        let unsent = r.block()?.to_vec();
        if !r.0.is_empty() {
            return Err(DecodeError::Trailing(r.0.len()));
        }
        Ok(MovedTls {
            version,
            aead,
            suite,
            rx,
            tx,
            rx_closed: flags & FLAG_RX_CLOSED != 0,
            tx_closed: flags & FLAG_TX_CLOSED != 0,
            server_name,
            alpn,
            received,
            unsent,
        })
    }
}

/// What a moved connection still answers about its session (the transport's `server_name`,
/// `alpn_protocol`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsNames {
    pub suite: u16,
    pub server_name: Option<String>,
    pub alpn: Option<Vec<u8>>,
}

/// Optional bytes: a presence byte, a u16 length, the bytes.
fn put_opt(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            out.extend_from_slice(&(b.len().min(u16::MAX as usize) as u16).to_be_bytes());
            out.extend_from_slice(&b[..b.len().min(u16::MAX as usize)]);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Short);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn opt(&mut self) -> Result<Option<&'a [u8]>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            _ => {
                let len = usize::from(self.u16()?);
                Ok(Some(self.take(len)?))
            }
        }
    }

    fn block(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes"));
        self.take(len as usize)
    }
}
