//! Listen addresses: one parser for `--listen` and the config file's `listen`.
//!
//! | written | means |
//! |---|---|
//! | `8080` | TCP on 127.0.0.1:8080 (loopback, not every interface) |
//! | `127.0.0.1:8080`, `localhost:8080` | TCP (a host name is resolved now, the first address wins) |
//! | `[::1]:8080` | TCP over IPv6 only |
//! | `[::]:8080` | TCP on every interface, IPv6 **and IPv4** (dual-stack: `IPV6_V6ONLY` off) |
//! | `tcp://ADDR` | the same as `ADDR` |
//! | `udp://ADDR` | UDP: each datagram is one message (see docs/architecture.md) |
//! | `unix:/run/app.sock` | a Unix stream socket, shared by every worker of the service |

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// Where a service listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Listen {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    /// A Unix stream socket at `path`; `mode`: the socket file's permissions (None: as the umask
    /// leaves them).
    Unix {
        path: PathBuf,
        mode: Option<u32>,
    },
}

impl Listen {
    /// The IP address and port (None for a Unix socket).
    pub fn ip(&self) -> Option<SocketAddr> {
        match self {
            Listen::Tcp(a) | Listen::Udp(a) => Some(*a),
            Listen::Unix { .. } => None,
        }
    }

    /// The same address with the IP port the system picked (`bound`).
    pub fn with_ip(&self, bound: SocketAddr) -> Listen {
        match self {
            Listen::Tcp(_) => Listen::Tcp(bound),
            Listen::Udp(_) => Listen::Udp(bound),
            unix => unix.clone(),
        }
    }

    /// Whether two services could not both listen here: the same Unix path, or the same IP
    /// address and port of the same protocol (port 0 never clashes: each gets its own).
    pub fn clashes_with(&self, other: &Listen) -> bool {
        match (self, other) {
            (Listen::Tcp(a), Listen::Tcp(b)) | (Listen::Udp(a), Listen::Udp(b)) => a == b && a.port() != 0,
            (Listen::Unix { path: a, .. }, Listen::Unix { path: b, .. }) => a == b,
            _ => false,
        }
    }

    /// Sets a Unix socket's file mode (an octal string such as `"0660"`); refused for an IP
    /// address. `key` names the setting in the error.
    pub fn set_unix_mode(&mut self, key: &str, text: &str) -> Result<(), String> {
        let parsed = parse_mode(text).map_err(|e| format!("{key}: {e}"))?;
        match self {
            Listen::Unix { mode, .. } => {
                *mode = Some(parsed);
                Ok(())
            }
            other => Err(format!("{key} is for a Unix socket (listen unix:/path), not {other}")),
        }
    }
}

/// A file mode written in octal (`0660`, `660`, `0o660`), at most 0o777.
fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 && !digits.is_empty() => Ok(mode),
        _ => Err(format!("{text:?} is not a file mode: use octal digits, e.g. \"0660\"")),
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Udp(a) => write!(f, "udp://{a}"),
            Listen::Unix { path, .. } => write!(f, "unix:{}", path.display()),
        }
    }
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse(text)
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Parses a listen address (see the module's table).
pub fn parse(text: &str) -> Result<Listen, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(format!("{text:?} names no socket file: use unix:/path/to.sock"));
        }
        // sun_path holds 107 bytes and a terminating NUL.
        if path.len() > 107 {
            return Err(format!("{text:?}: a Unix socket path may have at most 107 bytes"));
        }
        if path.starts_with('@') || path.contains('\0') {
            return Err(format!("{text:?}: abstract Unix sockets are not supported; use a file path"));
        }
        return Ok(Listen::Unix { path: PathBuf::from(path), mode: None });
    }
    if let Some(rest) = text.strip_prefix("udp://") {
        return ip(rest).map(Listen::Udp);
    }
    if let Some(rest) = text.strip_prefix("tcp://") {
        return ip(rest).map(Listen::Tcp);
    }
    if let Some((scheme, _)) = text.split_once("://") {
        return Err(format!("{text:?}: unknown scheme {scheme:?}; use tcp://, udp:// or unix:/path"));
    }
    ip(text).map(Listen::Tcp)
}

