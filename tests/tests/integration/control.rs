//! The control socket (`host.sock` beside the pid file) as a raw client uses it: one request
//! line, one JSON answer line.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use host_tests::Host;

const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

fn connect(host: &Host) -> UnixStream {
    let path = host.pid_file().with_extension("sock");
    let stream = UnixStream::connect(&path).unwrap_or_else(|e| panic!("cannot connect to {}: {e}", path.display()));
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    stream
}

/// Reads until the master closes the connection (it does once the answer is written).
fn read_answer(stream: &mut UnixStream) -> serde_json::Value {
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap_or_else(|e| panic!("no whole answer ({e}); got {text:?}"));
    assert!(text.ends_with('\n') && text.matches('\n').count() == 1, "one answer line: {text:?}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

// A client that shuts its writing side down after its request still gets its whole answer
// (the master used to take the end of the request stream for a client gone and drop it).
#[test]
fn a_client_that_half_closes_after_its_request_gets_its_answer() {
    let host = Host::start("http", &["--count", "2"]);
    host.wait_workers(2, Duration::from_secs(5), |_| true).unwrap();
    let mut stream = connect(&host);
    stream.write_all(b"status\n").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let answer = read_answer(&mut stream);
    assert_eq!(answer["answer"], "status", "{answer}");
    assert_eq!(answer["master_pid"], host.pid(), "{answer}");
    let workers = answer["workers"].as_array().unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(workers.len(), 2, "{answer}");
    assert!(workers.iter().all(|w| w["state"] == "ready"), "{answer}");
}

// The same, with an unterminated request: the end of the stream ends the line.
#[test]
fn a_request_ended_by_the_end_of_the_stream_is_answered() {
    let host = Host::start("http", &[]);
    let mut stream = connect(&host);
    stream.write_all(b"connections").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let answer = read_answer(&mut stream);
    assert_eq!(answer["answer"], "connections", "{answer}");
}

// A client that half-closes without a request is let go, and one with a bad request gets an
// error; the master serves the next client either way.
#[test]
fn no_request_or_a_bad_one_gets_a_clean_end() {
    let host = Host::start("http", &[]);
    let mut silent = connect(&host);
    silent.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    assert_eq!(silent.read_to_end(&mut rest).unwrap(), 0, "closed without an answer");
    let mut bad = connect(&host);
    bad.write_all(b"format disk\n").unwrap();
    let answer = read_answer(&mut bad);
    assert_eq!(answer["answer"], "error", "{answer}");
    let mut good = connect(&host);
    good.write_all(b"status\n").unwrap();
    assert_eq!(read_answer(&mut good)["answer"], "status");
}

// Another user pre-creates the victim's runtime directory as a symlink to one of theirs, holding
// a pid file that names a running master and a socket of their own that answers "reload done".
// The victim's `host reload` must refuse the directory, never ask (nor believe) that socket.
#[test]
fn a_symlinked_runtime_directory_is_refused_before_anything_is_asked() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixListener;
    let host = Host::start("http", &[]);
    let attacker = host_tests::TempDir::new();
    let theirs = attacker.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(theirs.join("host.pid"), format!("{}\n", host.pid())).unwrap();
    let listener = UnixListener::bind(theirs.join("host.sock")).unwrap();
    listener.set_nonblocking(true).unwrap();
    let victim = host_tests::TempDir::new();
    std::os::unix::fs::symlink(&theirs, victim.join("host")).unwrap();
    let out = host_tests::run_host_in(victim.path(), ["reload"], Duration::from_secs(20));
    assert!(!out.status.success(), "believed a fake master: {out:?}");
    assert!(out.stderr.contains("symlink") && out.stderr.contains("--pid-file"), "{out:?}");
    assert!(listener.accept().is_err(), "the fake socket was asked");
}

/// A host started as `host ARGS…` with `XDG_RUNTIME_DIR` set to `runtime` (shared with others).
fn start_in_runtime(runtime: &std::path::Path, args: &[&str]) -> Host {
    let runtime = runtime.to_path_buf();
    let host = Host::spawn_with(args, move |cmd| {
        cmd.env("XDG_RUNTIME_DIR", runtime);
    });
    host.wait_for_log("host ready", Duration::from_secs(30)).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    host
}

/// The `host status …` command the start banner offers, as arguments after `host`.
fn banner_status_command(host: &Host) -> Vec<String> {
    let line = host.stdout().wait_for("status: `host status", ANSWER_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let command = line.rsplit("status: `").next().unwrap().trim_end().trim_end_matches('`');
    command.split_whitespace().skip(1).map(str::to_string).collect()
}

// Two hosts started by one user without --pid-file each get a pid file of their own; a control
// command without one then asks which (here, not at a terminal: it fails and lists them), the
// banner's status command reaches its own host, and with one host left it acts on that one.
#[test]
fn two_hosts_of_one_user_do_not_clash_and_control_commands_say_which() {
    let runtime = host_tests::TempDir::new();
    let web = start_in_runtime(runtime.path(), &["--plugin", "http", "--listen", "127.0.0.1:0"]);
    let mut text = start_in_runtime(runtime.path(), &["--plugin", "text", "--listen", "127.0.0.1:0"]);
    let out = host_tests::run_host_in(runtime.path(), ["status"], ANSWER_TIMEOUT);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("2 hosts are running") && out.stderr.contains("--pid-file"), "{out:?}");
    assert!(out.stderr.contains("http-127.0.0.1-0.pid") && out.stderr.contains("text-127.0.0.1-0.pid"), "{out:?}");
    for (host, pid) in [(&web, web.pid()), (&text, text.pid())] {
        let out = host_tests::run_host_in(runtime.path(), banner_status_command(host), ANSWER_TIMEOUT);
        assert!(out.status.success(), "{out:?}");
        assert!(out.stdout.contains(&format!("master pid {pid} ")), "{out:?}");
    }
    text.signal(host_tests::Signal::SIGINT);
    assert!(text.wait_exit(Duration::from_secs(20)).is_some(), "the text host did not stop");
    let out = host_tests::run_host_in(runtime.path(), ["status"], ANSWER_TIMEOUT);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains(&format!("master pid {} ", web.pid())), "{out:?}");
}

