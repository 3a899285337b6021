//! What `host status` and `host connections` show: the data (JSON between the processes) and
//! its rendering as tables. Pure: no syscalls.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::tls::CertInfo;

/// A worker's own counters, sent to the master on request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Messages per second over the last few seconds.
    #[serde(default)]
    pub messages_per_s: f64,
    pub connections: u64,
    pub accepted: u64,
    pub messages: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub send_failures: u64,
    pub plugin_panics: u64,
    /// Seconds since the plugin last panicked (None: never).
    #[serde(default)]
    pub last_panic_s: Option<u64>,
    pub timers: u64,
    pub draining: bool,
    /// The plugin's own counters (`Host::counter`).
    #[serde(default)]
    pub plugin_counters: Vec<PluginCounter>,
    /// Messages between workers: sent (queued for a peer), received, and dropped (a peer's
    /// mailbox full, or the peer gone).
    #[serde(default)]
    pub worker_msgs_sent: u64,
    #[serde(default)]
    pub worker_msgs_received: u64,
    #[serde(default)]
    pub worker_msgs_dropped: u64,
    /// UDP datagrams dropped (over the max package size or the session limit, or for a paused
    /// session).
    #[serde(default)]
    pub datagrams_dropped: u64,
    /// The task pool (`Host::spawn_task`): jobs submitted, failed (panicked), refused (queue
    /// full), and notifications dropped (queue full); in flight now is a gauge.
    #[serde(default)]
    pub tasks_submitted: u64,
    #[serde(default)]
    pub tasks_failed: u64,
    #[serde(default)]
    pub tasks_refused: u64,
    #[serde(default)]
    pub tasks_in_flight: u64,
    #[serde(default)]
    pub notify_dropped: u64,
    /// Topics (`Host::publish`, `Host::subscribe`).
    #[serde(default)]
    pub topics: TopicReport,
    /// TLS connections that moved here in a hand-over (their record layer in user space) and
    /// were closed since: the peer sent a TLS 1.3 KeyUpdate (a moved connection cannot follow
    /// one), or a key reached its AEAD limit.
    #[serde(default)]
    pub tls_closed_key_update: u64,
    #[serde(default)]
    pub tls_closed_aead_limit: u64,
}

/// A worker's topics: gauges (topics, subscriptions, the broker's state) and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicReport {
    /// Topics with a subscriber in the worker now, and its subscriptions.
    pub topics: u64,
    pub subscriptions: u64,
    /// Messages its plugin published; received from other workers and hosts; copies written to
    /// subscribers; copies dropped for slow subscribers (send buffer full); calls refused
    /// (limits).
    pub published: u64,
    pub received: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub refused: u64,
    /// Messages from another worker or from the broker over this worker's limits
    /// (`topic_max_message`, `topic_max_len`): skipped.
    #[serde(default)]
    pub oversized: u64,
    /// The cluster's broker connection (`--cluster`): `ready`, `connecting` or `down`; None
    /// without a cluster.
    pub broker: Option<String>,
    /// Messages published to the broker, received from it, dropped (not connected, or a
    /// backlog), and reconnections.
    pub broker_published: u64,
    pub broker_received: u64,
    pub broker_dropped: u64,
    pub broker_reconnects: u64,
}

impl TopicReport {
    fn add_counters(&mut self, other: &TopicReport) {
        self.published += other.published;
        self.received += other.received;
        self.delivered += other.delivered;
        self.dropped += other.dropped;
        self.refused += other.refused;
        self.oversized += other.oversized;
        self.broker_published += other.broker_published;
        self.broker_received += other.broker_received;
        self.broker_dropped += other.broker_dropped;
        self.broker_reconnects += other.broker_reconnects;
    }

    /// Whether anything happened with topics (the status line is left out otherwise).
    pub fn used(&self) -> bool {
        self.subscriptions + self.published + self.received + self.refused + self.oversized > 0 || self.broker.is_some()
    }
}

/// A counter a plugin registered: `host_plugin_NAME_total{service, slot, LABELS}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginCounter {
    pub name: String,
    /// `key=value` pairs separated by commas (may be empty).
    pub labels: String,
    pub help: String,
    pub value: u64,
}

