//! TLS served by the host: the `http` plugin, unchanged, over HTTPS. Certificates are made by
//! each test with rcgen (no key is committed); the clients are curl, `openssl s_client` and
//! rustls.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use host_tests::{assert_contains, run_host, Client, Host, TempDir};

const WAIT: Duration = Duration::from_secs(10);

/// A self-signed certificate for `localhost` and 127.0.0.1, and its key, as PEM files in `dir`.
struct Cert {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

fn make_cert(dir: &TempDir, name: &str) -> Cert {
    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params.subject_alt_names.push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name}.test"));
    let cert = params.self_signed(&key).expect("a certificate");
    Cert {
        cert: dir.write(format!("{name}.crt"), cert.pem().as_bytes()),
        key: dir.write(format!("{name}.key"), key.serialize_pem().as_bytes()),
        der: cert.der().to_vec(),
    }
}

/// The http plugin over TLS with `cert`; `extra` flags after.
fn start_https(cert: &Cert, extra: &[&str]) -> (Host, u16) {
    let mut args = vec!["--tls-cert", cert.cert.to_str().unwrap(), "--tls-key", cert.key.to_str().unwrap()];
    args.extend_from_slice(extra);
    let host = Host::start("http", &args);
    let port = host.port();
    (host, port)
}

/// Runs a client program with a bounded time; its output.
fn run(program: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new("timeout")
        .arg("20")
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not run {program}: {e}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn curl(cert: &Cert, port: u16, args: &[&str]) -> String {
    let resolve = format!("localhost:{port}:127.0.0.1");
    let mut all = vec!["-sS", "--cacert", cert.cert.to_str().unwrap(), "--resolve", &resolve];
    all.extend_from_slice(args);
    let out = run("curl", &all, b"");
    assert!(out.status.success(), "curl {all:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// A large static file over TLS, whole and as a range, with the host sending it (`file_io =
// "sendfile"`: read and encrypted by the host, no sendfile(2) under TLS) and with the plugin
// reading it (`pool`): byte-identical either way.
#[test]
fn large_files_over_tls_arrive_whole_in_both_file_modes() {
    let dir = TempDir::new();
    let cert = make_cert(&dir, "files");
    let size = 6 * 1024 * 1024 + 5;
    let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8 ^ (i / 251 % 256) as u8).collect();
    dir.write("www/big.bin", &content);
    for mode in ["sendfile", "pool"] {
        let config = format!("root = {:?}\nfile_io = {mode:?}", dir.join("www").display().to_string());
        let (_host, port) = start_https(&cert, &["--plugin-config", &config]);
        let url = format!("https://localhost:{port}/big.bin");
        let out = dir.join(format!("got-{mode}"));
        curl(&cert, port, &["-o", out.to_str().unwrap(), &url]);
        assert!(std::fs::read(&out).unwrap() == content, "{mode}: the file arrived changed over TLS");
        curl(&cert, port, &["-r", "100000-4200000", "-o", out.to_str().unwrap(), &url]);
        assert!(std::fs::read(&out).unwrap() == content[100_000..=4_200_000], "{mode}: the range arrived changed");
    }
}

// curl verifies the certificate and gets answers from the plain http plugin: a GET, a chunked
// POST echoed back, two requests on one kept-alive connection, and HTTP/1.0.
#[test]
fn curl_speaks_https_to_the_unchanged_http_plugin() {
    let dir = TempDir::new();
    let cert = make_cert(&dir, "web");
    let (mut host, port) = start_https(&cert, &[]);
    let url = format!("https://localhost:{port}/");

    assert_eq!(curl(&cert, port, &[&url]), "Hello, World!");
    // `status` shows the certificate's subject and expiry (rcgen's default: the year 4096).
    let status = host.command(["status"], WAIT);
    let text = &status.stdout;
    let row = text.lines().find(|l| l.contains("CN=web.test")).unwrap_or_else(|| panic!("no certificate in {text}"));
    assert_contains!(row, "4096 +00:00 (in ");

    let body = "x".repeat(100_000);
    let file = dir.write("body", body.as_bytes());
    let data = format!("@{}", file.display());
    let echoed = curl(&cert, port, &["-H", "Transfer-Encoding: chunked", "--data-binary", &data, &url]);
    assert_eq!(echoed.len(), body.len(), "the chunked body comes back whole");

    // Two URLs in one curl: the second reuses the connection (0 new connects).
    let out = curl(&cert, port, &["-w", " connects=%{num_connects}\n", &url, &url]);
    assert_eq!(out, "Hello, World! connects=1\nHello, World! connects=0\n");

    // (curl offers ALPN `http/1.0` here: the http plugin's default ALPN list has it.)
    let out = curl(&cert, port, &["--http1.0", "-i", &url]);
    assert_contains!(out, " 200 OK");
    assert_contains!(out, "Hello, World!");
}

// openssl s_client: ALPN picks http/1.1 (the http plugin's default), the SNI name reaches the
// worker, and a client offering only protocols the service does not speak is refused.
#[test]
fn openssl_negotiates_alpn_and_sends_sni() {
    let dir = TempDir::new();
    let cert = make_cert(&dir, "web");
    let (host, port) = start_https(&cert, &["--log-level", "info,host::worker=debug"]);
    let connect = format!("127.0.0.1:{port}");
    let request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let ca = cert.cert.to_str().unwrap();
    let out = run(
        "openssl",
        &[
            "s_client",
            "-ign_eof",
            "-connect",
            &connect,
            "-servername",
            "sni.example",
            "-alpn",
            "http/1.1",
            "-CAfile",
            ca,
        ],
        request,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_contains!(stdout, "ALPN protocol: http/1.1");
    assert_contains!(stdout, "Hello, World!");
    host.wait_for_log("sni=Some(\"sni.example\")", WAIT).expect("the worker saw the SNI name");

    let out = run("openssl", &["s_client", "-connect", &connect, "-alpn", "spdy/3.1"], b"");
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_contains!(all, "no application protocol");
}

// A client that sends plain HTTP instead of a ClientHello is closed; the worker lives on and
// serves the next client.
#[test]
fn garbage_instead_of_a_client_hello_is_closed() {
    let dir = TempDir::new();
    let cert = make_cert(&dir, "web");
    let (host, port) = start_https(&cert, &[]);
    let workers = host.worker_pids();
    let mut c = Client::connect(port);
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let got = c.wait_closed(WAIT).expect("closed");
    assert!(!String::from_utf8_lossy(&got).contains("Hello"), "no plaintext answer: {got:?}");
    assert_eq!(curl(&cert, port, &[&format!("https://localhost:{port}/")]), "Hello, World!");
    assert_eq!(host.worker_pids(), workers, "no worker died");
}

// A client that stops in the middle of its handshake is closed at the handshake timeout (here
// the message timeout, 1 s); meanwhile and after, other clients are served.
#[test]
fn a_stalled_handshake_is_closed_at_the_timeout() {
    let dir = TempDir::new();
    let cert = make_cert(&dir, "web");
    let (host, port) = start_https(&cert, &["--message-timeout", "1"]);
    let workers = host.worker_pids();
    let mut stalled = Client::connect(port);
    // The first bytes of a TLS record holding a ClientHello, and nothing more.
    stalled.send(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00]);
    let url = format!("https://localhost:{port}/");
    assert_eq!(curl(&cert, port, &[&url]), "Hello, World!", "served while one handshake stalls");
    stalled.wait_closed(WAIT).expect("the stalled client is closed");
    assert_eq!(curl(&cert, port, &[&url]), "Hello, World!");
    assert_eq!(host.worker_pids(), workers, "no worker died");
}

// A key that is not the certificate's fails the start, with a one-line reason naming both files.
#[test]
fn a_mismatched_key_is_refused_at_start() {
    let dir = TempDir::new();
    let a = make_cert(&dir, "a");
    let b = make_cert(&dir, "b");
    let out = run_host(
        [
            "--plugin",
            "http",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            a.cert.to_str().unwrap(),
            "--tls-key",
            b.key.to_str().unwrap(),
        ],
        WAIT,
    );
    assert!(!out.status.success(), "the start must fail");
    let stderr = &out.stderr;
    let line = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert_contains!(line, "does not match the certificate");
    assert_contains!(line, "b.key");
    assert_contains!(line, "a.crt");

    let garbage = dir.write("garbage.crt", b"not a certificate");
    let out = run_host(
        ["--plugin", "http", "--tls-cert", garbage.to_str().unwrap(), "--tls-key", a.key.to_str().unwrap()],
        WAIT,
    );
    assert!(!out.status.success());
    assert_contains!(out.stderr, "garbage.crt: no PEM certificate");
}

// A clean close (`Connection: close`) ends with close_notify: rustls reads a clean end of stream,
// not an unexpected EOF.
#[test]
fn a_clean_close_sends_close_notify() {
    let dir = TempDir::new();
    let cert = make_cert(&dir, "web");
    let (_host, port) = start_https(&cert, &[]);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone().into()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = "localhost".try_into().unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    // read_to_end fails with UnexpectedEof when the server closes without close_notify.
    tls.read_to_end(&mut response).expect("a clean TLS close");
    assert_contains!(String::from_utf8_lossy(&response), "Hello, World!");
}

// A new certificate and key, moved into place, are checked and rolled out through the reload
// chain (new workers serve the new certificate); a key that does not match is refused and the
// workers keep the last good pair.
#[test]
fn a_changed_certificate_reloads_and_a_broken_pair_is_refused() {
    let dir = TempDir::new();
    let first = make_cert(&dir, "web");
    let (mut host, port) = start_https(&first, &["--count", "2"]);
    let old_workers = host.worker_pids();
    let url = format!("https://localhost:{port}/");
    assert_eq!(curl(&first, port, &[&url]), "Hello, World!");

    let second = make_cert(&dir, "second");
    std::fs::rename(&second.key, &first.key).unwrap();
    std::fs::rename(&second.cert, &first.cert).unwrap();
    host.wait_for_log("TLS certificate changed", WAIT).expect("the change is seen");
    host.wait_for_log("reload done", WAIT).expect("the chain ran");
    // (The old workers drain, then exit.)
    let new_workers = host.wait_workers(2, WAIT, |p| p.iter().all(|p| !old_workers.contains(p))).expect("new workers");
    // The new certificate (a new key pair, so the old CA file cannot verify it) is served.
    let now = Cert { cert: dir.write("second-ca.crt", std::fs::read(&first.cert).unwrap()), ..second };
    assert_eq!(curl(&now, port, &[&url]), "Hello, World!");

    let other = make_cert(&dir, "other");
    std::fs::rename(&other.key, &first.key).unwrap();
    host.wait_for_log("TLS certificate change refused", WAIT).expect("the broken pair is refused");
    assert_contains!(host.log_text(), "does not match the certificate");
    assert_eq!(host.worker_pids(), new_workers, "no worker replaced");
    assert_eq!(curl(&now, port, &[&url]), "Hello, World!");
    // `status` says so, with the reason, and still shows the certificate served.
    let status = host.command(["status"], WAIT);
    assert!(status.status.success(), "{status:?}");
    assert_contains!(status.stdout, "http: TLS certificate change refused (serving the last good one):");
    assert_contains!(status.stdout, "does not match the certificate");
    assert_contains!(status.stdout, "CN=second.test");
}

// A certificate that expires within 14 days, arriving by hot reload, is served with the same
// warning as at start (the first one, valid for years, gets none).
#[test]
fn an_expiring_certificate_by_hot_reload_is_warned_about() {
    let dir = TempDir::new();
    let first = make_cert(&dir, "web");
    let (host, port) = start_https(&first, &[]);
    let url = format!("https://localhost:{port}/");
    assert_eq!(curl(&first, port, &[&url]), "Hello, World!");
    assert!(!host.log_text().contains("the certificate expires in"), "{}", host.log_text());

    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params.distinguished_name.push(rcgen::DnType::CommonName, "soon.test");
    // rcgen's default start is 1975-01-01 (a std Duration added to it: no date crate needed).
    let since_1975 =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 157_766_400;
    params.not_after = params.not_before + Duration::from_secs(since_1975 + 5 * 86400);
    let soon = params.self_signed(&key).expect("a certificate");
    let soon_key = dir.write("soon.key", key.serialize_pem().as_bytes());
    let soon_cert = dir.write("soon.crt", soon.pem().as_bytes());
    std::fs::rename(&soon_key, &first.key).unwrap();
    std::fs::rename(&soon_cert, &first.cert).unwrap();
    host.wait_for_log("TLS certificate changed", WAIT).expect("the change is seen");
    let line = host.wait_for_log("the certificate expires in", WAIT).expect("the warning");
    assert_contains!(line, "CN=soon.test");
}

/// One `openssl s_client` connection at `version` (`-tls1_2`, `-tls1_3`) asking for `/` over
/// HTTP/1.0 (so that it reads until the server closes, after the TLS 1.3 tickets came), with
/// `session` (`-sess_out FILE` or `-sess_in FILE`); whether the session was resumed.
fn s_client_resumed(cert: &Cert, port: u16, version: &str, session: [&str; 2]) -> bool {
    let connect = format!("127.0.0.1:{port}");
    let args = ["s_client", "-connect", &connect, version, "-CAfile", cert.cert.to_str().unwrap(), "-ign_eof"];
    let args: Vec<&str> = args.into_iter().chain(session).collect();
    let out = run("openssl", &args, b"GET / HTTP/1.0\r\n\r\n");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_contains!(text, "Hello, World!");
    if text.lines().any(|l| l.starts_with("Reused,")) {
        return true;
    }
    assert!(text.lines().any(|l| l.starts_with("New,")), "no session line in:\n{text}");
    false
}

// Session tickets are sealed with keys the master shares among a service's workers: with two
// workers (connections spread over them by the kernel), every resumption succeeds, on TLS 1.2
// and TLS 1.3 alike (before: 13/20 and 6/20, the ticket only opened on the worker that made
// it), and a session made before a reload still resumes on the new workers.
#[test]
fn sessions_resume_on_any_worker_and_across_a_reload() {
    let dir = TempDir::new();
    let cert = make_cert(&dir, "web");
    let (mut host, port) = start_https(&cert, &["--count", "2"]);
    host.wait_workers(2, WAIT, |_| true).expect("two workers");
    let versions = ["-tls1_2", "-tls1_3"];
    let mut sessions = Vec::new();
    for version in versions {
        let file = dir.join(format!("session{version}.pem"));
        let file = file.to_str().unwrap().to_string();
        assert!(!s_client_resumed(&cert, port, version, ["-sess_out", &file]), "a first connection is new");
        let resumed = (0..20).filter(|_| s_client_resumed(&cert, port, version, ["-sess_in", &file])).count();
        assert_eq!(resumed, 20, "{version}: {resumed}/20 resumed");
        sessions.push((version, file));
    }

    let old_workers = host.worker_pids();
    let out = host.command(["reload"], Duration::from_secs(30));
    assert!(out.status.success(), "reload failed: {out:?}");
    host.wait_workers(2, WAIT, |p| p.iter().all(|p| !old_workers.contains(p))).expect("new workers");
    for (version, file) in &sessions {
        assert!(s_client_resumed(&cert, port, version, ["-sess_in", file]), "{version}: not resumed after the reload");
    }
    // No key material in the log (nor any ticket key field name).
    assert!(!host.log_text().contains("current"), "{}", host.log_text());
}

// The ticket keys travel in the upgrade state: a session made before `host upgrade` resumes on
// the workers of the new image.
#[test]
fn sessions_resume_after_a_binary_upgrade() {
    use host_tests::copied_host::CopiedHost;
    use host_tests::plugin_dir::PluginDir;

    let dir = TempDir::new();
    let cert = make_cert(&dir, "web");
    let plugins = PluginDir::new();
    plugins.mv("http.so", &std::fs::read(host_tests::plugin_file("http")).unwrap());
    let plugin_dir = plugins.arg();
    let (cert_arg, key_arg) = (cert.cert.to_str().unwrap(), cert.key.to_str().unwrap());
    let host = CopiedHost::start(&[
        "--plugin",
        "http",
        "--count",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert_arg,
        "--tls-key",
        key_arg,
        "--plugin-dir",
        &plugin_dir,
    ]);
    let port = host.port();
    let old_workers =
        host_tests::poll_until(WAIT, || Some(host.worker_pids()).filter(|p| p.len() == 2)).expect("two workers");
    let mut sessions = Vec::new();
    for version in ["-tls1_2", "-tls1_3"] {
        let file = dir.join(format!("session{version}.pem")).to_str().unwrap().to_string();
        assert!(!s_client_resumed(&cert, port, version, ["-sess_out", &file]), "a first connection is new");
        assert!(s_client_resumed(&cert, port, version, ["-sess_in", &file]), "{version}: not resumed");
        sessions.push((version, file));
    }
    host.replace_binary();
    let out = host.command(&["upgrade"], Duration::from_secs(60));
    assert!(out.status.success(), "host upgrade failed: {}{}\nlog:\n{}", out.stdout, out.stderr, host.log());
    host_tests::poll_until(WAIT, || {
        let pids = host.worker_pids();
        (pids.len() == 2 && pids.iter().all(|p| !old_workers.contains(p))).then_some(())
    })
    .expect("new workers");
    for (version, file) in &sessions {
        assert!(s_client_resumed(&cert, port, version, ["-sess_in", file]), "{version}: not resumed after the upgrade");
    }
}