// Another user's socket at the control socket's path of a pid file naming a real master (root's
// here): the client checks the socket's peer credentials and refuses it before it sends or
// believes anything. (Needs root to listen as another user, and python3: skipped otherwise.)
#[test]
fn a_control_socket_held_by_another_user_is_not_believed() {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    if !nix::unistd::geteuid().is_root() || Command::new("python3").arg("-c").arg("").status().is_err() {
        eprintln!("note: needs root and python3; skipped");
        return;
    }
    let host = Host::start("http", &[]);
    let dir = host_tests::TempDir::new();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(dir.join("host.pid"), format!("{}\n", host.pid())).unwrap();
    let fake = "import socket, sys\n\
                s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)\n\
                print('ready', flush=True)\n\
                c, _ = s.accept(); c.recv(100)\n\
                c.sendall(b'{\"answer\":\"ok\",\"message\":\"reload done (fake)\"}\\n')\n";
    let mut listener = Command::new("python3")
        .args(["-c", fake])
        .arg(dir.join("host.sock"))
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(listener.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    let pid_file = dir.join("host.pid").display().to_string();
    let out = host_tests::run_host_in(dir.path(), ["reload", "--pid-file", &pid_file], ANSWER_TIMEOUT);
    let _ = listener.kill();
    let _ = listener.wait();
    assert!(!out.status.success(), "believed another user's socket: {out:?}");
    assert!(out.stderr.contains("refusing the control socket") && out.stderr.contains("uid 65534"), "{out:?}");
    assert!(!out.stdout.contains("fake"), "{out:?}");
}
