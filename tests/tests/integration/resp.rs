//! The `resp` plugin, a Redis-compatible store, driven by the real clients: redis-cli,
//! redis-benchmark (Debian's `redis-tools`) and redis-py (PyPI's `redis`), plus raw sockets for
//! pipelining, expiry and bad input.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use host_tests::{assert_contains, assert_not_contains, poll_until, Client, Host};

/// Runs a client program to completion (bounded: the programs get a timeout of their own).
fn run(program: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("60")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("could not run {program} (redis-tools and python3-redis are needed): {e}"))
}

/// `redis-cli -p PORT ARGS…`: its stdout (it prints one line per reply, raw when not a tty).
/// Error replies come out as their text and an empty line.
fn cli(port: u16, args: &[&str]) -> String {
    let port = port.to_string();
    let mut all = vec!["-p", &port];
    all.extend_from_slice(args);
    let out = run("redis-cli", &all);
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `redis-cli -p PORT` reading `script` (one command a line) on stdin: one connection runs them
/// all, in order. Its stdout.
fn cli_script(port: u16, script: &str) -> String {
    let mut child = Command::new("timeout")
        .args(["60", "redis-cli", "-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not run redis-cli (redis-tools is needed): {e}"));
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "redis-cli < {script:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One reply of the simple kinds (status, error, integer, bulk string), as text.
fn reply(c: &mut Client) -> String {
    let mut r = line(c);
    if r.starts_with('$') && r != "$-1\r\n" {
        r.push_str(&line(c));
    }
    r
}

fn line(c: &mut Client) -> String {
    let l = c.read_line().unwrap_or_else(|e| panic!("no reply line: {e}"));
    String::from_utf8_lossy(&l).into_owned()
}

#[test]
fn redis_cli_gets_redis_answers() {
    let host = Host::start("resp", &["--count", "1"]);
    let port = host.port();
    let cases: &[(&[&str], &str)] = &[
        (&["ping"], "PONG\n"),
        (&["set", "a", "1"], "OK\n"),
        (&["get", "a"], "1\n"),
        (&["get", "missing"], "\n"),
        (&["incr", "a"], "2\n"),
        (&["incrby", "a", "x"], "ERR value is not an integer or out of range\n\n"),
        (&["mset", "k1", "v1", "k2", "v2"], "OK\n"),
        (&["mget", "k1", "nope", "k2"], "v1\n\nv2\n"),
        (&["set", "a", "9", "xx", "get"], "2\n"),
        (&["set", "a", "9", "nx", "xx"], "ERR syntax error\n\n"),
        (&["append", "k1", "!"], "3\n"),
        (&["strlen", "k1"], "3\n"),
        (&["exists", "k1", "k2", "nope"], "2\n"),
        (&["del", "k2", "nope"], "1\n"),
        (&["expire", "k1", "100"], "1\n"),
        (&["ttl", "k1"], "100\n"),
        (&["persist", "k1"], "1\n"),
        (&["ttl", "k1"], "-1\n"),
        (&["ttl", "nope"], "-2\n"),
        (&["keys", "k*"], "k1\n"),
        (&["dbsize"], "2\n"),
        (&["select", "0"], "OK\n"),
        (&["select", "1"], "ERR DB index is out of range\n\n"),
        (&["get"], "ERR wrong number of arguments for 'get' command\n\n"),
        (&["foo", "a", "b"], "ERR unknown command 'foo', with args beginning with: 'a' 'b' \n\n"),
        (&["config", "get", "appendonly"], "appendonly\nno\n"),
        (&["-3", "get", "missing"], "\n"),
        (&["flushall"], "OK\n"),
        (&["dbsize"], "0\n"),
    ];
    for (args, want) in cases {
        assert_eq!(cli(port, args), *want, "redis-cli {args:?}");
    }
    assert_contains!(cli(port, &["info"]), "redis_version:7.0.0");
    assert_contains!(cli(port, &["-3", "hello", "3"]), "\nproto 3\n");
}

const REDIS_PY: &str = r#"
import sys, redis
port = int(sys.argv[1])
for proto in (2, 3):
    r = redis.Redis(host="127.0.0.1", port=port, protocol=proto, decode_responses=True, socket_timeout=10)
    r.flushall()
    assert r.ping() is True
    assert r.set("a", "1") is True and r.get("a") == "1" and r.get("nope") is None
    assert r.incr("n") == 1 and r.incrby("n", 5) == 6 and r.decr("n") == 5
    assert r.mset({"x": "1", "y": "2"}) is True
    assert r.mget("x", "y", "z") == ["1", "2", None]
    assert r.set("a", "2", nx=True) is None
    assert r.set("a", "3", xx=True, get=True) == "1"
    assert r.set("e", "v", px=100000) is True and 0 < r.pttl("e") <= 100000
    assert sorted(r.keys("*")) == ["a", "e", "n", "x", "y"]
    assert sorted(r.scan_iter(match="*", count=2)) == ["a", "e", "n", "x", "y"]
    assert r.dbsize() == 5 and r.delete("x", "y", "zz") == 2 and r.exists("a", "e") == 2
    assert r.append("a", "bc") == 3 and r.strlen("a") == 3
    assert r.expire("a", 100) is True and r.ttl("a") == 100 and r.persist("a") is True
    assert r.info()["redis_version"] == "7.0.0"
    assert r.config_get("appendonly") == {"appendonly": "no"}
    r.client_setname("py%d" % proto)
    assert r.client_getname() == "py%d" % proto
    try:
        r.execute_command("FOO", "a")
        raise SystemExit("FOO did not fail")
    except redis.ResponseError as e:
        assert str(e) == "unknown command 'FOO', with args beginning with: 'a' ", str(e)
    # The default pipeline is a transaction: MULTI, the commands, EXEC.
    pipe = r.pipeline()
    pipe.set("t", 1).incr("t").get("t")
    assert pipe.execute() == [True, 2, "2"]
    # WATCH, then a write by another connection: EXEC fails, redis-py raises WatchError.
    with r.pipeline() as pipe:
        pipe.watch("t")
        r2 = redis.Redis(host="127.0.0.1", port=port, protocol=proto, decode_responses=True, socket_timeout=10)
        r2.set("t", 10)
        pipe.multi()
        pipe.incr("t")
        try:
            pipe.execute()
            raise SystemExit("EXEC ran although a watched key changed")
        except redis.WatchError:
            pass
    # The optimistic-locking loop redis-py documents.
    def bump(pipe):
        value = int(pipe.get("t"))
        pipe.multi()
        pipe.set("t", value + 1)
    assert r.transaction(bump, "t") == [True] and r.get("t") == "11"
    # An error while queueing aborts the whole transaction.
    pipe = r.pipeline()
    pipe.set("t", 0).execute_command("NOSUCH")
    try:
        pipe.execute()
        raise SystemExit("EXEC ran after a queueing error")
    except redis.ResponseError as e:
        assert "EXECABORT" in str(e) or "unknown command" in str(e), str(e)
    assert r.get("t") == "11"
    for bad in (lambda: r.expire("t", 9223370399119966), lambda: r.set("t", 1, ex=10**16),
                lambda: r.pexpire("t", 9223372036854770000), lambda: r.setex("t", 10**16, 1)):
        try:
            bad()
            raise SystemExit("an overflowing TTL was accepted")
        except redis.ResponseError as e:
            assert str(e).startswith("invalid expire time in"), str(e)
    assert r.ttl("t") == -1
    info = r.info("all")
    assert info["loading"] == 0 and info["aof_enabled"] == 0 and info["used_memory"] > 0, info
    assert "used_memory_human" in info and "used_cpu_user" in info and "used_cpu_sys" in info, info
    pipe = r.pipeline(transaction=False)
    for i in range(100):
        pipe.set("p%d" % i, i)
        pipe.incr("p%d" % i)
    assert pipe.execute() == sum(([True, i + 1] for i in range(100)), [])
    conn = r.connection_pool.get_connection()
    assert str(conn.protocol) == str(proto), conn.protocol
    r.connection_pool.release(conn)
    print("resp%d ok" % proto)
"#;

#[test]
fn redis_py_works_over_resp2_and_resp3() {
    let host = Host::start("resp", &["--count", "1"]);
    let port = host.port().to_string();
    let out = run("python3", &["-c", REDIS_PY, &port]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "redis-py failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout, "resp2 ok\nresp3 ok\n");
}

// redis-benchmark 7 checks every reply and exits at the first error reply. Speed is not asserted.
#[test]
fn redis_benchmark_runs_without_errors() {
    let host = Host::start("resp", &["--count", "1"]);
    let port = host.port().to_string();
    for pipeline in ["1", "16"] {
        let out = run(
            "redis-benchmark",
            &["-p", &port, "-q", "-n", "2000", "-c", "8", "-P", pipeline, "-t", "ping,set,get,incr,mset"],
        );
        let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
        assert!(
            out.status.success(),
            "redis-benchmark -P {pipeline}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for test in ["PING_INLINE", "PING_MBULK", "SET", "GET", "INCR", "MSET (10 keys)"] {
            assert_contains!(text, format!("{test}: "), "-P {pipeline}");
        }
        assert_not_contains!(text.to_lowercase(), "error", "-P {pipeline}");
        assert_not_contains!(String::from_utf8_lossy(&out.stderr).to_lowercase(), "error", "-P {pipeline}");
    }
    // INCR ran 4000 times on one counter, in order.
    assert_eq!(cli(host.port(), &["get", "counter:__rand_int__"]), "4000\n");
}

#[test]
fn pipelined_and_split_commands_are_answered_in_order() {
    let host = Host::start("resp", &["--count", "1"]);
    let mut c = Client::connect(host.port());
    let mut batch = Vec::new();
    for i in 0..200 {
        batch.extend_from_slice(
            format!("*3\r\n$3\r\nSET\r\n$4\r\nk{i:03}\r\n${}\r\n{i}\r\n", i.to_string().len()).as_bytes(),
        );
        batch.extend_from_slice(b"INCR n\r\n");
    }
    c.send(&batch);
    for i in 0..200 {
        assert_eq!(line(&mut c), "+OK\r\n");
        assert_eq!(line(&mut c), format!(":{}\r\n", i + 1));
    }
    // One command a few bytes at a time, the next one's start in the same write.
    let cmd = b"*2\r\n$3\r\nGET\r\n$4\r\nk123\r\n*1\r\n$4\r\nPI";
    c.send_in_pieces(cmd, 3, Duration::from_millis(5));
    c.send(b"NG\r\n");
    assert_eq!(line(&mut c), "$3\r\n");
    assert_eq!(line(&mut c), "123\r\n");
    assert_eq!(line(&mut c), "+PONG\r\n");
    // QUIT answers, then closes.
    c.send(b"QUIT\r\n");
    assert_eq!(c.wait_closed(Duration::from_secs(5)).unwrap(), b"+OK\r\n");
}

#[test]
fn keys_expire_lazily_and_actively() {
    let host = Host::start("resp", &["--count", "1"]);
    let mut c = Client::connect(host.port());
    c.send(b"SET k v PX 50\r\n");
    assert_eq!(line(&mut c), "+OK\r\n");
    let gone = poll_until(Duration::from_secs(5), || {
        c.send(b"GET k\r\n");
        (reply(&mut c) == "$-1\r\n").then_some(())
    });
    assert!(gone.is_some(), "GET k still answers after 5 s of a 50 ms deadline");
    // Keys nobody touches again: DBSIZE counts them until active expiry removes them.
    let mut batch = Vec::new();
    for i in 0..500 {
        batch.extend_from_slice(format!("SET t{i} v PX 30\r\n").as_bytes());
    }
    batch.extend_from_slice(b"SET keep v\r\nDBSIZE\r\n");
    c.send(&batch);
    for _ in 0..501 {
        assert_eq!(line(&mut c), "+OK\r\n");
    }
    assert_eq!(line(&mut c), ":501\r\n");
    let swept = poll_until(Duration::from_secs(10), || {
        c.send(b"DBSIZE\r\n");
        (line(&mut c) == ":1\r\n").then_some(())
    });
    assert!(swept.is_some(), "active expiry did not remove the 500 expired keys");
}

// Input that can never be a command gets Redis' error, then the connection closes; the worker
// goes on serving others. Huge declared sizes are refused at once, never buffered.
#[test]
fn protocol_errors_answer_then_close() {
    let host = Host::start("resp", &["--count", "1"]);
    let cases: &[(&[u8], &str)] = &[
        (b"*2147483648\r\n", "-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*1\r\n$4294967296\r\n", "-ERR Protocol error: invalid bulk length\r\n"),
        (b"*1\r\nxyz\r\n", "-ERR Protocol error: expected '$', got 'x'\r\n"),
        (b"*x\r\n", "-ERR Protocol error: invalid multibulk length\r\n"),
        (b"ECHO \"unbalanced\r\n", "-ERR Protocol error: unbalanced quotes in request\r\n"),
        // A count whose arguments could not fit in the max package size (1 MiB).
        (b"*1000000\r\n", "-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000000\r\n", "-ERR Protocol error: invalid bulk length\r\n"),
    ];
    let mut other = Client::connect(host.port());
    for (bad, want) in cases {
        let mut c = Client::connect(host.port());
        // A good command first: its answer comes before the error.
        let mut bytes = b"PING\r\n".to_vec();
        bytes.extend_from_slice(bad);
        c.send(&bytes);
        let got = c.wait_closed(Duration::from_secs(5)).unwrap_or_else(|e| panic!("{bad:?}: {e}"));
        assert_eq!(String::from_utf8_lossy(&got), format!("+PONG\r\n{want}"), "{:?}", String::from_utf8_lossy(bad));
        other.send(b"PING\r\n");
        assert_eq!(line(&mut other), "+PONG\r\n");
    }
    // Random bytes without a line end: an inline command over Redis' 64 KiB limit.
    let mut c = Client::connect(host.port());
    let junk: Vec<u8> =
        host_tests::garbage(100 * 1024).into_iter().map(|b| if b == b'\n' || b == b'*' { b'x' } else { b }).collect();
    let _ = c.try_send(&junk);
    let got = c.wait_closed(Duration::from_secs(5)).expect("garbage closes the connection");
    assert_eq!(String::from_utf8_lossy(&got), "-ERR Protocol error: too big inline request\r\n");
    other.send(b"PING\r\n");
    assert_eq!(line(&mut other), "+PONG\r\n");
}

// MULTI/EXEC/WATCH as Redis 7 answers them, through redis-cli on one connection; a second
// connection's write between WATCH and EXEC makes EXEC answer nil.
#[test]
fn redis_cli_transactions_and_watch() {
    let host = Host::start("resp", &["--count", "1"]);
    let port = host.port();
    let out = cli_script(
        port,
        "set a 1\nmulti\nincr a\nget a\nexec\nexec\nmulti\nset a 5\nfoo\nexec\nget a\n\
         multi\nwatch a\ndiscard\ndiscard\n",
    );
    assert_eq!(
        out,
        "OK\nOK\nQUEUED\nQUEUED\n2\n2\nERR EXEC without MULTI\n\nOK\nQUEUED\n\
         ERR unknown command 'foo', with args beginning with: \n\n\
         EXECABORT Transaction discarded because of previous errors.\n\n2\n\
         OK\nERR WATCH inside MULTI is not allowed\n\nOK\nERR DISCARD without MULTI\n\n"
    );
    // WATCH on a raw connection, a write from redis-cli, then EXEC: a null array, nothing ran.
    let mut c = Client::connect(port);
    c.send(b"WATCH a\r\nMULTI\r\nINCR a\r\n");
    assert_eq!((line(&mut c), line(&mut c), line(&mut c)), ("+OK\r\n".into(), "+OK\r\n".into(), "+QUEUED\r\n".into()));
    assert_eq!(cli(port, &["set", "a", "100"]), "OK\n");
    c.send(b"EXEC\r\n");
    assert_eq!(line(&mut c), "*-1\r\n");
    assert_eq!(cli(port, &["get", "a"]), "100\n");
    // Without the foreign write, the same transaction runs.
    c.send(b"WATCH a\r\nMULTI\r\nINCR a\r\nEXEC\r\n");
    for want in ["+OK\r\n", "+OK\r\n", "+QUEUED\r\n", "*1\r\n", ":101\r\n"] {
        assert_eq!(line(&mut c), want);
    }
    // A connection that closes inside MULTI leaves nothing behind: its queue never runs.
    let mut gone = Client::connect(port);
    gone.send(b"MULTI\r\nSET a 0\r\n");
    assert_eq!((line(&mut gone), line(&mut gone)), ("+OK\r\n".into(), "+QUEUED\r\n".into()));
    drop(gone);
    c.send(b"GET a\r\n");
    assert_eq!(reply(&mut c), "$3\r\n101\r\n");
}

// TTLs that overflow once made milliseconds and added to the clock are refused with Redis 7's
// error, and the key keeps no deadline; INFO has the sections monitoring clients read.
#[test]
fn overflowing_ttls_are_refused_and_info_has_memory_cpu_persistence() {
    let host = Host::start("resp", &["--count", "1"]);
    let port = host.port();
    assert_eq!(cli(port, &["set", "k", "v"]), "OK\n");
    let cases: &[(&[&str], &str)] = &[
        (&["expire", "k", "9223370399119966"], "ERR invalid expire time in 'expire' command\n\n"),
        (&["expire", "k", "-9223372036854776"], "ERR invalid expire time in 'expire' command\n\n"),
        (&["pexpire", "k", "9223372036854770000"], "ERR invalid expire time in 'pexpire' command\n\n"),
        (&["set", "k", "v", "ex", "10000000000000000"], "ERR invalid expire time in 'set' command\n\n"),
        (&["set", "k", "v", "px", "9223372036854770000"], "ERR invalid expire time in 'set' command\n\n"),
        (&["setex", "k", "9223372036854776", "v"], "ERR invalid expire time in 'setex' command\n\n"),
        (&["getex", "k", "ex", "10000000000000000"], "ERR invalid expire time in 'getex' command\n\n"),
        (&["ttl", "k"], "-1\n"),
        (&["pexpireat", "k", "9223372036854770000"], "1\n"),
        (&["pexpiretime", "k"], "9223372036854770000\n"),
    ];
    for (args, want) in cases {
        assert_eq!(cli(port, args), *want, "redis-cli {args:?}");
    }
    let info = cli(port, &["info"]);
    for field in ["used_memory:", "used_memory_human:", "used_cpu_sys:", "used_cpu_user:", "loading:0", "aof_enabled:0"]
    {
        assert_contains!(info, field);
    }
    assert_eq!(cli(port, &["function", "flush"]), "OK\n");
}

/// Pub/sub across the workers of a host (and across hosts): raw RESP2 and RESP3 subscribers
/// spread until both workers have some (each tells its worker's pid by `INFO server` first),
/// redis-py subscribers of both protocols, and `redis-cli SUBSCRIBE`; one `PUBLISH` reaches them
/// all, framed for each. `sys.argv`: the subscribers' port, the publisher's port.
const PUBSUB_PY: &str = r#"
import socket, subprocess, sys, time, redis
sub_port, pub_port = int(sys.argv[1]), int(sys.argv[2])
def raw(resp3):
    s = socket.create_connection(("127.0.0.1", sub_port), timeout=10)
    if resp3:
        s.sendall(b"HELLO 3\r\n")
        read_reply(s)
    s.sendall(b"INFO server\r\n")
    info = read_reply(s)
    pid = [l for l in info.split(b"\r\n") if l.startswith(b"process_id:")][0]
    s.sendall(b"SUBSCRIBE news other\r\n")
    return s, pid
def read_reply(s):
    data = b""
    while True:
        data += s.recv(65536)
        # Good enough for these replies: a map (HELLO) or a bulk (INFO) ends with CRLF and
        # nothing else follows until the next command.
        if data.endswith(b"\r\n") and (not data.startswith(b"$") and not data.startswith(b"=") or len(data) > int(data[1:data.index(b"\r\n")]) ):
            time.sleep(0.05)
            return data
def expect(s, want):
    got = b""
    while len(got) < len(want):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got == want
confirm = lambda k, ch, n, p: (b">3" if p == 3 else b"*3") + b"\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n:%d\r\n" % (len(k), k, len(ch), ch, n)
message = lambda ch, m, p: (b">3" if p == 3 else b"*3") + b"\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(ch), ch, len(m), m)
subs, pids = [], set()
while len(subs) < 4 or len(pids) < 2:
    assert len(subs) < 100, "100 connections did not land on both workers"
    proto = 2 + len(subs) % 2
    s, pid = raw(proto == 3)
    ok = expect(s, confirm(b"subscribe", b"news", 1, proto) + confirm(b"subscribe", b"other", 2, proto))
    assert ok, "no subscribe confirmation"
    subs.append((s, proto))
    pids.add(pid)
py = []
for proto in (2, 3):
    p = redis.Redis(host="127.0.0.1", port=sub_port, protocol=proto, socket_timeout=10).pubsub()
    p.subscribe("news")
    assert p.get_message(timeout=5)["type"] == "subscribe"
    py.append(p)
cli = subprocess.Popen(["redis-cli", "-p", str(sub_port), "SUBSCRIBE", "news"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
assert [cli.stdout.readline() for _ in range(3)] == [b"subscribe\n", b"news\n", b"1\n"]
publisher = redis.Redis(host="127.0.0.1", port=pub_port, socket_timeout=10)
# Across hosts the subscription reaches the broker shortly after SUBSCRIBE: publish a probe
# until the redis-cli subscriber saw one.
deadline = time.time() + 20
if sub_port != pub_port:
    import select
    while not select.select([cli.stdout], [], [], 0.1)[0]:
        assert time.time() < deadline, "the subscription never reached the other host"
        publisher.publish("news", "probe")
    assert [cli.stdout.readline() for _ in range(3)] == [b"message\n", b"news\n", b"probe\n"]
    time.sleep(0.5)
    for s, _ in subs:
        s.setblocking(False)
        try:
            while s.recv(65536):
                pass
        except BlockingIOError:
            pass
        s.setblocking(True)
    for p in py:
        while p.get_message(timeout=0.2):
            pass
publisher.publish("news", "hello\r\nworld")
print("raw", all(expect(s, message(b"news", b"hello\r\nworld", p)) for s, p in subs))
got = [p.get_message(timeout=5) for p in py]
print("redis-py", [(m["type"], m["channel"], m["data"]) for m in got])
print("redis-cli", [cli.stdout.readline() for _ in range(3)])
cli.kill()
cli.wait()
s, proto = subs[0]
s.sendall(b"GET k\r\nPING\r\nUNSUBSCRIBE news\r\n")
time.sleep(0.3)
print(s.recv(65536).decode().replace("\r\n", "|"))
"#;

#[test]
fn subscribers_on_every_worker_get_a_publish_framed_for_their_protocol() {
    let mut host = Host::start("resp", &["--count", "2"]);
    let port = host.port().to_string();
    let out = run("python3", &["-c", PUBSUB_PY, &port, &port]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the script failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        stdout,
        "raw True\n\
         redis-py [('message', b'news', b'hello\\r\\nworld'), ('message', b'news', b'hello\\r\\nworld')]\n\
         redis-cli [b'message\\n', b'news\\n', b'hello\\r\\n']\n\
         -ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context|\
         *2|$4|pong|$0||*3|$11|unsubscribe|$4|news|:1|\n"
    );
    let status = host.command(["status"], Duration::from_secs(30)).stdout;
    let topics = status.lines().find(|l| l.starts_with("topics:")).unwrap_or_default();
    assert!(topics.contains("refused 0") && !topics.contains("received 0,"), "{status}");
}

#[test]
fn a_publish_on_one_host_reaches_subscribers_on_another_through_redis() {
    let broker = host_tests::broker::Broker::start(host_tests::broker::BrokerKind::Redis);
    let url = broker.url();
    let start = || {
        let host = Host::start("resp", &["--count", "2", "--cluster", &url]);
        host.log().wait_for_nth("connected to the cluster's broker", 2, host_tests::READY_TIMEOUT).expect("connected");
        host
    };
    let (a, b) = (start(), start());
    let out = run("python3", &["-c", PUBSUB_PY, &a.port().to_string(), &b.port().to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the script failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.starts_with("raw True\nredis-py [('message', b'news', b'hello\\r\\nworld'), ('message'"),
        "{stdout}"
    );
}

/// redis-py pattern subscribers (`psubscribe`, RESP2 with a channel too and RESP3) on a host of
/// two workers, and publishers on both workers (each tells its worker by `INFO server`). Each
/// subscriber prints the channel messages and the `pmessage`s it got, in order, up to a last
/// publish on `news.end`; each publisher prints whether `PUBLISH` counted its own worker's
/// receivers (channel and pattern subscriptions, none of the other worker's).
const PSUBSCRIBE_PY: &str = r#"
import sys, redis
port = int(sys.argv[1])
def conn(proto):
    r = redis.Redis(port=port, protocol=proto, socket_timeout=10)
    return r, r.info("server")["process_id"]
pubs = {}
for _ in range(100):
    r, pid = conn(2)
    pubs.setdefault(pid, r)
    if len(pubs) == 2:
        break
assert len(pubs) == 2, "100 connections did not land on both workers"
# Which subscriptions a message on each channel reaches: (channel, pattern) pairs per subscriber.
subs = []
for proto, patterns, channels in [(2, ["news.*"], ["news.a"]), (3, ["n?ws.[a-c]*", "lit\\*"], [])]:
    r, pid = conn(proto)
    p = r.pubsub()
    if channels:
        p.subscribe(*channels)
    p.psubscribe(*patterns)
    kinds = [p.get_message(timeout=5)["type"] for _ in channels + patterns]
    assert kinds == ["subscribe"] * len(channels) + ["psubscribe"] * len(patterns), kinds
    # (`r` kept: its pool closes the connections it handed out when it goes.)
    subs.append((p, pid, r))
reach = {"news.a": [2, 1], "news.d": [1, 0], "nows.b": [0, 1], "lit*": [0, 1], "litx": [0, 0], "other": [0, 0]}
counts = []
tags = dict(zip(sorted(pubs), "ab"))
for i, channel in enumerate(["news.a", "news.d", "nows.b", "lit*", "litx", "other", "news.a"]):
    for pid, r in sorted(pubs.items()):
        n = r.publish(channel, f"{i}{tags[pid]}")
        want = sum(reach[channel][k] for k, (_, sub_pid, _) in enumerate(subs) if sub_pid == pid)
        counts.append(n == want)
print("counts", all(counts), flush=True)
# The last messages: news.end reaches the first subscriber's pattern, nows.bend the second's.
for pid, r in sorted(pubs.items()):
    r.publish("news.end", f"end{tags[pid]}")
    r.publish("nows.bend", f"end{tags[pid]}")
# Each publisher's messages keep their order; the two publishers' may interleave (they are on
# two workers).
for k, (p, _, _) in enumerate(subs):
    seen, ends = [], 0
    while ends < 2:
        m = p.get_message(timeout=10)
        assert m is not None, f"subscriber {k} heard nothing for 10 s after {seen}"
        seen.append((m["type"], (m.get("pattern") or b"").decode(), m["channel"].decode(), m["data"].decode()))
        ends += m["data"].startswith(b"end")
    for tag in "ab":
        mine = [s for s in seen if s[3].endswith(tag)]
        messages = " ".join(f"{c}={d[:-1]}" for kind, _, c, d in mine if kind == "message")
        pmessages = " ".join(f"{p}:{c}={d[:-1]}" for kind, p, c, d in mine if kind == "pmessage")
        print(k, tag, messages, "|", pmessages, flush=True)
for p, _, _ in subs:
    p.punsubscribe()
    assert p.get_message(timeout=5)["type"] == "punsubscribe"
"#;

// PSUBSCRIBE/PUNSUBSCRIBE with Redis' glob patterns across two workers: each subscriber gets a
// `pmessage` for each message on a channel its pattern matches, framed for its protocol, once,
// in publish order (and the channel's `message` too when it also subscribed to the channel);
// `PUBLISH` answers the receivers of its own worker.
#[test]
fn pattern_subscribers_get_pmessages_from_every_worker() {
    let host = Host::start("resp", &["--count", "2"]);
    let out = run("python3", &["-c", PSUBSCRIBE_PY, &host.port().to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the script failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let first = "news.a=0 news.a=6 | news.*:news.a=0 news.*:news.d=1 news.*:news.a=6 news.*:news.end=end";
    let second =
        "| n?ws.[a-c]*:news.a=0 n?ws.[a-c]*:nows.b=2 lit\\*:lit*=3 n?ws.[a-c]*:news.a=6 n?ws.[a-c]*:nows.bend=end";
    assert_eq!(stdout, format!("counts True\n0 a {first}\n0 b {first}\n1 a  {second}\n1 b  {second}\n"));
}
