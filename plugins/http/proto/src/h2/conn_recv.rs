//! The receiving half of [`Connection`]: each frame the client sends, checked against the
//! connection's state, turned into events, answers and counts.

use super::*;
use crate::h2::request::RequestBuilder;

impl Connection {
    pub(super) fn on_frame(&mut self, f: Frame<'_>) -> Result<(), H2Error> {
        use H2Error::Connection as C;
        if let Some(p) = &self.pending {
            // Nothing may come between a HEADERS and its CONTINUATIONs (§6.10).
            match f {
                Frame::Continuation { stream, .. } if stream == p.stream => {}
                _ => return Err(C(ErrorCode::PROTOCOL_ERROR)),
            }
        }
        match f {
            Frame::Data { stream, data, end_stream, flow_len } => self.on_data(stream, data, end_stream, flow_len),
            Frame::Headers { stream, block, end_stream, end_headers, .. } => {
                if block.len() > self.config.max_header_block {
                    self.stats.header_block_too_large += 1;
                    return Err(C(ErrorCode::ENHANCE_YOUR_CALM));
                }
                if end_headers {
                    self.on_header_block(stream, block, end_stream)
                } else {
                    if block.is_empty() {
                        self.stats.empty_continuation_frames += 1;
                        self.idle_frame()?;
                    }
                    self.pending = Some(Pending { stream, end_stream, block: block.to_vec() });
                    Ok(())
                }
            }
            Frame::Continuation { block, end_headers, .. } => {
                let Some(p) = self.pending.as_mut() else { return Err(C(ErrorCode::PROTOCOL_ERROR)) };
                if p.block.len() + block.len() > self.config.max_header_block {
                    self.stats.header_block_too_large += 1;
                    return Err(C(ErrorCode::ENHANCE_YOUR_CALM));
                }
                p.block.extend_from_slice(block);
                if block.is_empty() && !end_headers {
                    self.stats.empty_continuation_frames += 1;
                    self.idle_frame()?;
                }
                if end_headers {
                    let p = self.pending.take().expect("pending header block");
                    self.on_header_block(p.stream, &p.block, p.end_stream)?;
                }
                Ok(())
            }
            Frame::Priority { .. } => self.idle_frame(),
            Frame::RstStream { stream, code } => {
                if self.is_idle(stream) {
                    return Err(C(ErrorCode::PROTOCOL_ERROR));
                }
                if self.streams.contains_key(&stream) {
                    self.stats.peer_resets += 1;
                    self.remove_stream(stream);
                    self.events.push_back(Event::Reset { stream, code });
                    self.count_reset();
                    Ok(())
                } else {
                    // A stream already closed: nothing to do.
                    self.idle_frame()
                }
            }
            Frame::Settings { ack, params } => {
                self.stats.settings_frames += 1;
                self.idle_frame()?;
                if !ack {
                    self.on_settings(params)?;
                    frame::write_settings_ack(&mut self.out);
                }
                Ok(())
            }
            Frame::PushPromise { .. } => Err(C(ErrorCode::PROTOCOL_ERROR)),
            Frame::Ping { ack, data } => {
                self.stats.ping_frames += 1;
                self.idle_frame()?;
                if !ack {
                    frame::write_ping(&mut self.out, true, data);
                }
                Ok(())
            }
            Frame::GoAway { last_stream, code, .. } => {
                self.idle_frame()?;
                self.goaway_received = true;
                self.events.push_back(Event::GoAway { last_stream, code });
                Ok(())
            }
            Frame::WindowUpdate { stream: 0, increment } => {
                self.send_window += i64::from(increment);
                if self.send_window > i64::from(MAX_WINDOW) {
                    self.stats.flow_control_errors += 1;
                    return Err(C(ErrorCode::FLOW_CONTROL_ERROR));
                }
                Ok(())
            }
            Frame::WindowUpdate { stream, increment } => {
                if self.is_idle(stream) {
                    return Err(C(ErrorCode::PROTOCOL_ERROR));
                }
                let Some(s) = self.streams.get_mut(&stream) else { return self.idle_frame() };
                s.send_window += i64::from(increment);
                if s.send_window > i64::from(MAX_WINDOW) {
                    self.stats.flow_control_errors += 1;
                    return Err(H2Error::Stream(stream, ErrorCode::FLOW_CONTROL_ERROR));
                }
                Ok(())
            }
            Frame::Unknown { .. } => self.idle_frame(),
        }
    }

