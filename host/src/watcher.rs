//! Watches the plugin directories (never the files: a watch on a file dies at its first
//! rename) and reports plugin files that changed, once they have been quiet for a while.
//!
//! Only `Close(Write)`, a rename to the name and `Create` arm a report (docs/architecture.md pitfall 6:
//! `cargo build` removes then re-creates the path and never closes it after writing; a move
//! from another folder gives only the rename). Any event on the path postpones it, so a file
//! still being written is not reported mid-write. The master then checks the file is a complete
//! ELF file and probes it before anything loads it.
//!
//! An inotify watch follows an inode, not a path. Every [`RECHECK`] the watcher therefore looks
//! again: a plugin directory replaced (`mv plugins.new plugins`, or a symlink `plugins ->
//! releases/42` switched) is watched anew and its files count as written; one removed is watched
//! again once it reappears. A plugin file that is a symlink to a file outside the watched
//! directories (`plugins/libx.so -> ../build/libx.so`) gets its target's directory watched too,
//! and a change of the target is reported as a change of the link.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
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

/// How often the watched directories are looked at again: replaced or removed ones, those
/// that do not exist yet, and symlinked plugin files' targets.
pub const RECHECK: Duration = Duration::from_secs(2);

/// Symlinked plugin files by the real file they point at (shared with the notify thread).
type Links = Arc<Mutex<HashMap<PathBuf, Vec<PathBuf>>>>;

