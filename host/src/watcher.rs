//! Watches the plugin directories (never the files: a watch on a file dies at its first
//! rename) and reports plugin files that changed, once they have been quiet for a while.
//!
//! Only `Close(Write)`, a rename to the name and `Create` arm a report (docs/architecture.md pitfall 6:
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

/// What happened to a plugin file, once it has been quiet for [`QUIET`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Written, renamed into place or created: a candidate for a reload.
    Written,
    /// Removed and not re-created (as `cargo build` does within milliseconds).
    Removed,
}

/// How often plugin directories that do not exist yet are looked for.
const MISSING_DIR_CHECK: Duration = Duration::from_secs(2);

pub struct Watcher {
    inner: RecommendedWatcher,
    /// The directories watched now.
    watched: Vec<PathBuf>,
    /// Plugin directories that did not exist yet: watched once they appear.
    missing: Vec<PathBuf>,
    next_check: Option<Instant>,
    rx: Receiver<(PathBuf, FileEvent)>,
    debouncer: Debouncer,
}

impl Watcher {
    /// Watches `dirs` (those that exist) for plugin files, and the directories of `files` (TLS
    /// certificates and keys) for those files; `waker` wakes the master's poll when an event came.
    pub fn start(dirs: &[PathBuf], files: &[PathBuf], waker: Arc<mio::Waker>) -> notify::Result<Self> {
        let (tx, rx) = channel();
        let followed: Vec<PathBuf> = files.to_vec();
        let mut dirs = dirs.to_vec();
        for dir in files.iter().filter_map(|f| f.parent()) {
            if !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_path_buf());
            }
        }
        let inner = notify::recommended_watcher(move |res: notify::Result<Event>| match res {
            Ok(event) => {
                let Some(what) = classify(&event.kind) else { return };
                // A rename with both names: the destination is the one that changed.
                let paths = match event.kind {
                    EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                        event.paths.get(1).cloned().into_iter().collect()
                    }
                    _ => event.paths,
                };
                let mut sent = false;
                for path in paths.into_iter().filter(|p| is_plugin_file(p) || followed.contains(p)) {
                    sent |= tx.send((path, what)).is_ok();
                }
                if sent {
                    let _ = waker.wake();
                }
            }
            Err(e) => tracing::warn!("plugin watcher error: {e}"),
        })?;
        let mut watcher = Watcher {
            inner,
            watched: Vec::new(),
            missing: Vec::new(),
            next_check: None,
            rx,
            debouncer: Debouncer::default(),
        };
        for dir in &dirs {
            if dir.is_dir() {
                watcher.watch(dir);
            } else {
                // The default ./plugins often does not exist: looked for again every 2 s.
                tracing::debug!(dir = %dir.display(), "plugin directory missing; watched once it appears");
                watcher.missing.push(dir.clone());
            }
        }
        if !watcher.missing.is_empty() {
            watcher.next_check = Some(Instant::now() + MISSING_DIR_CHECK);
        }
        Ok(watcher)
    }

    fn watch(&mut self, dir: &Path) {
        match self.inner.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                tracing::debug!(dir = %dir.display(), "watching for plugin changes");
                self.watched.push(dir.to_path_buf());
            }
            Err(e) => tracing::warn!(dir = %dir.display(), "cannot watch plugin directory: {e}"),
        }
    }

    /// The directories watched now, and those watched once they appear.
    pub fn directories(&self) -> (&[PathBuf], &[PathBuf]) {
        (&self.watched, &self.missing)
    }

    /// Starts watching the missing plugin directories that exist now (when their check is due)
    /// and returns them: files already in them were never seen by the watcher.
    pub fn appeared_dirs(&mut self, now: Instant) -> Vec<PathBuf> {
        if self.next_check.is_none_or(|t| t > now) {
            return Vec::new();
        }
        let (found, missing): (Vec<PathBuf>, Vec<PathBuf>) = self.missing.drain(..).partition(|d| d.is_dir());
        self.missing = missing;
        self.next_check = (!self.missing.is_empty()).then(|| now + MISSING_DIR_CHECK);
        for dir in &found {
            self.watch(dir);
        }
        found
    }

    /// Takes the events the watcher thread sent (call when the waker fired).
    pub fn collect(&mut self, now: Instant) {
        while let Ok((path, what)) = self.rx.try_recv() {
            self.debouncer.note(path, what, now);
        }
    }

    /// Files written or removed, and quiet since for [`QUIET`].
    pub fn due(&mut self, now: Instant) -> Vec<(PathBuf, Change)> {
        self.debouncer.due(now)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        [self.debouncer.next_deadline(), self.next_check].into_iter().flatten().min()
    }
}

fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "so")
}

/// What one raw event means for a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileEvent {
    /// It can complete a new file (close after write, rename to, create).
    Arms,
    /// Activity on the file: postpones a report.
    Touches,
    /// The file is gone (removed, or renamed away).
    Removes,
}

