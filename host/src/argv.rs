//! A host process's arguments across an exec that sets its process title: `ps` shows only the
//! title (`host: master (…)`, `host: worker web #2 …`), and the arguments travel packed in
//! [`ARGV_ENV`]. The master packs them for its own re-exec (title, `host upgrade`) and for each
//! worker it starts; every host process unpacks them first thing ([`command_line`]).

use std::ffi::{OsStr, OsString};

/// Set in the environment of the master once it re-executed itself with its title.
pub const TITLED: &str = "HOST_MASTER_TITLED";

/// Arguments a host process was started with when its argv holds only its title: each
/// argument's bytes in hex, separated by commas (an environment value cannot hold NUL; this
/// keeps any byte).
pub const ARGV_ENV: &str = "HOST_ARGV";

/// The command line: argv, or the arguments `ARGV_ENV` carries (removed, so children do not
/// inherit it; this runs first, with one thread).
pub fn command_line() -> Vec<OsString> {
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    if let Ok(packed) = std::env::var(ARGV_ENV) {
        std::env::remove_var(ARGV_ENV);
        argv.truncate(1);
        argv.extend(unpack_args(&packed));
    }
    argv
}

/// Packs arguments for `ARGV_ENV`.
pub fn pack_args<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    use std::fmt::Write as _;
    use std::os::unix::ffi::OsStrExt;
    let mut packed = String::new();
    for (i, a) in args.into_iter().enumerate() {
        if i > 0 {
            packed.push(',');
        }
        for b in a.as_ref().as_bytes() {
            let _ = write!(packed, "{b:02x}");
        }
    }
    packed
}

/// The arguments [`pack_args`] packed.
fn unpack_args(packed: &str) -> Vec<OsString> {
    use std::os::unix::ffi::OsStringExt;
    let unhex = |a: &str| -> Vec<u8> {
        (0..a.len() / 2).filter_map(|i| u8::from_str_radix(a.get(2 * i..2 * i + 2)?, 16).ok()).collect()
    };
    packed.split(',').filter(|a| !a.is_empty()).map(|a| OsString::from_vec(unhex(a))).collect()
}

/// What `host-worker` is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerCommand {
    /// `worker [--log-level FILTER] [--log-format text|json]`: run the worker (what the master
    /// passes; the same words as `host worker`).
    Run { log_level: Option<String>, log_format: Option<String> },
    /// `--protocol-version`: print the master↔worker protocol this binary speaks.
    ProtocolVersion,
}

/// Reads `host-worker`'s arguments (after the program name). No parser library: this binary
/// carries only what a worker needs, and the master alone writes these words.
pub fn worker_command(args: &[OsString]) -> Result<WorkerCommand, String> {
    let words: Vec<&str> = args
        .iter()
        .map(|a| a.to_str().ok_or_else(|| format!("argument {a:?} is not UTF-8")))
        .collect::<Result<_, _>>()?;
    match words.as_slice() {
        ["--protocol-version"] => return Ok(WorkerCommand::ProtocolVersion),
        ["worker", ..] => {}
        _ => {
            return Err(format!(
                "usage: host-worker worker [--log-level FILTER] [--log-format text|json] | host-worker \
                 --protocol-version (it is started by the host master); got {:?}",
                words.join(" ")
            ))
        }
    }
    let (mut log_level, mut log_format) = (None, None);
    let mut rest = words[1..].iter();
    while let Some(&word) = rest.next() {
        let (name, inline) = match word.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (word, None),
        };
        let slot = match name {
            "--log-level" => &mut log_level,
            "--log-format" => &mut log_format,
            _ => return Err(format!("unknown worker argument {word:?}")),
        };
        let value = match inline {
            Some(value) => value,
            None => rest.next().ok_or_else(|| format!("{name} needs a value"))?,
        };
        *slot = Some(value.to_string());
    }
    if let Some(format) = &log_format {
        if format != "text" && format != "json" {
            return Err(format!("--log-format {format:?}: text or json"));
        }
    }
    Ok(WorkerCommand::Run { log_level, log_format })
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt;

    use super::*;

    #[test]
    fn packed_arguments_come_back_byte_for_byte() {
        let args = [
            OsString::from("start"),
            OsString::from("--plugin-config"),
            OsString::from("root = \"/srv/a b,c\""),
            OsString::from_vec(vec![0xff, 0x00, b'x']),
        ];
        assert_eq!(unpack_args(&pack_args(&args)), args);
        assert!(unpack_args(&pack_args(Vec::<String>::new())).is_empty());
    }

    #[test]
    fn the_worker_binary_reads_what_the_master_passes_and_refuses_the_rest() {
        let words = |w: &[&str]| w.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            worker_command(&words(&["worker", "--log-level", "host=debug", "--log-format", "json"])),
            Ok(WorkerCommand::Run { log_level: Some("host=debug".into()), log_format: Some("json".into()) })
        );
        assert_eq!(
            worker_command(&words(&["worker", "--log-format=text"])),
            Ok(WorkerCommand::Run { log_level: None, log_format: Some("text".into()) })
        );
        assert_eq!(worker_command(&words(&["--protocol-version"])), Ok(WorkerCommand::ProtocolVersion));
        for bad in [
            &[][..],
            &["start"],
            &["worker", "--count", "2"],
            &["worker", "--log-level"],
            &["worker", "--log-format", "xml"],
        ] {
            assert!(worker_command(&words(bad)).is_err(), "{bad:?} was accepted");
        }
    }
}
