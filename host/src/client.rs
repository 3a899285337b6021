//! The control commands' side: find the master through the pid file, ask over the control
//! socket, wait for the effect with a bounded timeout, print the answer.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config;
use crate::master::ControlRequest;
use crate::pidfile;
use crate::status::{self, Answer};

/// How long `reload` waits for a chain: every slot may take the start timeout.
const RELOAD_WAIT: Duration = Duration::from_secs(300);
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Sends one request and reads the answer.
fn ask(pid_file: &Path, request: ControlRequest, wait: Duration) -> anyhow::Result<Answer> {
    let pid = pidfile::read_running(pid_file)?;
    let socket = pidfile::socket_path(pid_file);
    let mut stream = match UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "host is running (pid {pid}), but its control socket {} is not open to this user: run the command as the user that started it (or root)",
            socket.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("could not reach the master (pid {pid}) at {}", socket.display())),
    };
    stream.set_read_timeout(Some(wait))?;
    stream.write_all(request.encode().as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .with_context(|| format!("no answer from the master (pid {pid}) within {} s", wait.as_secs()))?;
    if line.is_empty() {
        bail!("the master (pid {pid}) closed the control connection without an answer");
    }
    serde_json::from_str(&line).context("could not read the master's answer")
}

/// Stops the master and waits until it is gone.
pub fn stop(pid_file: &Path, graceful: bool) -> anyhow::Result<()> {
    // Stopping what is not running succeeds (LSB): the wanted state holds.
    let pid = match pidfile::read_running(pid_file) {
        Ok(pid) => pid,
        Err(e @ (pidfile::PidFileError::NotRunning(_) | pidfile::PidFileError::Stale { .. })) => {
            println!("{e}; nothing to stop");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let default_wait = if graceful { config::DRAIN_TIMEOUT } else { Duration::ZERO } + config::KILL_TIMEOUT;
    let wait = match ask(pid_file, ControlRequest::Stop { graceful }, ANSWER_WAIT) {
        Ok(Answer::Error { message }) => bail!("{message}"),
        Ok(Answer::Ok { wait_ms, .. }) if wait_ms > 0 => Duration::from_millis(wait_ms),
        Ok(_) => default_wait,
        Err(e) => {
            // The socket may be gone (removed by hand): signals still work.
            let sig = if graceful { Signal::SIGTERM } else { Signal::SIGINT };
            tracing::debug!("control socket failed ({e:#}); sending {sig}");
            kill(Pid::from_raw(pid), sig).with_context(|| format!("could not signal the master (pid {pid})"))?;
            default_wait
        }
    };
    let limit = wait + Duration::from_secs(5);
    let deadline = Instant::now() + limit;
    while pidfile::is_host_master(pid) {
        if Instant::now() > deadline {
            bail!("the master (pid {pid}) is still running after {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("host stopped (master pid {pid})");
    Ok(())
}

/// Runs the reload chain and reports how it ended.
pub fn reload(pid_file: &Path, graceful: bool) -> anyhow::Result<()> {
    match ask(pid_file, ControlRequest::Reload { graceful }, RELOAD_WAIT)? {
        Answer::Ok { message, .. } => {
            println!("{message}");
            Ok(())
        }
        Answer::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// `host upgrade`: the master runs the binary installed at its path now (same pid), then
/// replaces every worker; waits for that chain like `reload`, or prints why it was refused.
pub fn upgrade(pid_file: &Path) -> anyhow::Result<()> {
    let pid = pidfile::read_running(pid_file)?;
    match ask(pid_file, ControlRequest::Upgrade, RELOAD_WAIT)? {
        Answer::Ok { message, .. } => {
            println!("host upgraded (master pid {pid}): {message}");
            Ok(())
        }
        Answer::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// Reopens the log file and the access logs; prints what the master did.
pub fn reopen_logs(pid_file: &Path) -> anyhow::Result<()> {
    match ask(pid_file, ControlRequest::ReopenLogs, ANSWER_WAIT)? {
        Answer::Ok { message, .. } => {
            println!("{message}");
            Ok(())
        }
        Answer::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// The running master's status (its services, how it was started…).
pub fn status_of(pid_file: &Path) -> anyhow::Result<status::Status> {
    match ask(pid_file, ControlRequest::Status, ANSWER_WAIT)? {
        Answer::Status(s) => Ok(s),
        Answer::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

pub fn status(pid_file: &Path, live: bool, json: bool) -> anyhow::Result<()> {
    loop {
        let text = match ask(pid_file, ControlRequest::Status, ANSWER_WAIT)? {
            Answer::Status(s) if json => format!("{}\n", serde_json::to_string_pretty(&s)?),
            Answer::Status(s) => status::render_status(&s),
            Answer::Error { message } => bail!("{message}"),
            other => bail!("unexpected answer: {other:?}"),
        };
        if !live {
            print!("{text}");
            return Ok(());
        }
        if std::io::stdout().is_terminal() {
            // Home the cursor and clear the screen: the table refreshes in place.
            print!("\x1b[H\x1b[2J{text}");
        } else {
            // A pipe or a file gets plain tables, one after the other.
            println!("{text}");
        }
        std::io::stdout().flush()?;
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub fn connections(pid_file: &Path, json: bool) -> anyhow::Result<()> {
    match ask(pid_file, ControlRequest::Connections, ANSWER_WAIT)? {
        Answer::Connections { rows, busy } if json => {
            let value = serde_json::json!({ "connections": rows, "busy_workers": busy });
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(())
        }
        Answer::Connections { rows, busy } => {
            print!("{}", status::render_connections(&rows, &busy));
            Ok(())
        }
        Answer::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}
