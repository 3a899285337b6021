//! TLS for a service: its certificate chain and key (PEM files), read and checked by the master
//! before any worker starts (and before any user switch), handed to workers as PEM text in their
//! spec, and turned into a rustls `ServerConfig` by each worker.
//!
//! The crypto provider is rustls' `ring`: it builds with the plain Rust toolchain (aws-lc-rs
//! needs cmake and nasm). TLS 1.2 and 1.3 with rustls' default (safe) cipher suites; rustls has
//! no renegotiation.
//!
//! Session resumption: stateless tickets (TLS 1.2 and 1.3) sealed with keys the master makes
//! and shares among a service's workers ([`tickets`]), so a session resumes on any worker and
//! across reloads and upgrades. TLS 1.2 session IDs (for a client without tickets) stay in
//! rustls' per-process cache: they resume only on the worker that made them.
//!
//! An established connection can move to another worker ([`moved`]): its traffic keys and
//! sequence numbers go as bytes, and [`record`] continues the record layer there.

pub mod keys;
#[cfg(test)]
pub(crate) mod move_tests;
pub mod moved;
pub mod record;
pub mod session;
pub mod tail;
pub mod tickets;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use serde::{Deserialize, Serialize};

/// A certificate that expires sooner than this is served, with a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86400);

/// A service's TLS settings as configured: where its files are, and its ALPN protocols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server's certificate first, then its chain.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Offered to clients in this order (empty: no ALPN).
    pub alpn: Vec<String>,
    /// `alpn` is the configuration's (`tls_alpn`): the plugin cannot choose another.
    pub alpn_fixed: bool,
}

impl TlsFiles {
    /// `cert` and `key` with the ALPN protocols given, or the plugin's default ones (which the
    /// plugin may replace when it starts: `Host::set_alpn`).
    pub fn new(cert: PathBuf, key: PathBuf, alpn: Option<Vec<String>>, plugin: &str) -> Self {
        let alpn_fixed = alpn.is_some();
        let alpn = alpn.unwrap_or_else(|| default_alpn(plugin));
        TlsFiles { cert, key, alpn, alpn_fixed }
    }
}

/// The ALPN protocols of a service that names none: `h2`, `http/1.1` and `http/1.0` for the http
/// plugin (by name, or a path to `libhttp.so`/`http.so`), none for the others, until the plugin
/// chooses its own when it starts (`RawHostExt::set_alpn`, plugin-api 0.1.4: the http plugin
/// leaves `h2` out when HTTP/2 is off). A client that offers ALPN and none of these is refused
/// (RFC 7301).
pub fn default_alpn(plugin: &str) -> Vec<String> {
    let stem = Path::new(plugin).file_stem().and_then(|s| s.to_str()).unwrap_or(plugin);
    match stem.strip_prefix("lib").unwrap_or(stem) {
        "http" => vec!["h2".to_string(), "http/1.1".to_string(), "http/1.0".to_string()],
        _ => Vec::new(),
    }
}

/// What a worker gets: the checked PEM text and the ALPN protocols.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsSpec {
    pub cert_pem: String,
    pub key_pem: String,
    #[serde(default)]
    pub alpn: Vec<String>,
    /// The service's session ticket keys, set by the master when it starts a worker (None in
    /// the master's own copy, and in the checks: rustls' default, no shared tickets).
    #[serde(default)]
    pub tickets: Option<tickets::TicketKeys>,
    /// `alpn` is the configuration's: the plugin cannot replace it (`RawHostExt::set_alpn`).
    #[serde(default)]
    pub alpn_fixed: bool,
}

impl fmt::Debug for TlsSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key in a log line.
        f.debug_struct("TlsSpec").field("cert_pem_len", &self.cert_pem.len()).field("alpn", &self.alpn).finish()
    }
}

/// What `status` shows of a service's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    /// The leaf certificate's subject (`CN=example.com`).
    pub subject: String,
    /// Its expiry, in seconds since the epoch.
    pub not_after: i64,
    /// Its expiry as the certificate says it (`Jan  1 00:00:00 2030 +00:00`).
    pub not_after_text: String,
    /// Why the last change of the files was refused (the workers serve this certificate, the
    /// last good one); cleared by the next good change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl CertInfo {
    /// How long until it expires (zero once it has).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        Duration::from_secs(self.not_after.saturating_sub(now).max(0) as u64)
    }
}

/// Logs a warning when `info`'s certificate expires within [`EXPIRY_WARNING`] (at start and when
/// a new certificate arrives by hot reload).
pub fn warn_if_expiring(service: &str, info: &CertInfo, now: SystemTime) {
    let remaining = info.remaining(now);
    if remaining < EXPIRY_WARNING {
        let days = remaining.as_secs() / 86400;
        tracing::warn!(service, subject = %info.subject, expires = %info.not_after_text, "the certificate expires in {days} days");
    }
}

