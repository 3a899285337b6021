//! Whether a plugin file may be trusted, the way sshd's `StrictModes` judges `authorized_keys`:
//! a plugin runs with the service's privileges, so a file, the directory holding it or any
//! directory above it that someone other than its owner may write, or that a stranger owns,
//! would let that someone run code in the server. Such a file is refused unless
//! `--insecure-plugins` says otherwise. Checked at start and for every candidate of a reload.
//!
//! The check cannot be raced: [`open`] walks the path from `/` one component at a time with
//! `openat(O_NOFOLLOW)` (`sys::open_dir_nofollow`), judging each directory through the descriptor
//! it then opens the next component from, and opens the file itself last. What the caller hashes
//! and copies is that descriptor, the very inode that was judged: swapping a directory for a
//! symlink after the check (or during it) fails the walk instead of redirecting it. A directory
//! above the plugin's own may be writable by others when it is sticky (`/tmp`): no one can
//! rename what they do not own in it. The plugin's own directory may not (anyone could add a
//! plugin to it).

use std::ffi::OsStr;
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::sys;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("could not check plugin {path}: {cause}")]
    Stat { path: PathBuf, cause: String },
    #[error(
        "refusing plugin {plugin}: {what} {path} is writable by {by} (mode {mode:04o}); \
         fix it with `chmod go-w {path}`, or start with --insecure-plugins"
    )]
    Writable { plugin: PathBuf, what: &'static str, path: PathBuf, by: &'static str, mode: u32 },
    #[error(
        "refusing plugin {plugin}: {what} {path} is owned by uid {uid}, neither root nor the host's user \
         (uid {ours}); fix it with `chown`, or start with --insecure-plugins"
    )]
    Owner { plugin: PathBuf, what: &'static str, path: PathBuf, uid: u32, ours: u32 },
    #[error("refusing plugin {plugin}: {path} changed while it was checked (replaced by a symlink?): {cause}")]
    Changed { plugin: PathBuf, path: PathBuf, cause: String },
    #[error("refusing plugin {plugin}: {path} is not a regular file")]
    NotAFile { plugin: PathBuf, path: PathBuf },
}

/// Opens the plugin file `path` once, after judging every directory from `/` down to it and the
/// file itself (symlinks in `path` are resolved first, then the resolved path is walked without
/// following any). `insecure`: no judging, just the one open. Read the plugin only through the
/// file returned.
pub fn open(path: &Path, insecure: bool) -> Result<fs::File, TrustError> {
    let stat_error = |p: &Path, e: std::io::Error| TrustError::Stat { path: p.to_path_buf(), cause: e.to_string() };
    if insecure {
        let file = fs::File::open(path).map_err(|e| stat_error(path, e))?;
        let meta = file.metadata().map_err(|e| stat_error(path, e))?;
        if !meta.is_file() {
            return Err(TrustError::NotAFile { plugin: path.to_path_buf(), path: path.to_path_buf() });
        }
        return Ok(file);
    }
    let real = fs::canonicalize(path).map_err(|e| stat_error(path, e))?;
    open_real(path, &real, nix::unistd::geteuid().as_raw())
}