impl PluginCounter {
    /// A metric name (`[a-z_][a-z0-9_]*`, 64 bytes at most) and well-formed labels.
    pub fn valid(name: &str, labels: &str) -> bool {
        let ident = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && !s.as_bytes()[0].is_ascii_digit()
        };
        let pair_ok = |p: &str| {
            p.split_once('=').is_some_and(|(k, v)| ident(k) && !v.contains(['"', '\\', '\n']) && v.len() <= 128)
        };
        ident(name) && (labels.is_empty() || labels.split(',').all(pair_ok))
    }

    /// The labels as pairs.
    pub fn label_pairs(&self) -> Vec<(String, String)> {
        self.labels.split(',').filter_map(|p| p.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }
}

impl WorkerReport {
    /// Adds `other`'s counters (not its gauges: connections, timers, rate) to these.
    pub fn add_counters(&mut self, other: &WorkerReport) {
        self.accepted += other.accepted;
        self.messages += other.messages;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.send_failures += other.send_failures;
        self.plugin_panics += other.plugin_panics;
        for c in &other.plugin_counters {
            match self.plugin_counters.iter_mut().find(|m| m.name == c.name && m.labels == c.labels) {
                Some(mine) => mine.value += c.value,
                None => self.plugin_counters.push(c.clone()),
            }
        }
        self.worker_msgs_sent += other.worker_msgs_sent;
        self.worker_msgs_received += other.worker_msgs_received;
        self.worker_msgs_dropped += other.worker_msgs_dropped;
        self.datagrams_dropped += other.datagrams_dropped;
        self.tasks_submitted += other.tasks_submitted;
        self.tasks_failed += other.tasks_failed;
        self.tasks_refused += other.tasks_refused;
        self.notify_dropped += other.notify_dropped;
        self.topics.add_counters(&other.topics);
        self.tls_closed_key_update += other.tls_closed_key_update;
        self.tls_closed_aead_limit += other.tls_closed_aead_limit;
    }
}

/// One connection of a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnReport {
    pub id: u64,
    /// The worker slot and the connection's index in it: `#slot/index` is its readable id.
    #[serde(default)]
    pub slot: u32,
    #[serde(default)]
    pub index: u64,
    /// Seconds since it was accepted, and since its last traffic.
    #[serde(default)]
    pub age_s: u64,
    #[serde(default)]
    pub idle_s: u64,
    pub local: String,
    pub peer: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub pending_send: u64,
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub master_pid: u32,
    #[serde(default)]
    pub master_rss_kb: u64,
    /// The directory and arguments the host was started with (`host restart` reuses them).
    #[serde(default)]
    pub start_dir: String,
    #[serde(default)]
    pub start_args: Vec<String>,
    pub version: String,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub uptime_s: u64,
    pub load_avg: String,
    pub services: Vec<ServiceRow>,
    pub workers: Vec<WorkerRow>,
    pub exits: Vec<ExitRow>,
    pub last_reload: Option<String>,
    /// Hand-overs per service (services that had none are left out).
    #[serde(default)]
    pub handovers: Vec<HandoverRow>,
}

