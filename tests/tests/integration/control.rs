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
