//! systemd's `Type=notify` protocol (through the `sd-notify` crate): `READY=1` once every first
//! worker is ready, `RELOADING=1` with `MONOTONIC_USEC` when a reload begins and `READY=1` when it
//! is over, `STOPPING=1`, and a one-line `STATUS=`. Nothing happens unless `NOTIFY_SOCKET` is set.

use super::supervisor::Phase;

/// What was last told to the service manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    Nothing,
    Ready,
    Reloading,
    Stopping,
}

pub struct Notifier {
    enabled: bool,
    told: Told,
}

impl Notifier {
    pub fn from_env() -> Self {
        Notifier { enabled: std::env::var_os("NOTIFY_SOCKET").is_some(), told: Told::Nothing }
    }

    /// Tells the service manager what changed since the last call; `status` is called only when
    /// something is sent.
    pub fn update(&mut self, phase: Phase, reload_idle: bool, status: impl FnOnce() -> String) {
        if !self.enabled {
            return;
        }
        let now = match (phase, reload_idle) {
            (Phase::Starting, _) => Told::Nothing,
            (Phase::Stopping, _) => Told::Stopping,
            (Phase::Running, true) => Told::Ready,
            (Phase::Running, false) => Told::Reloading,
        };
        if now == self.told || now == Told::Nothing {
            return;
        }
        self.told = now;
        let status = status();
        let result = match now {
            Told::Ready => sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]),
            Told::Reloading => match sd_notify::NotifyState::monotonic_usec_now() {
                Ok(usec) => sd_notify::notify(&[sd_notify::NotifyState::Reloading, usec]),
                Err(e) => Err(e),
            },
            Told::Stopping => sd_notify::notify(&[sd_notify::NotifyState::Stopping]),
            Told::Nothing => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!("could not notify systemd: {e}");
        }
    }
}