/// A service's hand-overs since the master started: connections moved to replacements and
/// drained instead, bytes of plugin state, and the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverRow {
    pub service: String,
    pub handovers: u64,
    /// Hand-overs that failed (everything drained).
    pub failed: u64,
    pub moved: u64,
    /// UDP sessions moved (not in `moved`).
    #[serde(default)]
    pub sessions: u64,
    pub drained: u64,
    pub state_bytes: u64,
    /// The last one: `12 moved, 0 drained, 1.2 MiB of state, paused 3 ms`, or why it failed.
    pub last: String,
    /// Why connections stayed (drained) in the last one, with how many for each reason: not
    /// open (handshaking, closing), its TLS cannot move now, outbound, a UDP session, declined by
    /// the plugin, refused by the new plugin, the plugin does not take part (an old ABI), and
    /// the cause of a failed one (`HandoverFailure::stay_reason`)…
    #[serde(default)]
    pub last_stays: Vec<(String, u64)>,
    /// Why the last one failed, as a name (`gone`, `timed_out`, `refused`, `not_adopted`, …);
    /// None when it went through. `last` says it in words.
    #[serde(default)]
    pub last_cause: Option<crate::ctl::HandoverFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRow {
    pub name: String,
    pub listen: String,
    pub plugin: String,
    pub count: u32,
    pub reloadable: bool,
    /// Its TLS certificate (None: plain TCP).
    #[serde(default)]
    pub tls: Option<CertInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRow {
    pub service: String,
    pub slot: u32,
    pub pid: i32,
    pub rss_kb: u64,
    /// Peak resident memory (VmHWM).
    #[serde(default)]
    pub peak_kb: u64,
    pub listen: String,
    pub plugin: String,
    pub hash: String,
    /// starting, ready, panicking (its plugin panicked within a minute), draining, or busy (did
    /// not answer in time).
    pub state: String,
    pub uptime_s: u64,
    pub report: Option<WorkerReport>,
    /// The slot's counters: this worker's plus those of the workers it replaced (serving
    /// workers; others show their own).
    #[serde(default)]
    pub slot_totals: Option<WorkerReport>,
}

/// How a service's workers ended, counted (Workerman's `worker_exit_info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRow {
    pub service: String,
    pub how: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnRow {
    pub pid: i32,
    pub service: String,
    pub protocol: String,
    pub conn: ConnReport,
}

/// The master's answer on the control socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    Ok {
        message: String,
        /// How long the asker should wait for the effect (a stop: drain and kill timeouts).
        #[serde(default)]
        wait_ms: u64,
    },
    Error {
        message: String,
    },
    /// A reload that ran, but refused plugin files it was asked to load on the way (`host
    /// reload` prints it and exits with code 4).
    Refused {
        message: String,
    },
    Status(Status),
    Connections {
        rows: Vec<ConnRow>,
        busy: Vec<i32>,
    },
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// `2026-11-22 17:01:11 UTC` for seconds since the Unix epoch (the civil-from-days algorithm).
pub fn utc_time(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn human_duration(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// Lays out rows in columns as wide as their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells.zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut out, &mut header.iter().copied());
    for row in rows {
        line(&mut out, &mut row.iter().map(String::as_str));
    }
    out
}

pub fn render_status(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "host {}   master pid {} ({})   started {}   up {}   load {}",
        s.version,
        s.master_pid,
        human_bytes(s.master_rss_kb * 1024),
        utc_time(s.started_at),
        human_duration(s.uptime_s),
        s.load_avg
    );
    let _ = writeln!(out, "last reload: {}", s.last_reload.as_deref().unwrap_or("none"));
    out.push('\n');
    let services: Vec<Vec<String>> = s
        .services
        .iter()
        .map(|r| {
            vec![r.name.clone(), r.listen.clone(), r.plugin.clone(), r.count.to_string(), r.reloadable.to_string()]
        })
        .collect();
    out.push_str(&table(&["SERVICE", "LISTEN", "PLUGIN", "WORKERS", "RELOADABLE"], &services));
    let now = s.started_at + s.uptime_s;
    let certs: Vec<Vec<String>> = s
        .services
        .iter()
        .filter_map(|r| {
            let c = r.tls.as_ref()?;
            let days = c.not_after.saturating_sub(now as i64) / 86400;
            Some(vec![r.name.clone(), c.subject.clone(), format!("{} (in {days} days)", c.not_after_text)])
        })
        .collect();
    if !certs.is_empty() {
        out.push('\n');
        out.push_str(&table(&["SERVICE", "TLS CERTIFICATE", "EXPIRES"], &certs));
        for r in &s.services {
            if let Some(why) = r.tls.as_ref().and_then(|c| c.refused.as_ref()) {
                let _ = writeln!(out, "{}: TLS certificate change refused (serving the last good one): {why}", r.name);
            }
        }
    }
    if !s.handovers.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = s
            .handovers
            .iter()
            .map(|h| {
                let n = |v: u64| v.to_string();
                vec![
                    h.service.clone(),
                    n(h.handovers),
                    n(h.failed),
                    n(h.moved),
                    n(h.sessions),
                    n(h.drained),
                    human_bytes(h.state_bytes),
                    h.last.clone(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["SERVICE", "HAND-OVERS", "FAILED", "MOVED", "UDP MOVED", "DRAINED", "STATE", "LAST"],
            &rows,
        ));
    }
    if !s.exits.is_empty() {
        out.push('\n');
        let exits: Vec<Vec<String>> =
            s.exits.iter().map(|e| vec![e.service.clone(), e.how.clone(), e.count.to_string()]).collect();
        out.push_str(&table(&["SERVICE", "WORKER EXITS", "COUNT"], &exits));
    }
    out.push('\n');
    let mut total = WorkerReport::default();
    let (mut total_rss, mut total_rate) = (0, 0.0);
    let mut rows: Vec<Vec<String>> = Vec::new();
    for w in &s.workers {
        let known = w.report.is_some();
        let r = w.report.clone().unwrap_or_default();
        let slot = w.slot_totals.clone().unwrap_or_else(|| r.clone());
        total.add_counters(&slot);
        total.connections += r.connections;
        total.timers += r.timers;
        total_rss += w.rss_kb;
        total_rate += r.messages_per_s;
        let num = |v: u64| if known { v.to_string() } else { "-".into() };
        let bytes = |v: u64| if known { human_bytes(v) } else { "-".into() };
        rows.push(vec![
            w.service.clone(),
            format!("#{}", w.slot),
            w.pid.to_string(),
            human_bytes(w.rss_kb * 1024),
            human_bytes(w.peak_kb * 1024),
            w.listen.clone(),
            w.plugin.clone(),
            w.hash.clone(),
            num(r.connections),
            if known { format!("{:.0}", r.messages_per_s) } else { "-".into() },
            num(slot.messages),
            bytes(slot.bytes_in),
            bytes(slot.bytes_out),
            num(slot.send_failures),
            num(slot.plugin_panics),
            num(r.timers),
            human_duration(w.uptime_s),
            w.state.clone(),
        ]);
    }
    if s.workers.len() > 1 {
        rows.push(vec![
            "total".into(),
            String::new(),
            String::new(),
            human_bytes(total_rss * 1024),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            total.connections.to_string(),
            format!("{total_rate:.0}"),
            total.messages.to_string(),
            human_bytes(total.bytes_in),
            human_bytes(total.bytes_out),
            total.send_failures.to_string(),
            total.plugin_panics.to_string(),
            total.timers.to_string(),
            String::new(),
            String::new(),
        ]);
    }
    out.push_str(&table(
        &[
            "SERVICE",
            "SLOT",
            "PID",
            "MEMORY",
            "PEAK",
            "LISTEN",
            "PLUGIN",
            "HASH",
            "CONNS",
            "MSG/S",
            "MESSAGES",
            "IN",
            "OUT",
            "SEND_FAIL",
            "PANICS",
            "TIMERS",
            "UP",
            "STATE",
        ],
        &rows,
    ));
    if total.worker_msgs_sent + total.worker_msgs_received + total.worker_msgs_dropped > 0 {
        // Messages between workers: one line, not a column (most services never use them).
        let dropped: Vec<String> = s
            .workers
            .iter()
            .filter_map(|w| {
                let r = w.slot_totals.as_ref().or(w.report.as_ref())?;
                (r.worker_msgs_dropped > 0).then(|| format!("#{} {}: {}", w.slot, w.pid, r.worker_msgs_dropped))
            })
            .collect();
        let _ = writeln!(
            out,
            "\nworker messages: sent {}, received {}, dropped {}{}",
            total.worker_msgs_sent,
            total.worker_msgs_received,
            total.worker_msgs_dropped,
            if dropped.is_empty() { String::new() } else { format!(" ({})", dropped.join(", ")) }
        );
    }
    let topics: Vec<(&WorkerRow, &WorkerReport)> =
        s.workers.iter().filter_map(|w| Some((w, w.report.as_ref()?))).filter(|(_, r)| r.topics.used()).collect();
    if !topics.is_empty() || total.topics.used() {
        // Topics: one line for the counters, the broker's state per worker when clustered.
        let gauges = |f: fn(&TopicReport) -> u64| topics.iter().map(|(_, r)| f(&r.topics)).sum::<u64>();
        let t = &total.topics;
        let _ = writeln!(
            out,
            "\ntopics: {} topics, {} subscriptions; published {}, received {}, delivered {}, dropped {} (slow subscribers), refused {}",
            gauges(|t| t.topics),
            gauges(|t| t.subscriptions),
            t.published,
            t.received,
            t.delivered,
            t.dropped,
            t.refused
        );
        if t.oversized > 0 {
            // Before the line's end: a message from elsewhere over this host's limits.
            out.pop();
            let _ = writeln!(out, ", oversized {} (from other workers or hosts, skipped)", t.oversized);
        }
        let brokers: Vec<String> =
            topics.iter().filter_map(|(w, r)| Some(format!("#{} {}", w.slot, r.topics.broker.as_deref()?))).collect();
        if !brokers.is_empty() {
            let _ = writeln!(
                out,
                "cluster: {}; published {}, received {}, dropped {}, reconnects {}",
                brokers.join(", "),
                t.broker_published,
                t.broker_received,
                t.broker_dropped,
                t.broker_reconnects
            );
        }
    }
    if total.tls_closed_key_update + total.tls_closed_aead_limit > 0 {
        // Moved TLS connections only (docs/architecture.md, "TLS hand-over").
        let _ = writeln!(
            out,
            "\nmoved TLS connections closed: {} on a KeyUpdate, {} at the AEAD limit",
            total.tls_closed_key_update, total.tls_closed_aead_limit
        );
    }
    if total.datagrams_dropped > 0 {
        // UDP services only: one line, like the worker messages.
        let _ = writeln!(
            out,
            "\ndatagrams dropped: {} (oversized, over the session limit, or paused)",
            total.datagrams_dropped
        );
    }
    if total.tasks_submitted + total.tasks_refused + total.notify_dropped > 0 {
        // The task pool: one line (most plugins never use it).
        let _ = writeln!(
            out,
            "\ntasks: submitted {}, failed {}, refused {}; notifications dropped {}",
            total.tasks_submitted, total.tasks_failed, total.tasks_refused, total.notify_dropped
        );
    }
    out
}

pub fn render_connections(rows: &[ConnRow], busy: &[i32]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.pid.to_string(),
                r.service.clone(),
                format!("#{}/{}", r.conn.slot, r.conn.index),
                r.protocol.clone(),
                r.conn.local.clone(),
                r.conn.peer.clone(),
                human_bytes(r.conn.bytes_in),
                human_bytes(r.conn.bytes_out),
                human_bytes(r.conn.pending_send),
                human_duration(r.conn.age_s),
                human_duration(r.conn.idle_s),
                r.conn.state.clone(),
            ]
        })
        .collect();
    let mut out = table(
        &["PID", "SERVICE", "ID", "PROTOCOL", "LOCAL", "REMOTE", "RECV", "SENT", "PENDING", "AGE", "IDLE", "STATE"],
        &cells,
    );
    let _ = writeln!(out, "{} connections", rows.len());
    if !busy.is_empty() {
        let _ = writeln!(out, "busy workers (no answer within 1 s): {busy:?}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        Status {
            master_pid: 10,
            master_rss_kb: 1500,
            start_dir: "/srv".into(),
            start_args: vec!["--plugin".into(), "http".into()],
            version: "0.1.0".into(),
            started_at: 0,
            uptime_s: 3725,
            load_avg: "0.10 0.20 0.30".into(),
            services: vec![ServiceRow {
                name: "web".into(),
                listen: "127.0.0.1:8080".into(),
                plugin: "http 0.1.0".into(),
                count: 2,
                reloadable: true,
                tls: Some(CertInfo {
                    subject: "CN=web.test".into(),
                    not_after: 3725 + 30 * 86400,
                    not_after_text: "Jan 31 01:02:05 1970 +00:00".into(),
                    refused: None,
                }),
            }],
            workers: vec![
                WorkerRow {
                    service: "web".into(),
                    slot: 0,
                    pid: 11,
                    rss_kb: 2048,
                    peak_kb: 4096,
                    listen: "127.0.0.1:8080".into(),
                    plugin: "http 0.1.0".into(),
                    hash: "abcdef012345".into(),
                    state: "ready".into(),
                    uptime_s: 5,
                    report: Some(WorkerReport {
                        connections: 3,
                        messages: 1500,
                        bytes_in: 3 << 20,
                        ..Default::default()
                    }),
                    slot_totals: None,
                },
                WorkerRow {
                    service: "web".into(),
                    slot: 1,
                    pid: 12,
                    rss_kb: 2048,
                    peak_kb: 4096,
                    listen: "127.0.0.1:8080".into(),
                    plugin: "http 0.1.0".into(),
                    hash: "abcdef012345".into(),
                    state: "busy".into(),
                    uptime_s: 5,
                    report: None,
                    slot_totals: None,
                },
            ],
            exits: vec![ExitRow { service: "web".into(), how: "signal SIGKILL".into(), count: 2 }],
            last_reload: Some("done: 2 workers replaced in 40 ms".into()),
            handovers: Vec::new(),
        }
    }

    #[test]
    fn status_table_has_a_row_per_worker() {
        let text = render_status(&status());
        assert!(text.contains("master pid 10"), "{text}");
        assert!(text.contains("up 1h2m"), "{text}");
        assert!(text.contains("signal SIGKILL  2"), "{text}");
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("web ") && l.contains('#')).collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert!(rows[0].contains("1500") && rows[0].contains("3.0M") && rows[0].ends_with("ready"), "{}", rows[0]);
        assert!(rows[1].ends_with("busy") && rows[1].contains(" - "), "{}", rows[1]);
        let total = text.lines().find(|l| l.starts_with("total ")).expect("a totals row");
        assert!(total.contains("1500") && total.contains("4.0M"), "{total}");
        let cert = text.lines().find(|l| l.contains("CN=web.test")).expect("a certificate row");
        assert!(cert.starts_with("web ") && cert.ends_with("Jan 31 01:02:05 1970 +00:00 (in 30 days)"), "{cert}");
    }

    #[test]
    fn plugin_counters_are_checked_and_added_up() {
        assert!(PluginCounter::valid("http_responses", "class=2xx"));
        assert!(PluginCounter::valid("a", ""));
        for (name, labels) in [("", ""), ("9x", ""), ("Caps", ""), ("ok", "novalue"), ("ok", "k=\"q\"")] {
            assert!(!PluginCounter::valid(name, labels), "{name} {labels}");
        }
        let counter =
            |labels: &str, value| PluginCounter { name: "r".into(), labels: labels.into(), help: String::new(), value };
        let mut a = WorkerReport { plugin_counters: vec![counter("c=1", 2)], ..Default::default() };
        let b = WorkerReport { plugin_counters: vec![counter("c=1", 3), counter("c=2", 1)], ..Default::default() };
        a.add_counters(&b);
        assert_eq!(a.plugin_counters, vec![counter("c=1", 5), counter("c=2", 1)]);
    }

    #[test]
    fn slot_totals_count_the_replaced_workers() {
        let mut s = status();
        s.workers[0].slot_totals =
            Some(WorkerReport { messages: 2500, connections: 3, bytes_in: 3 << 20, ..Default::default() });
        let text = render_status(&s);
        let row = text.lines().find(|l| l.starts_with("web ") && l.contains("#0")).unwrap();
        assert!(row.contains("2500"), "{row}");
    }

    #[test]
    fn answers_round_trip_as_json() {
        let a = Answer::Status(status());
        let json = serde_json::to_string(&a).unwrap();
        assert!(!json.contains('\n'));
        assert_eq!(serde_json::from_str::<Answer>(&json).unwrap(), a);
        let e = Answer::Error { message: "no".into() };
        assert_eq!(serde_json::from_str::<Answer>(&serde_json::to_string(&e).unwrap()).unwrap(), e);
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(90000), "1d1h");
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_time(1_795_366_871), "2026-11-22 17:01:11 UTC");
    }
}
