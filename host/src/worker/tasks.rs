//! Work off the event loop: the worker's task pool (`RawHost::submit_task`, heard back as
//! `on_task_done`) and the notifiers a plugin's own threads wake the loop with
//! (`RawHost::notifier`, heard as `on_notify`).
//!
//! The pool is std threads (at most the service's `task_threads`, started one by one when a job
//! finds every thread busy: a plugin that never submits a task pays nothing) taking jobs from a
//! bounded queue (`task_queue` jobs waiting at most; past it a submit is refused and counted).
//! A thread runs a job (the plugin's glue catches a panic and returns its message), pushes the
//! result on the completion list and wakes the loop with a `mio::Waker`; the loop takes the list
//! and calls the plugin. Notifiers push bytes on a bounded queue next to it and wake the same
//! waker. Nothing on a pool or plugin thread touches the loop's state: they only push on these
//! two lists under a mutex.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RSlice, RString, RVec};
use mio::{Registry, Token, Waker};
use plugin_api::abi::{
    NotifyStatus, RawJobBox, RawNotifier, RawNotifierBox, RawNotifier_TO, TaskStatus, MAX_NOTIFY_MESSAGE,
    MAX_NOTIFY_QUEUE,
};

/// The token of the pool's waker (below `CONN_TOKEN_BASE`).
pub const TASKS: Token = Token(5);

/// A finished job: its id and its bytes, or why it failed.
pub type Finished = (u64, Result<RVec<u8>, RString>);

/// Counters for `status`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TaskStats {
    pub submitted: u64,
    pub failed: u64,
    /// Submits refused: the queue was full.
    pub refused: u64,
    pub notified: u64,
    /// Notifications dropped: the queue was full (or the message too large).
    pub notify_dropped: u64,
}

/// What the loop takes from the pool in one go.
#[derive(Default)]
pub struct Ready {
    pub finished: Vec<Finished>,
    pub notes: Vec<Vec<u8>>,
}

/// State shared with the pool's threads and the notifiers.
struct Shared {
    jobs: Mutex<Jobs>,
    /// Signalled when a job is queued or the pool stops.
    work: Condvar,
    out: Mutex<Out>,
    waker: Waker,
}

struct Jobs {
    queue: VecDeque<(u64, RawJobBox)>,
    /// Threads waiting for a job.
    idle: usize,
    stop: bool,
}

#[derive(Default)]
struct Out {
    finished: Vec<Finished>,
    notes: Vec<Vec<u8>>,
    notify_dropped: u64,
    /// The worker is gone: notifiers answer `GONE`.
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A job never runs under these locks (a panic cannot poison them); take them regardless.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The worker's pool, made at the first task or notifier.
pub struct Tasks {
    shared: Arc<Shared>,
    max_threads: usize,
    max_queue: usize,
    threads: usize,
    next_id: u64,
    /// Submitted and not yet delivered to the plugin.
    in_flight: usize,
    pub stats: TaskStats,
}

impl Tasks {
    /// A pool of at most `max_threads` threads and `max_queue` waiting jobs, waking the loop of
    /// `registry` with [`TASKS`]. No thread starts yet.
    pub fn new(registry: &Registry, max_threads: usize, max_queue: usize) -> io::Result<Tasks> {
        let waker = Waker::new(registry, TASKS)?;
        let shared = Arc::new(Shared {
            jobs: Mutex::new(Jobs { queue: VecDeque::new(), idle: 0, stop: false }),
            work: Condvar::new(),
            out: Mutex::new(Out::default()),
            waker,
        });
        Ok(Tasks {
            shared,
            max_threads: max_threads.max(1),
            max_queue: max_queue.max(1),
            threads: 0,
            next_id: 1,
            in_flight: 0,
            stats: TaskStats::default(),
        })
    }

    /// Queues `job`: its id (> 0), or a negative [`TaskStatus`] when the queue is full.
    pub fn submit(&mut self, job: RawJobBox) -> i64 {
        let mut jobs = lock(&self.shared.jobs);
        if jobs.queue.len() >= self.max_queue {
            drop(jobs);
            self.stats.refused += 1;
            return TaskStatus::QUEUE_FULL.0 as i64;
        }
        let id = self.next_id;
        self.next_id += 1;
        jobs.queue.push_back((id, job));
        let start_thread = jobs.idle < jobs.queue.len() && self.threads < self.max_threads;
        drop(jobs);
        self.shared.work.notify_one();
        if start_thread {
            self.start_thread();
        }
        self.in_flight += 1;
        self.stats.submitted += 1;
        id as i64
    }

