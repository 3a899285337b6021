//! Command execution: the command table (name, arity, flags, key positions, as `COMMAND`
//! reports them), dispatch with Redis' error texts, and the connection and server commands.
//! The keyspace commands are in [`strings`], transactions in [`multi`].

mod multi;
mod server;
mod strings;

pub use multi::Transaction;

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::proto::ArgsView;
use crate::reply::Reply;
use crate::store::Store;

pub(crate) const ERR_NOT_INTEGER: &str = "ERR value is not an integer or out of range";
pub(crate) const ERR_SYNTAX: &str = "ERR syntax error";

/// One entry of the command table.
#[derive(Debug)]
pub struct Spec {
    pub name: &'static str,
    /// Redis' arity: `n` exactly n arguments (the name included), `-n` at least n.
    pub arity: i32,
    pub flags: &'static [&'static str],
    pub first_key: i32,
    pub last_key: i32,
    pub step: i32,
}

macro_rules! commands {
    ($($cmd:ident $name:literal $arity:literal [$($flag:literal)*] $first:literal $last:literal $step:literal;)*) => {
        /// A command this server knows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Cmd { $($cmd),* }

        /// Every command, in [`Cmd`] order.
        pub static COMMANDS: &[Spec] = &[$(Spec {
            name: $name,
            arity: $arity,
            flags: &[$($flag),*],
            first_key: $first,
            last_key: $last,
            step: $step,
        }),*];

        impl Cmd {
            /// The command named `lower` (lowercase).
            pub fn from_lowercase(lower: &[u8]) -> Option<Cmd> {
                $(if lower == $name.as_bytes() { return Some(Cmd::$cmd); })*
                None
            }
        }
    };
}

commands! {
    Get "get" 2 ["readonly" "fast"] 1 1 1;
    Set "set" -3 ["write" "denyoom"] 1 1 1;
    Ping "ping" -1 ["fast"] 0 0 0;
    Incr "incr" 2 ["write" "denyoom" "fast"] 1 1 1;
    MSet "mset" -3 ["write" "denyoom"] 1 -1 2;
    MGet "mget" -2 ["readonly" "fast"] 1 -1 1;
    Del "del" -2 ["write"] 1 -1 1;
    Exists "exists" -2 ["readonly" "fast"] 1 -1 1;
    Decr "decr" 2 ["write" "denyoom" "fast"] 1 1 1;
    IncrBy "incrby" 3 ["write" "denyoom" "fast"] 1 1 1;
    DecrBy "decrby" 3 ["write" "denyoom" "fast"] 1 1 1;
    Append "append" 3 ["write" "denyoom"] 1 1 1;
    StrLen "strlen" 2 ["readonly" "fast"] 1 1 1;
    GetSet "getset" 3 ["write" "denyoom" "fast"] 1 1 1;
    GetDel "getdel" 2 ["write" "fast"] 1 1 1;
    SetNx "setnx" 3 ["write" "denyoom" "fast"] 1 1 1;
    SetEx "setex" 4 ["write" "denyoom"] 1 1 1;
    PSetEx "psetex" 4 ["write" "denyoom"] 1 1 1;
    MSetNx "msetnx" -3 ["write" "denyoom"] 1 -1 2;
    Unlink "unlink" -2 ["write" "fast"] 1 -1 1;
    Type "type" 2 ["readonly" "fast"] 1 1 1;
    Expire "expire" -3 ["write" "fast"] 1 1 1;
    PExpire "pexpire" -3 ["write" "fast"] 1 1 1;
    Ttl "ttl" 2 ["readonly" "fast"] 1 1 1;
    PTtl "pttl" 2 ["readonly" "fast"] 1 1 1;
    Persist "persist" 2 ["write" "fast"] 1 1 1;
    Keys "keys" 2 ["readonly"] 0 0 0;
    Scan "scan" -2 ["readonly"] 0 0 0;
    DbSize "dbsize" 1 ["readonly" "fast"] 0 0 0;
    FlushAll "flushall" -1 ["write"] 0 0 0;
    FlushDb "flushdb" -1 ["write"] 0 0 0;
    Echo "echo" 2 ["fast"] 0 0 0;
    Select "select" 2 ["loading" "stale" "fast"] 0 0 0;
    Hello "hello" -1 ["noscript" "loading" "stale" "fast" "no_auth"] 0 0 0;
    Auth "auth" -2 ["noscript" "loading" "stale" "fast" "no_auth"] 0 0 0;
    Client "client" -2 ["noscript" "loading" "stale"] 0 0 0;
    Config "config" -2 ["admin" "noscript" "loading" "stale"] 0 0 0;
    Command "command" -1 ["loading" "stale"] 0 0 0;
    Info "info" -1 ["loading" "stale"] 0 0 0;
    Quit "quit" -1 ["noscript" "loading" "stale" "fast" "no_auth"] 0 0 0;
    ExpireAt "expireat" -3 ["write" "fast"] 1 1 1;
    PExpireAt "pexpireat" -3 ["write" "fast"] 1 1 1;
    ExpireTime "expiretime" 2 ["readonly" "fast"] 1 1 1;
    PExpireTime "pexpiretime" 2 ["readonly" "fast"] 1 1 1;
    GetEx "getex" -2 ["write" "fast"] 1 1 1;
    Multi "multi" 1 ["noscript" "loading" "stale" "fast" "allow_busy"] 0 0 0;
    Exec "exec" 1 ["noscript" "loading" "stale" "skip_slowlog"] 0 0 0;
    Discard "discard" 1 ["noscript" "loading" "stale" "fast" "allow_busy"] 0 0 0;
    Watch "watch" -2 ["noscript" "loading" "stale" "fast" "allow_busy"] 1 -1 1;
    Unwatch "unwatch" 1 ["noscript" "loading" "stale" "fast" "allow_busy"] 0 0 0;
    Function "function" -2 ["noscript"] 0 0 0;
}

