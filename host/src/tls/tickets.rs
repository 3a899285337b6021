//! TLS session tickets shared by the workers of a service, so that a client resumes its session
//! on whichever worker its next connection reaches (and after a reload or an upgrade).
//!
//! The master makes each service's keys (random, from the OS) and hands them to every worker it
//! starts, in its spec. They change every [`PERIOD`] (12 h) by a one-way step: a period's key is
//! HMAC-SHA256 of the previous one, so master and workers step forward alike without talking,
//! and a key leaked today does not open yesterday's tickets older than one period. A ticket is
//! sealed with the current key; the previous one still opens tickets (as nginx and rustls'
//! `TicketSwitcher` do). The master keeps the keys across reloads and hands them to its new
//! image in the upgrade state. Key material is never in a log line: `Debug` shows the period.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// How long a key seals tickets before the next one takes over.
pub const PERIOD: Duration = Duration::from_secs(12 * 3600);

const KEY_LEN: usize = 32;
/// A ticket starts with the period of the key that sealed it (8 bytes, big-endian).
const HEADER_LEN: usize = 8;

/// The ticket keys of one service at one period.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketKeys {
    /// The period number (seconds since the epoch / [`PERIOD`]) `current` is the key of.
    period: u64,
    current: [u8; KEY_LEN],
    previous: [u8; KEY_LEN],
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKeys").field("period", &self.period).finish_non_exhaustive()
    }
}

/// The OS gave no random bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not make TLS ticket keys: the OS random source failed")]
pub struct RandomError;

fn period_of(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / PERIOD.as_secs())
}

fn derive(key: &[u8; KEY_LEN], label: &[u8]) -> [u8; KEY_LEN] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), label);
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

/// The next period's key: one way, so an old key cannot be found from a newer one.
fn step(key: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    derive(key, b"host tls ticket key: next period")
}

impl TicketKeys {
    /// New random keys for the period of `now` (the previous key is random too: it opens nothing).
    pub fn generate(now: SystemTime) -> Result<Self, RandomError> {
        let rng = SystemRandom::new();
        let mut keys = TicketKeys { period: period_of(now), current: [0; KEY_LEN], previous: [0; KEY_LEN] };
        rng.fill(&mut keys.current).map_err(|_| RandomError)?;
        rng.fill(&mut keys.previous).map_err(|_| RandomError)?;
        Ok(keys)
    }

    /// Steps the keys forward to the period of `now` (never back: a clock set back keeps them).
    pub fn advance(&mut self, now: SystemTime) {
        let target = period_of(now);
        if target <= self.period {
            return;
        }
        let steps = target - self.period;
        if steps >= 2 {
            for _ in 0..steps - 1 {
                self.current = step(&self.current);
            }
        }
        self.previous = self.current;
        self.current = step(&self.current);
        self.period = target;
    }

    #[cfg(test)]
    pub fn period(&self) -> u64 {
        self.period
    }

    /// The AEAD key of `period`'s chain key (the chain key itself never seals anything).
    fn sealing_key(chain: &[u8; KEY_LEN]) -> LessSafeKey {
        let key = derive(chain, b"host tls ticket key: chacha20-poly1305");
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).expect("a 32-byte key"))
    }
}

/// The master's ticket keys, per service name: made at a service's first worker, kept for the
/// master's life (reloads included) and handed over on `host upgrade`.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct TicketStore {
    services: BTreeMap<String, TicketKeys>,
}

impl fmt::Debug for TicketStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketStore").field("services", &self.services.keys().collect::<Vec<_>>()).finish()
    }
}

impl TicketStore {
    /// `service`'s keys at `now` (made on first use), for a worker's spec.
    pub fn keys(&mut self, service: &str, now: SystemTime) -> Result<TicketKeys, RandomError> {
        let keys = match self.services.get_mut(service) {
            Some(keys) => keys,
            None => self.services.entry(service.to_string()).or_insert(TicketKeys::generate(now)?),
        };
        keys.advance(now);
        Ok(keys.clone())
    }

    /// Steps every service's keys to `now`, forgetting the older ones.
    pub fn advance(&mut self, now: SystemTime) {
        for keys in self.services.values_mut() {
            keys.advance(now);
        }
    }
}

/// rustls' ticket maker in a worker: tickets sealed with the service's current key (ChaCha20-
/// Poly1305, a random nonce, the period as associated data), opened with the current or the
/// previous key.
pub struct SharedTicketer {
    keys: Mutex<TicketKeys>,
    rng: SystemRandom,
}

