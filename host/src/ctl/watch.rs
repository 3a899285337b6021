//! What a worker writes in its watch page (`sys::WatchPage`) and the master reads when its
//! watchdog fires: the plugin callback the worker's loop is in, and since when. One word, so one
//! relaxed store on the way in and one on the way out of each plugin call:
//! bits 56..64 the callback's number in [`CALLBACKS`] plus one (0: in the host's own loop),
//! bits 0..56 the system's monotonic clock in ms when the loop turn that made the call began.

/// Every plugin callback the worker's loop makes, by the name of its `RawPlugin` (or
/// `RawPluginExt`) method.
pub const CALLBACKS: [&str; 27] = [
    "on_worker_start",
    "on_worker_stop",
    "on_worker_reload",
    "on_connect",
    "input",
    "on_message",
    "on_close",
    "on_error",
    "on_buffer_full",
    "on_buffer_drain",
    "on_timer",
    "on_drain",
    "on_conn_error",
    "on_worker_message",
    "on_task_done",
    "on_notify",
    "on_input_end",
    "handover_accepts",
    "handover_export_conn",
    "handover_export_worker",
    "handover_adopt_worker",
    "handover_adopt_conn",
    "on_publish",
    "on_publish_missed",
    "handover_export_worker_step",
    "handover_adopt_worker_step",
    "handover_drop_steps",
];

const TIME_BITS: u32 = 56;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

/// The word for "in the host's own loop".
pub const IN_LOOP: u64 = 0;

/// The number of callback `name` (a compile-time error for a name not in [`CALLBACKS`]: use it
/// in a `const` block).
pub const fn callback(name: &str) -> u8 {
    let mut i = 0;
    while i < CALLBACKS.len() {
        if eq(CALLBACKS[i].as_bytes(), name.as_bytes()) {
            return i as u8 + 1;
        }
        i += 1;
    }
    panic!("not a plugin callback the watch page knows");
}

const fn eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The word for "in callback `id` since `since_ms`" (monotonic ms).
pub fn encode(id: u8, since_ms: u64) -> u64 {
    (u64::from(id) << TIME_BITS) | (since_ms & TIME_MASK)
}

/// Where a worker's loop was, as its watch page says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whereabouts {
    /// In the host's own code, between plugin calls.
    InLoop,
    /// In this plugin callback since this monotonic time (ms).
    InCallback { name: &'static str, since_ms: u64 },
}

pub fn decode(word: u64) -> Whereabouts {
    let id = (word >> TIME_BITS) as usize;
    match id.checked_sub(1).and_then(|i| CALLBACKS.get(i)) {
        Some(name) => Whereabouts::InCallback { name, since_ms: word & TIME_MASK },
        None => Whereabouts::InLoop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_callback() {
        for name in CALLBACKS {
            let id = callback(name);
            assert_eq!(decode(encode(id, 123_456)), Whereabouts::InCallback { name, since_ms: 123_456 });
        }
        assert_eq!(decode(IN_LOOP), Whereabouts::InLoop);
        assert_eq!(const { callback("on_message") }, 6);
    }
}
