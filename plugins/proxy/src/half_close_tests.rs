//! `on_input_end`: a client that half-closed with a request in flight stays open for its
//! answer and closes after it; an idle one closes at once.

use plugin_api::testing::TestPlugin;
use plugin_api::InputEnd;

use super::Proxy;

const CONFIG: &str = "upstreams = [\"127.0.0.1:9\"]";

#[test]
fn a_half_closed_client_gets_its_answer_then_the_close() {
    let mut p = TestPlugin::<Proxy>::new(CONFIG).unwrap();
    let client = p.connect();
    p.feed(client, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(p.host.connects, ["127.0.0.1:9"], "the request goes upstream");
    let up = plugin_api::ConnId::new(0, 1000);
    p.call(|proxy, h| plugin_api::Protocol::on_connect(proxy, h, up));
    assert!(String::from_utf8_lossy(&p.host.take_sent(up)).starts_with("GET / HTTP/1.1\r\n"));

    assert_eq!(p.input_end(client), InputEnd::KeepOpen, "its answer is still to come");
    assert!(!p.host.is_closed(client));

    p.feed(up, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
    let sent = String::from_utf8_lossy(&p.host.take_sent(client)).to_string();
    assert!(sent.starts_with("HTTP/1.1 200 OK\r\n") && sent.ends_with("\r\n\r\nhi"), "{sent:?}");
    assert!(sent.contains("Connection: close\r\n"), "{sent:?}");
    assert!(p.host.is_closed(client), "closed once the answer is relayed");
}

#[test]
fn an_idle_client_that_half_closes_is_closed() {
    let mut p = TestPlugin::<Proxy>::new(CONFIG).unwrap();
    let client = p.connect();
    assert_eq!(p.input_end(client), InputEnd::Close);
    assert!(p.host.is_closed(client));
}
