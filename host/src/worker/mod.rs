//! A worker process: loads its plugin, then runs one mio event loop until the master tells it to
//! stop (or goes away). Started by the master as `host worker` with the listening socket (TCP,
//! Unix or UDP: `listener.rs`) at fd 3,
//! its channel to the master at fd 4 (see `ctl`), the plugin snapshot (a sealed memfd) at fd 5 and
//! its watch page (a memfd the master maps too, see `ctl::watch`) at fd 6; it makes all four
//! close-on-exec at once, and closes the snapshot once the plugin is loaded.

mod access_log;
#[cfg(test)]
mod conn_tests;
mod core;
mod datagram;
mod dispatch;
mod event_loop;
#[cfg(test)]
mod fake_socket;
mod listener;
mod mailbox;
mod outbound;
mod phase;
mod plugin_log;
mod tasks;
mod timers;
#[cfg(test)]
mod tls_move_tests;
mod topic_seam;
mod topics;
mod transport;
mod uring;

pub(crate) use self::core::Snapshot;
pub(crate) use self::transport::SocketKind;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::Duration;

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::RString;
use abi_stable::std_types::{RResult, RStr};
use anyhow::Context as _;
use plugin_api::abi::{LogLevel, RawPluginBox, RawWorkerInfo, WorkerEnv, WorkerEnvRef};

use crate::config::WorkerSpec;
use crate::ctl::{ToMaster, ToWorker, WorkerChannel, PROTOCOL};
use crate::{plugin, sys};

/// How long a closed connection keeps reading and discarding what the client still sends.
const LINGER_MS: u64 = 2000;
/// How long a TLS handshake may take (at most the message timeout, when that is shorter).
const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// How long the worker waits for the master's hello (queued before the worker was started).
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a worker that cannot start tries to tell the master why.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

/// Entry point of `host worker`.
pub fn run() -> anyhow::Result<()> {
    let [listener, control, snapshot] = sys::take_inherited().context("could not take the inherited descriptors")?;
    // Without it (a worker started by an older master) the worker runs unwatched.
    let watch = sys::take_inherited_range(sys::FIRST_INHERITED_FD + 3, 1)
        .ok()
        .and_then(|fds| fds.into_iter().next())
        .and_then(|fd| sys::WatchPage::map(fd.as_fd()).map_err(|e| tracing::warn!("no watch page: {e}")).ok());
    let listener = sys::expect_socket(listener, "the listening socket")?;
    let control = StdUnixStream::from(sys::expect_socket(control, "the control socket")?);
    control.set_nonblocking(true)?;
    let mut channel = WorkerChannel::new(control.try_clone()?);
    let spec = handshake(&mut channel, &control, HELLO_TIMEOUT).map_err(anyhow::Error::msg)?;
    // Before anything is served: the access log the master sends right after the hello.
    let access_log = match spec.access_log {
        true => Some(receive_access_log(&mut channel, HELLO_TIMEOUT).map_err(anyhow::Error::msg)?),
        false => None,
    };

    let span = tracing::info_span!("worker", service = %spec.service, slot = spec.slot, pid = std::process::id());
    let _entered = span.enter();
    if let Err(e) = sys::switch_identity(spec.user.as_deref(), spec.group.as_deref()) {
        let msg = format!("could not switch user/group: {e}");
        tracing::error!("{msg}");
        tell_master(&control, msg);
        std::process::exit(2);
    }
    sys::set_thread_name(&format!("host:{}#{}", spec.service, spec.slot));

    match event_loop::Worker::start(listener, channel, snapshot, &spec, access_log, watch) {
        Ok(mut worker) => {
            // What the start-up allocated and freed (the spec, the plugin's loading, the TLS
            // configuration's parsing) goes back to the system instead of staying resident, and
            // so do the pages of code and read-only data only the start-up used, and the stack
            // below this frame (docs/architecture.md, "A worker's memory").
            match sys::release_idle_pages() {
                Ok(released) => tracing::debug!(?released, "idle pages released"),
                Err(e) => tracing::debug!("could not release idle pages: {e}"),
            }
            sys::trim_heap();
            let exit = worker.run_loop()?;
            worker.shut_down();
            tracing::info!(?exit, timers = worker.timers(), "worker exits");
            Ok(())
        }
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!("worker could not start: {msg}");
            tell_master(&control, msg);
            std::process::exit(2);
        }
    }
}

