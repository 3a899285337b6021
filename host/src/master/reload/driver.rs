//! Carrying out the reload pipeline's decisions ([`super::state`]) with real workers: what
//! triggers a reload (signals, commands, the watcher), checking files, starting replacements,
//! promoting them, reporting the outcome.

use std::path::Path;
use std::rc::Rc;
use std::time::SystemTime;

use super::state::{Effect, Finished, Outcome, Request, ServiceView, SlotFailure, Trigger};
use crate::ctl::ToWorker;
use crate::master::prepare::{Done, Job, Purpose};
use crate::master::process::Processes;
use crate::master::slots::{ClientId, Replace, ServiceId, SlotKey, WorkerId};
use crate::master::snapshot::Snapshot;
use crate::master::supervisor::{LoadedTls, Output, Phase, ReloadRecord, Supervisor};
use crate::status::Answer;

impl<P: Processes> Supervisor<P> {
    /// What the reload pipeline needs to know of the services now.
    pub(in crate::master) fn views(&self) -> Vec<ServiceView<Rc<Snapshot>>> {
        self.services
            .iter()
            .enumerate()
            .map(|(i, state)| {
                let slots = self.slots.service_slots(ServiceId(i));
                ServiceView {
                    name: state.service.name.clone(),
                    reloadable: state.reloadable,
                    waiting: state.waiting,
                    current: self.slots.service_slots(ServiceId(i)).next().map(|s| s.snapshot.clone()),
                    slots: slots.map(|s| (s.key, s.snapshot.hash)).collect(),
                    down: self
                        .slots
                        .service_slots(ServiceId(i))
                        .filter(|s| !self.slots.is_live(s))
                        .map(|s| s.key)
                        .collect(),
                }
            })
            .collect()
    }

    /// A reload of every service, asked for by a signal or a command (`waiter` hears how it ends).
    pub fn request_reload(&mut self, graceful: bool, trigger: Trigger, waiter: Option<ClientId>) {
        // Services that are not reloadable only hear their plugin's reload hook.
        let hooks: Vec<WorkerId> = self
            .slots
            .slots()
            .filter(|s| !self.services[s.key.service.0].reloadable)
            .filter_map(|s| s.serving())
            .collect();
        for id in hooks {
            self.out.push(Output::Send(id, ToWorker::ReloadHook));
        }
        let services = (0..self.services.len()).map(ServiceId).collect();
        let request = Request::new(graceful, trigger, services, false).with_waiter(waiter);
        self.submit(request);
    }

    pub(in crate::master) fn submit(&mut self, request: Request) {
        if self.phase != Phase::Running {
            let message = "reload refused: the master is still starting or is stopping".to_string();
            tracing::warn!(reason = %request.reason(), "{message}");
            for &w in &request.waiters {
                self.after_handovers.retain(|&c| c != w);
                self.out.push(Output::Answer(w, Answer::Error { message: message.clone() }));
            }
            return;
        }
        if self.reloader.is_idle() {
            self.reload_started = self.procs.now();
        } else if self.reloader.is_checking() {
            tracing::info!(reason = %request.reason(), "reload merged into the check under way (checking the newest files)");
        } else {
            tracing::info!(reason = %request.reason(), "reload queued: takes effect at the next step");
        }
        let fx = self.reloader.request(request, &self.views());
        self.apply(fx);
    }

    /// Whether `path` is a TLS certificate or key file of a service.
    pub fn is_tls_file(&self, path: &Path) -> bool {
        self.services.iter().filter_map(|s| s.service.tls.as_ref()).any(|t| t.cert == path || t.key == path)
    }

    /// The watcher reports a service's certificate or key written: the pair is checked again;
    /// a good new pair replaces the service's workers (through the reload chain), a broken one
    /// is refused and logged, and the workers keep serving the last good one.
    pub fn tls_file_changed(&mut self, path: &Path) {
        for i in 0..self.services.len() {
            let state = &self.services[i];
            let Some(files) = state.service.tls.as_ref().filter(|t| t.cert == path || t.key == path) else {
                continue;
            };
            let name = state.service.name.clone();
            let now = SystemTime::now();
            let loaded = match crate::tls::load(files, now) {
                Ok((spec, info)) => LoadedTls { spec, info },
                Err(e) => {
                    tracing::error!(service = %name, "TLS certificate change refused: {e}; the workers keep the last good one");
                    // `status` shows it until a good change.
                    if let Some(tls) = self.services[i].tls.as_mut() {
                        tls.info.refused = Some(e.to_string());
                    }
                    continue;
                }
            };
            if state.tls.as_ref().is_some_and(|t| t.spec == loaded.spec) {
                if let Some(tls) = self.services[i].tls.as_mut() {
                    tls.info.refused = None;
                }
                continue;
            }
            crate::tls::warn_if_expiring(&name, &loaded.info, now);
            tracing::info!(service = %name, subject = %loaded.info.subject, expires = %loaded.info.not_after_text, "TLS certificate changed; replacing the workers");
            self.services[i].tls = Some(loaded);
            if self.services[i].waiting {
                continue;
            }
            // Every slot gets new workers (they read the pair from their spec).
            self.submit(Request::new(true, Trigger::File(path.to_path_buf()), vec![ServiceId(i)], false));
        }
    }

