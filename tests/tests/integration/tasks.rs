//! Work off the event loop (tests/fixtures/tasks): jobs on the worker's task pool come back on
//! the loop as `on_task_done`, a panicking job is a failed job (not a dead worker), a plugin
//! thread's notifier wakes the loop, other clients are served while a job blocks, and a draining
//! worker waits for its running jobs.
//!
//! A blocking job is held at a "gate": a listener the test owns, from which the job reads one
//! line. Nothing here depends on timing: the job cannot finish before the test writes that line.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use host_tests::{is_alive, poll_until, Client, Host, Signal};

const WAIT: Duration = Duration::from_secs(10);

fn ask(c: &mut Client, line: &str) -> String {
    c.send(format!("{line}\n").as_bytes());
    let got = c.read_line().unwrap_or_else(|e| panic!("no answer to {line:?}: {e}"));
    String::from_utf8_lossy(&got).trim_end().to_string()
}

/// A gate: the job connects to it and waits for the line the test writes.
struct Gate {
    listener: TcpListener,
}

impl Gate {
    fn new() -> Gate {
        Gate { listener: TcpListener::bind("127.0.0.1:0").unwrap() }
    }
    fn port(&self) -> u16 {
        self.listener.local_addr().unwrap().port()
    }
    /// Waits until the job arrived at the gate (it is running), and returns its connection.
    fn job_arrived(&self) -> TcpStream {
        self.listener.set_nonblocking(true).unwrap();
        let stream = poll_until(WAIT, || self.listener.accept().ok().map(|(s, _)| s))
            .expect("the job connects to the gate: it runs");
        stream.set_nonblocking(false).unwrap();
        stream
    }
}

fn release(mut job: TcpStream, line: &str) {
    job.write_all(format!("{line}\n").as_bytes()).unwrap();
}

#[test]
fn a_task_result_comes_back_on_the_loop() {
    let host = Host::start("fixture_tasks", &["--count", "1"]);
    let mut c = Client::connect(host.port());
    assert_eq!(ask(&mut c, "compute 100"), "result 5050");
    // Many at once, on one connection: each answer arrives (in whatever order they finish).
    c.send(b"compute 1\ncompute 2\ncompute 3\ncompute 4\ncompute 5\ncompute 6\n");
    let mut got: Vec<String> =
        (0..6).map(|_| String::from_utf8_lossy(&c.read_line().unwrap()).trim_end().to_string()).collect();
    got.sort();
    assert_eq!(got, ["result 1", "result 10", "result 15", "result 21", "result 3", "result 6"]);
}

#[test]
fn a_panicking_task_is_reported_as_failed_and_the_worker_keeps_serving() {
    let mut host = Host::start("fixture_tasks", &["--count", "1"]);
    let mut c = Client::connect(host.port());
    let pid = ask(&mut c, "pid");
    let workers = host.worker_pids();
    assert_eq!(ask(&mut c, "panic"), "failed: task asked to panic");
    // Same worker, same connection, and the pool still runs jobs.
    assert_eq!(ask(&mut c, "pid"), pid);
    assert_eq!(host.worker_pids(), workers);
    assert_eq!(ask(&mut c, "compute 10"), "result 55");
    assert_eq!(ask(&mut Client::connect(host.port()), "ping"), "pong");
    host.wait_for_log("task asked to panic", WAIT).unwrap_or_else(|e| panic!("the panic is logged: {e}"));
    let out = host.command(["status"], WAIT);
    assert!(out.stdout.contains("tasks: submitted 2, failed 1, refused 0"), "status counts the tasks: {}", out.stdout);
}

#[test]
fn other_clients_are_served_while_a_job_blocks() {
    let host = Host::start("fixture_tasks", &["--count", "1", "--task-threads", "1"]);
    let port = host.port();
    let gate = Gate::new();
    let mut blocked = Client::connect(port);
    blocked.send(format!("gate {}\n", gate.port()).as_bytes());
    let job = gate.job_arrived();
    // The job holds the pool's only thread, but not the loop: everyone else is answered.
    let mut other = Client::connect(port);
    for _ in 0..3 {
        assert_eq!(ask(&mut other, "ping"), "pong");
    }
    assert_eq!(ask(&mut blocked, "ping"), "pong", "even the connection that waits for the job");
    release(job, "open");
    assert_eq!(String::from_utf8_lossy(&blocked.read_line().unwrap()).trim_end(), "gate: open");
}

