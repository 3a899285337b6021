//! A private plugin directory for one test (`--plugin-dir`), and the ways a user puts a plugin
//! file in place: `mv` (a new inode, renamed over the old name) and `cp` (the old file truncated
//! and rewritten in place, docs/architecture.md pitfall 1).
//!
//! New versions of a plugin are content variants of a real one: the same file with a trailer
//! appended. The loader ignores bytes after the ELF sections, so a variant runs the same code,
//! but its content hash (what `host status` shows) is new: `bench/reload.sh` does the same.

use std::fs;
use std::path::{Path, PathBuf};

use crate::TempDir;

/// `root/plugins` (the watched directory) and `root/staging` (where files are written before
/// they are moved in: a move from another folder, which notify reports as a bare rename-to).
#[derive(Debug)]
pub struct PluginDir {
    root: TempDir,
}

impl PluginDir {
    pub fn new() -> PluginDir {
        let root = TempDir::new();
        for sub in ["plugins", "staging"] {
            fs::create_dir_all(root.join(sub)).unwrap_or_else(|e| panic!("could not create {sub}/: {e}"));
        }
        PluginDir { root }
    }

    /// The test's temp dir that holds `plugins/` (a config file may live here too).
    pub fn root(&self) -> &TempDir {
        &self.root
    }

    /// The watched directory, absolute.
    pub fn path(&self) -> PathBuf {
        self.root.join("plugins")
    }

    /// `--plugin-dir` for this directory.
    pub fn arg(&self) -> String {
        self.path().display().to_string()
    }

    /// `plugins/NAME`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    fn stage(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let staged = self.root.join("staging").join(name);
        fs::write(&staged, bytes).unwrap_or_else(|e| panic!("could not write {}: {e}", staged.display()));
        staged
    }

    /// `mv staging/NAME plugins/NAME`: the new file appears at once, complete.
    pub fn mv(&self, name: &str, bytes: &[u8]) {
        let staged = self.stage(name, bytes);
        let dest = self.file(name);
        fs::rename(&staged, &dest).unwrap_or_else(|e| panic!("could not move a file to {}: {e}", dest.display()));
    }

    /// `cp staging/NAME plugins/NAME`: like cp, opens the existing file with `O_TRUNC` and writes
    /// into the same inode (a process that mapped it sees it change under its feet).
    pub fn cp(&self, name: &str, bytes: &[u8]) {
        let staged = self.stage(name, bytes);
        let dest = self.file(name);
        fs::copy(&staged, &dest).unwrap_or_else(|e| panic!("could not copy a file to {}: {e}", dest.display()));
    }

    /// `rm plugins/NAME`.
    pub fn rm(&self, name: &str) {
        let path = self.file(name);
        fs::remove_file(&path).unwrap_or_else(|e| panic!("could not remove {}: {e}", path.display()));
    }
}

impl Default for PluginDir {
    fn default() -> Self {
        PluginDir::new()
    }
}

/// The bytes of plugin file `base` with a trailer naming `tag`: a new version of the plugin.
pub fn variant(base: &Path, tag: &str) -> Vec<u8> {
    let mut bytes = fs::read(base).unwrap_or_else(|e| panic!("could not read {}: {e}", base.display()));
    bytes.extend_from_slice(format!("\nhost-tests variant {tag}\n").as_bytes());
    bytes
}

/// The content hash the host shows for a plugin file (`hash=` in the log, HASH in `status`):
/// the first 12 hex digits of its 64-bit FNV-1a.
pub fn short_hash(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")[..12].to_string()
}

/// [`short_hash`] of the file at `path`.
pub fn file_hash(path: &Path) -> String {
    short_hash(&fs::read(path).unwrap_or_else(|e| panic!("could not read {}: {e}", path.display())))
}
