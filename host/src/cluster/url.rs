//! The `--cluster` URL: `redis://[[user]:password@]HOST[:PORT][/db]`, `rediss://` (TLS),
//! `nats://[user:pass@|token@]HOST[:PORT]`, `tls://` (NATS over TLS). A TLS URL may name the CA
//! file that signed the broker's certificate: `rediss://HOST:PORT?ca=/etc/redis/ca.pem` (else
//! the system's CA bundle), and a client certificate for brokers that ask for one (Redis
//! `tls-auth-clients yes`, NATS `tls { verify: true }`): `?cert=FILE&key=FILE` (PEM: the
//! certificate chain, the private key), with or without `ca=`. A Redis Cluster: `redis+cluster://HOST:PORT[,HOST:PORT…]` (or
//! `rediss+cluster://`): the seed nodes asked for the slot map, sharded pub/sub. No syscalls.

use std::fmt;

/// Which broker a cluster URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Redis,
    Nats,
}

/// A parsed cluster URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    pub kind: BrokerKind,
    /// `rediss://` or `tls://`.
    pub tls: bool,
    /// A name or an IP address (IPv6 without its brackets).
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// NATS `token@host`.
    pub token: Option<String>,
    /// Redis `/db`: parsed and checked, but pub/sub channels are the same in every database
    /// (the service-name prefix keeps services apart), so nothing uses it.
    pub db: Option<u32>,
    /// `?ca=PATH` of a TLS URL: the PEM file of the CAs to trust (None: the system's bundle).
    pub ca_file: Option<String>,
    /// `cert=PATH&key=PATH` of a TLS URL: the client certificate chain and its private key
    /// (PEM), offered when the broker asks for one. Both or neither.
    pub client_cert: Option<(String, String)>,
    /// `redis+cluster://`: a Redis Cluster, reached through sharded pub/sub on the node that
    /// owns each topic's slot.
    pub cluster: bool,
    /// The seed nodes after the first (`host`, `port`) of a cluster URL.
    pub more_seeds: Vec<(String, u16)>,
}