#[test]
fn a_plugin_thread_wakes_the_loop_with_a_notifier() {
    let host = Host::start("fixture_tasks", &["--count", "1"]);
    let mut c = Client::connect(host.port());
    c.send(b"notify 3\n");
    // Nothing else wakes this idle worker: the notifier must.
    for i in 0..3 {
        assert_eq!(String::from_utf8_lossy(&c.read_line().unwrap()).trim_end(), format!("notified {i}"));
    }
}

#[test]
fn a_draining_worker_waits_for_its_running_job() {
    let host = Host::start("fixture_tasks", &["--count", "1", "--drain-timeout", "30"]);
    let port = host.port();
    let gate = Gate::new();
    let mut c = Client::connect(port);
    let pid: i32 = ask(&mut c, "pid").trim_start_matches("pid ").parse().unwrap();
    c.send(format!("gate {}\n", gate.port()).as_bytes());
    let job = gate.job_arrived();
    // SIGTERM by hand: the worker drains. Its one connection waits for the job (the fixture
    // keeps it open), and the job is held at the gate.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    host.wait_for_log("draining", WAIT).unwrap_or_else(|e| panic!("{e}"));
    assert!(is_alive(pid), "the worker waits for its job");
    release(job, "late");
    // The result is still delivered during the drain, and answered.
    assert_eq!(String::from_utf8_lossy(&c.read_line().unwrap()).trim_end(), "gate: late");
    host.wait_for_log("task done while draining", WAIT).unwrap_or_else(|e| panic!("{e}"));
    c.wait_closed(WAIT).expect("the connection closes after its last answer");
    poll_until(WAIT, || (!is_alive(pid)).then_some(())).expect("then the worker exits");
}

#[test]
fn a_draining_worker_waits_for_a_job_whose_connection_is_gone() {
    let host = Host::start("fixture_tasks", &["--count", "1", "--drain-timeout", "30"]);
    let gate = Gate::new();
    let mut c = Client::connect(host.port());
    let pid: i32 = ask(&mut c, "pid").trim_start_matches("pid ").parse().unwrap();
    c.send(format!("gate {}\n", gate.port()).as_bytes());
    let job = gate.job_arrived();
    // The client leaves: no connection is left, only the running job.
    drop(c);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    host.wait_for_log("draining", WAIT).unwrap_or_else(|e| panic!("{e}"));
    release(job, "orphan");
    // Had the worker exited with no connection left, nobody would log this.
    host.wait_for_log("task done while draining", WAIT).unwrap_or_else(|e| panic!("{e}"));
    poll_until(WAIT, || (!is_alive(pid)).then_some(())).expect("then the worker exits");
}

