//! TLS to the broker (`rediss://`): the client side of rustls, over the driver's non-blocking
//! socket. The broker's certificate is checked against the URL's CA file (`?ca=PATH`) or, without
//! one, the system's CA bundle, and must name the URL's host (a name or an IP address). A URL
//! with `cert=FILE&key=FILE` offers that client certificate when the broker asks for one.

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::url::ClusterUrl;

/// Where Debian (and most distributions) keep the system's CA bundle.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The client configuration for `url` (a TLS URL): its CAs loaded, or why not.
pub fn client_config(url: &ClusterUrl) -> Result<Arc<ClientConfig>, String> {
    let file = url.ca_file.as_deref().unwrap_or(SYSTEM_BUNDLE);
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(file).map_err(|e| format!("could not read the CA file {file}: {e}"))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("the CA file {file} is not PEM: {e}"))?;
        roots.add(cert).map_err(|e| format!("a certificate of {file} is not usable as a CA: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("the CA file {file} has no certificate"));
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match &url.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let (chain, key_der) = client_identity(cert, key)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => {
                    format!("the client key {key} is not the key of the certificate {cert}")
                }
                e => format!("the client certificate {cert} or its key {key} cannot be used: {e}"),
            })?
        }
    };
    Ok(Arc::new(config))
}

/// The client certificate chain in `cert` and the private key in `key` (PEM), or why not.
fn client_identity(cert: &str, key: &str) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("could not read the client certificate {cert}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the client certificate {cert} is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err(format!("the client certificate file {cert} has no certificate"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!("the client key file {key} has no private key"),
        e => format!("could not read the client key {key}: {e}"),
    })?;
    Ok((chain, key_der))
}

/// A TLS session on a new connection to `host`.
pub fn session(config: &Arc<ClientConfig>, host: &str) -> Result<ClientConnection, String> {
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host} is no TLS server name: {e}"))?;
    ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())
}

/// Reads what the socket has through `tls`, handing the plaintext to `sink`; Ok(false) when the
/// broker closed the connection. Stops at `WouldBlock`.
pub fn read(
    tls: &mut ClientConnection,
    socket: &mut impl Read,
    chunk: &mut [u8],
    mut sink: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<bool, String> {
    loop {
        match tls.read_tls(socket) {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("could not read from the broker: {e}")),
        }
        let state = tls.process_new_packets().map_err(|e| format!("TLS with the broker failed: {e}"))?;
        let mut left = state.plaintext_bytes_to_read();
        while left > 0 {
            let n = tls.reader().read(chunk).map_err(|e| format!("TLS with the broker failed: {e}"))?;
            if n == 0 {
                break;
            }
            left -= n.min(left);
            sink(&chunk[..n])?;
        }
        if state.peer_has_closed() {
            return Ok(false);
        }
    }
}

/// Takes as much of `plain` as the session buffers, and writes what it has for the socket.
/// Returns the plaintext bytes taken; stops at `WouldBlock`.
pub fn write(tls: &mut ClientConnection, socket: &mut impl Write, plain: &[u8]) -> Result<usize, String> {
    let taken = if plain.is_empty() { 0 } else { tls.writer().write(plain).map_err(|e| e.to_string())? };
    while tls.wants_write() {
        match tls.write_tls(socket) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("could not write to the broker: {e}")),
        }
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A URL to a TLS broker with the client certificate and key `cert`, `key` (file names in
    /// `dir`), the CA `ca.pem` there.
    fn url(dir: &std::path::Path, cert: &str, key: &str) -> ClusterUrl {
        let path = |f: &str| dir.join(f).display().to_string();
        super::super::url::parse(&format!(
            "rediss://127.0.0.1:1?ca={}&cert={}&key={}",
            path("ca.pem"),
            path(cert),
            path(key)
        ))
        .unwrap()
    }

    #[test]
    fn client_certificates_are_loaded_and_a_mismatch_or_a_missing_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("host-cluster-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".to_string()]).unwrap().self_signed(&key).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        for (name, text) in [
            ("ca.pem", cert.pem()),
            ("client.pem", cert.pem()),
            ("client.key", key.serialize_pem()),
            ("other.key", other.serialize_pem()),
            ("empty.pem", String::new()),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let check = |cert: &str, key: &str| client_config(&url(&dir, cert, key)).map(|_| ());
        assert_eq!(check("client.pem", "client.key"), Ok(()));
        let mismatch = check("client.pem", "other.key").unwrap_err();
        assert!(mismatch.contains("is not the key of the certificate"), "{mismatch}");
        let missing = check("gone.pem", "client.key").unwrap_err();
        assert!(
            missing.starts_with("could not read the client certificate") && missing.contains("gone.pem"),
            "{missing}"
        );
        let missing = check("client.pem", "gone.key").unwrap_err();
        assert!(missing.starts_with("could not read the client key") && missing.contains("gone.key"), "{missing}");
        let empty = check("empty.pem", "client.key").unwrap_err();
        assert!(empty.contains("has no certificate"), "{empty}");
        let no_key = check("client.pem", "client.pem").unwrap_err();
        assert!(no_key.contains("has no private key"), "{no_key}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