impl fmt::Debug for ClusterUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Without the secrets, for logs and `status`.
impl fmt::Display for ClusterUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match (self.kind, self.tls, self.cluster) {
            (BrokerKind::Redis, false, false) => "redis",
            (BrokerKind::Redis, true, false) => "rediss",
            (BrokerKind::Redis, false, true) => "redis+cluster",
            (BrokerKind::Redis, true, true) => "rediss+cluster",
            (BrokerKind::Nats, false, _) => "nats",
            (BrokerKind::Nats, true, _) => "tls",
        };
        write!(f, "{scheme}://")?;
        if self.username.is_some() || self.password.is_some() || self.token.is_some() {
            write!(f, "{}:***@", self.username.as_deref().unwrap_or(""))?;
        }
        let seeds = std::iter::once((self.host.as_str(), self.port))
            .chain(self.more_seeds.iter().map(|(h, p)| (h.as_str(), *p)));
        for (i, (host, port)) in seeds.enumerate() {
            let comma = if i > 0 { "," } else { "" };
            if host.contains(':') {
                write!(f, "{comma}[{host}]:{port}")?;
            } else {
                write!(f, "{comma}{host}:{port}")?;
            }
        }
        if let Some(db) = self.db {
            write!(f, "/{db}")?;
        }
        let mut sep = '?';
        if let Some(ca) = &self.ca_file {
            write!(f, "{sep}ca={ca}")?;
            sep = '&';
        }
        if let Some((cert, key)) = &self.client_cert {
            write!(f, "{sep}cert={cert}&key={key}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("a cluster URL starts with redis://, rediss://, redis+cluster://, rediss+cluster://, nats:// or tls://, not {0:?}")]
    Scheme(String),
    #[error("the cluster URL has no host")]
    NoHost,
    #[error("the cluster URL's port {0:?} is not a number from 1 to 65535")]
    Port(String),
    #[error("the Redis URL's path {0:?} is not a database number (/0 to /15...)")]
    Db(String),
    #[error("a NATS URL has no path, found {0:?}")]
    NatsPath(String),
    #[error("the cluster URL's {0} has a bad %-escape")]
    Escape(&'static str),
    #[error("the cluster URL has an unclosed [ in its IPv6 host")]
    Bracket,
    #[error("only a redis+cluster:// URL names several nodes (HOST:PORT,HOST:PORT)")]
    Seeds,
    #[error("a redis+cluster:// URL has no database path (a Redis Cluster has database 0 only), found {0:?}")]
    ClusterDb(String),
    #[error("the cluster URL's query {0:?} is not ca=FILE, cert=FILE, key=FILE joined by & (each once; only a TLS URL, rediss:// or tls://, takes one)")]
    Query(String),
    #[error("the cluster URL names a client certificate and its key together: cert=FILE&key=FILE (found only {0}=)")]
    CertKey(&'static str),
}

/// Parse a cluster URL.
pub fn parse(text: &str) -> Result<ClusterUrl, UrlError> {
    let (scheme, rest) = text.split_once("://").ok_or_else(|| UrlError::Scheme(text.into()))?;
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (kind, tls, cluster, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "redis" => (BrokerKind::Redis, false, false, 6379),
        "rediss" => (BrokerKind::Redis, true, false, 6379),
        "redis+cluster" => (BrokerKind::Redis, false, true, 6379),
        "rediss+cluster" => (BrokerKind::Redis, true, true, 6379),
        "nats" => (BrokerKind::Nats, false, false, 4222),
        "tls" => (BrokerKind::Nats, true, false, 4222),
        _ => return Err(UrlError::Scheme(scheme.into())),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let mut seeds = Vec::new();
    for one in hostport.split(',') {
        seeds.push(split_host_port(one, default_port)?);
    }
    if seeds.len() > 1 && !cluster {
        return Err(UrlError::Seeds);
    }
    let (host, port) = seeds.remove(0);
    let mut url = ClusterUrl {
        kind,
        tls,
        host,
        port,
        username: None,
        password: None,
        token: None,
        db: None,
        ca_file: None,
        client_cert: None,
        cluster,
        more_seeds: seeds,
    };
    if let Some(query) = query {
        let (mut cert, mut key) = (None, None);
        for pair in query.split('&') {
            let (name, path) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "ca" => &mut url.ca_file,
                "cert" => &mut cert,
                "key" => &mut key,
                _ => return Err(UrlError::Query(query.into())),
            };
            if !tls || path.is_empty() || slot.is_some() {
                return Err(UrlError::Query(query.into()));
            }
            *slot = Some(percent_decode(path, "file name")?);
        }
        url.client_cert = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => return Err(UrlError::CertKey("cert")),
            (None, Some(_)) => return Err(UrlError::CertKey("key")),
        };
    }
    if let Some(info) = userinfo {
        match info.split_once(':') {
            Some((user, pass)) => {
                let user = percent_decode(user, "user name")?;
                url.username = (!user.is_empty()).then_some(user);
                url.password = Some(percent_decode(pass, "password")?);
            }
            None if kind == BrokerKind::Nats => url.token = Some(percent_decode(info, "token")?),
            // Redis: `redis://password@host` is how some clients write a password alone.
            None => url.password = Some(percent_decode(info, "password")?),
        }
    }
    let path = path.trim_start_matches('/');
    match kind {
        BrokerKind::Redis if cluster && !path.is_empty() => return Err(UrlError::ClusterDb(path.into())),
        BrokerKind::Redis if !path.is_empty() => {
            url.db = Some(path.parse().map_err(|_| UrlError::Db(path.into()))?);
        }
        BrokerKind::Nats if !path.is_empty() => return Err(UrlError::NatsPath(path.into())),
        _ => {}
    }
    Ok(url)
}

fn split_host_port(text: &str, default_port: u16) -> Result<(String, u16), UrlError> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or(UrlError::Bracket)?;
        (host, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(UrlError::Port(p.into())),
        },
    };
    Ok((host.to_string(), port))
}

