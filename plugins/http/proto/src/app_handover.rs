//! [`AppServer`] in hand-overs (docs/plugins.md, "Hand-over"): an application takes part by
//! setting [`App::HANDOVER_VERSION`]; then its connections move to the replacement worker with
//! the library's state for them (an [`App`] has no per-connection state of its own), and its
//! worker-wide state with [`App::export_worker`] / [`App::adopt_worker`].
//!
//! A connection's state, inside the application's version: the library's format `u8` (1), kind `u8` (0: nothing received yet,
//! 1: HTTP/1.x and [`crate::handover::write_conn_state`], 2: HTTP/2 and
//! [`crate::h2::Connection::export`]). An HTTP/2 connection with a request body arriving stays
//! and drains, as does anything [`crate::handover`] declines.

use plugin_api::{ConnId, Host};

use crate::app::{App, AppConn, AppServer};
use crate::app_h2::AppH2;
use crate::handover::{read_conn_state, write_conn_state, Decline, Reader};

/// The library's format of a connection's state (beside the application's version).
const FORMAT: u8 = 1;
const FRESH: u8 = 0;
const HTTP1: u8 = 1;
const HTTP2: u8 = 2;

impl<A: App> AppServer<A> {
    pub(crate) fn export_state(&self, conn: ConnId, out: &mut Vec<u8>) -> Result<(), Decline> {
        out.push(FORMAT);
        match self.conns.get(conn) {
            Some(AppConn { h2: Some(h2), .. }) => {
                out.push(HTTP2);
                h2.export(out)
            }
            Some(c) if c.http1 => {
                out.push(HTTP1);
                write_conn_state(&c.state, out)
            }
            _ => {
                out.push(FRESH);
                Ok(())
            }
        }
    }

    pub(crate) fn adopt_state(&mut self, host: &mut Host<'_>, conn: ConnId, state: &[u8]) -> Result<(), String> {
        let mut r = Reader(state);
        match r.u8()? {
            FORMAT => {}
            other => return Err(format!("connection state format {other} is not known here")),
        }
        let c = match r.u8()? {
            FRESH => AppConn::default(),
            HTTP1 => AppConn { state: read_conn_state(&mut r)?, h2: None, http1: true },
            HTTP2 => AppConn { h2: Some(Box::new(AppH2::adopt(&mut r, host.now_ms())?)), ..AppConn::default() },
            other => return Err(format!("unknown connection kind {other}")),
        };
        r.end()?;
        self.conns.insert(conn, c);
        Ok(())
    }
}
