//! Where a connection is in its life, and where the worker is in its own: two documented enums
//! the loop and the connection table match on, instead of flags read together.
//!
//! A connection's phase says what the loop may do with it (read, dispatch, write, time it out)
//! and what the plugin has heard of it; what may happen to it in any phase (the plugin paused
//! it, its send buffer is full, the peer half-closed) is kept beside the phase in `Conn`.

/// A connection's phase. Transitions (each done by one function of the core or the dispatch):
///
/// ```text
///  accepted, TLS ─► Handshaking ──handshake done──► Open ◄── accepted, plain
///  Host::connect ─► Connecting ───connected───────► Open
///  Open | Handshaking | Connecting ──close asked, end of input*, error, timeout──► Closing
///  Closing ──output flushed, our side shut──► Lingering ──peer closed or deadline──► (removed)
///  any phase ──read/write error, handshake timeout, connect failure──► (removed)
///  Open | Closing ──export──► (out of the table, an `ExportedConn`) ──import──► same phase
/// ```
///
/// *End of input on an `Open` connection: `Closing` unless the plugin's `on_input_end` keeps it
/// open (then it stays `Open`, not read again, until the plugin closes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConnPhase {
    /// Accepted under TLS, the handshake not complete. The plugin has not heard of it
    /// (`on_connect` comes after the handshake) and hears nothing if it closes before; it is
    /// read (the handshake needs it) but nothing is dispatched, and it is closed at the
    /// handshake timeout.
    Handshaking,
    /// Opened by the plugin (`Host::connect`), its connect under way until `until_ms`: the plugin
    /// has its id, sends are refused, and the loop waits for writability (`take_error` decides).
    Connecting { until_ms: u64 },
    /// Established: read, framed and dispatched, its output flushed every turn.
    Open,
    /// Closing once its output is flushed: nothing more is read or dispatched. `announced`: the
    /// plugin heard `on_connect` (false for a connection that closes during its TLS handshake:
    /// it hears nothing of it).
    Closing { announced: bool },
    /// Output flushed and our side shut down; the plugin heard `on_close`. Reading and discarding
    /// until the peer closes or `until_ms`, so a client still sending gets our last response
    /// instead of a reset.
    Lingering { until_ms: u64 },
}

impl ConnPhase {
    /// The plugin knows the connection (heard `on_connect`, or made it with `Host::connect`) and
    /// has not heard `on_close`: it hears `on_error`/`on_close` about it.
    pub fn announced(self) -> bool {
        match self {
            ConnPhase::Connecting { .. } | ConnPhase::Open => true,
            ConnPhase::Closing { announced } => announced,
            ConnPhase::Handshaking | ConnPhase::Lingering { .. } => false,
        }
    }

    /// The plugin's sends are queued in this phase (a closing connection still takes its last
    /// answer).
    pub fn takes_output(self) -> bool {
        matches!(self, ConnPhase::Handshaking | ConnPhase::Open | ConnPhase::Closing { .. })
    }

    /// The phase after a close is asked (by the plugin, the peer, an error or a timeout):
    /// flush what is queued, then shut down. Unchanged once closing.
    pub fn close(self) -> ConnPhase {
        match self {
            ConnPhase::Handshaking => ConnPhase::Closing { announced: false },
            ConnPhase::Connecting { .. } | ConnPhase::Open => ConnPhase::Closing { announced: true },
            closing @ (ConnPhase::Closing { .. } | ConnPhase::Lingering { .. }) => closing,
        }
    }

    /// The name `host connections` shows (`paused`: an open connection whose reading is held).
    pub fn name(self, paused: bool) -> &'static str {
        match self {
            ConnPhase::Handshaking => "handshake",
            ConnPhase::Connecting { .. } => "connecting",
            ConnPhase::Open if paused => "paused",
            ConnPhase::Open => "open",
            ConnPhase::Closing { .. } => "closing",
            ConnPhase::Lingering { .. } => "lingering",
        }
    }
}

/// Why the worker's loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The master said stop (or SIGINT): connections are closed now.
    Stopped,
    /// A drain ended: no connection and no task left, or its deadline passed.
    Drained,
    /// The channel to the master closed or broke.
    MasterGone,
}

