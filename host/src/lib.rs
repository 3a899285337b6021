//! `host`: a prefork server whose protocol handlers are plugins.
//!
//! The crate is a library with two programs: `host` ([`host_main`]: the command line, the master,
//! the control commands) and `host-worker` ([`worker_main`]: one worker and nothing else, so the
//! linker keeps only what a worker reaches; the master executes it when it is installed beside
//! `host`, see docs/architecture.md, "A worker's memory").

#![deny(unsafe_code)]

mod argv;
mod cli;
mod client;
// Topics across hosts: the broker clients (Redis, NATS) each worker of a clustered service runs.
mod cluster;
mod config;
mod config_file;
mod ctl;
mod listen;
mod logging;
mod master;
mod pidfile;
mod plan;
mod plugin;
mod scaffold;
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

use crate::argv::{ARGV_ENV, TITLED};
use crate::cli::{Cli, Command, GlobalArgs, LogArgs, LogFormat, PluginCmd, RestartCmd, StartCmd};
use crate::plan::Plan;

/// `host status` when no host runs (LSB init-script convention: "program is not running").
const EXIT_NOT_RUNNING: u8 = 3;

/// This process's arguments (after the program name), as it was started: `host restart` and the
/// title re-exec reuse them.
static ARGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

fn args() -> Vec<String> {
    ARGS.get().cloned().unwrap_or_default()
}

