//! Driving the reload chain (`reload::Chain`) with real processes: checking plugin files,
//! starting replacements, promoting them, retiring the old workers, reporting the outcome.

use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use super::prepare::{Done, Job, Purpose};
use super::reload::{Chain, Outcome, Request, SlotKey, Step};
use super::table::Role;
use super::{Master, Phase, Prep};
use crate::plugin;
use crate::status::Answer;

impl Master {
    /// A reload of every service was asked for (signal, or a command whose client waits).
    pub(super) fn request_reload(&mut self, graceful: bool, reason: &str, waiter: Option<u64>) {
        // Services that are not reloadable only hear their plugin's reload hook.
        for w in &mut self.table.workers {
            if !self.services[w.key.service].reloadable && w.role == Role::Serving {
                let _ = w.control.send(crate::ctl::ToWorker::ReloadHook.encode().as_bytes());
            }
        }
        for id in self.table.workers.iter().map(|w| w.id).collect::<Vec<_>>() {
            self.watch_control_output(id);
        }
        let services = (0..self.services.len()).filter(|&i| self.services[i].reloadable).collect();
        let waiters = waiter.into_iter().collect();
        self.submit_reload(Request { graceful, reason: reason.to_string(), waiters, services, only_changed: false });
    }

    /// The watcher reports `path` written: reload the services it is (now) the plugin of.
    pub(super) fn plugin_file_changed(&mut self, path: &Path) {
        self.start_waiting_services(path);
        let mut services = Vec::new();
        for (i, state) in self.services.iter_mut().enumerate() {
            if state.waiting {
                continue;
            }
            let source = match &state.expected_name {
                // Named: the lookup decides (a new file in an earlier directory takes over).
                Some(name) => match plugin::find(name, &self.plugin_dirs) {
                    Ok(found) => found,
                    Err(_) => continue,
                },
                None => state.source.clone(),
            };
            if source == path {
                if source != state.source {
                    tracing::info!(service = %state.service.name, from = %state.source.display(), to = %source.display(), "plugin file moves");
                    state.source = source;
                }
                services.push(i);
            }
        }
        if services.is_empty() {
            tracing::debug!(path = %path.display(), "changed file is no service's plugin");
            return;
        }
        let reason = format!("{} changed", path.display());
        self.submit_reload(Request { graceful: true, reason, waiters: Vec::new(), services, only_changed: true });
    }

    /// A plugin file is gone: its workers keep running the snapshot they loaded.
    pub(super) fn plugin_file_removed(&mut self, path: &Path) {
        for state in self.services.iter().filter(|s| !s.waiting && s.source == path) {
            tracing::warn!(service = %state.service.name, path = %path.display(), "plugin file removed; the workers keep running the copy they loaded");
        }
    }

    /// Checks `path` for the services that were waiting for it (they start once it passes).
    fn start_waiting_services(&mut self, path: &Path) {
        for (i, state) in self.services.iter().enumerate() {
            let Some(name) = state.expected_name.as_deref().filter(|_| state.waiting) else { continue };
            if plugin::find(name, &self.plugin_dirs).ok().as_deref() == Some(path) {
                let job = Job {
                    purpose: Purpose::Activate,
                    service: i,
                    source: path.to_path_buf(),
                    expected_name: Some(name.into()),
                };
                self.preparer.submit(job);
            }
        }
    }

    /// Takes the files the preparer checked: starts waiting services, goes on with a reload.
    pub(super) fn prepared(&mut self) {
        for done in self.preparer.take() {
            match done.purpose {
                Purpose::Activate => self.activate(done),
                Purpose::Reload(id) if self.prep.as_ref().is_some_and(|p| p.id == id) => {
                    let prep = self.prep.as_mut().expect("checked above");
                    prep.pending.retain(|&s| s != done.service);
                    match done.result {
                        Ok(snap) => prep.ready.push((done.service, snap)),
                        Err(e) => prep.failure = prep.failure.take().or(Some((done.service, e))),
                    }
                    if prep.pending.is_empty() {
                        let prep = self.prep.take().expect("checked above");
                        self.launch_chain(prep);
                    }
                }
                // A reload abandoned (the master is stopping) while its files were checked.
                Purpose::Reload(_) => {}
            }
        }
    }