/// The worker's phase. Transitions (`drain`, `stop`, `after_turn`):
///
/// ```text
///  Serving ──Drain / SIGTERM──► Draining ──nothing left, or deadline──► Exiting(Drained)
///  Serving | Draining ──Stop / SIGINT / master gone──► Exiting
///  Serving ──HandOver──► HandingOver { serving } ──connections stop──► HandingOver { !serving }
///  HandingOver ──acknowledged, refused, failed or timed out──►
///      Draining (what stayed drains: `Fallback::Drain`) | Exiting (`Fallback::Stop`)
/// ```
///
/// A hand-over begins `serving`: while the replacement has not accepted, and while the worker
/// state is copied in steps (pre-copy), the worker goes on accepting and serving as before; it
/// stops accepting once its connections stop (`send::begin_sending`), and from then on the
/// slot's new clients wait in its accept queue for the replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerPhase {
    /// Accepting connections (or reading the UDP socket) and serving them.
    Serving,
    /// Not accepting: the plugin heard `on_drain` for every connection; the worker exits once no
    /// connection and no task is left, or at `deadline_ms`.
    Draining { deadline_ms: u64 },
    /// Moving its connections to the slot's replacement (each leaves the table as an
    /// `ExportedConn`), until the replacement acknowledges, refuses or fails, or `deadline_ms`;
    /// then what stayed (or was taken back) drains or stops. The hand-over ends it
    /// (`event_loop/handover.rs`), never an idle table: every connection may be out of it.
    /// `serving`: the connections have not stopped yet (no answer to the offer yet, or the
    /// worker state is being copied in steps): the worker still accepts and is not draining.
    HandingOver { deadline_ms: u64, serving: bool },
    /// The loop ends after this turn; `was_draining`: what `Host::is_draining` says meanwhile.
    Exiting { exit: Exit, was_draining: bool },
}

impl WorkerPhase {
    /// The listening socket is read: new connections (or UDP sessions) are taken.
    pub fn accepting(self) -> bool {
        matches!(self, WorkerPhase::Serving | WorkerPhase::HandingOver { serving: true, .. })
    }

    /// What `Host::is_draining` tells the plugin.
    pub fn is_draining(self) -> bool {
        match self {
            WorkerPhase::Serving | WorkerPhase::HandingOver { serving: true, .. } => false,
            WorkerPhase::Draining { .. } | WorkerPhase::HandingOver { serving: false, .. } => true,
            WorkerPhase::Exiting { was_draining, .. } => was_draining,
        }
    }

    /// What `Host::is_draining` tells the plugin: as [`WorkerPhase::is_draining`], except while
    /// a hand-over runs. Only a plugin that takes part hands over, and its connections are
    /// about to move, not to close: an HTTP server must not answer `Connection: close` to the
    /// requests it serves meanwhile (its clients would reconnect for nothing). Should the
    /// hand-over fail, the worker drains, and then the plugin hears `on_drain` and this says so.
    pub fn tells_plugin_draining(self) -> bool {
        match self {
            WorkerPhase::HandingOver { .. } => false,
            other => other.is_draining(),
        }
    }

    /// Starts a drain ending at `deadline_ms`: true when it began now (only a serving worker,
    /// or one whose hand-over ended, drains; a second drain keeps the first deadline).
    pub fn drain(&mut self, deadline_ms: u64) -> bool {
        if !matches!(*self, WorkerPhase::Serving | WorkerPhase::HandingOver { .. }) {
            return false;
        }
        *self = WorkerPhase::Draining { deadline_ms };
        true
    }

    /// Starts a hand-over ending at `deadline_ms` (only from serving): true when it began now.
    /// The worker goes on serving (and accepting) until [`WorkerPhase::stop_serving`].
    pub fn hand_over(&mut self, deadline_ms: u64) -> bool {
        if *self != WorkerPhase::Serving {
            return false;
        }
        *self = WorkerPhase::HandingOver { deadline_ms, serving: true };
        true
    }

    /// The hand-over's connections stop (they are about to move): no more accepting. True when
    /// the worker was accepting until now (the caller stops watching the listener); false in
    /// any other phase (a drain or a stop asked meanwhile stopped the accepting already).
    pub fn stop_serving(&mut self) -> bool {
        match self {
            WorkerPhase::HandingOver { serving, .. } if *serving => {
                *serving = false;
                true
            }
            _ => false,
        }
    }

    /// The hand-over's deadline moves to `deadline_ms` (the replacement made progress); no
    /// change in any other phase.
    pub fn extend_hand_over(&mut self, to_ms: u64) {
        if let WorkerPhase::HandingOver { deadline_ms, .. } = self {
            *deadline_ms = to_ms;
        }
    }

    /// The loop is to end after this turn. The first reason stands, except that a channel that
    /// broke meanwhile (`MasterGone`) is what is reported.
    pub fn stop(&mut self, exit: Exit) {
        *self = match *self {
            WorkerPhase::Exiting { exit: first, was_draining } => {
                WorkerPhase::Exiting { exit: if exit == Exit::MasterGone { exit } else { first }, was_draining }
            }
            other => WorkerPhase::Exiting { exit, was_draining: other.is_draining() },
        };
    }

    /// The deadline the loop's poll must wake up for.
    pub fn deadline_ms(self) -> Option<u64> {
        match self {
            WorkerPhase::Draining { deadline_ms } | WorkerPhase::HandingOver { deadline_ms, .. } => Some(deadline_ms),
            WorkerPhase::Serving | WorkerPhase::Exiting { .. } => None,
        }
    }