impl Cmd {
    pub fn spec(self) -> &'static Spec {
        &COMMANDS[self as usize]
    }
}

/// What this worker knows about itself, for `INFO` and `HELLO`.
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    pub pid: u32,
    pub slot: u32,
    pub service: String,
    /// The largest bulk string accepted (the max package size, at most 512 MB).
    pub max_bulk: usize,
}

/// Worker-wide state: the keyspace and counters.
#[derive(Debug)]
pub struct Server {
    pub store: Store,
    pub info: ServerInfo,
    /// When the worker started (its monotonic clock, ms).
    pub started_ms: u64,
    pub connected_clients: u64,
    pub total_connections: u64,
    pub total_commands: u64,
    next_client_id: u64,
    /// Unix ms minus the worker's clock, fixed (tests); None: read the wall clock.
    pub unix_offset: Option<i64>,
    /// The wall clock's offset last read (see [`Server::unix_ms`]).
    clock_offset: std::cell::Cell<Option<i64>>,
    /// Per command, in [`Cmd`] order (`INFO commandstats`).
    pub command_stats: Vec<CommandStats>,
}

/// Counters of one command.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommandStats {
    /// Runs (in a transaction: when `EXEC` runs it).
    pub calls: u64,
    /// Refused before running (wrong number of arguments).
    pub rejected: u64,
}

impl Default for Server {
    fn default() -> Self {
        Server::new(ServerInfo::default())
    }
}

impl Server {
    pub fn new(info: ServerInfo) -> Self {
        Server {
            store: Store::default(),
            info,
            started_ms: 0,
            connected_clients: 0,
            total_connections: 0,
            total_commands: 0,
            next_client_id: 0,
            unix_offset: None,
            clock_offset: std::cell::Cell::new(None),
            command_stats: vec![CommandStats::default(); COMMANDS.len()],
        }
    }

    /// A session for a new connection (counted until [`Server::end_session`]).
    pub fn new_session(&mut self, peer: Option<SocketAddr>, local: Option<SocketAddr>) -> Session {
        self.next_client_id += 1;
        self.connected_clients += 1;
        self.total_connections += 1;
        Session { id: self.next_client_id, peer, local, ..Session::default() }
    }

    /// A session that arrived in a hand-over (its id, name and protocol kept; counted like a
    /// new one). Later sessions get ids above it.
    pub fn adopt_session(&mut self, session: Session, peer: Option<SocketAddr>, local: Option<SocketAddr>) -> Session {
        self.next_client_id = self.next_client_id.max(session.id);
        self.connected_clients += 1;
        Session { peer, local, ..session }
    }

    /// The counters a hand-over carries to the next worker: the last client id, connections
    /// and commands served.
    pub fn counters(&self) -> [u64; 3] {
        [self.next_client_id, self.total_connections, self.total_commands]
    }

    /// Takes over the counters of [`Server::counters`] from the worker this one replaces.
    pub fn adopt_counters(&mut self, [next_client_id, total_connections, total_commands]: [u64; 3]) {
        self.next_client_id = self.next_client_id.max(next_client_id);
        self.total_connections += total_connections;
        self.total_commands += total_commands;
    }

    /// The connection of `session` is gone: its watches end with it.
    pub fn end_session(&mut self, session: &mut Session) {
        self.connected_clients = self.connected_clients.saturating_sub(1);
        session.multi = None;
        multi::unwatch_all(self, session);
    }

