//! The admin listener: `/metrics` in both text formats (checked by real parsers: the Python
//! `prometheus_client`'s OpenMetrics and 0.0.4 parsers, and `promtool check metrics`) and
//! `/healthz`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use host_tests::{assert_contains, get, Client, Host, TempDir, IO_TIMEOUT};

/// The admin listener's port, from the master's log.
pub(crate) fn admin_port(host: &Host) -> u16 {
    let line = host.log().wait_for("admin listener", Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    let address = line.split_whitespace().find_map(|f| f.strip_prefix("address=")).expect("address=");
    address.rsplit(':').next().unwrap().parse().unwrap()
}

/// What Prometheus 2.x sends as its `Accept` header.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// `GET path` on the admin listener: (status code, body).
pub(crate) fn admin_get(port: u16, path: &str) -> (u16, String) {
    let (code, _, body) = admin_get_accept(port, path, None);
    (code, body)
}

/// `GET path` with an `Accept` header: (status code, head, body).
fn admin_get_accept(port: u16, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n{accept}\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (code, head.to_string(), body.to_string())
}

/// `/metrics` as Prometheus asks for it (OpenMetrics).
fn openmetrics(port: u16) -> String {
    let (code, head, body) = admin_get_accept(port, "/metrics", Some(PROMETHEUS_ACCEPT));
    assert_eq!(code, 200, "{head}");
    assert_contains!(head, "Content-Type: application/openmetrics-text; version=1.0.0");
    body
}

/// Parses OpenMetrics text with `prometheus_client` and prints `name{labels} value` per sample.
fn parse_metrics(text: &str) -> String {
    python_parse(text, "prometheus_client.openmetrics.parser")
}

/// Parses text with the `parser` module's `text_string_to_metric_families` (OpenMetrics, or the
/// 0.0.4 text format: `prometheus_client.parser`) and prints `name{labels} value` per sample.
fn python_parse(text: &str, parser: &str) -> String {
    let script = r#"
import sys, importlib
families = importlib.import_module(sys.argv[1]).text_string_to_metric_families
for family in families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value}")
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, parser])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (with prometheus_client, see .ci/deps/metrics.pip)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "not valid for {parser}: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `promtool check metrics` (its parser and its lint) on 0.0.4 text.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus, see .ci/deps/metrics.apt)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check metrics: {:?}\n{said}\n{text}", out.status);
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
    let parsed = parse_metrics(&openmetrics(port));
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
        let parsed = parse_metrics(&openmetrics(port));
        (sample(&parsed, "host_messages_total{") == 8.0).then_some(parsed)
    })
    .unwrap_or_else(|| panic!("counters reset by the reload:\n{}", openmetrics(port)));
    assert_eq!(sample(&parsed, "host_reloads_total{outcome=done}"), 1.0, "{parsed}");
    assert_eq!(sample(&parsed, "host_plugin_http_responses_total{class=2xx,"), 8.0, "{parsed}");
    assert_eq!(admin_get(port, "/nope").0, 404);
}

// A scraper that does not ask for OpenMetrics (curl, promtool, an older Prometheus) gets the
// classic text format 0.0.4, with `# HELP` and `# TYPE` for every family: promtool's parser and
// lint pass it, and Python's 0.0.4 parser reads the same samples as the OpenMetrics one.
#[test]
fn metrics_without_an_openmetrics_accept_are_the_classic_text_format() {
    let host = Host::start("http", &["--count", "2", "--admin-listen", "127.0.0.1:0"]);
    let port = admin_port(&host);
    for _ in 0..3 {
        assert_eq!(Client::connect(host.port()).request(&get("/")).status, 200);
    }
    for accept in [None, Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1"), Some("*/*")] {
        let (code, head, text) = admin_get_accept(port, "/metrics", accept);
        assert_eq!(code, 200, "{head}");
        assert_contains!(head, "Content-Type: text/plain; version=0.0.4; charset=utf-8");
        assert!(!text.contains("# EOF"), "{text}");
        assert_contains!(text, "# HELP host_messages_total ");
        assert_contains!(text, "# TYPE host_messages_total counter\n");
        promtool_check(&text);
        let parsed = python_parse(&text, "prometheus_client.parser");
        assert_eq!(sample(&parsed, "host_messages_total{"), 3.0, "{parsed}");
        assert_eq!(sample(&parsed, "host_workers{service=http,state=ready}"), 2.0, "{parsed}");
    }
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
    let port = admin_port(&host);
    let (code, body) = admin_get(port, "/healthz");
    assert_eq!(code, 503, "{body}");
    assert_contains!(body, "later");
    // "No worker ready" is a series, in both formats: an alert on `host_workers{state="ready"} == 0`
    // fires for it.
    let parsed = parse_metrics(&openmetrics(port));
    assert_contains!(parsed, "host_workers{service=later,state=ready} 0\n");
    assert_contains!(parsed, "host_workers{service=later,state=starting} 0\n");
    let (_, classic) = admin_get(port, "/metrics");
    assert_contains!(classic, "host_workers{service=\"later\",state=\"ready\"} 0\n");
}