/// Why a certificate and key cannot be served. One line, naming the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("could not read {path}: {cause}")]
    Read { path: PathBuf, cause: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("the key {key} does not match the certificate {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS could not be set up: {0}")]
    Config(String),
}

/// Reads `files` and checks them (see [`check`]).
pub fn load(files: &TlsFiles, now: SystemTime) -> Result<(TlsSpec, CertInfo), TlsError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| TlsError::Read { path: path.to_path_buf(), cause: e.to_string() })
    };
    let spec = TlsSpec {
        cert_pem: read(&files.cert)?,
        key_pem: read(&files.key)?,
        alpn: files.alpn.clone(),
        tickets: None,
        alpn_fixed: files.alpn_fixed,
    };
    let info = check(&spec, &files.cert, &files.key, now)?;
    Ok((spec, info))
}

/// Checks that the certificate chain and the key parse, that the key is the certificate's, and
/// that the certificate is valid now. `cert` and `key` name the files in errors.
pub fn check(spec: &TlsSpec, cert: &Path, key: &Path, now: SystemTime) -> Result<CertInfo, TlsError> {
    let invalid = |path: &Path, message: String| TlsError::Invalid { path: path.to_path_buf(), message };
    let chain = parse_chain(spec).map_err(|m| invalid(cert, m))?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| invalid(cert, format!("the first certificate is not valid X.509: {e}")))?;
    let validity = leaf.validity();
    let now_s = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    if validity.not_after.timestamp() < now_s {
        return Err(invalid(cert, format!("the certificate expired on {}", validity.not_after)));
    }
    if validity.not_before.timestamp() > now_s {
        return Err(invalid(cert, format!("the certificate is not valid before {}", validity.not_before)));
    }
    let info = CertInfo {
        subject: leaf.subject().to_string(),
        not_after: validity.not_after.timestamp(),
        not_after_text: validity.not_after.to_string(),
        refused: None,
    };
    let private = parse_key(spec).map_err(|m| invalid(key, m))?;
    match rustls::sign::CertifiedKey::from_der(chain, private, &rustls::crypto::ring::default_provider()) {
        Ok(_) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsError::Mismatch { cert: cert.into(), key: key.into() });
        }
        Err(e) => return Err(invalid(key, format!("the key cannot be used: {e}"))),
    }
    server_config(spec)?;
    Ok(info)
}

fn parse_chain(spec: &TlsSpec) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(spec.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(chain)
}

fn parse_key(spec: &TlsSpec) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(spec.key_pem.as_bytes()).map_err(|e| format!("no PEM private key in it: {e}"))
}

/// The rustls server configuration a worker serves with.
pub fn server_config(spec: &TlsSpec) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = parse_chain(spec).map_err(TlsError::Config)?;
    let key = parse_key(spec).map_err(TlsError::Config)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))?;
    config.alpn_protocols = spec.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // A connection can move to another worker (`moved`): rustls gives up its traffic secrets
    // once the handshake is done. A gate only: rustls keeps the same state either way, and
    // ticket keys and resumption are untouched.
    config.enable_secret_extraction = true;
    if let Some(keys) = &spec.tickets {
        config.ticketer = Arc::new(tickets::SharedTicketer::new(keys.clone()));
    }
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_gets_http11_by_default_and_others_nothing() {
        assert_eq!(default_alpn("http"), vec!["h2", "http/1.1", "http/1.0"]);
        assert_eq!(default_alpn("/opt/plugins/libhttp.so"), vec!["h2", "http/1.1", "http/1.0"]);
        assert!(default_alpn("text").is_empty());
        assert!(default_alpn("websocket").is_empty());
        let files = TlsFiles::new("c".into(), "k".into(), Some(vec![]), "http");
        assert!(files.alpn.is_empty() && files.alpn_fixed, "an explicit empty list wins");
        assert!(!TlsFiles::new("c".into(), "k".into(), None, "http").alpn_fixed);
    }

    #[test]
    fn garbage_is_refused_with_the_file_named() {
        let spec =
            TlsSpec { cert_pem: "nope".into(), key_pem: "nope".into(), alpn: vec![], tickets: None, alpn_fixed: false };
        let err = check(&spec, Path::new("/c.pem"), Path::new("/k.pem"), SystemTime::now()).unwrap_err();
        assert!(err.to_string().starts_with("/c.pem: no PEM certificate"), "{err}");
    }

    #[test]
    fn the_key_is_never_in_debug_output() {
        let spec =
            TlsSpec { cert_pem: "C".into(), key_pem: "SECRET".into(), alpn: vec![], tickets: None, alpn_fixed: false };
        assert!(!format!("{spec:?}").contains("SECRET"));
    }
}
