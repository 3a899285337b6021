//! Redis' glob patterns (`KEYS`, `SCAN MATCH`, `CONFIG GET`): `*`, `?`, `[abc]`, `[^a-z]`, and
//! `\` to take the next byte literally. A port of `stringmatchlen` from redis-server's `util.c`,
//! including its cut-off for patterns with many `*` (no exponential backtracking).

/// Whether `s` matches `pattern` (ASCII case-insensitively when `nocase`).
pub fn glob_match(pattern: &[u8], s: &[u8], nocase: bool) -> bool {
    let mut skip_longer = false;
    match_from(pattern, s, nocase, &mut skip_longer)
}

fn match_from(mut p: &[u8], mut s: &[u8], nocase: bool, skip_longer: &mut bool) -> bool {
    let eq = |a: u8, b: u8| if nocase { a.eq_ignore_ascii_case(&b) } else { a == b };
    while !p.is_empty() && !s.is_empty() {
        match p[0] {
            b'*' => {
                while p.len() > 1 && p[1] == b'*' {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                while !s.is_empty() {
                    if match_from(&p[1..], s, nocase, skip_longer) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    s = &s[1..];
                }
                // No match for any suffix: a longer string cannot match either.
                *skip_longer = true;
                return false;
            }
            b'?' => s = &s[1..],
            b'[' => {
                p = &p[1..];
                let negate = p.first() == Some(&b'^');
                if negate {
                    p = &p[1..];
                }
                let mut matched = false;
                loop {
                    match p {
                        [] | [b']', ..] => break,
                        [b'\\', escaped, ..] => {
                            p = &p[1..];
                            matched |= *escaped == s[0];
                        }
                        [lo, b'-', hi, ..] => {
                            let (mut lo, mut hi, mut c) = (*lo.min(hi), *lo.max(hi), s[0]);
                            if nocase {
                                (lo, hi, c) =
                                    (lo.to_ascii_lowercase(), hi.to_ascii_lowercase(), c.to_ascii_lowercase());
                            }
                            p = &p[2..];
                            matched |= (lo..=hi).contains(&c);
                        }
                        [c, ..] => matched |= eq(*c, s[0]),
                    }
                    p = &p[1..];
                }
                if matched == negate {
                    return false;
                }
                s = &s[1..];
            }
            b'\\' if p.len() >= 2 => {
                p = &p[1..];
                if !eq(p[0], s[0]) {
                    return false;
                }
                s = &s[1..];
            }
            c => {
                if !eq(c, s[0]) {
                    return false;
                }
                s = &s[1..];
            }
        }
        // Past this pattern byte (an unterminated `[` class has used up the pattern already).
        p = p.get(1..).unwrap_or_default();
        if s.is_empty() {
            while p.first() == Some(&b'*') {
                p = &p[1..];
            }
            break;
        }
    }
    p.is_empty() && s.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        glob_match(p.as_bytes(), s.as_bytes(), false)
    }

    #[test]
    fn matches_like_redis() {
        // As in Redis, `*` needs a byte to match (KEYS and SCAN treat a lone `*` as "all").
        assert!(!m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("key:*", "key:1"));
        assert!(!m("key:*", "ke"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h*llo", "heeeello"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo"));
        assert!(m("h[b-a]llo", "hallo"));
        assert!(!m("h[a-b]llo", "hcllo"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("[\\]]", "]"));
        assert!(m("*a*b*", "xxaxxbxx"));
        assert!(!m("abc", "abcd"));
        assert!(!m("abcd", "abc"));
        assert!(m("abc*", "abc"));
        assert!(m("[abc", "a"), "an unterminated class still matches its bytes");
        assert!(glob_match(b"SAVE", b"save", true));
        assert!(!glob_match(b"SAVE", b"save", false));
    }

    #[test]
    fn many_stars_do_not_backtrack_forever() {
        let pattern = "a*".repeat(30) + "b";
        let s = "a".repeat(60);
        assert!(!m(&pattern, &s));
    }
}
