//! Command semantics, reply bytes compared with what redis-server 7.0 sends.

use super::*;
use crate::proto::Args;

/// The Unix time (ms) of the tests' worker clock at 1000.
const UNIX_AT_START: i64 = 1_700_000_000_000;

struct T {
    server: Server,
    session: Session,
    now: u64,
}

impl T {
    fn new() -> T {
        let mut server = Server::new(ServerInfo { max_bulk: 1 << 20, ..ServerInfo::default() });
        server.unix_offset = Some(UNIX_AT_START - 1000);
        let session = server.new_session(None, None);
        T { server, session, now: 1000 }
    }

    /// Runs an inline command, returns the reply as text.
    fn run(&mut self, line: &str) -> String {
        let mut session = std::mem::take(&mut self.session);
        let reply = self.run_as(&mut session, line);
        self.session = session;
        reply
    }

    /// Runs an inline command on another connection's session.
    fn run_as(&mut self, session: &mut Session, line: &str) -> String {
        let msg = format!("{line}\r\n");
        let mut args = Args::default();
        args.parse(msg.as_bytes()).unwrap();
        let mut out = Vec::new();
        execute(&mut self.server, session, args.view(msg.as_bytes()), self.now, &mut out);
        String::from_utf8(out).unwrap()
    }
}

#[track_caller]
fn check(t: &mut T, cases: &[(&str, &str)]) {
    for (cmd, want) in cases {
        assert_eq!(t.run(cmd), *want, "{cmd}");
    }
}

#[test]
fn strings() {
    let mut t = T::new();
    check(
        &mut t,
        &[
            ("PING", "+PONG\r\n"),
            ("ping hi", "$2\r\nhi\r\n"),
            ("ping a b", "-ERR wrong number of arguments for 'ping' command\r\n"),
            ("ECHO \"a b\"", "$3\r\na b\r\n"),
            ("GET a", "$-1\r\n"),
            ("SET a 1", "+OK\r\n"),
            ("get a", "$1\r\n1\r\n"),
            ("SET a 2 NX", "$-1\r\n"),
            ("SET a 2 XX GET", "$1\r\n1\r\n"),
            ("SET b 2 XX", "$-1\r\n"),
            ("SET b 3 NX GET", "$-1\r\n"),
            ("GET b", "$1\r\n3\r\n"),
            ("SET a 1 NX XX", "-ERR syntax error\r\n"),
            ("SET a 1 EX", "-ERR syntax error\r\n"),
            ("SET a 1 EX 1 PX 1", "-ERR syntax error\r\n"),
            ("SET a 1 EX x", "-ERR value is not an integer or out of range\r\n"),
            ("SET a 1 EX 0", "-ERR invalid expire time in 'set' command\r\n"),
            ("SET a 1 PX 9223372036854775807", "-ERR invalid expire time in 'set' command\r\n"),
            ("MSET x 1 y 2", "+OK\r\n"),
            ("MSET x 1 y", "-ERR wrong number of arguments for 'mset' command\r\n"),
            ("MGET x nope y", "*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n"),
            ("MSETNX x 5 z 6", ":0\r\n"),
            ("MSETNX z 6 w 7", ":1\r\n"),
            ("EXISTS x x nope", ":2\r\n"),
            ("DEL x y nope", ":2\r\n"),
            ("APPEND s ab", ":2\r\n"),
            ("APPEND s cd", ":4\r\n"),
            ("STRLEN s", ":4\r\n"),
            ("STRLEN nope", ":0\r\n"),
            ("GETSET s new", "$4\r\nabcd\r\n"),
            ("GETDEL s", "$3\r\nnew\r\n"),
            ("GETDEL s", "$-1\r\n"),
            ("SETNX s 1", ":1\r\n"),
            ("SETNX s 2", ":0\r\n"),
            ("TYPE s", "+string\r\n"),
            ("TYPE nope", "+none\r\n"),
            ("DBSIZE", ":5\r\n"),
            ("FLUSHALL", "+OK\r\n"),
            ("DBSIZE", ":0\r\n"),
        ],
    );
}

