//! [`App`] and [`AppServer`]: an HTTP application as one function from request to response, with
//! the connection handling (framing, bodies, `100 Continue`, keep-alive, pipelining, errors,
//! graceful drain) done by the library, over HTTP/1.1 and HTTP/2 alike (h2 by ALPN over TLS, h2c
//! with prior knowledge in cleartext: `app_h2`).

use plugin_api::{ConnError, ConnId, ConnMap, Frame, Host, Protocol, StateWriter, WorkerInfo};

use crate::h2::serve::PREFACE_LEN;
use crate::h2::Start;

use crate::app_h2::AppH2;
use crate::conn::{persist, ConnState, Delivered};
use crate::parse::{Limits, Method};
use crate::request::Request;
use crate::response::{DateCache, Persist};
use crate::writer::ResponseWriter;

/// An HTTP application: one instance per worker, called for each complete request.
///
/// ```
/// use http_proto::{App, AppServer, Request, ResponseWriter, Status};
///
/// struct Hello;
/// impl App for Hello {
///     fn new(_config: &str, _worker: &plugin_api::WorkerInfo) -> Result<Self, String> {
///         Ok(Hello)
///     }
///     fn handle(&mut self, req: &Request<'_>, res: &mut ResponseWriter) {
///         match req.path() {
///             "/" => res.header("Content-Type", "text/plain").body("hi"),
///             _ => res.status(Status::NOT_FOUND),
///         };
///     }
/// }
/// // In the plugin crate: `plugin_api::export_plugin!(AppServer<Hello>);`
/// # let _ = std::marker::PhantomData::<AppServer<Hello>>;
/// ```
pub trait App: Sized + 'static {
    /// Builds the application from the service's config (TOML text; empty when there is none).
    fn new(config: &str, worker: &WorkerInfo) -> Result<Self, String>;

    /// The request limits (defaults: [`Limits::default`]).
    fn limits(&self) -> Limits {
        Limits::default()
    }

    /// Answers one request. `res` starts as an empty 200; for `HEAD` its body is not sent.
    fn handle(&mut self, req: &Request<'_>, res: &mut ResponseWriter);

    /// HTTP/2 over TLS, on connections whose handshake agreed `h2` by ALPN (default: on).
    fn h2(&self) -> bool {
        true
    }

    /// HTTP/2 in cleartext, on connections that start with the client preface (default: on).
    fn h2c(&self) -> bool {
        true
    }

    /// Hand-over (docs/plugins.md): the version of the application's worker-wide state; 0 (the
    /// default) does not take part, and the workers drain on a reload. Set it (1 for an
    /// application without state) and the connections move to the replacement worker with the
    /// library's state for them.
    const HANDOVER_VERSION: u32 = 0;

    /// In the replacement: whether it reads state `version` (default: its own only).
    fn handover_accepts(&mut self, version: u32) -> bool {
        version == Self::HANDOVER_VERSION
    }

    /// In the old worker: the worker-wide state, written to `out` (default: none). False
    /// moves nothing (the worker drains).
    fn export_worker(&mut self, _out: &mut Vec<u8>) -> bool {
        true
    }

    /// In the replacement, before the connections: what [`App::export_worker`] wrote. False
    /// fails the hand-over (the old worker drains).
    fn adopt_worker(&mut self, _version: u32, _state: &[u8]) -> bool {
        true
    }
}

/// One connection of an [`AppServer`].
#[derive(Debug, Default)]
pub(crate) struct AppConn {
    pub(crate) state: ConnState,
    /// It speaks HTTP/2.
    pub(crate) h2: Option<Box<AppH2>>,
    /// It speaks HTTP/1.x (its first bytes were not the preface).
    pub(crate) http1: bool,
}

/// The [`Protocol`] that serves an [`App`]: export it with `export_plugin!(AppServer<MyApp>)`.
pub struct AppServer<A> {
    pub(crate) app: A,
    pub(crate) limits: Limits,
    max_message: usize,
    /// The host's send buffer: HTTP/2 output is handed over while less is pending.
    pub(crate) send_window: usize,
    pub(crate) conns: ConnMap<AppConn>,
    pub(crate) res: ResponseWriter,
    pub(crate) out: Vec<u8>,
    pub(crate) date: DateCache,
}

impl<A: App> AppServer<A> {
    /// The application.
    pub fn app(&mut self) -> &mut A {
        &mut self.app
    }
}

impl<A: App> Protocol for AppServer<A> {
    const HANDOVER_VERSION: u32 = A::HANDOVER_VERSION;

    fn handover_accepts(&mut self, _host: &mut Host<'_>, _plugin: &str, version: u32) -> bool {
        self.app.handover_accepts(version)
    }

    fn export_conn(&mut self, _host: &mut Host<'_>, conn: ConnId, out: &mut StateWriter<'_>) -> bool {
        crate::handover::export_conn(conn, out, |state| self.export_state(conn, state))
    }

