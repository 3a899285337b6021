//! systemd: the `Type=notify` protocol (through the `sd-notify` crate): `READY=1` once every
//! first worker is ready, `RELOADING=1` with `MONOTONIC_USEC` when a reload begins and `READY=1`
//! when it is over, `STOPPING=1`, and a one-line `STATUS=` (nothing happens unless
//! `NOTIFY_SOCKET` is set); and socket activation: listening sockets handed over with
//! `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES`, which services use instead of binding their own.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd, RawFd};

use super::supervisor::Phase;
use crate::sys;

/// The first descriptor the service manager hands over (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// How many sockets the service manager handed to this very process (0 when none).
pub fn activated_count() -> usize {
    let for_us = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
    if for_us {
        count
    } else {
        0
    }
}

/// The first descriptor that is not a socket handed over by the service manager.
pub fn first_stray_fd() -> RawFd {
    LISTEN_FDS_START + activated_count() as RawFd
}

/// A listening socket the service manager handed over.
pub struct Activated {
    pub fd: OwnedFd,
    pub address: Option<SocketAddr>,
    /// Its `FileDescriptorName=` (LISTEN_FDNAMES), if any.
    pub name: Option<String>,
}

/// Takes the sockets handed over (once; the variables are then removed, so workers and later
/// execs do not see them).
pub fn take_activated() -> std::io::Result<Vec<Activated>> {
    let count = activated_count();
    let names: Vec<String> =
        std::env::var("LISTEN_FDNAMES").map(|n| n.split(':').map(String::from).collect()).unwrap_or_default();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    if count == 0 {
        return Ok(Vec::new());
    }
    let fds = sys::take_inherited_range(LISTEN_FDS_START, count)?;
    Ok(fds
        .into_iter()
        .enumerate()
        .map(|(i, fd)| {
            let address = sys::local_addr(fd.as_fd()).ok();
            let name = names.get(i).filter(|n| !n.is_empty() && *n != "unknown").cloned();
            Activated { fd, address, name }
        })
        .collect())
}

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

    /// A binary upgrade is about to exec: `RELOADING=1` (the new image says `READY=1` once every
    /// worker runs the new binary).
    pub fn upgrading(&mut self) {
        if !self.enabled || self.told == Told::Reloading {
            return;
        }
        self.told = Told::Reloading;
        let result = sd_notify::NotifyState::monotonic_usec_now()
            .and_then(|usec| sd_notify::notify(&[sd_notify::NotifyState::Reloading, usec]));
        if let Err(e) = result {
            tracing::warn!("could not notify systemd: {e}");
        }
    }

    /// The new image took the master over: `MAINPID` (the same pid: the service's main process
    /// did not change) while the reload that follows is under way.
    pub fn adopted(&mut self) {
        if !self.enabled {
            return;
        }
        self.told = Told::Reloading;
        if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::MainPid(std::process::id())]) {
            tracing::warn!("could not notify systemd: {e}");
        }
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