    /// The wall clock (Unix ms) at the worker's `now`: deadlines are given and checked for
    /// overflow in it, as Redis does, and kept on the worker's monotonic clock.
    ///
    /// One offset between the two clocks is kept while the wall clock agrees with it within a
    /// second, so a deadline converted to the worker's clock and back reads the same
    /// (`PEXPIREAT` then `PEXPIRETIME`: the two clocks are read a moment apart, and a fresh
    /// offset per command was off by a millisecond), while a step of the wall clock (NTP, an
    /// operator) is still followed.
    pub fn unix_ms(&self, now: u64) -> i64 {
        const RESYNC_MS: i64 = 1000;
        if let Some(offset) = self.unix_offset {
            return now as i64 + offset;
        }
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let offset = match self.clock_offset.get() {
            Some(offset) if (wall - (now as i64 + offset)).abs() <= RESYNC_MS => offset,
            _ => {
                let offset = wall - now as i64;
                self.clock_offset.set(Some(offset));
                offset
            }
        };
        now as i64 + offset
    }
}

/// Per-connection state.
#[derive(Debug, Default, Clone)]
pub struct Session {
    pub id: u64,
    /// The client asked for RESP3 (`HELLO 3`).
    pub resp3: bool,
    pub name: Vec<u8>,
    pub lib_name: Vec<u8>,
    pub lib_ver: Vec<u8>,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    /// Between `MULTI` and `EXEC`: the queued commands.
    pub multi: Option<Transaction>,
    /// The keys `WATCH`ed, each with its change stamp at the time.
    pub watched: HashMap<Box<[u8]>, u64>,
}

/// What the connection does after a command's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Continue,
    /// `QUIT`: close once the reply is written.
    Close,
}

/// Everything one command runs with.
pub(crate) struct Cx<'a> {
    pub server: &'a mut Server,
    pub session: &'a mut Session,
    pub r: Reply<'a>,
    /// The worker's clock (ms).
    pub now: u64,
}

/// Runs one command (`args[0]` is its name) and appends its reply to `out`. An empty command
/// (`*0`, a blank inline line) gets no reply, as in Redis.
pub fn execute(server: &mut Server, session: &mut Session, args: ArgsView<'_>, now: u64, out: &mut Vec<u8>) -> After {
    if args.is_empty() {
        return After::Continue;
    }
    server.total_commands += 1;
    let resp3 = session.resp3;
    let mut lower = [0u8; 16];
    let cmd = lowercase(args.get(0), &mut lower).and_then(Cmd::from_lowercase);
    let Some(cmd) = cmd else {
        abort_transaction(session);
        unknown_command(&mut Reply::new(out, resp3), args);
        return After::Continue;
    };
    let spec = cmd.spec();
    let n = args.len() as i32;
    let stats = &mut server.command_stats[cmd as usize];
    if (spec.arity > 0 && n != spec.arity) || n < -spec.arity {
        stats.rejected += 1;
        abort_transaction(session);
        wrong_arity(&mut Reply::new(out, resp3), spec.name);
        return After::Continue;
    }
    let queue =
        session.multi.is_some() && !matches!(cmd, Cmd::Multi | Cmd::Exec | Cmd::Discard | Cmd::Watch | Cmd::Quit);
    if !queue {
        stats.calls += 1;
    }
    match cmd {
        Cmd::Multi => multi::multi(session, &mut Reply::new(out, resp3)),
        Cmd::Discard => multi::discard(server, session, &mut Reply::new(out, resp3)),
        Cmd::Watch => multi::watch(server, session, args, now, &mut Reply::new(out, resp3)),
        Cmd::Exec => multi::exec(server, session, now, out),
        _ => match session.multi.as_mut() {
            Some(tx) if queue => {
                tx.queue(args);
                Reply::new(out, resp3).simple(b"QUEUED");
            }
            _ => return run(&mut Cx { server, session, r: Reply::new(out, resp3), now }, cmd, args),
        },
    }
    After::Continue
}

/// A command refused while queueing makes `EXEC` fail.
fn abort_transaction(session: &mut Session) {
    if let Some(tx) = session.multi.as_mut() {
        tx.abort();
    }
}

