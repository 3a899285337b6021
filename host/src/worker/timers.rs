//! A heap of deadlines: the worker's poll timeout is the time to the nearest one.
//! Deleted timers are dropped lazily when they reach the top of the heap.

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

#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    live: HashMap<u64, Timer>,
    next_id: u64,
}

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
        self.live.remove(&id.0).is_some()
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
                let mut next = deadline + timer.interval_ms;
                if next <= now_ms {
                    next = now_ms + timer.interval_ms;
                }
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
}
