//! `examples/http_app`: a JSON API built on the http_proto library, run by the real host.

use host_tests::{get, post, Client, Host};

use crate::http_tools::curl;

#[test]
fn json_routes_and_errors() {
    let host = Host::start("http_app", &[]);
    let mut c = Client::connect(host.port());
    let r = c.request(&get("/hello?name=x"));
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.body_text(), r#"{"hello":"x"}"#);
    assert_eq!(c.request(&get("/hello?name=a%20b")).body_text(), r#"{"hello":"a b"}"#);
    let r = c.request(&post("/sum", b"[1, 2, 3.5]"));
    assert_eq!((r.status, r.body_text().as_str()), (200, r#"{"sum":6.5}"#));
    // A body in chunks, decoded by the library; pipelined with the next request.
    let (mut batch, chunks) = host_tests::post_chunked("/sum", &[b"[40,", b" 2]"]);
    batch.extend(chunks.concat());
    batch.extend(get("/nope"));
    batch.extend(get("/sum"));
    batch.extend(post("/sum", b"{\"not\":\"an array\"}"));
    c.send(&batch);
    let rs = c.read_responses(4).expect("four answers");
    assert_eq!((rs[0].status, rs[0].body_text().as_str()), (200, r#"{"sum":42}"#));
    assert_eq!(rs[1].status, 404);
    assert_eq!((rs[2].status, rs[2].header("Allow")), (405, Some("POST")));
    assert_eq!(rs[3].status, 400);
    // HEAD: the head of the GET, no body (curl would complain about a body it did not expect).
    let head = curl(&["-I", &format!("http://127.0.0.1:{}/hello", host.port())]).text();
    assert!(head.starts_with("HTTP/1.1 200 OK") && head.contains("Content-Length: 17\r\n"), "{head}");
    assert_eq!(c.request(&get("/hello")).body_text(), r#"{"hello":"world"}"#);
    // The library's own refusals.
    let mut bad = Client::connect(host.port());
    let r = bad.request(b"GET /hello HTTP/1.1\r\n\r\n");
    assert_eq!((r.status, r.header("Connection")), (400, Some("close")));
}

// The same application over HTTP/2 without a line of its own (the library frames it): curl with
// prior knowledge gets the routes, a POST body, 404/405/400, HEAD's head; nghttp sends
// concurrent streams on one connection; a body over the limit is 413.
#[test]
fn the_same_routes_over_h2c() {
    let host = Host::start("http_app", &[]);
    let dir = host_tests::TempDir::new();
    let big = dir.write("big.json", format!("[{}1]", "1,".repeat(600_000)));
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", host.port());
    let h2c = |args: &[&str]| curl(&[&["--http2-prior-knowledge"], args].concat());
    let got = h2c(&["-w", " %{http_version} %{http_code}", &url("/hello?name=x")]).text();
    assert_eq!(got, r#"{"hello":"x"} 2 200"#);
    let sum = h2c(&["-w", " %{http_code}", "--data-binary", "[1, 2, 3.5]", &url("/sum")]).text();
    assert_eq!(sum, r#"{"sum":6.5} 200"#);
    for (args, want) in [
        (vec![url("/nope")], "404"),
        (vec![url("/sum")], "405"),
        (vec!["--data-binary".into(), "{}".into(), url("/sum")], "400"),
    ] {
        let mut all = vec!["-s", "-o", "/dev/null", "-w", "%{http_code}"];
        all.extend(args.iter().map(String::as_str));
        assert_eq!(h2c(&all).text(), want, "{args:?}");
    }
    let head = h2c(&["-I", &url("/hello")]).text();
    assert!(head.starts_with("HTTP/2 200") && head.contains("content-length: 17\r\n"), "{head}");

    let mut cmd = std::process::Command::new("nghttp");
    cmd.arg("-n").arg("--stat").args([url("/hello?name=a"), url("/hello?name=b"), url("/nope")]);
    let ran = crate::http_tools::run(&mut cmd, std::time::Duration::from_secs(30));
    assert!(ran.success, "nghttp failed: {}\n{}", ran.text(), ran.stderr);
    let stat = ran.text();
    assert_eq!(stat.matches(" 200 ").count(), 2, "{stat}");
    assert_eq!(stat.matches(" 404 ").count(), 1, "{stat}");

    // A body over the limit: 413 at once, then RST_STREAM NO_ERROR (RFC 9113 §8.1: the client
    // need not send the rest). nghttp, as curl 7.88 reports that reset as a failure.
    let mut cmd = std::process::Command::new("nghttp");
    cmd.arg("-v").arg("-d").arg(&big).arg(url("/sum"));
    let ran = crate::http_tools::run(&mut cmd, std::time::Duration::from_secs(30));
    let out = ran.text();
    assert!(out.contains(":status: 413"), "{out}");
    assert!(out.contains("error_code=NO_ERROR"), "{out}");
}

// Over TLS the library offers `h2` by ALPN itself (`Host::set_alpn`): the application gets
// HTTP/2 without a `tls_alpn` of its own, and HTTP/1.1 clients still get HTTP/1.1.
#[test]
fn h2_over_tls_by_alpn_without_configuration() {
    let dir = host_tests::TempDir::new();
    let (cert, key) = crate::http2::make_cert(&dir);
    let host = Host::start("http_app", &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let resolve = format!("localhost:{}:127.0.0.1", host.port());
    let url = format!("https://localhost:{}/hello?name=t", host.port());
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let ran =
            curl(&["--cacert", cert.to_str().unwrap(), "--resolve", &resolve, flag, "-w", " %{http_version}", &url]);
        assert_eq!(ran.text(), format!(r#"{{"hello":"t"}} {version}"#), "{flag}");
    }
}
