//! How long a slot waits before its next worker when its workers keep dying at start.

use std::time::Duration;

const FIRST_DELAY: Duration = Duration::from_millis(100);
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// The delay before restarting after `failures` quick deaths in a row: the first restart is
/// immediate, then 100 ms, 200 ms, 400 ms … up to 30 s.
pub fn restart_delay(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => FIRST_DELAY.saturating_mul(1u32 << (n - 2).min(16)).min(MAX_DELAY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_exponentially_and_caps() {
        assert_eq!(restart_delay(0), Duration::ZERO);
        assert_eq!(restart_delay(1), Duration::ZERO);
        assert_eq!(restart_delay(2), Duration::from_millis(100));
        assert_eq!(restart_delay(3), Duration::from_millis(200));
        assert_eq!(restart_delay(6), Duration::from_millis(1600));
        assert_eq!(restart_delay(40), MAX_DELAY);
        assert_eq!(restart_delay(u32::MAX), MAX_DELAY);
    }
}
