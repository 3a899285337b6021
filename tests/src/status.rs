//! `host status` against a test's master, read back as rows: what a user sees, checked the way a
//! user reads it (the hash on every worker row, the `last reload:` line).

use std::path::Path;
use std::time::Duration;

use crate::{poll_until, run_host, Host};

/// How long one `host status` may take (the master waits up to 1 s for busy workers).
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// One `host status` output.
#[derive(Debug, Clone)]
pub struct Status {
    /// The whole output, for messages.
    pub text: String,
    /// What follows `last reload: ` (`none`, `done: …`, `aborted at …`).
    pub last_reload: String,
    pub services: Vec<ServiceRow>,
    pub workers: Vec<WorkerRow>,
    /// The `WORKER EXITS` table: how workers ended, per service.
    pub exits: Vec<ExitRow>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRow {
    pub name: String,
    pub listen: String,
    /// `http 0.1.0`, or `waiting for NAME` while its plugin file does not exist.
    pub plugin: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRow {
    pub service: String,
    pub slot: u32,
    pub pid: i32,
    /// `http 0.1.0`.
    pub plugin: String,
    /// The short content hash of the plugin snapshot the worker runs.
    pub hash: String,
    /// `starting`, `ready`, `panicking`, `draining`, `busy`.
    pub state: String,
    /// The PANICS column: plugin panics caught in the slot (`-` when the worker did not answer).
    pub panics: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRow {
    pub service: String,
    /// `exit code 0`, `signal SIGKILL`…
    pub how: String,
    pub count: u64,
}

impl Status {
    /// The worker rows of `service`.
    pub fn workers_of(&self, service: &str) -> Vec<&WorkerRow> {
        self.workers.iter().filter(|w| w.service == service).collect()
    }

    /// True when `service` has exactly `count` workers, one per slot, all ready on `hash`.
    pub fn all_on(&self, service: &str, count: usize, hash: &str) -> bool {
        let rows = self.workers_of(service);
        let mut slots: Vec<u32> = rows.iter().map(|w| w.slot).collect();
        slots.sort_unstable();
        slots.dedup();
        rows.len() == count && slots.len() == count && rows.iter().all(|w| w.hash == hash && w.state == "ready")
    }
}

/// Runs `host status` for the master of `host` (pid file `./host.pid` in its directory).
pub fn status(host: &Host) -> Status {
    status_of(&host.pid_file())
}

/// Runs `host status --pid-file PID_FILE` and parses its output.
pub fn status_of(pid_file: &Path) -> Status {
    let out = run_host([Path::new("status"), Path::new("--pid-file"), pid_file], STATUS_TIMEOUT);
    assert!(out.status.success(), "`host status` failed: {out:?}");
    parse(&out.stdout).unwrap_or_else(|e| panic!("could not read `host status`: {e}\n{}", out.stdout))
}

/// Polls `host status` until `ok` accepts it; Err with the last output at the timeout.
pub fn wait_status(host: &Host, timeout: Duration, ok: impl Fn(&Status) -> bool) -> Result<Status, String> {
    let mut last = None;
    poll_until(timeout, || {
        let s = status(host);
        let done = ok(&s);
        last = Some(s.clone());
        done.then_some(s)
    })
    .ok_or_else(|| {
        format!("status not as wanted within {timeout:?}; last:\n{}", last.map(|s| s.text).unwrap_or_default())
    })
}

/// Reads the output of `host status`: a header line, `last reload: …`, then tables separated by
/// blank lines, each a header row and rows whose cells start where the header's columns start.
pub fn parse(text: &str) -> Result<Status, String> {
    let last_reload =
        text.lines().find_map(|l| l.strip_prefix("last reload: ")).ok_or("no `last reload:` line")?.trim().to_string();
    let mut status = Status { text: text.to_string(), last_reload, services: vec![], workers: vec![], exits: vec![] };
    let blocks = text.split("\n\n").map(|b| b.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>());
    for block in blocks {
        let Some((header, rows)) = block.split_first() else { continue };
        let columns = columns(header);
        let names = cells(header, &columns);
        let table: Vec<Vec<String>> = rows.iter().map(|row| cells(row, &columns)).collect();
        let col = |name: &str| names.iter().position(|n| n == name).ok_or(format!("no {name} column in {header:?}"));
        if names.iter().any(|n| n == "SLOT") {
            let (service, slot, pid, plugin, hash, state) =
                (col("SERVICE")?, col("SLOT")?, col("PID")?, col("PLUGIN")?, col("HASH")?, col("STATE")?);
            let panics = col("PANICS").ok();
            // The last row of several workers is their total.
            for row in table.into_iter().filter(|r| r[service] != "total") {
                status.workers.push(WorkerRow {
                    service: row[service].clone(),
                    slot: row[slot].trim_start_matches('#').parse().map_err(|_| format!("bad slot in {row:?}"))?,
                    pid: row[pid].parse().map_err(|_| format!("bad pid in {row:?}"))?,
                    plugin: row[plugin].clone(),
                    hash: row[hash].clone(),
                    state: row[state].clone(),
                    panics: panics.map(|p| row[p].clone()).unwrap_or_default(),
                });
            }
        } else if names.iter().any(|n| n == "RELOADABLE") {
            let (name, listen, plugin) = (col("SERVICE")?, col("LISTEN")?, col("PLUGIN")?);
            for row in table {
                status.services.push(ServiceRow {
                    name: row[name].clone(),
                    listen: row[listen].clone(),
                    plugin: row[plugin].clone(),
                });
            }
        } else if names.iter().any(|n| n == "WORKER EXITS") {
            let (service, how, count) = (col("SERVICE")?, col("WORKER EXITS")?, col("COUNT")?);
            for row in table {
                status.exits.push(ExitRow {
                    service: row[service].clone(),
                    how: row[how].clone(),
                    count: row[count].parse().map_err(|_| format!("bad count in {row:?}"))?,
                });
            }
        }
    }
    Ok(status)
}

/// The byte ranges of a header's columns: a column starts at the header's first character and
/// after every run of two or more spaces (a header like `WORKER EXITS` holds one space).
fn columns(header: &str) -> Vec<(usize, usize)> {
    let bytes = header.as_bytes();
    let mut starts = vec![0];
    for i in 2..bytes.len() {
        if bytes[i] != b' ' && bytes[i - 1] == b' ' && bytes[i - 2] == b' ' {
            starts.push(i);
        }
    }
    let ends = starts.iter().skip(1).copied().chain(std::iter::once(usize::MAX));
    starts.iter().copied().zip(ends).collect()
}

/// The cells of `row` under `columns`, trimmed (a short row gives empty cells).
fn cells(row: &str, columns: &[(usize, usize)]) -> Vec<String> {
    columns
        .iter()
        .map(|&(start, end)| row.get(start.min(row.len())..end.min(row.len())).unwrap_or("").trim().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "host 0.1.0   master pid 12508   up 2s   load 0.39 0.47 0.46
last reload: done: 4 workers replaced in 161 ms

SERVICE  LISTEN           PLUGIN            WORKERS  RELOADABLE
http     127.0.0.1:43245  http 0.1.0        4        true
text     127.0.0.1:43246  waiting for text  2        true

SERVICE  WORKER EXITS  COUNT
http     exit code 0   4

SERVICE  SLOT  PID    MEMORY  LISTEN           PLUGIN      HASH          CONNS  MESSAGES  IN  OUT  SEND_FAIL  TIMERS  UP  STATE
http     #0    12781  12.2M   127.0.0.1:43245  http 0.1.0  a839309f21a3  0      0         0B  0B   0          0       1s  ready
http     #1    12782  12.2M   127.0.0.1:43245  http 0.1.0  a839309f21a3  -      -         -   -    -          -       1s  busy
";

    #[test]
    fn reads_every_table() {
        let s = parse(SAMPLE).unwrap();
        assert_eq!(s.last_reload, "done: 4 workers replaced in 161 ms");
        assert_eq!(s.services.len(), 2);
        assert_eq!(s.services[1].plugin, "waiting for text");
        assert_eq!(s.exits, vec![ExitRow { service: "http".into(), how: "exit code 0".into(), count: 4 }]);
        assert_eq!(s.workers.len(), 2);
        assert_eq!(s.workers[1].slot, 1);
        assert_eq!(s.workers[1].pid, 12782);
        assert_eq!(s.workers[1].plugin, "http 0.1.0");
        assert_eq!(s.workers[1].hash, "a839309f21a3");
        assert_eq!(s.workers[1].state, "busy");
        assert!(!s.all_on("http", 2, "a839309f21a3"), "a busy worker is not ready");
    }
}
