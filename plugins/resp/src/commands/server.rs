//! Connection and server commands: PING, SELECT, HELLO, AUTH, CLIENT, CONFIG, COMMAND, INFO.

use std::fmt::Write as _;

use super::{unknown_subcommand, wrong_arity, Cx, COMMANDS, ERR_NOT_INTEGER, ERR_SYNTAX};
use crate::glob::glob_match;
use crate::proto::{parse_i64, ArgsView};

/// The Redis version this server answers for (`HELLO`, `INFO`): clients pick their code paths by
/// it, and what is implemented follows Redis 7.0.
pub const REDIS_VERSION: &str = "7.0.0";

fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

pub fn ping(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    match a.len() {
        1 => cx.r.simple(b"PONG"),
        2 => cx.r.bulk(a.get(1)),
        _ => wrong_arity(&mut cx.r, "ping"),
    }
}

/// Only database 0 exists: each worker has one keyspace.
pub fn select(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    match parse_i64(a.get(1)) {
        None => cx.r.error(ERR_NOT_INTEGER),
        Some(0) => cx.r.ok(),
        Some(_) => cx.r.error("ERR DB index is out of range"),
    }
}

/// The only user is `default`, without a password (Redis' default): any password is accepted.
fn check_user(cx: &mut Cx<'_>, user: &[u8]) -> bool {
    if is(user, "default") {
        return true;
    }
    cx.r.error("WRONGPASS invalid username-password pair or user is disabled.");
    false
}

pub fn auth(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    match a.len() {
        2 => cx.r.error(
            "ERR AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?",
        ),
        3 => {
            if check_user(cx, a.get(1)) {
                cx.r.ok();
            }
        }
        _ => cx.r.error(ERR_SYNTAX),
    }
}

/// `HELLO [protover [AUTH username password] [SETNAME clientname]]`
pub fn hello(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    let mut version = if cx.session.resp3 { 3 } else { 2 };
    if a.len() >= 2 {
        match parse_i64(a.get(1)) {
            None => return cx.r.error("ERR Protocol version is not an integer or out of range"),
            Some(v @ (2 | 3)) => version = v,
            Some(_) => return cx.r.error("NOPROTO unsupported protocol version"),
        }
    }
    let mut name = None;
    let mut j = 2;
    while j < a.len() {
        let more = a.len() - 1 - j;
        let opt = a.get(j);
        if is(opt, "auth") && more >= 2 {
            if !check_user(cx, a.get(j + 1)) {
                return;
            }
            j += 3;
        } else if is(opt, "setname") && more >= 1 {
            name = Some(a.get(j + 1));
            j += 2;
        } else {
            return cx.r.error(&format!("ERR Syntax error in HELLO option '{}'", String::from_utf8_lossy(opt)));
        }
    }
    if let Some(name) = name {
        if !valid_name(name) {
            return cx.r.error("ERR Client names cannot contain spaces, newlines or special characters.");
        }
        cx.session.name = name.to_vec();
    }
    cx.session.resp3 = version == 3;
    cx.r.set_resp3(cx.session.resp3);
    cx.r.map(7);
    cx.r.bulk(b"server");
    cx.r.bulk(b"redis");
    cx.r.bulk(b"version");
    cx.r.bulk(REDIS_VERSION.as_bytes());
    cx.r.bulk(b"proto");
    cx.r.int(version);
    cx.r.bulk(b"id");
    cx.r.int(cx.session.id as i64);
    cx.r.bulk(b"mode");
    cx.r.bulk(b"standalone");
    cx.r.bulk(b"role");
    cx.r.bulk(b"master");
    cx.r.bulk(b"modules");
    cx.r.array(0);
}

/// Redis' rule for client names and library attributes: printable ASCII, no space.
fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|&c| (b'!'..=b'~').contains(&c))
}

