//! Watches the plugin directories (never the files: a watch on a file dies at its first
//! rename) and reports plugin files that changed, once they have been quiet for a while.
//!
//! Only `Close(Write)`, a rename to the name and `Create` arm a report (DESIGN.md pitfall 6:
//! `cargo build` removes then re-creates the path and never closes it after writing; a move
//! from another folder gives only the rename). Any event on the path postpones it, so a file
//! still being written is not reported mid-write. The master then checks the file is a complete
//! ELF file and probes it before anything loads it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};

/// How long a file must be quiet before it is reported.
pub const QUIET: Duration = Duration::from_millis(300);

pub struct Watcher {
    _inner: RecommendedWatcher,
    rx: Receiver<(PathBuf, bool)>,
    debouncer: Debouncer,
}

impl Watcher {
    /// Watches `dirs` (those that exist); `waker` wakes the master's poll when an event came.
    pub fn start(dirs: &[PathBuf], waker: Arc<mio::Waker>) -> notify::Result<Self> {
        let (tx, rx) = channel();
        let mut inner = notify::recommended_watcher(move |res: notify::Result<Event>| match res {
            Ok(event) => {
                let Some(arms) = classify(&event.kind) else { return };
                // A rename with both names: the destination is the one that changed.
                let paths = match event.kind {
                    EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                        event.paths.get(1).cloned().into_iter().collect()
                    }
                    _ => event.paths,
                };
                let mut sent = false;
                for path in paths.into_iter().filter(|p| is_plugin_file(p)) {
                    sent |= tx.send((path, arms)).is_ok();
                }
                if sent {
                    let _ = waker.wake();
                }
            }
            Err(e) => tracing::warn!("plugin watcher error: {e}"),
        })?;
        for dir in dirs {
            match inner.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => tracing::info!(dir = %dir.display(), "watching for plugin changes"),
                Err(e) => tracing::warn!(dir = %dir.display(), "cannot watch plugin directory: {e}"),
            }
        }
        Ok(Watcher { _inner: inner, rx, debouncer: Debouncer::default() })
    }

    /// Takes the events the watcher thread sent (call when the waker fired).
    pub fn collect(&mut self, now: Instant) {
        while let Ok((path, arms)) = self.rx.try_recv() {
            self.debouncer.note(path, arms, now);
        }
    }

    /// Files armed and quiet for [`QUIET`].
    pub fn due(&mut self, now: Instant) -> Vec<PathBuf> {
        self.debouncer.due(now)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.debouncer.next_deadline()
    }
}

fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "so")
}

/// Some(true): the event can complete a new file; Some(false): activity on the file (postpones
/// a report); None: of no interest.
pub fn classify(kind: &EventKind) -> Option<bool> {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(true),
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => Some(true),
        EventKind::Create(CreateKind::File | CreateKind::Any) => Some(true),
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any | ModifyKind::Metadata(_)) => Some(false),
        _ => None,
    }
}

#[derive(Debug, Default)]
struct Pending {
    armed: bool,
    last: Option<Instant>,
}

/// Merges bursts of events per path into one report after [`QUIET`].
#[derive(Debug, Default)]
pub struct Debouncer {
    pending: HashMap<PathBuf, Pending>,
}

impl Debouncer {
    pub fn note(&mut self, path: PathBuf, arms: bool, now: Instant) {
        let p = self.pending.entry(path).or_default();
        p.armed |= arms;
        p.last = Some(now);
    }

    pub fn due(&mut self, now: Instant) -> Vec<PathBuf> {
        let ready: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, p)| p.armed && p.last.is_some_and(|t| now.duration_since(t) >= QUIET))
            .map(|(path, _)| path.clone())
            .collect();
        for path in &ready {
            self.pending.remove(path);
        }
        // Activity that never armed (a chmod, say) is forgotten once quiet.
        self.pending.retain(|_, p| p.armed || p.last.is_some_and(|t| now.duration_since(t) < QUIET));
        ready
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().filter(|p| p.armed).filter_map(|p| p.last).min().map(|t| t + QUIET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{DataChange, RemoveKind};

    #[test]
    fn only_completing_events_arm() {
        assert_eq!(classify(&EventKind::Access(AccessKind::Close(AccessMode::Write))), Some(true));
        assert_eq!(classify(&EventKind::Modify(ModifyKind::Name(RenameMode::To))), Some(true));
        assert_eq!(classify(&EventKind::Create(CreateKind::File)), Some(true));
        assert_eq!(classify(&EventKind::Modify(ModifyKind::Data(DataChange::Any))), Some(false));
        assert_eq!(classify(&EventKind::Modify(ModifyKind::Name(RenameMode::From))), None);
        assert_eq!(classify(&EventKind::Remove(RemoveKind::File)), None);
        assert_eq!(classify(&EventKind::Access(AccessKind::Open(AccessMode::Any))), None);
    }

    #[test]
    fn a_burst_is_reported_once_after_quiet() {
        let t0 = Instant::now();
        let mut d = Debouncer::default();
        let p = PathBuf::from("/p/libhttp.so");
        d.note(p.clone(), true, t0);
        d.note(p.clone(), false, t0 + Duration::from_millis(200));
        assert!(d.due(t0 + Duration::from_millis(400)).is_empty(), "activity postpones the report");
        assert_eq!(d.next_deadline(), Some(t0 + Duration::from_millis(500)));
        assert_eq!(d.due(t0 + Duration::from_millis(500)), vec![p]);
        assert!(d.due(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn writes_without_a_close_are_not_reported() {
        let t0 = Instant::now();
        let mut d = Debouncer::default();
        d.note(PathBuf::from("/p/x.so"), false, t0);
        assert!(d.due(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn only_so_files_matter() {
        assert!(is_plugin_file(Path::new("/a/libhttp.so")));
        assert!(!is_plugin_file(Path::new("/a/libhttp.so.tmp")));
        assert!(!is_plugin_file(Path::new("/a/notes.txt")));
    }
}
