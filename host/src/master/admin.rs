//! The optional admin listener (`--admin-listen`, `admin_listen` in the config file; off by
//! default): `GET /metrics` and `GET /healthz` for load balancers and probes.
//!
//! `/metrics` speaks both text formats, chosen by the `Accept` header as Prometheus' own client
//! libraries choose (Python's `choose_encoder`, Go's `expfmt.Negotiate`): OpenMetrics 1.0 when
//! `application/openmetrics-text` is accepted (Prometheus asks for it first), else the classic
//! Prometheus text format 0.0.4 (`# HELP`/`# TYPE`, no `# EOF`; curl, older scrapers,
//! `promtool check metrics`). It runs in the master's loop: a scrape asks every worker for its counters
//! (like `host status`) and is answered once they replied or after the report timeout.
//!
//! One request per connection, answered with `Connection: close`; a request head over 8 KiB, or
//! one that is not complete within the timeout, is closed.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry as Metrics;

use crate::status::Status;

/// The longest request head.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An admin client waiting for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AdminId(pub usize);

/// What a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRequest {
    Metrics,
    Health,
}

/// The text format of a `/metrics` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricsFormat {
    /// OpenMetrics 1.0 (`application/openmetrics-text; version=1.0.0`).
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (`text/plain; version=0.0.4`): what a client gets that
    /// does not ask for OpenMetrics.
    #[default]
    Prometheus,
}

