//! The keyspace commands (strings, expiry, iteration), with redis-server 7.0's semantics and
//! error texts.

use super::{wrong_arity, Cx, ERR_NOT_INTEGER, ERR_SYNTAX};
use crate::proto::{parse_i64, ArgsView, BULK_MAX};
use crate::store::NEVER;

const ERR_OVERFLOW: &str = "ERR increment or decrement would overflow";

fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// How a deadline argument counts: seconds or milliseconds, from now or since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    Ex,
    Px,
    ExAt,
    PxAt,
}

impl Deadline {
    fn parse(opt: &[u8]) -> Option<Deadline> {
        [("ex", Deadline::Ex), ("px", Deadline::Px), ("exat", Deadline::ExAt), ("pxat", Deadline::PxAt)]
            .into_iter()
            .find_map(|(word, d)| is(opt, word).then_some(d))
    }
}

fn invalid_expire(cx: &mut Cx<'_>, cmd: &str) {
    cx.r.error(&format!("ERR invalid expire time in '{cmd}' command"));
}

/// The deadline Unix ms `at_unix` on the worker's clock (`now` is `unix` there); a past one is
/// `now` (expired).
fn to_worker_clock(at_unix: i64, unix: i64, now: u64) -> u64 {
    let ahead = at_unix.saturating_sub(unix);
    if ahead <= 0 {
        now
    } else {
        now.saturating_add(ahead as u64).min(NEVER - 1)
    }
}

/// The deadline of `SET`/`GETEX`/`SETEX`'s expiry argument on the worker's clock, as Redis'
/// `getExpireMillisecondsOrReply` checks it: positive, and no overflow when made milliseconds
/// and added to the Unix time. On error the reply is written and None returned.
fn expiry_arg(cx: &mut Cx<'_>, arg: &[u8], kind: Deadline, cmd: &str) -> Option<u64> {
    let Some(n) = parse_i64(arg) else {
        cx.r.error(ERR_NOT_INTEGER);
        return None;
    };
    let seconds = matches!(kind, Deadline::Ex | Deadline::ExAt);
    if n <= 0 || (seconds && n > i64::MAX / 1000) {
        invalid_expire(cx, cmd);
        return None;
    }
    let ms = if seconds { n * 1000 } else { n };
    let unix = cx.server.unix_ms(cx.now);
    let at = match kind {
        Deadline::Ex | Deadline::Px => ms.checked_add(unix),
        Deadline::ExAt | Deadline::PxAt => Some(ms),
    };
    let Some(at) = at else {
        invalid_expire(cx, cmd);
        return None;
    };
    Some(to_worker_clock(at, unix, cx.now))
}

pub fn get(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    match cx.server.store.get(a.get(1), cx.now) {
        Some(e) => cx.r.bulk(&e.value),
        None => cx.r.null(),
    }
}

/// `SET key value [NX | XX] [GET] [EX seconds | PX ms | EXAT unix-seconds | PXAT unix-ms | KEEPTTL]`
pub fn set(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    let (mut nx, mut xx, mut get, mut keep_ttl) = (false, false, false, false);
    let mut expire: Option<(&[u8], Deadline)> = None;
    let mut j = 3;
    while j < a.len() {
        let opt = a.get(j);
        let has_next = j + 1 < a.len();
        if is(opt, "nx") && !xx {
            nx = true;
        } else if is(opt, "xx") && !nx {
            xx = true;
        } else if is(opt, "get") {
            get = true;
        } else if is(opt, "keepttl") && expire.is_none() {
            keep_ttl = true;
        } else if let Some(kind) = Deadline::parse(opt).filter(|_| !keep_ttl && expire.is_none() && has_next) {
            expire = Some((a.get(j + 1), kind));
            j += 1;
        } else {
            return cx.r.error(ERR_SYNTAX);
        }
        j += 1;
    }
    let expires_at = match expire {
        None if keep_ttl => None,
        None => Some(NEVER),
        Some((arg, kind)) => match expiry_arg(cx, arg, kind, "set") {
            Some(at) => Some(at),
            None => return,
        },
    };
    let (key, value) = (a.get(1), a.get(2));
    let store = &mut cx.server.store;
    let exists = match store.get(key, cx.now) {
        Some(old) if get => {
            cx.r.bulk(&old.value);
            true
        }
        Some(_) => true,
        None => {
            if get {
                cx.r.null();
            }
            false
        }
    };
    if (nx && exists) || (xx && !exists) {
        if !get {
            cx.r.null();
        }
        return;
    }
    store.set(key, value, expires_at, cx.now);
    if !get {
        cx.r.ok();
    }
}

