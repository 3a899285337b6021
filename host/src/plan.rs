//! The start plan: the start flags and the config file, resolved once into everything a start
//! needs (services, pid file, plugin directories, timeouts, …), which goes to the master as is.
//!
//! [`resolve`] is pure: the caller reads the config file (once) and says what the defaults are
//! on this machine ([`Defaults`]); nothing is started, no file is looked at. A flag wins over
//! the config file, never silently: the plan lists what it overrode.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{GlobalArgs, StartArgs};
use crate::config::{self, SettingError, Source};
use crate::config_file::{FileConfig, ServiceConfig};

/// Everything a start needs, worked out and checked before anything is started or stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub services: Vec<ServiceConfig>,
    /// What the master's title says it runs: the config file's name, or `PLUGIN LISTEN`.
    pub title: String,
    /// Absolute.
    pub pid_file: PathBuf,
    /// Where plugins named by name are looked up, in order; absolute.
    pub plugin_dirs: Vec<PathBuf>,
    /// A config file describes the services: a plugin file that is missing is waited for (a
    /// plugin named on the command line must exist at the start).
    pub from_file: bool,
    /// The daemon's log file (`start -d`: its stdout and stderr); absolute.
    pub daemon_log: PathBuf,
    pub timeouts: config::Timeouts,
    /// Where the admin listener (`/metrics`, `/healthz`) listens; None: no admin listener.
    pub admin_listen: Option<SocketAddr>,
    /// Load plugin files that others than their owner may write.
    pub insecure_plugins: bool,
    /// (flag, config key) of every setting of the config file a flag overrode.
    pub overrides: Vec<(&'static str, &'static str)>,
    /// The workers' I/O backend (`--io`, `io`; epoll by default).
    pub io: config::IoBackend,
}

/// What a start falls back on when neither the flags nor the config file say.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    /// The directory of a start's default pid file (named after its config file or its first
    /// service: two hosts of one user do not clash).
    pub pid_dir: PathBuf,
    pub plugin_dirs: Vec<PathBuf>,
}

impl Defaults {
    /// This machine's: the per-user runtime directory, `plugins` and the binary's directory.
    pub fn here() -> Self {
        Defaults { pid_dir: crate::pidfile::default_dir(), plugin_dirs: crate::plugin::default_dirs() }
    }
}

