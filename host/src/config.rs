//! What a service is and how a worker is configured: plain data, validated here, no syscalls.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::listen::Listen;
use crate::tls::{TlsFiles, TlsSpec};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_MAX_PACKAGE_SIZE: usize = 1024 * 1024;
pub const DEFAULT_MAX_SEND_BUFFER: usize = 1024 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Threads of a worker's task pool at most (started only when tasks need them).
pub const DEFAULT_TASK_THREADS: usize = 4;
/// Jobs waiting for a task thread at most, per worker.
pub const DEFAULT_TASK_QUEUE: usize = 1024;
/// The largest message `Host::publish` takes by default (`topic_max_message`).
pub const DEFAULT_TOPIC_MAX_MESSAGE: usize = 1024 * 1024;
/// The largest `topic_max_message`: what a broker carries (nats-server's `max_payload` tops out
/// at 64 MiB) and what a worker may hold for one message it reassembles from another worker.
pub const MAX_TOPIC_MAX_MESSAGE: u64 = 64 * 1024 * 1024;
/// The longest topic name by default (`topic_max_len`).
pub const DEFAULT_TOPIC_MAX_LEN: usize = 256;
/// The longest `topic_max_len` (a topic becomes a Redis channel or a NATS subject).
pub const MAX_TOPIC_MAX_LEN: u64 = 1024;
/// The most topics one connection may subscribe to by default (`topics_per_connection`).
pub const DEFAULT_TOPICS_PER_CONNECTION: usize = 64;
/// The largest `topics_per_connection`.
pub const MAX_TOPICS_PER_CONNECTION: u64 = 65_536;
/// The most task threads one worker may have.
pub const MAX_TASK_THREADS: u64 = 1024;
/// The longest task queue of one worker.
pub const MAX_TASK_QUEUE: u64 = 1 << 20;
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a replacement may take to adopt a hand-over (from the worker state sent) before it
/// is killed and the replaced worker takes back what it did not acknowledge and drains
/// (`handover_timeout`).
pub const DEFAULT_HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one message may take to arrive whole (slowloris: 1 byte a second keeps a connection
/// active, but not its message).
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(60);
/// The most workers one service may have.
pub const MAX_COUNT: u32 = 1024;
/// How long a worker may take from exec to "ready".
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped worker has before it is killed.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a draining worker may keep its connections open.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a worker may show no progress (stuck in a plugin callback) before it is killed.
pub const WORKER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the probe of a plugin file may take before it is killed and the file refused.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest probe timeout (0 would refuse every file).
pub const MIN_PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// How often a worker tells the master it makes progress, at most (see `heartbeat_ms`).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest worker timeout (`--worker-timeout`) other than 0 (off).
pub const MIN_WORKER_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest service name: it appears in process titles, memfd names and log lines.
pub const MAX_NAME_LEN: usize = 64;

/// The largest byte limit (`max_package_size`, `max_send_buffer`): what an `i64` and a `usize`
/// both hold, so no arithmetic on it wraps.
pub const MAX_BYTES: u64 = i64::MAX as u64;
/// The most connections one worker may serve.
pub const MAX_CONNECTIONS: u64 = 1 << 24;
/// The longest idle or message timeout, in seconds (a year; 0 means never).
pub const MAX_TIMEOUT_SECS: u64 = 365 * 86400;
/// The longest drain or kill timeout, in seconds.
pub const MAX_STOP_SECS: f64 = 86400.0;

/// Where a setting came from, for error messages: a flag (`--idle-timeout`) or a config-file key
/// (`idle_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flags,
    File,
}

/// A start setting that both the command line and the config file give, with its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Count,
    MaxPackageSize,
    MaxSendBuffer,
    MaxConnections,
    IdleTimeout,
    MessageTimeout,
    DrainTimeout,
    KillTimeout,
    WorkerTimeout,
    ProbeTimeout,
    TaskThreads,
    TaskQueue,
    TopicMaxMessage,
    TopicMaxLen,
    TopicsPerConnection,
    HandoverTimeout,
}

