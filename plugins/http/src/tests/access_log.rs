//! The access-log lines the plugin hands the host: one per response, once complete.

use super::*;

/// The line's fields after the time: `"request" status bytes "referer" "agent"`.
fn after_time(line: &str) -> &str {
    assert!(line.starts_with("192.0.2.7 - - ["), "{line}");
    assert_eq!(line.as_bytes()[15 + 26], b']', "{line}");
    &line[15 + 28..]
}

#[test]
fn each_response_is_logged_with_its_request_status_and_body_bytes() {
    let mut c = Client::logging("");
    c.feed(b"GET /?q=1 HTTP/1.1\r\nHost: a\r\nReferer: http://x/\"y\r\nUser-Agent: t\\est\r\n\r\n").take();
    c.feed(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").take();
    c.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc").take();
    let lines = c.log_lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(after_time(&lines[0]), r#""GET /?q=1 HTTP/1.1" 200 13 "http://x/\x22y" "t\x5Cest""#);
    assert_eq!(after_time(&lines[1]), r#""HEAD / HTTP/1.1" 200 0 "-" "-""#);
    assert_eq!(after_time(&lines[2]), r#""POST / HTTP/1.1" 200 3 "-" "-""#);
}

#[test]
fn the_common_format_has_no_referer_or_agent() {
    let mut c = Client::logging("access_log_format = \"common\"");
    c.feed(b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\n\r\n").take();
    assert_eq!(after_time(&c.log_lines()[0]), r#""GET / HTTP/1.1" 200 13"#);
    assert!(Config::parse("access_log_format = \"json\"").is_err());
}

#[test]
fn errors_the_parser_answers_are_logged() {
    let mut c = Client::logging("");
    c.feed(b"GET / HTTP/1.1\r\n\r\n");
    let sent = c.take();
    assert!(sent.starts_with("HTTP/1.1 400"), "{sent}");
    let body = body(&sent).len();
    let lines = c.log_lines();
    assert_eq!(after_time(&lines[0]), format!(r#""GET / HTTP/1.1" 400 {body} "-" "-""#));
    let mut c = Client::logging("");
    c.feed(b"BR\x00KEN\r\n\r\n");
    let lines = c.log_lines();
    assert_eq!(lines.len(), 1);
    assert!(after_time(&lines[0]).starts_with(r#""BR\x00KEN" 400 "#), "{lines:?}");
    // A request that never came whole: 408, no request line.
    let mut c = Client::logging("");
    c.feed(b"GET / HT").error(ConnError::Timeout);
    let lines = c.log_lines();
    assert!(after_time(&lines[0]).starts_with(r#""-" 408 "#), "{lines:?}");
}

#[test]
fn files_304_206_and_streamed_bodies_are_logged() {
    let (_tmp, root) = crate::files::tests::tree("log");
    let content: Vec<u8> = (0..(STREAM_AT as usize * 2 + 7)).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("big.bin"), &content).unwrap();
    let mut c = Client::logging(&format!("root = {:?}", root.display().to_string()));
    let r = c.feed(b"GET /sub/a.txt HTTP/1.1\r\nHost: a\r\n\r\n").take();
    let etag = header(&r, "etag").unwrap().to_string();
    c.feed(format!("GET /sub/a.txt HTTP/1.1\r\nHost: a\r\nIf-None-Match: {etag}\r\n\r\n").as_bytes()).take();
    c.feed(b"GET /big.bin HTTP/1.1\r\nHost: a\r\nRange: bytes=10-19\r\n\r\n").take();
    c.feed(b"GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\n").take_bytes();
    let lines: Vec<String> = c.log_lines().iter().map(|l| after_time(l).to_string()).collect();
    assert_eq!(
        lines,
        [
            format!(r#""GET /sub/a.txt HTTP/1.1" 200 {} "-" "-""#, body(&r).len()),
            r#""GET /sub/a.txt HTTP/1.1" 304 0 "-" "-""#.to_string(),
            r#""GET /big.bin HTTP/1.1" 206 10 "-" "-""#.to_string(),
            format!(r#""GET /big.bin HTTP/1.1" 200 {} "-" "-""#, content.len()),
        ]
    );
    c.close();
    assert!(c.log_lines().is_empty(), "logged once");
}

#[test]
fn nothing_is_formatted_without_an_access_log() {
    let mut c = Client::new("");
    call(&mut c.http, &mut c.host, |h, host| h.on_worker_start(host)).unwrap();
    c.feed(GET).take();
    assert!(c.host.access_log.is_none());
    assert!(c.http.log_line.is_empty(), "no line was formatted");
}
