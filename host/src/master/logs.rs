//! The files the host logs to: each service's access log and, for a daemon, the host's own log
//! file. The master owns them (nginx's model): it opens them before any worker starts, as its
//! own user, and hands each worker its service's access log descriptor right after the hello
//! (`ToWorker::Logs` with id 0); workers buffer the lines their plugin formats and append them
//! whole. `host reopen-logs` (after logrotate renamed the files) reopens every file at its path,
//! makes the new log file the master's stdout and stderr, sends every live worker its new
//! descriptors, and answers once each said it switched (or after [`REOPEN_TIMEOUT`], naming the
//! workers that did not). A file that cannot be reopened keeps its old descriptor, and the
//! answer says so. A worker started later gets the current descriptors.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::slots::{ClientId, WorkerId};
use super::Master;
use crate::ctl::ToWorker;
use crate::status::Answer;
use crate::sys;

/// How long `reopen-logs` waits for the workers to switch.
pub const REOPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a log file for appending (`O_APPEND | O_CREAT | O_CLOEXEC`, mode 0640 when created).
pub fn open_log(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new().append(true).create(true).mode(0o640).open(path)
}

/// An open access log.
pub struct AccessLog {
    pub path: PathBuf,
    file: File,
}

impl AccessLog {
    /// Opens the access log of `service` (an error names both).
    pub fn open(service: &str, path: &Path) -> anyhow::Result<Self> {
        let file = open_log(path)
            .map_err(|e| anyhow::anyhow!("service {service}: could not open the access log {}: {e}", path.display()))?;
        Ok(AccessLog { path: path.to_path_buf(), file })
    }
}

/// The master's log files and the `reopen-logs` requests under way.
#[derive(Default)]
pub struct Logs {
    /// By service index: its access log, if it has one.
    pub access: Vec<Option<AccessLog>>,
    /// The daemon's log file (its stdout and stderr); None in the foreground.
    pub log_file: Option<PathBuf>,
    reopens: HashMap<u64, Reopen>,
    next_id: u64,
}

/// A `reopen-logs` request waiting for workers.
struct Reopen {
    client: ClientId,
    /// Workers that have not said they switched yet, with their service and slot for the answer.
    waiting: Vec<(WorkerId, String)>,
    switched: usize,
    /// What went wrong so far (files that could not be reopened, workers that failed).
    errors: Vec<String>,
    /// What was reopened, for the answer.
    done: Vec<String>,
    deadline: Instant,
}

impl Logs {
    pub fn next_deadline(&self) -> Option<Instant> {
        self.reopens.values().map(|r| r.deadline).min()
    }

    /// The access log descriptor of `service` for a worker, if it has one.
    fn access_fd(&self, service: usize) -> Option<io::Result<OwnedFd>> {
        let log = self.access.get(service)?.as_ref()?;
        Some(log.file.as_fd().try_clone_to_owned())
    }
}

impl Master {
    /// Sends a new worker its service's access log (before anything else after the hello: the
    /// worker waits for it before it serves).
    pub(super) fn send_access_log(&mut self, id: WorkerId) {
        let Some(service) = self.sup.slots.worker(id).map(|w| w.key.service.0) else { return };
        let Some(fd) = self.logs.access_fd(service) else { return };
        let Some(channel) = self.channels.get_mut(&id) else { return };
        let msg = ToWorker::Logs { id: 0, access_log: true, log_file: false };
        if let Err(e) = fd.and_then(|fd| channel.send_with_fds(&msg, vec![fd])) {
            tracing::warn!(worker = id.0, "could not send the worker its access log: {e}");
        }
    }

