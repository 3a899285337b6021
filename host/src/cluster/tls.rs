//! TLS to the broker (`rediss://`): the client side of rustls, over the driver's non-blocking
//! socket. The broker's certificate is checked against the URL's CA file (`?ca=PATH`) or, without
//! one, the system's CA bundle, and must name the URL's host (a name or an IP address).

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
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
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
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