impl fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedTicketer").finish_non_exhaustive()
    }
}

impl SharedTicketer {
    pub fn new(keys: TicketKeys) -> Self {
        SharedTicketer { keys: Mutex::new(keys), rng: SystemRandom::new() }
    }

    fn keys_now(&self) -> TicketKeys {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.advance(SystemTime::now());
        keys.clone()
    }

    fn seal(keys: &TicketKeys, nonce: [u8; NONCE_LEN], plain: &[u8]) -> Vec<u8> {
        let header = keys.period.to_be_bytes();
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plain.len() + CHACHA20_POLY1305.tag_len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        TicketKeys::sealing_key(&keys.current)
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(header), &mut body)
            .expect("a ticket is far below the AEAD's limit");
        out.extend_from_slice(&body);
        out
    }

    fn open(keys: &TicketKeys, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < HEADER_LEN + NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return None;
        }
        let header: [u8; HEADER_LEN] = cipher[..HEADER_LEN].try_into().ok()?;
        let period = u64::from_be_bytes(header);
        let chain = if period == keys.period {
            &keys.current
        } else if period.checked_add(1) == Some(keys.period) {
            &keys.previous
        } else {
            return None;
        };
        let nonce = Nonce::try_assume_unique_for_key(&cipher[HEADER_LEN..HEADER_LEN + NONCE_LEN]).ok()?;
        let mut body = cipher[HEADER_LEN + NONCE_LEN..].to_vec();
        let plain = TicketKeys::sealing_key(chain).open_in_place(nonce, Aad::from(header), &mut body).ok()?;
        let len = plain.len();
        body.truncate(len);
        Some(body)
    }
}

impl rustls::server::ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        // A ticket opens while its key is the current or the previous one: at least one period.
        PERIOD.as_secs() as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        Some(Self::seal(&self.keys_now(), nonce, plain))
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        Self::open(&self.keys_now(), cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    fn at(period: u64) -> SystemTime {
        UNIX_EPOCH + PERIOD * period as u32 + Duration::from_secs(60)
    }

    #[test]
    fn a_ticket_from_one_worker_opens_on_another_with_the_same_keys_only() {
        let keys = TicketKeys::generate(SystemTime::now()).unwrap();
        let (a, b) = (SharedTicketer::new(keys.clone()), SharedTicketer::new(keys));
        let ticket = a.encrypt(b"session state").unwrap();
        assert_eq!(b.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        let other = SharedTicketer::new(TicketKeys::generate(SystemTime::now()).unwrap());
        assert_eq!(other.decrypt(&ticket), None, "another service's keys open nothing");
        let mut tampered = ticket.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(b.decrypt(&tampered), None);
        assert_eq!(b.decrypt(&ticket[..10]), None);
    }

    #[test]
    fn the_previous_period_still_opens_and_older_ones_do_not() {
        let keys = TicketKeys::generate(at(100)).unwrap();
        let sealed = SharedTicketer::seal(&keys, [7; NONCE_LEN], b"x");
        let mut next = keys.clone();
        next.advance(at(101));
        assert_eq!(next.period(), 101);
        assert_eq!(SharedTicketer::open(&next, &sealed).as_deref(), Some(&b"x"[..]));
        let mut later = keys.clone();
        later.advance(at(102));
        assert_eq!(SharedTicketer::open(&later, &sealed), None);
        // Stepping twice by one is stepping once by two: master and workers agree.
        let mut twice = next.clone();
        twice.advance(at(102));
        assert!(twice == later);
        // The clock going back keeps the keys.
        twice.advance(at(50));
        assert!(twice == later);
    }

    #[test]
    fn the_store_keeps_a_service_keys_and_no_key_is_in_debug_output() {
        let mut store = TicketStore::default();
        let a = store.keys("web", at(10)).unwrap();
        assert!(store.keys("web", at(10)).unwrap() == a);
        assert!(store.keys("api", at(10)).unwrap() != a);
        let json = serde_json::to_string(&store).unwrap();
        let back: TicketStore = serde_json::from_str(&json).unwrap();
        assert!(back.clone().keys("web", at(10)).unwrap() == a);
        let shown = format!("{store:?} {a:?} {:?}", SharedTicketer::new(a.clone()));
        assert!(!shown.contains("current") && !shown.contains(&format!("{:?}", &a.current[..4])), "{shown}");
    }
}
