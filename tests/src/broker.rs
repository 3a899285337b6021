//! A real `redis-server` or `nats-server` for the topics tests, on 127.0.0.1 with a port the OS
//! chose free, killed (by pid) and reaped on drop. They are the Debian packages `.ci/run` installs
//! (`.ci/deps/cluster.apt`); a missing binary fails the test with a message saying so.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TempDir;

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Redis,
    Nats,
}

pub struct Broker {
    kind: BrokerKind,
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// TLS only: its certificate and key (PEM files).
    tls: Option<(PathBuf, PathBuf)>,
}

impl Broker {
    /// Starts the broker and waits (bounded) until it accepts connections.
    pub fn start(kind: BrokerKind) -> Broker {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut broker = Broker { kind, port, dir: TempDir::new(), child: None, tls: None };
        broker.restart();
        broker
    }

    /// The broker speaking TLS only (redis-server `--tls-port`, nats-server `--tls`), with this
    /// certificate and key, asking clients for no certificate.
    pub fn start_tls(kind: BrokerKind, cert: PathBuf, key: PathBuf) -> Broker {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut broker = Broker { kind, port, dir: TempDir::new(), child: None, tls: Some((cert, key)) };
        broker.restart();
        broker
    }

    /// `redis://127.0.0.1:PORT` or `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        let scheme = match self.kind {
            BrokerKind::Redis if self.tls.is_some() => "rediss",
            BrokerKind::Redis => "redis",
            BrokerKind::Nats if self.tls.is_some() => "tls",
            BrokerKind::Nats => "nats",
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: what a crash looks like) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port, and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let (program, mut command) = match self.kind {
            BrokerKind::Redis => {
                let mut c = Command::new("redis-server");
                match &self.tls {
                    None => c.args(["--port", &port]),
                    Some((cert, key)) => c
                        .args(["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no", "--tls-cert-file"])
                        .arg(cert)
                        .arg("--tls-key-file")
                        .arg(key),
                };
                c.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
                c.arg("--dir").arg(self.dir.path());
                ("redis-server", c)
            }
            BrokerKind::Nats => {
                let mut c = Command::new("nats-server");
                c.args(["-a", "127.0.0.1", "-p", &port]);
                if let Some((cert, key)) = &self.tls {
                    c.args(["--tls", "--tlscert"]).arg(cert).arg("--tlskey").arg(key);
                }
                ("nats-server", c)
            }
        };
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "could not start {program} ({e}): the topics tests need it installed \
                 (Debian package {program}, listed in .ci/deps/cluster.apt)"
            )
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "{program} did not listen on {port} within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