fn percent_decode(text: &str, what: &'static str) -> Result<String, UrlError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or(UrlError::Escape(what))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| UrlError::Escape(what))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::Escape(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls() {
        let u = parse("redis://127.0.0.1:7000").unwrap();
        assert_eq!((u.kind, u.tls, u.host.as_str(), u.port), (BrokerKind::Redis, false, "127.0.0.1", 7000));
        assert_eq!((u.username, u.password, u.db), (None, None, None));
        let u = parse("redis://:s%40cret@localhost/3").unwrap();
        assert_eq!((u.username, u.password.as_deref(), u.db, u.port), (None, Some("s@cret"), Some(3), 6379));
        let u = parse("rediss://app:pw@[::1]:6380").unwrap();
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port, u.username.as_deref()), ("::1", 6380, Some("app")));
        assert_eq!(u.to_string(), "rediss://app:***@[::1]:6380");
        let u = parse("rediss://h:6380?ca=/etc/redis/my%20ca.pem").unwrap();
        assert_eq!((u.tls, u.ca_file.as_deref()), (true, Some("/etc/redis/my ca.pem")));
        assert_eq!(parse("redis://h?ca=/x"), Err(UrlError::Query("ca=/x".into())), "no TLS, no CA");
        assert_eq!(parse("rediss://h?cert=/x"), Err(UrlError::CertKey("cert")));
        assert_eq!(parse("rediss://h?key=/x"), Err(UrlError::CertKey("key")));
        assert_eq!(parse("rediss://h?ca=/a&ca=/b"), Err(UrlError::Query("ca=/a&ca=/b".into())));
        assert_eq!(parse("rediss://h?cert=&key=/k"), Err(UrlError::Query("cert=&key=/k".into())));
        assert_eq!(parse("rediss://h?crt=/c"), Err(UrlError::Query("crt=/c".into())));
        assert_eq!(parse("redis://h?cert=/c&key=/k"), Err(UrlError::Query("cert=/c&key=/k".into())));
        let u = parse("rediss://h?key=/k%201.pem&ca=/ca.pem&cert=/c.pem").unwrap();
        assert_eq!(u.ca_file.as_deref(), Some("/ca.pem"));
        assert_eq!(u.client_cert, Some(("/c.pem".into(), "/k 1.pem".into())));
        assert_eq!(u.to_string(), "rediss://h:6379?ca=/ca.pem&cert=/c.pem&key=/k 1.pem");
        let u = parse("tls://h?cert=/c.pem&key=/k.pem").unwrap();
        assert_eq!((u.ca_file.clone(), u.to_string()), (None, "tls://h:4222?cert=/c.pem&key=/k.pem".to_string()));
    }

    #[test]
    fn redis_cluster_urls() {
        let u = parse("redis+cluster://127.0.0.1:7000,127.0.0.1:7001,[::1]").unwrap();
        assert!(u.cluster && !u.tls);
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 7000));
        assert_eq!(u.more_seeds, vec![("127.0.0.1".to_string(), 7001), ("::1".to_string(), 6379)]);
        assert_eq!(u.to_string(), "redis+cluster://127.0.0.1:7000,127.0.0.1:7001,[::1]:6379");
        let u = parse("rediss+cluster://:pw@h:7000?ca=/ca.pem").unwrap();
        assert!(u.cluster && u.tls && u.more_seeds.is_empty());
        assert_eq!(u.to_string(), "rediss+cluster://:***@h:7000?ca=/ca.pem");
        assert_eq!(parse("redis://a:1,b:2"), Err(UrlError::Seeds));
        assert_eq!(parse("redis+cluster://a:1/2"), Err(UrlError::ClusterDb("2".into())));
        assert_eq!(parse("redis+cluster://a:1,:2"), Err(UrlError::NoHost));
        assert!(!parse("redis://a").unwrap().cluster);
    }

    #[test]
    fn nats_urls() {
        let u = parse("nats://127.0.0.1").unwrap();
        assert_eq!((u.kind, u.port), (BrokerKind::Nats, 4222));
        let u = parse("nats://tok@127.0.0.1:4333").unwrap();
        assert_eq!((u.token.as_deref(), u.username, u.port), (Some("tok"), None, 4333));
        let u = parse("tls://me:pw@example.org:4443").unwrap();
        assert!(u.tls);
        assert_eq!((u.username.as_deref(), u.password.as_deref()), (Some("me"), Some("pw")));
        assert!(!u.to_string().contains("pw"));
    }

    #[test]
    fn bad_urls() {
        assert_eq!(parse("http://x"), Err(UrlError::Scheme("http".into())));
        assert_eq!(parse("127.0.0.1:6379"), Err(UrlError::Scheme("127.0.0.1:6379".into())));
        assert_eq!(parse("redis://:6379"), Err(UrlError::NoHost));
        assert_eq!(parse("redis://h:0"), Err(UrlError::Port("0".into())));
        assert_eq!(parse("redis://h:99999"), Err(UrlError::Port("99999".into())));
        assert_eq!(parse("redis://h/x"), Err(UrlError::Db("x".into())));
        assert_eq!(parse("nats://h/sub"), Err(UrlError::NatsPath("sub".into())));
        assert_eq!(parse("nats://a:%zz@h"), Err(UrlError::Escape("password")));
        assert_eq!(parse("redis://[::1:6379"), Err(UrlError::Bracket));
    }
}