/// The walk of [`open`] over `real`, an absolute path without symlinks, `..` or `.`.
fn open_real(plugin: &Path, real: &Path, ours: u32) -> Result<fs::File, TrustError> {
    let names: Vec<&OsStr> = real
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    let Some((file_name, dirs)) = names.split_last() else {
        return Err(TrustError::NotAFile { plugin: plugin.to_path_buf(), path: real.to_path_buf() });
    };
    let changed = |p: &Path, e: std::io::Error| TrustError::Changed {
        plugin: plugin.to_path_buf(),
        path: p.to_path_buf(),
        cause: e.to_string(),
    };
    let mut at = PathBuf::from("/");
    let mut dir = sys::open_root_dir().map_err(|e| changed(&at, e))?;
    for depth in 0..=dirs.len() {
        // The last directory is the plugin's own: there, not even a sticky bit makes it safe.
        let own = depth == dirs.len();
        let what = if own { "its directory" } else { "the directory above it" };
        judge_fd(plugin, what, &at, &dir, ours, !own)?;
        if own {
            break;
        }
        at.push(dirs[depth]);
        dir = sys::open_dir_nofollow(dir.as_fd(), dirs[depth]).map_err(|e| changed(&at, e))?;
    }
    at.push(file_name);
    let file = sys::open_file_nofollow(dir.as_fd(), file_name).map_err(|e| changed(&at, e))?;
    let file = fs::File::from(file);
    let meta = file.metadata().map_err(|e| changed(&at, e))?;
    if !meta.is_file() {
        return Err(TrustError::NotAFile { plugin: plugin.to_path_buf(), path: at });
    }
    judge(plugin, "the file", &at, meta.mode(), meta.uid(), ours, false)?;
    Ok(file)
}

/// [`judge`] on what `fstat` says of an open directory.
fn judge_fd(
    plugin: &Path,
    what: &'static str,
    path: &Path,
    fd: &OwnedFd,
    ours: u32,
    sticky_ok: bool,
) -> Result<(), TrustError> {
    let meta = fs::File::from(
        fd.try_clone().map_err(|e| TrustError::Stat { path: path.to_path_buf(), cause: e.to_string() })?,
    )
    .metadata()
    .map_err(|e| TrustError::Stat { path: path.to_path_buf(), cause: e.to_string() })?;
    judge(plugin, what, path, meta.mode(), meta.uid(), ours, sticky_ok)
}