#[test]
fn counters() {
    let mut t = T::new();
    check(
        &mut t,
        &[
            ("INCR n", ":1\r\n"),
            ("INCRBY n 10", ":11\r\n"),
            ("DECR n", ":10\r\n"),
            ("DECRBY n -5", ":15\r\n"),
            ("GET n", "$2\r\n15\r\n"),
            ("INCRBY n x", "-ERR value is not an integer or out of range\r\n"),
            ("SET s abc", "+OK\r\n"),
            ("INCR s", "-ERR value is not an integer or out of range\r\n"),
            ("SET s \" 1\"", "+OK\r\n"),
            ("INCR s", "-ERR value is not an integer or out of range\r\n"),
            ("SET m 9223372036854775807", "+OK\r\n"),
            ("INCR m", "-ERR increment or decrement would overflow\r\n"),
            ("DECRBY m -9223372036854775808", "-ERR decrement would overflow\r\n"),
            ("INCR", "-ERR wrong number of arguments for 'incr' command\r\n"),
        ],
    );
}

#[test]
fn expiry() {
    let mut t = T::new();
    check(
        &mut t,
        &[
            ("SET k v PX 1500", "+OK\r\n"),
            ("PTTL k", ":1500\r\n"),
            ("TTL k", ":2\r\n"),
            ("TTL nope", ":-2\r\n"),
            ("SET p v", "+OK\r\n"),
            ("TTL p", ":-1\r\n"),
            ("EXPIRE p 10 XX", ":0\r\n"),
            ("EXPIRE p 10 NX", ":1\r\n"),
            ("EXPIRE p 5 GT", ":0\r\n"),
            ("EXPIRE p 20 GT", ":1\r\n"),
            ("PEXPIRE p 100 LT", ":1\r\n"),
            ("PTTL p", ":100\r\n"),
            ("EXPIRE p 1 NX XX", "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n"),
            ("EXPIRE p 1 GT LT", "-ERR GT and LT options at the same time are not compatible\r\n"),
            ("EXPIRE p 1 FOO", "-ERR Unsupported option FOO\r\n"),
            ("EXPIRE p 9223372036854775807", "-ERR invalid expire time in 'expire' command\r\n"),
            ("EXPIRE nope 10", ":0\r\n"),
            ("PERSIST p", ":1\r\n"),
            ("PERSIST p", ":0\r\n"),
            ("TTL p", ":-1\r\n"),
            ("SET k2 v EX 100", "+OK\r\n"),
            ("SET k2 w KEEPTTL", "+OK\r\n"),
            ("TTL k2", ":100\r\n"),
            ("SET k2 w", "+OK\r\n"),
            ("TTL k2", ":-1\r\n"),
            ("SETEX e 0 v", "-ERR invalid expire time in 'setex' command\r\n"),
            ("PSETEX e 200 v", "+OK\r\n"),
            ("INCR cnt", ":1\r\n"),
            ("PEXPIRE cnt 300", ":1\r\n"),
            ("INCR cnt", ":2\r\n"),
            ("PTTL cnt", ":300\r\n"),
        ],
    );
    t.now += 1500;
    check(&mut t, &[("GET k", "$-1\r\n"), ("EXISTS e cnt", ":0\r\n"), ("PTTL k", ":-2\r\n")]);
    // A deadline in the past deletes the key at once.
    check(&mut t, &[("SET d v", "+OK\r\n"), ("EXPIRE d -1", ":1\r\n"), ("EXISTS d", ":0\r\n")]);
}