impl Setting {
    /// Its name as `source` spells it.
    pub fn name(self, source: Source) -> &'static str {
        let (flag, key) = match self {
            Setting::Count => ("--count", "count"),
            Setting::MaxPackageSize => ("--max-package-size", "max_package_size"),
            Setting::MaxSendBuffer => ("--max-send-buffer", "max_send_buffer"),
            Setting::MaxConnections => ("--max-connections", "max_connections"),
            Setting::IdleTimeout => ("--idle-timeout", "idle_timeout"),
            Setting::MessageTimeout => ("--message-timeout", "message_timeout"),
            Setting::DrainTimeout => ("--drain-timeout", "drain_timeout"),
            Setting::KillTimeout => ("--kill-timeout", "kill_timeout"),
            Setting::WorkerTimeout => ("--worker-timeout", "worker_timeout"),
            Setting::ProbeTimeout => ("--probe-timeout", "probe_timeout"),
            Setting::TaskThreads => ("--task-threads", "task_threads"),
            Setting::TaskQueue => ("--task-queue", "task_queue"),
            Setting::TopicMaxMessage => ("--topic-max-message", "topic_max_message"),
            Setting::TopicMaxLen => ("--topic-max-len", "topic_max_len"),
            Setting::TopicsPerConnection => ("--topics-per-connection", "topics_per_connection"),
            Setting::HandoverTimeout => ("--handover-timeout", "handover_timeout"),
        };
        match source {
            Source::Flags => flag,
            Source::File => key,
        }
    }

    /// The inclusive range of whole-number settings, and their unit.
    fn bounds(self) -> (u64, u64, &'static str) {
        match self {
            Setting::Count => (1, MAX_COUNT as u64, " workers"),
            Setting::MaxPackageSize | Setting::MaxSendBuffer => (1, MAX_BYTES, " bytes"),
            Setting::MaxConnections => (1, MAX_CONNECTIONS, " connections"),
            Setting::TaskThreads => (1, MAX_TASK_THREADS, " threads"),
            Setting::TaskQueue => (1, MAX_TASK_QUEUE, " jobs"),
            Setting::TopicMaxMessage => (1, MAX_TOPIC_MAX_MESSAGE, " bytes"),
            Setting::TopicMaxLen => (1, MAX_TOPIC_MAX_LEN, " bytes"),
            Setting::TopicsPerConnection => (1, MAX_TOPICS_PER_CONNECTION, " topics"),
            Setting::IdleTimeout | Setting::MessageTimeout => (0, MAX_TIMEOUT_SECS, " seconds"),
            Setting::DrainTimeout | Setting::KillTimeout | Setting::WorkerTimeout | Setting::ProbeTimeout => {
                (0, MAX_STOP_SECS as u64, " seconds")
            }
            // 0 would fail every hand-over before it began.
            Setting::HandoverTimeout => (1, MAX_STOP_SECS as u64, " seconds"),
        }
    }
}

/// A start setting that cannot be used, or a service that could never run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingError {
    #[error("{name} must be between {min} and {max}{unit}, not {value}")]
    OutOfRange { name: &'static str, value: String, min: u64, max: u64, unit: &'static str },
    #[error("{0}")]
    Invalid(String),
}

/// What the flags or a `[[service]]` of the config file say about a service's numbers, as given
/// (`None`: the default). [`Settings::build`] range-checks and converts them, for both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    pub count: Option<u64>,
    pub max_package_size: Option<u64>,
    pub max_send_buffer: Option<u64>,
    pub max_connections: Option<u64>,
    /// Seconds; 0: never.
    pub idle_timeout: Option<u64>,
    /// Seconds; 0: never.
    pub message_timeout: Option<u64>,
    pub task_threads: Option<u64>,
    pub task_queue: Option<u64>,
    pub topic_max_message: Option<u64>,
    pub topic_max_len: Option<u64>,
    pub topics_per_connection: Option<u64>,
    /// Seconds.
    pub handover_timeout: Option<u64>,
}

