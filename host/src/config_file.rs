//! The config file (`host -c host.toml`): parsed and validated here, no syscalls but reading it.
//!
//! ```toml
//! pid_file = "host.pid"            # relative paths are relative to the file's directory
//! plugin_dirs = ["plugins"]
//! [[service]]
//! name = "web"
//! plugin = "http"
//! listen = "127.0.0.1:8080"
//! count = 4
//! access_log = "/var/log/host/web.access.log"   # optional; the plugin formats the lines
//! [service.config]                 # handed to the plugin as TOML text
//! root = "/srv/www"
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{self, Service, Setting, SettingError, Settings, Source};
use crate::listen::Listen;
use crate::tls::TlsFiles;

/// A whole config file, validated, with every path absolute.
#[derive(Debug, Clone, PartialEq)]
pub struct FileConfig {
    pub pid_file: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    /// Where plugins named by name are looked up, in order.
    pub plugin_dirs: Vec<PathBuf>,
    /// At least one, with unique names and unique listen addresses.
    pub services: Vec<ServiceConfig>,
    /// How long draining workers may keep connections open (graceful stop and reload).
    pub drain_timeout: Option<Duration>,
    /// How long a worker told to stop has before it is killed.
    pub kill_timeout: Option<Duration>,
    /// The admin listener's address (`/metrics`, `/healthz`); None: off.
    pub admin_listen: Option<SocketAddr>,
    /// A worker with no progress for this long is killed (`Some(0)`: never).
    pub worker_timeout: Option<Duration>,
    /// How long the probe of a plugin file may take.
    pub probe_timeout: Option<Duration>,
    /// Load plugin files others than their owner may write.
    pub insecure_plugins: bool,
    /// The workers' I/O backend (`io = "uring"`).
    pub io: Option<config::IoBackend>,
}

/// One `[[service]]`: what the flags can say ([`Service`]) and what only the file can.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub service: Service,
    /// Whether a changed plugin file reloads this service's workers.
    pub reloadable: bool,
    /// The user the workers switch to.
    pub user: Option<String>,
    /// The group the workers switch to.
    pub group: Option<String>,
}

/// A 1-based position in the config file (the column counts characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read config {file}: {cause}")]
    Read { file: String, cause: io::Error },
    /// Not TOML, or TOML that does not fit: an unknown or missing key, a value of the wrong type.
    #[error("could not read config {file}: {}{message}", at_prefix(.at))]
    Parse { file: String, at: Option<Location>, message: String },
    /// Well-formed, but describes something that cannot run; `message` names the key.
    #[error("config {file}: {}{}{message}", at_prefix(.at), service_prefix(.service))]
    Invalid { file: String, at: Option<Location>, service: Option<String>, message: String },
}

fn at_prefix(at: &Option<Location>) -> String {
    at.map(|at| format!("{at}: ")).unwrap_or_default()
}

fn service_prefix(service: &Option<String>) -> String {
    service.as_ref().map(|name| format!("service {name:?}: ")).unwrap_or_default()
}

/// Reads and validates the config file at `path`; relative paths in it are taken from its directory.
pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let file_label = path.display().to_string();
    let read_error = |cause| ConfigError::Read { file: file_label.clone(), cause };
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    let absolute = std::path::absolute(path).map_err(read_error)?;
    let base_dir = absolute.parent().unwrap_or(Path::new("/"));
    parse(&text, base_dir, &file_label)
}

