//! Static files under the configured root: mapping a request path to an open file without any
//! way out of the root, directories (redirect, `index.html`, listing), and content types.
//!
//! A path is refused (400) when it has a `..` segment (also percent-encoded), an encoded slash or
//! backslash (`%2F`, `%5C`), a NUL, a backslash, or a broken escape. A segment starting with a
//! dot (`/.git/config`, `/.env`) is a 404 unless `serve_dotfiles` (`/.well-known/` is always
//! served). What is left is opened **relative to the root's directory fd** with `openat2` and
//! `RESOLVE_BENEATH`: the kernel refuses any resolution that leaves the root, symlinks included,
//! at the moment of the open, so a symlink swapped in after a check cannot escape. Where the
//! kernel lacks `openat2` (before 5.6), each component is opened with `openat` and `O_NOFOLLOW`
//! (symlinks are then not followed at all). An escape answers the same 404 as a missing file.
//! A relative symlink that stays inside the root is followed; an absolute one is not (the kernel
//! refuses absolute symlinks under `RESOLVE_BENEATH`), even when it points inside.
//! The file served is the one opened: its metadata comes from `fstat` on that fd.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

/// The served files' root.
#[derive(Debug)]
pub struct Files {
    root: OwnedFd,
    serve_dotfiles: bool,
    autoindex: bool,
    /// False once the kernel said it has no `openat2`.
    has_openat2: AtomicBool,
}

/// What `fstat` says about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub len: u64,
    /// Modification time: seconds since the Unix epoch, and nanoseconds.
    pub mtime: u64,
    pub mtime_nsec: u32,
    pub ino: u64,
}

/// A regular file found under the root, open.
#[derive(Debug)]
pub struct Found {
    pub file: File,
    pub meta: Meta,
    /// Its path relative to the root (decoded), for the content type, siblings and logs.
    pub rel: Vec<u8>,
}

#[derive(Debug)]
pub enum Lookup {
    File(Found),
    /// A directory named without its trailing slash.
    Redirect,
    /// A directory without `index.html`, with `autoindex` on: its open fd.
    Listing(OwnedFd),
    NotFound,
    /// Not readable.
    Forbidden,
    /// The path itself is unacceptable.
    BadPath,
}

const OPEN_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::CLOEXEC).union(OFlags::NOCTTY).union(OFlags::NONBLOCK);

