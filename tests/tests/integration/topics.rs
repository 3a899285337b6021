//! Topics (`Host::subscribe`, `Host::publish`) through the `ws_chat` example and real WebSocket
//! clients (Python's `websockets`): delivery across the workers of one host, room isolation, a
//! slow subscriber, hostile input; across two hosts through a real redis-server and nats-server.

use std::time::Duration;

use host_tests::broker::{Broker, BrokerKind};
use host_tests::{Host, READY_TIMEOUT};

use crate::websocket::{python, PRELUDE};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The `topics:` line of `host status`.
fn topics_line(host: &mut Host) -> String {
    let out = host.command(["status"], COMMAND_TIMEOUT);
    assert!(out.status.success(), "status failed: {}", out.stderr);
    out.stdout.lines().find(|l| l.starts_with("topics:")).unwrap_or_default().to_string()
}

/// The number after `word ` in `line` (`dropped 12` → 12).
fn count_after(line: &str, word: &str) -> u64 {
    let at = line.find(&format!("{word} ")).unwrap_or_else(|| panic!("no {word:?} in {line:?}"));
    line[at + word.len() + 1..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

// One host, two workers, no broker: 40 members of one room spread over both workers each send
// one message, and every member receives all 40, each once (its own included).
#[test]
fn every_member_gets_every_message_once_across_workers() {
    let mut host = Host::start("ws_chat", &["--count", "2"]);
    let script = format!(
        r#"{PRELUDE}
clients, pids = [], set()
while len(clients) < 40 or len(pids) < 2:
    assert len(clients) < 200, "200 clients did not land on both workers"
    ws = connect(max_queue=None)
    ws.send("/whoami")
    pids.add(ws.recv(timeout=5).split()[3])
    ws.send("/join lobby")
    assert ws.recv(timeout=5) == "joined lobby"
    clients.append(ws)
n = len(clients)
for i, ws in enumerate(clients):
    ws.send("m%d" % i)
expected = sorted("m%d" % i for i in range(n))
ok = 0
for ws in clients:
    got = sorted(ws.recv(timeout=10) for _ in range(n))
    try:
        extra = ws.recv(timeout=0.2)
    except TimeoutError:
        extra = None
    ok += got == expected and extra is None
print("workers", len(pids), "all", ok == n)
"#
    );
    assert_eq!(python(&script, host.port()), "workers 2 all True\n");
    let line = topics_line(&mut host);
    assert!(count_after(&line, "delivered") >= 40 * 40, "{line}");
    assert_eq!(count_after(&line, "dropped"), 0, "{line}");
}

// A message goes to the members of the sender's rooms only.
#[test]
fn rooms_are_isolated() {
    let host = Host::start("ws_chat", &["--count", "2"]);
    let script = format!(
        r#"{PRELUDE}
def member(*rooms):
    ws = connect()
    for room in rooms:
        ws.send("/join " + room)
        assert ws.recv(timeout=5) == "joined " + room
    return ws
red, blue, both = member("red"), member("blue"), member("red", "blue")
red.send("to red")
blue.send("to blue")
print(red.recv(timeout=5), "|", blue.recv(timeout=5), "|", sorted([both.recv(timeout=5), both.recv(timeout=5)]))
both.send("to both")
print(red.recv(timeout=5), "|", blue.recv(timeout=5), "|", both.recv(timeout=5), both.recv(timeout=5))
for ws in (red, blue):
    try:
        print("extra", ws.recv(timeout=0.3))
    except TimeoutError:
        pass
"#
    );
    assert_eq!(
        python(&script, host.port()),
        "to red | to blue | ['to blue', 'to red']\nto both | to both | to both to both\n"
    );
}

// A subscriber that stops reading is bounded by the send buffer: it misses messages (counted),
// while a member that reads gets every one of them, in order.
#[test]
fn a_slow_subscriber_is_bounded_by_the_send_buffer() {
    let mut host = Host::start("ws_chat", &["--max-send-buffer", "65536"]);
    let script = format!(
        r#"{PRELUDE}
import base64, os, socket
# The slow member: a raw socket with a small receive buffer that joins, then never reads.
slow = socket.socket()
slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
slow.connect(("127.0.0.1", int(sys.argv[1])))
key = base64.b64encode(os.urandom(16)).decode()
slow.sendall(("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key).encode())
head = b""
while b"\r\n\r\n" not in head:
    head += slow.recv(1)
payload = b"/join lobby"
slow.sendall(bytes([0x81, 0x80 | len(payload), 0, 0, 0, 0]) + payload)
fast = connect(max_queue=None)
fast.send("/join lobby")
assert fast.recv(timeout=5) == "joined lobby"
text = "x" * 1000
for i in range(4000):
    fast.send("%d %s" % (i, text))
ok = all(fast.recv(timeout=10) == "%d %s" % (i, text) for i in range(4000))
print("fast got all", ok)
"#
    );
    assert_eq!(python(&script, host.port()), "fast got all True\n");
    let line = topics_line(&mut host);
    assert!(count_after(&line, "dropped") > 0, "the slow member's copies are dropped and counted: {line}");
}

// A message of a megabyte (larger than a mailbox datagram: it crosses in fragments) reaches
// every member on both workers whole, each once, and a small one sent after it comes after it.
#[test]
fn a_message_of_a_megabyte_reaches_every_member_across_workers() {
    let mut host = Host::start("ws_chat", &["--count", "2"]);
    let script = format!(
        r#"{PRELUDE}
clients, pids = [], set()
while len(clients) < 6 or len(pids) < 2:
    assert len(clients) < 100, "100 clients did not land on both workers"
    ws = connect(max_size=None, max_queue=None)
    ws.send("/whoami")
    pids.add(ws.recv(timeout=5).split()[3])
    ws.send("/join big")
    assert ws.recv(timeout=5) == "joined big"
    clients.append(ws)
big = "".join(chr(97 + i % 26) for i in range(1_000_000))
clients[0].send(big)
clients[-1].send("small after")
ok = 0
for ws in clients:
    got = [ws.recv(timeout=20) for _ in range(2)]
    ok += got == [big, "small after"] or sorted(got, key=len) == ["small after", big]
print("workers", len(pids), "all", ok == len(clients))
"#
    );
    assert_eq!(python(&script, host.port()), "workers 2 all True\n");
    let line = topics_line(&mut host);
    assert_eq!(count_after(&line, "refused"), 0, "{line}");
    assert_eq!(count_after(&line, "dropped"), 0, "{line}");
}

// A client subscribing to topic after topic is refused past the limit per connection; a message
// over the publish limit is refused with a reason, one over the max package size closes that
// connection (1009); the others are served throughout. The limits are the service's own.
#[test]
fn hostile_subscribers_and_publishers_are_refused() {
    let host = Host::start("ws_chat", &["--topics-per-connection", "8", "--topic-max-message", "65536"]);
    let script = format!(
        r#"{PRELUDE}
other = connect()
other.send("/join calm")
assert other.recv(timeout=5) == "joined calm"
greedy = connect()
answers = []
for i in range(1000):
    greedy.send("/join t%d" % i)
    answers.append(greedy.recv(timeout=5))
    if answers[-1].startswith("!"):
        break
print(len(answers), answers[-1])
greedy.send("x" * 100_000)
print(greedy.recv(timeout=5))
try:
    greedy.send("y" * 100_000_000)
    greedy.recv(timeout=10)
except Exception as e:
    print("closed", getattr(getattr(e, "rcvd", None), "code", e))
other.send("still here")
print(other.recv(timeout=5))
"#
    );
    assert_eq!(
        python(&script, host.port()),
        "9 ! the connection is subscribed to too many topics\n\
         ! the message is larger than the service allows (topic_max_message)\n\
         closed 1009\n\
         still here\n"
    );
}

// ---- Across hosts ----

/// Two hosts (two workers each) sharing topics through `broker`, each connected to it from
/// every worker (readiness: their log says so).
fn two_hosts(broker: &Broker) -> (Host, Host) {
    let url = broker.url();
    let start = || {
        let host = Host::start("ws_chat", &["--count", "2", "--cluster", &url]);
        host.log()
            .wait_for_nth("connected to the cluster's broker", 2, READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("the workers did not connect to {url}: {e}"));
        host
    };
    (start(), start())
}

/// The script's helpers for two hosts: `member(port, room)` joins a room on the host at `port`;
/// `synced(senders, receivers, word="sync")` publishes `word` from the senders in turn until every
/// receiver saw one (so every worker's subscription is in place at the broker), within 20 s;
/// `collect(ws, n)` reads until `n` messages other than `sync` came, then checks none follows.
const TWO_HOSTS: &str = r#"
import time
from websockets.sync.client import connect as _connect
def member(port, room, **kw):
    ws = _connect("ws://127.0.0.1:%d/" % port, proxy=None, open_timeout=5, close_timeout=5, **kw)
    ws.send("/join " + room)
    assert ws.recv(timeout=5) == "joined " + room
    return ws
def synced(senders, receivers, word="sync"):
    pending = set(range(len(receivers)))
    deadline = time.time() + 20
    while pending and time.time() < deadline:
        for s in senders:
            s.send(word)
        for i in list(pending):
            try:
                while receivers[i].recv(timeout=0.05) != word:
                    pass
                pending.discard(i)
            except TimeoutError:
                pass
    return not pending
def collect(ws, n):
    got = []
    while len(got) < n:
        m = ws.recv(timeout=10)
        if m != "sync":
            got.append(m)
    try:
        while True:
            m = ws.recv(timeout=0.3)
            if m != "sync":
                got.append(m)
    except TimeoutError:
        pass
    return got
"#;

/// 40 members on each host send one message each; all 80 members receive all 80, each once.
fn eighty_members_across_two_hosts(kind: BrokerKind) {
    let broker = Broker::start(kind);
    let (mut a, b) = two_hosts(&broker);
    let (pa, pb) = (a.port(), b.port());
    let script = format!(
        r#"{TWO_HOSTS}
on_a = [member({pa}, "lobby", max_queue=None) for _ in range(40)]
on_b = [member({pb}, "lobby", max_queue=None) for _ in range(40)]
print("synced", synced(on_a[:2] + on_b[:2], on_a + on_b))
everyone = on_a + on_b
for i, ws in enumerate(everyone):
    ws.send("m%d" % i)
expected = sorted("m%d" % i for i in range(80))
print("all", all(sorted(collect(ws, 80)) == expected for ws in everyone))
"#
    );
    assert_eq!(python(&script, pa), "synced True\nall True\n");
    let out = a.command(["status"], COMMAND_TIMEOUT).stdout;
    let cluster = out.lines().find(|l| l.starts_with("cluster:")).unwrap_or_default();
    assert!(cluster.contains("#0 ready") && cluster.contains("#1 ready"), "{out}");
}

#[test]
fn eighty_members_across_two_hosts_through_redis() {
    eighty_members_across_two_hosts(BrokerKind::Redis);
}

#[test]
fn eighty_members_across_two_hosts_through_nats() {
    eighty_members_across_two_hosts(BrokerKind::Nats);
}

// The broker dies: members of one host still talk to each other (across its workers); the
// broker comes back: the workers reconnect, resubscribe, and the hosts talk again.
fn broker_loss_and_return(kind: BrokerKind) {
    let mut broker = Broker::start(kind);
    let (mut a, b) = two_hosts(&broker);
    let (pa, pb) = (a.port(), b.port());
    let before = format!(
        r#"{TWO_HOSTS}
a1, a2, b1 = member({pa}, "r"), member({pa}, "r"), member({pb}, "r")
print("synced", synced([a1, b1], [a1, a2, b1]))
"#
    );
    assert_eq!(python(&before, pa), "synced True\n");
    broker.kill();
    a.log().wait_for_nth("broker connection is down", 2, READY_TIMEOUT).expect("both workers of A notice");
    let local = format!(
        r#"{TWO_HOSTS}
members = [member({pa}, "local") for _ in range(12)]
for i, ws in enumerate(members):
    ws.send("x%d" % i)
print("local", all(sorted(collect(ws, 12)) == sorted("x%d" % i for i in range(12)) for ws in members))
"#
    );
    assert_eq!(python(&local, pa), "local True\n");
    broker.restart();
    for host in [&a, &b] {
        host.log().wait_for_nth("connected to the cluster's broker", 4, READY_TIMEOUT).expect("reconnected");
    }
    let after = format!(
        r#"{TWO_HOSTS}
a1, b1 = member({pa}, "again"), member({pb}, "again")
print("synced", synced([a1], [b1]), synced([b1], [a1]))
"#
    );
    assert_eq!(python(&after, pa), "synced True True\n");
    let out = a.command(["status"], COMMAND_TIMEOUT).stdout;
    let cluster = out.lines().find(|l| l.starts_with("cluster:")).unwrap_or_default().to_string();
    assert!(count_after(&cluster, "reconnects") >= 2, "{out}");
}

#[test]
fn redis_loss_stops_no_local_delivery_and_its_return_resumes_the_cluster() {
    broker_loss_and_return(BrokerKind::Redis);
}

#[test]
fn nats_loss_stops_no_local_delivery_and_its_return_resumes_the_cluster() {
    broker_loss_and_return(BrokerKind::Nats);
}

// Large messages across hosts: 900 KB (under nats-server's default max_payload of 1 MiB) from
// a member of each host reaches the members of the other, whole.
fn a_large_message_across_two_hosts(kind: BrokerKind) {
    let broker = Broker::start(kind);
    let (a, b) = two_hosts(&broker);
    let (pa, pb) = (a.port(), b.port());
    let script = format!(
        r#"{TWO_HOSTS}
a1, b1 = member({pa}, "big", max_size=None), member({pb}, "big", max_size=None)
print("synced", synced([a1, b1], [a1, b1]))
big = "".join(chr(65 + i % 26) for i in range(900_000))
a1.send(big)
b1.send(big[::-1])
print("a", sorted(collect(a1, 2)) == sorted([big, big[::-1]]), "b", sorted(collect(b1, 2)) == sorted([big, big[::-1]]))
"#
    );
    assert_eq!(python(&script, pa), "synced True\na True b True\n");
}

#[test]
fn a_large_message_across_two_hosts_through_redis() {
    a_large_message_across_two_hosts(BrokerKind::Redis);
}

#[test]
fn a_large_message_across_two_hosts_through_nats() {
    a_large_message_across_two_hosts(BrokerKind::Nats);
}

// A hostile publisher on a shared Redis sends 20 MB on a channel the host subscribes to: the
// workers skip it as it arrives (counted as oversized), their connection stays in sync (no
// reconnect), and the message that follows it is delivered.
#[test]
fn an_oversized_message_from_the_broker_is_skipped_and_the_connection_stays() {
    let broker = Broker::start(BrokerKind::Redis);
    let url = broker.url();
    let mut host = Host::start("ws_chat", &["--cluster", &url, "--topic-max-message", "1048576"]);
    host.log().wait_for_nth("connected to the cluster's broker", 1, READY_TIMEOUT).expect("connected");
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let script = format!(
        r#"{PRELUDE}
import socket, time
ws = connect()
ws.send("/join room")
assert ws.recv(timeout=5) == "joined room"
def publish(payload):
    r = socket.create_connection(("127.0.0.1", {port}))
    chan = b"host:ws_chat:room"
    r.sendall(b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n" % (len(chan), chan, len(payload)) + payload + b"\r\n")
    answer = r.recv(100)
    r.close()
    return answer
origin = b"OTHERHST"
# The subscription reaches the broker shortly after the join: publish until one is received.
deadline = time.time() + 20
while publish(origin + b"\x81\x05ready") == b":0\r\n":
    assert time.time() < deadline, "the host never subscribed at the broker"
    time.sleep(0.05)
assert ws.recv(timeout=5) == "ready"
print("big", publish(origin + b"\x82\x7f" + (20_000_000).to_bytes(8, "big") + b"x" * 20_000_000))
publish(origin + b"\x81\x05after")
print(ws.recv(timeout=10))
"#
    );
    assert_eq!(python(&script, host.port()), "big b':1\\r\\n'\nafter\n");
    let out = host.command(["status"], COMMAND_TIMEOUT).stdout;
    let topics = out.lines().find(|l| l.starts_with("topics:")).unwrap_or_default().to_string();
    let cluster = out.lines().find(|l| l.starts_with("cluster:")).unwrap_or_default().to_string();
    assert_eq!(count_after(&topics, "oversized"), 1, "{out}");
    assert_eq!(count_after(&cluster, "reconnects"), 0, "{out}");
}

// TLS to the broker: two hosts through a broker that speaks TLS only, trusting its certificate
// by the URL's `?ca=`; a host given a CA that did not sign it does not connect, and logs why.
fn two_hosts_over_tls(kind: BrokerKind) {
    let dir = host_tests::TempDir::new();
    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params.subject_alt_names.push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.self_signed(&key).expect("a certificate");
    let cert_file = dir.write("redis.crt", cert.pem().as_bytes());
    let key_file = dir.write("redis.key", key.serialize_pem().as_bytes());
    let broker = Broker::start_tls(kind, cert_file.clone(), key_file);
    let url = format!("{}?ca={}", broker.url(), cert_file.display());
    let start = || {
        let host = Host::start("ws_chat", &["--count", "2", "--cluster", &url]);
        host.log()
            .wait_for_nth("connected to the cluster's broker", 2, READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("the workers did not connect to {url}: {e}"));
        host
    };
    let (a, b) = (start(), start());
    let (pa, pb) = (a.port(), b.port());
    let script = format!(
        r#"{TWO_HOSTS}
a1, b1 = member({pa}, "secure"), member({pb}, "secure")
print("synced", synced([a1], [b1]), synced([b1], [a1]))
"#
    );
    assert_eq!(python(&script, pa), "synced True True\n");
    // Another CA: refused before any worker starts.
    let other = rcgen::CertificateParams::new(vec!["other".to_string()]).unwrap();
    let other = other.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
    let other_file = dir.write("other.crt", other.pem().as_bytes());
    let wrong = format!("{}?ca={}", broker.url(), other_file.display());
    let host = Host::start("ws_chat", &["--cluster", &wrong]);
    host.log()
        .wait_for_all(&["broker connection is down", "invalid peer certificate"], READY_TIMEOUT)
        .expect("the TLS handshake fails on the certificate");
}

#[test]
fn two_hosts_through_redis_over_tls() {
    two_hosts_over_tls(BrokerKind::Redis);
}

#[test]
fn two_hosts_through_nats_over_tls() {
    two_hosts_over_tls(BrokerKind::Nats);
}

// Client certificates: a broker that requires one signed by its CA (Redis `tls-auth-clients
// yes`, NATS `--tlsverify`). Two hosts offering one (`?cert=&key=`) share a room; a host
// without one is refused by the broker; files that cannot be read or do not match refuse the
// start, saying which.
fn two_hosts_with_client_certificates(kind: BrokerKind) {
    let dir = host_tests::TempDir::new();
    let ca_key = rcgen::KeyPair::generate().expect("a key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "topics test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("the CA");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let signed = |name: &str, usage: rcgen::ExtendedKeyUsagePurpose| {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        params.subject_alt_names.push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        params.extended_key_usages.push(usage);
        let cert = params.signed_by(&key, &issuer).expect("signed");
        let cert_file = dir.write(format!("{name}.crt"), cert.pem().as_bytes());
        let key_file = dir.write(format!("{name}.key"), key.serialize_pem().as_bytes());
        (cert_file, key_file)
    };
    let ca_file = dir.write("ca.crt", ca_cert.pem().as_bytes());
    let (server_cert, server_key) = signed("localhost", rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = signed("host-client", rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    let broker = Broker::start_tls_verifying(kind, server_cert, server_key, ca_file.clone());
    let url = format!(
        "{}?ca={}&cert={}&key={}",
        broker.url(),
        ca_file.display(),
        client_cert.display(),
        client_key.display()
    );
    let start = || {
        let host = Host::start("ws_chat", &["--count", "2", "--cluster", &url]);
        host.log()
            .wait_for_nth("connected to the cluster's broker", 2, READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("the workers did not connect to {url}: {e}"));
        host
    };
    let (a, b) = (start(), start());
    let (pa, pb) = (a.port(), b.port());
    let script = format!(
        r#"{TWO_HOSTS}
a1, b1 = member({pa}, "certified"), member({pb}, "certified")
print("synced", synced([a1], [b1]), synced([b1], [a1]))
"#
    );
    assert_eq!(python(&script, pa), "synced True True\n");
    // No client certificate: the broker ends the handshake.
    let without = format!("{}?ca={}", broker.url(), ca_file.display());
    let host = Host::start("ws_chat", &["--cluster", &without]);
    host.log().wait_for("broker connection is down", READY_TIMEOUT).expect("refused by the broker");
    assert!(!host.log().text().contains("connected to the cluster's broker"), "{}", host.log().text());
    // Files that cannot be read, or a key that is not the certificate's: the start is refused.
    let plugin_dir = host_tests::target_dir();
    let refused = |query: String| {
        let url = format!("{}?ca={}&{query}", broker.url(), ca_file.display());
        let args = ["--plugin-dir", plugin_dir.to_str().unwrap(), "--plugin", "ws_chat", "--listen", "127.0.0.1:0"];
        let out = host_tests::run_host(args.iter().copied().chain(["--cluster", url.as_str()]), READY_TIMEOUT);
        assert!(!out.status.success(), "started with {url}");
        out.stderr
    };
    let gone = dir.path().join("gone.crt");
    let err = refused(format!("cert={}&key={}", gone.display(), client_key.display()));
    assert!(err.contains("could not read the client certificate") && err.contains("gone.crt"), "{err}");
    let err = refused(format!("cert={}&key={}", client_cert.display(), ca_file.display()));
    assert!(err.contains("has no private key"), "{err}");
    let (_, other_key) = signed("other", rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    let err = refused(format!("cert={}&key={}", client_cert.display(), other_key.display()));
    assert!(err.contains("is not the key of the certificate"), "{err}");
}

#[test]
fn two_hosts_through_redis_with_client_certificates() {
    two_hosts_with_client_certificates(BrokerKind::Redis);
}

#[test]
fn two_hosts_through_nats_with_client_certificates() {
    two_hosts_with_client_certificates(BrokerKind::Nats);
}

// ---- Across hosts through a Redis Cluster (sharded pub/sub) ----

/// The room of a sharded channel (`host:<service>:<room>`).
fn room_of(channel: &str) -> String {
    channel.rsplit(':').next().unwrap().to_string()
}

// A real 3-node Redis Cluster; two hosts of two workers each with the cluster URL. Rooms whose
// slots live on each of the three nodes: every member on either host receives each message of
// its room once, and each room is subscribed on the node that owns its slot. One node killed:
// the rooms of the other two still go across hosts, and the dead node's rooms still go locally.
#[test]
fn two_hosts_through_a_redis_cluster_and_a_node_lost() {
    use host_tests::broker::RedisCluster;
    let mut cluster = RedisCluster::start();
    let url = cluster.url();
    let start = || {
        let host = Host::start("ws_chat", &["--count", "2", "--cluster", &url]);
        host.log()
            .wait_for_nth("connected to the cluster's broker", 2, READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("the workers did not get the slot map from {url}: {e}"));
        host
    };
    let (mut a, b) = (start(), start());
    let (pa, pb) = (a.port(), b.port());
    let rooms: Vec<String> = (0..9).map(|i| format!("room{i}")).collect();
    let ports: Vec<u16> = (0..3).map(|n| cluster.port(n)).collect();
    // While the members are connected, each node's sharded channels (`PUBSUB SHARDCHANNELS`).
    let script = format!(
        r#"{TWO_HOSTS}
import subprocess
rooms = {rooms:?}
members = {{}}
for r in rooms:
    members[r] = [member({pa}, r), member({pa}, r), member({pb}, r), member({pb}, r)]
    assert synced(members[r][:1] + members[r][2:3], members[r]), r
for r in rooms:
    for i, ws in enumerate(members[r]):
        ws.send("%s-%d" % (r, i))
ok = all(sorted(collect(ws, 4)) == sorted("%s-%d" % (r, i) for i in range(4)) for r in rooms for ws in members[r])
print("all", ok)
for p in {ports:?}:
    out = subprocess.run(["redis-cli", "-p", str(p), "pubsub", "shardchannels"], capture_output=True, timeout=5)
    print("node", " ".join(out.stdout.decode().split()))
"#
    );
    let out = crate::websocket::python(&script, pa);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("all True"), "{out}");
    let channels: Vec<Vec<&str>> =
        lines.map(|l| l.strip_prefix("node").unwrap().split_whitespace().collect()).collect();
    let on_node: Vec<Vec<String>> = channels.iter().map(|c| c.iter().map(|c| room_of(c)).collect()).collect();
    assert_eq!(on_node.len(), 3, "{out}");
    for (n, rooms_there) in on_node.iter().enumerate() {
        assert!(!rooms_there.is_empty(), "node {n} holds none of the rooms: {on_node:?}");
    }
    let mut all: Vec<String> = on_node.concat();
    all.sort();
    assert_eq!(all, rooms, "each room subscribed on one node only: {on_node:?}");
    let out = a.command(["status"], COMMAND_TIMEOUT).stdout;
    let line = out.lines().find(|l| l.starts_with("cluster:")).unwrap_or_default();
    assert!(line.contains("#0 ready 3/3 nodes") && line.contains("#1 ready 3/3 nodes"), "{out}");

    // A room's slot migrates from node 0 to node 1 while its members are connected (the
    // `CLUSTER SETSLOT` steps of a resharding): node 0 ends the subscription (a `sunsubscribe`
    // push), the hosts take the new map and subscribe on node 1; the room goes on across hosts.
    let (moved, channel) = (&on_node[0][0], channels[0][0]);
    let migrate = format!(
        r#"{TWO_HOSTS}
import subprocess
def cli(p, *a):
    return subprocess.run(["redis-cli", "-p", str(p)] + list(a), capture_output=True, timeout=5).stdout.decode().strip()
a1, b1 = member({pa}, "{moved}"), member({pb}, "{moved}")
before = synced([a1], [b1]) and synced([b1], [a1])
ports = {ports:?}
slot = cli(ports[0], "cluster", "keyslot", "{channel}")
src, dst = cli(ports[0], "cluster", "myid"), cli(ports[1], "cluster", "myid")
cli(ports[1], "cluster", "setslot", slot, "importing", src)
cli(ports[0], "cluster", "setslot", slot, "migrating", dst)
for p in ports:
    cli(p, "cluster", "setslot", slot, "node", dst)
after = synced([a1], [b1], "moved") and synced([b1], [a1], "moved")
there = "{channel}" in cli(ports[1], "pubsub", "shardchannels").split()
gone = "{channel}" not in cli(ports[0], "pubsub", "shardchannels").split()
print("before", before, "after", after, "moved", there, gone)
"#
    );
    assert_eq!(crate::websocket::python(&migrate, pa), "before True after True moved True True\n");

    cluster.kill(2);
    for host in [&a, &b] {
        host.log().wait_for_nth("broker connection is down", 2, READY_TIMEOUT).expect("both workers notice");
    }
    let alive: Vec<String> = on_node[0].iter().chain(&on_node[1]).cloned().collect();
    let dead = on_node[2][0].clone();
    let after = format!(
        r#"{TWO_HOSTS}
alive = {alive:?}
ok = True
for r in alive:
    a1, b1 = member({pa}, r), member({pb}, r)
    ok = ok and synced([a1], [b1]) and synced([b1], [a1])
members = [member({pa}, "{dead}") for _ in range(6)]
for i, ws in enumerate(members):
    ws.send("x%d" % i)
local = all(sorted(collect(ws, 6)) == sorted("x%d" % i for i in range(6)) for ws in members)
print("alive", ok, "local", local)
"#
    );
    assert_eq!(crate::websocket::python(&after, pa), "alive True local True\n");
    let out = a.command(["status"], COMMAND_TIMEOUT).stdout;
    let line = out.lines().find(|l| l.starts_with("cluster:")).unwrap_or_default();
    assert!(line.contains("2/3 nodes"), "{out}");
}

// A failover in a real Redis Cluster (three masters, node 3 a replica of node 0): with members
// of rooms on both hosts connected, `CLUSTER FAILOVER` on the replica. The rooms node 0 held go
// on across hosts through node 3, every worker's subscription of them moves there (none is left
// on node 0, even for a worker whose first map after the failover was stale), and the workers
// that heard of it close their connection to node 0, which owns no slot any more.
#[test]
fn two_hosts_through_a_redis_cluster_failover() {
    use host_tests::broker::RedisCluster;
    let cluster = RedisCluster::start_with_replica();
    let url = cluster.url();
    let start = || {
        let host = Host::start("ws_chat", &["--count", "2", "--cluster", &url]);
        host.log()
            .wait_for_nth("connected to the cluster's broker", 2, READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("the workers did not get the slot map from {url}: {e}"));
        host
    };
    let (mut a, mut b) = (start(), start());
    let (pa, pb) = (a.port(), b.port());
    let ports: Vec<u16> = (0..4).map(|n| cluster.port(n)).collect();
    let script = format!(
        r#"{TWO_HOSTS}
import subprocess
def cli(p, *a):
    return subprocess.run(["redis-cli", "-p", str(p)] + list(a), capture_output=True, timeout=5).stdout.decode().strip()
ports = {ports:?}
rooms = ["room%d" % i for i in range(9)]
members = {{r: (member({pa}, r), member({pb}, r)) for r in rooms}}
before = all(synced([a1], [b1]) and synced([b1], [a1]) for a1, b1 in members.values())
held = [c.rsplit(":", 1)[1] for c in cli(ports[0], "pubsub", "shardchannels").split()]
assert held, "node 0 holds none of the rooms"
assert cli(ports[3], "cluster", "failover") == "OK"
# A manual failover that has not happened within its own timeout (5 s) never will.
deadline = time.time() + 10
while cli(ports[3], "role").split()[0] != "master":
    assert time.time() < deadline, "node 3 was not promoted within 10 s"
    time.sleep(0.05)
after = all(synced([members[r][0]], [members[r][1]], "after") and synced([members[r][1]], [members[r][0]], "after") for r in held)
# Delivered does not say where: a worker that took a map from a node not yet told of the
# failover subscribes on node 0 meanwhile (a replica of node 3 now, it still delivers) and asks
# again a second later. Wait (bounded) until each room's two subscriptions (one per host) are on
# node 3 and none is left on node 0.
channels = ["host:ws_chat:" + r for r in held]
deadline = time.time() + 10
while True:
    counts = cli(ports[3], "pubsub", "shardnumsub", *channels).split()[1::2]
    left = cli(ports[0], "pubsub", "shardchannels").split()
    moved = counts == ["2"] * len(held) and not left
    if moved or time.time() > deadline:
        break
    time.sleep(0.05)
print("before", before, "after", after, "moved", moved or (held, counts, left))
"#
    );
    assert_eq!(crate::websocket::python(&script, pa), "before True after True moved True\n");
    // Closing the connection to the demoted node waits for a worker to take the new slot map,
    // which one without traffic on those slots does only at its periodic refresh (within a
    // minute): not asserted here (timing); `shards::tests` covers the close.
    for host in [&mut a, &mut b] {
        let out = host.command(["status"], COMMAND_TIMEOUT).stdout;
        assert!(out.lines().any(|l| l.starts_with("cluster:")), "{out}");
    }
}