/// Parses and validates config text. `base_dir` (absolute) anchors relative paths; `file_label`
/// names the file in errors.
pub fn parse(text: &str, base_dir: &Path, file_label: &str) -> Result<FileConfig, ConfigError> {
    let ctx = Context { text, file: file_label };
    let raw: RawFile = toml::from_str(text).map_err(|e| ctx.parse_error(&e))?;
    raw.validate(&ctx, base_dir)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    pid_file: Option<Spanned<PathBuf>>,
    log_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    plugin_dirs: Vec<Spanned<PathBuf>>,
    /// Seconds.
    drain_timeout: Option<f64>,
    /// Seconds.
    kill_timeout: Option<f64>,
    admin_listen: Option<SocketAddr>,
    /// Seconds; 0: never.
    worker_timeout: Option<f64>,
    /// Seconds.
    probe_timeout: Option<f64>,
    #[serde(default)]
    insecure_plugins: bool,
    io: Option<config::IoBackend>,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    plugin: Spanned<String>,
    listen: Spanned<Listen>,
    /// A Unix socket's file mode, in octal (`"0660"`).
    unix_mode: Option<Spanned<String>>,
    count: Option<Spanned<u64>>,
    reloadable: Option<bool>,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    max_package_size: Option<Spanned<u64>>,
    max_send_buffer: Option<Spanned<u64>>,
    max_connections: Option<Spanned<u64>>,
    /// Seconds; 0: never.
    idle_timeout: Option<Spanned<u64>>,
    /// Seconds; 0: never.
    message_timeout: Option<Spanned<u64>>,
    task_threads: Option<Spanned<u64>>,
    task_queue: Option<Spanned<u64>>,
    /// Topics: the largest message, the longest topic, the most topics of one connection.
    topic_max_message: Option<Spanned<u64>>,
    topic_max_len: Option<Spanned<u64>>,
    topics_per_connection: Option<Spanned<u64>>,
    /// Messages a worker handles before it is recycled (0: never).
    max_requests: Option<u64>,
    /// Resident bytes (or a size such as "64M") above which a worker is recycled (0: never).
    max_memory: Option<Spanned<Size>>,
    /// Replaced workers hand their connections over (default) or drain them (false).
    handover: Option<bool>,
    /// A plugin that can is handed over in batches (default) or all at once (false).
    handover_batches: Option<bool>,
    /// Seconds the replacement may take to adopt (from the worker state sent) before it is
    /// killed and the old worker takes back what it did not acknowledge.
    handover_timeout: Option<Spanned<u64>>,
    /// PEM certificate (chain) and key files: the service is served over TLS.
    tls_cert: Option<Spanned<PathBuf>>,
    tls_key: Option<Spanned<PathBuf>>,
    /// ALPN protocols offered (default: `["h2", "http/1.1", "http/1.0"]` for the http plugin, none
    /// otherwise).
    tls_alpn: Option<Vec<String>>,
    /// The service's access log (the plugin formats the lines; `host reopen-logs` reopens it).
    access_log: Option<Spanned<PathBuf>>,
    /// The broker its topics are shared through with other hosts (`redis://…`, `nats://…`).
    cluster: Option<Spanned<String>>,
    /// A plain table: toml 0.8 refuses a `Spanned` table holding a sub-table written as a table
    /// header (`[service.config.nested]`: "expected a borrowed string").
    config: Option<toml::Table>,
}

/// The text being parsed and its name, to turn byte offsets into messages.
struct Context<'a> {
    text: &'a str,
    file: &'a str,
}

impl Context<'_> {
    fn locate(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location { line: before.matches('\n').count() + 1, column: before[line_start..].chars().count() + 1 }
    }

    /// toml's error as one line: its position, the key when toml's message leaves it out, its message.
    fn parse_error(&self, error: &toml::de::Error) -> ConfigError {
        let message = match error.message().trim_end() {
            "" => "invalid TOML".to_string(),
            message => message.replace('\n', "; "),
        };
        let message = match error.span().and_then(|span| key_at(self.text, span.start)) {
            Some(key) if !message.contains(&format!("`{key}`")) => format!("`{key}`: {message}"),
            _ => message,
        };
        ConfigError::Parse { file: self.file.into(), at: error.span().map(|s| self.locate(s.start)), message }
    }

    fn invalid(&self, span: Option<Range<usize>>, service: Option<&str>, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.into(),
            at: span.map(|s| self.locate(s.start)),
            service: service.map(String::from),
            message,
        }
    }
}

/// The key an error at `offset` is about: the key of a `key = value` whose value starts there, or
/// the name of a `[table]` or `[[table]]` header that starts there.
fn key_at(text: &str, offset: usize) -> Option<&str> {
    let line_start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let (before, from) = (&text[line_start..offset], &text[offset..line_end]);
    let key = if before.trim().is_empty() && from.starts_with('[') {
        from.trim_start_matches('[').split(']').next()?.trim()
    } else {
        let lhs = before.trim_end().strip_suffix('=')?.trim_end();
        let not_key = |(_, c): &(usize, char)| !(c.is_ascii_alphanumeric() || "_-.".contains(*c));
        // After the last character that is no key's (which may be several bytes long).
        &lhs[lhs.char_indices().rev().find(not_key).map_or(0, |(i, c)| i + c.len_utf8())..]
    };
    Some(key).filter(|key| !key.is_empty())
}

