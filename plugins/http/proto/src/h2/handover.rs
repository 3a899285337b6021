//! An HTTP/2 connection handed over to another worker (docs/plugins.md, "Hand-over"): its
//! state written by the old worker and read by the new one, which goes on where it stopped.
//! The peer notices nothing: the settings both sides agreed, the HPACK dynamic tables (both
//! directions), the connection's and each stream's windows, the last stream id, a GOAWAY sent
//! or received, a header block half received, the streams in flight and the response bytes
//! waiting for a window all move.
//!
//! Format (inside the plugin's own state, version 1 there), little-endian:
//!
//! ```text
//! "H2MV" · version u8 (1) · config: 6 × u32 (max_concurrent_streams, initial_window_size,
//!   connection_window, max_frame_size, max_header_list_size, max_header_block as u32) ·
//!   max_resets u32 · max_idle_frames u32 · flood_window_ms u64 ·
//! phase u8 (0 preface, 1 first settings, 2 open) · output bytes ·
//! decoder table · encoder table · encoder size update (u8 0 | 1 · u32) ·
//! last_stream u32 · recv_window i64 · release_pending u32 · send_window i64 ·
//! peer_initial_window u32 · peer_max_frame u32 ·
//! pending (u8 0 | 1 · stream u32 · end_stream u8 · block bytes) ·
//! goaway_sent (u8 0 | 1 · u32) · goaway_received u8 ·
//! streams u32 · streams × (id u32 · flags u8 (announced, recv_closed, headers_sent,
//!   send_done, end_sent) · recv_window i64 · release_pending u32 · unreleased u32 ·
//!   send_window i64 · content_length (u8 0 | 1 · u64) · received u64 · queue bytes)
//! table:   max u32 · entries u32 · entries × (name bytes · value bytes), oldest first
//! ```
//!
//! Not moved: the flood counters' windows (they start again, by the new worker's clock) and the
//! [`Stats`] (the old worker reported them). A connection that ended (a GOAWAY with an error
//! sent) or has events the application has not taken does not move.

use std::collections::{BTreeMap, VecDeque};

use super::{Config, Connection, Pending, Phase, Rate, Stream};
use crate::h2::frame::{self, MAX_WINDOW};
use crate::h2::hpack::{self, DEFAULT_TABLE_SIZE};
use crate::h2::hpack_table::{rebuild_block, DynTable};
use crate::h2::stats::Stats;
use crate::handover::{put_bytes, Decline, Reader};

const MAGIC: &[u8; 4] = b"H2MV";
const FORMAT: u8 = 1;

impl Connection {
    /// The largest frame this side receives (SETTINGS_MAX_FRAME_SIZE as sent).
    pub fn max_frame_size(&self) -> usize {
        self.config.max_frame_size as usize
    }

