//! The proxy across a hand-over, between two instances (`TestPlugin::hand_over_to`): an idle
//! client and the idle pool move and the next request reuses the carried upstream connection; a
//! client with a request in flight stays, and so does its upstream connection.

use plugin_api::testing::TestPlugin;
use plugin_api::{ConnId, Protocol};

use super::Proxy;

const CONFIG: &str = "upstreams = [\"127.0.0.1:9\"]";

/// A client with one request answered: its upstream connection is idle in the pool.
fn with_pooled_upstream() -> (TestPlugin<Proxy>, ConnId, ConnId) {
    let mut p = TestPlugin::<Proxy>::new(CONFIG).unwrap();
    let client = p.connect();
    p.feed(client, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let up = ConnId::new(0, 1000);
    p.call(|proxy, h| proxy.on_connect(h, up));
    p.feed(up, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
    assert!(String::from_utf8_lossy(&p.host.take_sent(client)).ends_with("\r\n\r\nhi"));
    p.host.take_sent(up);
    (p, client, up)
}

#[test]
fn an_idle_client_and_the_pool_move_and_the_upstream_connection_is_reused() {
    let (mut old, client, up) = with_pooled_upstream();
    let mut new = TestPlugin::<Proxy>::new(CONFIG).unwrap();
    let moved = old.hand_over_to(&mut new, &[client]).unwrap();
    assert_eq!(moved.len(), 2, "the client and its pooled upstream connection: {moved:?}");
    let (client2, up2) = (moved[0].1, moved[1].1);
    assert_eq!((moved[0].0, moved[1].0), (client, up));
    new.feed(client2, b"GET /again HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(new.host.connects.len(), 1, "no new upstream connection: {:?}", new.host.connects);
    assert!(String::from_utf8_lossy(&new.host.take_sent(up2)).starts_with("GET /again HTTP/1.1\r\n"));
    new.feed(up2, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let sent = String::from_utf8_lossy(&new.host.take_sent(client2)).to_string();
    assert!(sent.starts_with("HTTP/1.1 200 OK\r\n") && sent.ends_with("\r\n\r\nok"), "{sent:?}");
    assert!(!new.host.is_closed(client2));
}

#[test]
fn a_client_waiting_on_its_upstream_stays_with_it() {
    let (mut old, client, up) = with_pooled_upstream();
    old.feed(client, b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(String::from_utf8_lossy(&old.host.take_sent(up)).starts_with("GET /slow"));
    let mut new = TestPlugin::<Proxy>::new(CONFIG).unwrap();
    let moved = old.hand_over_to(&mut new, &[client]).unwrap();
    assert_eq!(moved, [], "nothing moves: the upstream connection is busy, not pooled");
    // The old instance answers it as before.
    old.feed(up, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert!(String::from_utf8_lossy(&old.host.take_sent(client)).ends_with("\r\n\r\nok"));
}

// A pooled connection whose upstream is no longer in the new config is closed, not pooled.
#[test]
fn a_pooled_connection_to_a_removed_upstream_is_closed() {
    let (mut old, client, _up) = with_pooled_upstream();
    let mut new = TestPlugin::<Proxy>::new("upstreams = [\"127.0.0.1:10\"]").unwrap();
    let moved = old.hand_over_to(&mut new, &[client]).unwrap();
    let up2 = moved[1].1;
    assert!(new.host.is_closed(up2));
    new.feed(moved[0].1, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(new.host.connects.last().map(String::as_str), Some("127.0.0.1:10"), "a new connection");
}
