//! Unit tests of static file lookup and path safety, on a temporary tree.

use super::*;
use std::fs;
use std::path::PathBuf;
use std::time::UNIX_EPOCH;

/// A unique directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "host-http-{tag}-{}-{n}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
        ));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// root/ with index.html, style.css, sub/a.txt, sub/index.html, empty/, and outside/secret
/// next to root, reachable through the symlinks root/out (a dir) and root/leak.txt (a file).
pub fn tree(tag: &str) -> (TempDir, PathBuf) {
    let tmp = TempDir::new(tag);
    let root = tmp.0.join("root");
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::create_dir_all(tmp.0.join("outside")).unwrap();
    fs::write(root.join("index.html"), "<h1>hi</h1>").unwrap();
    fs::write(root.join("style.css"), "body{}").unwrap();
    fs::write(root.join("sub/a.txt"), "a").unwrap();
    fs::write(root.join("sub/index.html"), "sub").unwrap();
    fs::write(tmp.0.join("outside/secret"), "secret").unwrap();
    std::os::unix::fs::symlink(tmp.0.join("outside"), root.join("out")).unwrap();
    std::os::unix::fs::symlink(tmp.0.join("outside/secret"), root.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink("sub/a.txt", root.join("inside.txt")).unwrap();
    std::os::unix::fs::symlink(root.join("sub/a.txt"), root.join("absolute.txt")).unwrap();
    (tmp, root)
}

fn found(l: Lookup) -> Found {
    match l {
        Lookup::File(f) => f,
        other => panic!("not found: {other:?}"),
    }
}

fn is(l: Lookup, what: &str) -> bool {
    let got = match l {
        Lookup::File(_) => "file",
        Lookup::Redirect => "redirect",
        Lookup::Listing(_) => "listing",
        Lookup::NotFound => "404",
        Lookup::Forbidden => "403",
        Lookup::BadPath => "400",
    };
    assert_eq!(got, what);
    true
}

#[test]
fn serves_files_and_indexes() {
    let (_tmp, root) = tree("serve");
    let files = Files::new(root.to_str().unwrap(), false, false).unwrap();
    let index = found(files.lookup(b"/"));
    assert_eq!(index.meta.len, 11);
    assert_eq!(index.rel, b"index.html");
    assert!(index.meta.mtime > 0 && index.meta.ino > 0);
    assert_eq!(found(files.lookup(b"/sub/a.txt")).meta.len, 1);
    assert_eq!(found(files.lookup(b"/sub/")).rel, b"sub/index.html");
    assert_eq!(found(files.lookup(b"/./sub//a.txt")).meta.len, 1);
    assert_eq!(found(files.lookup(b"/s%75b/a.txt")).meta.len, 1);
    // A relative symlink that stays inside the root is fine; an absolute one is not followed.
    assert_eq!(found(files.lookup(b"/inside.txt")).meta.len, 1);
    is(files.lookup(b"/absolute.txt"), "404");
    is(files.lookup(b"/sub"), "redirect");
    is(files.lookup(b"/missing"), "404");
    is(files.lookup(b"/empty/"), "404");
    is(files.lookup(b"/sub/a.txt/x"), "404");
    // A file named with a trailing slash does not exist.
    is(files.lookup(b"/style.css/"), "404");
    let mut buf = String::new();
    std::io::Read::read_to_string(&mut found(files.lookup(b"/style.css")).file, &mut buf).unwrap();
    assert_eq!(buf, "body{}");
}

#[test]
fn listings_only_when_asked() {
    let (_tmp, root) = tree("list");
    fs::write(root.join("empty/.hidden"), "").unwrap();
    fs::write(root.join("empty/b <&>.txt"), "").unwrap();
    fs::create_dir(root.join("empty/d")).unwrap();
    let files = Files::new(root.to_str().unwrap(), false, true).unwrap();
    let Lookup::Listing(fd) = files.lookup(b"/empty/") else { panic!("no listing") };
    assert_eq!(files.list(&fd).unwrap(), ["b <&>.txt", "d/"]);
}

#[test]
fn dotfiles_are_404_unless_served() {
    let (_tmp, root) = tree("dot");
    fs::create_dir_all(root.join(".git")).unwrap();
    fs::write(root.join(".git/config"), "x").unwrap();
    fs::write(root.join(".env"), "x").unwrap();
    fs::create_dir_all(root.join(".well-known")).unwrap();
    fs::write(root.join(".well-known/x"), "x").unwrap();
    let files = Files::new(root.to_str().unwrap(), false, false).unwrap();
    for path in [&b"/.git/config"[..], b"/.env", b"/%2eenv", b"/sub/../.env"] {
        assert!(matches!(files.lookup(path), Lookup::NotFound | Lookup::BadPath), "{path:?}");
    }
    found(files.lookup(b"/.well-known/x"));
    let files = Files::new(root.to_str().unwrap(), true, false).unwrap();
    found(files.lookup(b"/.env"));
}

#[test]
fn no_way_out_of_the_root() {
    let (_tmp, root) = tree("escape");
    let files = Files::new(root.to_str().unwrap(), false, false).unwrap();
    for path in [
        &b"/../outside/secret"[..],
        b"/../etc/passwd",
        b"/%2e%2e/outside/secret",
        b"/%2E%2E/outside/secret",
        b"/sub/../../outside/secret",
        b"/sub/..",
        b"/a/%2F../outside/secret",
        b"/a/%2f..%2foutside",
        b"/..%5C..%5Coutside",
        b"/..\\outside",
        b"/a%00.txt",
        b"/a%0",
        b"/a%zz",
        b"sub/a.txt",
        b"",
    ] {
        is(files.lookup(path), "400");
    }
    // Out through a symlink: the same 404 as a missing file.
    is(files.lookup(b"/out/secret"), "404");
    is(files.lookup(b"/leak.txt"), "404");
    is(files.lookup(b"/out/"), "404");
    // The fallback without openat2 refuses symlinks out as well.
    files.has_openat2.store(false, Ordering::Relaxed);
    is(files.lookup(b"/out/secret"), "404");
    is(files.lookup(b"/leak.txt"), "404");
    found(files.lookup(b"/sub/a.txt"));
}

#[test]
fn a_symlink_swapped_in_after_the_lookup_changes_nothing() {
    let (tmp, root) = tree("swap");
    let files = Files::new(root.to_str().unwrap(), false, false).unwrap();
    // The file served is the one opened: replacing the path by a symlink out afterwards does
    // not redirect the read.
    let mut f = found(files.lookup(b"/style.css"));
    fs::remove_file(root.join("style.css")).unwrap();
    std::os::unix::fs::symlink(tmp.0.join("outside/secret"), root.join("style.css")).unwrap();
    let mut buf = String::new();
    std::io::Read::read_to_string(&mut f.file, &mut buf).unwrap();
    assert_eq!(buf, "body{}");
    is(files.lookup(b"/style.css"), "404");
    // A directory swapped for a symlink out is refused by the kernel at the open.
    fs::rename(root.join("sub"), tmp.0.join("sub-moved")).unwrap();
    std::os::unix::fs::symlink(tmp.0.join("outside"), root.join("sub")).unwrap();
    is(files.lookup(b"/sub/secret"), "404");
}

#[test]
fn index_html_symlinked_out_is_refused() {
    let (tmp, root) = tree("index-out");
    let dir = root.join("d");
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink(tmp.0.join("outside/secret"), dir.join("index.html")).unwrap();
    let files = Files::new(root.to_str().unwrap(), false, false).unwrap();
    is(files.lookup(b"/d/"), "404");
}

#[test]
fn root_must_exist() {
    let tmp = TempDir::new("noroot");
    assert!(Files::new(tmp.0.join("nope").to_str().unwrap(), false, false).is_err());
    fs::write(tmp.0.join("f"), "").unwrap();
    assert!(Files::new(tmp.0.join("f").to_str().unwrap(), false, false).is_err());
}

#[test]
fn decodes_paths() {
    let mut out = Vec::new();
    decode_path(b"/a%20b/%C3%A9", &mut out).unwrap();
    assert_eq!(out, "/a b/é".as_bytes());
    out.clear();
    // A literal "..." or "..x" is a file name, not a way up.
    decode_path(b"/.../..x/x..", &mut out).unwrap();
    assert_eq!(out, b"/.../..x/x..");
}

#[test]
fn content_types() {
    for (name, ct) in [
        ("a.html", "text/html; charset=utf-8"),
        ("a.HTM", "text/html; charset=utf-8"),
        ("a.css", "text/css; charset=utf-8"),
        ("a.txt", "text/plain; charset=utf-8"),
        ("a.json", "application/json"),
        ("a.png", "image/png"),
        ("a.jpg", "image/jpeg"),
        ("a.svg", "image/svg+xml"),
        ("a.wasm", "application/wasm"),
        ("a.wav", "audio/wav"),
        ("a.bin", "application/octet-stream"),
        ("Makefile", "application/octet-stream"),
    ] {
        assert_eq!(content_type(name.as_bytes()), ct, "{name}");
    }
    assert!(content_type(b"a.js").contains("javascript"));
    assert!(compressible(&content_type(b"a.js")) && compressible("image/svg+xml"));
    assert!(!compressible("image/png"));
}