    /// At the end of a loop turn: why the loop ends now, if it does. `idle`: no connection and
    /// no task is left (asked only of a draining worker: counting is not free).
    pub fn after_turn(self, idle: impl FnOnce() -> bool, now_ms: u64) -> Option<Exit> {
        match self {
            WorkerPhase::Serving => None,
            WorkerPhase::Exiting { exit, .. } => Some(exit),
            WorkerPhase::Draining { deadline_ms } => (now_ms >= deadline_ms || idle()).then_some(Exit::Drained),
            // The hand-over ends it, at its deadline at the latest.
            WorkerPhase::HandingOver { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_keeps_what_the_plugin_heard() {
        assert_eq!(ConnPhase::Open.close(), ConnPhase::Closing { announced: true });
        assert_eq!(ConnPhase::Connecting { until_ms: 5 }.close(), ConnPhase::Closing { announced: true });
        assert_eq!(ConnPhase::Handshaking.close(), ConnPhase::Closing { announced: false });
        let lingering = ConnPhase::Lingering { until_ms: 9 };
        assert_eq!(lingering.close(), lingering, "a lingering connection stays lingering");
        assert!(!ConnPhase::Handshaking.close().announced(), "no on_close for a handshake that never ended");
        assert!(!lingering.announced(), "on_close was heard when lingering began");
    }

    #[test]
    fn a_drain_ends_when_nothing_is_left_or_at_its_deadline() {
        let mut phase = WorkerPhase::Serving;
        assert_eq!(phase.after_turn(|| true, 0), None, "a serving worker never ends by itself");
        assert!(phase.drain(100));
        assert!(!phase.accepting() && phase.is_draining());
        assert!(!phase.drain(50), "a second drain keeps the first deadline");
        assert_eq!(phase.deadline_ms(), Some(100));
        assert_eq!(phase.after_turn(|| false, 99), None);
        assert_eq!(phase.after_turn(|| true, 99), Some(Exit::Drained));
        assert_eq!(phase.after_turn(|| false, 100), Some(Exit::Drained));
    }

    #[test]
    fn a_hand_over_ends_only_by_its_outcome_then_drains() {
        let mut phase = WorkerPhase::Serving;
        assert!(phase.hand_over(100));
        assert!(phase.stop_serving());
        assert!(!phase.accepting() && phase.is_draining());
        assert!(!phase.tells_plugin_draining(), "its connections move: responses keep them open");
        assert!(!phase.hand_over(200), "one hand-over at a time");
        assert_eq!(phase.deadline_ms(), Some(100));
        assert_eq!(phase.after_turn(|| true, 500), None, "every connection may be out of the table meanwhile");
        assert!(phase.drain(300), "what stayed drains once the hand-over ended");
        assert!(phase.tells_plugin_draining());
        assert_eq!(phase.after_turn(|| true, 0), Some(Exit::Drained));
    }

    #[test]
    fn a_stop_ends_the_loop_and_remembers_a_drain() {
        let mut serving = WorkerPhase::Serving;
        serving.stop(Exit::Stopped);
        assert_eq!(serving.after_turn(|| false, 0), Some(Exit::Stopped));
        assert!(!serving.is_draining(), "a stopped worker was not draining");
        assert!(!serving.drain(10), "no drain once the loop ends");

        let mut draining = WorkerPhase::Serving;
        draining.drain(100);
        draining.stop(Exit::Stopped);
        assert!(draining.is_draining());
        draining.stop(Exit::Stopped);
        draining.stop(Exit::MasterGone);
        assert_eq!(draining.after_turn(|| false, 0), Some(Exit::MasterGone), "a broken channel is what is said");
    }

    #[test]
    fn a_hand_over_accepts_until_its_connections_stop() {
        let mut phase = WorkerPhase::Serving;
        assert!(phase.hand_over(100));
        assert!(phase.accepting(), "new clients are served while the offer waits and the state is copied");
        assert!(!phase.is_draining() && !phase.tells_plugin_draining(), "nothing drains yet");
        assert!(!phase.hand_over(200), "one hand-over at a time, even while it accepts");
        phase.extend_hand_over(300);
        assert_eq!(phase.deadline_ms(), Some(300), "the poll wakes up for the hand-over meanwhile");
        assert_eq!(phase.after_turn(|| true, 500), None);
        assert!(phase.stop_serving(), "the connections stop: accepting ends now");
        assert!(!phase.accepting() && phase.is_draining() && !phase.tells_plugin_draining());
        assert!(!phase.stop_serving(), "once");
        assert_eq!(phase.deadline_ms(), Some(300));
    }

    #[test]
    fn a_drain_or_a_stop_during_the_copy_ends_the_accepting() {
        let mut drained = WorkerPhase::Serving;
        drained.hand_over(100);
        assert!(drained.drain(50), "a drain asked during the copy begins now");
        assert!(!drained.accepting() && drained.tells_plugin_draining());
        assert!(!drained.stop_serving(), "the drain stopped the accepting already");
        drained.extend_hand_over(900);
        assert_eq!(drained.deadline_ms(), Some(50), "the drain's deadline stands");

        let mut stopped = WorkerPhase::Serving;
        stopped.hand_over(100);
        stopped.stop(Exit::Stopped);
        assert!(!stopped.accepting() && !stopped.is_draining(), "it was serving when stopped");
        assert!(!stopped.stop_serving());
        assert_eq!(stopped.after_turn(|| false, 0), Some(Exit::Stopped));
    }
}