impl Settings {
    /// The worker count and limits, each within its bounds, defaults filled in.
    pub fn build(&self, source: Source) -> Result<(u32, Limits), SettingError> {
        let d = Limits::default();
        let count = checked(source, Setting::Count, self.count)?.map_or(1, |n| n as u32);
        let bytes = |setting, value, default: usize| {
            Ok::<_, SettingError>(checked(source, setting, value)?.map_or(default, |n| n as usize))
        };
        let millis = |setting, value, default: u64| {
            Ok::<_, SettingError>(checked(source, setting, value)?.map_or(default, |s| s * 1000))
        };
        let limits = Limits {
            max_package_size: bytes(Setting::MaxPackageSize, self.max_package_size, d.max_package_size)?,
            max_send_buffer: bytes(Setting::MaxSendBuffer, self.max_send_buffer, d.max_send_buffer)?,
            max_connections: bytes(Setting::MaxConnections, self.max_connections, d.max_connections)?,
            idle_timeout_ms: millis(Setting::IdleTimeout, self.idle_timeout, d.idle_timeout_ms)?,
            message_timeout_ms: millis(Setting::MessageTimeout, self.message_timeout, d.message_timeout_ms)?,
            task_threads: bytes(Setting::TaskThreads, self.task_threads, d.task_threads)?,
            task_queue: bytes(Setting::TaskQueue, self.task_queue, d.task_queue)?,
            topics: TopicLimits {
                max_message: bytes(Setting::TopicMaxMessage, self.topic_max_message, d.topics.max_message)?,
                max_topic_len: bytes(Setting::TopicMaxLen, self.topic_max_len, d.topics.max_topic_len)?,
                per_connection: bytes(
                    Setting::TopicsPerConnection,
                    self.topics_per_connection,
                    d.topics.per_connection,
                )?,
            },
            handover_timeout_ms: millis(Setting::HandoverTimeout, self.handover_timeout, d.handover_timeout_ms)?,
        };
        Ok((count, limits))
    }
}

/// `value` if it is within `setting`'s bounds.
fn checked(source: Source, setting: Setting, value: Option<u64>) -> Result<Option<u64>, SettingError> {
    let (min, max, unit) = setting.bounds();
    match value {
        Some(v) if !(min..=max).contains(&v) => {
            Err(SettingError::OutOfRange { name: setting.name(source), value: v.to_string(), min, max, unit })
        }
        value => Ok(value),
    }
}

/// How long things may take (the start plan's, which the master's supervisor keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From exec to "ready".
    pub start: Duration,
    /// How long draining workers may keep connections open (graceful stop and reload).
    pub drain: Duration,
    /// How long a worker told to stop has before it is killed.
    pub kill: Duration,
    /// How long a serving worker may show no progress before the watchdog kills it (None: off).
    pub worker: Option<Duration>,
    /// How long a probe of a plugin file may take before it is killed and the file refused.
    pub probe: Duration,
}

/// A drain or kill timeout given in (fractional) seconds: finite, between 0 and a day.
pub fn stop_timeout(source: Source, setting: Setting, seconds: Option<f64>) -> Result<Option<Duration>, SettingError> {
    match seconds {
        // A worker's heartbeat comes every third of the timeout, at least 10 ms apart: a timeout
        // below a second would kill healthy workers between two heartbeats (issue 20 item 9).
        Some(s) if setting == Setting::WorkerTimeout && s > 0.0 && s < MIN_WORKER_TIMEOUT.as_secs_f64() => {
            Err(SettingError::Invalid(format!(
                "{} must be 0 (off) or at least {} s (workers say they are alive every third of it), not {s}",
                setting.name(source),
                MIN_WORKER_TIMEOUT.as_secs()
            )))
        }
        Some(s) if !(0.0..=MAX_STOP_SECS).contains(&s) => {
            let (min, max, unit) = setting.bounds();
            Err(SettingError::OutOfRange { name: setting.name(source), value: s.to_string(), min, max, unit })
        }
        seconds => Ok(seconds.map(Duration::from_secs_f64)),
    }
}