pub fn setnx(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    let store = &mut cx.server.store;
    if store.contains(a.get(1), cx.now) {
        return cx.r.int(0);
    }
    store.set(a.get(1), a.get(2), Some(NEVER), cx.now);
    cx.r.int(1);
}

/// `SETEX key seconds value` / `PSETEX key milliseconds value`.
pub fn setex(cx: &mut Cx<'_>, a: ArgsView<'_>, seconds: bool, name: &str) {
    let kind = if seconds { Deadline::Ex } else { Deadline::Px };
    let Some(at) = expiry_arg(cx, a.get(2), kind, name) else { return };
    cx.server.store.set(a.get(1), a.get(3), Some(at), cx.now);
    cx.r.ok();
}

/// `GETEX key [EX seconds | PX ms | EXAT unix-seconds | PXAT unix-ms | PERSIST]`
pub fn getex(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    let mut change: Option<Option<(&[u8], Deadline)>> = None;
    let mut j = 2;
    while j < a.len() {
        let opt = a.get(j);
        if let Some(kind) = Deadline::parse(opt).filter(|_| change.is_none() && j + 1 < a.len()) {
            change = Some(Some((a.get(j + 1), kind)));
            j += 2;
        } else if is(opt, "persist") && change.is_none() {
            change = Some(None);
            j += 1;
        } else {
            return cx.r.error(ERR_SYNTAX);
        }
    }
    let at = match change {
        None => None,
        Some(None) => Some(NEVER),
        Some(Some((arg, kind))) => match expiry_arg(cx, arg, kind, "getex") {
            Some(at) => Some(at),
            None => return,
        },
    };
    let key = a.get(1);
    let store = &mut cx.server.store;
    let Some(entry) = store.get(key, cx.now) else { return cx.r.null() };
    cx.r.bulk(&entry.value);
    match at {
        None => {}
        Some(at) if at <= cx.now => {
            store.remove(key, cx.now);
        }
        Some(at) => {
            store.set_deadline(key, at);
        }
    }
}

pub fn getset(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    let store = &mut cx.server.store;
    match store.get(a.get(1), cx.now) {
        Some(old) => cx.r.bulk(&old.value),
        None => cx.r.null(),
    }
    store.set(a.get(1), a.get(2), Some(NEVER), cx.now);
}

pub fn getdel(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    match cx.server.store.take(a.get(1), cx.now) {
        Some(v) => cx.r.bulk(&v),
        None => cx.r.null(),
    }
}

/// `MSET k v [k v …]` (or `MSETNX`: only when none of the keys exists).
pub fn mset(cx: &mut Cx<'_>, a: ArgsView<'_>, nx: bool) {
    if a.len().is_multiple_of(2) {
        return wrong_arity(&mut cx.r, if nx { "msetnx" } else { "mset" });
    }
    let store = &mut cx.server.store;
    if nx && (1..a.len()).step_by(2).any(|i| store.contains(a.get(i), cx.now)) {
        return cx.r.int(0);
    }
    for i in (1..a.len()).step_by(2) {
        store.set(a.get(i), a.get(i + 1), Some(NEVER), cx.now);
    }
    if nx {
        cx.r.int(1);
    } else {
        cx.r.ok();
    }
}

pub fn mget(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    cx.r.array(a.len() - 1);
    for key in a.iter().skip(1) {
        match cx.server.store.get(key, cx.now) {
            Some(e) => cx.r.bulk(&e.value),
            None => cx.r.null(),
        }
    }
}