pub fn client(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    let sub = a.get(1);
    let arity_ok = |want: usize| a.len() == want;
    if is(sub, "id") && arity_ok(2) {
        cx.r.int(cx.session.id as i64);
    } else if is(sub, "getname") && arity_ok(2) {
        if cx.session.name.is_empty() {
            cx.r.null();
        } else {
            cx.r.bulk(&cx.session.name);
        }
    } else if is(sub, "setname") && arity_ok(3) {
        if !valid_name(a.get(2)) {
            return cx.r.error("ERR Client names cannot contain spaces, newlines or special characters.");
        }
        cx.session.name = a.get(2).to_vec();
        cx.r.ok();
    } else if is(sub, "setinfo") && arity_ok(4) {
        let (attr, value) = (a.get(2), a.get(3));
        let slot = if is(attr, "lib-name") {
            &mut cx.session.lib_name
        } else if is(attr, "lib-ver") {
            &mut cx.session.lib_ver
        } else {
            return cx.r.error(&format!("ERR Unrecognized option '{}'", String::from_utf8_lossy(attr)));
        };
        if !valid_name(value) {
            let attr = String::from_utf8_lossy(attr).to_ascii_lowercase();
            return cx.r.error(&format!("ERR {attr} cannot contain spaces, newlines or special characters."));
        }
        *slot = value.to_vec();
        cx.r.ok();
    } else if is(sub, "info") && arity_ok(2) {
        let line = client_line(cx);
        cx.r.verbatim(line.as_bytes());
    } else if (is(sub, "no-evict") || is(sub, "no-touch")) && arity_ok(3) {
        if is(a.get(2), "on") || is(a.get(2), "off") {
            cx.r.ok();
        } else {
            cx.r.error(ERR_SYNTAX);
        }
    } else if ["id", "getname", "setname", "setinfo", "info", "no-evict", "no-touch"].iter().any(|s| is(sub, s)) {
        wrong_arity(&mut cx.r, &format!("client|{}", String::from_utf8_lossy(sub).to_ascii_lowercase()));
    } else {
        unknown_subcommand(&mut cx.r, sub, "client");
    }
}

/// This connection as a line of `CLIENT LIST`.
fn client_line(cx: &Cx<'_>) -> String {
    let s = &*cx.session;
    let addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    format!(
        "id={} addr={} laddr={} name={} db=0 resp={} lib-name={} lib-ver={}\n",
        s.id,
        addr(s.peer),
        addr(s.local),
        String::from_utf8_lossy(&s.name),
        if s.resp3 { 3 } else { 2 },
        String::from_utf8_lossy(&s.lib_name),
        String::from_utf8_lossy(&s.lib_ver),
    )
}

/// The parameters `CONFIG GET` knows, with their values here.
fn config_params(cx: &Cx<'_>) -> Vec<(&'static str, String)> {
    vec![
        ("appendonly", "no".into()),
        ("save", String::new()),
        ("databases", "1".into()),
        ("maxmemory", "0".into()),
        ("maxmemory-policy", "noeviction".into()),
        ("proto-max-bulk-len", cx.server.info.max_bulk.to_string()),
        ("hz", "10".into()),
        ("timeout", "0".into()),
        ("io-threads", "1".into()),
        ("cluster-enabled", "no".into()),
    ]
}

pub fn config(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    let sub = a.get(1);
    if is(sub, "get") {
        if a.len() < 3 {
            return wrong_arity(&mut cx.r, "config|get");
        }
        let params = config_params(cx);
        let found: Vec<_> =
            params.iter().filter(|(name, _)| a.iter().skip(2).any(|p| glob_match(p, name.as_bytes(), true))).collect();
        cx.r.map(found.len());
        for (name, value) in found {
            cx.r.bulk(name.as_bytes());
            cx.r.bulk(value.as_bytes());
        }
    } else if is(sub, "set") {
        if a.len() < 4 || a.len() % 2 == 1 {
            return wrong_arity(&mut cx.r, "config|set");
        }
        let name = String::from_utf8_lossy(a.get(2));
        cx.r.error(&format!("ERR Unknown option or number of arguments for CONFIG SET - '{name}'"));
    } else if is(sub, "resetstat") {
        cx.server.total_commands = 0;
        cx.server.total_connections = 0;
        cx.r.ok();
    } else {
        unknown_subcommand(&mut cx.r, sub, "config");
    }
}

