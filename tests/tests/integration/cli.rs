//! The command line as init scripts and users type it.

use std::time::Duration;

use host_tests::{assert_contains, get, run_host, Client, Host};

// `--listen 8080` is a port on 127.0.0.1 (never every interface), `--listen localhost:PORT` is
// resolved.
#[test]
fn listen_takes_a_port_alone_or_a_host_name() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let host = Host::spawn(["--plugin", "http", "--listen", &port.to_string()]);
    let line = host.log().wait_for("listening", Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    assert_contains!(line, format!("address=127.0.0.1:{port}"));
    host.log().wait_for("host ready", Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    let r = Client::connect(port).request(&get("/"));
    assert_eq!(r.status, 200);
    drop(host);
    let host = Host::spawn(["--plugin", "http", "--listen", "localhost:0"]);
    let line = host.log().wait_for("listening", Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("address=127.0.0.1:") || line.contains("address=[::1]:"), "{line}");
}

// Options that mean nothing for a subcommand are refused, with clap's own message.
#[test]
fn options_of_another_subcommand_are_refused() {
    for args in [
        &["start", "-g", "--plugin", "http"][..],
        &["status", "--plugin", "http"][..],
        &["status", "--log-format", "json"][..],
        &["--log-level", "debug", "stop"][..],
    ] {
        let out = run_host(args, Duration::from_secs(10));
        assert!(!out.status.success(), "{args:?} was accepted: {out:?}");
        assert_contains!(out.stderr, "error:");
    }
}