    fn on_settings(&mut self, params: &[u8]) -> Result<(), H2Error> {
        use H2Error::Connection as C;
        for (id, value) in frame::settings(params) {
            match id {
                setting::HEADER_TABLE_SIZE => self.encoder.set_peer_table_size(value),
                setting::ENABLE_PUSH if value > 1 => return Err(C(ErrorCode::PROTOCOL_ERROR)),
                setting::INITIAL_WINDOW_SIZE => {
                    if value > MAX_WINDOW {
                        self.stats.flow_control_errors += 1;
                        return Err(C(ErrorCode::FLOW_CONTROL_ERROR));
                    }
                    let delta = i64::from(value) - i64::from(self.peer_initial_window);
                    self.peer_initial_window = value;
                    for s in self.streams.values_mut() {
                        s.send_window += delta;
                        if s.send_window > i64::from(MAX_WINDOW) {
                            self.stats.flow_control_errors += 1;
                            return Err(C(ErrorCode::FLOW_CONTROL_ERROR));
                        }
                    }
                }
                setting::MAX_FRAME_SIZE => {
                    if !(frame::MIN_MAX_FRAME_SIZE..=frame::MAX_MAX_FRAME_SIZE).contains(&value) {
                        return Err(C(ErrorCode::PROTOCOL_ERROR));
                    }
                    self.peer_max_frame = value;
                }
                // MAX_CONCURRENT_STREAMS (no push here), MAX_HEADER_LIST_SIZE (advisory),
                // unknown ones (ignored, §6.5.2).
                _ => {}
            }
        }
        Ok(())
    }

    fn on_data(&mut self, id: u32, data: &[u8], end_stream: bool, flow_len: u32) -> Result<(), H2Error> {
        use H2Error::Connection as C;
        if self.is_idle(id) {
            return Err(C(ErrorCode::PROTOCOL_ERROR));
        }
        if i64::from(flow_len) > self.recv_window {
            self.stats.flow_control_errors += 1;
            return Err(C(ErrorCode::FLOW_CONTROL_ERROR));
        }
        self.recv_window -= i64::from(flow_len);
        // Padding is given back at once.
        self.release_connection(flow_len - data.len() as u32);
        if data.is_empty() && !end_stream {
            self.stats.empty_data_frames += 1;
            self.idle_frame()?;
        }
        let Some(s) = self.streams.get_mut(&id) else {
            // A stream closed or reset: its data is dropped, the window given back.
            self.release_connection(data.len() as u32);
            return self.idle_frame();
        };
        if s.recv_closed {
            self.release_connection(data.len() as u32);
            return Err(H2Error::Stream(id, ErrorCode::STREAM_CLOSED));
        }
        if i64::from(flow_len) > s.recv_window {
            self.stats.flow_control_errors += 1;
            self.release_connection(data.len() as u32);
            return Err(H2Error::Stream(id, ErrorCode::FLOW_CONTROL_ERROR));
        }
        s.recv_window -= i64::from(flow_len);
        let padding = flow_len - data.len() as u32;
        s.release_pending += padding;
        s.received += data.len() as u64;
        s.unreleased += data.len() as u32;
        // §8.1.1: a content-length that the DATA frames contradict is malformed.
        if s.content_length.is_some_and(|cl| s.received > cl || (end_stream && s.received != cl)) {
            self.stats.malformed_requests += 1;
            return Err(H2Error::Stream(id, ErrorCode::PROTOCOL_ERROR));
        }
        s.recv_closed = end_stream;
        if !data.is_empty() || end_stream {
            self.events.push_back(Event::Data { stream: id, data: data.to_vec(), end_stream });
        }
        if end_stream {
            self.finish_stream(id);
        }
        Ok(())
    }