/// `COMMAND`, `COMMAND COUNT | LIST | INFO [name …] | DOCS [name …]`. DOCS answers an empty map:
/// clients (redis-cli) then use their own help.
pub fn command(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    if a.len() == 1 {
        cx.r.array(COMMANDS.len());
        for spec in COMMANDS {
            command_info(cx, spec);
        }
        return;
    }
    let sub = a.get(1);
    if is(sub, "count") && a.len() == 2 {
        cx.r.int(COMMANDS.len() as i64);
    } else if is(sub, "list") && a.len() == 2 {
        cx.r.array(COMMANDS.len());
        for spec in COMMANDS {
            cx.r.bulk(spec.name.as_bytes());
        }
    } else if is(sub, "info") {
        if a.len() == 2 {
            cx.r.array(COMMANDS.len());
            COMMANDS.iter().for_each(|spec| command_info(cx, spec));
            return;
        }
        cx.r.array(a.len() - 2);
        for name in a.iter().skip(2) {
            match COMMANDS.iter().find(|s| is(name, s.name)) {
                Some(spec) => command_info(cx, spec),
                None => cx.r.null_array(),
            }
        }
    } else if is(sub, "docs") {
        cx.r.map(0);
    } else if ["count", "list"].iter().any(|s| is(sub, s)) {
        wrong_arity(&mut cx.r, &format!("command|{}", String::from_utf8_lossy(sub).to_ascii_lowercase()));
    } else {
        unknown_subcommand(&mut cx.r, sub, "command");
    }
}

/// One command as Redis 7 describes it: name, arity, flags, first key, last key, step, ACL
/// categories, tips, key specs, subcommands.
fn command_info(cx: &mut Cx<'_>, spec: &super::Spec) {
    let r = &mut cx.r;
    r.array(10);
    r.bulk(spec.name.as_bytes());
    r.int(spec.arity.into());
    r.set(spec.flags.len());
    for flag in spec.flags {
        r.simple(flag.as_bytes());
    }
    r.int(spec.first_key.into());
    r.int(spec.last_key.into());
    r.int(spec.step.into());
    r.set(0);
    r.set(0);
    r.array(0);
    r.array(0);
}

/// `FUNCTION FLUSH [ASYNC | SYNC]` and `FUNCTION LIST`: there are no functions (no scripting),
/// so there is nothing to flush or list. Redis' test suite flushes them before each unit.
pub fn function(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    let sub = a.get(1);
    if is(sub, "flush") {
        if a.len() > 3 || (a.len() == 3 && !is(a.get(2), "async") && !is(a.get(2), "sync")) {
            return cx.r.error("ERR FUNCTION FLUSH only supports SYNC|ASYNC option");
        }
        cx.r.ok();
    } else if is(sub, "list") {
        cx.r.array(0);
    } else {
        unknown_subcommand(&mut cx.r, sub, "function");
    }
}

/// The sections `INFO` (and `INFO default`) gives; `all` and `everything` add commandstats.
const DEFAULT_SECTIONS: &[&str] =
    &["server", "clients", "memory", "persistence", "stats", "replication", "cpu", "errorstats", "cluster", "keyspace"];