/// One service: a listening address (TCP, UDP or a Unix socket) served by `count` workers running
/// one plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    /// The plugin's name (`http`) or a path to its `.so`.
    pub plugin: String,
    pub listen: Listen,
    pub count: u32,
    /// TOML text handed to the plugin as is.
    pub plugin_config: String,
    pub limits: Limits,
    /// Serve over TLS with this certificate and key (None: plain TCP).
    pub tls: Option<TlsFiles>,
    /// The service's access log (absolute; None: no access log). The master opens it, workers
    /// append the lines their plugin formats.
    pub access_log: Option<PathBuf>,
    /// When a worker is replaced by a fresh one (the master decides; the worker never sees it).
    pub recycle: Recycle,
    /// A replaced worker hands its connections and plugin state over to its replacement (when
    /// both plugins take part); false: it drains them, as before hand-overs existed.
    pub handover: bool,
    /// A hand-over moves the connections of a plugin that answers `handover_in_batches` a batch
    /// at a time, the old worker serving the rest meanwhile (the default); false: all at once,
    /// every client paused for the whole hand-over (`handover_batches = false`,
    /// `--no-handover-batches`).
    pub handover_batches: bool,
    /// The broker every host of the service's cluster shares topics through
    /// (`redis://HOST:PORT`, `nats://HOST:PORT`; checked by [`validate`]); None: topics reach the
    /// workers of this host only.
    pub cluster: Option<String>,
}

#[cfg(test)]
impl Service {
    /// A service with every setting at its default: the tests' starting point.
    pub fn for_tests(name: &str, plugin: &str, listen: &str, count: u32) -> Service {
        Service {
            name: name.into(),
            plugin: plugin.into(),
            listen: listen.parse().expect("a test's listen address"),
            count,
            plugin_config: String::new(),
            limits: Limits::default(),
            tls: None,
            access_log: None,
            recycle: Recycle::default(),
            handover: true,
            handover_batches: true,
            cluster: None,
        }
    }
}

/// Worker recycling (Swoole's `max_request`): a serving worker that handled `max_requests`
/// messages, or whose resident memory reached `max_memory` bytes, is replaced the way a reload
/// step replaces one (a new worker starts, then the old one drains). 0: off. Each worker's limit
/// is moved by up to ±10 % so that the workers of a service do not recycle together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recycle {
    pub max_requests: u64,
    pub max_memory: u64,
}

impl Recycle {
    pub fn is_on(&self) -> bool {
        self.max_requests > 0 || self.max_memory > 0
    }
}

/// A byte size: a whole number, optionally followed by `K`, `M`, `G` or `T` (powers of 1024;
/// `KB`, `KiB`, `MB`… mean the same), e.g. `64M`, `1048576`, `1.5G` is refused.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let bad = || format!("{text:?} is not a size: use a number of bytes, or one followed by K, M, G or T");
    let number: u64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    number.checked_mul(1 << shift).filter(|&n| n <= MAX_BYTES).ok_or_else(|| format!("{text:?} is too large"))
}

/// Per-connection and per-worker limits enforced by the worker's event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The largest message (and the most bytes buffered while a message is incomplete).
    pub max_package_size: usize,
    /// Bytes queued for sending above which the plugin hears `buffer_full` and reading pauses.
    pub max_send_buffer: usize,
    pub max_connections: usize,
    /// A connection with no traffic for this long is closed (0: never).
    pub idle_timeout_ms: u64,
    /// A message not complete this long after its first byte closes the connection (0: never).
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// Threads of the worker's task pool at most (started when tasks need them).
    pub task_threads: usize,
    /// Jobs waiting for a task thread at most; past it a submit is refused.
    pub task_queue: usize,
    /// The limits of `Host::subscribe` and `Host::publish`.
    #[serde(default)]
    pub topics: TopicLimits,
    /// A replaced worker's hand-over must be acknowledged within this (the master's business:
    /// it sends it with `HandOver` and `Adopt`).
    #[serde(default = "default_handover_timeout_ms")]
    pub handover_timeout_ms: u64,
}

fn default_handover_timeout_ms() -> u64 {
    DEFAULT_HANDOVER_TIMEOUT.as_millis() as u64
}

/// The limits of the topic calls (`topic_max_message`, `topic_max_len`, `topics_per_connection`):
/// a call over one is refused with a `TopicError` and counted in `refused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicLimits {
    /// The largest message `Host::publish` takes, in bytes; also what a worker accepts from
    /// another worker or from the broker (a larger one is skipped and counted).
    pub max_message: usize,
    /// The longest topic name, in bytes.
    pub max_topic_len: usize,
    /// The most topics one connection may be subscribed to.
    pub per_connection: usize,
}