    /// Writes the connection's state for a hand-over (see the module comment), or says why it
    /// does not move.
    pub fn export(&self, out: &mut Vec<u8>) -> Result<(), Decline> {
        let phase = match self.phase {
            Phase::Preface => 0u8,
            Phase::FirstSettings => 1,
            Phase::Open => 2,
            Phase::Closed => return Err("the HTTP/2 connection ended"),
        };
        if !self.events.is_empty() {
            return Err("HTTP/2 events not taken");
        }
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        let c = &self.config;
        for n in [
            c.max_concurrent_streams,
            c.initial_window_size,
            c.connection_window,
            c.max_frame_size,
            c.max_header_list_size,
            u32::try_from(c.max_header_block).unwrap_or(u32::MAX),
            c.max_resets,
            c.max_idle_frames,
        ] {
            put_u32(out, n);
        }
        out.extend_from_slice(&c.flood_window_ms.to_le_bytes());
        out.push(phase);
        put_bytes(out, &self.out);
        write_table(&self.decoder.table, out);
        // The encoder inserts nothing (static table and literals only: `hpack::Encoder`), so its
        // table is empty; the field stays in the format for the peer's table size.
        write_table(&DynTable::new(hpack::DEFAULT_TABLE_SIZE), out);
        put_opt_u32(out, self.encoder.size_update.map(|n| n as u32));
        put_u32(out, self.last_stream);
        out.extend_from_slice(&self.recv_window.to_le_bytes());
        put_u32(out, self.release_pending);
        out.extend_from_slice(&self.send_window.to_le_bytes());
        put_u32(out, self.peer_initial_window);
        put_u32(out, self.peer_max_frame);
        match &self.pending {
            None => out.push(0),
            Some(p) => {
                out.push(1);
                put_u32(out, p.stream);
                out.push(p.end_stream as u8);
                put_bytes(out, &p.block);
            }
        }
        put_opt_u32(out, self.goaway_sent);
        out.push(self.goaway_received as u8);
        put_u32(out, self.streams.len() as u32);
        for (&id, s) in &self.streams {
            put_u32(out, id);
            let flags = [s.announced, s.recv_closed, s.headers_sent, s.send_done, s.end_sent];
            out.push(flags.iter().enumerate().fold(0u8, |acc, (i, &f)| acc | (f as u8) << i));
            out.extend_from_slice(&s.recv_window.to_le_bytes());
            put_u32(out, s.release_pending);
            put_u32(out, s.unreleased);
            out.extend_from_slice(&s.send_window.to_le_bytes());
            match s.content_length {
                None => out.push(0),
                Some(n) => {
                    out.push(1);
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
            out.extend_from_slice(&s.received.to_le_bytes());
            let (a, b) = s.queue.as_slices();
            put_u32(out, (a.len() + b.len()) as u32);
            out.extend_from_slice(a);
            out.extend_from_slice(b);
        }
        Ok(())
    }

    /// The connection [`Connection::export`] wrote, read from `r` at `now_ms` (this worker's
    /// clock). Refuses anything truncated, out of range or unknown.
    pub fn adopt(r: &mut Reader<'_>, now_ms: u64) -> Result<Connection, String> {
        if r.take(MAGIC.len())? != MAGIC {
            return Err("not an HTTP/2 connection's state".into());
        }
        match r.u8()? {
            FORMAT => {}
            other => return Err(format!("HTTP/2 state format {other} is not known here")),
        }
        let mut n = [0u32; 8];
        for v in &mut n {
            *v = r.u32()?;
        }
        let config = Config {
            max_concurrent_streams: n[0],
            initial_window_size: n[1],
            connection_window: n[2],
            max_frame_size: n[3],
            max_header_list_size: n[4],
            max_header_block: n[5] as usize,
            max_resets: n[6],
            max_idle_frames: n[7],
            flood_window_ms: r.u64()?,
        };
        let window_ok = |w: u32| (frame::DEFAULT_WINDOW..=MAX_WINDOW).contains(&w);
        let frame_ok = |f: u32| (frame::MIN_MAX_FRAME_SIZE..=frame::MAX_MAX_FRAME_SIZE).contains(&f);
        if !window_ok(config.initial_window_size) || !window_ok(config.connection_window) {
            return Err("a window setting out of range".into());
        }
        if !frame_ok(config.max_frame_size) {
            return Err("a frame size setting out of range".into());
        }
        let phase = match r.u8()? {
            0 => Phase::Preface,
            1 => Phase::FirstSettings,
            2 => Phase::Open,
            other => return Err(format!("unknown phase {other}")),
        };
        let out = r.bytes()?.to_vec();
        let decoder_table = read_table(r)?;
        let encoder_table = read_table(r)?;
        let size_update = opt_u32(r)?.map(|n| n as usize);
        let last_stream = r.u32()?;
        let recv_window = window(r.i64()?)?;
        let release_pending = r.u32()?;
        let send_window = window(r.i64()?)?;
        let peer_initial_window = r.u32()?;
        let peer_max_frame = r.u32()?;
        if peer_initial_window > MAX_WINDOW || !frame_ok(peer_max_frame) {
            return Err("a peer setting out of range".into());
        }
        let pending = match r.bool()? {
            false => None,
            true => Some(Pending { stream: r.u32()?, end_stream: r.bool()?, block: r.bytes()?.to_vec() }),
        };
        let goaway_sent = opt_u32(r)?;
        let goaway_received = r.bool()?;
        let count = r.u32()?;
        let mut streams = BTreeMap::new();
        let mut queued = 0usize;
        for _ in 0..count {
            let id = r.u32()?;
            if id == 0 || id % 2 == 0 || id > last_stream {
                return Err(format!("stream {id} cannot be open"));
            }
            let flags = r.u8()?;
            if flags >> 5 != 0 {
                return Err(format!("unknown stream flags {flags:#x}"));
            }
            let flag = |i: u8| flags & (1 << i) != 0;
            let s = Stream {
                announced: flag(0),
                recv_closed: flag(1),
                headers_sent: flag(2),
                send_done: flag(3),
                end_sent: flag(4),
                recv_window: window(r.i64()?)?,
                release_pending: r.u32()?,
                unreleased: r.u32()?,
                send_window: window(r.i64()?)?,
                content_length: if r.bool()? { Some(r.u64()?) } else { None },
                received: r.u64()?,
                queue: VecDeque::from(r.bytes()?.to_vec()),
            };
            queued += s.queue.len();
            if streams.insert(id, s).is_some() {
                return Err(format!("stream {id} twice"));
            }
        }
        let mut decoder = hpack::Decoder::new(config.max_header_list_size as usize);
        rebuild_decoder(&mut decoder, &decoder_table)?;
        let mut encoder = hpack::Encoder::default();
        rebuild_encoder(&mut encoder, &encoder_table)?;
        encoder.size_update = size_update;
        Ok(Connection {
            config,
            phase,
            out,
            events: VecDeque::new(),
            decoder,
            encoder,
            streams,
            last_stream,
            recv_window,
            release_pending,
            send_window,
            peer_initial_window,
            peer_max_frame,
            queued,
            pending,
            block: Vec::new(),
            goaway_sent,
            goaway_received,
            resets: Rate { start: now_ms, count: 0 },
            idle: Rate { start: now_ms, count: 0 },
            now: now_ms,
            stats: Stats::default(),
        })
    }
}

/// A window as the connection keeps it: never above the protocol's maximum (a window may be
/// negative after the peer lowered its initial size).
fn window(w: i64) -> Result<i64, String> {
    match (-i64::from(MAX_WINDOW)..=i64::from(MAX_WINDOW)).contains(&w) {
        true => Ok(w),
        false => Err(format!("a window of {w}")),
    }
}

fn put_u32(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_opt_u32(out: &mut Vec<u8>, n: Option<u32>) {
    match n {
        None => out.push(0),
        Some(n) => {
            out.push(1);
            put_u32(out, n);
        }
    }
}

fn opt_u32(r: &mut Reader<'_>) -> Result<Option<u32>, String> {
    Ok(if r.bool()? { Some(r.u32()?) } else { None })
}

fn write_table(table: &DynTable, out: &mut Vec<u8>) {
    put_u32(out, table.max() as u32);
    put_u32(out, table.len() as u32);
    for (name, value) in table.oldest_first() {
        put_bytes(out, name);
        put_bytes(out, value);
    }
}

fn read_table(r: &mut Reader<'_>) -> Result<DynTable, String> {
    let max = r.u32()? as usize;
    if max > DEFAULT_TABLE_SIZE {
        return Err(format!("an HPACK table of {max} bytes"));
    }
    let mut table = DynTable::new(max);
    let mut size = 0usize;
    for _ in 0..r.u32()? {
        let (name, value) = (r.bytes()?, r.bytes()?);
        size += name.len() + value.len() + 32;
        if size > max {
            return Err("HPACK table entries over its size".into());
        }
        table.add(name, value);
    }
    Ok(table)
}

/// Gives a new decoder the old one's table: a header block that adds each entry, oldest first.
fn rebuild_decoder(decoder: &mut hpack::Decoder, table: &DynTable) -> Result<(), String> {
    let block = rebuild_block(table.max(), table.oldest_first());
    decoder.inner.decode_with_cb(&block, |_, _| {}).map_err(|e| format!("the HPACK table does not rebuild: {e:?}"))?;
    decoder.table = table.clone();
    Ok(())
}

/// Checks the old encoder's table. Today's encoder never refers to its dynamic table (it inserts
/// nothing), so entries an older build inserted stay in the peer's decoder unused, which RFC 7541
/// allows: nothing to rebuild.
fn rebuild_encoder(_encoder: &mut hpack::Encoder, table: &DynTable) -> Result<(), String> {
    if table.max() > hpack::DEFAULT_TABLE_SIZE {
        return Err("the HPACK encoder's table is larger than any it may use".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2::frame::{
        kind, write_headers, write_settings, write_window_update, FrameHeader, HEADER_LEN, PREFACE,
    };
    use crate::h2::Event;

    /// The frames of `out`: kind, stream, payload.
    fn frames(out: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
        let mut at = 0;
        let mut v = Vec::new();
        while at < out.len() {
            let h = FrameHeader::parse(&out[at..]).expect("a frame header");
            let end = at + HEADER_LEN + h.len as usize;
            v.push((h.kind, h.stream, out[at + HEADER_LEN..end].to_vec()));
            at = end;
        }
        v
    }

    fn request(enc: &mut loona_hpack::Encoder<'static>, stream: u32) -> Vec<u8> {
        let fields: [(&[u8], &[u8]); 5] = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"a"),
            (b":path", b"/"),
            (b"x-token", b"abc"),
        ];
        let block = enc.encode(fields);
        let mut out = Vec::new();
        write_headers(&mut out, stream, &block, true, frame::MIN_MAX_FRAME_SIZE);
        out
    }

    fn moved(c: &Connection) -> Connection {
        let mut state = Vec::new();
        c.export(&mut state).unwrap();
        let mut r = Reader(&state);
        let adopted = Connection::adopt(&mut r, 7).unwrap();
        r.end().unwrap();
        adopted
    }

    /// A response head the client decodes with its table: the value of `x-served`.
    fn served(dec: &mut hpack::Decoder, out: &[u8], stream: u32) -> Vec<u8> {
        let (_, _, block) = frames(out).into_iter().find(|f| f.0 == kind::HEADERS && f.1 == stream).unwrap();
        let mut fields = Vec::new();
        dec.decode(&block, &mut fields).unwrap();
        fields.into_iter().find(|(n, _)| n == b"x-served").unwrap().1
    }

    #[test]
    fn a_connection_moves_with_its_tables_windows_and_a_blocked_response() {
        let (mut enc, mut dec) = (loona_hpack::Encoder::new(), hpack::Decoder::new(1 << 20));
        let mut c = Connection::new(Config::default());
        let mut input = PREFACE.to_vec();
        write_settings(&mut input, &[]);
        input.extend(request(&mut enc, 1));
        assert_eq!(c.recv(0, &input), input.len());
        assert!(matches!(c.poll_event(), Some(Event::Request { stream: 1, .. })));
        c.send_headers(1, 200, &[("x-served", b"yes-a-long-value")], false).unwrap();
        let body = vec![7u8; 100_000];
        c.send_data(1, &body, true).unwrap();
        let out = c.take_output();
        assert_eq!(served(&mut dec, &out, 1), b"yes-a-long-value");
        let sent: usize = frames(&out).iter().filter(|f| f.0 == kind::DATA).map(|f| f.2.len()).sum();
        assert_eq!(sent, 65_535, "the default window holds the rest back");
        assert!(c.queued_bytes() > 0);

        let mut c = moved(&c);
        assert_eq!(c.queued_bytes(), body.len() - sent, "the blocked bytes moved");
        // The client's next request refers to its table (x-token is entry 62 now).
        let again = request(&mut enc, 3);
        assert!(again.len() < 20, "the block is indexed: {again:?}");
        assert_eq!(c.recv(10, &again), again.len());
        match c.poll_event() {
            Some(Event::Request { stream: 3, request, .. }) => assert_eq!(request.field("x-token"), Some(&b"abc"[..])),
            other => panic!("{other:?}"),
        }
        // The server's encoder goes on after the move (static table and literals).
        c.send_headers(3, 200, &[("x-served", b"yes-a-long-value")], true).unwrap();
        let out = c.take_output();
        assert_eq!(served(&mut dec, &out, 3), b"yes-a-long-value");
        // The window opens: the rest of stream 1 goes out, then its end.
        let mut wu = Vec::new();
        write_window_update(&mut wu, 0, 1 << 20);
        write_window_update(&mut wu, 1, 1 << 20);
        assert_eq!(c.recv(20, &wu), wu.len());
        let rest: usize = frames(&c.take_output()).iter().filter(|f| f.0 == kind::DATA).map(|f| f.2.len()).sum();
        assert_eq!(sent + rest, body.len());
        assert_eq!(c.open_streams(), 0);
    }

    #[test]
    fn truncated_or_garbage_state_is_refused_without_a_panic() {
        let mut enc = loona_hpack::Encoder::new();
        let mut c = Connection::new(Config::default());
        let mut input = PREFACE.to_vec();
        write_settings(&mut input, &[]);
        input.extend(request(&mut enc, 1));
        c.recv(0, &input);
        c.poll_event();
        c.send_headers(1, 200, &[("x-served", b"1")], false).unwrap();
        c.send_data(1, &[1; 70_000], false).unwrap();
        let mut state = Vec::new();
        c.export(&mut state).unwrap();
        for n in 0..state.len() {
            assert!(Connection::adopt(&mut Reader(&state[..n]), 0).is_err(), "cut at {n}");
        }
        for i in 0..state.len() {
            let mut bad = state.clone();
            bad[i] ^= 0xff;
            let mut r = Reader(&bad);
            let _ = Connection::adopt(&mut r, 0).map(|_| r.end());
        }
        let mut other = state.clone();
        other[4] = 2;
        assert!(Connection::adopt(&mut Reader(&other), 0).err().unwrap().contains("format 2"));
    }

    #[test]
    fn an_ended_connection_stays() {
        let mut c = Connection::new(Config::default());
        c.recv(0, b"GET / HTTP/1.1\r\n\r\n");
        assert!(c.export(&mut Vec::new()).is_err());
    }
}
