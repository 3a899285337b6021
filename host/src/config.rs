//! What a service is and how a worker is configured: plain data, validated here, no syscalls.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_MAX_PACKAGE_SIZE: usize = 1024 * 1024;
pub const DEFAULT_MAX_SEND_BUFFER: usize = 1024 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
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

/// One service: a listening address served by `count` workers running one plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    /// The plugin's name (`http`) or a path to its `.so`.
    pub plugin: String,
    pub listen: SocketAddr,
    pub count: u32,
    /// TOML text handed to the plugin as is.
    pub plugin_config: String,
    pub limits: Limits,
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
        }
    }
}

/// Everything a worker needs, sent by the master over the worker's control socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub service: String,
    pub slot: u32,
    /// The plugin file the worker loads.
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
}

impl WorkerSpec {
    pub fn encode(&self) -> String {
        toml::to_string(self).expect("a WorkerSpec always serializes")
    }

    pub fn decode(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

/// Checks what flags cannot: a service that could never run.
pub fn validate(service: &Service) -> Result<(), String> {
    if service.count == 0 {
        return Err("--count must be at least 1".into());
    }
    if service.count > MAX_COUNT {
        return Err(format!("--count {} is more than {MAX_COUNT} workers", service.count));
    }
    if service.plugin.is_empty() {
        return Err("--plugin must name a plugin".into());
    }
    if service.limits.max_package_size == 0 || service.limits.max_send_buffer == 0 {
        return Err("size limits must be above 0".into());
    }
    if let Err(e) = service.plugin_config.parse::<toml::Table>() {
        return Err(format!("--plugin-config is not valid TOML: {e}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> Service {
        Service {
            name: "http".into(),
            plugin: "http".into(),
            listen: DEFAULT_LISTEN.parse().unwrap(),
            count: 4,
            plugin_config: "root = \"/srv\"".into(),
            limits: Limits::default(),
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
        };
        assert_eq!(WorkerSpec::decode(&spec.encode()).unwrap(), spec);
    }

    #[test]
    fn validation_refuses_what_cannot_run() {
        assert!(validate(&service()).is_ok());
        assert!(validate(&Service { count: 0, ..service() }).unwrap_err().contains("--count"));
        let bad = Service { plugin_config: "root = ".into(), ..service() };
        assert!(validate(&bad).unwrap_err().contains("TOML"));
    }
}
