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
}
