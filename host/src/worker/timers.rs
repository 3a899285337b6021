//! A heap of deadlines: the worker's poll timeout is the time to the nearest one.
//!
//! Deleted timers are dropped lazily when they reach the top of the heap, and the heap is rebuilt
//! when most of it is dead entries (a per-request timeout added and deleted per request must not
//! grow it to rate × timeout). Timers fire in rounds: a timer added while a round runs (a 0 ms
//! timer re-armed in its own callback) waits for the next round, so the loop goes on serving.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use plugin_api::TimerId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    pub id: TimerId,
    pub deadline_ms: u64,
    /// 0: fires once.
    pub interval_ms: u64,
    pub data: u64,
}

#[derive(Debug)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    live: HashMap<u64, Timer>,
    next_id: u64,
    /// While a round runs, timers with a higher id (added in it) wait for the next round.
    round_limit: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Timers { heap: BinaryHeap::new(), live: HashMap::new(), next_id: 0, round_limit: u64::MAX }
    }
}

/// Dead heap entries tolerated before the heap is rebuilt from the live timers.
const MIN_COMPACT: usize = 64;

impl Timers {
    pub fn add(&mut self, now_ms: u64, delay_ms: u64, interval_ms: u64, data: u64) -> TimerId {
        self.next_id += 1;
        let id = TimerId(self.next_id);
        let deadline_ms = now_ms.saturating_add(delay_ms);
        self.live.insert(id.0, Timer { id, deadline_ms, interval_ms, data });
        self.heap.push(Reverse((deadline_ms, id.0)));
        id
    }

    pub fn remove(&mut self, id: TimerId) -> bool {
        let removed = self.live.remove(&id.0).is_some();
        if removed && self.heap.len() > MIN_COMPACT && self.heap.len() > 2 * self.live.len() {
            self.heap = self.live.values().map(|t| Reverse((t.deadline_ms, t.id.0))).collect();
        }
        removed
    }

    /// Entries in the heap, dead ones included.
    #[cfg(test)]
    pub fn heap_len(&self) -> usize {
        self.heap.len()
    }

    /// Starts a round: only timers that exist now can fire until [`Timers::end_round`].
    pub fn begin_round(&mut self) {
        self.round_limit = self.next_id;
    }

    pub fn end_round(&mut self) {
        self.round_limit = u64::MAX;
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Milliseconds until the next live deadline (0 if one is due), or None without timers.
    pub fn next_timeout_ms(&mut self, now_ms: u64) -> Option<u64> {
        while let Some(Reverse((deadline, id))) = self.heap.peek().copied() {
            match self.live.get(&id) {
                Some(t) if t.deadline_ms == deadline => return Some(deadline.saturating_sub(now_ms)),
                _ => {
                    self.heap.pop();
                }
            }
        }
        None
    }

    /// Takes the next timer due at `now_ms`, rescheduling it when it repeats.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<Timer> {
        loop {
            let Reverse((deadline, id)) = *self.heap.peek()?;
            if deadline > now_ms {
                return None;
            }
            if id > self.round_limit {
                // Added during this round: it fires in the next one. Every entry still in the
                // heap is due or is such a newcomer; stop here.
                return None;
            }
            self.heap.pop();
            let Some(timer) = self.live.get_mut(&id) else {
                continue;
            };
            if timer.deadline_ms != deadline {
                continue;
            }
            let fired = *timer;
            if timer.interval_ms > 0 {
                // Skip missed periods instead of firing a burst after a stall.
                let mut next = deadline.saturating_add(timer.interval_ms);
                if next <= now_ms {
                    next = now_ms.saturating_add(timer.interval_ms);
                }
                // `next` is after `now_ms`: it cannot fire again in this round.
                timer.deadline_ms = next;
                self.heap.push(Reverse((next, id)));
            } else {
                self.live.remove(&id);
            }
            return Some(fired);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_deadline_order_and_once() {
        let mut t = Timers::default();
        let b = t.add(0, 20, 0, 2);
        let a = t.add(0, 10, 0, 1);
        assert_eq!(t.next_timeout_ms(0), Some(10));
        assert_eq!(t.pop_due(9), None);
        assert_eq!(t.pop_due(25).map(|x| x.id), Some(a));
        assert_eq!(t.pop_due(25).map(|x| x.id), Some(b));
        assert_eq!(t.pop_due(100), None);
        assert_eq!(t.next_timeout_ms(100), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn repeating_timer_reschedules_and_deletes() {
        let mut t = Timers::default();
        let id = t.add(0, 5, 5, 7);
        assert_eq!(t.pop_due(5).map(|x| x.data), Some(7));
        assert_eq!(t.next_timeout_ms(5), Some(5));
        assert_eq!(t.pop_due(10).map(|x| x.id), Some(id));
        // a long stall fires once, not a burst
        assert!(t.pop_due(100).is_some());
        assert!(t.pop_due(100).is_none());
        assert!(t.remove(id));
        assert!(!t.remove(id));
        assert_eq!(t.next_timeout_ms(100), None);
    }

    #[test]
    fn a_zero_delay_timer_added_in_a_round_waits_for_the_next_round() {
        let mut t = Timers::default();
        t.add(0, 0, 0, 1);
        t.begin_round();
        let fired = t.pop_due(0).unwrap();
        assert_eq!(fired.data, 1);
        // Its callback re-arms it at 0 ms: not in this round (that would never end)...
        t.add(0, 0, 0, 2);
        assert!(t.pop_due(0).is_none());
        t.end_round();
        // ...but in the next one.
        t.begin_round();
        assert_eq!(t.pop_due(0).map(|x| x.data), Some(2));
        t.end_round();
    }

    #[test]
    fn deleted_timers_do_not_pile_up() {
        let mut t = Timers::default();
        let keep = t.add(0, 1_000_000, 0, 0);
        for i in 0..100_000 {
            let id = t.add(i, 60_000, 0, i);
            assert!(t.remove(id));
        }
        assert_eq!(t.len(), 1);
        assert!(t.heap_len() <= 2 * MIN_COMPACT + 2, "heap of {} entries for 1 timer", t.heap_len());
        assert!(t.remove(keep));
    }

    #[test]
    fn huge_delays_and_intervals_do_not_overflow() {
        let mut t = Timers::default();
        t.add(u64::MAX - 5, u64::MAX, u64::MAX, 1);
        assert_eq!(t.next_timeout_ms(u64::MAX - 5), Some(5));
        let fired = t.pop_due(u64::MAX).unwrap();
        assert_eq!(fired.data, 1);
        assert_eq!(t.next_timeout_ms(u64::MAX), Some(0));
    }
}