/// `INFO [section …]`: server, clients, memory, persistence, stats, replication, cpu, errorstats,
/// cluster, keyspace (`default`, and no argument: these), commandstats (`all`, `everything`, or
/// by name). Memory is the worker's resident set (there is no allocator accounting); persistence
/// says it is off.
pub fn info(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    let asked = |word: &str| a.iter().skip(1).any(|s| is(s, word));
    let everything = asked("all") || asked("everything");
    let default = a.len() == 1 || asked("default");
    let wants = |section: &str| everything || asked(section) || (default && DEFAULT_SECTIONS.contains(&section));
    let server = &*cx.server;
    let mut text = String::new();
    let mut section = |title: &str, body: &dyn Fn(&mut String)| {
        if wants(&title.to_ascii_lowercase()) {
            if !text.is_empty() {
                text.push_str("\r\n");
            }
            let _ = write!(text, "# {title}\r\n");
            body(&mut text);
        }
    };
    let now = cx.now;
    let unix = server.unix_ms(now);
    section("Server", &|t| {
        let _ = write!(
            t,
            "redis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\nos:{}\r\narch_bits:{}\r\n\
             process_id:{}\r\nuptime_in_seconds:{}\r\nexecutable:host\r\nhost_plugin:resp {}\r\n\
             host_service:{}\r\nhost_worker_slot:{}\r\n",
            std::env::consts::OS,
            usize::BITS,
            server.info.pid,
            now.saturating_sub(server.started_ms) / 1000,
            env!("CARGO_PKG_VERSION"),
            server.info.service,
            server.info.slot,
        );
    });
    section("Clients", &|t| {
        let _ = write!(t, "connected_clients:{}\r\nblocked_clients:0\r\n", server.connected_clients);
    });
    section("Memory", &|t| {
        let rss = resident_bytes();
        let _ = write!(
            t,
            "used_memory:{rss}\r\nused_memory_human:{}\r\nused_memory_rss:{rss}\r\n\
             used_memory_rss_human:{}\r\nused_memory_dataset:{}\r\nmaxmemory:0\r\nmaxmemory_human:0B\r\n\
             maxmemory_policy:noeviction\r\nmem_allocator:libc\r\n",
            human_bytes(rss),
            human_bytes(rss),
            server.store.dataset_bytes(),
        );
    });
    section("Persistence", &|t| {
        let started = (unix - now.saturating_sub(server.started_ms) as i64) / 1000;
        let _ = write!(
            t,
            "loading:0\r\nasync_loading:0\r\nrdb_changes_since_last_save:0\r\nrdb_bgsave_in_progress:0\r\n\
             rdb_last_save_time:{started}\r\nrdb_last_bgsave_status:ok\r\nrdb_last_bgsave_time_sec:-1\r\n\
             rdb_current_bgsave_time_sec:-1\r\nrdb_saves:0\r\naof_enabled:0\r\naof_rewrite_in_progress:0\r\n\
             aof_rewrite_scheduled:0\r\naof_last_rewrite_time_sec:-1\r\naof_current_rewrite_time_sec:-1\r\n\
             aof_last_bgrewrite_status:ok\r\naof_rewrites:0\r\naof_last_write_status:ok\r\n\
             module_fork_in_progress:0\r\n"
        );
    });
    section("Stats", &|t| {
        let _ = write!(
            t,
            "total_connections_received:{}\r\ntotal_commands_processed:{}\r\nexpired_keys:{}\r\n",
            server.total_connections, server.total_commands, server.store.expired_keys,
        );
    });
    section("Replication", &|t| {
        let _ = write!(
            t,
            "role:master\r\nconnected_slaves:0\r\nmaster_failover_state:no-failover\r\n\
             master_replid:0000000000000000000000000000000000000000\r\nmaster_repl_offset:0\r\n\
             repl_backlog_active:0\r\n"
        );
    });
    section("CPU", &|t| {
        let [sys, user, sys_children, user_children] = cpu_seconds();
        let _ = write!(
            t,
            "used_cpu_sys:{sys:.6}\r\nused_cpu_user:{user:.6}\r\nused_cpu_sys_children:{sys_children:.6}\r\n\
             used_cpu_user_children:{user_children:.6}\r\n"
        );
    });
    section("Commandstats", &|t| {
        for (spec, stats) in COMMANDS.iter().zip(&server.command_stats) {
            if stats.calls > 0 || stats.rejected > 0 {
                let _ = write!(
                    t,
                    "cmdstat_{}:calls={},usec=0,usec_per_call=0.00,rejected_calls={},failed_calls=0\r\n",
                    spec.name, stats.calls, stats.rejected
                );
            }
        }
    });
    section("Errorstats", &|_| {});
    section("Cluster", &|t| t.push_str("cluster_enabled:0\r\n"));
    section("Keyspace", &|t| {
        if !server.store.is_empty() {
            let _ = write!(t, "db0:keys={},expires={},avg_ttl=0\r\n", server.store.len(), server.store.volatile_len());
        }
    });
    cx.r.verbatim(text.as_bytes());
}

/// The worker's resident set size in bytes (`VmRSS` of /proc/self/status; 0 where unknown).
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Redis' `bytesToHuman`: `512B`, `1.50K`, `3.20M`, `1.00G`.
fn human_bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        _ if n < 1024.0 => format!("{n}B"),
        _ if n < 1024.0 * 1024.0 => format!("{:.2}K", n / 1024.0),
        _ if n < 1024.0 * 1024.0 * 1024.0 => format!("{:.2}M", n / (1024.0 * 1024.0)),
        _ => format!("{:.2}G", n / (1024.0 * 1024.0 * 1024.0)),
    }
}

/// CPU seconds: system and user time of the worker, then of its waited-for children.
fn cpu_seconds() -> [f64; 4] {
    use nix::sys::resource::{getrusage, UsageWho};
    let secs = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    let of = |who| getrusage(who).map_or((0.0, 0.0), |u| (secs(u.system_time()), secs(u.user_time())));
    let (sys, user) = of(UsageWho::RUSAGE_SELF);
    let (sys_c, user_c) = of(UsageWho::RUSAGE_CHILDREN);
    [sys, user, sys_c, user_c]
}