/// Why flags and a config file make no plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{} cannot be used with --config: the file describes the services", .0.join(", "))]
    ServiceFlagsWithConfig(Vec<&'static str>),
    #[error(transparent)]
    Setting(#[from] SettingError),
}

/// The daemon's log file when neither `--log-file` nor `log_file` names one.
const DEFAULT_DAEMON_LOG: &str = "host.log";

/// Resolves the start flags and the config file (`file`: the one `--config` names, read) into
/// one plan.
pub fn resolve(
    global: &GlobalArgs,
    args: &StartArgs,
    file: Option<FileConfig>,
    defaults: Defaults,
) -> Result<Plan, PlanError> {
    let (services, title, file) = match (file, &global.config) {
        (Some(mut file), path) => {
            let flags = args.service_flags();
            if !flags.is_empty() {
                return Err(PlanError::ServiceFlagsWithConfig(flags));
            }
            let path = path.as_deref().unwrap_or(Path::new("config"));
            let title =
                path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
            (std::mem::take(&mut file.services), title, Some(file))
        }
        (None, _) => {
            let service = args.service()?;
            let title = format!("{} {}", service.plugin, service.listen);
            (vec![ServiceConfig { service, reloadable: true, user: None, group: None }], title, None)
        }
    };
    let file = file.as_ref();
    let from_file = |f: fn(&FileConfig) -> Option<Duration>| file.and_then(f);
    let (drain_flag, kill_flag) = args.stop_timeouts()?;
    let seconds = |setting, value| config::stop_timeout(Source::Flags, setting, value);
    let worker = seconds(config::Setting::WorkerTimeout, args.worker_timeout)?
        .or(from_file(|f| f.worker_timeout))
        .unwrap_or(config::WORKER_TIMEOUT);
    let timeouts = config::Timeouts {
        start: config::START_TIMEOUT,
        drain: drain_flag.or(from_file(|f| f.drain_timeout)).unwrap_or(config::DRAIN_TIMEOUT),
        kill: kill_flag.or(from_file(|f| f.kill_timeout)).unwrap_or(config::KILL_TIMEOUT),
        worker: (!worker.is_zero()).then_some(worker),
        probe: seconds(config::Setting::ProbeTimeout, args.probe_timeout)?
            .or(from_file(|f| f.probe_timeout))
            .unwrap_or(config::PROBE_TIMEOUT)
            .max(config::MIN_PROBE_TIMEOUT),
    };
    let file_dirs = file.map(|f| f.plugin_dirs.clone()).unwrap_or_default();
    let overrides: Vec<(&'static str, &'static str)> = [
        ("--plugin-dir", "plugin_dirs", !args.plugin_dirs.is_empty() && !file_dirs.is_empty()),
        ("--pid-file", "pid_file", global.pid_file.is_some() && file.is_some_and(|f| f.pid_file.is_some())),
        ("--log-file", "log_file", args.log_file.is_some() && file.is_some_and(|f| f.log_file.is_some())),
        ("--drain-timeout", "drain_timeout", drain_flag.is_some() && from_file(|f| f.drain_timeout).is_some()),
        ("--kill-timeout", "kill_timeout", kill_flag.is_some() && from_file(|f| f.kill_timeout).is_some()),
        (
            "--admin-listen",
            "admin_listen",
            args.admin_listen.is_some() && file.is_some_and(|f| f.admin_listen.is_some()),
        ),
    ]
    .into_iter()
    .filter(|o| o.2)
    .map(|(flag, key, _)| (flag, key))
    .collect();
    let dirs = if args.plugin_dirs.is_empty() { file_dirs } else { args.plugin_dirs.clone() };
    let dirs = if dirs.is_empty() { defaults.plugin_dirs } else { dirs };
    let pid_file = global.pid_file.clone().or_else(|| file.and_then(|f| f.pid_file.clone())).unwrap_or_else(|| {
        let first = services.first().map(|s| (s.service.name.as_str(), s.service.listen.to_string()));
        let first = first.as_ref().map(|(name, listen)| (*name, listen.as_str()));
        defaults.pid_dir.join(crate::pidfile::pid_file_name(global.config.as_deref(), first))
    });
    let daemon_log = args
        .log_file
        .clone()
        .or_else(|| file.and_then(|f| f.log_file.clone()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DAEMON_LOG));
    Ok(Plan {
        services,
        title,
        pid_file: absolute(pid_file),
        plugin_dirs: dirs.into_iter().map(absolute).collect(),
        from_file: file.is_some(),
        daemon_log: absolute(daemon_log),
        timeouts,
        admin_listen: args.admin_listen.or(file.and_then(|f| f.admin_listen)),
        insecure_plugins: args.insecure_plugins || file.is_some_and(|f| f.insecure_plugins),
        overrides,
        io: args.io.or(file.and_then(|f| f.io)).unwrap_or_default(),
    })
}

/// `path` made absolute against the current directory (as it is, if that cannot be known).
fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    /// The global and start arguments of `host start ARGS…`.
    fn args(line: &[&str]) -> (GlobalArgs, StartArgs) {
        let cli = Cli::try_parse_from(["host", "start"].iter().chain(line)).unwrap();
        match cli.command {
            Some(Command::Start(cmd)) => (cli.global, cmd.args),
            other => panic!("{other:?}"),
        }
    }

    fn defaults() -> Defaults {
        Defaults { pid_dir: "/run/user".into(), plugin_dirs: vec!["/opt/host/plugins".into()] }
    }

    fn file(text: &str) -> FileConfig {
        crate::config_file::parse(text, Path::new("/etc/host"), "host.toml").unwrap()
    }

    const TWO: &str = r#"
pid_file = "run/host.pid"
log_file = "/var/log/host.log"
plugin_dirs = ["plugins"]
drain_timeout = 7
worker_timeout = 0
admin_listen = "127.0.0.1:9100"

[[service]]
name = "web"
plugin = "http"
listen = "127.0.0.1:8080"

[[service]]
name = "lines"
plugin = "text"
listen = "127.0.0.1:7000"
"#;

    #[test]
    fn flags_only_give_one_service_and_the_defaults() {
        let (global, start) = args(&["--plugin", "http", "--listen", "127.0.0.1:8081", "--kill-timeout", "1.5"]);
        let plan = resolve(&global, &start, None, defaults()).unwrap();
        assert_eq!(plan.services.len(), 1);
        assert_eq!(plan.services[0].service.name, "http");
        assert!(plan.services[0].reloadable);
        assert_eq!(plan.title, "http 127.0.0.1:8081");
        assert_eq!(plan.pid_file, PathBuf::from("/run/user/http-127.0.0.1-8081.pid"));
        assert_eq!(plan.plugin_dirs, vec![PathBuf::from("/opt/host/plugins")]);
        assert!(!plan.from_file);
        assert_eq!(plan.daemon_log, absolute(DEFAULT_DAEMON_LOG.into()));
        let t = plan.timeouts;
        assert_eq!((t.drain, t.kill), (config::DRAIN_TIMEOUT, Duration::from_millis(1500)));
        assert_eq!((t.worker, t.probe), (Some(config::WORKER_TIMEOUT), config::PROBE_TIMEOUT));
        assert_eq!(plan.admin_listen, None);
        assert!(plan.overrides.is_empty());
    }

    #[test]
    fn a_file_only_gives_its_services_and_settings() {
        let (global, start) = args(&["-c", "/etc/host/host.toml"]);
        let plan = resolve(&global, &start, Some(file(TWO)), defaults()).unwrap();
        let names: Vec<&str> = plan.services.iter().map(|s| s.service.name.as_str()).collect();
        assert_eq!(names, ["web", "lines"]);
        assert_eq!(plan.title, "host.toml");
        assert!(plan.from_file);
        assert_eq!(plan.pid_file, PathBuf::from("/etc/host/run/host.pid"));
        assert_eq!(plan.plugin_dirs, vec![PathBuf::from("/etc/host/plugins")]);
        assert_eq!(plan.daemon_log, PathBuf::from("/var/log/host.log"));
        assert_eq!(plan.timeouts.drain, Duration::from_secs(7));
        assert_eq!(plan.timeouts.worker, None, "worker_timeout = 0: no watchdog");
        assert_eq!(plan.admin_listen, Some("127.0.0.1:9100".parse().unwrap()));
        assert!(plan.overrides.is_empty());
    }

    #[test]
    fn flags_win_over_the_file_and_say_so() {
        let (global, start) = args(&[
            "-c",
            "/etc/host/host.toml",
            "--pid-file",
            "/tmp/other.pid",
            "--plugin-dir",
            "/srv/plugins",
            "--drain-timeout",
            "1",
            "--log-file",
            "/tmp/host.log",
            "--admin-listen",
            "127.0.0.1:9200",
            "--worker-timeout",
            "3",
        ]);
        let plan = resolve(&global, &start, Some(file(TWO)), defaults()).unwrap();
        assert_eq!(plan.pid_file, PathBuf::from("/tmp/other.pid"));
        assert_eq!(plan.plugin_dirs, vec![PathBuf::from("/srv/plugins")]);
        assert_eq!(plan.timeouts.drain, Duration::from_secs(1));
        assert_eq!(plan.timeouts.worker, Some(Duration::from_secs(3)));
        assert_eq!(plan.daemon_log, PathBuf::from("/tmp/host.log"));
        assert_eq!(plan.admin_listen, Some("127.0.0.1:9200".parse().unwrap()));
        let flags: Vec<&str> = plan.overrides.iter().map(|o| o.0).collect();
        assert_eq!(flags, ["--plugin-dir", "--pid-file", "--log-file", "--drain-timeout", "--admin-listen"]);
    }

    #[test]
    fn bad_flags_are_refused_with_the_reason() {
        // Service flags with a config file.
        let (global, start) = args(&["-c", "/etc/host/host.toml", "--plugin", "http", "--count", "2"]);
        let e = resolve(&global, &start, Some(file(TWO)), defaults()).unwrap_err();
        assert_eq!(e.to_string(), "--plugin, --count cannot be used with --config: the file describes the services");
        // No plugin and no file.
        let (global, start) = args(&[]);
        let e = resolve(&global, &start, None, defaults()).unwrap_err();
        assert!(e.to_string().contains("no plugin given"), "{e}");
        // A timeout out of its bounds.
        let (global, start) = args(&["--plugin", "http", "--drain-timeout", "100000"]);
        let e = resolve(&global, &start, None, defaults()).unwrap_err();
        assert!(matches!(e, PlanError::Setting(SettingError::OutOfRange { .. })), "{e}");
    }
}
