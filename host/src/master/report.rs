//! `status` and `connections`: the master asks every worker for its counters over the control
//! socket pair and answers once all replied or after 1 s (a worker that did not answer in time
//! is shown as busy). Each request has its own id, so concurrent requests never mix.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::admin::AdminId;
use super::slots::{ClientId, Readiness, Role, SlotKey, WorkerId};
use super::{slots, Master};
use crate::ctl::{ReportKind, ToWorker};
use crate::status::{self, Answer, ConnReport, ConnRow, ExitRow, ServiceRow, Status, WorkerReport, WorkerRow};

/// A worker whose plugin panicked less than this many seconds ago shows as `panicking`.
const PANICKING_S: u64 = 60;

/// How long a worker may take to answer a report request before it counts as busy.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(1);

/// Who asked for a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requester {
    /// A signal (SIGUSR2, SIGIO): the table goes into the log.
    Log,
    /// `host status` / `host connections`.
    Control(ClientId),
    /// A scrape of the admin listener's `/metrics`.
    Admin(AdminId),
}

/// A report request under way.
pub struct Gather {
    kind: ReportKind,
    to: Requester,
    /// Workers still to answer.
    waiting: Vec<WorkerId>,
    replies: HashMap<WorkerId, String>,
    pub deadline: Instant,
}

impl Master {
    pub(super) fn start_gather(&mut self, kind: ReportKind, to: Requester) {
        self.next_gather += 1;
        let id = self.next_gather;
        let ready: Vec<WorkerId> =
            self.sup.slots.workers().filter(|w| w.readiness == Readiness::Ready).map(|w| w.id).collect();
        let mut waiting = Vec::new();
        for w in ready {
            if self.channels.get(&w).is_some_and(|c| !c.closed) {
                self.send(w, &ToWorker::Report { id, kind });
                waiting.push(w);
            }
        }
        let gather = Gather { kind, to, waiting, replies: HashMap::new(), deadline: Instant::now() + REPORT_TIMEOUT };
        self.gathers.insert(id, gather);
        self.finish_gathers(false);
    }

    /// An exited worker's last counters join its slot's totals.
    pub(super) fn carry_counters(&mut self, worker: WorkerId, key: SlotKey) {
        if let Some(last) = self.last_reports.remove(&worker) {
            self.carried.entry(key).or_default().add_counters(&last);
        }
    }

    pub(super) fn gather_reply(&mut self, worker: WorkerId, id: u64, json: String) {
        if let Ok(report) = serde_json::from_str::<WorkerReport>(&json) {
            self.last_reports.insert(worker, report);
        }
        if id == crate::ctl::FINAL_REPORT {
            return;
        }
        if let Some(g) = self.gathers.get_mut(&id) {
            g.waiting.retain(|&w| w != worker);
            g.replies.insert(worker, json);
        }
        self.finish_gathers(false);
    }

    /// A worker exited: nobody waits for it any more.
    pub(super) fn gather_forget(&mut self, worker: WorkerId) {
        for g in self.gathers.values_mut() {
            g.waiting.retain(|&w| w != worker);
        }
    }

