//! Fuzz target for the master↔worker channel framing, on the master's side (it decodes what a
//! worker sends, the less trusted direction). Bytes go through a real socket pair. Invariants:
//! - the stream split at any points (each piece read before the next is written) decodes to the
//!   same messages and the same error as the stream written whole;
//! - a frame announcing more than the frame limit (or more descriptors than a frame may carry)
//!   breaks the channel before it is buffered, and no message after it is decoded;
//! - a stream of well-formed frames cut anywhere never yields a message it did not hold whole.

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use host_fuzz::{run_seeds, splits, Budget, Report};

use super::{Channel, HEADER, MAX_FDS_PER_FRAME};
use crate::ctl::messages::{ReportKind, ToMaster, PROTOCOL};

/// A small frame limit, so that mutated lengths hit it.
const MAX_FRAME: usize = 1024;

type MasterSide = Channel<UnixStream, crate::ctl::ToWorker, ToMaster>;

fn frame(msg: &ToMaster) -> Vec<u8> {
    let payload = postcard::to_stdvec(msg).expect("encodes");
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.push(0);
    out.extend_from_slice(&payload);
    out
}

fn seeds() -> Vec<Vec<u8>> {
    let hello = frame(&ToMaster::Hello { protocol: PROTOCOL });
    let msgs = [
        ToMaster::Ready,
        ToMaster::Alive { messages: 1 << 40, rss_bytes: 64 << 20 },
        ToMaster::Report { id: 7, kind: ReportKind::Status, json: "{\"slot\":1}".into() },
        ToMaster::Report { id: 0, kind: ReportKind::Connections, json: "[]".into() },
        ToMaster::Error("plugin refused its config".into()),
    ];
    let mut all = hello.clone();
    msgs.iter().for_each(|m| all.extend(frame(m)));
    let mut seeds = vec![all, frame(&ToMaster::Error("protocol mismatch".into()))];
    seeds.extend(msgs.iter().map(|m| [hello.clone(), frame(m)].concat()));
    seeds
}

/// Writes `pieces` one by one, reading after each, then closes: the messages and the error.
fn decode(pieces: &[&[u8]]) -> (Vec<ToMaster>, Option<String>) {
    let (ours, mut theirs) = UnixStream::pair().expect("socketpair");
    ours.set_nonblocking(true).expect("non-blocking");
    let mut ch: MasterSide = Channel::new(ours).with_limits(MAX_FRAME, 1 << 20);
    let mut got = Vec::new();
    theirs.set_nonblocking(true).expect("non-blocking");
    for piece in pieces {
        if let Err(e) = theirs.write_all(piece) {
            // Full only once the channel stopped reading (it broke): what follows is not read.
            assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
            assert!(ch.error.is_some(), "the socket filled up while the channel still reads");
            break;
        }
        got.extend(ch.read());
    }
    theirs.shutdown(Shutdown::Write).expect("shutdown");
    got.extend(ch.read());
    assert!(ch.closed, "the end of the stream closes the channel");
    (got, ch.error.clone())
}

/// Walks the frame headers: the index of the first frame over the limits, if every frame before
/// it is whole and carries no descriptors (else the channel stops earlier, for its own reason).
fn first_oversize(input: &[u8]) -> Option<usize> {
    let (mut at, mut index) = (0, 0);
    while input.len() - at >= HEADER {
        let len = u32::from_le_bytes(input[at..at + 4].try_into().expect("4 bytes")) as usize;
        let nfds = input[at + 4] as usize;
        if len > MAX_FRAME || nfds > MAX_FDS_PER_FRAME {
            return Some(index);
        }
        if nfds > 0 || input.len() - at < HEADER + len {
            return None;
        }
        at += HEADER + len;
        index += 1;
    }
    None
}

fn check(input: &[u8], salt: u64) {
    let whole = decode(&[input]);
    let cuts = splits(input.len(), salt);
    let mut pieces = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        pieces.push(&input[from..cut]);
        from = cut;
    }
    let split = decode(&pieces);
    assert_eq!(split, whole, "split at {cuts:?}");
    let (messages, error) = whole;
    if let Some(index) = first_oversize(input) {
        let error = error.as_deref().unwrap_or_else(|| panic!("frame {index} over the limit was not refused"));
        assert!(messages.len() <= index, "{} messages decoded past an oversize frame {index}", messages.len());
        // An earlier frame may have failed to decode; otherwise the limit is what stopped it.
        if messages.len() == index && !error.contains("decode") && !error.contains("hello") {
            assert!(error.contains("announced a frame"), "{error}");
        }
    }
    // Every message decoded was whole in the input: cutting the input before its last byte
    // loses at least the last message.
    if !messages.is_empty() && error.is_none() && input.len() > 1 {
        let (cut, _) = decode(&[&input[..input.len() - 1]]);
        assert!(cut.len() < messages.len(), "a cut stream yielded as many messages");
    }
}

fn fuzz(budget: Budget) -> Report {
    let r = run_seeds("channel_frames", seeds(), budget, 2048, check);
    eprintln!("fuzz channel_frames: {} rounds in {:.1?}, no failure", r.rounds, r.elapsed);
    r
}

#[test]
fn fuzz_channel_frames_quick() {
    fuzz(Budget::Rounds(400));
}

/// The long run (`bench/fuzz.sh`): `FUZZ_SECS` seconds, or `FUZZ_ROUNDS` rounds.
#[test]
#[ignore = "long fuzz run: bench/fuzz.sh"]
fn fuzz_channel_frames_long() {
    fuzz(Budget::from_env(1_000_000));
}