fn run(cx: &mut Cx<'_>, cmd: Cmd, a: ArgsView<'_>) -> After {
    use strings as s;
    match cmd {
        Cmd::Get => s::get(cx, a),
        Cmd::Set => s::set(cx, a),
        Cmd::Incr => s::incr_by(cx, a.get(1), 1),
        Cmd::Decr => s::incr_by(cx, a.get(1), -1),
        Cmd::IncrBy => s::incr_by_arg(cx, a, false),
        Cmd::DecrBy => s::incr_by_arg(cx, a, true),
        Cmd::MSet => s::mset(cx, a, false),
        Cmd::MSetNx => s::mset(cx, a, true),
        Cmd::MGet => s::mget(cx, a),
        Cmd::Del | Cmd::Unlink => s::del(cx, a),
        Cmd::Exists => s::exists(cx, a),
        Cmd::Append => s::append(cx, a),
        Cmd::StrLen => s::strlen(cx, a),
        Cmd::GetSet => s::getset(cx, a),
        Cmd::GetDel => s::getdel(cx, a),
        Cmd::SetNx => s::setnx(cx, a),
        Cmd::SetEx => s::setex(cx, a, true, "setex"),
        Cmd::PSetEx => s::setex(cx, a, false, "psetex"),
        Cmd::Type => s::type_of(cx, a),
        Cmd::Expire => s::expire(cx, a, true, false, "expire"),
        Cmd::PExpire => s::expire(cx, a, false, false, "pexpire"),
        Cmd::ExpireAt => s::expire(cx, a, true, true, "expireat"),
        Cmd::PExpireAt => s::expire(cx, a, false, true, "pexpireat"),
        Cmd::Ttl => s::ttl(cx, a, 1000, false),
        Cmd::PTtl => s::ttl(cx, a, 1, false),
        Cmd::ExpireTime => s::ttl(cx, a, 1000, true),
        Cmd::PExpireTime => s::ttl(cx, a, 1, true),
        Cmd::GetEx => s::getex(cx, a),
        Cmd::Persist => s::persist(cx, a),
        Cmd::Keys => s::keys(cx, a),
        Cmd::Scan => s::scan(cx, a),
        Cmd::DbSize => cx.r.int(cx.server.store.len() as i64),
        Cmd::FlushAll | Cmd::FlushDb => s::flush(cx, a),
        Cmd::Ping => server::ping(cx, a),
        Cmd::Echo => cx.r.bulk(a.get(1)),
        Cmd::Select => server::select(cx, a),
        Cmd::Hello => server::hello(cx, a),
        Cmd::Auth => server::auth(cx, a),
        Cmd::Client => server::client(cx, a),
        Cmd::Config => server::config(cx, a),
        Cmd::Command => server::command(cx, a),
        Cmd::Info => server::info(cx, a),
        Cmd::Function => server::function(cx, a),
        Cmd::Unwatch => multi::unwatch(cx.server, cx.session, &mut cx.r),
        Cmd::Quit => {
            cx.r.ok();
            return After::Close;
        }
        // Run by `execute` itself.
        Cmd::Multi | Cmd::Exec | Cmd::Discard | Cmd::Watch => {}
    }
    After::Continue
}

/// `name` in lowercase, in `buf`; None when longer than any command name.
fn lowercase<'b>(name: &[u8], buf: &'b mut [u8; 16]) -> Option<&'b [u8]> {
    let dst = buf.get_mut(..name.len())?;
    for (d, s) in dst.iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    Some(dst)
}

/// `-ERR unknown command 'NAME', with args beginning with: 'a' 'b' ` (Redis 7: the name cut at
/// 128 bytes, the arguments while their text is under 128 bytes).
fn unknown_command(r: &mut Reply<'_>, a: ArgsView<'_>) {
    let name = a.get(0);
    let mut msg = b"ERR unknown command '".to_vec();
    msg.extend_from_slice(&name[..name.len().min(128)]);
    msg.extend_from_slice(b"', with args beginning with: ");
    let args_start = msg.len();
    for arg in a.iter().skip(1) {
        let used = msg.len() - args_start;
        if used >= 128 {
            break;
        }
        msg.push(b'\'');
        msg.extend_from_slice(&arg[..arg.len().min(128 - used)]);
        msg.extend_from_slice(b"' ");
    }
    r.error_bytes(&msg);
}

pub(crate) fn wrong_arity(r: &mut Reply<'_>, name: &str) {
    r.error(&format!("ERR wrong number of arguments for '{name}' command"));
}

/// `-ERR unknown subcommand 'SUB'. Try CMD HELP.`
pub(crate) fn unknown_subcommand(r: &mut Reply<'_>, sub: &[u8], cmd: &str) {
    let sub = String::from_utf8_lossy(&sub[..sub.len().min(128)]);
    r.error(&format!("ERR unknown subcommand '{sub}'. Try {} HELP.", cmd.to_ascii_uppercase()));
}

#[cfg(test)]
mod tests;
