//! The plugin's hand-over state: round trips and refusals.

use super::*;
use plugin_api::Protocol;

#[test]
fn a_streamed_body_moves_by_path_and_identity_and_a_changed_file_is_refused() {
    let dir = std::env::temp_dir().join(format!("http-handover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.bin");
    std::fs::write(&path, vec![5u8; 4096]).unwrap();
    let file = File::open(&path).unwrap();
    let parts = VecDeque::from([Part::Bytes(b"--b\r\n".to_vec()), Part::File { offset: 100, len: 3000 }]);
    let mut out = Vec::new();
    write_body(&file, true, &parts, &mut out).unwrap();
    let (moved, close, got) = read_body(&mut Reader(&out)).unwrap();
    assert!(close);
    assert_eq!(got, parts);
    assert_eq!(moved.metadata().unwrap().ino(), file.metadata().unwrap().ino());
    for n in 0..out.len() {
        assert!(read_body(&mut Reader(&out[..n])).is_err(), "cut at {n}");
    }
    // Replaced under the same name: not the file being sent.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, vec![6u8; 4096]).unwrap();
    assert!(read_body(&mut Reader(&out)).unwrap_err().contains("not the file"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_log_line_round_trips_and_garbage_is_refused() {
    let log = PendingLog {
        remote: Some("::1".parse().unwrap()),
        request_line: b"GET /big HTTP/1.1".to_vec(),
        referer: None,
        user_agent: Some(b"curl".to_vec()),
        status: 206,
        body: 12345,
    };
    let mut out = Vec::new();
    write_log(Some(&log), &mut out);
    let got = read_log(&mut Reader(&out)).unwrap().unwrap();
    assert_eq!(
        (got.remote, got.request_line, got.user_agent, got.status, got.body),
        (log.remote, log.request_line, log.user_agent, 206, 12345)
    );
    for n in 0..out.len() {
        assert!(read_log(&mut Reader(&out[..n])).is_err(), "cut at {n}");
    }
    assert!(read_log(&mut Reader(&[1, 9])).is_err(), "an unknown address kind");
}

#[test]
fn keep_alive_and_half_sent_requests_move_to_a_new_instance() {
    use plugin_api::testing::TestPlugin;
    let mut old = TestPlugin::<Http>::new("").unwrap();
    let mut new = TestPlugin::<Http>::new("").unwrap();
    let (a, b, fresh) = (old.connect(), old.connect(), old.connect());
    old.feed(a, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(old.host.take_sent(a).ends_with(b"Hello, World!"));
    old.feed(b, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhe");
    let moved = old.hand_over_to(&mut new, &[a, b, fresh]).unwrap();
    assert_eq!(moved.len(), 3, "{moved:?}");
    let (na, nb) = (moved[0].1, moved[1].1);
    new.feed(na, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(new.host.take_sent(na).ends_with(b"Hello, World!"));
    new.feed(nb, b"llo");
    let answer = new.host.take_sent(nb);
    assert!(answer.starts_with(b"HTTP/1.1 200") && answer.ends_with(b"\r\n\r\nhello"), "{answer:?}");
    // A state of another kind, or cut short, is refused.
    for bad in [&[9u8][..], &[1], &[1, 0, 0], &[1, 0, 0, 0, 7]] {
        assert!(!new.call(|p, h| p.adopt_conn(h, ConnId::new(99, 1), STATE_VERSION, bad)), "{bad:?}");
    }
    assert!(!new.call(|p, h| p.adopt_conn(h, ConnId::new(99, 1), STATE_VERSION + 1, &[0])), "a newer version");
}
