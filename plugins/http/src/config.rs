//! The plugin's settings (`--plugin-config`, TOML): every key optional, unknown keys refused.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::conditional::EtagKind;
use crate::Limits;

/// The service's config for this plugin.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub root: Option<String>,
    pub autoindex: bool,
    pub serve_dotfiles: bool,
    pub etag: EtagKind,
    pub cache_control: Option<String>,
    pub cache_control_by_ext: BTreeMap<String, String>,
    pub precompressed: bool,
    pub gzip: bool,
    pub gzip_min: u64,
    pub echo: bool,
    pub max_header: usize,
    pub max_target: usize,
    pub max_headers: usize,
    pub max_body: u64,
    pub max_file: u64,
    pub access_log_format: AccessLogFormat,
    pub file_io: FileIo,
    /// HTTP/2 over TLS, on connections whose handshake agreed `h2` by ALPN.
    pub h2: bool,
    /// HTTP/2 in cleartext (h2c) on connections that start with the client preface (prior
    /// knowledge, RFC 9113 §3.3).
    pub h2c: bool,
}

/// How file bodies over 256 KiB (or not in the page cache) are sent (`file_io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileIo {
    /// The host sends the file range itself (`Host::send_file`: `sendfile(2)`, zero copy; a
    /// range the page cache lacks is read from the disk inside the worker's loop).
    #[default]
    Sendfile,
    /// The plugin reads the file (from the page cache in the loop, from the disk on the task
    /// pool) and sends the bytes.
    Pool,
}

/// The fields of an access-log line (`access_log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// Common Log Format plus referer and user agent (nginx's `combined`).
    #[default]
    Combined,
    /// Common Log Format.
    Common,
}

impl Default for Config {
    fn default() -> Self {
        let limits = Limits::default();
        Config {
            root: None,
            autoindex: false,
            serve_dotfiles: false,
            etag: EtagKind::Strong,
            cache_control: None,
            cache_control_by_ext: BTreeMap::new(),
            precompressed: true,
            gzip: false,
            gzip_min: 1024,
            echo: true,
            max_header: limits.max_header,
            max_target: limits.max_target,
            max_headers: limits.max_headers,
            max_body: limits.max_body,
            max_file: u64::MAX,
            access_log_format: AccessLogFormat::Combined,
            file_io: FileIo::default(),
            h2: true,
            h2c: true,
        }
    }
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, String> {
        let mut config: Config = toml::from_str(text).map_err(|e| format!("invalid http config: {e}"))?;
        if config.max_header == 0 || config.max_target == 0 {
            return Err("invalid http config: max_header and max_target must be positive".into());
        }
        if !(1..=http_proto::parse::MAX_HEADERS_CAP).contains(&config.max_headers) {
            return Err(format!(
                "invalid http config: max_headers must be 1 to {}",
                http_proto::parse::MAX_HEADERS_CAP
            ));
        }
        if config.root.as_deref() == Some("") {
            return Err("invalid http config: root must not be empty".into());
        }
        let values = config.cache_control.iter().chain(config.cache_control_by_ext.values());
        if values.into_iter().any(|v| v.bytes().any(|b| b.is_ascii_control())) {
            return Err("invalid http config: cache_control values must be one line".into());
        }
        config.cache_control_by_ext = std::mem::take(&mut config.cache_control_by_ext)
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        Ok(config)
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_header: self.max_header,
            max_body: self.max_body,
            max_target: self.max_target,
            max_headers: self.max_headers,
        }
    }
}