pub fn classify(kind: &EventKind) -> Option<FileEvent> {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(FileEvent::Arms),
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => Some(FileEvent::Arms),
        EventKind::Create(CreateKind::File | CreateKind::Any) => Some(FileEvent::Arms),
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any | ModifyKind::Metadata(_)) => Some(FileEvent::Touches),
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => Some(FileEvent::Removes),
        _ => None,
    }
}

#[derive(Debug, Default)]
struct Pending {
    armed: bool,
    removed: bool,
    last: Option<Instant>,
}

/// Merges bursts of events per path into one report after [`QUIET`].
#[derive(Debug, Default)]
pub struct Debouncer {
    pending: HashMap<PathBuf, Pending>,
}

impl Debouncer {
    pub fn note(&mut self, path: PathBuf, what: FileEvent, now: Instant) {
        let p = self.pending.entry(path).or_default();
        match what {
            FileEvent::Arms => (p.armed, p.removed) = (true, false),
            FileEvent::Removes => (p.armed, p.removed) = (false, true),
            FileEvent::Touches => {}
        }
        p.last = Some(now);
    }

    pub fn due(&mut self, now: Instant) -> Vec<(PathBuf, Change)> {
        let quiet = |p: &Pending| p.last.is_some_and(|t| now.duration_since(t) >= QUIET);
        let ready: Vec<(PathBuf, Change)> = self
            .pending
            .iter()
            .filter(|(_, p)| (p.armed || p.removed) && quiet(p))
            .map(|(path, p)| (path.clone(), if p.armed { Change::Written } else { Change::Removed }))
            .collect();
        for (path, _) in &ready {
            self.pending.remove(path);
        }
        // Activity that never armed (a chmod, say) is forgotten once quiet.
        self.pending.retain(|_, p| !quiet(p));
        ready
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().filter(|p| p.armed || p.removed).filter_map(|p| p.last).min().map(|t| t + QUIET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{DataChange, RemoveKind};

    #[test]
    fn events_are_classified() {
        assert_eq!(classify(&EventKind::Access(AccessKind::Close(AccessMode::Write))), Some(FileEvent::Arms));
        assert_eq!(classify(&EventKind::Modify(ModifyKind::Name(RenameMode::To))), Some(FileEvent::Arms));
        assert_eq!(classify(&EventKind::Create(CreateKind::File)), Some(FileEvent::Arms));
        assert_eq!(classify(&EventKind::Modify(ModifyKind::Data(DataChange::Any))), Some(FileEvent::Touches));
        assert_eq!(classify(&EventKind::Modify(ModifyKind::Name(RenameMode::From))), Some(FileEvent::Removes));
        assert_eq!(classify(&EventKind::Remove(RemoveKind::File)), Some(FileEvent::Removes));
        assert_eq!(classify(&EventKind::Access(AccessKind::Open(AccessMode::Any))), None);
    }

    #[test]
    fn a_burst_is_reported_once_after_quiet() {
        let t0 = Instant::now();
        let mut d = Debouncer::default();
        let p = PathBuf::from("/p/libhttp.so");
        d.note(p.clone(), FileEvent::Arms, t0);
        d.note(p.clone(), FileEvent::Touches, t0 + Duration::from_millis(200));
        assert!(d.due(t0 + Duration::from_millis(400)).is_empty(), "activity postpones the report");
        assert_eq!(d.next_deadline(), Some(t0 + Duration::from_millis(500)));
        assert_eq!(d.due(t0 + Duration::from_millis(500)), vec![(p, Change::Written)]);
        assert!(d.due(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn writes_without_a_close_are_not_reported() {
        let t0 = Instant::now();
        let mut d = Debouncer::default();
        d.note(PathBuf::from("/p/x.so"), FileEvent::Touches, t0);
        assert!(d.due(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn cargo_remove_then_create_is_a_write_a_lone_remove_a_removal() {
        let t0 = Instant::now();
        let mut d = Debouncer::default();
        let p = PathBuf::from("/p/libhttp.so");
        d.note(p.clone(), FileEvent::Removes, t0);
        d.note(p.clone(), FileEvent::Arms, t0 + Duration::from_millis(4));
        assert_eq!(d.due(t0 + Duration::from_secs(1)), vec![(p.clone(), Change::Written)]);
        d.note(p.clone(), FileEvent::Removes, t0 + Duration::from_secs(2));
        assert_eq!(d.due(t0 + Duration::from_secs(3)), vec![(p, Change::Removed)]);
    }

    #[test]
    fn only_so_files_matter() {
        assert!(is_plugin_file(Path::new("/a/libhttp.so")));
        assert!(!is_plugin_file(Path::new("/a/libhttp.so.tmp")));
        assert!(!is_plugin_file(Path::new("/a/notes.txt")));
    }
}
