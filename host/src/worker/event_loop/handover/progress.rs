//! The old worker tells the master that a long export of its worker state goes on
//! (`ToMaster::HandoverProgress`): the master's kill deadline of the old worker counts from its
//! `HandOver`, and a large state (a 1 GiB keyspace takes 10–20 s on a loaded machine) would
//! otherwise outlast it. A plugin that hangs in its export writes nothing, and is killed at the
//! deadline as before.

use std::time::Instant;

use abi_stable::std_types::RSlice;
use mio::net::UnixStream;
use plugin_api::abi::RawStateSink;

use crate::ctl::{ToMaster, WorkerChannel};

/// At most one report this often (milliseconds) while the plugin writes.
const EVERY_MS: u64 = 1_000;

/// A state sink that reports to the master, at most every [`EVERY_MS`], the bytes written so
/// far, while it passes them on to `sink`.
pub(super) struct Reporting<'a, S> {
    sink: &'a mut S,
    control: &'a mut WorkerChannel<UnixStream>,
    started: Instant,
    next_ms: u64,
    bytes: u64,
}

impl<'a, S: RawStateSink> Reporting<'a, S> {
    pub(super) fn new(sink: &'a mut S, control: &'a mut WorkerChannel<UnixStream>) -> Self {
        Reporting { sink, control, started: Instant::now(), next_ms: EVERY_MS, bytes: 0 }
    }
}

impl<S: RawStateSink> RawStateSink for Reporting<'_, S> {
    fn write(&mut self, data: RSlice<'_, u8>) -> bool {
        let len = data.len() as u64;
        if !self.sink.write(data) {
            return false;
        }
        self.bytes += len;
        let ms = self.started.elapsed().as_millis() as u64;
        if ms >= self.next_ms {
            self.next_ms = ms + EVERY_MS;
            // Written now if the socket takes it, else queued (the next control message or
            // the loop's flush writes it); a broken channel is the loop's to see.
            if let Err(e) = self.control.send(&ToMaster::HandoverProgress { state_bytes: self.bytes }) {
                tracing::debug!("could not tell the master the export goes on: {e}");
            }
        }
        true
    }
}
