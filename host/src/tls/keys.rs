//! The keys of a moved TLS connection ([`super::moved`], [`super::record`]): its protocol
//! version, its AEAD and each direction's traffic key, IV and sequence number.

use ring::aead::{self, LessSafeKey, UnboundKey};
use zeroize::Zeroize;

/// A sequence number past which rustls refuses to go on (it wraps at 2^64); ours too.
pub const SEQ_SOFT_LIMIT: u64 = 0xffff_ffff_ffff_0000;

/// The protocol version of a moved connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Tls12,
    Tls13,
}

impl Version {
    /// Its number on the wire (0x0303, 0x0304).
    pub fn wire(self) -> u16 {
        match self {
            Version::Tls12 => 0x0303,
            Version::Tls13 => 0x0304,
        }
    }

    pub fn from_wire(v: u16) -> Option<Self> {
        match v {
            0x0303 => Some(Version::Tls12),
            0x0304 => Some(Version::Tls13),
            _ => None,
        }
    }
}

/// The AEAD of a moved connection's suite: every suite rustls' `ring` provider offers uses one
/// of these three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aead {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Aead {
    pub fn key_len(self) -> usize {
        match self {
            Aead::Aes128Gcm => 16,
            Aead::Aes256Gcm | Aead::Chacha20Poly1305 => 32,
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Aead::Aes128Gcm => &aead::AES_128_GCM,
            Aead::Aes256Gcm => &aead::AES_256_GCM,
            Aead::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    /// Records one key may seal: the confidentiality limits rustls' `ring` suites declare (and
    /// that rustls enforces by a KeyUpdate in TLS 1.3, a close in TLS 1.2), capped where it stops
    /// before the sequence number wraps. A test checks them against rustls' own.
    pub fn confidentiality_limit(self, version: Version) -> u64 {
        // (Both versions alike: `version` is here for the day they differ.)
        let _ = version;
        let limit = match self {
            Aead::Chacha20Poly1305 => u64::MAX,
            Aead::Aes128Gcm | Aead::Aes256Gcm => 1 << 24,
        };
        limit.min(SEQ_SOFT_LIMIT)
    }

    pub fn wire(self) -> u8 {
        match self {
            Aead::Aes128Gcm => 1,
            Aead::Aes256Gcm => 2,
            Aead::Chacha20Poly1305 => 3,
        }
    }

    pub fn from_wire(v: u8) -> Option<Self> {
        match v {
            1 => Some(Aead::Aes128Gcm),
            2 => Some(Aead::Aes256Gcm),
            3 => Some(Aead::Chacha20Poly1305),
            _ => None,
        }
    }
}

/// One direction's traffic key, IV and the sequence number of its next record (the count of
/// records this key has sealed or opened: what the AEAD limits are counted in). For TLS 1.2
/// AES-GCM the IV is the 4-byte salt followed by the 8 bytes the explicit nonces are made from
/// (as rustls extracts it). Wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct TrafficKeys {
    key: [u8; 32],
    key_len: usize,
    pub iv: [u8; aead::NONCE_LEN],
    pub seq: u64,
}

impl TrafficKeys {
    /// None when the key is longer than any AEAD's here.
    pub fn new(key: &[u8], iv: [u8; aead::NONCE_LEN], seq: u64) -> Option<Self> {
        let mut k = [0u8; 32];
        k.get_mut(..key.len())?.copy_from_slice(key);
        Some(TrafficKeys { key: k, key_len: key.len(), iv, seq })
    }

    pub fn key(&self) -> &[u8] {
        &self.key[..self.key_len]
    }

    /// The nonce of record `seq`: the IV xor the sequence number (TLS 1.3, TLS 1.2 ChaCha20, and
    /// how rustls makes TLS 1.2 GCM's explicit nonces).
    pub(super) fn nonce(&self, seq: u64) -> [u8; aead::NONCE_LEN] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }
}

impl Drop for TrafficKeys {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

impl std::fmt::Debug for TrafficKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never key material in a log line.
        f.debug_struct("TrafficKeys").field("seq", &self.seq).finish_non_exhaustive()
    }
}

/// A key of the wrong length for its AEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {aead:?} key must be {} bytes", aead.key_len())]
pub struct KeyError {
    pub aead: Aead,
}

pub fn less_safe_key(aead: Aead, keys: &TrafficKeys) -> Result<LessSafeKey, KeyError> {
    if keys.key_len != aead.key_len() {
        return Err(KeyError { aead });
    }
    let key = UnboundKey::new(aead.algorithm(), keys.key()).map_err(|_| KeyError { aead })?;
    Ok(LessSafeKey::new(key))
}