    /// The watcher reports `path` written: reload the services it is (now) the plugin of.
    pub fn plugin_file_changed(&mut self, path: &Path) {
        self.activate_waiting(path);
        let mut services = Vec::new();
        for i in 0..self.services.len() {
            let state = &self.services[i];
            if state.waiting {
                continue;
            }
            let source = match &state.expected_name {
                // Named: the lookup decides (a new file in an earlier directory takes over).
                Some(name) => match self.procs.find_plugin(name, &self.plugin_dirs) {
                    Some(found) => found,
                    None => continue,
                },
                None => state.source.clone(),
            };
            if source != path {
                continue;
            }
            let state = &mut self.services[i];
            if source != state.source {
                tracing::info!(service = %state.service.name, from = %state.source.display(), to = %source.display(), "plugin file moves");
                state.source = source;
            }
            if !state.reloadable {
                tracing::info!(service = %state.service.name, path = %path.display(), "plugin file changed; the service is not reloadable, its workers keep running");
                continue;
            }
            services.push(ServiceId(i));
        }
        if services.is_empty() {
            tracing::debug!(path = %path.display(), "changed file is no reloadable service's plugin");
            return;
        }
        self.submit(Request::new(true, Trigger::File(path.to_path_buf()), services, true));
    }

    /// A plugin file is gone: its workers keep running the snapshot they loaded.
    pub fn plugin_file_removed(&self, path: &Path) {
        for state in self.services.iter().filter(|s| !s.waiting && s.source == path) {
            tracing::warn!(service = %state.service.name, path = %path.display(), "plugin file removed; the workers keep running the copy they loaded");
        }
    }

    /// Has `path` checked for the services waiting for it (they start once it passes).
    pub(in crate::master) fn activate_waiting(&mut self, path: &Path) {
        for i in 0..self.services.len() {
            let state = &self.services[i];
            let Some(name) = state.expected_name.clone().filter(|_| state.waiting) else { continue };
            if self.procs.find_plugin(&name, &self.plugin_dirs).as_deref() == Some(path) {
                let job = Job {
                    purpose: Purpose::Activate,
                    service: ServiceId(i),
                    source: path.to_path_buf(),
                    expected_name: Some(name),
                    user: state.user.clone(),
                    group: state.group.clone(),
                };
                self.out.push(Output::Check(job));
            }
        }
    }

    /// A plugin file was checked.
    pub fn checked(&mut self, done: Done) {
        match done.purpose {
            Purpose::Activate => self.activate(done),
            Purpose::Reload(check) => {
                let result = done.result.map(Rc::new);
                let fx = self.reloader.checked(check, done.service, result, &self.views());
                self.apply(fx);
            }
        }
    }

    pub(in crate::master) fn activate(&mut self, done: Done) {
        let i = done.service;
        if !self.services[i.0].waiting || self.phase == Phase::Stopping {
            return;
        }
        let state = &mut self.services[i.0];
        match done.result {
            Ok(snap) => {
                let snap = Rc::new(snap);
                tracing::info!(service = %state.service.name, plugin = %snap.name, hash = %snap.short_hash(), "plugin appeared; starting the service");
                state.waiting = false;
                state.source = done.source;
                let count = state.service.count;
                for key in self.slots.add_service(i, count, &snap) {
                    self.spawn_serving(key);
                }
            }
            Err(e) => {
                tracing::error!(service = %state.service.name, "plugin file refused; the service keeps waiting: {e}")
            }
        }
    }

