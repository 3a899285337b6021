//! Checking candidate plugin files off the master's loop. Reading, hashing and copying a file,
//! then probing the copy in a child process, takes milliseconds for a release plugin but up to a
//! second for a 12 MB debug build on a loaded machine; meanwhile the master must go on reaping,
//! answering commands and serving signals. A helper thread does the work (it starts processes
//! only by fork + exec, which is safe with threads around) and wakes the master's poll.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::reload::state::CheckId;
use super::slots::ServiceId;
use super::snapshot::{self, CheckOptions, Snapshot};
use super::spawn::{ProbeAs, Running};

/// What a checked file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A candidate of the reload whose files are checked in this round.
    Reload(CheckId),
    /// The plugin a waiting service waits for.
    Activate,
}

#[derive(Debug)]
pub struct Job {
    pub purpose: Purpose,
    pub service: ServiceId,
    pub source: PathBuf,
    /// The name the plugin must report (None: named by path).
    pub expected_name: Option<String>,
    /// The service's user and group: the probe runs as them.
    pub user: Option<String>,
    pub group: Option<String>,
}

#[derive(Debug)]
pub struct Done {
    pub purpose: Purpose,
    pub service: ServiceId,
    pub source: PathBuf,
    pub result: Result<Snapshot, String>,
}

pub struct Preparer {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
    /// The probe under way, killed when the master goes (see `Drop`).
    running: Running,
    /// Set when the master goes: jobs still queued are not started.
    cancelled: Arc<AtomicBool>,
}

/// How every file is checked, whatever its service.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub probe_timeout: Duration,
    pub insecure: bool,
}

impl Preparer {
    /// Starts the thread; `waker` wakes the master when a job is done.
    pub fn start(waker: Arc<mio::Waker>, policy: Policy) -> std::io::Result<Self> {
        let (jobs, job_rx) = channel::<Job>();
        let (done_tx, done) = channel();
        let running = Running::default();
        let cancelled = Arc::new(AtomicBool::new(false));
        let (probe, stop) = (running.clone(), cancelled.clone());
        let thread = std::thread::Builder::new().name("host: snapshots".into()).spawn(move || {
            for job in job_rx {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let options = CheckOptions {
                    probe_as: ProbeAs { user: job.user.clone(), group: job.group.clone() },
                    probe_timeout: policy.probe_timeout,
                    insecure: policy.insecure,
                };
                let result = snapshot::take(&job.source, job.expected_name.as_deref(), &options, &probe)
                    .map_err(|e| e.to_string());
                let done = Done { purpose: job.purpose, service: job.service, source: job.source, result };
                if done_tx.send(done).is_err() {
                    return;
                }
                let _ = waker.wake();
            }
        })?;
        Ok(Preparer { jobs: Some(jobs), done, thread: Some(thread), running, cancelled })
    }

    pub fn submit(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            // The thread only ends when `jobs` is dropped, so this send cannot fail.
            let _ = jobs.send(job);
        }
    }

    /// The jobs finished since the last call.
    pub fn take(&self) -> Vec<Done> {
        self.done.try_iter().collect()
    }
}

impl Drop for Preparer {
    fn drop(&mut self) {
        // Closing the channel ends the thread after its current job; a probe under way (a
        // plugin whose load-time code hangs) is killed, so the master never waits for one.
        self.cancelled.store(true, Ordering::Relaxed);
        self.jobs.take();
        if let Some(pid) = self.running.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