/// Writes `content` to `rel` under `dir` and drops its pages from the page cache (written back
/// first, then `POSIX_FADV_DONTNEED`): the next read of it must come from the disk. False on a
/// file system whose pages cannot be dropped (tmpfs: everything is cached, always).
fn write_cold(dir: &host_tests::TempDir, rel: &str, content: &[u8]) -> bool {
    use std::os::fd::AsRawFd;
    let path = dir.write(rel, content);
    let file = std::fs::File::open(&path).unwrap();
    file.sync_all().unwrap();
    let fs = nix::sys::statfs::statfs(&path).unwrap().filesystem_type();
    if fs == nix::sys::statfs::TMPFS_MAGIC {
        return false;
    }
    // The kernel may keep a page it was asked to drop (one still in a CPU's batch of pages being
    // added to its lists, on a busy machine): ask again until none is cached, and say so when
    // the file cannot be made cold (then there is nothing to check).
    for _ in 0..100 {
        nix::fcntl::posix_fadvise(file.as_raw_fd(), 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED).unwrap();
        if cached_pages(&file, content.len()) == 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("{rel}: the kernel keeps its pages cached; no cold reads to check");
    false
}

/// How many pages of the first `len` bytes of `file` the page cache holds (`mincore` on a
/// mapping, which reads nothing).
fn cached_pages(file: &std::fs::File, len: usize) -> usize {
    use nix::libc;
    use std::os::fd::AsRawFd;
    let page = 4096;
    // SAFETY: a fresh read-only shared mapping of a file this test owns (`len` > 0 bytes);
    // nothing else maps it, and it is unmapped below before the function returns.
    let map = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0) };
    assert_ne!(map, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: `map` is a live mapping of `len` bytes and `vec` has one byte per page of it, as
    // mincore(2) requires.
    let rc = unsafe { libc::mincore(map, len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    // SAFETY: the mapping made above, of `len` bytes, not used after this.
    unsafe { libc::munmap(map, len) };
    vec.iter().filter(|&&b| b & 1 != 0).count()
}

// The http plugin never reads a file from the disk inside the loop: a file that is not in the
// page cache (a small one and a streamed one) is read on the task pool, and arrives whole.
#[test]
fn the_http_plugin_reads_cold_files_on_the_task_pool() {
    let dir = host_tests::TempDir::new();
    let small: Vec<u8> = (0..100_000).map(|i| (i % 253) as u8).collect();
    let big: Vec<u8> = (0..(5 << 20)).map(|i| (i % 241) as u8).collect();
    let cold = write_cold(&dir, "www/small.bin", &small) & write_cold(&dir, "www/big.bin", &big);
    // (The default, `sendfile`, lets the host read the file: the pool is `file_io = "pool"`.)
    let config = format!("root = {:?}\nfile_io = \"pool\"", dir.join("www").display().to_string());
    let mut host = Host::start("http", &["--count", "1", "--plugin-config", &config]);
    let mut c = Client::connect(host.port());
    for (path, content) in [("/small.bin", &small), ("/big.bin", &big)] {
        let r = c.request(&host_tests::get(path));
        assert_eq!(r.status, 200, "{}", r.head);
        assert!(r.body == *content, "{path} arrived changed ({} bytes)", r.body.len());
    }
    assert_eq!(c.request(&host_tests::get("/small.bin")).body, small, "and again, cached now");
    let out = host.command(["status"], WAIT);
    if cold {
        assert!(out.stdout.contains("tasks: submitted"), "cold reads went to the task pool:\n{}", out.stdout);
    } else {
        eprintln!("the temp dir is on tmpfs: no cold reads to check");
    }
}

// HTTP/2 file bodies (DATA frames need the bytes: no sendfile) are read the same way whatever
// `file_io` says: what the page cache holds in the loop, a cold file on the task pool; both a
// small and a streamed file arrive whole over h2c.
#[test]
fn the_http_plugin_reads_cold_files_for_h2_on_the_task_pool() {
    let dir = host_tests::TempDir::new();
    let small: Vec<u8> = (0..100_000).map(|i| (i % 251) as u8).collect();
    let big: Vec<u8> = (0..(3 << 20)).map(|i| (i % 239) as u8).collect();
    let cold = write_cold(&dir, "www/small.bin", &small) & write_cold(&dir, "www/big.bin", &big);
    let config = format!("root = {:?}", dir.join("www").display().to_string());
    let mut host = Host::start("http", &["--count", "1", "--plugin-config", &config]);
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", host.port());
    // (One curl run each: curl 7.88 fails to reuse an h2c prior-knowledge connection.)
    for (path, content) in [("/small.bin", &small), ("/big.bin", &big)] {
        let out = dir.join("out.bin");
        let ran = crate::http_tools::curl(&[
            "--http2-prior-knowledge",
            "-o",
            out.to_str().unwrap(),
            "-w",
            "%{http_version} %{http_code}",
            &url(path),
        ]);
        assert_eq!(ran.text(), "2 200", "{path}");
        assert!(std::fs::read(&out).unwrap() == *content, "{path} arrived changed");
    }
    let out = host.command(["status"], WAIT);
    if cold {
        assert!(out.stdout.contains("tasks: submitted"), "cold reads went to the task pool:\n{}", out.stdout);
    } else {
        eprintln!("the temp dir is on tmpfs: no cold reads to check");
    }
}