#[test]
fn keys_and_scan() {
    let mut t = T::new();
    for i in 0..25 {
        t.run(&format!("SET key:{i} v"));
    }
    t.run("SET other v");
    let keys = t.run("KEYS key:1*");
    assert!(keys.starts_with("*11\r\n"), "{keys}");
    assert_eq!(t.run("KEYS nothing*"), "*0\r\n");
    // SCAN until cursor 0 returns every key once (nothing changed in between).
    let mut cursor = "0".to_string();
    let mut seen = 0;
    loop {
        let reply = t.run(&format!("SCAN {cursor} MATCH key:* COUNT 4"));
        let lines: Vec<&str> = reply.split("\r\n").collect();
        assert_eq!(lines[0], "*2");
        cursor = lines[2].to_string();
        seen += lines.iter().filter(|l| l.starts_with("key:")).count();
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(seen, 25);
    check(
        &mut t,
        &[
            ("SCAN x", "-ERR invalid cursor\r\n"),
            ("SCAN 0 COUNT 0", "-ERR syntax error\r\n"),
            ("SCAN 0 COUNT x", "-ERR value is not an integer or out of range\r\n"),
            ("SCAN 0 MATCH", "-ERR syntax error\r\n"),
            ("SCAN 0 TYPE hash COUNT 100", "*2\r\n$1\r\n0\r\n*0\r\n"),
        ],
    );
}

#[test]
fn errors_use_redis_texts() {
    let mut t = T::new();
    check(
        &mut t,
        &[
            ("foo a b", "-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n"),
            ("foo", "-ERR unknown command 'foo', with args beginning with: \r\n"),
            ("GET", "-ERR wrong number of arguments for 'get' command\r\n"),
            ("get a b", "-ERR wrong number of arguments for 'get' command\r\n"),
            ("SELECT 0", "+OK\r\n"),
            ("SELECT 1", "-ERR DB index is out of range\r\n"),
            ("SELECT x", "-ERR value is not an integer or out of range\r\n"),
            ("CONFIG FOO", "-ERR unknown subcommand 'FOO'. Try CONFIG HELP.\r\n"),
            ("CONFIG GET", "-ERR wrong number of arguments for 'config|get' command\r\n"),
            ("CLIENT SETNAME", "-ERR wrong number of arguments for 'client|setname' command\r\n"),
        ],
    );
    // Long arguments are cut as Redis cuts them.
    let long = "x".repeat(200);
    let reply = t.run(&format!("nope {long} b"));
    assert_eq!(reply, format!("-ERR unknown command 'nope', with args beginning with: '{}' \r\n", "x".repeat(128)));
}

#[test]
fn hello_switches_the_protocol() {
    let mut t = T::new();
    let id = t.session.id;
    assert_eq!(
        t.run("HELLO 3"),
        format!(
            "%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n$5\r\nproto\r\n:3\r\n\
             $2\r\nid\r\n:{id}\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n\
             $7\r\nmodules\r\n*0\r\n"
        )
    );
    check(
        &mut t,
        &[
            ("GET nope", "_\r\n"),
            ("CONFIG GET appendonly", "%1\r\n$10\r\nappendonly\r\n$2\r\nno\r\n"),
            ("COMMAND DOCS", "%0\r\n"),
            ("CLIENT SETINFO LIB-NAME redis-py", "+OK\r\n"),
            ("CLIENT SETINFO lib-ver 5.0", "+OK\r\n"),
            ("CLIENT SETINFO lib-foo 1", "-ERR Unrecognized option 'lib-foo'\r\n"),
            ("CLIENT SETNAME me", "+OK\r\n"),
            ("CLIENT GETNAME", "$2\r\nme\r\n"),
            ("HELLO 4", "-NOPROTO unsupported protocol version\r\n"),
            ("HELLO x", "-ERR Protocol version is not an integer or out of range\r\n"),
            ("HELLO 3 AUTH bob pw", "-WRONGPASS invalid username-password pair or user is disabled.\r\n"),
        ],
    );
    let back = t.run("HELLO 2 AUTH default anything SETNAME again");
    assert!(back.starts_with("*14\r\n"), "{back}");
    check(
        &mut t,
        &[
            ("GET nope", "$-1\r\n"),
            ("CLIENT GETNAME", "$5\r\nagain\r\n"),
            ("CONFIG GET save appendonly", "*4\r\n$10\r\nappendonly\r\n$2\r\nno\r\n$4\r\nsave\r\n$0\r\n\r\n"),
            ("COMMAND DOCS", "*0\r\n"),
        ],
    );
}

#[test]
fn server_commands() {
    let mut t = T::new();
    t.run("SET a 1");
    let info = t.run("INFO");
    assert!(info.contains("redis_version:7.0.0\r\n"), "{info}");
    assert!(info.contains("db0:keys=1,expires=0,avg_ttl=0\r\n"), "{info}");
    let keyspace = t.run("INFO keyspace");
    assert!(!keyspace.contains("redis_version"), "{keyspace}");
    let count = t.run("COMMAND COUNT");
    assert_eq!(count, format!(":{}\r\n", COMMANDS.len()));
    let get = t.run("COMMAND INFO get nope");
    assert!(get.starts_with("*2\r\n*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n"), "{get}");
    assert!(get.ends_with("*-1\r\n"), "{get}");
    assert_eq!(t.run("QUIT"), "+OK\r\n");
    // An empty command gets no reply.
    assert_eq!(t.run(""), "");
}

#[test]
fn expire_times_that_overflow_are_refused_as_redis_does() {
    let mut t = T::new();
    t.run("SET foo bar");
    check(
        &mut t,
        &[
            // Redis 7's unit/expire.tcl: `when > LLONG_MAX / 1000`, then `when > LLONG_MAX - basetime`.
            ("EXPIRE foo 9223370399119966", "-ERR invalid expire time in 'expire' command\r\n"),
            ("EXPIRE foo 9223372036854776", "-ERR invalid expire time in 'expire' command\r\n"),
            ("EXPIRE foo 18446744073709561", "-ERR invalid expire time in 'expire' command\r\n"),
            ("EXPIRE foo -9223372036854776", "-ERR invalid expire time in 'expire' command\r\n"),
            ("PEXPIRE foo 9223372036854770000", "-ERR invalid expire time in 'pexpire' command\r\n"),
            ("TTL foo", ":-1\r\n"),
            ("SET foo bar EX 10000000000000000", "-ERR invalid expire time in 'set' command\r\n"),
            ("SET foo bar EX -9999999999999999", "-ERR invalid expire time in 'set' command\r\n"),
            ("SET foo bar PX 9223372036854775000", "-ERR invalid expire time in 'set' command\r\n"),
            ("SETEX foo 9223372036854776 v", "-ERR invalid expire time in 'setex' command\r\n"),
            ("PSETEX foo 9223372036854775000 v", "-ERR invalid expire time in 'psetex' command\r\n"),
            ("GETEX foo EX 10000000000000000", "-ERR invalid expire time in 'getex' command\r\n"),
            ("GETEX foo PX 0", "-ERR invalid expire time in 'getex' command\r\n"),
            ("TTL foo", ":-1\r\n"),
            // Absolute deadlines: a far one is kept, a past one deletes.
            ("PEXPIREAT foo 9223372036854770000", ":1\r\n"),
            ("PEXPIRETIME foo", ":9223372036854770000\r\n"),
            ("PEXPIREAT foo -9223372036854770000", ":1\r\n"),
            ("TTL foo", ":-2\r\n"),
        ],
    );
}

#[test]
fn absolute_deadlines_and_getex() {
    let mut t = T::new();
    let in_10s = (UNIX_AT_START + 10_000) / 1000;
    check(
        &mut t,
        &[
            (&format!("SET a v EXAT {in_10s}"), "+OK\r\n"),
            ("TTL a", ":10\r\n"),
            ("EXPIRETIME a", &format!(":{in_10s}\r\n")),
            (&format!("SET b v PXAT {}", UNIX_AT_START + 2500), "+OK\r\n"),
            ("PTTL b", ":2500\r\n"),
            ("EXPIREAT b 1", ":1\r\n"),
            ("EXISTS b", ":0\r\n"),
            ("EXPIRETIME nope", ":-2\r\n"),
            ("SET c v", "+OK\r\n"),
            ("PEXPIRETIME c", ":-1\r\n"),
            ("GETEX c EX 100", "$1\r\nv\r\n"),
            ("TTL c", ":100\r\n"),
            ("GETEX c PERSIST", "$1\r\nv\r\n"),
            ("TTL c", ":-1\r\n"),
            ("GETEX c", "$1\r\nv\r\n"),
            ("GETEX c EX 1 PERSIST", "-ERR syntax error\r\n"),
            ("GETEX nope EX 1", "$-1\r\n"),
            ("GETEX c PXAT 1", "$1\r\nv\r\n"),
            ("EXISTS c", ":0\r\n"),
        ],
    );
}

#[test]
fn multi_queues_then_exec_runs_all() {
    let mut t = T::new();
    check(
        &mut t,
        &[
            ("EXEC", "-ERR EXEC without MULTI\r\n"),
            ("DISCARD", "-ERR DISCARD without MULTI\r\n"),
            ("MULTI", "+OK\r\n"),
            ("MULTI", "-ERR MULTI calls can not be nested\r\n"),
            ("SET a 1", "+QUEUED\r\n"),
            ("INCR a", "+QUEUED\r\n"),
            ("INCR s", "+QUEUED\r\n"),
            ("WATCH a", "-ERR WATCH inside MULTI is not allowed\r\n"),
            ("GET a", "+QUEUED\r\n"),
            ("EXEC", "*4\r\n+OK\r\n:2\r\n:1\r\n$1\r\n2\r\n"),
            ("EXEC", "-ERR EXEC without MULTI\r\n"),
            // A runtime error is that command's reply; the others run.
            ("SET s x", "+OK\r\n"),
            ("MULTI", "+OK\r\n"),
            ("INCR s", "+QUEUED\r\n"),
            ("INCR a", "+QUEUED\r\n"),
            ("EXEC", "*2\r\n-ERR value is not an integer or out of range\r\n:3\r\n"),
            ("MULTI", "+OK\r\n"),
            ("EXEC", "*0\r\n"),
            ("MULTI", "+OK\r\n"),
            ("SET a 9", "+QUEUED\r\n"),
            ("DISCARD", "+OK\r\n"),
            ("GET a", "$1\r\n3\r\n"),
        ],
    );
}

#[test]
fn errors_while_queueing_abort_exec() {
    let mut t = T::new();
    for bad in ["NOSUCHCOMMAND x", "GET"] {
        check(
            &mut t,
            &[
                ("MULTI", "+OK\r\n"),
                ("SET a 1", "+QUEUED\r\n"),
                (
                    bad,
                    if bad == "GET" {
                        "-ERR wrong number of arguments for 'get' command\r\n"
                    } else {
                        "-ERR unknown command 'NOSUCHCOMMAND', with args beginning with: 'x' \r\n"
                    },
                ),
                ("EXEC", "-EXECABORT Transaction discarded because of previous errors.\r\n"),
                ("EXISTS a", ":0\r\n"),
            ],
        );
    }
}

#[test]
fn exec_fails_when_a_watched_key_changed() {
    let mut t = T::new();
    let mut other = t.server.new_session(None, None);
    check(&mut t, &[("SET x 1", "+OK\r\n"), ("WATCH x y", "+OK\r\n"), ("MULTI", "+OK\r\n"), ("INCR x", "+QUEUED\r\n")]);
    assert_eq!(t.run_as(&mut other, "SET x 5"), "+OK\r\n");
    check(&mut t, &[("EXEC", "*-1\r\n"), ("GET x", "$1\r\n5\r\n")]);
    // EXEC ended the watch: the next transaction runs.
    check(&mut t, &[("MULTI", "+OK\r\n"), ("INCR x", "+QUEUED\r\n"), ("EXEC", "*1\r\n:6\r\n")]);
    // A key created, deleted or expired after WATCH is a change; reads and other keys are not.
    for change in ["SET y 1", "DEL x", "FLUSHALL"] {
        t.run("SET x 1");
        check(&mut t, &[("WATCH x y", "+OK\r\n")]);
        assert_eq!(t.run_as(&mut other, "GET x").len(), 7);
        t.run_as(&mut other, "SET unrelated 1");
        t.run_as(&mut other, change);
        check(&mut t, &[("MULTI", "+OK\r\n"), ("PING", "+QUEUED\r\n"), ("EXEC", "*-1\r\n")]);
    }
    t.run("SET x 1");
    check(&mut t, &[("WATCH x", "+OK\r\n")]);
    t.run_as(&mut other, "GET x");
    check(&mut t, &[("MULTI", "+OK\r\n"), ("PING", "+QUEUED\r\n"), ("EXEC", "*1\r\n+PONG\r\n")]);
    t.run("SET x 1 PX 100");
    check(&mut t, &[("WATCH x", "+OK\r\n"), ("MULTI", "+OK\r\n"), ("PING", "+QUEUED\r\n")]);
    t.now += 100;
    check(&mut t, &[("EXEC", "*-1\r\n")]);
    // UNWATCH and DISCARD end the watch.
    t.run("SET x 1");
    check(&mut t, &[("WATCH x", "+OK\r\n"), ("UNWATCH", "+OK\r\n")]);
    t.run_as(&mut other, "SET x 2");
    check(&mut t, &[("MULTI", "+OK\r\n"), ("PING", "+QUEUED\r\n"), ("EXEC", "*1\r\n+PONG\r\n")]);
    // RESP3 answers the failed EXEC with a null.
    t.run("HELLO 3");
    check(&mut t, &[("WATCH x", "+OK\r\n"), ("MULTI", "+OK\r\n")]);
    t.run_as(&mut other, "SET x 3");
    check(&mut t, &[("EXEC", "_\r\n")]);
}

#[test]
fn a_closed_connection_drops_its_watches() {
    let mut t = T::new();
    let mut gone = t.server.new_session(None, None);
    assert_eq!(t.run_as(&mut gone, "WATCH k"), "+OK\r\n");
    assert_eq!(t.run_as(&mut gone, "MULTI"), "+OK\r\n");
    t.server.end_session(&mut gone);
    assert!(gone.multi.is_none() && gone.watched.is_empty());
    // Nobody watches `k` any more: writing it tracks nothing.
    t.run("SET k 1");
    assert!(!t.server.store.changed_since(b"k", 0));
}

#[test]
fn info_has_the_sections_clients_read() {
    let mut t = T::new();
    t.run("SET a 1");
    t.run("GET");
    let info = t.run("INFO");
    for field in [
        "# Memory\r\nused_memory:",
        "used_memory_human:",
        "# Persistence\r\nloading:0\r\n",
        "rdb_bgsave_in_progress:0\r\n",
        "aof_enabled:0\r\n",
        "# CPU\r\nused_cpu_sys:",
        "used_cpu_user:",
        "used_cpu_user_children:",
        "role:master\r\n",
        "master_repl_offset:0\r\n",
    ] {
        assert!(info.contains(field), "{field} missing from {info}");
    }
    assert!(!info.contains("cmdstat_"), "{info}");
    let all = t.run("INFO all");
    assert!(
        all.contains("cmdstat_set:calls=1,")
            && all.contains("cmdstat_get:calls=0,usec=0,usec_per_call=0.00,rejected_calls=1"),
        "{all}"
    );
    let cpu = t.run("INFO cpu");
    assert!(cpu.contains("used_cpu_user:") && !cpu.contains("used_memory"), "{cpu}");
    let both = t.run("INFO cpu default");
    assert_eq!(both.matches("used_cpu_user_children").count(), 1, "{both}");
    assert_eq!(t.run("FUNCTION FLUSH"), "+OK\r\n");
    assert_eq!(t.run("FUNCTION FLUSH ASYNC"), "+OK\r\n");
    assert_eq!(t.run("FUNCTION LIST"), "*0\r\n");
}