impl Default for TopicLimits {
    fn default() -> Self {
        TopicLimits {
            max_message: DEFAULT_TOPIC_MAX_MESSAGE,
            max_topic_len: DEFAULT_TOPIC_MAX_LEN,
            per_connection: DEFAULT_TOPICS_PER_CONNECTION,
        }
    }
}

fn default_message_timeout_ms() -> u64 {
    DEFAULT_MESSAGE_TIMEOUT.as_millis() as u64
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_package_size: DEFAULT_MAX_PACKAGE_SIZE,
            max_send_buffer: DEFAULT_MAX_SEND_BUFFER,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT.as_millis() as u64,
            message_timeout_ms: default_message_timeout_ms(),
            task_threads: DEFAULT_TASK_THREADS,
            task_queue: DEFAULT_TASK_QUEUE,
            topics: TopicLimits::default(),
            handover_timeout_ms: default_handover_timeout_ms(),
        }
    }
}

/// Everything a worker needs, sent by the master over the worker's control socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub service: String,
    pub slot: u32,
    /// The plugin file the snapshot was taken from (named in messages; the worker loads the
    /// snapshot, a memfd it inherits).
    pub plugin_path: PathBuf,
    pub plugin_config: String,
    pub limits: Limits,
    /// How many workers the service has (told to the plugin).
    #[serde(default)]
    pub worker_count: u32,
    /// The user and group the worker switches to before it loads its plugin (master runs as root).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    /// How long the worker drains when it is sent SIGTERM by hand (the master says so itself).
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// How often the worker says `alive` to the master (0: never; the watchdog is off).
    #[serde(default)]
    pub heartbeat_ms: u64,
    /// The service's certificate and key, checked by the master (None: plain TCP).
    #[serde(default)]
    pub tls: Option<TlsSpec>,
    /// The service has an access log: its descriptor follows the hello (`ToWorker::Logs`), and
    /// the worker waits for it before it serves.
    #[serde(default)]
    pub access_log: bool,
    /// The service's cluster URL (`Service::cluster`): the worker connects to the broker itself.
    #[serde(default)]
    pub cluster: Option<String>,
    /// The worker loop's I/O backend (`--io`).
    #[serde(default)]
    pub io: IoBackend,
    /// A replacement that its predecessor may hand its connections and state over to: once
    /// ready it accepts nothing (and no plugin code runs for a new connection) until that
    /// hand-over has ended (`Adopt`) or the master says none comes (`Serve`), so that no client
    /// sees the plugin's state without what the old worker brings.
    #[serde(default)]
    pub await_handover: bool,
    /// `Service::handover_batches`: as the old worker of a hand-over, move the connections in
    /// batches when the plugin answers `handover_in_batches` (false: all at once).
    #[serde(default = "default_handover_batches")]
    pub handover_batches: bool,
}

fn default_handover_batches() -> bool {
    true
}

/// The worker loop's I/O backend (`--io`, `io` in the config file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IoBackend {
    /// Readiness (mio over epoll): a system call per receive and per send.
    #[default]
    Epoll,
    /// io_uring: multishot receives into provided buffers, each turn's sends in one submission;
    /// a worker where io_uring is unavailable uses epoll (and logs it once).
    Uring,
}

/// The heartbeat interval for a worker timeout (None: off): often enough that two beats fit in
/// the timeout, at most once a second (an idle worker wakes once a second, no more). Recycling
/// needs the beats too (they carry the worker's message count and memory): once a second.
pub fn heartbeat_ms(worker_timeout: Option<Duration>, recycle: Recycle) -> u64 {
    match worker_timeout {
        None if recycle.is_on() => HEARTBEAT_INTERVAL.as_millis() as u64,
        None => 0,
        Some(t) => (t / 3).clamp(Duration::from_millis(10), HEARTBEAT_INTERVAL).as_millis() as u64,
    }
}

fn default_drain_timeout_ms() -> u64 {
    DRAIN_TIMEOUT.as_millis() as u64
}