    fn activate(&mut self, done: Done) {
        let i = done.service;
        let state = &mut self.services[i];
        if !state.waiting || self.phase == Phase::Stopping {
            return;
        }
        match done.result {
            Ok(snap) => {
                let snap = Rc::new(snap);
                tracing::info!(service = %state.service.name, plugin = %snap.name, hash = %snap.short_hash(), "plugin appeared; starting the service");
                state.waiting = false;
                state.source = done.source;
                let slots: Vec<_> = super::service_slots(i, state.service.count, &snap).collect();
                let keys: Vec<SlotKey> = slots.iter().map(|s| s.key).collect();
                self.table.slots.extend(slots);
                for key in keys {
                    self.spawn(key, Role::Serving);
                }
            }
            Err(e) => {
                tracing::error!(service = %state.service.name, "plugin file refused; the service keeps waiting: {e}")
            }
        }
    }

    pub(super) fn submit_reload(&mut self, request: Request) {
        if self.phase != Phase::Running {
            let message = "reload refused: the master is still starting or is stopping".to_string();
            tracing::warn!(reason = %request.reason, "{message}");
            self.answer_all(&request.waiters, &Answer::Error { message });
            return;
        }
        let reason = request.reason.clone();
        match self.reloader.trigger(request) {
            Some(request) => self.start_chain(request),
            None => tracing::info!(reason, "reload queued: a reload is under way"),
        }
    }

    /// Has the requested services' plugin files checked again (off the loop, see `prepare`);
    /// the chain starts in `launch_chain` once they all are.
    pub(super) fn start_chain(&mut self, request: Request) {
        self.chain_started = Instant::now();
        self.prep_seq += 1;
        let id = self.prep_seq;
        for &i in &request.services {
            let state = &self.services[i];
            let job = Job {
                purpose: Purpose::Reload(id),
                service: i,
                source: state.source.clone(),
                expected_name: state.expected_name.clone(),
            };
            self.preparer.submit(job);
        }
        let prep = Prep { id, pending: request.services.clone(), ready: Vec::new(), failure: None };
        // A chain with no slots yet stands for the reload while its files are checked: triggers
        // queue behind it and a stop abandons it.
        self.reloader.chain = Some(Chain::new(Vec::new(), request));
        if prep.pending.is_empty() {
            self.launch_chain(prep);
        } else {
            self.prep = Some(prep);
        }
    }

    /// Every candidate file was checked: abort, skip unchanged services, or run the chain.
    fn launch_chain(&mut self, prep: Prep) {
        let Some(placeholder) = self.reloader.chain.take() else { return };
        let request = placeholder.request;
        if let Some((i, reason)) = prep.failure {
            tracing::info!(reason = %request.reason, "reload refused");
            self.reloader.chain = Some(Chain::new(Vec::new(), request));
            self.apply(Step::Finished(Outcome::Aborted { slot: SlotKey { service: i, slot: 0 }, replaced: 0, reason }));
            return;
        }
        let mut reload = Vec::new();
        for (i, snap) in prep.ready {
            let state = &self.services[i];
            let mut slots = self.table.slots.iter().filter(|s| s.key.service == i);
            if request.only_changed && slots.all(|s| s.snapshot.hash == snap.hash) {
                tracing::info!(service = %state.service.name, hash = %snap.short_hash(), "plugin file unchanged; not reloaded");
                continue;
            }
            self.services[i].candidate = Some(Rc::new(snap));
            reload.push(i);
        }
        if reload.is_empty() && request.only_changed {
            // Nothing changed: no chain, but a queued request may be waiting behind this one.
            if let (_, Some(next)) = self.reloader.finish() {
                self.start_chain(next);
            }
            return;
        }
        tracing::info!(reason = %request.reason, graceful = request.graceful, "reload starting");
        let keys: Vec<SlotKey> =
            self.table.slots.iter().map(|s| s.key).filter(|k| reload.contains(&k.service)).collect();
        let mut chain = Chain::new(keys, request);
        let step = chain.first();
        self.reloader.chain = Some(chain);
        self.apply(step);
    }

