//! The harness of host's integration tests (`tests/tests/integration/`): build the workspace
//! once, run the real `host` binary in its own process group with its log captured, talk to it
//! over TCP, and clean up whatever happens.
//!
//! - [`build`]: `cargo build --workspace` once per test process, so the host binary and every
//!   plugin (fixtures included) are fresh under both `cargo test` and `cargo nextest run`.
//! - [`TempDir`]: a unique directory per test, removed on drop.
//! - [`Host`]: the master process; readiness, port, worker pids, signals, bounded waits; on drop
//!   it SIGKILLs its process group and, if the test failed, prints the captured log.
//! - [`Client`]: a raw HTTP/1.1 (and line) client over `std::net::TcpStream`.
//!
//! Every wait polls up to a deadline: a broken host fails a test within seconds, never hangs it.

pub mod broker;
mod build;
pub mod cargo_plugin;
mod client;
pub mod copied_host;
mod host;
pub mod load;
pub mod plugin_dir;
mod procfs;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use crate::build::{
    abi_0_1_1_plugin, abi_0_1_2_plugin, abi_0_1_3_plugin, build, fixtures_dir, host_bin, host_worker_bin,
    old_abi_plugin, plugin_file, target_dir,
};
pub use crate::client::{get, post, post_chunked, Client, Response};
pub use crate::host::{default_pid_file, host_command_in, run_host, run_host_in, wait_output, Host, Log, Output};
pub use crate::procfs::{children, cmdline, group_pids, is_alive};
pub use nix::sys::signal::Signal;

/// Sends `sig` to one process, by pid.
pub fn signal_pid(pid: i32, sig: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
        .unwrap_or_else(|e| panic!("could not send {sig} to {pid}: {e}"));
}

/// How long a host may take to report ready: a debug build, tests running in parallel, a plugin
/// probe (a child process) per service, on a machine that may be busy. A bound, not a measure:
/// a healthy start is well under a second.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client waits for bytes the server should send.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Asserts that `$haystack` contains `$needle`, printing both when it does not.
#[macro_export]
macro_rules! assert_contains {
    ($haystack:expr, $needle:expr $(,)?) => {
        $crate::assert_contains!($haystack, $needle, "")
    };
    ($haystack:expr, $needle:expr, $($msg:tt)+) => {{
        let haystack: &str = &$haystack;
        let needle: &str = &$needle;
        if !haystack.contains(needle) {
            panic!(
                "\n\nexpected to contain:\n{needle}\n\ngot:\n{haystack}\n\n{}\n",
                format!($($msg)+)
            );
        }
    }};
}

/// Asserts that `$haystack` does not contain `$needle`, printing both when it does.
#[macro_export]
macro_rules! assert_not_contains {
    ($haystack:expr, $needle:expr $(,)?) => {
        $crate::assert_not_contains!($haystack, $needle, "")
    };
    ($haystack:expr, $needle:expr, $($msg:tt)+) => {{
        let haystack: &str = &$haystack;
        let needle: &str = &$needle;
        if haystack.contains(needle) {
            panic!(
                "\n\nexpected NOT to contain:\n{needle}\n\ngot:\n{haystack}\n\n{}\n",
                format!($($msg)+)
            );
        }
    }};
}

/// Polls `f` every few milliseconds until it returns `Some`, or `timeout` passes.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A directory of its own for one test, under the system's temp dir; removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "host-tests-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("could not create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Writes `contents` to `rel` (parent directories created) and returns the full path.
    pub fn write(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("could not write {}: {e}", path.display()));
        path
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `len` bytes that look random (no ELF magic), from a fixed seed (xorshift).
pub fn garbage(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