impl RawFile {
    fn validate(self, ctx: &Context<'_>, base_dir: &Path) -> Result<FileConfig, ConfigError> {
        let path = |key: &str, value: Spanned<PathBuf>| {
            if value.get_ref().as_os_str().is_empty() {
                return Err(ctx.invalid(Some(value.span()), None, format!("{key} must not be empty")));
            }
            Ok(base_dir.join(value.into_inner()))
        };
        let pid_file = self.pid_file.map(|p| path("pid_file", p)).transpose()?;
        let log_file = self.log_file.map(|p| path("log_file", p)).transpose()?;
        let plugin_dirs = self.plugin_dirs.into_iter().map(|p| path("plugin_dirs", p)).collect::<Result<_, _>>()?;
        if self.services.is_empty() {
            return Err(ctx.invalid(None, None, "no [[service]]: the file must describe at least one service".into()));
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut listens: Vec<(Listen, String)> = Vec::new();
        let mut services = Vec::with_capacity(self.services.len());
        for raw in self.services {
            let name = raw.name.get_ref().clone();
            if let Some(first) = names.insert(name.clone(), raw.name.span().start) {
                let first = ctx.locate(first).line;
                let message = format!("name is already used by the service on line {first}");
                return Err(ctx.invalid(Some(raw.name.span()), Some(&name), message));
            }
            let listen = raw.listen.get_ref().clone();
            // Port 0: each service gets a port of its own from the system.
            if let Some((_, other)) = listens.iter().find(|(l, _)| l.clashes_with(&listen)) {
                let message = format!("listen {listen} is already used by service {other:?}");
                return Err(ctx.invalid(Some(raw.listen.span()), Some(&name), message));
            }
            listens.push((listen, name.clone()));
            services.push(raw.validate(ctx, base_dir)?);
        }
        let seconds = |setting, value: Option<f64>| {
            config::stop_timeout(Source::File, setting, value).map_err(|e| ctx.invalid(None, None, e.to_string()))
        };
        let drain_timeout = seconds(Setting::DrainTimeout, self.drain_timeout)?;
        let kill_timeout = seconds(Setting::KillTimeout, self.kill_timeout)?;
        let worker_timeout = seconds(Setting::WorkerTimeout, self.worker_timeout)?;
        let probe_timeout = seconds(Setting::ProbeTimeout, self.probe_timeout)?;
        Ok(FileConfig {
            pid_file,
            log_file,
            plugin_dirs,
            services,
            drain_timeout,
            kill_timeout,
            admin_listen: self.admin_listen,
            worker_timeout,
            probe_timeout,
            insecure_plugins: self.insecure_plugins,
            io: self.io,
        })
    }
}

/// A byte size in the file: a number of bytes or a string with a unit (`"64M"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

impl RawService {
    fn validate(self, ctx: &Context<'_>, base_dir: &Path) -> Result<ServiceConfig, ConfigError> {
        let name = self.name.get_ref().as_str();
        let invalid = |span: Range<usize>, message: String| ctx.invalid(Some(span), Some(name), message);
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(invalid(self.name.span(), "name may only have letters, digits, '_' and '-'".into()));
        }
        let plugin = match self.plugin.get_ref().as_str() {
            "" => return Err(invalid(self.plugin.span(), "plugin must name a plugin or a path to one".into())),
            path if path.contains('/') => base_dir
                .join(path)
                .into_os_string()
                .into_string()
                .map_err(|_| invalid(self.plugin.span(), "plugin path is not valid UTF-8".into()))?,
            plugin_name => plugin_name.to_string(),
        };
        let spanned = [
            (Setting::Count, &self.count),
            (Setting::MaxPackageSize, &self.max_package_size),
            (Setting::MaxSendBuffer, &self.max_send_buffer),
            (Setting::MaxConnections, &self.max_connections),
            (Setting::IdleTimeout, &self.idle_timeout),
            (Setting::MessageTimeout, &self.message_timeout),
            (Setting::TaskThreads, &self.task_threads),
            (Setting::TaskQueue, &self.task_queue),
            (Setting::TopicMaxMessage, &self.topic_max_message),
            (Setting::TopicMaxLen, &self.topic_max_len),
            (Setting::TopicsPerConnection, &self.topics_per_connection),
            (Setting::HandoverTimeout, &self.handover_timeout),
        ];
        let value =
            |setting: Setting| spanned.iter().find(|s| s.0 == setting).and_then(|s| s.1.as_ref()).map(|v| *v.get_ref());
        let settings = Settings {
            count: value(Setting::Count),
            max_package_size: value(Setting::MaxPackageSize),
            max_send_buffer: value(Setting::MaxSendBuffer),
            max_connections: value(Setting::MaxConnections),
            idle_timeout: value(Setting::IdleTimeout),
            message_timeout: value(Setting::MessageTimeout),
            task_threads: value(Setting::TaskThreads),
            task_queue: value(Setting::TaskQueue),
            topic_max_message: value(Setting::TopicMaxMessage),
            topic_max_len: value(Setting::TopicMaxLen),
            topics_per_connection: value(Setting::TopicsPerConnection),
            handover_timeout: value(Setting::HandoverTimeout),
        };
        let (count, limits) = settings.build(Source::File).map_err(|e| {
            let span = match &e {
                SettingError::OutOfRange { name, .. } => spanned
                    .iter()
                    .find(|s| s.0.name(Source::File) == *name)
                    .and_then(|s| s.1.as_ref())
                    .map(Spanned::span),
                SettingError::Invalid(_) => None,
            };
            ctx.invalid(span, Some(name), e.to_string())
        })?;
        let max_memory = match &self.max_memory {
            None => 0,
            Some(size) => match size.get_ref() {
                Size::Bytes(n) if *n <= config::MAX_BYTES => *n,
                Size::Bytes(n) => return Err(invalid(size.span(), format!("max_memory {n} is too large"))),
                Size::Text(t) => config::parse_size(t).map_err(|e| invalid(size.span(), format!("max_memory: {e}")))?,
            },
        };
        let account = |key: &str, value: Option<Spanned<String>>| match value {
            Some(value) if value.get_ref().is_empty() => Err(invalid(value.span(), format!("{key} must not be empty"))),
            value => Ok(value.map(Spanned::into_inner)),
        };
        let user = account("user", self.user)?;
        let group = account("group", self.group)?;
        let plugin_config = match &self.config {
            None => String::new(),
            Some(table) => toml::to_string(table)
                .map_err(|e| ctx.invalid(None, Some(name), format!("config could not be handed to the plugin: {e}")))?,
        };
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => {
                for (k, v) in [("tls_cert", &cert), ("tls_key", &key)] {
                    if v.get_ref().as_os_str().is_empty() {
                        return Err(invalid(v.span(), format!("{k} must not be empty")));
                    }
                }
                let (cert, key) = (base_dir.join(cert.into_inner()), base_dir.join(key.into_inner()));
                Some(TlsFiles::new(cert, key, self.tls_alpn, &plugin))
            }
            (Some(v), None) | (None, Some(v)) => {
                return Err(invalid(v.span(), "tls_cert and tls_key go together".into()));
            }
            (None, None) if self.tls_alpn.is_some() => {
                return Err(ctx.invalid(None, Some(name), "tls_alpn needs tls_cert and tls_key".into()));
            }
            (None, None) => None,
        };
        let mut listen = self.listen.get_ref().clone();
        if let Some(mode) = &self.unix_mode {
            listen.set_unix_mode("unix_mode", mode.get_ref()).map_err(|e| invalid(mode.span(), e))?;
        }
        if let Listen::Unix { path, mode } = listen {
            listen = Listen::Unix { path: base_dir.join(path), mode };
        }
        let access_log = match self.access_log {
            Some(p) if p.get_ref().as_os_str().is_empty() => {
                return Err(invalid(p.span(), "access_log must not be empty".into()));
            }
            Some(p) => Some(base_dir.join(p.into_inner())),
            None => None,
        };
        let recycle = config::Recycle { max_requests: self.max_requests.unwrap_or(0), max_memory };
        let handover = self.handover.unwrap_or(true);
        let handover_batches = self.handover_batches.unwrap_or(true);
        if let Some(url) = &self.cluster {
            if let Err(e) = crate::cluster::url::parse(url.get_ref()) {
                return Err(invalid(url.span(), format!("cluster: {e}")));
            }
        }
        let cluster = self.cluster.map(Spanned::into_inner);
        let service = Service {
            name: name.to_string(),
            plugin,
            listen,
            count,
            plugin_config,
            limits,
            tls,
            access_log,
            recycle,
            handover,
            handover_batches,
            cluster,
        };
        // What the flags refuse, the file refuses too (a backstop: the checks above name the keys).
        config::validate(&service).map_err(|e| ctx.invalid(None, Some(name), e.to_string()))?;
        Ok(ServiceConfig { service, reloadable: self.reloadable.unwrap_or(true), user, group })
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;

