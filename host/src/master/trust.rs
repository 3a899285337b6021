//! Whether a plugin file may be trusted, the way sshd's `StrictModes` judges `authorized_keys`:
//! a plugin runs with the service's privileges, so a file (or the directory holding it) that
//! someone other than its owner may write, or that a stranger owns, would let that someone run
//! code in the server. Such a file is refused unless `--insecure-plugins` says otherwise.
//! Checked at start and for every candidate of a reload.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
}

/// Checks the plugin file `path` (after following symlinks) and the directory that holds it.
pub fn check(path: &Path) -> Result<(), TrustError> {
    let stat_error = |p: &Path, e: std::io::Error| TrustError::Stat { path: p.to_path_buf(), cause: e.to_string() };
    let real = std::fs::canonicalize(path).map_err(|e| stat_error(path, e))?;
    let ours = nix::unistd::geteuid().as_raw();
    let file = std::fs::metadata(&real).map_err(|e| stat_error(&real, e))?;
    judge(path, "the file", &real, file.mode(), file.uid(), ours)?;
    if let Some(dir) = real.parent() {
        let meta = std::fs::metadata(dir).map_err(|e| stat_error(dir, e))?;
        judge(path, "its directory", dir, meta.mode(), meta.uid(), ours)?;
    }
    Ok(())
}

/// The verdict on one file or directory (pure, for the tests).
fn judge(plugin: &Path, what: &'static str, path: &Path, mode: u32, uid: u32, ours: u32) -> Result<(), TrustError> {
    let by = if mode & 0o002 != 0 {
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

    fn verdict(mode: u32, uid: u32) -> Result<(), TrustError> {
        judge(Path::new("/p/x.so"), "the file", Path::new("/p/x.so"), mode, uid, 1000)
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
        // A sticky world-writable directory (/tmp) still lets anyone add a plugin.
        assert!(verdict(0o041777, 0).is_err());
        let e = verdict(0o100755, 1234).unwrap_err().to_string();
        assert!(e.contains("owned by uid 1234"), "{e}");
    }

    #[test]
    fn a_world_writable_real_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("host-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("x.so");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(check(&file), Ok(()));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(check(&file), Err(TrustError::Writable { by: "everyone", .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
