//! Static files under the configured root: mapping a request path to a file without any way out
//! of the root, content types, and reading the file.
//!
//! A path is refused (400) when it has a `..` segment (also percent-encoded), an encoded slash or
//! backslash (`%2F`, `%5C`), a NUL, a backslash, or a broken escape. What is left is joined to
//! the canonical root and canonicalized, and the result must still lie under the root: a symlink
//! leading out is refused (403). A directory serves its `index.html`, checked the same way; there
//! are no directory listings. Files are read with blocking `std::fs` calls in the worker's event
//! loop: fine for small files on a local disk, a known limit otherwise.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// The served files' root.
#[derive(Debug, Clone)]
pub struct Files {
    root: PathBuf,
}

/// A file found under the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub path: PathBuf,
    pub len: u64,
    /// Modification time, seconds since the Unix epoch.
    pub modified: u64,
    pub content_type: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(FileInfo),
    NotFound,
    /// Resolves outside the root, or not readable.
    Forbidden,
    /// The path itself is unacceptable.
    BadPath,
}

impl Files {
    /// `root` must name an existing directory; a relative one is taken from the worker's working
    /// directory at start.
    pub fn new(root: &str) -> Result<Self, String> {
        let root = fs::canonicalize(root).map_err(|e| format!("could not open root {root:?}: {e}"))?;
        if !root.is_dir() {
            return Err(format!("root {} is not a directory", root.display()));
        }
        Ok(Files { root })
    }

    /// Finds the file for `path` (the request target's path, without the query).
    pub fn lookup(&self, path: &[u8]) -> Lookup {
        let mut decoded = Vec::with_capacity(path.len());
        if decode_path(path, &mut decoded).is_err() {
            return Lookup::BadPath;
        }
        let mut full = self.root.clone();
        for segment in decoded.split(|&b| b == b'/') {
            if !segment.is_empty() && segment != b"." {
                full.push(OsStr::from_bytes(segment));
            }
        }
        let (path, meta) = match self.resolve(&full) {
            Ok(found) => found,
            Err(lookup) => return lookup,
        };
        let (path, meta) = if meta.is_dir() {
            match self.resolve(&path.join("index.html")) {
                Ok(found) => found,
                Err(lookup) => return lookup,
            }
        } else {
            (path, meta)
        };
        if !meta.is_file() {
            return Lookup::NotFound;
        }
        let modified = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
        Lookup::Found(FileInfo { content_type: content_type(&path), len: meta.len(), modified, path })
    }

    /// Canonicalizes `path` and checks that it is still under the root.
    fn resolve(&self, path: &Path) -> Result<(PathBuf, fs::Metadata), Lookup> {
        let real = fs::canonicalize(path).map_err(|e| io_lookup(&e))?;
        if !real.starts_with(&self.root) {
            return Err(Lookup::Forbidden);
        }
        let meta = fs::metadata(&real).map_err(|e| io_lookup(&e))?;
        Ok((real, meta))
    }
}

fn io_lookup(e: &io::Error) -> Lookup {
    match e.kind() {
        io::ErrorKind::PermissionDenied => Lookup::Forbidden,
        _ => Lookup::NotFound,
    }
}

/// A request path [`decode_path`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsafePath;

/// Percent-decodes a request path into `out`, refusing what could name something outside the
/// root or something else than intended (see the module comment).
pub fn decode_path(path: &[u8], out: &mut Vec<u8>) -> Result<(), UnsafePath> {
    if path.first() != Some(&b'/') {
        return Err(UnsafePath);
    }
    let mut i = 0;
    while i < path.len() {
        let b = match path[i] {
            b'%' => {
                let hi = path.get(i + 1).and_then(|&h| (h as char).to_digit(16));
                let lo = path.get(i + 2).and_then(|&h| (h as char).to_digit(16));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(UnsafePath);
                };
                i += 2;
                match (hi * 16 + lo) as u8 {
                    b'/' | b'\\' | 0 => return Err(UnsafePath),
                    b => b,
                }
            }
            b'\\' | 0 => return Err(UnsafePath),
            b => b,
        };
        out.push(b);
        i += 1;
    }
    if out.split(|&b| b == b'/').any(|s| s == b"..") {
        return Err(UnsafePath);
    }
    Ok(())
}

/// Reads exactly `info.len` bytes of the file, appending them to `out`. A file that shrank
/// since it was looked up is an error (the `Content-Length` already written would be wrong).
pub fn read_into(info: &FileInfo, out: &mut Vec<u8>) -> io::Result<()> {
    let file = File::open(&info.path)?;
    let before = out.len();
    out.reserve(usize::try_from(info.len).unwrap_or(usize::MAX));
    file.take(info.len).read_to_end(out)?;
    if (out.len() - before) as u64 != info.len {
        out.truncate(before);
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank"));
    }
    Ok(())
}

/// The `Content-Type` for a file, by extension.
pub fn content_type(path: &Path) -> &'static str {
    let ext = path.extension().and_then(OsStr::to_str).unwrap_or_default();
    match ext.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        "webp" => "image/webp",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
#[path = "files_tests.rs"]
pub(crate) mod tests;
