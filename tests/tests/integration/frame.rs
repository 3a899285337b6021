//! Workerman's Frame protocol through the `frame` plugin: a 4-byte big-endian length (header
//! included), then the payload; every frame is echoed back.

use std::io::{ErrorKind, Read};
use std::time::Duration;

use host_tests::{Host, IO_TIMEOUT};

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = ((payload.len() + 4) as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// A raw connection, read byte-exact.
struct Conn(std::net::TcpStream);

impl Conn {
    fn open(port: u16) -> Conn {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Conn(s)
    }

    fn send(&mut self, bytes: &[u8]) {
        std::io::Write::write_all(&mut self.0, bytes).unwrap();
    }

    /// Reads one frame: its payload.
    fn read_frame(&mut self) -> Vec<u8> {
        let mut header = [0u8; 4];
        self.0.read_exact(&mut header).unwrap_or_else(|e| panic!("no frame header: {e}"));
        let len = u32::from_be_bytes(header) as usize;
        assert!(len >= 4, "bad length {len} from the server");
        let mut payload = vec![0u8; len - 4];
        self.0.read_exact(&mut payload).unwrap_or_else(|e| panic!("no frame payload: {e}"));
        payload
    }

    /// Waits for the server's close; fails when anything arrives first or nothing happens.
    fn expect_close(&mut self) {
        let mut buf = [0u8; 64];
        match self.0.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Ok(n) => panic!("expected a close, got {:?}", &buf[..n]),
            Err(e) => panic!("expected a close within {IO_TIMEOUT:?}: {e}"),
        }
    }
}

#[test]
fn frames_are_echoed_however_they_are_cut() {
    let host = Host::start("frame", &[]);
    let mut c = Conn::open(host.port());
    c.send(&frame(b"hello"));
    assert_eq!(c.read_frame(), b"hello");
    // Several frames in one write, an empty one among them.
    let batch = [frame(b"one"), frame(b""), frame(&[7u8; 3000]), frame(b"last")].concat();
    c.send(&batch);
    assert_eq!(c.read_frame(), b"one");
    assert_eq!(c.read_frame(), b"");
    assert_eq!(c.read_frame(), vec![7u8; 3000]);
    assert_eq!(c.read_frame(), b"last");
    // One frame split inside its header and inside its payload, plus the start of the next.
    let split = [frame(b"split across writes"), frame(b"next")].concat();
    for piece in [&split[..2], &split[2..9], &split[9..25], &split[25..]] {
        c.send(piece);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.read_frame(), b"split across writes");
    assert_eq!(c.read_frame(), b"next");
}

// A length below the header's own 4 bytes, or one far over the max package size, closes that
// connection at once (nothing is buffered, nothing is answered); the worker goes on serving.
#[test]
fn impossible_lengths_close_the_connection_only() {
    let host = Host::start("frame", &["--count", "1"]);
    let mut keep = Conn::open(host.port());
    keep.send(&frame(b"before"));
    assert_eq!(keep.read_frame(), b"before");
    for bad in [&[0u8, 0, 0, 3][..], &[0, 0, 0, 0], &[0xff, 0xff, 0xff, 0xff, b'x']] {
        let mut c = Conn::open(host.port());
        c.send(&frame(b"ok first"));
        assert_eq!(c.read_frame(), b"ok first");
        c.send(bad);
        c.expect_close();
    }
    // Exactly the max package size is served; one byte more is refused.
    let small = Host::start("frame", &["--count", "1", "--max-package-size", "1024"]);
    let mut c = Conn::open(small.port());
    c.send(&frame(&[1u8; 1020]));
    assert_eq!(c.read_frame(), vec![1u8; 1020]);
    c.send(&frame(&[1u8; 1021]));
    c.expect_close();
    keep.send(&frame(b"after"));
    assert_eq!(keep.read_frame(), b"after");
}