    /// Answers every request whose workers all replied (or, with `timed_out`, whose deadline passed).
    pub(super) fn finish_gathers(&mut self, timed_out: bool) {
        let now = Instant::now();
        let done: Vec<u64> = self
            .gathers
            .iter()
            .filter(|(_, g)| g.waiting.is_empty() || (timed_out && g.deadline <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            let Some(g) = self.gathers.remove(&id) else { continue };
            let answer = match g.kind {
                ReportKind::Status => Answer::Status(self.compose_status(&g.replies)),
                ReportKind::Connections => self.compose_connections(&g.replies),
            };
            match g.to {
                Requester::Control(client) => self.answer_all(&[client], &answer),
                Requester::Admin(id) => {
                    if let (Answer::Status(s), Some(a)) = (&answer, self.admin.as_mut()) {
                        a.answer_metrics(id, s, &self.metrics, self.poll.registry());
                    }
                }
                Requester::Log => match &answer {
                    Answer::Status(s) => tracing::info!("status\n{}", status::render_status(s)),
                    Answer::Connections { rows, busy } => {
                        tracing::info!("connections\n{}", status::render_connections(rows, busy))
                    }
                    _ => {}
                },
            }
        }
    }

    fn compose_status(&self, replies: &HashMap<WorkerId, String>) -> Status {
        let now = self.sup.now();
        let mut workers: Vec<_> = self.sup.slots.workers().collect();
        // Rows in config order: service, slot, then the older worker first.
        workers.sort_by_key(|w| (w.key, w.started, w.pid.as_raw()));
        let workers: Vec<WorkerRow> = workers
            .into_iter()
            .map(|w| {
                let report: Option<WorkerReport> = replies.get(&w.id).and_then(|j| serde_json::from_str(j).ok());
                let role = self.sup.slots.role(w.id).unwrap_or(Role::Retiring);
                let state = match (role, w.readiness, &report) {
                    (Role::Retiring, _, _) => "draining",
                    (_, Readiness::Starting, _) => "starting",
                    (_, _, Some(r)) if r.draining => "draining",
                    // Serving, but its plugin panicked within the last minute.
                    (_, _, Some(r)) if r.last_panic_s.is_some_and(|s| s < PANICKING_S) => "panicking",
                    (_, _, Some(_)) => "ready",
                    (_, _, None) => "busy",
                };
                // The slot's totals: this worker's counters plus those of the workers it replaced.
                let slot_totals = match (&report, self.carried.get(&w.key), role) {
                    (Some(r), Some(carried), Role::Serving) => {
                        let mut t = r.clone();
                        t.add_counters(carried);
                        Some(t)
                    }
                    (r, _, _) => r.clone(),
                };
                let svc = &self.sup.services[w.key.service.0].service;
                let (rss_kb, peak_kb) = memory_kb(w.pid.as_raw());
                WorkerRow {
                    service: svc.name.clone(),
                    slot: w.key.slot,
                    pid: w.pid.as_raw(),
                    rss_kb,
                    peak_kb,
                    listen: svc.listen.to_string(),
                    plugin: format!("{} {}", w.snapshot.name, w.snapshot.version),
                    hash: w.snapshot.short_hash(),
                    state: state.to_string(),
                    uptime_s: w.uptime(now).as_secs(),
                    report,
                    slot_totals,
                }
            })
            .collect();
        let services = self
            .sup
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let snap = self.sup.slots.service_slots(slots::ServiceId(i)).next();
                ServiceRow {
                    name: s.service.name.clone(),
                    listen: s.service.listen.to_string(),
                    plugin: match snap {
                        Some(x) => format!("{} {}", x.snapshot.name, x.snapshot.version),
                        None => format!("waiting for {}", s.service.plugin),
                    },
                    count: s.service.count,
                    reloadable: s.reloadable,
                    tls: s.tls.as_ref().map(|t| t.info.clone()),
                }
            })
            .collect();
        let exits = self
            .sup
            .exits
            .iter()
            .map(|((service, how), count)| ExitRow { service: service.clone(), how: how.clone(), count: *count })
            .collect();
        Status {
            master_pid: std::process::id(),
            master_rss_kb: memory_kb(std::process::id() as i32).0,
            start_dir: self.start_dir.display().to_string(),
            start_args: self.start_args.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.started_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            uptime_s: SystemTime::now().duration_since(self.started_at).map_or(0, |d| d.as_secs()),
            load_avg: std::fs::read_to_string("/proc/loadavg")
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
            services,
            workers,
            exits,
            last_reload: {
                let show = |r: &super::supervisor::ReloadRecord| {
                    let at = r.at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                    format!("{} (trigger: {}; at {})", r.summary, r.trigger, status::utc_time(at))
                };
                match (&self.sup.last_reload, &self.sup.last_unchanged) {
                    (Some(r), Some(u)) => Some(format!("{}; since then: {}", show(r), show(u))),
                    (Some(r), None) => Some(show(r)),
                    (None, Some(u)) => Some(format!("none; since then: {}", show(u))),
                    (None, None) => None,
                }
            },
            handovers: self
                .sup
                .handovers
                .iter()
                .map(|(service, t)| status::HandoverRow {
                    service: service.clone(),
                    handovers: t.handovers,
                    failed: t.failed,
                    moved: t.moved,
                    sessions: t.sessions,
                    drained: t.stayed,
                    state_bytes: t.state_bytes,
                    last: t.last.as_ref().map(super::handover::describe).unwrap_or_default(),
                    last_stays: t.last.as_ref().map(|l| l.stays.clone()).unwrap_or_default(),
                    last_cause: t.last.as_ref().and_then(|l| l.cause),
                })
                .collect(),
        }
    }

    fn compose_connections(&self, replies: &HashMap<WorkerId, String>) -> Answer {
        let mut rows = Vec::new();
        let mut busy = Vec::new();
        for w in self.sup.slots.workers() {
            let svc = &self.sup.services[w.key.service.0].service;
            match replies.get(&w.id).and_then(|j| serde_json::from_str::<Vec<ConnReport>>(j).ok()) {
                Some(conns) => rows.extend(conns.into_iter().map(|conn| ConnRow {
                    pid: w.pid.as_raw(),
                    service: svc.name.clone(),
                    protocol: w.snapshot.name.clone(),
                    conn,
                })),
                None => busy.push(w.pid.as_raw()),
            }
        }
        Answer::Connections { rows, busy }
    }
}

/// Resident and peak resident memory of a process in KiB, from /proc (0 when it is gone).
pub fn memory_kb(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
