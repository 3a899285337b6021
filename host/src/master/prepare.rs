//! Checking candidate plugin files off the master's loop. Reading, hashing and copying a file,
//! then probing the copy in a child process, takes milliseconds for a release plugin but up to a
//! second for a 12 MB debug build on a loaded machine; meanwhile the master must go on reaping,
//! answering commands and serving signals. A helper thread does the work (it starts processes
//! only by fork + exec, which is safe with threads around) and wakes the master's poll.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::reload::state::CheckId;
use super::slots::ServiceId;
use super::snapshot::{self, Snapshot};

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
}

impl Preparer {
    /// Starts the thread; `waker` wakes the master when a job is done.
    pub fn start(waker: Arc<mio::Waker>) -> std::io::Result<Self> {
        let (jobs, job_rx) = channel::<Job>();
        let (done_tx, done) = channel();
        let thread = std::thread::Builder::new().name("host: snapshots".into()).spawn(move || {
            for job in job_rx {
                let result = snapshot::take(&job.source, job.expected_name.as_deref()).map_err(|e| e.to_string());
                let done = Done { purpose: job.purpose, service: job.service, source: job.source, result };
                if done_tx.send(done).is_err() {
                    return;
                }
                let _ = waker.wake();
            }
        })?;
        Ok(Preparer { jobs: Some(jobs), done, thread: Some(thread) })
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
        // Closing the channel ends the thread after its current job.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