    pub(in crate::master) fn apply(&mut self, effects: Vec<Effect<Rc<Snapshot>>>) {
        for effect in effects {
            match effect {
                Effect::Check { check, service } => {
                    let state = &self.services[service.0];
                    let job = Job {
                        purpose: Purpose::Reload(check),
                        service,
                        source: state.source.clone(),
                        expected_name: state.expected_name.clone(),
                        user: state.user.clone(),
                        group: state.group.clone(),
                    };
                    self.out.push(Output::Check(job));
                }
                Effect::Unchanged { service, hash } => {
                    let name = self.service_name(service);
                    tracing::info!(service = %name, hash = %format!("{hash:016x}")[..12], "plugin file unchanged; not reloaded");
                }
                Effect::Began { reason, graceful, slots } => {
                    tracing::info!(reason = %reason, graceful, slots, "reload starting")
                }
                Effect::Preempted { reason } => {
                    tracing::info!(reason = %reason, "a newer reload takes over at this step; checking the files again")
                }
                Effect::Start { slot, snapshot } => self.start_step(slot, &snapshot),
                Effect::Promote { slot, graceful } => self.promote(slot, graceful, "reload step"),
                Effect::Finished(finished) => self.reload_finished(finished),
            }
        }
    }

    /// A chain step: the replacement of `key` on `snap` (a recycle under way there gives way).
    fn start_step(&mut self, key: SlotKey, snap: &Rc<Snapshot>) {
        self.step_started = self.procs.now();
        self.cancel_recycle(key);
        let why = if self.reloader.upgrading() { Replace::Upgrade } else { Replace::Reload };
        if let Err(e) = self.start_replacement(key, snap, why) {
            tracing::error!(service = %self.service_name(key.service), slot = key.slot, "could not start a replacement: {e}");
            self.replacement_failed(key, &e);
        }
    }

    /// The chain's replacement of `key` failed: the chain goes on without it.
    pub(in crate::master) fn replacement_failed(&mut self, key: SlotKey, why: &str) {
        let fx = self.reloader.failed(key, why, &self.views());
        self.apply(fx);
    }