/// The verdict on one file or directory (pure, for the tests). `sticky_ok`: a directory with the
/// sticky bit may be writable by others (they cannot rename or remove what they do not own).
fn judge(
    plugin: &Path,
    what: &'static str,
    path: &Path,
    mode: u32,
    uid: u32,
    ours: u32,
    sticky_ok: bool,
) -> Result<(), TrustError> {
    let sticky = sticky_ok && mode & 0o1000 != 0;
    let by = if sticky {
        None
    } else if mode & 0o002 != 0 {
        Some("everyone")
    } else if mode & 0o020 != 0 {
        Some("its group")
    } else {
        None
    };
    if let Some(by) = by {
        let (plugin, path) = (plugin.to_path_buf(), path.to_path_buf());
        return Err(TrustError::Writable { plugin, what, path, by, mode: mode & 0o7777 });
    }
    if uid != 0 && uid != ours {
        return Err(TrustError::Owner { plugin: plugin.to_path_buf(), what, path: path.to_path_buf(), uid, ours });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    fn verdict(mode: u32, uid: u32) -> Result<(), TrustError> {
        judge(Path::new("/p/x.so"), "the file", Path::new("/p/x.so"), mode, uid, 1000, false)
    }

    #[test]
    fn owner_only_writable_files_of_root_or_us_pass() {
        assert!(verdict(0o100755, 0).is_ok());
        assert!(verdict(0o100644, 1000).is_ok());
        assert!(verdict(0o040700, 1000).is_ok());
    }

    #[test]
    fn group_or_world_writable_or_foreign_files_are_refused() {
        let e = verdict(0o100666, 1000).unwrap_err().to_string();
        assert!(e.contains("/p/x.so") && e.contains("writable by everyone") && e.contains("0666"), "{e}");
        assert!(e.contains("--insecure-plugins"), "{e}");
        assert!(verdict(0o100775, 0).unwrap_err().to_string().contains("writable by its group"));
        // A sticky world-writable directory (/tmp) still lets anyone add a plugin to it.
        assert!(verdict(0o041777, 0).is_err());
        let e = verdict(0o100755, 1234).unwrap_err().to_string();
        assert!(e.contains("owned by uid 1234"), "{e}");
    }

    #[test]
    fn a_sticky_directory_above_the_plugins_own_passes() {
        let above = |mode| judge(Path::new("/p/x.so"), "the directory above it", Path::new("/"), mode, 0, 1000, true);
        assert!(above(0o041777).is_ok());
        assert!(above(0o040777).is_err());
        assert!(above(0o040775).is_err());
        let foreign = judge(Path::new("/p/x.so"), "the directory above it", Path::new("/"), 0o041777, 1234, 1000, true);
        assert!(foreign.is_err(), "a stranger's directory is refused, sticky or not");
    }

    /// `TMP/host-trust-PID-NAME/a/plugins/x.so` (modes 0755, 0755, 0644); returns the tree's top.
    fn tree(name: &str) -> PathBuf {
        let top = std::env::temp_dir().join(format!("host-trust-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&top);
        fs::create_dir_all(top.join("a/plugins")).unwrap();
        for dir in [&top, &top.join("a"), &top.join("a/plugins")] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::write(top.join("a/plugins/x.so"), b"the checked bytes").unwrap();
        fs::set_permissions(top.join("a/plugins/x.so"), fs::Permissions::from_mode(0o644)).unwrap();
        top
    }

    fn read_all(mut file: fs::File) -> Vec<u8> {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn a_world_writable_real_file_is_refused() {
        let top = tree("file");
        let file = top.join("a/plugins/x.so");
        assert_eq!(read_all(open(&file, false).unwrap()), b"the checked bytes");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(open(&file, false), Err(TrustError::Writable { by: "everyone", what: "the file", .. })));
        assert!(open(&file, true).is_ok(), "--insecure-plugins opens it");
        fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn a_world_writable_directory_above_the_plugin_is_refused() {
        let top = tree("above");
        let file = top.join("a/plugins/x.so");
        fs::set_permissions(top.join("a"), fs::Permissions::from_mode(0o777)).unwrap();
        let e = open(&file, false).unwrap_err();
        assert!(
            matches!(&e, TrustError::Writable { what: "the directory above it", path, .. } if path.ends_with("a")),
            "{e}"
        );
        // Sticky, it cannot be used to swap `plugins`: accepted.
        fs::set_permissions(top.join("a"), fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(open(&file, false).is_ok());
        // The plugin's own directory gets no such leniency.
        fs::set_permissions(top.join("a/plugins"), fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(matches!(open(&file, false), Err(TrustError::Writable { what: "its directory", .. })));
        fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_after_resolving_is_refused() {
        let top = tree("swap");
        let real = fs::canonicalize(top.join("a/plugins/x.so")).unwrap();
        // What an attacker does between the path's resolution and the open: `plugins` becomes
        // a symlink to a directory of theirs holding their own x.so.
        fs::create_dir(top.join("evil")).unwrap();
        fs::write(top.join("evil/x.so"), b"evil").unwrap();
        fs::rename(top.join("a/plugins"), top.join("a/old")).unwrap();
        std::os::unix::fs::symlink(top.join("evil"), top.join("a/plugins")).unwrap();
        let e = open_real(&real, &real, 0).unwrap_err();
        assert!(matches!(&e, TrustError::Changed { path, .. } if path.ends_with("a/plugins")), "{e}");
        // The file itself swapped for a symlink: refused too.
        fs::remove_file(top.join("a/plugins")).unwrap();
        fs::rename(top.join("a/old"), top.join("a/plugins")).unwrap();
        fs::rename(&real, top.join("a/plugins/y.so")).unwrap();
        std::os::unix::fs::symlink(top.join("evil/x.so"), &real).unwrap();
        assert!(matches!(open_real(&real, &real, 0), Err(TrustError::Changed { .. })));
        fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn a_legitimate_symlink_is_resolved_before_the_walk() {
        let top = tree("link");
        std::os::unix::fs::symlink(top.join("a/plugins/x.so"), top.join("a/plugins/libx.so")).unwrap();
        assert_eq!(read_all(open(&top.join("a/plugins/libx.so"), false).unwrap()), b"the checked bytes");
        fs::remove_dir_all(&top).unwrap();
    }
}