    fn start_thread(&mut self) {
        let shared = Arc::clone(&self.shared);
        let spawned =
            std::thread::Builder::new().name(format!("host-task-{}", self.threads)).spawn(move || run(shared));
        match spawned {
            Ok(_) => self.threads += 1,
            // The jobs wait for the threads already running (there is one unless this was the
            // first: then they wait for the next submit to try again).
            Err(e) => tracing::warn!(threads = self.threads, "could not start a task thread: {e}"),
        }
    }

    /// A notifier for the plugin's threads.
    pub fn notifier(&self) -> RawNotifierBox {
        RawNotifier_TO::from_ptr(RArc::new(Notifier { shared: Arc::clone(&self.shared) }), TD_Opaque)
    }

    /// Takes what finished and what was notified since the last call.
    pub fn take_ready(&mut self) -> Ready {
        let mut out = lock(&self.shared.out);
        let ready = Ready { finished: std::mem::take(&mut out.finished), notes: std::mem::take(&mut out.notes) };
        self.stats.notify_dropped = out.notify_dropped;
        drop(out);
        self.in_flight -= ready.finished.len();
        self.stats.failed += ready.finished.iter().filter(|f| f.1.is_err()).count() as u64;
        self.stats.notified += ready.notes.len() as u64;
        ready
    }