    fn adopt_conn(&mut self, host: &mut Host<'_>, conn: ConnId, _version: u32, state: &[u8]) -> bool {
        crate::handover::adopt_conn(conn, || self.adopt_state(host, conn, state))
    }

    fn export_worker(&mut self, _host: &mut Host<'_>, out: &mut StateWriter<'_>) -> bool {
        use std::io::Write;
        let mut state = Vec::new();
        self.app.export_worker(&mut state) && out.write_all(&state).is_ok()
    }

    fn adopt_worker(&mut self, _host: &mut Host<'_>, version: u32, state: &[u8]) -> bool {
        self.app.adopt_worker(version, state)
    }

    fn on_worker_start(&mut self, host: &mut Host<'_>) -> Result<(), String> {
        // Over TLS, `h2` is offered by ALPN while the application serves HTTP/2 (a service's
        // `tls_alpn` still wins; a host older than plugin-api 0.1.4 offers its default list).
        let alpn: &[&str] = if self.app.h2() { &["h2", "http/1.1", "http/1.0"] } else { &["http/1.1", "http/1.0"] };
        host.set_alpn(alpn);
        Ok(())
    }

    fn new(config: &str, worker: &WorkerInfo) -> Result<Self, String> {
        let app = A::new(config, worker)?;
        let limits = app.limits();
        Ok(AppServer {
            app,
            limits,
            max_message: worker.max_package_size,
            send_window: worker.max_send_buffer.max(1),
            conns: ConnMap::new(),
            res: ResponseWriter::new(),
            out: Vec::with_capacity(4096),
            date: DateCache::default(),
        })
    }

    fn input(&mut self, host: &mut Host<'_>, conn: ConnId, buf: &[u8]) -> Frame {
        let c = self.conns.entry(conn);
        if let Some(h2) = &c.h2 {
            return crate::h2::frame_input(buf, h2.max_frame());
        }
        if !c.http1 {
            let mode = crate::h2::mode(self.app.h2(), self.app.h2c(), host, conn);
            match crate::h2::start(mode, buf) {
                Start::Http1 => c.http1 = true,
                Start::Http2 => {
                    c.h2 = Some(Box::new(AppH2::new()));
                    return Frame::Complete(PREFACE_LEN);
                }
                Start::NeedMore => return Frame::NeedMore,
                Start::Invalid => return Frame::Invalid,
            }
        }
        c.state.input(host, conn, buf, &self.limits, self.max_message, &mut self.date, &mut self.out)
    }

    fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, msg: &[u8]) {
        if self.conns.get(conn).is_some_and(|c| c.h2.is_some()) {
            return self.h2_message(host, conn, msg);
        }
        let (app, res, date, out) = (&mut self.app, &mut self.res, &mut self.date, &mut self.out);
        let state = &mut self.conns.entry(conn).state;
        let delivered = state.on_message(host, msg, &self.limits, |host, req| {
            res.clear();
            app.handle(req, res);
            let wanted = persist(req.head(), host.is_draining());
            date.update(host.now_ms());
            out.clear();
            let head_only = req.method() == Method::Head;
            res.write_to(out, date.get(), wanted, head_only, req.head().minor)
        });
        match delivered {
            Delivered::Answered(Persist::Close) => {
                state.closing = true;
                host.close_with(conn, &self.out);
            }
            Delivered::Answered(_) => {
                host.send(conn, &self.out);
            }
            Delivered::Refused(status) => state.reject(host, conn, status, &mut self.date, &mut self.out),
            Delivered::Ignored => {}
        }
        if self.out.capacity() > 256 * 1024 {
            self.out = Vec::with_capacity(4096);
        }
    }

    fn on_close(&mut self, _host: &mut Host<'_>, conn: ConnId) {
        self.conns.remove(conn);
    }

    fn on_buffer_drain(&mut self, host: &mut Host<'_>, conn: ConnId) {
        self.h2_resume(host, conn, false);
    }

    fn on_error(&mut self, host: &mut Host<'_>, conn: ConnId, err: ConnError) {
        if self.conns.get(conn).is_some_and(|c| c.h2.is_some()) {
            return self.h2_error_close(host, conn, err);
        }
        let state = &mut self.conns.entry(conn).state;
        match state.error_status(err) {
            Some(status) => state.reject(host, conn, status, &mut self.date, &mut self.out),
            None => host.close(conn),
        }
    }

    fn on_drain(&mut self, host: &mut Host<'_>, conn: ConnId) {
        // HTTP/2: GOAWAY with the last stream id; its streams are answered, then it closes.
        self.h2_resume(host, conn, true);
        // From here on every response says `Connection: close` and closes its connection; an
        // idle connection is left for the host's drain deadline (its client may be sending).
    }
}