    /// `host reopen-logs`: reopens every file at its path and tells the workers.
    pub(super) fn reopen_logs(&mut self, client: ClientId) {
        self.logs.next_id += 1;
        let id = self.logs.next_id;
        let mut errors = Vec::new();
        let mut done = Vec::new();
        let mut log_file = None;
        if let Some(path) = self.logs.log_file.clone() {
            match open_log(&path).and_then(|f| sys::redirect_stdio(f.as_fd()).map(|()| f)) {
                Ok(f) => {
                    tracing::info!(path = %path.display(), "log file reopened");
                    done.push(format!("the log file {}", path.display()));
                    log_file = Some(f);
                }
                Err(e) => errors.push(format!(
                    "could not reopen the log file {}: {e}; still writing to the old one",
                    path.display()
                )),
            }
        }
        let mut reopened = vec![false; self.logs.access.len()];
        for (i, log) in self.logs.access.iter_mut().enumerate() {
            let Some(log) = log else { continue };
            let service = &self.sup.services[i].service.name;
            match open_log(&log.path) {
                Ok(file) => {
                    log.file = file;
                    reopened[i] = true;
                    done.push(format!("the access log of {service} {}", log.path.display()));
                }
                Err(e) => errors.push(format!(
                    "service {service}: could not reopen the access log {}: {e}; still writing to the old one",
                    log.path.display()
                )),
            }
        }
        let mut waiting = Vec::new();
        let workers: Vec<(WorkerId, usize, String)> = self
            .sup
            .slots
            .workers()
            .map(|w| {
                (
                    w.id,
                    w.key.service.0,
                    format!("{} #{} (pid {})", self.sup.service_name(w.key.service), w.key.slot, w.pid),
                )
            })
            .collect();
        for (worker, service, name) in workers {
            let access = reopened.get(service).copied().unwrap_or(false);
            if !access && log_file.is_none() {
                continue;
            }
            let mut fds = Vec::new();
            let cloned = (|| -> io::Result<()> {
                if access {
                    if let Some(fd) = self.logs.access_fd(service) {
                        fds.push(fd?);
                    }
                }
                if let Some(f) = &log_file {
                    fds.push(f.as_fd().try_clone_to_owned()?);
                }
                Ok(())
            })();
            let Some(channel) = self.channels.get_mut(&worker).filter(|c| !c.closed) else { continue };
            let msg = ToWorker::Logs { id, access_log: access, log_file: log_file.is_some() };
            match cloned.and_then(|()| channel.send_with_fds(&msg, fds)) {
                Ok(()) => waiting.push((worker, name)),
                Err(e) => errors.push(format!("worker {name}: could not send its new descriptors: {e}")),
            }
            self.watch_channel_output(worker);
        }
        let reopen = Reopen { client, waiting, switched: 0, errors, done, deadline: Instant::now() + REOPEN_TIMEOUT };
        self.logs.reopens.insert(id, reopen);
        self.finish_reopens(false);
    }

    /// A worker answered `Logs { id }`.
    pub(super) fn logs_reopened(&mut self, worker: WorkerId, id: u64, error: Option<String>) {
        if let Some(r) = self.logs.reopens.get_mut(&id) {
            if let Some(i) = r.waiting.iter().position(|(w, _)| *w == worker) {
                let (_, name) = r.waiting.remove(i);
                match error {
                    Some(e) => r.errors.push(format!("worker {name}: {e}")),
                    None => r.switched += 1,
                }
            }
        }
        self.finish_reopens(false);
    }

    /// A worker exited: nobody waits for it any more (its successor gets the new descriptors).
    pub(super) fn logs_forget(&mut self, worker: WorkerId) {
        for r in self.logs.reopens.values_mut() {
            r.waiting.retain(|(w, _)| *w != worker);
        }
    }

    /// Answers every request whose workers all switched (or, with `timed_out`, whose deadline
    /// passed: the answer names the workers that did not say so).
    pub(super) fn finish_reopens(&mut self, timed_out: bool) {
        let now = Instant::now();
        let done: Vec<u64> = self
            .logs
            .reopens
            .iter()
            .filter(|(_, r)| r.waiting.is_empty() || (timed_out && r.deadline <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            let Some(mut r) = self.logs.reopens.remove(&id) else { continue };
            for (_, name) in &r.waiting {
                r.errors.push(format!("worker {name} did not switch within {} s", REOPEN_TIMEOUT.as_secs()));
            }
            let what = if r.done.is_empty() {
                "no log file to reopen".to_string()
            } else {
                format!("reopened {}", r.done.join(", "))
            };
            let answer = if r.errors.is_empty() {
                Answer::Ok { message: format!("{what}; {} workers switched", r.switched), wait_ms: 0 }
            } else {
                for e in &r.errors {
                    tracing::warn!("reopen-logs: {e}");
                }
                Answer::Error { message: format!("{what}; but {}", r.errors.join("; ")) }
            };
            self.answer_all(&[r.client], &answer);
        }
    }
}