/// Reads the master's hello (waiting up to `timeout`) and answers with the worker's. A master of
/// another protocol version (or one that sends no hello) is refused: the worker tells it why on
/// `control` and fails.
fn handshake(
    channel: &mut WorkerChannel<StdUnixStream>,
    control: &StdUnixStream,
    timeout: Duration,
) -> Result<WorkerSpec, String> {
    let refusal = match channel.recv_timeout(timeout) {
        Ok((ToWorker::Hello { spec, .. }, _)) => {
            let answered =
                channel.send(&ToMaster::Hello { protocol: PROTOCOL }).and_then(|()| channel.flush_timeout(timeout));
            return answered.map(|()| *spec).map_err(|e| format!("could not answer the master's hello: {e}"));
        }
        Ok((other, _)) => format!("the master sent {other:?} before its hello"),
        Err(e) => format!("refused the master's hello: {e}"),
    };
    tell_master(control, refusal.clone());
    Err(refusal)
}

/// Waits for the access log descriptor the master sends right after its hello (`Logs` with id 0).
fn receive_access_log(channel: &mut WorkerChannel<StdUnixStream>, timeout: Duration) -> Result<std::fs::File, String> {
    match channel.recv_timeout(timeout) {
        Ok((ToWorker::Logs { id: 0, access_log: true, .. }, fds)) => match fds.into_iter().next() {
            Some(fd) => Ok(std::fs::File::from(fd)),
            None => Err("the master sent no access log descriptor".into()),
        },
        Ok((other, _)) => Err(format!("the master sent {other:?} instead of the access log")),
        Err(e) => Err(format!("did not get the access log from the master: {e}")),
    }
}

/// Sends the master an error before exiting (best effort: the master may be gone), on a channel
/// of its own: the worker's is dropped or holds nothing unsent (its hello was flushed).
fn tell_master(control: &StdUnixStream, msg: String) {
    let Ok(stream) = control.try_clone() else { return };
    let mut channel = WorkerChannel::new(stream);
    if channel.send(&ToMaster::Error(msg)).is_ok() {
        let _ = channel.flush_timeout(FAREWELL_TIMEOUT);
    }
}

/// Loads the plugin from its snapshot (dlopen takes a path: `/proc/self/fd/5`), then closes the
/// snapshot: the mapping keeps the memfd alive. Errors name `source`, the user's file.
fn load_snapshot(snapshot: OwnedFd, source: &std::path::Path) -> anyhow::Result<plugin::Loaded> {
    let path = sys::proc_fd_path(snapshot.as_fd());
    let loaded = plugin::load(&path).map_err(|e| {
        anyhow::anyhow!(e.to_string().replace(&path.display().to_string(), &source.display().to_string()))
    });
    drop(snapshot);
    loaded
}

/// Builds the worker's plugin instance: through `new_v2` (a growable [`WorkerEnv`]) when the
/// plugin has it, else through `new`; a plugin built against an older plugin-api is wrapped so that
/// the worker sees today's `RawPlugin`.
fn new_instance(loaded: &plugin::Loaded, spec: &WorkerSpec) -> RResult<RawPluginBox, RString> {
    let config = RStr::from_str(&spec.plugin_config);
    let info = RawWorkerInfo {
        service: RStr::from_str(&spec.service),
        slot: spec.slot,
        pid: std::process::id(),
        max_package_size: spec.limits.max_package_size as u64,
        max_send_buffer: spec.limits.max_send_buffer as u64,
        max_log_level: max_log_level(),
        log: plugin_log,
    };
    loaded.new_instance(config, &info, &|| worker_env(spec, &info))
}

/// The [`WorkerEnv`] a plugin's `new_v2` gets. Built once per worker process and never freed:
/// `WorkerEnvRef` is `'static` (a plugin may keep it).
fn worker_env(spec: &WorkerSpec, info: &RawWorkerInfo<'_>) -> WorkerEnvRef {
    let service: &'static str = Box::leak(spec.service.clone().into_boxed_str());
    let env = WorkerEnv {
        service: RStr::from_str(service),
        slot: info.slot,
        pid: info.pid,
        max_package_size: info.max_package_size,
        max_send_buffer: info.max_send_buffer,
        max_log_level: info.max_log_level,
        log: plugin_log,
        worker_count: spec.worker_count,
    };
    env.leak_into_prefix()
}

fn max_log_level() -> LogLevel {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::TRACE => LogLevel::Trace,
        LevelFilter::DEBUG => LogLevel::Debug,
        LevelFilter::INFO => LogLevel::Info,
        LevelFilter::WARN => LogLevel::Warn,
        _ => LogLevel::Error,
    }
}

/// Where a plugin's log records land: the host's subscriber, with the plugin's target as a field.
extern "C" fn plugin_log(level: LogLevel, target: RStr<'_>, message: RStr<'_>) {
    let (t, m) = (target.as_str(), message.as_str());
    // Under the plugin's own target (filterable like the host's); `plugin` past the limit.
    if plugin_log::log(level, t, m) {
        return;
    }
    match level {
        LogLevel::Error => tracing::error!(target: "plugin", plugin_target = t, "{m}"),
        LogLevel::Warn => tracing::warn!(target: "plugin", plugin_target = t, "{m}"),
        LogLevel::Info => tracing::info!(target: "plugin", plugin_target = t, "{m}"),
        LogLevel::Debug => tracing::debug!(target: "plugin", plugin_target = t, "{m}"),
        LogLevel::Trace => tracing::trace!(target: "plugin", plugin_target = t, "{m}"),
    }
}