    /// A complete header block: a new request, trailers, or one to decode and drop.
    fn on_header_block(&mut self, id: u32, block: &[u8], end_stream: bool) -> Result<(), H2Error> {
        use H2Error::Connection as C;
        // Decoded first in every case: the HPACK context must follow every block. The fields go
        // straight into the request as they are decoded (no list of them).
        let mut builder = RequestBuilder::default();
        let decoded = self.decoder.decode_with(block, |name, value| builder.push(name, value));
        let result = self.on_fields(id, decoded, builder, end_stream);
        if let Err(C(ErrorCode::COMPRESSION_ERROR)) = result {
            self.stats.compression_errors += 1;
        }
        result
    }

    fn on_fields(
        &mut self,
        id: u32,
        decoded: Result<(), DecodeError>,
        fields: RequestBuilder,
        end_stream: bool,
    ) -> Result<(), H2Error> {
        use H2Error::Connection as C;
        if decoded == Err(DecodeError::Compression) {
            return Err(C(ErrorCode::COMPRESSION_ERROR));
        }
        if let Some(s) = self.streams.get_mut(&id) {
            // Trailers: they end the body; their fields are not passed on.
            if s.recv_closed {
                return Err(H2Error::Stream(id, ErrorCode::STREAM_CLOSED));
            }
            if !end_stream || fields.has_pseudo() {
                self.stats.malformed_requests += 1;
                return Err(H2Error::Stream(id, ErrorCode::PROTOCOL_ERROR));
            }
            if s.content_length.is_some_and(|cl| cl != s.received) {
                self.stats.malformed_requests += 1;
                return Err(H2Error::Stream(id, ErrorCode::PROTOCOL_ERROR));
            }
            s.recv_closed = true;
            self.events.push_back(Event::Data { stream: id, data: Vec::new(), end_stream: true });
            self.finish_stream(id);
            return Ok(());
        }
        if id.is_multiple_of(2) {
            return Err(C(ErrorCode::PROTOCOL_ERROR));
        }
        if id <= self.last_stream {
            // A stream that has been closed (§5.1).
            return Err(C(ErrorCode::STREAM_CLOSED));
        }
        self.last_stream = id;
        if self.goaway_sent.is_some() {
            // After GOAWAY: ignored, the client knows from the GOAWAY's last stream id (§6.8);
            // frames that follow on it are those of a closed stream.
            return Ok(());
        }
        if self.streams.len() >= self.config.max_concurrent_streams as usize {
            self.stats.refused_streams += 1;
            frame::write_rst_stream(&mut self.out, id, ErrorCode::REFUSED_STREAM);
            return Ok(());
        }
        let stream = Stream {
            recv_closed: end_stream,
            recv_window: i64::from(self.config.initial_window_size),
            send_window: i64::from(self.peer_initial_window),
            ..Stream::default()
        };
        self.stats.streams_opened += 1;
        self.streams.insert(id, stream);
        if decoded == Err(DecodeError::TooLarge) {
            // The HPACK bomb, or only a large head: 431, and the stream ends.
            self.stats.header_list_too_large += 1;
            let _ = self.send_headers(id, 431, &[("content-length", b"0")], true);
            return Ok(());
        }
        let request = match fields.finish() {
            Ok(r) => r,
            Err(_) => {
                self.stats.malformed_requests += 1;
                return Err(H2Error::Stream(id, ErrorCode::PROTOCOL_ERROR));
            }
        };
        let content_length = request.content_length();
        if end_stream && content_length.is_some_and(|cl| cl > 0) {
            self.stats.malformed_requests += 1;
            return Err(H2Error::Stream(id, ErrorCode::PROTOCOL_ERROR));
        }
        if let Some(s) = self.streams.get_mut(&id) {
            s.content_length = content_length;
            s.announced = true;
        }
        self.events.push_back(Event::Request { stream: id, request, end_stream });
        Ok(())
    }
}