pub fn del(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    let removed = a.iter().skip(1).filter(|k| cx.server.store.remove(k, cx.now)).count();
    cx.r.int(removed as i64);
}

pub fn exists(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    let found = a.iter().skip(1).filter(|k| cx.server.store.contains(k, cx.now)).count();
    cx.r.int(found as i64);
}

pub fn type_of(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    let t: &[u8] = if cx.server.store.contains(a.get(1), cx.now) { b"string" } else { b"none" };
    cx.r.simple(t);
}

/// `INCRBY key n` / `DECRBY key n`.
pub fn incr_by_arg(cx: &mut Cx<'_>, a: ArgsView<'_>, decr: bool) {
    let Some(n) = parse_i64(a.get(2)) else { return cx.r.error(ERR_NOT_INTEGER) };
    let delta = if decr {
        match n.checked_neg() {
            Some(d) => d,
            None => return cx.r.error("ERR decrement would overflow"),
        }
    } else {
        n
    };
    incr_by(cx, a.get(1), delta)
}

/// Adds `delta` to the integer at `key` (0 when missing); the key keeps its deadline.
pub fn incr_by(cx: &mut Cx<'_>, key: &[u8], delta: i64) {
    let store = &mut cx.server.store;
    let entry = match store.get_mut(key, cx.now) {
        Some(e) => {
            let Some(old) = parse_i64(&e.value) else { return cx.r.error(ERR_NOT_INTEGER) };
            let Some(new) = old.checked_add(delta) else { return cx.r.error(ERR_OVERFLOW) };
            e.value.clear();
            e.value.extend_from_slice(itoa::Buffer::new().format(new).as_bytes());
            return cx.r.int(new);
        }
        None => store.entry(key, cx.now),
    };
    entry.value.extend_from_slice(itoa::Buffer::new().format(delta).as_bytes());
    cx.r.int(delta);
}

pub fn append(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    let entry = cx.server.store.entry(a.get(1), cx.now);
    if entry.value.len() + a.get(2).len() > BULK_MAX {
        return cx.r.error("ERR string exceeds maximum allowed size (proto-max-bulk-len)");
    }
    entry.value.extend_from_slice(a.get(2));
    let len = entry.value.len();
    cx.r.int(len as i64);
}

pub fn strlen(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    let len = cx.server.store.get(a.get(1), cx.now).map_or(0, |e| e.value.len());
    cx.r.int(len as i64);
}

