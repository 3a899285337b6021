//! The command line, after Workerman: `host start [-d]`, `stop [-g]`, `restart`, `reload [-g]`,
//! `status [--live]`, `connections`, `reopen-logs`; `host --plugin http --count 4` is `start` in
//! the foreground.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Service, Setting, SettingError, Settings, Source};
use crate::listen::Listen;
use crate::scaffold::Template;
use crate::tls::TlsFiles;

#[derive(Debug, Parser)]
#[command(name = "host", version, about = "A prefork server whose protocol handlers are plugins")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub start: StartArgs,
    #[command(flatten)]
    pub global: GlobalArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the master and its workers (in the foreground unless -d).
    Start(StartCmd),
    /// Stop the running master and its workers (-g: let them finish their connections first).
    Stop {
        #[arg(short, long)]
        graceful: bool,
    },
    /// Stop the running master (if any), then start again.
    Restart(RestartCmd),
    /// Replace every worker, one at a time, with the plugin files as they are now. Answers once
    /// every slot's replacement is ready; the hand-overs it starts end after (their outcome: the
    /// log's `hand-over:` lines, `host status`, or `--handovers`).
    Reload {
        /// Old workers drain their connections instead of closing them.
        #[arg(short, long)]
        graceful: bool,
        /// Answer once the hand-overs the reload starts have ended too, with their outcome
        /// (connections moved and drained; at most the old workers' kill deadlines later).
        #[arg(long)]
        handovers: bool,
    },
    /// Replace the master's own program with the binary now installed at its path, without
    /// closing a socket or dropping a connection (same pid), then move every worker onto it.
    /// Answers once that chain's replacements are ready (as `reload`).
    Upgrade {
        /// Answer once the hand-overs of that chain have ended too, with their outcome
        /// (connections moved and drained; at most the old workers' kill deadlines later).
        #[arg(long)]
        handovers: bool,
    },
    /// Show the master, its services and every worker (exit code 3 when no host runs).
    Status {
        /// Refresh every second until interrupted.
        #[arg(long, conflicts_with = "json")]
        live: bool,
        /// The same data as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// List every connection of every worker.
    Connections {
        /// The same data as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Reopen the log file (daemon) and every access log, after logrotate moved them; answers
    /// once every worker writes to the new files.
    ReopenLogs,
    /// Print a shell completion script (e.g. `host completions bash > /etc/bash_completion.d/host`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff; e.g. `host man > host.1 && man ./host.1`).
    Man,
    /// Load a plugin file in this process, check its ABI, print its name and version.
    CheckPlugin {
        /// The plugin's `.so` file.
        path: PathBuf,
        /// Switch to this user before loading (the master probes as the service's user).
        #[arg(long, hide = true)]
        user: Option<String>,
        /// Switch to this group before loading.
        #[arg(long, hide = true)]
        group: Option<String>,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Plugin authoring: `host plugin new NAME` creates a plugin crate that builds and serves at once.
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// Check the state a running master hands over at an upgrade (run by that master).
    #[command(hide = true)]
    UpgradeCheck,
    /// Run one worker (started by the master, not by hand).
    #[command(hide = true)]
    Worker {
        #[command(flatten)]
        log: LogArgs,
    },
}

/// `host restart`: a start, after stopping the running master (gracefully with -g). With no
/// start options, the running master's own are used.
#[derive(Debug, Clone, Args)]
pub struct RestartCmd {
    /// Stop the running master gracefully (its workers finish their connections first).
    #[arg(short, long)]
    pub graceful: bool,
    #[command(flatten)]
    pub start: StartCmd,
}

#[derive(Debug, Subcommand)]
pub enum PluginCmd {
    /// Create a plugin crate with an echo handler and a unit test: `plugins/NAME` inside the
    /// host's workspace (added to its members), else `DIR/NAME`, a crate of its own.
    New {
        /// The crate's name; its library name (`-` becomes `_`) is the plugin's name.
        name: String,
        /// The template's framing.
        #[arg(long, value_enum, default_value_t = Template::Text)]
        protocol: Template,
        /// Create a standalone crate in DIR/NAME (default: ./NAME outside the host's workspace).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct StartCmd {
    /// Run in the background (returns once every worker is ready); logs go to --log-file.
    #[arg(short, long)]
    pub daemon: bool,
    #[command(flatten)]
    pub args: StartArgs,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Services from a TOML file (see examples/host.toml) instead of --plugin/--count/--listen.
    #[arg(short = 'c', long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the master writes its pid; the control socket sits beside it (`.sock`).
    /// Default: the config file's `pid_file`, else one per start in $XDG_RUNTIME_DIR/host/ (/run/host
    /// for root, /tmp/host-UID without XDG_RUNTIME_DIR), named after the config file or the first
    /// service (`web.pid`, `http-127.0.0.1-8080.pid`); control commands then act on the one host
    /// running there.
    #[arg(long, global = true, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
}

/// How a process that runs (the master, a worker, a probe) logs. Control commands print their
/// answers and take no log options.
#[derive(Debug, Clone, Default, Args)]
pub struct LogArgs {
    /// Log filter (`info`, `debug`, `host=debug,my_plugin=trace`…); RUST_LOG wins when set
    /// [default: info].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log lines as text, or one JSON object per line (stable field names, for journald, Loki…)
    /// [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

impl LogArgs {
    pub fn level(&self) -> &str {
        self.log_level.as_deref().unwrap_or("info")
    }

    pub fn format(&self) -> LogFormat {
        self.log_format.unwrap_or(LogFormat::Text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Args)]
pub struct StartArgs {
    /// The protocol plugin: a name looked up in the plugin directories, or a path to a `.so`.
    #[arg(long, short = 'p')]
    pub plugin: Option<String>,
    /// Worker processes for the service [default: 1].
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Address to listen on: ADDR:PORT, [IPV6]:PORT ([::]:PORT: IPv6 and IPv4), HOST:PORT, a
    /// port alone (127.0.0.1:PORT), udp://ADDR:PORT, or unix:/PATH (port 0: the system picks one,
    /// and the log says which) [default: 127.0.0.1:8080].
    #[arg(long, short = 'l')]
    #[arg(value_parser = parse_listen)]
    pub listen: Option<Listen>,
    /// The Unix socket file's mode, in octal (e.g. 0660) [default: as the umask leaves it].
    #[arg(long, value_name = "MODE")]
    pub unix_mode: Option<String>,
    /// The service's name in logs (default: the plugin's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Where plugins are looked up, in order (default: ./plugins, then the host binary's directory).
    #[arg(long = "plugin-dir", value_name = "DIR")]
    pub plugin_dirs: Vec<PathBuf>,
    /// Configuration handed to the plugin, as TOML (e.g. 'root = "/srv/www"' for http).
    #[arg(long, value_name = "TOML")]
    pub plugin_config: Option<String>,
    /// The largest message a connection may send, in bytes [default: 1 MiB].
    #[arg(long, value_name = "BYTES")]
    pub max_package_size: Option<u64>,
    /// Bytes queued for a connection above which reading from it pauses [default: 1 MiB].
    #[arg(long, value_name = "BYTES")]
    pub max_send_buffer: Option<u64>,
    /// The largest message a topic's publish takes, in bytes [default: 1 MiB; at most 64 MiB].
    #[arg(long, value_name = "BYTES")]
    pub topic_max_message: Option<u64>,
    /// The longest topic name, in bytes [default: 256; at most 1024].
    #[arg(long, value_name = "BYTES")]
    pub topic_max_len: Option<u64>,
    /// The most topics one connection may be subscribed to [default: 64].
    #[arg(long, value_name = "N")]
    pub topics_per_connection: Option<u64>,
    /// Connections one worker serves at most [default: 10000].
    #[arg(long)]
    pub max_connections: Option<u64>,
    /// Messages a worker handles before it is replaced by a fresh one, gracefully, ±10 % per
    /// worker (0: never) [default: 0].
    #[arg(long, value_name = "N")]
    pub max_requests: Option<u64>,
    /// Resident memory (e.g. 64M, 1G) above which a worker is replaced gracefully, ±10 % per
    /// worker; at 1.5 times it, it is killed (0: never) [default: 0].
    #[arg(long, value_name = "SIZE", value_parser = config::parse_size)]
    pub max_memory: Option<u64>,
    /// Replaced workers (reload, upgrade, recycling) drain their connections instead of handing
    /// them over to their replacement.
    #[arg(long)]
    pub no_handover: bool,
    /// A hand-over moves all of a worker's connections at once, every client paused for the
    /// whole of it, even when the plugin can move them in batches (the default: a batch at a
    /// time, the old worker serving the rest meanwhile).
    #[arg(long)]
    pub no_handover_batches: bool,
    /// Seconds a replacement may take to adopt a replaced worker's connections, counted from the
    /// worker state sent; past them the replacement is killed, and the replaced worker takes back
    /// what it did not acknowledge and drains [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub handover_timeout: Option<u64>,
    /// Seconds without traffic after which a connection is closed (0: never) [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub idle_timeout: Option<u64>,
    /// Seconds draining workers may keep their connections on a graceful stop or reload [default: 5].
    #[arg(long, value_name = "SECONDS")]
    pub drain_timeout: Option<f64>,
    /// Seconds a worker told to stop has before it is killed [default: 2].
    #[arg(long, value_name = "SECONDS")]
    pub kill_timeout: Option<f64>,
    /// Seconds one message may take to arrive whole, from its first byte (0: never) [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub message_timeout: Option<u64>,
    /// Threads of each worker's task pool at most, for plugin work off the event loop; started
    /// when tasks need them [default: 4].
    #[arg(long, value_name = "N")]
    pub task_threads: Option<u64>,
    /// Jobs waiting for a task thread at most, per worker; past it a plugin's submit is
    /// refused [default: 1024].
    #[arg(long, value_name = "N")]
    pub task_queue: Option<u64>,
    /// Serve over TLS with this PEM certificate (chain) file; needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Append the service's access log to this file (the plugin formats the lines; `host
    /// reopen-logs` reopens it after a rotation) [default: off].
    #[arg(long, value_name = "FILE")]
    pub access_log: Option<PathBuf>,
    /// Share topics with every host started with the same URL and service name, through a
    /// broker: `redis://[[USER]:PASSWORD@]HOST:PORT` (Redis 6+),
    /// `redis+cluster://HOST:PORT[,HOST:PORT…]` (a Redis 7 Cluster: sharded pub/sub) or
    /// `nats://[USER:PASS@|TOKEN@]HOST:PORT`; over TLS `rediss://`, `tls://` (NATS), with
    /// `?ca=FILE&cert=FILE&key=FILE` (each optional; cert and key together) [default: the
    /// workers of this host only].
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
    /// Where a daemon's logs go [default: ./host.log].
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    #[command(flatten)]
    pub log: LogArgs,
    /// Serve `GET /metrics` (Prometheus) and `GET /healthz` on this address [default: off].
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin_listen: Option<SocketAddr>,
    /// Seconds a worker may show no progress (stuck in a plugin) before it is killed and
    /// replaced (0: never) [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub worker_timeout: Option<f64>,
    /// Seconds the check of a new plugin file may take before it is refused [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub probe_timeout: Option<f64>,
    /// Load plugin files (or directories) that others than their owner may write, or that a
    /// user other than root or the host's owns.
    #[arg(long)]
    pub insecure_plugins: bool,
    /// The workers' I/O: epoll (readiness, a system call per receive and send) or uring
    /// (io_uring: a turn's receives and sends in one system call; a worker where io_uring is
    /// unavailable uses epoll and logs it) [default: epoll].
    #[arg(long, value_name = "BACKEND")]
    pub io: Option<crate::config::IoBackend>,
}

/// A listen address (see [`crate::listen`]: the config file's `listen` takes the same).
pub fn parse_listen(text: &str) -> Result<Listen, String> {
    crate::listen::parse(text)
}

impl StartArgs {
    /// Flags that describe a service (they may not be mixed with a config file).
    pub fn service_flags(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        let flags: [(&'static str, bool); 25] = [
            ("--plugin", self.plugin.is_some()),
            ("--count", self.count.is_some()),
            ("--listen", self.listen.is_some()),
            ("--unix-mode", self.unix_mode.is_some()),
            ("--name", self.name.is_some()),
            ("--plugin-config", self.plugin_config.is_some()),
            ("--max-package-size", self.max_package_size.is_some()),
            ("--max-send-buffer", self.max_send_buffer.is_some()),
            ("--max-connections", self.max_connections.is_some()),
            ("--idle-timeout", self.idle_timeout.is_some()),
            ("--message-timeout", self.message_timeout.is_some()),
            ("--task-threads", self.task_threads.is_some()),
            ("--task-queue", self.task_queue.is_some()),
            ("--topic-max-message", self.topic_max_message.is_some()),
            ("--topic-max-len", self.topic_max_len.is_some()),
            ("--topics-per-connection", self.topics_per_connection.is_some()),
            ("--max-requests", self.max_requests.is_some()),
            ("--max-memory", self.max_memory.is_some()),
            ("--tls-cert", self.tls_cert.is_some()),
            ("--tls-key", self.tls_key.is_some()),
            ("--access-log", self.access_log.is_some()),
            ("--no-handover", self.no_handover),
            ("--no-handover-batches", self.no_handover_batches),
            ("--handover-timeout", self.handover_timeout.is_some()),
            ("--cluster", self.cluster.is_some()),
        ];
        for (flag, given) in flags {
            if given {
                set.push(flag);
            }
        }
        set
    }

    /// Every start flag given (service flags, plugin directories, log file).
    pub fn given(&self) -> Vec<&'static str> {
        let mut set = self.service_flags();
        if !self.plugin_dirs.is_empty() {
            set.push("--plugin-dir");
        }
        if self.log_file.is_some() {
            set.push("--log-file");
        }
        if self.drain_timeout.is_some() {
            set.push("--drain-timeout");
        }
        if self.kill_timeout.is_some() {
            set.push("--kill-timeout");
        }
        if self.admin_listen.is_some() {
            set.push("--admin-listen");
        }
        if self.log.log_level.is_some() {
            set.push("--log-level");
        }
        if self.log.log_format.is_some() {
            set.push("--log-format");
        }
        if self.worker_timeout.is_some() {
            set.push("--worker-timeout");
        }
        if self.probe_timeout.is_some() {
            set.push("--probe-timeout");
        }
        if self.insecure_plugins {
            set.push("--insecure-plugins");
        }
        if self.io.is_some() {
            set.push("--io");
        }
        set
    }

    /// The drain and kill timeouts given, each within its bounds.
    pub fn stop_timeouts(&self) -> Result<(Option<Duration>, Option<Duration>), SettingError> {
        Ok((
            config::stop_timeout(Source::Flags, Setting::DrainTimeout, self.drain_timeout)?,
            config::stop_timeout(Source::Flags, Setting::KillTimeout, self.kill_timeout)?,
        ))
    }

    /// The service these flags describe, every number within its bounds.
    pub fn service(&self) -> Result<Service, SettingError> {
        let plugin = self.plugin.clone().ok_or_else(|| {
            SettingError::Invalid("no plugin given: use --plugin NAME (e.g. --plugin http) or -c FILE".into())
        })?;
        let name = self.name.clone().unwrap_or_else(|| {
            let stem = std::path::Path::new(&plugin).file_stem().and_then(|s| s.to_str()).unwrap_or("service");
            stem.strip_prefix("lib").unwrap_or(stem).to_string()
        });
        let settings = Settings {
            count: self.count,
            max_package_size: self.max_package_size,
            max_send_buffer: self.max_send_buffer,
            max_connections: self.max_connections,
            idle_timeout: self.idle_timeout,
            message_timeout: self.message_timeout,
            task_threads: self.task_threads,
            task_queue: self.task_queue,
            topic_max_message: self.topic_max_message,
            topic_max_len: self.topic_max_len,
            topics_per_connection: self.topics_per_connection,
            handover_timeout: self.handover_timeout,
        };
        let (count, limits) = settings.build(Source::Flags)?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles::new(absolute(cert)?, absolute(key)?, None, &plugin)),
            _ => None,
        };
        let mut listen =
            self.listen.clone().unwrap_or_else(|| config::DEFAULT_LISTEN.parse().expect("a valid default"));
        if let Some(mode) = &self.unix_mode {
            listen.set_unix_mode("--unix-mode", mode).map_err(SettingError::Invalid)?;
        }
        let service = Service {
            name,
            plugin,
            listen,
            count,
            plugin_config: self.plugin_config.clone().unwrap_or_default(),
            limits,
            tls,
            access_log: self.access_log.as_deref().map(absolute).transpose()?,
            recycle: config::Recycle {
                max_requests: self.max_requests.unwrap_or(0),
                max_memory: self.max_memory.unwrap_or(0),
            },
            handover: !self.no_handover,
            handover_batches: !self.no_handover_batches,
            cluster: self.cluster.clone(),
        };
        config::validate(&service)?;
        Ok(service)
    }
}

/// A path from the command line, made absolute (the master may change directory).
fn absolute(path: &std::path::Path) -> Result<PathBuf, SettingError> {
    std::path::absolute(path).map_err(|e| SettingError::Invalid(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("host").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn bare_flags_mean_start() {
        let cli = parse(&["--plugin", "http", "--count", "4"]);
        assert!(cli.command.is_none());
        let s = cli.start.service().unwrap();
        assert_eq!((s.name.as_str(), s.count, s.listen.to_string().as_str()), ("http", 4, "127.0.0.1:8080"));
    }

    #[test]
    fn workerman_verbs_parse() {
        let cli = parse(&["start", "-d", "--plugin", "/x/libtext.so", "--pid-file", "/tmp/h.pid"]);
        let Some(Command::Start(cmd)) = cli.command else { panic!("start expected") };
        assert!(cmd.daemon);
        assert_eq!(cmd.args.service().unwrap().name, "text");
        assert_eq!(cli.global.pid_file, Some(PathBuf::from("/tmp/h.pid")));
        assert!(matches!(parse(&["stop", "-g"]).command, Some(Command::Stop { graceful: true })));
        assert!(matches!(parse(&["reload"]).command, Some(Command::Reload { graceful: false, handovers: false })));
        assert!(matches!(parse(&["reopen-logs"]).command, Some(Command::ReopenLogs)));
        assert!(matches!(parse(&["status", "--live"]).command, Some(Command::Status { live: true, .. })));
        assert!(matches!(parse(&["status", "--json"]).command, Some(Command::Status { json: true, .. })));
        assert!(Cli::try_parse_from(["host", "status", "--json", "--live"]).is_err());
        assert!(matches!(parse(&["connections", "-c", "h.toml"]).command, Some(Command::Connections { json: false })));
        assert!(matches!(
            parse(&["restart", "-d", "-g"]).command,
            Some(Command::Restart(RestartCmd { graceful: true, start: StartCmd { daemon: true, .. } }))
        ));
    }

    #[test]
    fn plugin_new_parses() {
        let cli = parse(&["plugin", "new", "my-proto", "--protocol", "http", "--dir", "/tmp"]);
        let Some(Command::Plugin(PluginCmd::New { name, protocol, dir })) = cli.command else { panic!("plugin new") };
        assert_eq!((name.as_str(), protocol, dir), ("my-proto", Template::Http, Some(PathBuf::from("/tmp"))));
        let cli = parse(&["plugin", "new", "x"]);
        assert!(matches!(
            cli.command,
            Some(Command::Plugin(PluginCmd::New { protocol: Template::Text, dir: None, .. }))
        ));
        assert!(Cli::try_parse_from(["host", "plugin", "new", "x", "--protocol", "smtp"]).is_err());
        assert!(Cli::try_parse_from(["host", "plugin", "new"]).is_err());
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(Cli::try_parse_from(["host", "--count", "x"]).is_err());
        assert!(Cli::try_parse_from(["host", "--listen", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["host", "stop", "--plugin", "http"]).is_err());
        // Global options may come before the subcommand.
        let cli = parse(&["-c", "h.toml", "status"]);
        assert!(matches!(cli.command, Some(Command::Status { live: false, .. })));
        assert_eq!(cli.global.config, Some(PathBuf::from("h.toml")));
        assert!(matches!(parse(&["--pid-file", "x.pid", "stop"]).command, Some(Command::Stop { .. })));
        // Start flags before a subcommand are parsed, then refused by `main`.
        assert_eq!(parse(&["--plugin", "http", "stop"]).start.given(), vec!["--plugin"]);
        assert!(parse(&["--count", "2"]).start.service().unwrap_err().to_string().contains("--plugin"));
        assert!(parse(&["--plugin", "http", "--count", "0"]).start.service().is_err());
    }

    #[test]
    fn listen_takes_a_port_alone_a_host_name_or_an_address() {
        assert_eq!(parse_listen("8080").unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(parse_listen("0.0.0.0:80").unwrap().to_string(), "0.0.0.0:80");
        assert_eq!(parse_listen("[::1]:9000").unwrap().to_string(), "[::1]:9000");
        assert!(parse_listen("localhost:8080").unwrap().ip().unwrap().ip().is_loopback());
        assert_eq!(parse_listen("udp://127.0.0.1:53").unwrap().to_string(), "udp://127.0.0.1:53");
        let s = parse(&["--plugin", "http", "-l", "unix:/tmp/h.sock", "--unix-mode", "0600"]).start.service().unwrap();
        assert_eq!(s.listen, Listen::Unix { path: "/tmp/h.sock".into(), mode: Some(0o600) });
        let e = parse(&["--plugin", "http", "--unix-mode", "0600"]).start.service().unwrap_err().to_string();
        assert!(e.contains("--unix-mode is for a Unix socket"), "{e}");
        assert!(parse_listen("nowhere").is_err());
        assert!(parse_listen("99999").is_err());
        // `start -g` means nothing: only restart stops something gracefully.
        assert!(Cli::try_parse_from(["host", "start", "-g", "--plugin", "http"]).is_err());
    }

    #[test]
    fn service_flags_are_listed() {
        assert_eq!(parse(&["--plugin", "http", "-n", "2"]).start.service_flags(), vec!["--plugin", "--count"]);
        assert!(parse(&[]).start.service_flags().is_empty());
    }

    // Every bound of the shared builder, as the flags spell them: an error, never a wrap.
    #[test]
    fn numbers_out_of_range_are_refused() {
        let err = |args: &[&str]| {
            let mut all = vec!["--plugin", "http"];
            all.extend_from_slice(args);
            parse(&all).start.service().unwrap_err().to_string()
        };
        assert_eq!(err(&["--count", "0"]), "--count must be between 1 and 1024 workers, not 0");
        assert_eq!(err(&["--count", "4294967297"]), "--count must be between 1 and 1024 workers, not 4294967297");
        assert_eq!(
            err(&["--idle-timeout", "10000000000000000"]),
            "--idle-timeout must be between 0 and 31536000 seconds, not 10000000000000000"
        );
        assert!(err(&["--message-timeout", "31536001"]).starts_with("--message-timeout must be between 0 and"));
        assert_eq!(
            err(&["--max-send-buffer", "18446744073709551615"]),
            "--max-send-buffer must be between 1 and 9223372036854775807 bytes, not 18446744073709551615"
        );
        assert!(err(&["--max-package-size", "0"]).starts_with("--max-package-size must be between 1 and"));
        assert!(err(&["--max-connections", "16777217"]).starts_with("--max-connections must be between 1 and 16777216"));
        assert_eq!(err(&["--handover-timeout", "0"]), "--handover-timeout must be between 1 and 86400 seconds, not 0");
        assert!(err(&["--handover-timeout", "86401"]).starts_with("--handover-timeout must be between 1 and 86400"));
        let s = parse(&["--plugin", "http", "--handover-timeout", "3"]).start.service().unwrap();
        assert_eq!(s.limits.handover_timeout_ms, 3000);
        let s = parse(&["--plugin", "http"]).start.service().unwrap();
        assert_eq!(s.limits.handover_timeout_ms, 10_000, "10 s by default");
        assert!(s.handover_batches, "in batches by default");
        let s = parse(&["--plugin", "http", "--no-handover-batches"]).start.service().unwrap();
        assert!(!s.handover_batches && s.handover, "all at once, still handed over");
        // The largest values pass, converted without overflow.
        let s = parse(&["--plugin", "http", "--idle-timeout", "31536000", "--max-send-buffer", "9223372036854775807"])
            .start
            .service()
            .unwrap();
        assert_eq!(s.limits.idle_timeout_ms, 31_536_000_000);
        assert_eq!(s.limits.max_send_buffer as u64, i64::MAX as u64);
        // Beyond u64: clap refuses it.
        assert!(Cli::try_parse_from(["host", "--max-send-buffer", "18446744073709551616"]).is_err());
    }

    #[test]
    fn stop_timeouts_out_of_range_are_refused() {
        for value in ["nan", "inf", "-1", "86400.001"] {
            let arg = format!("--drain-timeout={value}");
            let cli = Cli::try_parse_from(["host", "--plugin", "http", arg.as_str()]).unwrap();
            let e = cli.start.stop_timeouts().unwrap_err().to_string();
            assert!(e.starts_with("--drain-timeout must be between 0 and 86400 seconds"), "{value}: {e}");
        }
        let cli = parse(&["--plugin", "http", "--kill-timeout", "0.5"]);
        assert_eq!(cli.start.stop_timeouts().unwrap(), (None, Some(Duration::from_millis(500))));
    }
}
