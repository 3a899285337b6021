//! The old worker's frames, without processes: what `cancel_unsent` drops, what a failed write brings back.

use super::*;
use crate::ctl::{Fallback, HandoverChannel, MovedSession, PROTOCOL};
use crate::worker::core::Origin;
use crate::worker::phase::ConnPhase;

/// An old worker's side of a hand-over over `channel`, accepted, nothing queued yet.
fn old_side(channel: HandoverChannel<mio::net::UnixStream>) -> OldSide {
    let mut old = OldSide::new(channel, Fallback::Stop, 1000, 1000);
    old.stopped_ms = Some(0);
    old
}

/// A UDP session's snapshot.
fn session() -> crate::worker::Snapshot {
    crate::worker::Snapshot {
        phase: ConnPhase::Open,
        origin: Origin::Accepted,
        peer: Some("127.0.0.1:9".parse().unwrap()),
        local: None,
        cred: None,
        server_name: None,
        input: Vec::new(),
        expect: None,
        output: Vec::new(),
        files: Vec::new(),
        eof: false,
        hup: false,
        hold: Default::default(),
        idle_ms: 0,
        message_age_ms: None,
        age_ms: 0,
        bytes_in: 0,
        bytes_out: 0,
        topics: Vec::new(),
        topic_marks: Vec::new(),
        heard: Vec::new(),
    }
}

/// Queues a `Sessions` frame of `n` UDP sessions, each with `state` bytes of plugin state.
fn queue_sessions(old: &mut OldSide, n: usize, state: usize) {
    let moved = (0..n).map(|_| MovedSession { snapshot: session(), state: vec![7; state] }).collect();
    old.outgoing.push_back(Outgoing::bare(Handover::Sessions(moved), 0));
    old.awaiting.push_back(Awaited::Sessions { count: n });
}

fn queue_done(old: &mut OldSide) {
    old.outgoing.push_back(Outgoing::bare(Handover::Done, 0));
    old.awaiting.push_back(Awaited::Done);
}

/// The counts of the answers still awaited, in order (`Done` and a step: None).
fn awaited(old: &OldSide) -> Vec<Option<usize>> {
    let count = |a: &Awaited| match a {
        Awaited::Conns { count, .. } | Awaited::Sessions { count } => Some(*count),
        Awaited::Done | Awaited::Step => None,
    };
    old.awaiting.iter().map(count).collect()
}

// A replacement that does not read: the first frame (2 MiB of session state, more than the
// socket holds) is handed to the channel and written in part; the next frame and `Done` wait
// behind it. At the deadline those two are dropped (their 3 sessions come back), the first is
// still awaited, and `Done` goes again after it (the caller queues it).
#[test]
fn cancel_drops_the_frames_stuck_behind_a_full_channel() {
    let (ours, _replacement) = mio::net::UnixStream::pair().unwrap();
    let mut old = old_side(HandoverChannel::new(ours).with_max_fds(crate::ctl::channel::MAX_FDS_PER_HANDOVER_FRAME));
    queue_sessions(&mut old, 2, 1 << 20);
    queue_sessions(&mut old, 3, 16);
    queue_done(&mut old);
    assert!(!send_outgoing(&mut old).unwrap(), "no worker state among them");
    assert_eq!(old.outgoing.len(), 2, "the second frame and Done wait behind the first");
    assert!(!old.channel.flush().unwrap(), "the socket is full: the first frame is partly queued");
    assert_eq!(drop_unsent(&mut old), Unsent { first_place: None, sessions: 3, done: true });
    assert!(old.outgoing.is_empty());
    assert_eq!(awaited(&old), [Some(2)], "the frame handed to the channel is still answered");
}

// Frames that lend connections: the held ones from the first place a dropped frame lends come
// back; the worker state's frame (no answer) is passed over; those sent before stay lent.
#[test]
fn cancel_takes_back_from_the_first_connection_a_dropped_frame_lends() {
    let (ours, _replacement) = mio::net::UnixStream::pair().unwrap();
    let mut old = old_side(HandoverChannel::new(ours));
    old.held_base = 10;
    // Sent: connections 10 and 11. Not sent: the state, 12..15, 15..16, Done.
    old.awaiting.push_back(Awaited::Conns { count: 2, since_ms: 0 });
    let frame = |lends: Range<usize>, state: bool| Outgoing {
        frame: Handover::Conns(Vec::new()),
        lends,
        owned: Vec::new(),
        state,
    };
    old.outgoing.push_back(frame(12..12, true));
    for lends in [12..15, 15..16] {
        old.awaiting.push_back(Awaited::Conns { count: lends.len(), since_ms: 0 });
        old.outgoing.push_back(frame(lends, false));
    }
    queue_done(&mut old);
    assert_eq!(drop_unsent(&mut old), Unsent { first_place: Some(12), sessions: 0, done: true });
    assert!(old.outgoing.is_empty());
    assert_eq!(awaited(&old), [Some(2)]);
}

// The replacement refuses and closes its end while this side still writes a frame (CI saw it:
// a worker state refused after the copy's steps, the connections' frame going): the write fails
// (`ECONNRESET` or `EPIPE`), and the refusal, in this side's socket already, comes with the
// error, so that the hand-over reports it rather than the broken pipe.
#[test]
fn a_refusal_sent_while_a_frame_is_written_comes_with_the_send_error() {
    let (ours, theirs) = mio::net::UnixStream::pair().unwrap();
    let mut old = old_side(HandoverChannel::new(ours).with_max_fds(crate::ctl::channel::MAX_FDS_PER_HANDOVER_FRAME));
    queue_sessions(&mut old, 2, 1 << 20);
    assert!(!send_outgoing(&mut old).unwrap(), "no worker state among them");
    assert!(old.channel.pending(), "the socket is full: the frame is partly queued");
    let mut replacement: HandoverChannel<mio::net::UnixStream> = HandoverChannel::new(theirs);
    replacement.send(&Handover::Hello { protocol: PROTOCOL }).unwrap();
    replacement.send(&Handover::Failed("the plugin refused the worker state".into())).unwrap();
    drop(replacement);
    queue_done(&mut old);
    let failed = send_outgoing(&mut old).expect_err("the replacement's end is closed");
    let answers: Vec<Handover> = failed.answers.into_iter().map(|(msg, _)| msg).collect();
    assert_eq!(
        answers,
        [Handover::Hello { protocol: PROTOCOL }, Handover::Failed("the plugin refused the worker state".into())],
        "{}",
        failed.error
    );
}

// A replacement gone without a word: the error alone.
#[test]
fn a_replacement_gone_without_an_answer_leaves_the_send_error_alone() {
    let (ours, theirs) = mio::net::UnixStream::pair().unwrap();
    let mut old = old_side(HandoverChannel::new(ours));
    drop(theirs);
    queue_done(&mut old);
    let failed = send_outgoing(&mut old).expect_err("the replacement's end is closed");
    assert!(failed.answers.is_empty());
    assert_eq!(failed.error.kind(), io::ErrorKind::BrokenPipe, "{}", failed.error);
}
