//! The admin listener: `/metrics` (checked by a real OpenMetrics parser: the Python
//! `prometheus_client`) and `/healthz`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use host_tests::{assert_contains, get, Client, Host, TempDir, IO_TIMEOUT};

/// The admin listener's port, from the master's log.
fn admin_port(host: &Host) -> u16 {
    let line = host.log().wait_for("admin listener", Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    let address = line.split_whitespace().find_map(|f| f.strip_prefix("address=")).expect("address=");
    address.rsplit(':').next().unwrap().parse().unwrap()
}

/// `GET path` on the admin listener: (status code, body).
fn admin_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// Parses OpenMetrics text with `prometheus_client` and prints `name{labels} value` per sample.
fn parse_metrics(text: &str) -> String {
    let script = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value}")
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (with prometheus_client, see .ci/deps/metrics.pip)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "not valid OpenMetrics: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn sample(parsed: &str, prefix: &str) -> f64 {
    parsed
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

// The metrics parse, count exactly the requests served, keep counting across a reload, and
// name the plugin each slot runs; /healthz answers 200 while every worker is ready.
#[test]
fn metrics_count_requests_across_a_reload_and_health_is_ok() {
    let mut host = Host::start("http", &["--count", "2", "--admin-listen", "127.0.0.1:0"]);
    let port = admin_port(&host);
    assert_eq!(admin_get(port, "/healthz"), (200, "ok\n".to_string()));
    for _ in 0..7 {
        let r = Client::connect(host.port()).request(&get("/"));
        assert_eq!(r.status, 200);
    }
    let (code, text) = admin_get(port, "/metrics");
    assert_eq!(code, 200);
    let parsed = parse_metrics(&text);
    assert_eq!(sample(&parsed, "host_messages_total{"), 7.0, "{parsed}");
    // The http plugin's own counter, through the SDK.
    assert_eq!(sample(&parsed, "host_plugin_http_responses_total{class=2xx,"), 7.0, "{parsed}");
    assert_contains!(parsed, "host_plugin_info{hash=");
    assert_contains!(parsed, "host_master_uptime_seconds{}");
    let out = host.command(["reload", "-g"], Duration::from_secs(30));
    assert!(out.status.success(), "{out:?}");
    let r = Client::connect(host.port()).request(&get("/"));
    assert_eq!(r.status, 200);
    // The old workers' counts join their slots' once they exited: poll until they have.
    let parsed = host_tests::poll_until(Duration::from_secs(10), || {
        let parsed = parse_metrics(&admin_get(port, "/metrics").1);
        (sample(&parsed, "host_messages_total{") == 8.0).then_some(parsed)
    })
    .unwrap_or_else(|| panic!("counters reset by the reload:\n{}", admin_get(port, "/metrics").1));
    assert_eq!(sample(&parsed, "host_reloads_total{outcome=done}"), 1.0, "{parsed}");
    assert_eq!(sample(&parsed, "host_plugin_http_responses_total{class=2xx,"), 8.0, "{parsed}");
    assert_eq!(admin_get(port, "/nope").0, 404);
}

// A service with no ready worker (its plugin file does not exist yet) makes /healthz 503.
#[test]
fn health_is_503_while_a_service_is_down() {
    let dir = TempDir::new();
    let config = dir.write(
        "host.toml",
        "admin_listen = \"127.0.0.1:0\"\n[[service]]\nname = \"web\"\nplugin = \"http\"\nlisten = \"127.0.0.1:0\"\n\
         [[service]]\nname = \"later\"\nplugin = \"not_there_yet\"\nlisten = \"127.0.0.1:0\"\n",
    );
    let host = Host::spawn(["-c", config.to_str().unwrap()]);
    host.log().wait_for("host ready", Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    let (code, body) = admin_get(admin_port(&host), "/healthz");
    assert_eq!(code, 503, "{body}");
    assert_contains!(body, "later");
}
