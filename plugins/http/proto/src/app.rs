//! [`App`] and [`AppServer`]: an HTTP application as one function from request to response, with
//! the connection handling (framing, bodies, `100 Continue`, keep-alive, pipelining, errors,
//! graceful drain) done by the library.

use plugin_api::{ConnError, ConnId, ConnMap, Frame, Host, Protocol, WorkerInfo};

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
}

/// The [`Protocol`] that serves an [`App`]: export it with `export_plugin!(AppServer<MyApp>)`.
pub struct AppServer<A> {
    app: A,
    limits: Limits,
    max_message: usize,
    conns: ConnMap<ConnState>,
    res: ResponseWriter,
    out: Vec<u8>,
    date: DateCache,
}

impl<A: App> AppServer<A> {
    /// The application.
    pub fn app(&mut self) -> &mut A {
        &mut self.app
    }
}

impl<A: App> Protocol for AppServer<A> {
    fn new(config: &str, worker: &WorkerInfo) -> Result<Self, String> {
        let app = A::new(config, worker)?;
        let limits = app.limits();
        Ok(AppServer {
            app,
            limits,
            max_message: worker.max_package_size,
            conns: ConnMap::new(),
            res: ResponseWriter::new(),
            out: Vec::with_capacity(4096),
            date: DateCache::default(),
        })
    }

    fn input(&mut self, host: &mut Host<'_>, conn: ConnId, buf: &[u8]) -> Frame {
        let state = self.conns.entry(conn);
        state.input(host, conn, buf, &self.limits, self.max_message, &mut self.date, &mut self.out)
    }

    fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, msg: &[u8]) {
        let (app, res, date, out) = (&mut self.app, &mut self.res, &mut self.date, &mut self.out);
        let state = self.conns.entry(conn);
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

    fn on_error(&mut self, host: &mut Host<'_>, conn: ConnId, err: ConnError) {
        let state = self.conns.entry(conn);
        match state.error_status(err) {
            Some(status) => state.reject(host, conn, status, &mut self.date, &mut self.out),
            None => host.close(conn),
        }
    }

    fn on_drain(&mut self, _host: &mut Host<'_>, _conn: ConnId) {
        // From here on every response says `Connection: close` and closes its connection; an
        // idle connection is left for the host's drain deadline (its client may be sending).
    }
}
