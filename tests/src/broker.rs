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
    /// TLS with client certificates required, signed by this CA (PEM file).
    client_ca: Option<PathBuf>,
}

impl Broker {
    /// Starts the broker and waits (bounded) until it accepts connections.
    pub fn start(kind: BrokerKind) -> Broker {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut broker = Broker { kind, port, dir: TempDir::new(), child: None, tls: None, client_ca: None };
        broker.restart();
        broker
    }

    /// The broker speaking TLS only (redis-server `--tls-port`, nats-server `--tls`), with this
    /// certificate and key, asking clients for no certificate.
    pub fn start_tls(kind: BrokerKind, cert: PathBuf, key: PathBuf) -> Broker {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut broker =
            Broker { kind, port, dir: TempDir::new(), child: None, tls: Some((cert, key)), client_ca: None };
        broker.restart();
        broker
    }

    /// The broker speaking TLS only and requiring a client certificate signed by `client_ca`
    /// (redis-server `--tls-auth-clients yes`, nats-server `--tlsverify`).
    pub fn start_tls_verifying(kind: BrokerKind, cert: PathBuf, key: PathBuf, client_ca: PathBuf) -> Broker {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut broker =
            Broker { kind, port, dir: TempDir::new(), child: None, tls: Some((cert, key)), client_ca: Some(client_ca) };
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
                    Some((cert, key)) => {
                        let auth = if self.client_ca.is_some() { "yes" } else { "no" };
                        c.args(["--port", "0", "--tls-port", &port, "--tls-auth-clients", auth, "--tls-cert-file"])
                            .arg(cert)
                            .arg("--tls-key-file")
                            .arg(key);
                        if let Some(ca) = &self.client_ca {
                            c.arg("--tls-ca-cert-file").arg(ca);
                        }
                        &mut c
                    }
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
                if let Some(ca) = &self.client_ca {
                    c.arg("--tlsverify").arg("--tlscacert").arg(ca);
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
    /// Each node's cluster bus port.
    buses: Vec<u16>,
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
        Self::start_nodes(3)
    }

    /// Three masters and a fourth node, a replica of node 0 (in sync when this returns).
    pub fn start_with_replica() -> RedisCluster {
        let cluster = Self::start_nodes(4);
        let (master, replica) = (cluster.ports[0], cluster.ports[3]);
        let master_id = redis_cli(master, &["cluster", "myid"]).trim().to_string();
        // The bus port too: it is not the default (port + 10000).
        let bus = cluster.buses[0].to_string();
        assert_eq!(redis_cli(replica, &["cluster", "meet", "127.0.0.1", &master.to_string(), &bus]).trim(), "OK");
        // The replica knows node 0 once the handshake went round; then it can follow it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while redis_cli(replica, &["cluster", "replicate", &master_id]).trim() != "OK" {
            assert!(Instant::now() < deadline, "node {replica} could not replicate {master} within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        while !redis_cli(replica, &["info", "replication"]).contains("master_link_status:up")
            || cluster.ports.iter().any(|&p| !redis_cli(p, &["cluster", "info"]).contains("cluster_state:ok"))
            || redis_cli(master, &["cluster", "replicas", &master_id]).trim().is_empty()
        {
            assert!(Instant::now() < deadline, "the replica was not in sync within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// `count` nodes started; the first three made a cluster with `redis-cli --cluster create`, the
    /// others left out of it.
    fn start_nodes(count: usize) -> RedisCluster {
        let mut cluster =
            RedisCluster { ports: Vec::new(), buses: Vec::new(), children: Vec::new(), _dirs: Vec::new() };
        let ports = free_ports(2 * count);
        for node in 0..count {
            let (port, bus) = (ports[node], ports[node + count]);
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
            cluster.buses.push(bus);
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
        let nodes: Vec<String> = cluster.ports[..3].iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .expect("could not run redis-cli --cluster create");
        assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(30);
        for &port in &cluster.ports[..3] {
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