/// The `host` program.
pub fn host_main() -> ExitCode {
    let argv = argv::command_line();
    let _ = ARGS.set(argv.iter().skip(1).map(|a| a.to_string_lossy().into_owned()).collect());
    let cli = Cli::parse_from(argv);
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
            } else if e.chain().any(|c| c.is::<client::FilesRefused>()) {
                ExitCode::from(client::FilesRefused::EXIT_CODE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The `host-worker` program: one worker (started by the master with the words of `host
/// worker`), or `--protocol-version` (what `host` checks before it executes it).
pub fn worker_main() -> ExitCode {
    let argv = argv::command_line();
    let result = match argv::worker_command(argv.get(1..).unwrap_or_default()) {
        Ok(argv::WorkerCommand::ProtocolVersion) => {
            let _ = writeln!(std::io::stdout(), "{}", ctl::PROTOCOL);
            Ok(())
        }
        Ok(argv::WorkerCommand::Run { log_level, log_format }) => {
            let log = LogArgs {
                log_level,
                log_format: match log_format.as_deref() {
                    Some("json") => Some(LogFormat::Json),
                    Some(_) => Some(LogFormat::Text),
                    None => None,
                },
            };
            init_logging_with(&log, Some(logging::RateLimit::new(logging::LINES_PER_SECOND)));
            worker::run()
        }
        Err(e) => Err(anyhow::Error::msg(e)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
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
        None => start(global, &StartCmd { daemon: false, args: cli.start }),
        Some(Command::Start(ref cmd)) => start(global, cmd),
        Some(Command::Restart(ref cmd)) => restart(global, cmd),
        Some(Command::Stop { graceful }) => with_logging(global, |g| client::stop(&pid_file(g)?, graceful)),
        Some(Command::Reload { graceful, handovers }) => {
            with_logging(global, |g| client::reload(&pid_file(g)?, graceful, handovers))
        }
        Some(Command::Upgrade { handovers }) => with_logging(global, |g| client::upgrade(&pid_file(g)?, handovers)),
        Some(Command::UpgradeCheck) => with_logging(global, |_| upgrade_check()),
        Some(Command::Status { live, json }) => with_logging(global, |g| client::status(&pid_file(g)?, live, json)),
        Some(Command::Connections { json }) => with_logging(global, |g| client::connections(&pid_file(g)?, json)),
        Some(Command::ReopenLogs) => with_logging(global, |g| client::reopen_logs(&pid_file(g)?)),
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
        Some(Command::CheckPlugin { ref path, ref user, ref group, ref log }) => {
            init_logging(log);
            check_plugin(path, user.as_deref(), group.as_deref())
        }
        Some(Command::Plugin(PluginCmd::New { name, protocol, dir })) => {
            scaffold::run(&scaffold::Request { name, template: protocol, dir })
        }
        Some(Command::Worker { ref log }) => {
            init_logging_with(log, Some(logging::RateLimit::new(logging::LINES_PER_SECOND)));
            worker::run()
        }
    }
}

/// A control command: it logs at the defaults (its answers are printed, not logged).
fn with_logging(global: &GlobalArgs, f: impl FnOnce(&GlobalArgs) -> anyhow::Result<()>) -> anyhow::Result<()> {
    init_logging(&LogArgs::default());
    f(global)
}

/// A control command's pid file: --pid-file, else the config file's (or the default one of a
/// start with that config file), else that of the one host running from the per-user runtime
/// directory (`client::find_master`); always absolute.
fn pid_file(global: &GlobalArgs) -> anyhow::Result<PathBuf> {
    let from_file = match &global.config {
        Some(path) => {
            Some(config_file::load(path)?.pid_file.unwrap_or_else(|| pidfile::default_pid_file_for(Some(path), None)))
        }
        None => None,
    };
    let path = match global.pid_file.clone().or(from_file) {
        Some(path) => path,
        None => client::find_master()?,
    };
    Ok(std::path::absolute(&path).unwrap_or(path))
}

fn start(global: &GlobalArgs, cmd: &StartCmd) -> anyhow::Result<()> {
    // `host upgrade`: this image replaces a running master (same process); it takes what the
    // previous one handed over before anything else, plans the same start where it was made,
    // and checks that it can take the running services over.
    // Until its loop runs, an error or a panic sends it back to the previous image.
    if let Some(inherited) = master::upgrade::Inherited::take()? {
        let take_over = || {
            std::env::set_current_dir(&inherited.state.start_dir)
                .with_context(|| format!("could not enter {}", inherited.state.start_dir.display()))?;
            let mut plan = plan(global, cmd)?;
            // The pid file the previous image holds locked, whatever this image would name it.
            plan.pid_file = inherited.state.pid_file.clone();
            inherited.state.check(&plan.services).map_err(anyhow::Error::msg)?;
            launch(cmd, plan, args(), Some(inherited))
        };
        return master::upgrade::roll_back_on_failure(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            take_over,
        )));
    }
    let plan = plan(global, cmd)?;
    if let Ok(pid) = pidfile::read_running(&plan.pid_file) {
        return Err(pidfile::PidFileError::Running { pid, path: plan.pid_file }.into());
    }
    launch(cmd, plan, args(), None)
}

/// `host restart`: with no start options, the running master's own (it reports them); the new
/// options are checked (config, plugins, ports) before anything is stopped.
fn restart(global: &GlobalArgs, restart: &RestartCmd) -> anyhow::Result<()> {
    let cmd = &restart.start;
    let pid_file = pid_file(global)?;
    let running = pidfile::read_running(&pid_file).ok();
    let reuse = running.is_some() && cmd.args.given().is_empty() && global.config.is_none();
    let old = if running.is_some() { client::status_of(&pid_file).ok() } else { None };
    // What the new master is started with (and re-executes itself with for its title): a start.
    let mut argv: Vec<String> = args();
    if let Some(word) = argv.iter_mut().find(|a| *a == "restart") {
        *word = "start".into();
    }
    let (global, cmd) = match (&old, reuse) {
        (Some(status), true) if !status.start_args.is_empty() => {
            argv = status.start_args.clone();
            if cmd.daemon && !argv.iter().any(|a| a == "-d" || a == "--daemon") {
                argv = ["start".to_string(), "-d".to_string()]
                    .into_iter()
                    .chain(argv.into_iter().filter(|a| a != "start"))
                    .collect();
            }
            std::env::set_current_dir(&status.start_dir)
                .with_context(|| format!("could not enter {}, where the host was started", status.start_dir))?;
            let cli = Cli::try_parse_from(std::iter::once("host".to_string()).chain(status.start_args.clone()))
                .context("could not read the running host's options")?;
            let mut again = match cli.command {
                Some(Command::Start(c)) => c,
                _ => StartCmd { daemon: false, args: cli.start },
            };
            again.daemon |= cmd.daemon;
            let mut g = cli.global;
            g.pid_file = Some(pid_file.clone());
            eprintln!("note: restarting with the running host's options: {}", status.start_args.join(" "));
            (g, again)
        }
        _ => (global.clone(), cmd.clone()),
    };
    if running.is_some() && !argv.iter().any(|a| a == "--pid-file" || a.starts_with("--pid-file=")) {
        argv.extend(["--pid-file".to_string(), pid_file.display().to_string()]);
    }
    let plan = plan(&global, &cmd).context("the new host cannot start, nothing was stopped")?;
    // Every plugin file must be there now, a config file's too: a restart must never stop a host
    // it cannot start.
    for s in &plan.services {
        plugin::find(&s.service.plugin, &plan.plugin_dirs)
            .with_context(|| format!("service {}: nothing was stopped", s.service.name))?;
    }
    // Every fixed port must be free, or held by the master about to stop.
    let held: Vec<String> = old.iter().flat_map(|s| s.services.iter().map(|r| r.listen.clone())).collect();
    for s in &plan.services {
        let listen = &s.service.listen;
        if held.contains(&listen.to_string()) {
            continue;
        }
        let free = match listen {
            listen::Listen::Tcp(a) if a.port() != 0 => std::net::TcpListener::bind(a).map(drop),
            listen::Listen::Udp(a) if a.port() != 0 => std::net::UdpSocket::bind(a).map(drop),
            listen::Listen::Unix { path, .. } if sys::unix_in_use(path) => {
                Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use"))
            }
            _ => Ok(()),
        };
        free.with_context(|| format!("service {}: cannot listen on {listen}; nothing was stopped", s.service.name))?;
    }
    init_logging(&cmd.args.log);
    if running.is_some() {
        client::stop(&pid_file, restart.graceful)?;
    }
    launch(&cmd, plan, argv, None)
}

/// `host upgrade-check`: run by a master about to exec this binary, with its state. Exits 0 when
/// this binary can take it over: it reads the state and plans the same start (the same command
/// line, in the same directory) with the same services.
fn upgrade_check() -> anyhow::Result<()> {
    let state = master::upgrade::State::from_env()?;
    let cli = Cli::try_parse_from(std::iter::once("host".to_string()).chain(state.start_args.iter().cloned()))
        .context("could not read the running master's command line")?;
    let cmd = match cli.command {
        Some(Command::Start(c)) => c,
        None => StartCmd { daemon: false, args: cli.start },
        Some(_) => bail!("the running master was not started with `host start`"),
    };
    let plan = plan(&cli.global, &cmd)?;
    state.check(&plan.services).map_err(anyhow::Error::msg)?;
    // The worker binary installed beside this one is the new master's: it must speak this
    // binary's worker protocol (absent: the new master executes itself for its workers).
    master::spawn::find_worker_image()?;
    eprintln!("{}", master::upgrade::GUARDIAN_CAPABILITY);
    Ok(())
}

/// Works out and checks a start: the config file read once, resolved with the flags into the
/// plan ([`plan::resolve`]); a plugin named on the command line must exist now (a config file's
/// may appear later). Starts nothing.
fn plan(global: &GlobalArgs, cmd: &StartCmd) -> anyhow::Result<Plan> {
    let file = global.config.as_deref().map(config_file::load).transpose()?;
    let mut plan = plan::resolve(global, &cmd.args, file, plan::Defaults::here())?;
    for (flag, key) in &plan.overrides {
        eprintln!("note: {flag} overrides `{key}` of the config file");
    }
    // One given by path is kept absolute: a daemon (`-d`) looks for it after changing to `/`.
    if !plan.from_file {
        for s in &mut plan.services {
            let found = plugin::find(&s.service.plugin, &plan.plugin_dirs)?;
            if plugin::is_path(&s.service.plugin) {
                s.service.plugin = found.display().to_string();
            }
        }
    }
    Ok(plan)
}

/// Starts the master (in the foreground, or as a daemon with `-d`).
fn launch(
    cmd: &StartCmd,
    plan: Plan,
    argv: Vec<String>,
    upgrade: Option<master::upgrade::Inherited>,
) -> anyhow::Result<()> {
    let args = &cmd.args;
    // Where and how it was started (before a daemon moves to /): `host restart` reuses them.
    let start_dir = std::env::current_dir().unwrap_or_default();
    if let Some(inherited) = &upgrade {
        // Back where the previous image was (`/` for a daemon).
        let _ = std::env::set_current_dir(&inherited.state.cwd);
    }
    // Descriptors whoever started us left open must reach no worker: close-on-exec, so the
    // re-exec just below closes them.
    // Sockets the service manager handed over (socket activation) are not strays.
    sys::cloexec_strays(master::first_stray_fd()).context("could not mark inherited descriptors close-on-exec")?;
    if std::env::var_os(TITLED).is_none() {
        let title = format!("host: master ({})", plan.title);
        let e = sys::exec_with_title(&title, (ARGV_ENV, argv::pack_args(&argv).as_ref()), TITLED);
        eprintln!("warning: could not re-execute with a process title: {e}");
    }
    std::env::remove_var(TITLED);

    let mut ready = None;
    let mut daemon_log = None;
    if cmd.daemon {
        let log_file = plan.daemon_log.clone();
        // After `host upgrade` the process is a daemon already, its output on that file.
        if upgrade.is_none() {
            match sys::daemonize(&log_file)? {
                sys::Daemonized::Parent(pipe) => return wait_for_daemon(pipe, &plan.pid_file, &log_file),
                sys::Daemonized::Daemon(pipe) => ready = Some(pipe),
            }
        }
        daemon_log = Some(log_file);
    }
    init_logging(&args.log);
    let report = ready.as_ref().and_then(|f| f.try_clone().ok());
    let format = match args.log.format() {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    let worker_args = vec!["--log-level".into(), args.log.level().to_string(), "--log-format".into(), format.into()];
    let launch = master::Launch { ready, worker_args, start_dir, start_args: argv, upgrade, log_file: daemon_log };
    let result = master::run(plan, launch);
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

/// Loads a plugin in this process and prints `name version (ABI n)`; as `user`/`group` when
/// given (the master probes a service's plugin with the service's identity).
fn check_plugin(path: &Path, user: Option<&str>, group: Option<&str>) -> anyhow::Result<()> {
    sys::switch_identity(user, group).context("could not switch user/group")?;
    if !path.is_file() {
        bail!("no plugin file at {}", path.display());
    }
    let loaded = plugin::load(path)?;
    println!("{} {} (ABI {})", loaded.name, loaded.version, plugin_api::ABI_VERSION);
    Ok(())
}

fn init_logging(args: &LogArgs) {
    init_logging_with(args, None);
}

/// Logging to stderr, rate-limited by `limit` (workers: a plugin's flood of errors is cut).
fn init_logging_with(args: &LogArgs, limit: Option<logging::RateLimit>) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(args.level())).unwrap_or_else(|e| {
        eprintln!("warning: bad --log-level {:?} ({e}); using info", args.level());
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(logging::Stderr);
    match args.format() {
        LogFormat::Json => builder.json().finish().with(limit).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).finish().with(limit).init(),
    }
}