    const BASE: &str = "/etc/host";

    fn parse_ok(text: &str) -> FileConfig {
        parse(text, Path::new(BASE), "host.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    /// The error's message, checked to be one line naming the file.
    fn parse_err(text: &str) -> String {
        let message = parse(text, Path::new(BASE), "host.toml").expect_err("an error expected").to_string();
        assert!(message.contains("host.toml"), "{message}");
        assert!(!message.contains('\n'), "{message}");
        message
    }

    fn with_service(extra: &str) -> String {
        format!("[[service]]\nname = \"web\"\nplugin = \"http\"\nlisten = \"127.0.0.1:8080\"\n{extra}")
    }

    #[test]
    fn the_io_backend_key() {
        let service = with_service("");
        assert_eq!(parse_ok(&format!("io = \"uring\"\n{service}")).io, Some(config::IoBackend::Uring));
        assert_eq!(parse_ok(&format!("io = \"epoll\"\n{service}")).io, Some(config::IoBackend::Epoll));
        assert_eq!(parse_ok(&service).io, None);
        let message = parse_err(&format!("io = \"kqueue\"\n{service}"));
        assert!(message.contains("kqueue") && message.contains("uring"), "{message}");
    }

    #[test]
    fn watchdog_probe_and_trust_keys() {
        let service = "[[service]]\nname = \"a\"\nplugin = \"http\"\nlisten = \"127.0.0.1:1\"\n";
        let file = parse_ok(&format!("worker_timeout = 0\nprobe_timeout = 2.5\ninsecure_plugins = true\n{service}"));
        assert_eq!(file.worker_timeout, Some(Duration::ZERO));
        assert_eq!(file.probe_timeout, Some(Duration::from_millis(2500)));
        assert!(file.insecure_plugins);
        let defaults = parse_ok(service);
        assert_eq!((defaults.worker_timeout, defaults.probe_timeout, defaults.insecure_plugins), (None, None, false));
        assert!(parse_err(&format!("worker_timeout = -1\n{service}")).contains("worker_timeout"));
    }

    #[test]
    fn drain_and_kill_timeouts_are_seconds() {
        let file = parse_ok("drain_timeout = 1.5\nkill_timeout = 3\n[[service]]\nname = \"a\"\nplugin = \"http\"\nlisten = \"127.0.0.1:1\"\n");
        assert_eq!(file.drain_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(file.kill_timeout, Some(Duration::from_secs(3)));
        let message =
            parse_err("drain_timeout = -1\n[[service]]\nname = \"a\"\nplugin = \"http\"\nlisten = \"127.0.0.1:1\"\n");
        assert!(message.contains("drain_timeout"), "{message}");
    }

    #[test]
    fn a_full_file() {
        let config = parse_ok(
            r#"
pid_file = "host.pid"
log_file = "/var/log/host.log"
plugin_dirs = ["plugins", "/usr/lib/host"]

[[service]]
name = "web"
plugin = "http"
listen = "127.0.0.1:8080"
count = 4
reloadable = false
handover = false
handover_batches = false
handover_timeout = 3
user = "www-data"
group = "www-data"
task_threads = 2
max_package_size = 2048
max_send_buffer = 4096
max_connections = 100
idle_timeout = 30
topic_max_message = 4194304
topic_max_len = 64
topics_per_connection = 1000
max_requests = 10000
max_memory = "256M"
tls_cert = "certs/web.pem"
tls_key = "/etc/ssl/web.key"
access_log = "logs/web.access.log"
[service.config]
root = "/srv/www"
"#,
        );
        assert_eq!(config.pid_file.as_deref(), Some(Path::new("/etc/host/host.pid")));
        assert_eq!(config.log_file.as_deref(), Some(Path::new("/var/log/host.log")));
        assert_eq!(config.plugin_dirs, [PathBuf::from("/etc/host/plugins"), PathBuf::from("/usr/lib/host")]);
        let expected = ServiceConfig {
            service: Service {
                name: "web".into(),
                plugin: "http".into(),
                listen: "127.0.0.1:8080".parse().unwrap(),
                count: 4,
                plugin_config: "root = \"/srv/www\"\n".into(),
                limits: Limits {
                    max_package_size: 2048,
                    max_send_buffer: 4096,
                    max_connections: 100,
                    idle_timeout_ms: 30_000,
                    message_timeout_ms: Limits::default().message_timeout_ms,
                    task_threads: 2,
                    task_queue: Limits::default().task_queue,
                    topics: config::TopicLimits { max_message: 4 << 20, max_topic_len: 64, per_connection: 1000 },
                    handover_timeout_ms: 3000,
                },
                tls: Some(TlsFiles {
                    cert: "/etc/host/certs/web.pem".into(),
                    key: "/etc/ssl/web.key".into(),
                    alpn: vec!["h2".into(), "http/1.1".into(), "http/1.0".into()],
                    alpn_fixed: false,
                }),
                access_log: Some("/etc/host/logs/web.access.log".into()),
                recycle: config::Recycle { max_requests: 10_000, max_memory: 256 << 20 },
                handover: false,
                handover_batches: false,
                cluster: None,
            },
            reloadable: false,
            user: Some("www-data".into()),
            group: Some("www-data".into()),
        };
        assert_eq!(config.services, [expected]);
    }

    #[test]
    fn tls_keys_go_together() {
        assert!(parse_err(&with_service("tls_cert = \"c.pem\"\n")).contains("tls_cert and tls_key go together"));
        assert!(parse_err(&with_service("tls_alpn = [\"h2\"]\n")).contains("tls_alpn needs"));
        let file = parse_ok(&with_service("tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntls_alpn = [\"x\"]\n"));
        assert_eq!(file.services[0].service.tls.as_ref().unwrap().alpn, ["x"]);
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let config = parse_ok(&with_service(""));
        assert_eq!((config.pid_file, config.log_file, config.plugin_dirs.len()), (None, None, 0));
        let [ServiceConfig { service, reloadable, user, group }] = &config.services[..] else { panic!("one service") };
        assert_eq!((service.count, *reloadable, user, group), (1, true, &None, &None));
        assert_eq!(service.limits, Limits::default());
        assert_eq!(service.plugin_config, "");
        let never = parse_ok(&with_service("idle_timeout = 0"));
        assert_eq!(never.services[0].service.limits.idle_timeout_ms, 0);
    }

    #[test]
    fn relative_paths_are_taken_from_the_files_directory() {
        let text = "pid_file = \"run/host.pid\"\nplugin_dirs = [\"../plugins\"]\n\
                    [[service]]\nname = \"a\"\nplugin = \"./target/libtext.so\"\nlisten = \"127.0.0.1:1\"";
        let config = parse_ok(text);
        assert_eq!(config.pid_file.unwrap(), Path::new("/etc/host/run/host.pid"));
        assert_eq!(config.plugin_dirs, [PathBuf::from("/etc/host/../plugins")]);
        assert_eq!(config.services[0].service.plugin, "/etc/host/./target/libtext.so");
        let absolute = parse_ok(&with_service("").replace("\"http\"", "\"/opt/libhttp.so\""));
        assert_eq!(absolute.services[0].service.plugin, "/opt/libhttp.so");
    }

    #[test]
    fn the_plugin_config_round_trips() {
        let text = with_service(
            r#"[service.config]
root = "/srv"
ports = [1, 2, 3]
mixed = [{ a = 1 }, { b = "x" }]
[service.config.tls]
cert = "c.pem"
ciphers = ["a", "b"]
[service.config.tls.deep]
on = true
[[service.config.routes]]
path = "/"
[[service.config.routes]]
path = "/api"
"#,
        );
        let passed: toml::Table = parse_ok(&text).services[0].service.plugin_config.parse().unwrap();
        let written: toml::Table = text.parse().unwrap();
        assert_eq!(passed, written["service"][0]["config"].as_table().unwrap().clone());
        assert_eq!(passed["tls"]["deep"]["on"].as_bool(), Some(true));
        assert_eq!(passed["routes"][1]["path"].as_str(), Some("/api"));
    }

    #[test]
    fn two_services_on_two_ports() {
        let config = parse_ok(
            r#"
[[service]]
name = "web"
plugin = "http"
listen = "127.0.0.1:8080"
count = 2
[service.config]
root = "/srv/www"

[[service]]
name = "chat"
plugin = "text"
listen = "[::1]:9000"
"#,
        );
        let summary: Vec<_> = config
            .services
            .iter()
            .map(|s| {
                (s.service.name.as_str(), s.service.plugin.as_str(), s.service.listen.to_string(), s.service.count)
            })
            .collect();
        let expected =
            [("web", "http", "127.0.0.1:8080".to_string(), 2), ("chat", "text", "[::1]:9000".to_string(), 1)];
        assert_eq!(summary, expected);
        assert_eq!(config.services[1].service.plugin_config, "");
    }

    #[test]
    fn udp_and_unix_services() {
        let config = parse_ok(
            "[[service]]\nname = \"dns\"\nplugin = \"echo\"\nlisten = \"udp://127.0.0.1:5353\"\n\
             [[service]]\nname = \"app\"\nplugin = \"http\"\nlisten = \"unix:run/app.sock\"\nunix_mode = \"0660\"\n\
             [[service]]\nname = \"tcp\"\nplugin = \"echo\"\nlisten = \"127.0.0.1:5353\"\n",
        );
        assert_eq!(config.services[0].service.listen, Listen::Udp("127.0.0.1:5353".parse().unwrap()));
        // Relative to the file's directory, like every path in it.
        let expected = Listen::Unix { path: Path::new(BASE).join("run/app.sock"), mode: Some(0o660) };
        assert_eq!(config.services[1].service.listen, expected);
        let message = parse_err(&with_service("unix_mode = \"0660\"\n"));
        assert!(message.contains("unix_mode is for a Unix socket"), "{message}");
        let message = parse_err("[[service]]\nname = \"a\"\nplugin = \"x\"\nlisten = \"unix:\"\n");
        assert!(message.contains("line 4") && message.contains("names no socket file"), "{message}");
        let twice = "[[service]]\nname = \"a\"\nplugin = \"x\"\nlisten = \"unix:/a.sock\"\n\
                     [[service]]\nname = \"b\"\nplugin = \"x\"\nlisten = \"unix:/a.sock\"\n";
        assert!(parse_err(twice).contains("already used by service \"a\""));
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let message = parse_err(&with_service("cuont = 4"));
        assert!(message.starts_with("could not read config host.toml: line 5, column 1: "), "{message}");
        assert!(message.contains("`cuont`"), "{message}");
        let message = parse_err("pid_flie = \"x\"\n");
        assert!(message.contains("line 1") && message.contains("`pid_flie`"), "{message}");
    }

    #[test]
    fn a_missing_key_is_named() {
        let message = parse_err("[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:1\"\n");
        assert!(message.contains("line 1") && message.contains("`plugin`"), "{message}");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let message = parse_err(&with_service("count = \"four\""));
        assert!(message.contains("line 5, column 9") && message.contains("`count`"), "{message}");
        let message = parse_err(&with_service("").replace("127.0.0.1:8080", "nowhere"));
        assert!(message.contains("line 4, column 10") && message.contains("`listen`"), "{message}");
        let message = parse_err(&with_service("max_connections = -1"));
        assert!(message.contains("line 5") && message.contains("`max_connections`"), "{message}");
    }

    #[test]
    fn a_syntax_error_has_its_line() {
        let message = parse_err(&with_service("count = "));
        assert!(message.starts_with("could not read config host.toml: line 5, column 9: `count`: "), "{message}");
        let message = parse_err("[service]\nname = \"web\"");
        assert!(message.contains("line 1, column 1: `service`: "), "{message}");
        let message = parse_err(&with_service("count = 1\ncount = 2"));
        assert!(message.contains("line 6") && message.contains("`count`"), "{message}");
    }

    #[test]
    fn a_count_out_of_range_is_refused() {
        for count in [0, 1025] {
            let message = parse_err(&with_service(&format!("count = {count}")));
            assert!(message.starts_with("config host.toml: line 5, column 9: service \"web\": count"), "{message}");
            assert!(message.contains("between 1 and 1024"), "{message}");
        }
    }

    #[test]
    fn topic_limits_out_of_range_are_refused() {
        for (line, expected) in [
            ("topic_max_message = 0", "topic_max_message must be between 1 and 67108864 bytes, not 0"),
            ("topic_max_message = 67108865", "topic_max_message must be between 1 and 67108864 bytes"),
            ("topic_max_len = 1025", "topic_max_len must be between 1 and 1024 bytes, not 1025"),
            ("topics_per_connection = 0", "topics_per_connection must be between 1 and 65536 topics, not 0"),
        ] {
            let message = parse_err(&with_service(&format!("\n{line}")));
            assert!(message.contains("line 6") && message.contains(expected), "{message}");
        }
    }

    #[test]
    fn zero_limits_are_refused() {
        for key in ["max_package_size", "max_send_buffer", "max_connections"] {
            let message = parse_err(&with_service(&format!("\n{key} = 0")));
            assert!(message.contains("line 6") && message.contains("service \"web\""), "{message}");
            assert!(message.contains(&format!("{key} must be between 1 and")), "{message}");
        }
    }

    #[test]
    fn duplicate_names_and_addresses_are_refused() {
        let twice = format!("{}\n{}", with_service(""), with_service("").replace("8080", "8081"));
        let message = parse_err(&twice);
        assert!(message.contains("line 7, column 8: service \"web\": name"), "{message}");
        assert!(message.contains("already used by the service on line 2"), "{message}");
        let message = parse_err(&format!("{}\n{}", with_service(""), with_service("").replace("web", "api")));
        assert!(message.contains("line 9, column 10: service \"api\": listen 127.0.0.1:8080"), "{message}");
        assert!(message.contains("already used by service \"web\""), "{message}");
        let any_port = format!("{}\n{}", with_service(""), with_service("").replace("web", "api")).replace("8080", "0");
        assert_eq!(parse_ok(&any_port).services.len(), 2);
    }

    #[test]
    fn a_file_without_a_service_is_refused() {
        assert_eq!(parse_err(""), "config host.toml: no [[service]]: the file must describe at least one service");
        assert!(parse_err("pid_file = \"p\"\nservice = []").contains("[[service]]"));
    }

    #[test]
    fn a_bad_name_is_refused() {
        for name in ["", "my web", "wéb", "a/b"] {
            let message = parse_err(&with_service("").replace("\"web\"", &format!("{name:?}")));
            assert!(message.contains("line 2, column 8") && message.contains("name may only have"), "{message}");
        }
        assert!(parse_ok(&with_service("").replace("\"web\"", "\"Web_2-x\"")).services.len() == 1);
    }

    #[test]
    fn empty_strings_are_refused() {
        let message = parse_err(&with_service("").replace("\"http\"", "\"\""));
        assert!(message.contains("line 3") && message.contains("plugin must name"), "{message}");
        let message = parse_err(&format!("log_file = \"\"\n{}", with_service("")));
        assert!(message.contains("line 1") && message.contains("log_file must not be empty"), "{message}");
        let message = parse_err(&with_service("user = \"\""));
        assert!(message.contains("line 5") && message.contains("user must not be empty"), "{message}");
    }

    #[test]
    fn load_anchors_paths_at_the_files_directory() {
        let dir = std::env::temp_dir().join(format!("host-config-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("host.toml");
        std::fs::write(&file, format!("pid_file = \"host.pid\"\n{}", with_service(""))).unwrap();
        let config = load(&file);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(config.unwrap().pid_file.unwrap(), dir.join("host.pid"));
    }

    // Found by the fuzzer: a sub-table of the plugin's config written as a table header
    // (`[service.config.nested]`) was refused ("expected a borrowed string"), the same written
    // with a dotted key accepted.
    #[test]
    fn plugin_config_sub_tables_are_accepted_however_written() {
        let header = parse_ok(&with_service("[service.config.nested]\na = 1\n"));
        let dotted = parse_ok(&with_service("[service.config]\nnested.a = 1\n"));
        assert_eq!(header, dotted);
        assert_eq!(header.services[0].service.plugin_config, "[nested]\na = 1\n");
    }

    // Found by the fuzzer: an error right after a non-ASCII character before `=` panicked (a
    // byte index inside the character) instead of naming the key.
    #[test]
    fn an_error_after_a_non_ascii_character_is_reported() {
        let message = parse_err("[[service]]\nname = \"web\"\nplugin = \"http\"\nlisten = \"127.0a-8 7\u{80}me = \n");
        assert!(message.contains("line 4"), "{message}");
        assert!(parse_err("é = 1\n").contains("host.toml"));
    }

    #[test]
    fn a_missing_file_is_named() {
        let message = load(Path::new("/nonexistent/host.toml")).unwrap_err().to_string();
        assert!(message.starts_with("could not read config /nonexistent/host.toml: "), "{message}");
    }

    // Every bound of the shared builder, as the file spells the keys (with the line).
    #[test]
    fn numbers_out_of_range_are_refused_with_their_key_and_line() {
        let cases = [
            ("count = 0", "count must be between 1 and 1024 workers, not 0"),
            ("count = 5000000000", "count must be between 1 and 1024 workers, not 5000000000"),
            ("max_package_size = 0", "max_package_size must be between 1 and 9223372036854775807 bytes"),
            ("max_send_buffer = 9223372036854775807", ""),
            ("max_connections = 0", "max_connections must be between 1 and 16777216 connections"),
            ("max_connections = 16777217", "max_connections must be between 1"),
            ("idle_timeout = 31536001", "idle_timeout must be between 0 and 31536000 seconds, not 31536001"),
            ("message_timeout = 9223372036854775807", "message_timeout must be between 0 and 31536000 seconds"),
            ("max_memory = \"lots\"", "max_memory: \"lots\" is not a size"),
            ("max_memory = \"64M\"", ""),
            ("max_memory = 67108864", ""),
            ("max_requests = 0", ""),
            ("handover_timeout = 0", "handover_timeout must be between 1 and 86400 seconds, not 0"),
            ("handover_timeout = 86401", "handover_timeout must be between 1 and 86400 seconds"),
        ];
        for (line, want) in cases {
            let text = with_service(&format!("{line}\n"));
            if want.is_empty() {
                parse_ok(&text);
                continue;
            }
            let message = parse_err(&text);
            assert!(message.contains(want), "{line}: {message}");
            assert!(message.contains("line 5"), "{line}: {message}");
        }
        // Above i64 (TOML's integers) is refused by the TOML parser itself, naming the key.
        assert!(parse_err(&with_service("max_send_buffer = 18446744073709551615\n")).contains("max_send_buffer"));
        assert!(parse_err(&with_service("idle_timeout = -1\n")).contains("idle_timeout"));
        let ok = parse_ok(&with_service("idle_timeout = 31536000\nmessage_timeout = 0\n"));
        assert_eq!(ok.services[0].service.limits.idle_timeout_ms, 31_536_000_000);
        assert_eq!(ok.services[0].service.limits.message_timeout_ms, 0);
        let ok = parse_ok(&with_service("handover_timeout = 3\n"));
        assert_eq!(ok.services[0].service.limits.handover_timeout_ms, 3000);
    }

    #[test]
    fn stop_timeouts_out_of_range_are_refused() {
        for value in ["-1", "86400.5", "inf", "nan", "-inf"] {
            let message = parse_err(&format!("kill_timeout = {value}\n{}", with_service("")));
            assert!(message.contains("kill_timeout must be between 0 and 86400 seconds"), "{value}: {message}");
        }
        assert_eq!(
            parse_ok(&format!("drain_timeout = 86400\n{}", with_service(""))).drain_timeout,
            Some(Duration::from_secs(86400))
        );
    }
}