/// Checks what [`Settings::build`] cannot: a service that could never run.
pub fn validate(service: &Service) -> Result<(), SettingError> {
    let invalid = |m: String| Err(SettingError::Invalid(m));
    if !(1..=MAX_COUNT).contains(&service.count) {
        return invalid(format!("--count must be between 1 and {MAX_COUNT} workers, not {}", service.count));
    }
    if service.plugin.is_empty() {
        return invalid("--plugin must name a plugin".into());
    }
    if service.name.len() > MAX_NAME_LEN {
        return invalid(format!(
            "a service name may have at most {MAX_NAME_LEN} characters, not {} ({}…)",
            service.name.len(),
            service.name.chars().take(16).collect::<String>()
        ));
    }
    if service.limits.max_package_size == 0 || service.limits.max_send_buffer == 0 {
        return invalid("size limits must be above 0".into());
    }
    if service.tls.is_some() && matches!(service.listen, Listen::Udp(_)) {
        return invalid(format!("TLS needs a stream: {} is UDP (DTLS is not supported)", service.listen));
    }
    if let Err(e) = service.plugin_config.parse::<toml::Table>() {
        return invalid(format!("--plugin-config is not valid TOML: {}", e.to_string().replace('\n', " ")));
    }
    if let Some(url) = &service.cluster {
        match crate::cluster::url::parse(url) {
            Ok(u) if u.tls => {
                if let Err(e) = crate::cluster::tls::client_config(&u) {
                    return invalid(format!("--cluster {u}: {e}"));
                }
            }
            Ok(_) => {}
            Err(e) => return invalid(format!("--cluster: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> Service {
        Service { plugin_config: "root = \"/srv\"".into(), ..Service::for_tests("http", "http", DEFAULT_LISTEN, 4) }
    }

    #[test]
    fn sizes_take_a_unit() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("2 KiB"), Ok(2048));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "M", "1.5G", "-1", "12X", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_round_trips() {
        let spec = WorkerSpec {
            service: "web".into(),
            slot: 3,
            plugin_path: "/tmp/x/libhttp.so".into(),
            plugin_config: "root = \"/srv\"\n[nested]\na = 1\n".into(),
            limits: Limits::default(),
            worker_count: 4,
            user: Some("www-data".into()),
            group: None,
            drain_timeout_ms: 1500,
            heartbeat_ms: 1000,
            tls: Some(TlsSpec {
                cert_pem: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
                key_pem: "k".into(),
                alpn: vec!["http/1.1".into()],
                alpn_fixed: true,
                tickets: Some(crate::tls::tickets::TicketKeys::generate(std::time::SystemTime::now()).unwrap()),
            }),
            access_log: true,
            cluster: Some("nats://127.0.0.1:4222".into()),
            io: IoBackend::Uring,
            await_handover: true,
            handover_batches: false,
        };
        assert_eq!(postcard::from_bytes::<WorkerSpec>(&postcard::to_stdvec(&spec).unwrap()).unwrap(), spec);
    }

    #[test]
    fn validation_refuses_what_cannot_run() {
        assert!(validate(&service()).is_ok());
        let tls = |url: &str| Service { cluster: Some(url.into()), ..service() };
        let e = validate(&tls("rediss://127.0.0.1:6380?ca=/nonexistent/ca.pem")).unwrap_err().to_string();
        assert!(e.contains("could not read the CA file /nonexistent/ca.pem"), "{e}");
        let e = validate(&tls("tls://127.0.0.1:4222?ca=/nonexistent/nats.pem")).unwrap_err().to_string();
        assert!(e.contains("could not read the CA file /nonexistent/nats.pem"), "{e}");
        let long = Service { name: "a".repeat(MAX_NAME_LEN + 1), ..service() };
        assert!(validate(&long).unwrap_err().to_string().contains("at most 64 characters"));
        let short = stop_timeout(Source::Flags, Setting::WorkerTimeout, Some(0.001)).unwrap_err().to_string();
        assert!(short.contains("--worker-timeout must be 0 (off) or at least 1 s"), "{short}");
        assert_eq!(stop_timeout(Source::Flags, Setting::WorkerTimeout, Some(0.0)), Ok(Some(Duration::ZERO)));
        assert_eq!(stop_timeout(Source::Flags, Setting::WorkerTimeout, Some(1.0)), Ok(Some(Duration::from_secs(1))));
        assert!(validate(&Service { count: 0, ..service() }).unwrap_err().to_string().contains("--count"));
        let bad = Service { plugin_config: "root = ".into(), ..service() };
        assert!(validate(&bad).unwrap_err().to_string().contains("TOML"));
    }
}