pub struct Watcher {
    inner: RecommendedWatcher,
    /// The directories watched now, with the identity (device, inode) of what the watch is on.
    watched: Vec<(PathBuf, (u64, u64))>,
    /// Plugin directories that did not exist yet: watched once they appear.
    missing: Vec<PathBuf>,
    /// Directories watched only for the targets of symlinked plugin files.
    target_dirs: Vec<PathBuf>,
    links: Links,
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
        let links: Links = Arc::default();
        let targets = Arc::clone(&links);
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
                // A symlinked plugin's target: the link is what changed, for the master.
                let paths: Vec<PathBuf> = {
                    let targets = targets.lock().unwrap_or_else(|e| e.into_inner());
                    paths
                        .into_iter()
                        .flat_map(|p| targets.get(&p).cloned().unwrap_or_default().into_iter().chain([p]))
                        .collect()
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
            target_dirs: Vec::new(),
            links,
            next_check: Some(Instant::now() + RECHECK),
            rx,
            debouncer: Debouncer::default(),
        };
        for dir in &dirs {
            if !watcher.watch(dir) {
                // The default ./plugins often does not exist: looked for again every 2 s.
                tracing::debug!(dir = %dir.display(), "plugin directory missing; watched once it appears");
                watcher.missing.push(dir.clone());
            }
        }
        watcher.follow_links();
        Ok(watcher)
    }

    /// Watches `dir`; false when it is not a directory now (or cannot be watched).
    fn watch(&mut self, dir: &Path) -> bool {
        let Some(identity) = identity(dir) else { return false };
        match self.inner.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                tracing::debug!(dir = %dir.display(), "watching for plugin changes");
                self.watched.push((dir.to_path_buf(), identity));
                true
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot watch plugin directory: {e}");
                false
            }
        }
    }

    /// The directories watched now, and those watched once they appear.
    pub fn directories(&self) -> (Vec<PathBuf>, &[PathBuf]) {
        (self.watched.iter().map(|(d, _)| d.clone()).collect(), &self.missing)
    }

    /// When its check is due ([`RECHECK`]): watches anew the directories replaced since they
    /// were watched, watches the missing ones that exist now, and follows symlinked plugin
    /// files. Returns the directories newly watched: files already in them were never seen by
    /// the watcher.
    pub fn appeared_dirs(&mut self, now: Instant) -> Vec<PathBuf> {
        if self.next_check.is_none_or(|t| t > now) {
            return Vec::new();
        }
        self.next_check = Some(now + RECHECK);
        let mut found = Vec::new();
        // Replaced or removed since the watch was set: the watch is on the old inode.
        let stale: Vec<(PathBuf, (u64, u64))> =
            self.watched.iter().filter(|(dir, id)| identity(dir) != Some(*id)).cloned().collect();
        for (dir, _) in stale {
            let _ = self.inner.unwatch(&dir);
            self.watched.retain(|(d, _)| *d != dir);
            if self.watch(&dir) {
                tracing::info!(dir = %dir.display(), "plugin directory replaced; watching the new one");
                found.push(dir);
            } else {
                tracing::warn!(dir = %dir.display(), "plugin directory removed; watched again once it reappears");
                self.missing.push(dir);
            }
        }
        let (appeared, missing): (Vec<PathBuf>, Vec<PathBuf>) = self.missing.drain(..).partition(|d| d.is_dir());
        self.missing = missing;
        for dir in appeared {
            if self.watch(&dir) {
                found.push(dir);
            } else {
                self.missing.push(dir);
            }
        }
        self.follow_links();
        found
    }

    /// Maps every symlinked plugin file in the watched directories to its real file, and
    /// watches the real files' directories that are not watched already (and no more those that
    /// no link points into).
    fn follow_links(&mut self) {
        let mut links: HashMap<PathBuf, Vec<PathBuf>> = HashMap::new();
        for (dir, _) in &self.watched {
            let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
            for link in entries.map(|e| e.path()).filter(|p| is_plugin_file(p) && p.is_symlink()) {
                if let Ok(target) = std::fs::canonicalize(&link) {
                    links.entry(target).or_default().push(link);
                }
            }
        }
        let watched: Vec<PathBuf> = self.watched.iter().map(|(d, _)| d.clone()).collect();
        let mut wanted: Vec<PathBuf> = links.keys().filter_map(|t| t.parent().map(Path::to_path_buf)).collect();
        wanted.sort();
        wanted.dedup();
        wanted.retain(|d| !watched.contains(d));
        for dir in self.target_dirs.iter().filter(|d| !wanted.contains(d)) {
            let _ = self.inner.unwatch(dir);
        }
        let before = std::mem::take(&mut self.target_dirs);
        for dir in wanted {
            if before.contains(&dir) || self.inner.watch(&dir, RecursiveMode::NonRecursive).is_ok() {
                if !before.contains(&dir) {
                    tracing::debug!(dir = %dir.display(), "watching the directory of a symlinked plugin's target");
                }
                self.target_dirs.push(dir);
            }
        }
        *self.links.lock().unwrap_or_else(|e| e.into_inner()) = links;
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

/// The device and inode of the directory at `path` (after symlinks); None when it is none.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().filter(|m| m.is_dir()).map(|m| (m.dev(), m.ino()))
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

    /// Waits (bounded) until the watcher reports `path` as written.
    fn wait_written(w: &mut Watcher, path: &Path) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = false;
        while Instant::now() < deadline {
            w.collect(Instant::now());
            // Reported as if quiet long enough: the test waits for the event, not the debounce.
            let due = w.due(Instant::now() + QUIET * 2);
            seen |= due.iter().any(|(p, c)| p == path && *c == Change::Written);
            if seen {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn test_watcher(dirs: &[PathBuf]) -> (Watcher, mio::Poll) {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        (Watcher::start(dirs, &[], waker).unwrap(), poll)
    }

    #[test]
    fn a_replaced_plugin_directory_is_watched_anew() {
        let top = std::env::temp_dir().join(format!("host-watch-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let plugins = top.join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        let (mut w, _poll) = test_watcher(std::slice::from_ref(&plugins));
        // `mv plugins plugins.old; mv plugins.new plugins`: the watch is on plugins.old now.
        std::fs::create_dir(top.join("plugins.new")).unwrap();
        std::fs::rename(&plugins, top.join("plugins.old")).unwrap();
        std::fs::rename(top.join("plugins.new"), &plugins).unwrap();
        assert_eq!(w.appeared_dirs(Instant::now() + RECHECK), vec![plugins.clone()]);
        std::fs::write(plugins.join("libx.so"), b"new").unwrap();
        assert!(wait_written(&mut w, &plugins.join("libx.so")), "a file in the new directory was not reported");
        // Removed: watched again once it reappears.
        std::fs::remove_dir_all(&plugins).unwrap();
        assert!(w.appeared_dirs(Instant::now() + RECHECK * 2).is_empty());
        assert_eq!(w.directories().1, std::slice::from_ref(&plugins));
        std::fs::create_dir(&plugins).unwrap();
        assert_eq!(w.appeared_dirs(Instant::now() + RECHECK * 3), vec![plugins.clone()]);
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn a_symlinked_plugins_target_outside_is_followed() {
        let top = std::env::temp_dir().join(format!("host-watch-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let (plugins, build) = (top.join("plugins"), top.join("build"));
        std::fs::create_dir_all(&plugins).unwrap();
        std::fs::create_dir_all(&build).unwrap();
        std::fs::write(build.join("libx.so"), b"v1").unwrap();
        std::os::unix::fs::symlink(build.join("libx.so"), plugins.join("libx.so")).unwrap();
        let (mut w, _poll) = test_watcher(std::slice::from_ref(&plugins));
        std::fs::write(build.join("libx.so"), b"v2").unwrap();
        assert!(
            wait_written(&mut w, &plugins.join("libx.so")),
            "a change of the target was not reported as the link's"
        );
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn only_so_files_matter() {
        assert!(is_plugin_file(Path::new("/a/libhttp.so")));
        assert!(!is_plugin_file(Path::new("/a/libhttp.so.tmp")));
        assert!(!is_plugin_file(Path::new("/a/notes.txt")));
    }
}
