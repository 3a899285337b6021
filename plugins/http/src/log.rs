//! Access-log lines (`host --access-log`): each response is logged once complete, a streamed
//! body's line when its stream ends (with the bytes handed to the host).

use http_proto::access_log::{self, Entry};
use plugin_api::{ConnId, Host};

use crate::{Http, Part, Request, Response};

/// The access-log line of a streamed response, written once its body is sent.
#[derive(Debug)]
pub(crate) struct PendingLog {
    pub(crate) remote: Option<std::net::IpAddr>,
    pub(crate) request_line: Vec<u8>,
    pub(crate) referer: Option<Vec<u8>>,
    pub(crate) user_agent: Option<Vec<u8>>,
    pub(crate) status: u16,
    /// The body's length: what is sent once the stream ends.
    pub(crate) body: u64,
}

/// The longest request line an access-log line repeats.
pub(crate) const MAX_LOGGED_LINE: usize = 8192;

impl Http {
    /// Logs the response to `req` just written to `out`; a streamed body's line waits for its
    /// end (returned, to be written then).
    pub(crate) fn log_request(
        &mut self,
        host: &mut Host<'_>,
        conn: ConnId,
        req: &Request<'_>,
        response: &Response,
        h2: bool,
    ) -> Option<Box<PendingLog>> {
        if !self.access_log {
            return None;
        }
        let mut request_line = access_log::request_line(req.raw_head(), MAX_LOGGED_LINE);
        // An HTTP/2 request, rebuilt as an HTTP/1.1 head, is logged with its own version.
        let h2_line;
        if h2 {
            h2_line = request_line.map(|line| [line.strip_suffix(b"HTTP/1.1").unwrap_or(line), b"HTTP/2.0"].concat());
            request_line = h2_line.as_deref();
        }
        let (referer, user_agent) = (req.header("referer"), req.header("user-agent"));
        match response {
            Response::Streamed { parts, .. } => {
                let (status, _) = access_log::status_and_body(&self.out)?;
                Some(Box::new(PendingLog {
                    remote: host.peer_addr(conn).map(|a| a.ip()),
                    request_line: request_line.unwrap_or_default().to_vec(),
                    referer: referer.map(<[u8]>::to_vec),
                    user_agent: user_agent.map(<[u8]>::to_vec),
                    status,
                    body: parts.iter().map(Part::len).sum(),
                }))
            }
            Response::Whole => {
                self.log_out(host, conn, request_line, referer, user_agent);
                None
            }
        }
    }

    /// Logs the response written whole to `out`.
    pub(crate) fn log_out(
        &mut self,
        host: &mut Host<'_>,
        conn: ConnId,
        request_line: Option<&[u8]>,
        referer: Option<&[u8]>,
        user_agent: Option<&[u8]>,
    ) {
        if !self.access_log {
            return;
        }
        let Some((status, body_bytes)) = access_log::status_and_body(&self.out) else { return };
        let remote = host.peer_addr(conn).map(|a| a.ip());
        let entry = Entry { remote, request_line, status, body_bytes, referer, user_agent };
        self.write_log(host, &entry);
    }

    pub(crate) fn log_pending(&mut self, host: &mut Host<'_>, log: &PendingLog) {
        let entry = Entry {
            remote: log.remote,
            request_line: Some(&log.request_line),
            status: log.status,
            body_bytes: log.body,
            referer: log.referer.as_deref(),
            user_agent: log.user_agent.as_deref(),
        };
        self.write_log(host, &entry);
    }

    pub(crate) fn write_log(&mut self, host: &mut Host<'_>, entry: &Entry<'_>) {
        self.date.update(host.now_ms());
        self.log_line.clear();
        let time = self.log_time.at(self.date.secs());
        access_log::write_line(&mut self.log_line, entry, time, self.log_format);
        host.access_log(&self.log_line);
    }
}