    /// Jobs submitted whose result the plugin has not heard yet (queued, running, or finished
    /// and not yet taken).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    #[cfg(test)]
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The counters, with the notifications dropped by the plugin's threads until now.
    pub fn refresh_stats(&mut self) -> TaskStats {
        self.stats.notify_dropped = lock(&self.shared.out).notify_dropped;
        self.stats
    }
}

impl Drop for Tasks {
    /// The worker exits: queued jobs are dropped, idle threads end, a thread still running a job
    /// ends after it (its result is dropped); notifiers answer `GONE` from now on.
    fn drop(&mut self) {
        let queued = {
            let mut jobs = lock(&self.shared.jobs);
            jobs.stop = true;
            std::mem::take(&mut jobs.queue)
        };
        self.shared.work.notify_all();
        lock(&self.shared.out).closed = true;
        drop(queued);
    }
}

/// A pool thread: runs jobs until the pool stops.
fn run(shared: Arc<Shared>) {
    loop {
        let (id, mut job) = {
            let mut jobs = lock(&shared.jobs);
            loop {
                if jobs.stop {
                    return;
                }
                if let Some(next) = jobs.queue.pop_front() {
                    break next;
                }
                jobs.idle += 1;
                jobs = shared.work.wait(jobs).unwrap_or_else(|e| e.into_inner());
                jobs.idle -= 1;
            }
        };
        let result = job.run().into_result();
        drop(job);
        let mut out = lock(&shared.out);
        if out.closed {
            return;
        }
        out.finished.push((id, result));
        drop(out);
        if let Err(e) = shared.waker.wake() {
            tracing::warn!("a task thread could not wake the loop: {e}");
        }
    }
}

/// The host's side of `RawHost::notifier`.
#[derive(Clone)]
struct Notifier {
    shared: Arc<Shared>,
}

impl RawNotifier for Notifier {
    fn notify(&self, data: RSlice<'_, u8>) -> i8 {
        let mut out = lock(&self.shared.out);
        let status = if out.closed {
            NotifyStatus::GONE
        } else if data.len() > MAX_NOTIFY_MESSAGE {
            out.notify_dropped += 1;
            NotifyStatus::TOO_LARGE
        } else if out.notes.len() >= MAX_NOTIFY_QUEUE {
            out.notify_dropped += 1;
            NotifyStatus::FULL
        } else {
            out.notes.push(data.to_vec());
            NotifyStatus::QUEUED
        };
        let wake = status == NotifyStatus::QUEUED && out.notes.len() == 1;
        drop(out);
        // One wake per batch: the loop takes every note queued until it runs.
        if wake {
            let _ = self.shared.waker.wake();
        }
        status.0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use mio::{Events, Poll};

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    /// Polls until `n` results arrived (or panics after `WAIT`).
    fn wait_finished(poll: &mut Poll, tasks: &mut Tasks, n: usize) -> Vec<Finished> {
        let mut got = Vec::new();
        let mut events = Events::with_capacity(8);
        let start = Instant::now();
        while got.len() < n {
            assert!(start.elapsed() < WAIT, "only {} of {n} results", got.len());
            poll.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
            got.extend(tasks.take_ready().finished);
        }
        got
    }

    fn bytes(r: &Result<RVec<u8>, RString>) -> Result<Vec<u8>, String> {
        r.clone().map(RVec::into_vec).map_err(RString::into_string)
    }

    #[test]
    fn results_come_back_through_the_waker_and_a_panic_is_an_error() {
        let mut poll = Poll::new().unwrap();
        let mut tasks = Tasks::new(poll.registry(), 2, 8).unwrap();
        assert_eq!(tasks.threads(), 0, "no thread before the first task");
        let a = tasks.submit(plugin_api::glue::job(|| b"a".to_vec()));
        let b = tasks.submit(plugin_api::glue::job(|| panic!("boom")));
        assert!(a > 0 && b > a);
        let mut got = wait_finished(&mut poll, &mut tasks, 2);
        got.sort_by_key(|f| f.0);
        assert_eq!(bytes(&got[0].1), Ok(b"a".to_vec()));
        assert_eq!(bytes(&got[1].1), Err("boom".to_string()));
        assert_eq!(tasks.in_flight(), 0);
        assert_eq!((tasks.stats.submitted, tasks.stats.failed), (2, 1));
        // The pool lives on after a panic.
        tasks.submit(plugin_api::glue::job(|| b"after".to_vec()));
        assert_eq!(bytes(&wait_finished(&mut poll, &mut tasks, 1)[0].1), Ok(b"after".to_vec()));
        assert!(tasks.threads() <= 2);
    }

    #[test]
    fn the_queue_is_bounded_and_a_full_one_refuses() {
        let poll = Poll::new().unwrap();
        let mut tasks = Tasks::new(poll.registry(), 1, 2).unwrap();
        let (release, gate) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let blocker = {
            let gate = Arc::clone(&gate);
            move || {
                started_tx.send(()).unwrap();
                gate.lock().unwrap().recv().unwrap();
                Vec::new()
            }
        };
        assert!(tasks.submit(plugin_api::glue::job(blocker)) > 0);
        started.recv_timeout(WAIT).expect("the first job runs");
        // One thread, busy: two more wait in the queue, the third is refused.
        assert!(tasks.submit(plugin_api::glue::job(Vec::new)) > 0);
        assert!(tasks.submit(plugin_api::glue::job(Vec::new)) > 0);
        assert_eq!(tasks.submit(plugin_api::glue::job(Vec::new)), TaskStatus::QUEUE_FULL.0 as i64);
        assert_eq!(tasks.stats.refused, 1);
        assert_eq!(tasks.in_flight(), 3);
        assert_eq!(tasks.threads(), 1);
        release.send(()).unwrap();
    }

    #[test]
    fn in_flight_counts_a_running_job_until_its_result_is_taken() {
        let mut poll = Poll::new().unwrap();
        let mut tasks = Tasks::new(poll.registry(), 4, 8).unwrap();
        let (release, gate) = mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        tasks.submit(plugin_api::glue::job(move || {
            gate.lock().unwrap().recv().unwrap();
            b"late".to_vec()
        }));
        // What a draining worker checks before it exits.
        let mut events = Events::with_capacity(8);
        poll.poll(&mut events, Some(Duration::from_millis(20))).unwrap();
        assert!(tasks.take_ready().finished.is_empty());
        assert_eq!(tasks.in_flight(), 1);
        release.send(()).unwrap();
        assert_eq!(bytes(&wait_finished(&mut poll, &mut tasks, 1)[0].1), Ok(b"late".to_vec()));
        assert_eq!(tasks.in_flight(), 0);
    }

    #[test]
    fn notifiers_queue_in_order_bounded_and_answer_gone_after_the_worker() {
        let mut poll = Poll::new().unwrap();
        let mut tasks = Tasks::new(poll.registry(), 1, 1).unwrap();
        let notifier = tasks.notifier();
        let other = notifier.clone();
        let thread = std::thread::spawn(move || {
            for i in 0..10u8 {
                assert_eq!(other.notify(RSlice::from_slice(&[i])), 0);
            }
        });
        thread.join().unwrap();
        let mut events = Events::with_capacity(8);
        poll.poll(&mut events, Some(WAIT)).unwrap();
        assert!(events.iter().any(|e| e.token() == TASKS), "a notify wakes the loop");
        let notes = tasks.take_ready().notes;
        assert_eq!(notes, (0..10u8).map(|i| vec![i]).collect::<Vec<_>>());
        assert_eq!(notifier.notify(RSlice::from_slice(&vec![0; MAX_NOTIFY_MESSAGE + 1])), NotifyStatus::TOO_LARGE.0);
        for _ in 0..MAX_NOTIFY_QUEUE {
            assert_eq!(notifier.notify(RSlice::from_slice(b"x")), 0);
        }
        assert_eq!(notifier.notify(RSlice::from_slice(b"x")), NotifyStatus::FULL.0);
        tasks.take_ready();
        assert_eq!(tasks.stats.notify_dropped, 2);
        drop(tasks);
        assert_eq!(notifier.notify(RSlice::from_slice(b"x")), NotifyStatus::GONE.0);
    }
}
