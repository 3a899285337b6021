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

/// `INFO [section …]`: server, clients, stats, keyspace (`all`, `everything`, `default`: each).
pub fn info(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    let wants = |section: &str| {
        a.len() == 1
            || a.iter().skip(1).any(|s| is(s, section) || is(s, "all") || is(s, "everything") || is(s, "default"))
    };
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
        let _ = write!(t, "connected_clients:{}\r\n", server.connected_clients);
    });
    section("Stats", &|t| {
        let _ = write!(
            t,
            "total_connections_received:{}\r\ntotal_commands_processed:{}\r\nexpired_keys:{}\r\n",
            server.total_connections, server.total_commands, server.store.expired_keys,
        );
    });
    section("Keyspace", &|t| {
        if !server.store.is_empty() {
            let _ = write!(t, "db0:keys={},expires={},avg_ttl=0\r\n", server.store.len(), server.store.volatile_len());
        }
    });
    cx.r.verbatim(text.as_bytes());
}
