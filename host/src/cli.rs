//! The command line: `host --plugin http --count 4` runs a service in the foreground.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Limits, Service};

#[derive(Debug, Parser)]
#[command(
    name = "host",
    version,
    about = "A prefork server whose protocol handlers are plugins"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub start: StartArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the master and its workers in the foreground (the default command).
    Start(StartArgs),
    /// Load a plugin file in this process, check its ABI, print its name and version.
    CheckPlugin {
        /// The plugin's `.so` file.
        path: PathBuf,
    },
    /// Run one worker (started by the master, not by hand).
    #[command(hide = true)]
    Worker,
}

#[derive(Debug, Clone, Args)]
pub struct StartArgs {
    /// The protocol plugin: a name looked up in the plugin directories, or a path to a `.so`.
    #[arg(long, short = 'p')]
    pub plugin: Option<String>,
    /// Worker processes for the service.
    #[arg(long, short = 'n', default_value_t = 1)]
    pub count: u32,
    /// Address to listen on (port 0: the system picks one, and the log says which).
    #[arg(long, short = 'l', default_value = config::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// The service's name in logs (default: the plugin's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Where plugins are looked up, in order (default: ./plugins, then the host binary's directory).
    #[arg(long = "plugin-dir", value_name = "DIR")]
    pub plugin_dirs: Vec<PathBuf>,
    /// Configuration handed to the plugin, as TOML (e.g. 'root = "/srv/www"' for http).
    #[arg(long, value_name = "TOML", default_value = "")]
    pub plugin_config: String,
    /// The largest message a connection may send, in bytes.
    #[arg(long, default_value_t = config::DEFAULT_MAX_PACKAGE_SIZE)]
    pub max_package_size: usize,
    /// Bytes queued for a connection above which reading from it pauses.
    #[arg(long, default_value_t = config::DEFAULT_MAX_SEND_BUFFER)]
    pub max_send_buffer: usize,
    /// Connections one worker serves at most.
    #[arg(long, default_value_t = config::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Seconds without traffic after which a connection is closed (0: never).
    #[arg(long, value_name = "SECONDS", default_value_t = config::DEFAULT_IDLE_TIMEOUT.as_secs())]
    pub idle_timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log filter (`info`, `debug`, `host=debug,plugin=trace`…); RUST_LOG wins when set.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl StartArgs {
    /// The service these flags describe.
    pub fn service(&self) -> Result<Service, String> {
        let plugin = self
            .plugin
            .clone()
            .ok_or("no plugin given: use --plugin NAME (e.g. --plugin http)")?;
        let name = self.name.clone().unwrap_or_else(|| {
            let stem = std::path::Path::new(&plugin)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("service");
            stem.strip_prefix("lib").unwrap_or(stem).to_string()
        });
        let service = Service {
            name,
            plugin,
            listen: self.listen,
            count: self.count,
            plugin_config: self.plugin_config.clone(),
            limits: Limits {
                max_package_size: self.max_package_size,
                max_send_buffer: self.max_send_buffer,
                max_connections: self.max_connections,
                idle_timeout_ms: self.idle_timeout.saturating_mul(1000),
            },
        };
        config::validate(&service)?;
        Ok(service)
    }
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
        assert_eq!(
            (s.name.as_str(), s.count, s.listen.to_string().as_str()),
            ("http", 4, "127.0.0.1:8080")
        );
    }

    #[test]
    fn service_name_from_a_plugin_path() {
        let cli = parse(&["start", "--plugin", "/x/libtext.so"]);
        let Some(Command::Start(args)) = cli.command else {
            panic!("start expected")
        };
        assert_eq!(args.service().unwrap().name, "text");
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(Cli::try_parse_from(["host", "--count", "x"]).is_err());
        assert!(Cli::try_parse_from(["host", "--listen", "nowhere"]).is_err());
        assert!(parse(&["--count", "2"])
            .start
            .service()
            .unwrap_err()
            .contains("--plugin"));
        assert!(parse(&["--plugin", "http", "--count", "0"])
            .start
            .service()
            .is_err());
    }
}
