//! Unit tests of static file lookup and path safety, on a temporary tree.

use super::*;

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
    std::os::unix::fs::symlink(root.join("sub/a.txt"), root.join("inside.txt")).unwrap();
    (tmp, root)
}

fn found(l: Lookup) -> FileInfo {
    match l {
        Lookup::Found(info) => info,
        other => panic!("not found: {other:?}"),
    }
}

#[test]
fn serves_files_and_indexes() {
    let (_tmp, root) = tree("serve");
    let files = Files::new(root.to_str().unwrap()).unwrap();
    let index = found(files.lookup(b"/"));
    assert_eq!(index.len, 11);
    assert_eq!(index.content_type, "text/html; charset=utf-8");
    assert!(index.modified > 0);
    assert_eq!(found(files.lookup(b"/style.css")).content_type, "text/css; charset=utf-8");
    assert_eq!(found(files.lookup(b"/sub/a.txt")).len, 1);
    assert_eq!(found(files.lookup(b"/sub")).len, 3);
    assert_eq!(found(files.lookup(b"/sub/")).len, 3);
    assert_eq!(found(files.lookup(b"/./sub//a.txt")).len, 1);
    assert_eq!(found(files.lookup(b"/s%75b/a.txt")).len, 1);
    // A symlink that stays inside the root is fine.
    assert_eq!(found(files.lookup(b"/inside.txt")).len, 1);
    assert_eq!(files.lookup(b"/missing"), Lookup::NotFound);
    assert_eq!(files.lookup(b"/empty/"), Lookup::NotFound);
    assert_eq!(files.lookup(b"/sub/a.txt/x"), Lookup::NotFound);

    let mut out = b"head".to_vec();
    read_into(&found(files.lookup(b"/style.css")), &mut out).unwrap();
    assert_eq!(out, b"headbody{}");
}

#[test]
fn no_way_out_of_the_root() {
    let (_tmp, root) = tree("escape");
    let files = Files::new(root.to_str().unwrap()).unwrap();
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
        assert_eq!(files.lookup(path), Lookup::BadPath, "{}", String::from_utf8_lossy(path));
    }
    assert_eq!(files.lookup(b"/out/secret"), Lookup::Forbidden);
    assert_eq!(files.lookup(b"/leak.txt"), Lookup::Forbidden);
    assert_eq!(files.lookup(b"/out/"), Lookup::Forbidden);
}

#[test]
fn index_html_symlinked_out_is_refused() {
    let (tmp, root) = tree("index-out");
    let dir = root.join("d");
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink(tmp.0.join("outside/secret"), dir.join("index.html")).unwrap();
    let files = Files::new(root.to_str().unwrap()).unwrap();
    assert_eq!(files.lookup(b"/d/"), Lookup::Forbidden);
}

#[test]
fn root_must_exist() {
    let tmp = TempDir::new("noroot");
    assert!(Files::new(tmp.0.join("nope").to_str().unwrap()).is_err());
    fs::write(tmp.0.join("f"), "").unwrap();
    assert!(Files::new(tmp.0.join("f").to_str().unwrap()).is_err());
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
        ("a.js", "text/javascript; charset=utf-8"),
        ("a.json", "application/json"),
        ("a.txt", "text/plain; charset=utf-8"),
        ("a.png", "image/png"),
        ("a.jpg", "image/jpeg"),
        ("a.jpeg", "image/jpeg"),
        ("a.gif", "image/gif"),
        ("a.svg", "image/svg+xml"),
        ("a.ico", "image/x-icon"),
        ("a.wasm", "application/wasm"),
        ("a.pdf", "application/pdf"),
        ("a.bin", "application/octet-stream"),
        ("Makefile", "application/octet-stream"),
        (".html", "application/octet-stream"),
    ] {
        assert_eq!(content_type(Path::new(name)), ct, "{name}");
    }
}