impl MetricsFormat {
    /// The format an `Accept` value asks for: OpenMetrics when it lists
    /// `application/openmetrics-text` (with a q-value above 0), else 0.0.4.
    pub fn from_accept(accept: &[u8]) -> MetricsFormat {
        let accept = String::from_utf8_lossy(accept);
        let openmetrics = accept.split(',').any(|range| {
            let mut params = range.split(';').map(str::trim);
            let media = params.next().unwrap_or_default();
            let refused = params.any(|p| {
                let q = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q="));
                q.and_then(|q| q.parse::<f32>().ok()).is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        });
        if openmetrics {
            MetricsFormat::OpenMetrics
        } else {
            MetricsFormat::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            MetricsFormat::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            MetricsFormat::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

struct Client {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    /// The request was read: nothing more is.
    asked: bool,
    /// Answered: close once written.
    answered: bool,
    deadline: Instant,
    /// The `/metrics` format its `Accept` header asked for.
    format: MetricsFormat,
}

pub struct AdminServer {
    listener: TcpListener,
    pub address: SocketAddr,
    clients: HashMap<usize, Client>,
    next: usize,
    base: usize,
}

impl AdminServer {
    pub fn bind(address: SocketAddr, registry: &Registry, token: Token, base: usize) -> io::Result<Self> {
        let mut listener = TcpListener::bind(address)?;
        let address = listener.local_addr()?;
        registry.register(&mut listener, token, Interest::READABLE)?;
        Ok(AdminServer { listener, address, clients: HashMap::new(), next: 0, base })
    }

    /// The admin listener the master's previous image held (a binary upgrade).
    pub fn adopt(listener: std::os::fd::OwnedFd, registry: &Registry, token: Token, base: usize) -> io::Result<Self> {
        let listener = std::net::TcpListener::from(listener);
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let address = listener.local_addr()?;
        registry.register(&mut listener, token, Interest::READABLE)?;
        Ok(AdminServer { listener, address, clients: HashMap::new(), next: 0, base })
    }

    /// The listening socket, to hand over across exec.
    pub fn listener_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.listener)
    }

    pub fn accept_all(&mut self, registry: &Registry) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    self.next += 1;
                    let token = self.base + self.next;
                    if registry.register(&mut stream, Token(token), Interest::READABLE).is_ok() {
                        let deadline = Instant::now() + REQUEST_TIMEOUT;
                        let client = Client {
                            stream,
                            input: Vec::new(),
                            output: Vec::new(),
                            written: 0,
                            asked: false,
                            answered: false,
                            deadline,
                            format: MetricsFormat::default(),
                        };
                        self.clients.insert(token, client);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("admin listener: accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Reads a client's request; bad ones are answered here.
    pub fn read(&mut self, token: Token, registry: &Registry) -> Option<(AdminId, AdminRequest)> {
        let client = self.clients.get_mut(&token.0)?;
        let mut request = None;
        let mut buf = [0u8; 2048];
        let mut closed = false;
        while !client.asked {
            match client.stream.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => client.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
            if client.input.len() > MAX_HEAD {
                client.asked = true;
                self.answer_raw(
                    token.0,
                    "431 Request Header Fields Too Large",
                    "text/plain",
                    "request head too large\n",
                );
                return None;
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&client.input) {
                Ok(httparse::Status::Complete(_)) => {
                    client.asked = true;
                    let (method, path) = (req.method.unwrap_or(""), req.path.unwrap_or(""));
                    let path = path.split('?').next().unwrap_or("");
                    let accept = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("accept"));
                    let accept: Vec<u8> = accept.flat_map(|h| [h.value, b","]).flatten().copied().collect();
                    client.format = MetricsFormat::from_accept(&accept);
                    request = match (method, path) {
                        ("GET" | "HEAD", "/metrics") => Some(AdminRequest::Metrics),
                        ("GET" | "HEAD", "/healthz") => Some(AdminRequest::Health),
                        (_, "/metrics" | "/healthz") => {
                            self.answer_raw(token.0, "405 Method Not Allowed", "text/plain", "GET only\n");
                            None
                        }
                        _ => {
                            self.answer_raw(token.0, "404 Not Found", "text/plain", "/metrics or /healthz\n");
                            None
                        }
                    };
                    break;
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => {
                    client.asked = true;
                    self.answer_raw(token.0, "400 Bad Request", "text/plain", "bad request\n");
                    return None;
                }
            }
        }
        if closed && request.is_none() {
            self.drop_client(token.0, registry);
            return None;
        }
        self.flush(token.0, registry);
        request.map(|r| (AdminId(token.0), r))
    }

    /// Answers a client (gone clients are skipped) and closes it once written.
    pub fn answer(&mut self, id: AdminId, status: &str, content_type: &str, body: &str, registry: &Registry) {
        self.answer_raw(id.0, status, content_type, body);
        self.flush(id.0, registry);
    }

    /// Answers a `/metrics` request in the format its client asked for.
    pub fn answer_metrics(&mut self, id: AdminId, status: &Status, master: &MasterMetrics, registry: &Registry) {
        let Some(format) = self.clients.get(&id.0).map(|c| c.format) else { return };
        let text = render_metrics(status, master, format);
        self.answer(id, "200 OK", format.content_type(), &text, registry);
    }

    fn answer_raw(&mut self, token: usize, status: &str, content_type: &str, body: &str) {
        let Some(c) = self.clients.get_mut(&token) else { return };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        c.output.extend_from_slice(head.as_bytes());
        c.output.extend_from_slice(body.as_bytes());
        c.answered = true;
    }

    /// Writes what is queued for a client; closes it once its answer is out.
    pub fn flush(&mut self, token: usize, registry: &Registry) {
        let Some(c) = self.clients.get_mut(&token) else { return };
        let mut failed = false;
        while c.written < c.output.len() {
            match c.stream.write(&c.output[c.written..]) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => c.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        let done = c.answered && c.written == c.output.len();
        if failed || done {
            self.drop_client(token, registry);
        } else {
            let interest =
                if c.written < c.output.len() { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            let _ = registry.reregister(&mut c.stream, Token(token), interest);
        }
    }

    fn drop_client(&mut self, token: usize, registry: &Registry) {
        if let Some(mut c) = self.clients.remove(&token) {
            let _ = registry.deregister(&mut c.stream);
        }
    }

    /// Closes clients that did not send their request in time.
    pub fn expire(&mut self, now: Instant, registry: &Registry) {
        let late: Vec<usize> =
            self.clients.iter().filter(|(_, c)| !c.asked && c.deadline <= now).map(|(t, _)| *t).collect();
        for token in late {
            self.drop_client(token, registry);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.values().filter(|c| !c.asked).map(|c| c.deadline).min()
    }
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// What the master measures itself, across scrapes.
#[derive(Debug, Clone)]
pub struct MasterMetrics {
    pub reloads: Family<Labels, Counter>,
    pub reload_seconds: Histogram,
    pub drain_seconds: Histogram,
    /// Hand-overs: connections moved and drained, bytes of state, and the pause clients of a
    /// moved connection saw (the old worker's last read to the replacement's acknowledgement).
    pub handover_connections: Family<Labels, Counter>,
    /// UDP sessions moved (not among the connections).
    pub handover_udp_sessions: Counter,
    pub handover_state_bytes: Counter,
    pub handover_pause_seconds: Histogram,
    /// Pre-copy: the steps of worker state sent while the old worker served, their bytes (also
    /// in `handover_state_bytes`), and how long the copy ran before the connections stopped.
    pub handover_copy_steps: Counter,
    pub handover_copy_bytes: Counter,
    pub handover_copy_seconds: Histogram,
}

impl Default for MasterMetrics {
    fn default() -> Self {
        MasterMetrics {
            reloads: Family::default(),
            reload_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            drain_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            handover_connections: Family::default(),
            handover_udp_sessions: Counter::default(),
            handover_state_bytes: Counter::default(),
            handover_pause_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            handover_copy_steps: Counter::default(),
            handover_copy_bytes: Counter::default(),
            handover_copy_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
        }
    }
}

impl MasterMetrics {
    pub fn reload_finished(&self, outcome: &str, duration: Duration) {
        self.reloads.get_or_create(&labels(&[("outcome", outcome)])).inc();
        self.reload_seconds.observe(duration.as_secs_f64());
    }

    pub fn drained(&self, duration: Duration) {
        self.drain_seconds.observe(duration.as_secs_f64());
    }

    pub fn handed_over(&self, report: &crate::ctl::HandoverReport) {
        self.handover_connections.get_or_create(&labels(&[("outcome", "moved")])).inc_by(report.moved);
        self.handover_connections.get_or_create(&labels(&[("outcome", "drained")])).inc_by(report.stayed);
        self.handover_udp_sessions.inc_by(report.sessions);
        self.handover_state_bytes.inc_by(report.state_bytes);
        // Steps sent count even when the hand-over then failed: the old worker did that work.
        self.handover_copy_steps.inc_by(report.copy_steps);
        self.handover_copy_bytes.inc_by(report.copy_bytes);
        if report.failure.is_none() {
            self.handover_pause_seconds.observe(report.pause_ms as f64 / 1000.0);
            if report.copy_steps > 0 {
                self.handover_copy_seconds.observe(report.copy_ms as f64 / 1000.0);
            }
        }
    }
}

/// The states of `host_workers`: every one is given for every service, 0 when no worker is in
/// it, so that "no worker ready" is a series an alert can match (as composed by the report).
pub const WORKER_STATES: [&str; 5] = ["starting", "ready", "busy", "panicking", "draining"];

/// The metrics text for a status the master composed, with its own measurements.
pub fn render_metrics(status: &Status, master: &MasterMetrics, format: MetricsFormat) -> String {
    let mut registry = Metrics::with_prefix("host");
    let counter = |registry: &mut Metrics, name: &str, help: &str| {
        let family = Family::<Labels, Counter>::default();
        registry.register(name, help, family.clone());
        family
    };
    let gauge = |registry: &mut Metrics, name: &str, help: &str| {
        let family = Family::<Labels, Gauge>::default();
        registry.register(name, help, family.clone());
        family
    };
    let messages = counter(&mut registry, "messages", "Messages (requests) handled, per worker slot");
    let accepted = counter(&mut registry, "connections_accepted", "Connections accepted, per worker slot");
    let bytes_in = counter(&mut registry, "received_bytes", "Bytes received, per worker slot");
    let bytes_out = counter(&mut registry, "sent_bytes", "Bytes sent, per worker slot");
    let panics = counter(&mut registry, "plugin_panics", "Plugin panics caught, per worker slot");
    let send_failures = counter(&mut registry, "send_failures", "Sends refused (connection closed or full)");
    let datagrams_dropped = counter(
        &mut registry,
        "datagrams_dropped",
        "UDP datagrams dropped (oversized, over the session limit, paused)",
    );
    let tls_closes = counter(
        &mut registry,
        "tls_moved_closes",
        "TLS connections moved in a hand-over and closed since, by reason: key_update (the peer sent a TLS 1.3 KeyUpdate), aead_limit",
    );
    let topic_msgs = counter(
        &mut registry,
        "topic_messages",
        "Topic messages by event: published here, received from other workers and hosts, delivered to subscribers, dropped (slow subscribers), refused (limits), oversized (from elsewhere, over the limits, skipped)",
    );
    let broker_msgs = counter(
        &mut registry,
        "cluster_messages",
        "Topic messages through the cluster's broker by event: published, received, dropped",
    );
    let broker_reconnects = counter(&mut registry, "cluster_reconnects", "Reconnections to the cluster's broker");
    let topics_open = gauge(&mut registry, "topics", "Topics with a subscriber, per worker slot");
    let subscriptions = gauge(&mut registry, "topic_subscriptions", "Topic subscriptions, per worker slot");
    let broker_up = gauge(&mut registry, "cluster_connected", "1 when the worker's broker connection is ready");
    let open = gauge(&mut registry, "connections_open", "Connections open now, per worker slot");
    let workers = gauge(&mut registry, "workers", "Worker processes by service and state");
    let memory = gauge(&mut registry, "worker_resident_bytes", "Resident memory of each worker slot's worker");
    let restarts = counter(&mut registry, "worker_exits", "Worker processes that ended, by service and how");
    let plugin = gauge(&mut registry, "plugin_info", "The plugin each worker slot runs (always 1)");
    let uptime = gauge(&mut registry, "master_uptime_seconds", "Seconds since the master started");
    let started = gauge(&mut registry, "master_start_time_seconds", "When the master started (Unix time)");
    registry.register("reloads", "Reloads by outcome", master.reloads.clone());
    registry.register("reload_duration_seconds", "How long reloads took", master.reload_seconds.clone());
    registry.register("drain_duration_seconds", "How long retired workers took to exit", master.drain_seconds.clone());
    registry.register(
        "handover_connections",
        "Connections of replaced workers moved to their replacement or drained",
        master.handover_connections.clone(),
    );
    registry.register(
        "handover_udp_sessions",
        "UDP sessions of replaced workers moved to their replacement",
        master.handover_udp_sessions.clone(),
    );
    registry.register("handover_state_bytes", "Bytes of plugin state handed over", master.handover_state_bytes.clone());
    registry.register(
        "handover_pause_seconds",
        "How long moved connections went unread during a hand-over",
        master.handover_pause_seconds.clone(),
    );
    registry.register(
        "handover_copy_steps",
        "Steps of worker state copied while the old worker served (pre-copy)",
        master.handover_copy_steps.clone(),
    );
    registry.register(
        "handover_copy_bytes",
        "Bytes of worker state copied in steps while the old worker served (also in handover_state_bytes)",
        master.handover_copy_bytes.clone(),
    );
    registry.register(
        "handover_copy_seconds",
        "How long the pre-copy of a hand-over that went through ran before the connections stopped",
        master.handover_copy_seconds.clone(),
    );

    for service in &status.services {
        for state in WORKER_STATES {
            let _ = workers.get_or_create(&labels(&[("service", &service.name), ("state", state)]));
        }
    }
    for w in &status.workers {
        let slot = w.slot.to_string();
        let state_labels = labels(&[("service", &w.service), ("state", &w.state)]);
        workers.get_or_create(&state_labels).inc();
        // Serving rows carry the slot's totals; a draining worker's counters join them when it exits.
        if w.state == "draining" {
            continue;
        }
        let l = labels(&[("service", &w.service), ("slot", &slot)]);
        let info = labels(&[("service", &w.service), ("slot", &slot), ("plugin", &w.plugin), ("hash", &w.hash)]);
        plugin.get_or_create(&info).set(1);
        memory.get_or_create(&l).set((w.rss_kb * 1024) as i64);
        let Some(t) = w.slot_totals.as_ref().or(w.report.as_ref()) else { continue };
        messages.get_or_create(&l).inc_by(t.messages);
        accepted.get_or_create(&l).inc_by(t.accepted);
        bytes_in.get_or_create(&l).inc_by(t.bytes_in);
        bytes_out.get_or_create(&l).inc_by(t.bytes_out);
        panics.get_or_create(&l).inc_by(t.plugin_panics);
        send_failures.get_or_create(&l).inc_by(t.send_failures);
        datagrams_dropped.get_or_create(&l).inc_by(t.datagrams_dropped);
        for (reason, n) in [("key_update", t.tls_closed_key_update), ("aead_limit", t.tls_closed_aead_limit)] {
            let mut with = l.clone();
            with.push(("reason".to_string(), reason.to_string()));
            tls_closes.get_or_create(&with).inc_by(n);
        }
        let tt = &t.topics;
        if tt.used() {
            for (event, n) in [
                ("published", tt.published),
                ("received", tt.received),
                ("delivered", tt.delivered),
                ("dropped", tt.dropped),
                ("refused", tt.refused),
                ("oversized", tt.oversized),
            ] {
                let el = labels(&[("service", &w.service), ("slot", &slot), ("event", event)]);
                topic_msgs.get_or_create(&el).inc_by(n);
            }
        }
        if let Some(r) = &w.report {
            open.get_or_create(&l).set(r.connections as i64);
            if r.topics.used() {
                topics_open.get_or_create(&l).set(r.topics.topics as i64);
                subscriptions.get_or_create(&l).set(r.topics.subscriptions as i64);
            }
            if let Some(state) = &r.topics.broker {
                // `ready`, or a Redis Cluster's `ready 3/3 nodes` (every node owning slots).
                broker_up.get_or_create(&l).set(i64::from(state.split(' ').next() == Some("ready")));
                for (event, n) in [
                    ("published", tt.broker_published),
                    ("received", tt.broker_received),
                    ("dropped", tt.broker_dropped),
                ] {
                    let el = labels(&[("service", &w.service), ("slot", &slot), ("event", event)]);
                    broker_msgs.get_or_create(&el).inc_by(n);
                }
                broker_reconnects.get_or_create(&l).inc_by(tt.broker_reconnects);
            }
        }
    }
    // The plugins' own counters, one family per name.
    let mut families: Vec<(String, Family<Labels, Counter>)> = Vec::new();
    for w in status.workers.iter().filter(|w| w.state != "draining") {
        let Some(t) = w.slot_totals.as_ref().or(w.report.as_ref()) else { continue };
        for c in &t.plugin_counters {
            let family = match families.iter().find(|(n, _)| *n == c.name) {
                Some((_, f)) => f.clone(),
                None => {
                    let f = Family::<Labels, Counter>::default();
                    registry.register(format!("plugin_{}", c.name), c.help.clone(), f.clone());
                    families.push((c.name.clone(), f.clone()));
                    f
                }
            };
            let mut l = labels(&[("service", &w.service), ("slot", &w.slot.to_string())]);
            l.extend(c.label_pairs());
            family.get_or_create(&l).inc_by(c.value);
        }
    }
    for e in &status.exits {
        restarts.get_or_create(&labels(&[("service", &e.service), ("how", &e.how)])).inc_by(e.count);
    }
    uptime.get_or_create(&Vec::new()).set(status.uptime_s as i64);
    started.get_or_create(&Vec::new()).set(status.started_at as i64);
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    match format {
        MetricsFormat::OpenMetrics => text,
        MetricsFormat::Prometheus => prometheus_text(&text),
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics text `prometheus-client` wrote: a counter
/// family is named with its `_total` (the name its samples have), `info` is a gauge and
/// `unknown` is `untyped`, `# UNIT` and `# EOF` go, and a help text's `\"` is a plain quote (0.0.4
/// escapes only backslash and line feed there). Samples read the same in both formats.
fn prometheus_text(openmetrics: &str) -> String {
    let mut types: HashMap<&str, &str> = HashMap::new();
    for line in openmetrics.lines() {
        if let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|rest| rest.split_once(' ')) {
            types.insert(name, kind);
        }
    }
    let renamed = |name: &str| match types.get(name) {
        Some(&"counter") => format!("{name}_total"),
        Some(&"info") => format!("{name}_info"),
        _ => name.to_string(),
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some((name, help)) = line.strip_prefix("# HELP ").and_then(|rest| rest.split_once(' ')) {
            out.push_str(&format!("# HELP {} {}\n", renamed(name), help.replace("\\\"", "\"")));
        } else if let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|rest| rest.split_once(' ')) {
            let kind = match kind {
                "info" => "gauge",
                "unknown" => "untyped",
                other => other,
            };
            out.push_str(&format!("# TYPE {} {kind}\n", renamed(name)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ExitRow, ServiceRow, WorkerReport, WorkerRow};

    /// A master's status with `workers`, and no service, exit, reload or hand-over.
    fn status(workers: Vec<WorkerRow>) -> Status {
        Status {
            master_pid: 1,
            master_rss_kb: 1,
            start_dir: String::new(),
            start_args: Vec::new(),
            version: "0.1.0".into(),
            started_at: 100,
            uptime_s: 5,
            load_avg: String::new(),
            services: Vec::new(),
            workers,
            exits: Vec::new(),
            last_reload: None,
            handovers: Vec::new(),
        }
    }

    #[test]
    fn metrics_name_every_slot_and_count_from_its_totals() {
        let row = |slot: u32, messages: u64| WorkerRow {
            service: "web".into(),
            slot,
            pid: 10 + slot as i32,
            rss_kb: 1024,
            peak_kb: 2048,
            listen: "127.0.0.1:80".into(),
            plugin: "http 0.1.0".into(),
            hash: "abc".into(),
            state: "ready".into(),
            uptime_s: 1,
            report: Some(WorkerReport { messages: 1, connections: 2, ..Default::default() }),
            slot_totals: Some(WorkerReport { messages, ..Default::default() }),
        };
        let mut status = status(vec![row(0, 40), row(1, 2)]);
        status.services = vec![ServiceRow {
            name: "web".into(),
            listen: "127.0.0.1:80".into(),
            plugin: "http 0.1.0".into(),
            count: 2,
            reloadable: true,
            tls: None,
        }];
        status.exits = vec![ExitRow { service: "web".into(), how: "signal SIGKILL".into(), count: 3 }];
        // Moved TLS connections closed since (a KeyUpdate, the AEAD limit): from the slot's totals.
        let totals = status.workers[0].slot_totals.as_mut().unwrap();
        (totals.tls_closed_key_update, totals.tls_closed_aead_limit) = (2, 1);
        let m = MasterMetrics::default();
        m.reload_finished("done", Duration::from_millis(120));
        let text = render_metrics(&status, &m, MetricsFormat::OpenMetrics);
        assert!(
            text.contains("host_tls_moved_closes_total{service=\"web\",slot=\"0\",reason=\"key_update\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("host_tls_moved_closes_total{service=\"web\",slot=\"0\",reason=\"aead_limit\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("host_tls_moved_closes_total{service=\"web\",slot=\"1\",reason=\"key_update\"} 0"),
            "{text}"
        );
        assert!(text.contains("host_messages_total{service=\"web\",slot=\"0\"} 40"), "{text}");
        assert!(text.contains("host_messages_total{service=\"web\",slot=\"1\"} 2"), "{text}");
        assert!(text.contains("host_connections_open{service=\"web\",slot=\"0\"} 2"), "{text}");
        assert!(text.contains("host_worker_exits_total{service=\"web\",how=\"signal SIGKILL\"} 3"), "{text}");
        assert!(text.contains("host_reloads_total{outcome=\"done\"} 1"), "{text}");
        assert!(text.contains("host_reload_duration_seconds_count 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        // Every state of every service has a series, 0 included.
        assert!(text.contains("host_workers{service=\"web\",state=\"ready\"} 2"), "{text}");
        assert!(text.contains("host_workers{service=\"web\",state=\"starting\"} 0"), "{text}");

        let classic = render_metrics(&status, &m, MetricsFormat::Prometheus);
        assert!(classic.contains("# HELP host_messages_total Messages (requests) handled"), "{classic}");
        assert!(classic.contains("# TYPE host_messages_total counter\n"), "{classic}");
        assert!(classic.contains("# TYPE host_workers gauge\n"), "{classic}");
        assert!(classic.contains("# TYPE host_reload_duration_seconds histogram\n"), "{classic}");
        assert!(classic.contains("host_messages_total{service=\"web\",slot=\"0\"} 40\n"), "{classic}");
        assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"), "{classic}");
        // The same samples in both (a family's series are in no set order).
        let samples = |t: &str| {
            let mut lines: Vec<String> = t.lines().filter(|l| !l.starts_with('#')).map(str::to_owned).collect();
            lines.sort();
            lines
        };
        assert_eq!(samples(&text), samples(&classic));
    }

    // Topics: message counters by event from the slot's totals, gauges and the broker's state
    // from the live report; nothing for a worker that never used them.
    #[test]
    fn metrics_show_topics_and_the_broker() {
        use crate::status::TopicReport;
        let topics = TopicReport {
            topics: 3,
            subscriptions: 7,
            published: 5,
            delivered: 35,
            dropped: 2,
            broker: Some("ready".into()),
            broker_published: 5,
            broker_reconnects: 1,
            ..Default::default()
        };
        let row = |slot: u32, topics: TopicReport| WorkerRow {
            service: "chat".into(),
            slot,
            pid: 10 + slot as i32,
            rss_kb: 1024,
            peak_kb: 2048,
            listen: "127.0.0.1:80".into(),
            plugin: "ws_chat 0.1.0".into(),
            hash: "abc".into(),
            state: "ready".into(),
            uptime_s: 1,
            report: Some(WorkerReport { topics: topics.clone(), ..Default::default() }),
            slot_totals: Some(WorkerReport { topics, ..Default::default() }),
        };
        let status = status(vec![row(0, topics), row(1, TopicReport::default())]);
        let text = render_metrics(&status, &MasterMetrics::default(), MetricsFormat::Prometheus);
        for line in [
            "host_topic_messages_total{service=\"chat\",slot=\"0\",event=\"delivered\"} 35\n",
            "host_topic_messages_total{service=\"chat\",slot=\"0\",event=\"dropped\"} 2\n",
            "host_topics{service=\"chat\",slot=\"0\"} 3\n",
            "host_topic_subscriptions{service=\"chat\",slot=\"0\"} 7\n",
            "host_cluster_connected{service=\"chat\",slot=\"0\"} 1\n",
            "host_cluster_messages_total{service=\"chat\",slot=\"0\",event=\"published\"} 5\n",
            "host_cluster_reconnects_total{service=\"chat\",slot=\"0\"} 1\n",
        ] {
            assert!(text.contains(line), "{line}in:\n{text}");
        }
        assert!(!text.contains("host_topics{service=\"chat\",slot=\"1\"}"), "{text}");
    }

    // Issue 21: a hand-over's pre-copy (steps, their bytes, the copy's duration) is in
    // /metrics beside the other hand-over series; the steps of a failed one count too, its
    // duration does not.
    #[test]
    fn metrics_count_the_pre_copy_of_hand_overs() {
        let status = status(Vec::new());
        let m = MasterMetrics::default();
        let text = render_metrics(&status, &m, MetricsFormat::Prometheus);
        assert!(text.contains("host_handover_copy_steps_total 0\n"), "{text}");
        let copied = crate::ctl::HandoverReport {
            attempted: true,
            moved: 1,
            state_bytes: 81_920 + 100,
            copy_steps: 20,
            copy_bytes: 81_920,
            copy_ms: 1_500,
            ..Default::default()
        };
        m.handed_over(&copied);
        let failed = crate::ctl::HandoverReport {
            copy_steps: 3,
            copy_bytes: 300,
            copy_ms: 40,
            failure: Some("the new worker is gone".into()),
            ..copied.clone()
        };
        m.handed_over(&failed);
        let text = render_metrics(&status, &m, MetricsFormat::Prometheus);
        for line in [
            "host_handover_copy_steps_total 23\n",
            "host_handover_copy_bytes_total 82220\n",
            "host_handover_copy_seconds_sum 1.5\n",
            "host_handover_copy_seconds_count 1\n",
            "host_handover_copy_seconds_bucket{le=\"1.28\"} 0\n",
            "host_handover_copy_seconds_bucket{le=\"2.56\"} 1\n",
            "# TYPE host_handover_copy_seconds histogram\n",
        ] {
            assert!(text.contains(line), "{line}in:\n{text}");
        }
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        use MetricsFormat::*;
        for (accept, format) in [
            ("", Prometheus),
            ("*/*", Prometheus),
            ("text/plain;version=0.0.4", Prometheus),
            ("application/openmetrics-text", OpenMetrics),
            // What Prometheus 2.x sends.
            (
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                 text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                OpenMetrics,
            ),
            ("Application/OpenMetrics-Text; version=1.0.0", OpenMetrics),
            ("application/openmetrics-text;q=0, text/plain", Prometheus),
            ("application/openmetrics-textual", Prometheus),
        ] {
            assert_eq!(MetricsFormat::from_accept(accept.as_bytes()), format, "{accept}");
        }
    }

    #[test]
    fn classic_text_renames_counters_and_drops_openmetrics_only_lines() {
        let om = "# HELP a_things Things \\\"quoted\\\".\n# TYPE a_things counter\n# UNIT a_things things\n\
                  a_things_total 3\n# HELP b Build.\n# TYPE b info\nb_info{v=\"1\"} 1\n# TYPE c unknown\nc 1\n# EOF\n";
        assert_eq!(
            prometheus_text(om),
            "# HELP a_things_total Things \"quoted\".\n# TYPE a_things_total counter\na_things_total 3\n\
             # HELP b_info Build.\n# TYPE b_info gauge\nb_info{v=\"1\"} 1\n# TYPE c untyped\nc 1\n"
        );
    }
}