/// `ADDR:PORT`, `[V6]:PORT`, `HOST:PORT` or a port alone (127.0.0.1).
fn ip(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if text.starts_with('[') {
        return Err(format!("{text:?} is not an IPv6 address and port: write [ADDR]:PORT, e.g. [::1]:8080"));
    }
    if text.matches(':').count() > 1 {
        return Err(format!("{text:?}: an IPv6 address goes in brackets with its port, e.g. [::1]:8080"));
    }
    if !text.contains(':') {
        return Err(format!("{text:?} is not an address: use ADDR:PORT, HOST:PORT, PORT, udp://… or unix:/path"));
    }
    let mut found = text.to_socket_addrs().map_err(|e| format!("could not resolve {text:?}: {e}"))?;
    found.next().ok_or_else(|| format!("{text:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Listen {
        parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn tcp_addresses_ports_and_names() {
        assert_eq!(ok("8080").to_string(), "127.0.0.1:8080");
        assert_eq!(ok("0.0.0.0:80"), Listen::Tcp("0.0.0.0:80".parse().unwrap()));
        assert_eq!(ok("tcp://127.0.0.1:1"), Listen::Tcp("127.0.0.1:1".parse().unwrap()));
        assert!(ok("localhost:8080").ip().unwrap().ip().is_loopback());
    }

    #[test]
    fn ipv6_goes_in_brackets() {
        assert_eq!(ok("[::1]:9000").to_string(), "[::1]:9000");
        assert_eq!(ok("[::]:0"), Listen::Tcp("[::]:0".parse().unwrap()));
        assert!(parse("::1:9000").unwrap_err().contains("in brackets"));
        assert!(parse("[::1:9000").unwrap_err().contains("[ADDR]:PORT"));
    }

    #[test]
    fn udp_and_unix() {
        assert_eq!(ok("udp://127.0.0.1:5353").to_string(), "udp://127.0.0.1:5353");
        assert_eq!(ok("udp://[::1]:53"), Listen::Udp("[::1]:53".parse().unwrap()));
        assert_eq!(ok("unix:/run/app.sock"), Listen::Unix { path: "/run/app.sock".into(), mode: None });
        assert_eq!(ok("unix:///run/app.sock").to_string(), "unix:/run/app.sock");
        assert_eq!(ok("unix:rel.sock").to_string(), "unix:rel.sock");
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        assert!(parse("nowhere").unwrap_err().contains("not an address"));
        assert!(parse("99999").is_err());
        assert!(parse("unix:").unwrap_err().contains("names no socket file"));
        assert!(parse("unix:@abstract").unwrap_err().contains("abstract"));
        assert!(parse(&format!("unix:/{}", "a".repeat(120))).unwrap_err().contains("107 bytes"));
        assert!(parse("sctp://127.0.0.1:1").unwrap_err().contains("unknown scheme \"sctp\""));
        assert!(parse("udp://nowhere").unwrap_err().contains("not an address"));
    }

    #[test]
    fn unix_mode_is_octal_and_only_for_unix_sockets() {
        let mut unix = ok("unix:/tmp/a.sock");
        unix.set_unix_mode("--unix-mode", "0660").unwrap();
        assert_eq!(unix, Listen::Unix { path: "/tmp/a.sock".into(), mode: Some(0o660) });
        assert!(unix.set_unix_mode("--unix-mode", "0999").unwrap_err().contains("octal"));
        assert!(unix.set_unix_mode("--unix-mode", "1777").is_err());
        let err = ok("127.0.0.1:1").set_unix_mode("unix_mode", "0600").unwrap_err();
        assert!(err.contains("unix_mode is for a Unix socket"), "{err}");
    }

    #[test]
    fn clashes() {
        assert!(ok("127.0.0.1:1").clashes_with(&ok("127.0.0.1:1")));
        assert!(!ok("127.0.0.1:1").clashes_with(&ok("udp://127.0.0.1:1")), "TCP and UDP ports are apart");
        assert!(!ok("127.0.0.1:0").clashes_with(&ok("127.0.0.1:0")));
        assert!(ok("unix:/a").clashes_with(&ok("unix:/a")));
    }
}
