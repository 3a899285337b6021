//! Interop: the connection serves a client on the python `h2` library (an independent
//! implementation, strict about what it receives), over pipes, in turns. The client is
//! `testdata/h2_client.py` (what it sends and checks is described there); the python package
//! comes with `.ci/deps/http2.pip`.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use super::conn::{Config, Connection, Event};

/// The test's application: `/hello`, `/echo` (the body back), `/big` (300,000 bytes).
fn serve(conn: &mut Connection, bodies: &mut std::collections::HashMap<u32, Vec<u8>>) {
    while let Some(event) = conn.poll_event() {
        match event {
            Event::Request { stream, request, end_stream } => match request.path.as_deref() {
                Some("/hello") => {
                    conn.send_headers(stream, 200, &[("content-type", b"text/plain")], false).unwrap();
                    conn.send_data(stream, b"hello from http_proto", true).unwrap();
                }
                Some("/big") => {
                    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
                    conn.send_headers(stream, 200, &[("content-length", b"300000")], false).unwrap();
                    conn.send_data(stream, &body, true).unwrap();
                }
                _ => {
                    assert!(!end_stream);
                    bodies.insert(stream, Vec::new());
                }
            },
            Event::Data { stream, data, end_stream } => {
                let body = bodies.get_mut(&stream).expect("a body for /echo");
                body.extend_from_slice(&data);
                conn.release(stream, data.len());
                if end_stream {
                    let body = std::mem::take(body);
                    conn.send_headers(stream, 200, &[("x-received", body.len().to_string().as_bytes())], false)
                        .unwrap();
                    conn.send_data(stream, &body, true).unwrap();
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Runs the python client (`mode`: extra arguments) against `conn` in turns, `serve` answering
/// between turns; returns the client's JSON results.
fn exchange(conn: &mut Connection, mode: &[&str], mut serve: impl FnMut(&mut Connection)) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/h2/testdata/h2_client.py");
    let result = std::env::temp_dir().join(format!("http_proto_h2_interop_{}_{}.json", std::process::id(), mode.len()));
    let check = Command::new("python3").args(["-c", "import h2"]).status();
    assert!(
        check.is_ok_and(|s| s.success()),
        "this test needs python3 with the h2 package: pip install h2 (.ci/deps/http2.pip)"
    );
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(&result)
        .args(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut to_client = child.stdin.take().unwrap();
    let mut from_client = child.stdout.take().unwrap();
    let mut buf = Vec::new();
    let mut now = 0;
    loop {
        let mut len = [0u8; 4];
        if from_client.read_exact(&mut len).is_err() {
            break;
        }
        let mut chunk = vec![0; u32::from_be_bytes(len) as usize];
        from_client.read_exact(&mut chunk).expect("a whole chunk");
        buf.extend_from_slice(&chunk);
        now += 1;
        let used = conn.recv(now, &buf);
        buf.drain(..used);
        serve(conn);
        let out = conn.take_output();
        if to_client.write_all(&(out.len() as u32).to_be_bytes()).is_err() || to_client.write_all(&out).is_err() {
            break;
        }
    }
    drop(to_client);
    assert!(child.wait().expect("python exits").success(), "the python client failed");
    let text = std::fs::read_to_string(&result).expect("the client's results");
    let _ = std::fs::remove_file(&result);
    serde_json::from_str(&text).unwrap()
}

#[test]
fn python_h2_client_gets_its_answers() {
    // Small windows both ways: flow control has work to do.
    let config = Config { initial_window_size: 65_535, connection_window: 65_535, ..Config::default() };
    let mut conn = Connection::new(config);
    let mut bodies = std::collections::HashMap::new();
    let r = exchange(&mut conn, &[], |conn| {
        assert!(!conn.is_closed(), "connection error: {:?}", conn.stats());
        serve(conn, &mut bodies);
    });
    let text = r.to_string();
    assert_eq!(r["ended"], serde_json::json!([1, 3, 5]), "{text}");
    assert!(r.get("errors").is_none(), "{text}");
    assert_eq!(r["1"]["headers"][0], serde_json::json!([":status", "200"]));
    assert_eq!(r["1"]["body_len"], 21);
    assert_eq!(r["3"]["body_len"], 200_000);
    assert_eq!(r["3"]["body_sha256"], r["body_sha256"], "the echo is the body sent");
    assert_eq!(r["3"]["headers"][1], serde_json::json!(["x-received", "200000"]));
    assert_eq!(r["5"]["body_len"], 300_000);
    assert_eq!(r["5"]["body_sha256"], r["big_sha256"]);
    assert_eq!(conn.open_streams(), 0);
    assert_eq!(conn.queued_bytes(), 0);
}

#[test]
fn python_h2_rapid_reset_is_stopped_with_enhance_your_calm() {
    let mut conn = Connection::new(Config::default());
    let r = exchange(&mut conn, &["rapid-reset"], |conn| while conn.poll_event().is_some() {});
    // ENHANCE_YOUR_CALM (0xb), as python h2 read it, after the 201st reset in the window.
    assert_eq!(r["terminated"]["error_code"], 11, "{r}");
    assert_eq!(r["terminated"]["last_stream_id"], 401, "{r}");
    assert_eq!(conn.stats().rapid_reset, 1);
    assert!(conn.is_closed());
}
