//! Status and connections.

use super::*;

// `host status`: the master's pid, the service row, one `ready` row per worker, whose pids are
// the master's children.
#[test]
fn status_shows_the_service_and_every_worker() {
    let mut host = Host::start("http", &["--count", "3"]);
    let port = host.port();
    let workers = host.wait_workers(3, Duration::from_secs(2), |_| true).unwrap();
    let out = host.command(["status"], COMMAND_TIMEOUT);
    assert_ok(&out, "status");
    let text = &out.stdout;
    assert_contains!(text, format!("master pid {} ", host.pid()));
    let service = text.lines().find(|l| l.starts_with("http ") && !l.contains('#')).unwrap_or_else(|| panic!("{text}"));
    let cells: Vec<&str> = service.split_whitespace().collect();
    assert_eq!(cells, ["http", &format!("127.0.0.1:{port}"), "http", env!("CARGO_PKG_VERSION"), "3", "true"], "{text}");
    let rows = worker_rows(text);
    assert_eq!(rows.len(), 3, "{text}");
    for (slot, row) in rows.iter().enumerate() {
        assert_eq!((row[0], row[1]), ("http", format!("#{slot}").as_str()), "{text}");
        assert_eq!(row.last(), Some(&"ready"), "{text}");
    }
    assert_eq!(row_pids(text), workers, "{text}");
}

// `host status --live` prints the table again and again (read two refreshes, then kill it).
#[test]
fn status_live_refreshes_the_table() {
    let host = Host::start("http", &["--count", "2"]);
    let workers = host.wait_workers(2, Duration::from_secs(2), |_| true).unwrap();
    let mut child = host_command_in(host.dir().path())
        .args(["status", "--live"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let live = Guarded(child);
    let seen = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    // Not a terminal: no screen control codes, the tables one after the other.
    const HEADER: &str = "host ";
    let tables = |text: &str| -> Vec<String> {
        let mut tables: Vec<String> = Vec::new();
        for line in text.lines() {
            if line.starts_with(HEADER) && line.contains("master pid") {
                tables.push(String::new());
            }
            if let Some(t) = tables.last_mut() {
                t.push_str(line);
                t.push('\n');
            }
        }
        tables
    };
    // Two whole tables: the second refresh holds every worker's row.
    let complete = |text: &str| tables(text).get(1).is_some_and(|t| row_pids(t) == workers);
    let got = poll_until(Duration::from_secs(6), || {
        let text = seen.lock().unwrap().clone();
        complete(&text).then_some(text)
    });
    drop(live);
    let text = got.unwrap_or_else(|| panic!("no second refresh in 6 s; got {:?}", seen.lock().unwrap()));
    assert!(!text.contains('\x1b'), "screen control codes on a pipe: {text:?}");
    for table in tables(&text).iter().take(2) {
        assert_contains!(table, format!("master pid {} ", host.pid()));
        assert_eq!(row_pids(table), workers, "{table}");
    }
}

// `host connections` lists each open connection with the client's address.
#[test]
fn connections_lists_open_connections() {
    let mut host = Host::start("http", &["--count", "2"]);
    let port = host.port();
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut c = KeepAlive::connect(port);
        c.get(); // accepted and answered: the worker has it
        clients.push(c);
    }
    let out = host.command(["connections"], COMMAND_TIMEOUT);
    assert_ok(&out, "connections");
    let text = &out.stdout;
    assert_contains!(text, "REMOTE");
    assert_contains!(text, "2 connections");
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    let remote = header.iter().position(|&h| h == "REMOTE").unwrap();
    let workers = host.worker_pids();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > remote && f[0].parse::<i32>().is_ok())
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    for c in &clients {
        let me = c.stream.local_addr().unwrap().to_string();
        let row = rows.iter().find(|r| r[remote] == me).unwrap_or_else(|| panic!("no row for {me}:\n{text}"));
        assert!(workers.contains(&row[0].parse().unwrap()), "{text}");
        assert_eq!(row[1], "http", "{text}");
        // A readable id: `#slot/index`.
        let (slot, index) = row[2].trim_start_matches('#').split_once('/').unwrap_or_else(|| panic!("{text}"));
        assert!(slot.parse::<u32>().is_ok() && index.parse::<u32>().is_ok(), "{text}");
    }
    for column in ["AGE", "IDLE"] {
        assert!(header.contains(&column), "no {column} column: {text}");
    }
}

