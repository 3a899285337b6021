//! The counters of [`super::Connection`]: one per defence and per kind of frame abuse.

/// Counters, one per defence and per kind of frame abuse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub streams_opened: u64,
    /// RST_STREAM frames received on live streams.
    pub peer_resets: u64,
    /// Connections ended for resetting streams too fast (Rapid Reset).
    pub rapid_reset: u64,
    /// Connections ended for a header block over the bound (CONTINUATION flood).
    pub header_block_too_large: u64,
    /// Requests answered 431: the decoded field list over the bound (HPACK bomb).
    pub header_list_too_large: u64,
    pub settings_frames: u64,
    pub ping_frames: u64,
    pub empty_data_frames: u64,
    pub empty_continuation_frames: u64,
    pub zero_window_updates: u64,
    /// Connections ended for too many frames that do no work.
    pub idle_frame_flood: u64,
    /// Streams refused over the concurrency limit (REFUSED_STREAM).
    pub refused_streams: u64,
    /// Requests reset as malformed (bad pseudo-headers, connection-specific fields, names).
    pub malformed_requests: u64,
    /// Windows overflowed or exceeded (FLOW_CONTROL_ERROR).
    pub flow_control_errors: u64,
    pub compression_errors: u64,
    /// Connection errors of any kind (GOAWAY with an error code sent).
    pub connection_errors: u64,
}

impl Stats {
    /// Adds `other`'s counts: a worker's totals over its connections.
    pub fn merge(&mut self, other: &Stats) {
        let Stats {
            streams_opened,
            peer_resets,
            rapid_reset,
            header_block_too_large,
            header_list_too_large,
            settings_frames,
            ping_frames,
            empty_data_frames,
            empty_continuation_frames,
            zero_window_updates,
            idle_frame_flood,
            refused_streams,
            malformed_requests,
            flow_control_errors,
            compression_errors,
            connection_errors,
        } = other;
        self.streams_opened += streams_opened;
        self.peer_resets += peer_resets;
        self.rapid_reset += rapid_reset;
        self.header_block_too_large += header_block_too_large;
        self.header_list_too_large += header_list_too_large;
        self.settings_frames += settings_frames;
        self.ping_frames += ping_frames;
        self.empty_data_frames += empty_data_frames;
        self.empty_continuation_frames += empty_continuation_frames;
        self.zero_window_updates += zero_window_updates;
        self.idle_frame_flood += idle_frame_flood;
        self.refused_streams += refused_streams;
        self.malformed_requests += malformed_requests;
        self.flow_control_errors += flow_control_errors;
        self.compression_errors += compression_errors;
        self.connection_errors += connection_errors;
    }
}
