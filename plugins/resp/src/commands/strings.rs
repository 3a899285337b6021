//! The keyspace commands (strings, expiry, iteration), with redis-server 7.0's semantics and
//! error texts.

use super::{wrong_arity, Cx, ERR_NOT_INTEGER, ERR_SYNTAX};
use crate::proto::{parse_i64, ArgsView, BULK_MAX};
use crate::store::NEVER;

const ERR_OVERFLOW: &str = "ERR increment or decrement would overflow";

fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// The deadline `amount` units of `unit_ms` from now, or None when Redis would say "invalid
/// expire time" (overflow). A deadline at or before `now` means "already expired".
fn deadline(now: u64, amount: i64, unit_ms: i64) -> Option<i64> {
    let ms = amount.checked_mul(unit_ms)?;
    ms.checked_add(now as i64)
}

fn invalid_expire(cx: &mut Cx<'_>, cmd: &str) {
    cx.r.error(&format!("ERR invalid expire time in '{cmd}' command"));
}

pub fn get(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    match cx.server.store.get(a.get(1), cx.now) {
        Some(e) => cx.r.bulk(&e.value),
        None => cx.r.null(),
    }
}

/// `SET key value [NX | XX] [GET] [EX seconds | PX milliseconds | KEEPTTL]`
pub fn set(cx: &mut Cx<'_>, a: ArgsView<'_>) {
    let (mut nx, mut xx, mut get, mut keep_ttl) = (false, false, false, false);
    let mut expire: Option<(&[u8], i64)> = None;
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
        } else if (is(opt, "ex") || is(opt, "px")) && !keep_ttl && expire.is_none() && has_next {
            expire = Some((a.get(j + 1), if is(opt, "ex") { 1000 } else { 1 }));
            j += 1;
        } else {
            return cx.r.error(ERR_SYNTAX);
        }
        j += 1;
    }
    let expires_at = match expire {
        None if keep_ttl => None,
        None => Some(NEVER),
        Some((arg, unit)) => {
            let Some(amount) = parse_i64(arg) else { return cx.r.error(ERR_NOT_INTEGER) };
            match deadline(cx.now, amount, unit) {
                Some(at) if amount > 0 => Some(at as u64),
                _ => return invalid_expire(cx, "set"),
            }
        }
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
pub fn setex(cx: &mut Cx<'_>, a: ArgsView<'_>, unit: i64, name: &str) {
    let Some(amount) = parse_i64(a.get(2)) else { return cx.r.error(ERR_NOT_INTEGER) };
    let at = match deadline(cx.now, amount, unit) {
        Some(at) if amount > 0 => at as u64,
        _ => return invalid_expire(cx, name),
    };
    cx.server.store.set(a.get(1), a.get(3), Some(at), cx.now);
    cx.r.ok();
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

/// `EXPIRE key seconds [NX | XX | GT | LT]` / `PEXPIRE key milliseconds […]`.
pub fn expire(cx: &mut Cx<'_>, a: ArgsView<'_>, unit: i64, name: &str) {
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
    let Some(amount) = parse_i64(a.get(2)) else { return cx.r.error(ERR_NOT_INTEGER) };
    let Some(when) = deadline(cx.now, amount, unit) else { return invalid_expire(cx, name) };
    let key = a.get(1);
    let store = &mut cx.server.store;
    let Some(entry) = store.get(key, cx.now) else { return cx.r.int(0) };
    let current = (entry.expires_at != NEVER).then_some(entry.expires_at as i64);
    let refused = (nx && current.is_some())
        || (xx && current.is_none())
        || (gt && current.is_none_or(|c| when <= c))
        || (lt && current.is_some_and(|c| when >= c));
    if refused {
        return cx.r.int(0);
    }
    if when <= cx.now as i64 {
        store.remove(key, cx.now);
    } else {
        store.set_deadline(key, when as u64);
    }
    cx.r.int(1);
}

/// `TTL` (`unit_ms` 1000) / `PTTL` (1): -2 without the key, -1 without a deadline.
pub fn ttl(cx: &mut Cx<'_>, a: ArgsView<'_>, unit_ms: u64) {
    let reply = match cx.server.store.get(a.get(1), cx.now) {
        None => -2,
        Some(e) if e.expires_at == NEVER => -1,
        Some(e) => ((e.expires_at - cx.now + unit_ms / 2) / unit_ms) as i64,
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