// A slot's counters survive the replacement of its worker: after a reload the new worker's row
// still counts the requests the old one served; the totals row adds up every worker.
#[test]
fn slot_counters_survive_a_reload() {
    let mut host = Host::start("http", &["--count", "2"]);
    let port = host.port();
    for _ in 0..10 {
        let mut c = KeepAlive::connect(port);
        c.get();
    }
    let out = host.command(["reload", "-g"], COMMAND_TIMEOUT);
    assert_ok(&out, "reload -g");
    let out = host.command(["status"], COMMAND_TIMEOUT);
    assert_ok(&out, "status");
    let text = &out.stdout;
    let header = text.lines().find(|l| l.starts_with("SERVICE") && l.contains("SLOT")).unwrap();
    // The MESSAGES cell of a row: under the header's column (a cell may hold spaces).
    let start = header.find(" MESSAGES").unwrap() + 1;
    let end = start + header[start..].find("  ").unwrap();
    let per_slot: u64 = text
        .lines()
        .filter(|l| l.starts_with("http ") && l.contains('#'))
        .map(|l| l[start..end.min(l.len())].trim().parse::<u64>().unwrap_or_else(|e| panic!("{e}: {l}")))
        .sum();
    assert!(per_slot >= 10, "the slots forgot the old workers' requests:\n{text}");
    let total = text.lines().find(|l| l.starts_with("total ")).unwrap_or_else(|| panic!("no totals row:\n{text}"));
    assert!(total.split_whitespace().any(|f| f == per_slot.to_string()), "{total}\n{text}");
    assert_contains!(text, "MSG/S");
    assert_contains!(text, "PEAK");
}

// SIGUSR2 writes the status table into the log, SIGIO the connections table.
#[test]
fn sigusr2_and_sigio_log_the_tables() {
    let host = Host::start("http", &["--count", "2"]);
    let workers = host.wait_workers(2, Duration::from_secs(2), |_| true).unwrap();
    let mut c = KeepAlive::connect(host.port());
    c.get();
    host.signal(Signal::SIGUSR2);
    let logged = poll_until(Duration::from_secs(5), || {
        let text = host.log_text();
        let table = &text[text.find("master pid")?..];
        (table.contains("SEND_FAIL") && row_pids(table) == workers).then(|| table.to_string())
    })
    .unwrap_or_else(|| panic!("no status table with workers {workers:?} in the log:\n{}", host.log_text()));
    assert_contains!(logged, format!("master pid {} ", host.pid()));
    host.signal(Signal::SIGIO);
    host.log().wait_for("1 connections", Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
    let text = host.log_text();
    let table = &text[text.find("REMOTE").expect("the connections header")..];
    assert_contains!(table, c.stream.local_addr().unwrap().to_string());
}

// Many `status` commands at once: each gets a whole table of its own.
#[test]
fn concurrent_status_answers_never_mix() {
    let host = Host::start("http", &["--count", "2"]);
    let workers = host.wait_workers(2, Duration::from_secs(2), |_| true).unwrap();
    let dir = host.dir().path().to_path_buf();
    let master = host.pid();
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| (0..5).map(|_| run_host_in(&dir, ["status"], COMMAND_TIMEOUT)).collect::<Vec<Output>>())
            })
            .collect();
        for t in threads {
            for out in t.join().unwrap() {
                assert_ok(&out, "status");
                let text = &out.stdout;
                assert_eq!(text.matches("master pid").count(), 1, "{text}");
                assert_contains!(text, format!("master pid {master} "));
                assert_eq!(text.matches("SERVICE  LISTEN").count(), 1, "{text}");
                assert_eq!(text.matches("SERVICE  SLOT").count(), 1, "{text}");
                assert_eq!(row_pids(text), workers, "{text}");
                // `busy`: a worker that did not answer within 1 s (a loaded machine).
                let states = worker_rows(text).iter().map(|r| *r.last().unwrap()).collect::<Vec<_>>();
                assert!(states.iter().all(|&s| s == "ready" || s == "busy"), "{text}");
            }
        }
    });
}

// `status --json` and `connections --json`: the tables' data as JSON for scripts.
#[test]
fn status_and_connections_as_json() {
    let mut host = Host::start("http", &["--count", "2"]);
    let mut c = KeepAlive::connect(host.port());
    c.get();
    let out = host.command(["status", "--json"], COMMAND_TIMEOUT);
    assert_ok(&out, "status --json");
    let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    assert_eq!(status["master_pid"], host.pid());
    assert_eq!(status["workers"].as_array().unwrap().len(), 2, "{status}");
    assert_eq!(status["services"][0]["name"], "http");
    let out = host.command(["connections", "--json"], COMMAND_TIMEOUT);
    assert_ok(&out, "connections --json");
    let conns: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let me = c.stream.local_addr().unwrap().to_string();
    let rows = conns["connections"].as_array().unwrap();
    assert!(rows.iter().any(|r| r["conn"]["peer"] == me.as_str()), "{conns}");
}

// Completion scripts and the man page are generated from the command line's definition.
#[test]
fn completions_and_man_page_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run_host(["completions", shell], COMMAND_TIMEOUT);
        assert!(out.status.success(), "{out:?}");
        for word in ["reload", "status", "--plugin"] {
            assert_contains!(out.stdout, word, "{shell}");
        }
    }
    let man = run_host(["man"], COMMAND_TIMEOUT);
    assert!(man.status.success(), "{man:?}");
    assert_contains!(man.stdout, ".TH host");
    assert_contains!(man.stdout, "reload");
}
