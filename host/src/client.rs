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

/// The pid file of the host that a control command given neither `--pid-file` nor `-c` acts on:
/// the one running from the default runtime directory. With several, the user picks one at a
/// terminal; elsewhere the command fails, listing them. With none, a path that says where it
/// looked (every command then reports "not running" as it would for any pid file).
pub fn find_master() -> anyhow::Result<std::path::PathBuf> {
    let running = pidfile::running_in_default_dir()?;
    let several = match running.as_slice() {
        [] => return Ok(pidfile::default_pattern()),
        [(path, _)] => return Ok(path.clone()),
        several => several,
    };
    let list: Vec<String> = several
        .iter()
        .enumerate()
        .map(|(i, (path, pid))| {
            let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let title = String::from_utf8_lossy(title.split(|&b| b == 0).next().unwrap_or_default()).into_owned();
            format!("  {}. {}  ({title}, pid {pid})", i + 1, path.display())
        })
        .collect();
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !interactive {
        bail!(
            "{} hosts are running:\n{}\nsay which one with --pid-file FILE (or -c FILE for one started with a config file)",
            several.len(),
            list.join("\n")
        );
    }
    let mut err = std::io::stderr();
    writeln!(err, "{} hosts are running:\n{}", several.len(), list.join("\n"))?;
    write!(err, "which one? [1-{}] ", several.len())?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    match answer.trim().parse::<usize>() {
        Ok(n) if (1..=several.len()).contains(&n) => Ok(several[n - 1].0.clone()),
        _ => bail!("no host chosen (answer with a number from 1 to {})", several.len()),
    }
}

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
    believe_peer(&stream, pid, &socket)?;
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

/// Checks who listens on the control socket before anything is sent or believed: the socket's
/// peer (SO_PEERCRED) must run as the master named by the pid file does, and as this user or
/// root (unless this user is root). A socket that someone else put in our runtime directory
/// cannot answer for our master.
fn believe_peer(stream: &UnixStream, pid: i32, socket: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsFd;
    let (_, peer_uid, _) = crate::sys::peer_cred(stream.as_fd())
        .with_context(|| format!("could not tell who listens on {}", socket.display()))?;
    let master_uid = process_euid(pid).with_context(|| format!("could not tell the user of the master (pid {pid})"))?;
    let ours = nix::unistd::geteuid().as_raw();
    check_peer(peer_uid, master_uid, ours).map_err(|why| {
        anyhow::anyhow!("refusing the control socket {}: it is held by uid {peer_uid}, {why}", socket.display())
    })
}

/// The rule of [`believe_peer`] (pure, for the tests).
fn check_peer(peer_uid: u32, master_uid: u32, ours: u32) -> Result<(), String> {
    if peer_uid != master_uid {
        return Err(format!("but the master runs as uid {master_uid}"));
    }
    if ours != 0 && peer_uid != 0 && peer_uid != ours {
        return Err(format!("neither this user (uid {ours}) nor root"));
    }
    Ok(())
}

/// The effective uid of process `pid` (`/proc/PID/status`).
fn process_euid(pid: i32) -> anyhow::Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:")).context("no Uid line")?;
    line.split_whitespace().nth(1).and_then(|u| u.parse().ok()).context("a bad Uid line")
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

/// A reload ran, but refused plugin files it was asked to load: `host reload` exits with
/// [`FilesRefused::EXIT_CODE`], so a deploy script can tell.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FilesRefused(pub String);

impl FilesRefused {
    pub const EXIT_CODE: u8 = 4;
}

/// Runs the reload chain and reports how it ended.
pub fn reload(pid_file: &Path, graceful: bool, handovers: bool) -> anyhow::Result<()> {
    match ask(pid_file, ControlRequest::Reload { graceful, handovers }, RELOAD_WAIT)? {
        Answer::Ok { message, .. } => {
            println!("{message}");
            Ok(())
        }
        Answer::Refused { message } => Err(FilesRefused(message).into()),
        Answer::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// `host upgrade`: the master runs the binary installed at its path now (same pid), then
/// replaces every worker; waits for that chain like `reload` (with `handovers`, for its
/// hand-overs too), or prints why it was refused.
pub fn upgrade(pid_file: &Path, handovers: bool) -> anyhow::Result<()> {
    let pid = pidfile::read_running(pid_file)?;
    match ask(pid_file, ControlRequest::Upgrade { handovers }, RELOAD_WAIT)? {
        Answer::Ok { message, .. } => {
            println!("host upgraded (master pid {pid}): {message}");
            Ok(())
        }
        Answer::Refused { message } => Err(FilesRefused(format!("host upgraded (master pid {pid}): {message}")).into()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_masters_own_user_is_believed() {
        assert!(check_peer(1000, 1000, 1000).is_ok());
        assert!(check_peer(0, 0, 1000).is_ok(), "a root master, asked by a user it lets in");
        assert!(check_peer(1000, 1000, 0).is_ok(), "root asks a user's master");
        // Another user's socket in our runtime directory, naming our master's pid.
        assert!(check_peer(1001, 1000, 1000).unwrap_err().contains("master runs as uid 1000"));
        // Another user's socket, naming their own master.
        assert!(check_peer(1001, 1001, 1000).unwrap_err().contains("neither"));
    }

    #[test]
    fn this_process_runs_as_itself() {
        let ours = nix::unistd::geteuid().as_raw();
        assert_eq!(process_euid(std::process::id() as i32).unwrap(), ours);
    }
}