impl Files {
    /// `root` must name an existing directory; a relative one is taken from the worker's working
    /// directory at start.
    pub fn new(root: &str, serve_dotfiles: bool, autoindex: bool) -> Result<Self, String> {
        let fd = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| format!("could not open root {root:?} as a directory: {e}"))?;
        Ok(Files { root: fd, serve_dotfiles, autoindex, has_openat2: AtomicBool::new(true) })
    }

    /// Finds the file for `path` (the request target's path, without the query).
    pub fn lookup(&self, path: &[u8]) -> Lookup {
        let mut decoded = Vec::with_capacity(path.len());
        if decode_path(path, &mut decoded).is_err() {
            return Lookup::BadPath;
        }
        let mut rel = Vec::with_capacity(decoded.len());
        for segment in decoded.split(|&b| b == b'/').filter(|s| !s.is_empty() && *s != b".") {
            if segment[0] == b'.' && !self.serve_dotfiles && segment != b".well-known" {
                return Lookup::NotFound;
            }
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(segment);
        }
        let slash = path.ends_with(b"/");
        let fd = match self.open(&rel) {
            Ok(fd) => fd,
            Err(e) => return io_lookup(e),
        };
        let meta = match rustix::fs::fstat(&fd) {
            Ok(st) => st,
            Err(e) => return io_lookup(e),
        };
        match FileType::from_raw_mode(meta.st_mode) {
            FileType::RegularFile if slash => Lookup::NotFound,
            FileType::RegularFile => Lookup::File(Found { meta: meta_of(&meta), file: File::from(fd), rel }),
            FileType::Directory if !slash => Lookup::Redirect,
            FileType::Directory => match self.open_in(&fd, b"index.html") {
                Ok(index) => match rustix::fs::fstat(&index) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
                        rel.extend_from_slice(if rel.is_empty() { &b"index.html"[..] } else { b"/index.html" });
                        Lookup::File(Found { meta: meta_of(&st), file: File::from(index), rel })
                    }
                    Ok(_) => Lookup::NotFound,
                    Err(e) => io_lookup(e),
                },
                Err(rustix::io::Errno::NOENT) if self.autoindex => Lookup::Listing(fd),
                Err(e) => io_lookup(e),
            },
            _ => Lookup::NotFound,
        }
    }

    /// Opens a sibling of a found file (`app.js.gz` for `app.js`): a regular file, or nothing.
    pub fn sibling(&self, rel: &[u8], suffix: &str) -> Option<(File, Meta)> {
        let mut name = rel.to_vec();
        name.extend_from_slice(suffix.as_bytes());
        let fd = self.open(&name).ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        (FileType::from_raw_mode(st.st_mode) == FileType::RegularFile).then(|| (File::from(fd), meta_of(&st)))
    }

    /// The names in a listed directory (dotfiles left out unless served), sorted; directories
    /// end with `/`.
    pub fn list(&self, dir: &OwnedFd) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." || (name[0] == b'.' && !self.serve_dotfiles) {
                continue;
            }
            let mut name = String::from_utf8_lossy(name).into_owned();
            if entry.file_type() == FileType::Directory {
                name.push('/');
            }
            names.push(name);
        }
        names.sort();
        Ok(names)
    }

    /// Opens `rel` (no `..`, no empty segment) beneath the root.
    fn open(&self, rel: &[u8]) -> rustix::io::Result<OwnedFd> {
        match rel.is_empty() {
            true => rustix::fs::openat(&self.root, ".", OPEN_FLAGS | OFlags::DIRECTORY, Mode::empty()),
            false => self.open_in(&self.root, rel),
        }
    }

    fn open_in(&self, dir: &OwnedFd, rel: &[u8]) -> rustix::io::Result<OwnedFd> {
        let rel = OsStr::from_bytes(rel);
        if self.has_openat2.load(Ordering::Relaxed) {
            let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(dir, rel, OPEN_FLAGS, Mode::empty(), resolve) {
                Err(rustix::io::Errno::NOSYS) => self.has_openat2.store(false, Ordering::Relaxed),
                // openat2 restarts on a concurrent rename under RESOLVE_BENEATH: try once more.
                Err(rustix::io::Errno::AGAIN) => {
                    return rustix::fs::openat2(dir, rel, OPEN_FLAGS, Mode::empty(), resolve);
                }
                other => return other,
            }
        }
        open_walk(dir, Path::new(rel))
    }
}

/// The fallback without `openat2`: one `openat` per component, none of them a symlink.
fn open_walk(dir: &OwnedFd, rel: &Path) -> rustix::io::Result<OwnedFd> {
    let parts: Vec<&OsStr> = rel.iter().collect();
    let mut current: Option<OwnedFd> = None;
    for (i, part) in parts.iter().enumerate() {
        let at = current.as_ref().unwrap_or(dir);
        let last = i + 1 == parts.len();
        let flags = match last {
            true => OPEN_FLAGS | OFlags::NOFOLLOW,
            false => OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        };
        current = Some(rustix::fs::openat(at, *part, flags, Mode::empty())?);
    }
    current.ok_or(rustix::io::Errno::NOENT)
}

fn meta_of(st: &rustix::fs::Stat) -> Meta {
    Meta {
        len: u64::try_from(st.st_size).unwrap_or(0),
        mtime: u64::try_from(st.st_mtime).unwrap_or(0),
        mtime_nsec: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
        ino: st.st_ino,
    }
}

fn io_lookup(e: rustix::io::Errno) -> Lookup {
    match e {
        rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => Lookup::Forbidden,
        // Missing, not a directory, a symlink leading out of the root (EXDEV) or not followed
        // (ELOOP): all look the same from outside.
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

/// The `Content-Type` for a file, by extension (`mime_guess`), with `charset=utf-8` for text.
pub fn content_type(rel: &[u8]) -> String {
    let path = Path::new(OsStr::from_bytes(rel));
    let mime = mime_guess::from_path(path).first_raw().unwrap_or("application/octet-stream");
    match is_text(mime) {
        true => format!("{mime}; charset=utf-8"),
        false => mime.to_string(),
    }
}

fn is_text(mime: &str) -> bool {
    mime.starts_with("text/") || mime == "application/javascript"
}

/// Types worth compressing (text, scripts, JSON, XML, SVG, wasm).
pub fn compressible(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or_default();
    is_text(mime)
        || matches!(mime, "application/json" | "application/xml" | "image/svg+xml" | "application/wasm")
        || mime.ends_with("+json")
        || mime.ends_with("+xml")
}

#[cfg(test)]
#[path = "files_tests.rs"]
pub(crate) mod tests;
