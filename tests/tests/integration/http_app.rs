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
