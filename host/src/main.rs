//! `host`: a prefork server whose protocol handlers are plugins.

#![deny(unsafe_code)]

mod cli;
mod client;
mod config;
mod config_file;
mod ctl;
mod logging;
mod master;
mod pidfile;
mod plugin;
mod status;
mod sys;
mod tls;
mod watcher;
mod worker;

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, GlobalArgs, LogFormat, StartCmd};
use crate::config_file::ServiceConfig;

/// Set in the environment of the master once it re-executed itself with its title.
const TITLED: &str = "HOST_MASTER_TITLED";

/// `host status` when no host runs (LSB init-script convention: "program is not running").
const EXIT_NOT_RUNNING: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_status = matches!(cli.command, Some(Command::Status { .. }));
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: it panics when stderr is a closed pipe.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            let not_running = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<pidfile::PidFileError>(),
                    Some(pidfile::PidFileError::NotRunning(_) | pidfile::PidFileError::Stale { .. })
                )
            });
            if is_status && not_running {
                ExitCode::from(EXIT_NOT_RUNNING)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let global = &cli.global;
    let stray = cli.start.given();
    if let (Some(_), false) = (&cli.command, stray.is_empty()) {
        bail!("{} must follow the subcommand (e.g. `host start {} …`)", stray.join(", "), stray[0]);
    }
    match cli.command {
        None => start(global, &StartCmd { daemon: false, graceful: false, args: cli.start }),
        Some(Command::Start(ref cmd)) => start(global, cmd),
        Some(Command::Restart(ref cmd)) => {
            let pid_file = pid_file(global, None)?;
            if pidfile::read_running(&pid_file).is_ok() {
                init_logging(global);
                client::stop(&pid_file, cmd.graceful)?;
            }
            start(global, cmd)
        }
        Some(Command::Stop { graceful }) => with_logging(global, |g| client::stop(&pid_file(g, None)?, graceful)),
        Some(Command::Reload { graceful }) => with_logging(global, |g| client::reload(&pid_file(g, None)?, graceful)),
        Some(Command::Status { live, json }) => {
            with_logging(global, |g| client::status(&pid_file(g, None)?, live, json))
        }
        Some(Command::Connections { json }) => with_logging(global, |g| client::connections(&pid_file(g, None)?, json)),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "host",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Some(Command::Man) => {
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
        Some(Command::CheckPlugin { ref path }) => with_logging(global, |_| check_plugin(path)),
        Some(Command::Worker) => with_logging(global, |_| worker::run()),
    }
}

fn with_logging(global: &GlobalArgs, f: impl FnOnce(&GlobalArgs) -> anyhow::Result<()>) -> anyhow::Result<()> {
    init_logging(global);
    f(global)
}

/// The pid file: --pid-file, else the config file's, else the per-user default; always absolute.
fn pid_file(global: &GlobalArgs, from_file: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let from_file = match (from_file, &global.config) {
        (Some(p), _) => Some(p),
        (None, Some(path)) => config_file::load(path)?.pid_file,
        (None, None) => None,
    };
    let path = global.pid_file.clone().or(from_file).unwrap_or_else(pidfile::default_pid_file);
    Ok(std::path::absolute(&path).unwrap_or(path))
}

fn start(global: &GlobalArgs, cmd: &StartCmd) -> anyhow::Result<()> {
    let args = &cmd.args;
    let file_admin = match &global.config {
        Some(path) => config_file::load(path)?.admin_listen,
        None => None,
    };
    let (services, file_dirs, file_pid, file_log, title, file_drain, file_kill) = match &global.config {
        Some(path) => {
            let flags = args.service_flags();
            if !flags.is_empty() {
                bail!("{} cannot be used with --config: the file describes the services", flags.join(", "));
            }
            let file = config_file::load(path)?;
            let services = file.services;
            let name =
                path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
            (services, file.plugin_dirs, file.pid_file, file.log_file, name, file.drain_timeout, file.kill_timeout)
        }
        None => {
            let service = args.service()?;
            let title = format!("{} {}", service.plugin, service.listen);
            let service = ServiceConfig { service, reloadable: true, user: None, group: None };
            (vec![service], Vec::new(), None, None, title, None, None)
        }
    };
    let (drain_flag, kill_flag) = args.stop_timeouts()?;
    let drain_timeout = drain_flag.or(file_drain).unwrap_or(config::DRAIN_TIMEOUT);
    let kill_timeout = kill_flag.or(file_kill).unwrap_or(config::KILL_TIMEOUT);
    let file_pid_given = file_pid.is_some();
    let pid_file = pid_file(global, file_pid)?;
    if let Ok(pid) = pidfile::read_running(&pid_file) {
        bail!("host is already running (pid {pid}, pid file {})", pid_file.display());
    }
    // A flag wins over the config file, but never silently.
    let overridden = [
        ("--plugin-dir", "plugin_dirs", !args.plugin_dirs.is_empty() && !file_dirs.is_empty()),
        ("--pid-file", "pid_file", global.pid_file.is_some() && file_pid_given),
        ("--log-file", "log_file", args.log_file.is_some() && file_log.is_some()),
        ("--drain-timeout", "drain_timeout", args.drain_timeout.is_some() && file_drain.is_some()),
        ("--kill-timeout", "kill_timeout", args.kill_timeout.is_some() && file_kill.is_some()),
        ("--admin-listen", "admin_listen", args.admin_listen.is_some() && file_admin.is_some()),
    ];
    for (flag, key) in overridden.iter().filter(|o| o.2).map(|o| (o.0, o.1)) {
        eprintln!("note: {flag} overrides `{key}` of the config file");
    }
    let dirs = if args.plugin_dirs.is_empty() { file_dirs } else { args.plugin_dirs.clone() };
    let dirs = if dirs.is_empty() { plugin::default_dirs() } else { dirs };
    let plugin_dirs: Vec<PathBuf> = dirs.into_iter().map(|d| std::path::absolute(&d).unwrap_or(d)).collect();

    // Descriptors whoever started us left open must reach no worker: close-on-exec, so the
    // re-exec just below closes them.
    sys::cloexec_strays().context("could not mark inherited descriptors close-on-exec")?;
    if std::env::var_os(TITLED).is_none() {
        let e = sys::exec_with_title(&format!("host: master ({title})"), TITLED);
        eprintln!("warning: could not re-execute with a process title: {e}");
    }
    std::env::remove_var(TITLED);

    let mut ready = None;
    if cmd.daemon {
        let log_file = args.log_file.clone().or(file_log).unwrap_or_else(|| PathBuf::from("host.log"));
        let log_file = std::path::absolute(&log_file).unwrap_or(log_file);
        match sys::daemonize(&log_file)? {
            sys::Daemonized::Parent(pipe) => return wait_for_daemon(pipe, &pid_file, &log_file),
            sys::Daemonized::Daemon(pipe) => ready = Some(pipe),
        }
    }
    init_logging(global);
    let report = ready.as_ref().and_then(|f| f.try_clone().ok());
    let format = match global.log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    let worker_args = vec!["--log-level".into(), global.log_level.clone(), "--log-format".into(), format.into()];
    let options = master::Options {
        plugin_dirs,
        pid_file,
        ready,
        wait_for_plugins: global.config.is_some(),
        worker_args,
        drain_timeout,
        kill_timeout,
        admin_listen: args.admin_listen.or(file_admin),
    };
    let result = master::run(services, options);
    if let (Err(e), Some(mut pipe)) = (&result, report) {
        let _ = writeln!(pipe, "{e:#}");
    }
    result
}

/// In the process the user started with `start -d`: wait for the daemon's word.
fn wait_for_daemon(mut pipe: std::fs::File, pid_file: &Path, log_file: &Path) -> anyhow::Result<()> {
    // One line: the daemon keeps its end open while it runs.
    let mut word = String::new();
    std::io::BufReader::new(&mut pipe).read_line(&mut word).context("could not hear from the daemon")?;
    match word.trim() {
        "ok" => {
            let pid = std::fs::read_to_string(pid_file).unwrap_or_default();
            println!("host started (master pid {}, logs in {})", pid.trim(), log_file.display());
            Ok(())
        }
        "" => bail!("the daemon exited before it was ready; see {}", log_file.display()),
        error => bail!("{}", error.strip_prefix("ok").unwrap_or(error).trim()),
    }
}

/// Loads a plugin in this process and prints `name version (ABI n)`.
fn check_plugin(path: &Path) -> anyhow::Result<()> {
    if !path.is_file() {
        bail!("no plugin file at {}", path.display());
    }
    let loaded = plugin::load(path)?;
    println!("{} {} (ABI {})", loaded.name, loaded.version, plugin_api::ABI_VERSION);
    Ok(())
}

fn init_logging(args: &GlobalArgs) {
    let filter =
        EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&args.log_level)).unwrap_or_else(|e| {
            eprintln!("warning: bad --log-level {:?} ({e}); using info", args.log_level);
            EnvFilter::new("info")
        });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(logging::Stderr);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
