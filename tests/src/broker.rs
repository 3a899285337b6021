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

/// A Redis Cluster of three masters (no replicas) on 127.0.0.1, each `redis-server
/// --cluster-enabled yes` in its own temp dir, joined with `redis-cli --cluster create`; ready
/// when every node says `cluster_state:ok`. Killed (by pid) and reaped on drop.
pub struct RedisCluster {
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
    _dirs: Vec<TempDir>,
}

/// `n` distinct ports the OS chose free (their listeners are held until all are chosen, then
/// closed: the servers bind them next).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// `redis-cli -p PORT ARGS…`, its standard output.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("could not run redis-cli ({e}): Debian package redis-tools"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let mut cluster = RedisCluster { ports: Vec::new(), children: Vec::new(), _dirs: Vec::new() };
        let ports = free_ports(6);
        for node in 0..3 {
            let (port, bus) = (ports[node], ports[node + 3]);
            let dir = TempDir::new();
            let mut command = Command::new("redis-server");
            command
                .args(["--port", &port.to_string(), "--cluster-port", &bus.to_string()])
                .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let child = command.spawn().unwrap_or_else(|e| {
                panic!("could not start redis-server ({e}): Debian package redis-server (.ci/deps/cluster.apt)")
            });
            cluster.ports.push(port);
            cluster.children.push(Some(child));
            cluster._dirs.push(dir);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for &port in &cluster.ports {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not listen on {port} within 10 s");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let nodes: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .expect("could not run redis-cli --cluster create");
        assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(30);
        for &port in &cluster.ports {
            while !redis_cli(port, &["cluster", "info"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the cluster was not ok within 30 s (node {port})");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// `redis+cluster://127.0.0.1:P1` (the first node as the only seed).
    pub fn url(&self) -> String {
        format!("redis+cluster://127.0.0.1:{}", self.ports[0])
    }

    pub fn port(&self, node: usize) -> u16 {
        self.ports[node]
    }

    /// The sharded channels with subscribers on `node` (`PUBSUB SHARDCHANNELS`).
    pub fn shard_channels(&self, node: usize) -> Vec<String> {
        redis_cli(self.ports[node], &["pubsub", "shardchannels"])
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// Kills a node (SIGKILL: a crash) and reaps it.
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.children[node].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in 0..self.children.len() {
            self.kill(node);
        }
    }
}