#[cfg(test)]
mod tests {
    // Issue 20 item 13: a worker growing fast reports between heartbeats; a steady one does not.
    #[test]
    fn memory_growth_is_reported_between_heartbeats_only_when_it_is_large() {
        use super::event_loop::grew_to_report;
        const MIB: u64 = 1 << 20;
        assert!(!grew_to_report(50 * MIB, 52 * MIB), "a little growth waits for the heartbeat");
        assert!(grew_to_report(50 * MIB, 58 * MIB), "8 MiB more is reported at once");
        assert!(!grew_to_report(400 * MIB, 440 * MIB), "an eighth of a large worker");
        assert!(grew_to_report(400 * MIB, 450 * MIB));
        assert!(grew_to_report(0, 8 * MIB));
    }

    #[test]
    fn resident_memory_is_read_from_statm() {
        use super::event_loop::{resident_bytes, statm_resident_pages};
        assert_eq!(statm_resident_pages(b"5853 1234 567 221 0 876 0\n"), 1234);
        assert_eq!(statm_resident_pages(b"18446744073709551615 18446744073709551615 1 1 0 1 0\n"), u64::MAX);
        assert_eq!(statm_resident_pages(b"5853"), 0, "a short read");
        assert_eq!(statm_resident_pages(b"\xff 12"), 0, "not text");
        assert_eq!(statm_resident_pages(b""), 0);
        // This test process has some memory resident, and not more than a few GiB.
        let rss = resident_bytes();
        assert!(rss > 1 << 20 && rss < 16 << 30, "{rss}");
    }

    use super::*;
    use crate::config::Limits;
    use crate::ctl::MasterChannel;

    fn pair() -> (MasterChannel<StdUnixStream>, WorkerChannel<StdUnixStream>, StdUnixStream) {
        let (a, b) = StdUnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let control = b.try_clone().unwrap();
        (MasterChannel::new(a), WorkerChannel::new(b), control)
    }

    fn spec() -> WorkerSpec {
        WorkerSpec {
            service: "web".into(),
            slot: 1,
            plugin_path: "/tmp/libtext.so".into(),
            plugin_config: String::new(),
            limits: Limits::default(),
            worker_count: 2,
            user: None,
            group: None,
            drain_timeout_ms: 100,
            heartbeat_ms: 1000,
            tls: None,
            access_log: false,
            cluster: None,
            io: Default::default(),
            await_handover: false,
            handover_batches: true,
        }
    }

    #[test]
    fn the_worker_answers_a_hello_of_its_version() {
        let (mut master, mut worker, control) = pair();
        master.send(&ToWorker::Hello { protocol: PROTOCOL, spec: Box::new(spec()) }).unwrap();
        master.send(&ToWorker::Stop).unwrap();
        assert_eq!(handshake(&mut worker, &control, Duration::from_secs(5)), Ok(spec()));
        assert_eq!(master.recv_timeout(Duration::from_secs(5)).unwrap().0, ToMaster::Hello { protocol: PROTOCOL });
        // What came after the hello waits for the worker's loop.
        assert_eq!(worker.read(), vec![ToWorker::Stop]);
    }

    /// A master of the next protocol whose hello has a shape this worker does not know.
    #[derive(serde::Serialize)]
    enum NextHello {
        Hello { protocol: u32, spec: (String, Vec<u64>) },
    }

    #[test]
    fn the_worker_refuses_a_master_of_another_version_and_says_why() {
        let (master, mut worker, control) = pair();
        let payload =
            postcard::to_stdvec(&NextHello::Hello { protocol: PROTOCOL + 1, spec: ("x".into(), vec![1]) }).unwrap();
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        frame.push(0);
        frame.extend_from_slice(&payload);
        std::io::Write::write_all(&mut &master.stream, &frame).unwrap();
        let err = handshake(&mut worker, &control, Duration::from_secs(5)).unwrap_err();
        let expected = format!(
            "refused the master's hello: protocol mismatch: the peer speaks version {}, this side {PROTOCOL}",
            PROTOCOL + 1
        );
        assert_eq!(err, expected);
        let mut master = master;
        assert_eq!(master.recv_timeout(Duration::from_secs(5)).unwrap().0, ToMaster::Error(expected));
    }

    #[test]
    fn the_worker_does_not_wait_for_a_hello_forever() {
        let (_master, mut worker, control) = pair();
        let err = handshake(&mut worker, &control, Duration::from_millis(50)).unwrap_err();
        assert!(err.contains("nothing from the peer"), "{err}");
    }
}