/// `EXPIRE key seconds [NX | XX | GT | LT]`, `PEXPIRE key ms […]`, `EXPIREAT key unix-seconds
/// […]`, `PEXPIREAT key unix-ms […]`: Redis' `expireGenericCommand`, overflow checks included
/// (seconds made milliseconds, then the Unix time added for the relative forms).
pub fn expire(cx: &mut Cx<'_>, a: ArgsView<'_>, seconds: bool, absolute: bool, name: &str) {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in a.iter().skip(3) {
        if is(opt, "nx") {
            nx = true;
        } else if is(opt, "xx") {
            xx = true;
        } else if is(opt, "gt") {
            gt = true;
        } else if is(opt, "lt") {
            lt = true;
        } else {
            return cx.r.error(&format!("ERR Unsupported option {}", String::from_utf8_lossy(opt)));
        }
    }
    if nx && (xx || gt || lt) {
        return cx.r.error("ERR NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return cx.r.error("ERR GT and LT options at the same time are not compatible");
    }
    let Some(mut when) = parse_i64(a.get(2)) else { return cx.r.error(ERR_NOT_INTEGER) };
    if seconds {
        if !(i64::MIN / 1000..=i64::MAX / 1000).contains(&when) {
            return invalid_expire(cx, name);
        }
        when *= 1000;
    }
    let unix = cx.server.unix_ms(cx.now);
    let base = if absolute { 0 } else { unix };
    if when > i64::MAX - base {
        return invalid_expire(cx, name);
    }
    when += base;
    let key = a.get(1);
    let now = cx.now;
    let store = &mut cx.server.store;
    let Some(entry) = store.get(key, now) else { return cx.r.int(0) };
    // The current deadline in Unix ms.
    let current = (entry.expires_at != NEVER).then(|| unix.saturating_add((entry.expires_at - now) as i64));
    let refused = (nx && current.is_some())
        || (xx && current.is_none())
        || (gt && current.is_none_or(|c| when <= c))
        || (lt && current.is_some_and(|c| when >= c));
    if refused {
        return cx.r.int(0);
    }
    if when <= unix {
        store.remove(key, now);
    } else {
        store.set_deadline(key, to_worker_clock(when, unix, now));
    }
    cx.r.int(1);
}

/// `TTL` (`unit_ms` 1000) / `PTTL` (1): -2 without the key, -1 without a deadline; `absolute`:
/// `EXPIRETIME` / `PEXPIRETIME`, the deadline as Unix time.
pub fn ttl(cx: &mut Cx<'_>, a: ArgsView<'_>, unit_ms: u64, absolute: bool) {
    let now = cx.now;
    let base = if absolute { cx.server.unix_ms(now).max(0) as u64 } else { 0 };
    let reply = match cx.server.store.get(a.get(1), now) {
        None => -2,
        Some(e) if e.expires_at == NEVER => -1,
        Some(e) => ((base.saturating_add(e.expires_at - now).saturating_add(unit_ms / 2)) / unit_ms) as i64,
    };
    cx.r.int(reply);
}

pub fn persist(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    let store = &mut cx.server.store;
    let had_ttl = store.get(a.get(1), cx.now).is_some_and(|e| e.expires_at != NEVER);
    if had_ttl {
        store.set_deadline(a.get(1), NEVER);
    }
    cx.r.int(i64::from(had_ttl));
}

pub fn keys(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    let found: Vec<&[u8]> = cx.server.store.keys(a.get(1), cx.now).collect();
    cx.r.array(found.len());
    for k in found {
        cx.r.bulk(k);
    }
}

/// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`.
pub fn scan(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    let Some(cursor) = std::str::from_utf8(a.get(1)).ok().and_then(|s| s.parse::<u64>().ok()) else {
        return cx.r.error("ERR invalid cursor");
    };
    let (mut pattern, mut count, mut strings_only) = (None, 10usize, true);
    let mut j = 2;
    while j < a.len() {
        let Some(value) = (j + 1 < a.len()).then(|| a.get(j + 1)) else { return cx.r.error(ERR_SYNTAX) };
        let opt = a.get(j);
        if is(opt, "match") {
            pattern = (value != b"*").then_some(value);
        } else if is(opt, "count") {
            match parse_i64(value) {
                None => return cx.r.error(ERR_NOT_INTEGER),
                Some(n) if n < 1 => return cx.r.error(ERR_SYNTAX),
                Some(n) => count = usize::try_from(n).unwrap_or(usize::MAX),
            }
        } else if is(opt, "type") {
            // Every value here is a string.
            strings_only = is(value, "string");
        } else {
            return cx.r.error(ERR_SYNTAX);
        }
        j += 2;
    }
    let mut found = Vec::new();
    let next = cx.server.store.scan(cursor, count, pattern, cx.now, |k| {
        if strings_only {
            found.push(k.to_vec());
        }
    });
    cx.r.array(2);
    cx.r.bulk(itoa::Buffer::new().format(next).as_bytes());
    cx.r.array(found.len());
    for k in &found {
        cx.r.bulk(k);
    }
}

/// `FLUSHALL [ASYNC | SYNC]` (and `FLUSHDB`): this worker's keyspace is the only database.
pub fn flush(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    if a.len() > 2 || (a.len() == 2 && !is(a.get(1), "async") && !is(a.get(1), "sync")) {
        return cx.r.error(ERR_SYNTAX);
    }
    cx.server.store.clear();
    cx.r.ok();
}