    pub(super) fn apply(&mut self, step: Step) {
        match step {
            Step::Start(key) => {
                self.step_started = Instant::now();
                if !self.spawn(key, Role::Replacement) {
                    if let Some(step) =
                        self.reloader.chain.as_mut().and_then(|c| c.failed(key, "could not start a process"))
                    {
                        self.apply(step);
                    }
                }
            }
            Step::Retire(key) => self.promote(key),
            Step::Finished(outcome) => self.finish_chain(outcome),
        }
    }

    /// The replacement of `key` is ready: it becomes the slot's worker, the old one goes.
    pub(super) fn promote(&mut self, key: SlotKey) {
        let graceful = self.reloader.chain.as_ref().is_some_and(|c| c.request.graceful);
        let Some(new) = self.table.workers.iter_mut().find(|w| w.key == key && w.role == Role::Replacement) else {
            return;
        };
        new.role = Role::Serving;
        let (new_id, new_pid, new_snap) = (new.id, new.pid.as_raw(), new.snapshot.clone());
        let old: Vec<(usize, i32, String)> = self
            .table
            .workers
            .iter()
            .filter(|w| w.key == key && w.role == Role::Serving && w.id != new_id)
            .map(|w| (w.id, w.pid.as_raw(), w.snapshot.short_hash()))
            .collect();
        if let Some(slot) = self.table.slot_mut(key) {
            slot.snapshot = new_snap.clone();
            slot.failures = 0;
        }
        let service = self.services[key.service].service.name.clone();
        let old_pids: Vec<i32> = old.iter().map(|o| o.1).collect();
        let old_hash = old.first().map(|o| o.2.clone()).unwrap_or_else(|| "-".into());
        tracing::info!(
            service = %service, slot = key.slot, old_pid = ?old_pids, new_pid, old_hash = %old_hash, new_hash = %new_snap.short_hash(),
            step_ms = self.step_started.elapsed().as_millis() as u64, "reload step: slot replaced"
        );
        for (id, _, _) in old {
            self.retire(id, graceful);
        }
    }

    pub(super) fn finish_chain(&mut self, outcome: Outcome) {
        let ms = self.chain_started.elapsed().as_millis() as u64;
        let (summary, answer) = match &outcome {
            Outcome::Done { replaced } => {
                tracing::info!(replaced, total_ms = ms, "reload done");
                let summary = format!("done: {replaced} workers replaced in {ms} ms");
                (summary.clone(), Answer::Ok { message: format!("reload {summary}"), wait_ms: 0 })
            }
            Outcome::Aborted { slot, replaced, reason } => {
                let service = &self.services[slot.service].service.name;
                tracing::error!(service = %service, slot = slot.slot, replaced, "reload aborted: {reason}; the old workers keep serving");
                let summary = format!("aborted at {service} #{} ({replaced} replaced before): {reason}", slot.slot);
                (summary.clone(), Answer::Error { message: format!("reload {summary}; the old workers keep serving") })
            }
        };
        self.last_reload = Some(summary);
        let waiters = self.reloader.chain.as_ref().map(|c| c.request.waiters.clone()).unwrap_or_default();
        self.answer_all(&waiters, &answer);
        for state in &mut self.services {
            state.candidate = None;
        }
        let (_, next) = self.reloader.finish();
        if let Some(next) = next {
            self.start_chain(next);
        }
    }
}
