//! A TLS connection moved from rustls to the record layer in the middle of a conversation with
//! another TLS implementation: Python's `ssl` (OpenSSL) as the client, over a real TCP socket on
//! loopback, for TLS 1.3 and TLS 1.2 with AES-GCM and ChaCha20-Poly1305. The transport is driven
//! with a blocking socket (a read timeout bounds every wait).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::transport::{TlsSession, Transport};
use crate::tls::moved::MovedTls;

/// The client: a line before the move, a long one and a short one after it, each echoed back
/// byte-exact; then `close_notify` both ways. Prints the version and suite it got.
const CLIENT: &str = r#"
import socket, ssl, sys
port, version, ciphers = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
ctx.minimum_version = v
ctx.maximum_version = v
if ciphers:
    ctx.set_ciphers(ciphers)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
f = s.makefile("rwb")
def line(data):
    f.write(data)
    f.flush()
    got = f.readline()
    assert got == data, (len(got), len(data))
line(b"before the move\n")
line(bytes((i * 7 + 1) % 240 + 11 for i in range(100000)) + b"\n")
line(b"after the move\n")
print(s.version(), s.cipher()[0])
s.unwrap()
s.close()
"#;

/// Kills the client if the test fails before it ends.
struct Client(Option<Child>);

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reads plaintext until a line is whole (what follows it stays in `buf`).
fn read_line(t: &mut Transport, buf: &mut Vec<u8>) -> io::Result<Option<Vec<u8>>> {
    loop {
        if let Some(at) = buf.iter().position(|&b| b == b'\n') {
            return Ok(Some(buf.drain(..=at).collect()));
        }
        let mut chunk = [0u8; 16 * 1024];
        match t.read(&mut chunk)? {
            0 => return Ok(None),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn write_all(t: &mut Transport, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = t.write(data)?;
        data = &data[n..];
        t.flush()?;
    }
    t.flush()
}

fn run(version: &str, ciphers: &str, want: &str) {
    let certs = crate::tls::move_tests::certs();
    let config = crate::tls::server_config(&certs.spec).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let client = Command::new("python3")
        .args(["-c", CLIENT, &port, version, ciphers])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut client = Client(Some(client));
    let (sock, _) = listener.accept().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    sock.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut t = Transport::tls(mio::net::TcpStream::from_std(sock), &config).unwrap();

    // The handshake and the first line, over rustls.
    let mut input = Vec::new();
    let first = read_line(&mut t, &mut input).unwrap().expect("a line");
    assert_eq!(first, b"before the move\n");
    write_all(&mut t, &first).unwrap();

    // Moved, through bytes.
    t.settle_tls(&mut input).unwrap();
    let (socket, tls) = t.into_parts().unwrap_or_else(|_| panic!("a stream"));
    let bytes = tls.unwrap().into_moved().unwrap().encode();
    let tls = TlsSession::from_moved(MovedTls::decode(&bytes).unwrap()).unwrap();
    let mut t = Transport::from_parts(socket, Some(tls));
    assert!(t.is_moved_tls());

    // The rest of the conversation, over the record layer: echo each line until the client's
    // close_notify, then ours.
    let mut lines = 0;
    while let Some(line) = read_line(&mut t, &mut input).unwrap() {
        write_all(&mut t, &line).unwrap();
        lines += 1;
    }
    t.shutdown(Shutdown::Write).unwrap();
    let out = client.0.take().unwrap().wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the client: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lines, 2);
    assert!(stdout.contains(want), "{stdout}");
}

#[test]
fn openssl_goes_on_talking_to_a_moved_tls13_connection() {
    run("1.3", "", "TLSv1.3");
}

#[test]
fn openssl_goes_on_talking_to_a_moved_tls12_connection_with_aes_gcm_and_chacha20() {
    run("1.2", "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256");
    run("1.2", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384");
    run("1.2", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-CHACHA20-POLY1305");
}
