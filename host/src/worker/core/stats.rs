//! The worker's counters: the message rate and what `status` reports.

/// Messages per second over the last few seconds, kept without a timer: the loop rolls it once
/// a turn (an idle worker does not wake up for it; a report is a turn of its own).
#[derive(Debug, Default, Clone, Copy)]
pub struct RateMeter {
    /// The second being counted, and the message count when it began.
    second: u64,
    at_start: u64,
    /// Messages in each of the last complete seconds (a ring).
    last: [u64; RATE_SECONDS],
    next: usize,
}

/// Seconds the message rate is averaged over.
const RATE_SECONDS: usize = 5;

impl RateMeter {
    /// Rolls the meter to `now_ms` given the total message count.
    pub fn roll(&mut self, now_ms: u64, messages: u64) {
        let second = now_ms / 1000;
        if second == self.second {
            return;
        }
        let skipped = second.saturating_sub(self.second).min(RATE_SECONDS as u64 + 1);
        // The second that ended got what came since it began; seconds with no turn got nothing.
        for i in 0..skipped.min(RATE_SECONDS as u64) {
            self.last[self.next] = if i == 0 { messages - self.at_start } else { 0 };
            self.next = (self.next + 1) % RATE_SECONDS;
        }
        self.second = second;
        self.at_start = messages;
    }

    /// Messages per second over the last complete seconds.
    pub fn per_second(&self) -> f64 {
        self.last.iter().sum::<u64>() as f64 / RATE_SECONDS as f64
    }
}

/// Counters for the whole worker.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub rate: RateMeter,
    pub accepted: u64,
    pub messages: u64,
    pub send_failures: u64,
    pub plugin_panics: u64,
    /// When the plugin last panicked (the worker's clock).
    pub last_panic_ms: Option<u64>,
    pub closed: u64,
    /// Bytes of connections already closed (live ones count their own).
    pub closed_bytes_in: u64,
    pub closed_bytes_out: u64,
    /// UDP datagrams dropped: over the max package size, over the session limit, or for a
    /// session whose plugin paused receiving.
    pub datagrams_dropped: u64,
    /// Connections adopted from the slot's previous worker (hand-overs).
    pub adopted: u64,
}

#[cfg(test)]
mod tests {
    use super::RateMeter;

    #[test]
    fn the_rate_is_the_average_of_the_last_complete_seconds() {
        let mut r = RateMeter::default();
        r.roll(0, 0);
        r.roll(999, 400);
        assert_eq!(r.per_second(), 0.0, "no second is complete yet");
        r.roll(1000, 500);
        assert_eq!(r.per_second(), 100.0, "500 messages in 1 of 5 seconds");
        r.roll(2000, 1000);
        assert_eq!(r.per_second(), 200.0);
        // Idle for a minute: the rate falls to nothing.
        r.roll(62_000, 1000);
        assert_eq!(r.per_second(), 0.0);
    }
}