    /// Per service, in service order: how many of its slots `request` moved, and its failures.
    fn per_service<'a>(
        &self,
        request: &Request,
        failures: &'a [SlotFailure],
    ) -> Vec<(ServiceId, usize, Vec<&'a SlotFailure>)> {
        let mut moved = request.done.clone();
        moved.sort();
        moved.dedup();
        (0..self.services.len())
            .map(ServiceId)
            .map(|s| {
                let n = moved.iter().filter(|k| k.service == s).count();
                (s, n, failures.iter().filter(|f| f.slot.service == s).collect::<Vec<_>>())
            })
            .filter(|(_, n, f)| *n > 0 || !f.is_empty())
            .collect()
    }

    /// "service NAME is down: #0 not replaced (why)", one per service in `down`.
    fn down_notes(&self, down: &[&SlotFailure]) -> Vec<String> {
        let mut notes = Vec::new();
        for i in 0..self.services.len() {
            let slots: Vec<String> = down
                .iter()
                .filter(|f| f.slot.service.0 == i)
                .map(|f| format!("{} not replaced ({})", f.slot, f.reason))
                .collect();
            if !slots.is_empty() {
                notes.push(format!("service {} is down: {}", self.services[i].service.name, slots.join(", ")));
            }
        }
        notes
    }

    /// The replacement of `key` is ready: it becomes the slot's worker, the old one goes. `why`
    /// names the step in the log (a reload step, a recycle).
    pub(in crate::master) fn promote(&mut self, key: SlotKey, graceful: bool, why: &str) {
        let old = match self.slots.promote(key) {
            Ok(old) => old,
            Err(e) => return tracing::error!(slot = key.slot, "internal: could not promote: {e}"),
        };
        let new = self.slots.slot(key).and_then(|s| s.serving()).and_then(|id| self.slots.worker(id));
        let (new_pid, new_hash) = new.map_or((0, String::new()), |w| (w.pid.as_raw(), w.snapshot.short_hash()));
        let old_w = old.and_then(|id| self.slots.worker(id));
        let (old_pid, old_hash) = old_w.map_or((0, "-".to_string()), |w| (w.pid.as_raw(), w.snapshot.short_hash()));
        let started = new.map_or(self.step_started, |w| w.started);
        let step_ms = self.procs.now().saturating_duration_since(started).as_millis() as u64;
        tracing::info!(service = %self.service_name(key.service), slot = key.slot, old_pid, new_pid, old_hash = %old_hash, new_hash = %new_hash, step_ms, "{why}: slot replaced");
        let new = self.slots.slot(key).and_then(|s| s.serving());
        self.retire_for(old, new, graceful);
    }

    pub(in crate::master) fn reload_finished(&mut self, Finished { request, outcome }: Finished) {
        let took = self.procs.now().saturating_duration_since(self.reload_started);
        let ms = took.as_millis() as u64;
        let kind = match &outcome {
            Outcome::Done { .. } => "done",
            Outcome::Unchanged { .. } => "unchanged",
            Outcome::Refused { .. } => "refused",
            Outcome::Aborted { .. } => "aborted",
            Outcome::Abandoned => "abandoned",
        };
        self.out.push(Output::ReloadDone { outcome: kind, duration: took });
        let reason = request.reason();
        let notes =
            |notes: &[String]| if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) };
        let (summary, ok) = match &outcome {
            Outcome::Done { replaced, notes: n, down } => {
                let mut n = n.clone();
                n.extend(self.down_notes(&down.iter().collect::<Vec<_>>()));
                tracing::info!(replaced, total_ms = ms, reason = %reason, "reload done{}", notes(&n));
                (format!("done: {replaced} workers replaced in {ms} ms{}", notes(&n)), true)
            }
            Outcome::Unchanged { notes: n } => {
                tracing::info!(reason = %reason, "reload: nothing to replace{}", notes(n));
                self.last_unchanged = Some(ReloadRecord {
                    at: SystemTime::now(),
                    trigger: reason,
                    summary: format!("unchanged, not reloaded{}", notes(n)),
                });
                let message = format!("reload: nothing to replace{}", notes(n));
                let answer = answer_of(message, n);
                self.answer_reload(&request.waiters, &answer);
                return self.note_next_reload();
            }
            Outcome::Refused { service, reason: why } => {
                let service = self.service_name(*service).to_string();
                tracing::info!(reason = %reason, "reload refused");
                tracing::error!(service = %service, slot = 0, replaced = 0, "reload aborted: {why}; the old workers keep serving");
                (format!("aborted at {service} #0 (0 replaced before): {why}; the old workers keep serving"), false)
            }
            Outcome::Aborted { replaced, failures, notes: n } => {
                // Per service: where it failed and how many of its slots had moved before, or
                // how many moved (the other services).
                let mut parts = Vec::new();
                let mut down = Vec::new();
                let mut others = Vec::new();
                for (service, moved, failed) in self.per_service(&request, failures) {
                    let name = self.service_name(service).to_string();
                    match failed.iter().find(|f| !f.down) {
                        Some(f) => {
                            let (slot, why) = (f.slot.slot, &f.reason);
                            tracing::error!(service = %name, slot, replaced = moved, "reload aborted: {why}; the old workers keep serving");
                            parts.push(format!(
                                "aborted at {name} #{slot} ({moved} replaced before): {why}; the old workers keep serving"
                            ));
                        }
                        None if failed.is_empty() => others.push(format!("{name}: {moved} replaced")),
                        None => down.extend(failed),
                    }
                }
                let mut n = n.clone();
                n.extend(self.down_notes(&down));
                tracing::info!(replaced, reason = %reason, "reload ended with failures{}", notes(&n));
                others.extend(n);
                let rest = if others.is_empty() { String::new() } else { format!("; {}", others.join("; ")) };
                (format!("{}{rest}", parts.join("; ")), false)
            }
            Outcome::Abandoned => {
                tracing::warn!(reason = %reason, "reload abandoned: the master is stopping");
                ("abandoned: the master is stopping".to_string(), false)
            }
        };
        let message = format!("reload {summary}");
        let answer = match &outcome {
            Outcome::Done { notes: n, .. } => answer_of(message, n),
            _ if ok => Answer::Ok { message, wait_ms: 0 },
            _ => Answer::Error { message },
        };
        self.answer_reload(&request.waiters, &answer);
        self.last_reload = Some(ReloadRecord { at: SystemTime::now(), trigger: reason, summary });
        self.last_unchanged = None;
        self.note_next_reload();
    }

    /// A queued request may have started as this one ended.
    fn note_next_reload(&mut self) {
        if !self.reloader.is_idle() {
            self.reload_started = self.procs.now();
        }
    }
}

/// The answer to a reload that ran: `Refused` when files it was asked to load were refused on the
/// way (`notes`), so that `host reload` can exit non-zero.
fn answer_of(message: String, notes: &[String]) -> Answer {
    if notes.is_empty() {
        Answer::Ok { message, wait_ms: 0 }
    } else {
        Answer::Refused { message }
    }
}
