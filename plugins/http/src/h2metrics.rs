//! The HTTP/2 counters in the host's `/metrics`: each defence of `http_proto::h2` and each kind
//! of frame abuse, from the connections' [`Stats`], as `host_plugin_<family>_total{kind=…}`; and
//! the connections (`http2_connections`: opened, closed, and closed for a timeout; the open ones
//! are `opened - closed`).

use http_proto::h2::Stats;
use plugin_api::{Counter, Host};

/// One counter: its family, its `kind` label, and the field of [`Stats`] it reports.
struct Entry {
    family: &'static str,
    kind: &'static str,
    read: fn(&Stats) -> u64,
}

const fn entry(family: &'static str, kind: &'static str, read: fn(&Stats) -> u64) -> Entry {
    Entry { family, kind, read }
}

/// Every counter, in the order of [`H2Counters::ids`].
const ENTRIES: [Entry; 16] = [
    entry("http2_streams", "opened", |s| s.streams_opened),
    entry("http2_streams", "reset_by_peer", |s| s.peer_resets),
    entry("http2_streams", "refused", |s| s.refused_streams),
    entry("http2_streams", "malformed", |s| s.malformed_requests),
    entry("http2_defences", "rapid_reset", |s| s.rapid_reset),
    entry("http2_defences", "continuation_flood", |s| s.header_block_too_large),
    entry("http2_defences", "hpack_bomb", |s| s.header_list_too_large),
    entry("http2_defences", "idle_frame_flood", |s| s.idle_frame_flood),
    entry("http2_frames", "settings", |s| s.settings_frames),
    entry("http2_frames", "ping", |s| s.ping_frames),
    entry("http2_frames", "empty_data", |s| s.empty_data_frames),
    entry("http2_frames", "empty_continuation", |s| s.empty_continuation_frames),
    entry("http2_frames", "zero_window_update", |s| s.zero_window_updates),
    entry("http2_errors", "flow_control", |s| s.flow_control_errors),
    entry("http2_errors", "compression", |s| s.compression_errors),
    entry("http2_errors", "connection", |s| s.connection_errors),
];

fn help(family: &str) -> &'static str {
    match family {
        "http2_streams" => "HTTP/2 streams: opened, reset by the client, refused over the concurrency limit (REFUSED_STREAM), reset as malformed (PROTOCOL_ERROR)",
        "http2_defences" => "HTTP/2 connections ended or requests refused by a defence: Rapid Reset (CVE-2023-44487), CONTINUATION flood (CVE-2024-27316), HPACK bomb (431), floods of frames that do no work",
        "http2_connections" => "HTTP/2 connections: opened, closed (open now: opened - closed), closed for a timeout the host reported (idle, a stalled message: GOAWAY NO_ERROR first)",
        "http2_frames" => "HTTP/2 frames received that do no work (SETTINGS, PING, empty DATA and CONTINUATION, WINDOW_UPDATE 0)",
        _ => "HTTP/2 errors: windows overflowed (FLOW_CONTROL_ERROR), HPACK errors (COMPRESSION_ERROR), connections ended with an error code (GOAWAY)",
    }
}

/// The worker's HTTP/2 counters (registered once, in `on_worker_start`).
#[derive(Debug, Default)]
pub(crate) struct H2Counters {
    /// By [`ENTRIES`]' order; None: a host too old to count, or none registered yet.
    ids: Vec<Option<Counter>>,
    /// `http2_connections` by [`ConnEvent`].
    conns: [Option<Counter>; 3],
}

/// What happened to an HTTP/2 connection, for `http2_connections{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnEvent {
    Opened = 0,
    Closed = 1,
    /// Closed for a timeout the host reported (counted in `Closed` too, when it closes).
    TimedOut = 2,
}

impl H2Counters {
    pub(crate) fn register(host: &mut Host<'_>) -> H2Counters {
        let ids = ENTRIES.iter().map(|e| host.counter(e.family, &format!("kind={}", e.kind), help(e.family))).collect();
        let family = "http2_connections";
        let conns =
            ["opened", "closed", "timeout"].map(|kind| host.counter(family, &format!("kind={kind}"), help(family)));
        H2Counters { ids, conns }
    }

    /// Counts one connection `event`.
    pub(crate) fn connection(&self, host: &mut Host<'_>, event: ConnEvent) {
        if let Some(id) = self.conns[event as usize] {
            host.add(id, 1);
        }
    }

    /// Adds what `now` counted since `reported` (a connection's stats at its last report), and
    /// moves `reported` up to it.
    pub(crate) fn report(&self, host: &mut Host<'_>, now: &Stats, reported: &mut Stats) {
        if now == reported {
            return;
        }
        for (e, id) in ENTRIES.iter().zip(&self.ids) {
            let delta = (e.read)(now).saturating_sub((e.read)(reported));
            if let (Some(id), true) = (id, delta > 0) {
                host.add(*id, delta);
            }
        }
        *reported = *now;
    }
}

#[cfg(test)]
mod tests {
    use plugin_api::testing::TestHost;

    use super::*;

    #[test]
    fn reports_what_changed_since_the_last_report() {
        let mut host = TestHost::new();
        let counters = host.with(H2Counters::register);
        assert_eq!(host.counters.len(), ENTRIES.len() + 3);
        let mut reported = Stats::default();
        let now = Stats { streams_opened: 3, rapid_reset: 1, ping_frames: 7, ..Stats::default() };
        host.with(|h| counters.report(h, &now, &mut reported));
        let now = Stats { streams_opened: 5, ..now };
        host.with(|h| counters.report(h, &now, &mut reported));
        let value = |kind: &str| host.counters.iter().find(|c| c.labels == format!("kind={kind}")).unwrap().value;
        assert_eq!(value("opened"), 5);
        assert_eq!(value("rapid_reset"), 1);
        assert_eq!(value("ping"), 7);
        assert_eq!(value("hpack_bomb"), 0);
        assert_eq!(host.counter_value("http2_frames"), Some(7));
        host.with(|h| counters.connection(h, ConnEvent::Opened));
        host.with(|h| counters.connection(h, ConnEvent::Opened));
        host.with(|h| counters.connection(h, ConnEvent::TimedOut));
        let conns = |kind: &str| {
            let c = host.counters.iter().find(|c| c.name == "http2_connections" && c.labels == format!("kind={kind}"));
            c.unwrap().value
        };
        assert_eq!((conns("opened"), conns("closed"), conns("timeout")), (2, 0, 1));
        assert_eq!(host.counter_value("http2_connections"), Some(3));
    }
}
