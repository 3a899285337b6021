//! `host plugin new NAME`: writes a plugin crate that builds and serves at once, from the
//! templates in `host/templates/` (one `src/lib.rs` per protocol, one `Cargo.toml` for a member
//! of this workspace and one for a crate of its own).
//!
//! Inside the host's workspace (the current directory is at or below a `Cargo.toml` whose
//! `[workspace]` members include `host`) the crate is `plugins/NAME`, added to the workspace's
//! `members` and `default-members` with its formatting kept. Elsewhere it is `DIR/NAME`, a
//! workspace of its own that depends on this host's `plugin-api` source by path when it can be
//! found, else on the published version. Nothing is left behind when any step fails.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use clap::ValueEnum;

use crate::plugin;

/// Set to the directory of the host's source (the workspace with `plugin-api/`) to make
/// standalone crates depend on it by path; set but empty: use the published `plugin-api`.
pub const SOURCE_ENV: &str = "HOST_SOURCE_DIR";

/// The framing of a new plugin's template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Template {
    /// Lines: every `\n`-terminated line is a message (Workerman's Text).
    Text,
    /// A 4-byte big-endian length, then the payload.
    Frame,
    /// A minimal HTTP/1.1 server (keep-alive, `Content-Length` bodies).
    Http,
    /// WebSocket on the `websocket-core` library (needs its source).
    Websocket,
}

impl Template {
    fn source(self) -> &'static str {
        match self {
            Template::Text => include_str!("../templates/text.rs"),
            Template::Frame => include_str!("../templates/frame.rs"),
            Template::Http => include_str!("../templates/http.rs"),
            Template::Websocket => include_str!("../templates/websocket.rs"),
        }
    }

    fn summary(self) -> &'static str {
        match self {
            Template::Text => "A host plugin: a line protocol that echoes every line",
            Template::Frame => "A host plugin: a length-prefixed protocol that echoes every message",
            Template::Http => "A host plugin: a minimal HTTP/1.1 server that echoes request bodies",
            Template::Websocket => "A host plugin: a WebSocket server that echoes every message",
        }
    }

    /// A command that talks to the plugin once it runs on port 7000.
    fn try_command(self) -> &'static str {
        match self {
            Template::Text => "echo hello | nc -q1 127.0.0.1 7000",
            Template::Frame => r"printf '\0\0\0\5hello' | nc -q1 127.0.0.1 7000 | od -c",
            Template::Http => "curl --data-binary 'echo me' http://127.0.0.1:7000/",
            Template::Websocket => "any WebSocket client on ws://127.0.0.1:7000/",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("invalid plugin name `{name}`: {why}")]
    InvalidName { name: String, why: String },
    #[error("the name `{name}` is already used by {by}")]
    Taken { name: String, by: String },
    #[error("{} already exists", .0.display())]
    Exists(PathBuf),
    #[error(
        "the websocket template is not available here yet: it needs the source of websocket-core, \
         which is not published (run `host plugin new` inside the host's workspace, or set {SOURCE_ENV})"
    )]
    WebSocketUnavailable,
    #[error("{SOURCE_ENV}={} is not the host's source: it has no plugin-api/Cargo.toml", .0.display())]
    BadSource(PathBuf),
    #[error("could not write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("could not add the plugin to {}: {reason}", path.display())]
    Manifest { path: PathBuf, reason: String },
}

/// The host's workspace, found above the current directory.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
    /// The text of its `Cargo.toml`.
    pub manifest: String,
    /// Its `members`, as written.
    pub members: Vec<String>,
}

/// What `host plugin new` was asked.
#[derive(Debug, Clone)]
pub struct Request {
    pub name: String,
    pub template: Template,
    /// Where a standalone crate goes (`DIR/NAME`); given inside the workspace, it makes one too.
    pub dir: Option<PathBuf>,
}

/// Checks `name` as a cargo package name whose library (`-` → `_`) is the plugin's name.
pub fn check_name(name: &str) -> Result<(), ScaffoldError> {
    let invalid = |why: &str| Err(ScaffoldError::InvalidName { name: name.to_string(), why: why.to_string() });
    const RUST_KEYWORDS: &[&str] = &[
        "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate", "do", "dyn",
        "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "macro",
        "match", "mod", "move", "mut", "override", "priv", "pub", "ref", "return", "self", "static", "struct", "super",
        "trait", "true", "try", "type", "typeof", "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
    ];
    // Rust's own crates, cargo's directories in target/, and the crates a plugin depends on.
    const RESERVED: &[&str] = &[
        "std",
        "core",
        "alloc",
        "proc_macro",
        "test",
        "build",
        "deps",
        "examples",
        "incremental",
        "host",
        "plugin_api",
        "abi_stable",
        "websocket_core",
    ];
    let Some(first) = name.chars().next() else {
        return invalid("it is empty");
    };
    if name.len() > 64 {
        return invalid("it is longer than 64 characters");
    }
    if !first.is_ascii_lowercase() {
        return invalid("it must start with a lowercase ASCII letter");
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_')) {
        return invalid(&format!("{c:?} is not allowed (lowercase ASCII letters, digits, `-` and `_` are)"));
    }
    let lib = lib_name(name);
    if RUST_KEYWORDS.contains(&lib.as_str()) {
        return invalid("it is a Rust keyword");
    }
    if RESERVED.contains(&lib.as_str()) {
        return invalid("it is reserved (a Rust, cargo or host crate or directory)");
    }
    Ok(())
}

/// The plugin's library name, which is also its name for `--plugin`.
pub fn lib_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The struct the template declares: `my-proto` → `MyProto`; `…Plugin` when that would clash
/// with a name the template uses.
fn type_name(name: &str) -> String {
    let camel: String = name
        .split(['-', '_'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars.next().map(|c| c.to_ascii_uppercase()).into_iter().chain(chars).collect::<String>()
        })
        .collect();
    const USED: &[&str] = &[
        "Self",
        "Conn",
        "ConnError",
        "ConnId",
        "ConnMap",
        "Frame",
        "Handler",
        "Host",
        "Message",
        "Protocol",
        "WebSocket",
        "WorkerInfo",
        "Ws",
        "Vec",
        "String",
        "Option",
        "Result",
        "Some",
        "None",
        "Ok",
        "Err",
        "Box",
    ];
    if USED.contains(&camel.as_str()) {
        format!("{camel}Plugin")
    } else {
        camel
    }
}

/// The host's workspace at or above `start`: the nearest `Cargo.toml` with a `[workspace]` table,
/// if its members include `host`. `None` when there is none, or when the nearest is another one.
pub fn find_workspace(start: &Path) -> Option<Workspace> {
    for dir in start.ancestors() {
        let path = dir.join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let Ok(table) = text.parse::<toml::Table>() else { continue };
        let Some(workspace) = table.get("workspace").and_then(|w| w.as_table()) else { continue };
        let members: Vec<String> = workspace
            .get("members")
            .and_then(|m| m.as_array())
            .map(|m| m.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default();
        if !members.iter().any(|m| m == "host") {
            return None;
        }
        return Some(Workspace { root: dir.to_path_buf(), manifest: text, members });
    }
    None
}

/// The host's source directory (with `plugin-api/`) for standalone crates: `HOST_SOURCE_DIR`,
/// else the workspace this binary was built from, if it is still there.
fn host_source() -> Result<Option<PathBuf>, ScaffoldError> {
    let has_api = |dir: &Path| dir.join("plugin-api/Cargo.toml").is_file();
    match std::env::var_os(SOURCE_ENV) {
        Some(dir) if dir.is_empty() => Ok(None),
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            if has_api(&dir) {
                Ok(Some(dir))
            } else {
                Err(ScaffoldError::BadSource(dir))
            }
        }
        None => Ok(Path::new(env!("CARGO_MANIFEST_DIR")).parent().filter(|d| has_api(d)).map(Path::to_path_buf)),
    }
}

/// The `plugin-api` version this host speaks.
fn api_version() -> &'static str {
    use abi_stable::library::RootModule as _;
    plugin_api::abi::PluginModRef::VERSION_STRINGS.version.as_str()
}

/// Names already taken, each with who took it: the members of `root`'s workspace (package,
/// library and directory names) and the plugin files in the host's default plugin directories.
fn taken_names(root: Option<&Path>, members: &[String]) -> Vec<(String, String)> {
    let mut taken = Vec::new();
    if let Some(root) = root {
        for member in members {
            let by = format!("the workspace member {member}");
            let dir = root.join(member);
            if let Some(base) = dir.file_name() {
                taken.push((base.to_string_lossy().into_owned(), by.clone()));
            }
            let Ok(text) = std::fs::read_to_string(dir.join("Cargo.toml")) else { continue };
            let Ok(manifest) = text.parse::<toml::Table>() else { continue };
            let name = |table: &str| manifest.get(table).and_then(|t| t.get("name")).and_then(|n| n.as_str());
            taken.extend([name("package"), name("lib")].into_iter().flatten().map(|n| (n.to_string(), by.clone())));
        }
    }
    for dir in plugin::default_dirs() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = file.strip_suffix(".so") {
                let by = format!("the plugin {}", dir.join(&file).display());
                taken.push((stem.strip_prefix("lib").unwrap_or(stem).to_string(), by));
            }
        }
    }
    taken
}

fn check_free(name: &str, taken: &[(String, String)]) -> Result<(), ScaffoldError> {
    let lib = lib_name(name);
    match taken.iter().find(|(t, _)| lib_name(t) == lib) {
        Some((_, by)) => Err(ScaffoldError::Taken { name: name.to_string(), by: by.clone() }),
        None => Ok(()),
    }
}

/// Adds `member` to the workspace's `members` and (when the manifest has them) `default-members`,
/// after the last `plugins/…` entry (else at the end), formatted as its neighbours are.
pub fn add_member(manifest: &str, member: &str) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = manifest.parse().map_err(|e| format!("{e}"))?;
    let workspace =
        doc.get_mut("workspace").and_then(|w| w.as_table_like_mut()).ok_or("it has no [workspace] table")?;
    for key in ["members", "default-members"] {
        match workspace.get_mut(key) {
            Some(item) => {
                let array = item.as_array_mut().ok_or_else(|| format!("`{key}` is not an array"))?;
                insert_member(array, member);
            }
            None if key == "members" => return Err("it has no `members`".into()),
            None => {}
        }
    }
    let text = doc.to_string();
    // The result must say exactly what it said before, plus the new member.
    let check = |text: &str| -> Option<(Vec<String>, Vec<String>)> {
        let table: toml::Table = text.parse().ok()?;
        let list = |key: &str| -> Vec<String> {
            table["workspace"]
                .get(key)
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                .unwrap_or_default()
        };
        Some((list("members"), list("default-members")))
    };
    let grew = |old: &[String], new: &[String]| {
        let mut old = old.to_vec();
        old.push(member.to_string());
        old.sort();
        let mut new = new.to_vec();
        new.sort();
        old == new
    };
    match (check(manifest), check(&text)) {
        (Some((m0, d0)), Some((m1, d1))) if grew(&m0, &m1) && (d0.is_empty() && d1.is_empty() || grew(&d0, &d1)) => {
            Ok(text)
        }
        _ => Err("the edited manifest does not list the new member as expected".into()),
    }
}

fn insert_member(array: &mut toml_edit::Array, member: &str) {
    let anchor = (0..array.len())
        .rev()
        .find(|&i| array.get(i).and_then(|v| v.as_str()).is_some_and(|s| s.starts_with("plugins/")));
    let index = anchor.map_or(array.len(), |i| i + 1);
    // The new entry starts as its neighbour does: on a line of its own with the same indentation,
    // or after a space.
    let like = anchor.or_else(|| array.len().checked_sub(1));
    let prefix = like
        .and_then(|i| array.get(i))
        .and_then(|v| v.decor().prefix())
        .and_then(|p| p.as_str())
        .map(|p| p.rfind('\n').map_or(" ", |i| &p[i..]).to_string())
        .unwrap_or_default();
    let mut value = toml_edit::Value::from(member);
    value.decor_mut().set_prefix(if prefix.is_empty() && !array.is_empty() { " ".into() } else { prefix });
    value.decor_mut().set_suffix("");
    array.insert_formatted(index, value);
}

/// A TOML string for `s` (quotes and escapes as needed).
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Replaces every `{{key}}` in `template`.
fn render(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(template.to_string(), |text, (key, value)| text.replace(&format!("{{{{{key}}}}}"), value))
}

/// Creates `dir` (and missing parents) with `files` in it; removes whatever it created on error.
fn write_crate(dir: &Path, files: &[(&str, String)]) -> Result<(), ScaffoldError> {
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir.to_path_buf()));
    }
    let first_new =
        dir.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).last().unwrap_or(dir).to_path_buf();
    let result = (|| {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(|source| ScaffoldError::Write { path: parent.into(), source })?;
        }
        std::fs::create_dir(dir).map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => ScaffoldError::Exists(dir.to_path_buf()),
            _ => ScaffoldError::Write { path: dir.into(), source },
        })?;
        for (rel, text) in files {
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|source| ScaffoldError::Write { path: parent.into(), source })?;
            }
            std::fs::write(&path, text).map_err(|source| ScaffoldError::Write { path, source })?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        if !matches!(e, ScaffoldError::Exists(_)) {
            let _ = std::fs::remove_dir_all(&first_new);
        }
        return Err(e);
    }
    Ok(())
}

/// Replaces `path` with `text` in one rename.
fn replace_file(path: &Path, text: &str) -> Result<(), ScaffoldError> {
    let tmp = path.with_extension(format!("toml.host-new-{}", std::process::id()));
    let write = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    write.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        ScaffoldError::Write { path: path.to_path_buf(), source }
    })
}

/// What was created, for the next commands.
#[derive(Debug)]
pub struct Created {
    pub dir: PathBuf,
    /// A member of the host's workspace (else a crate of its own).
    pub member: bool,
    pub lib: String,
}

/// Creates the plugin crate `request` describes, from the current directory `cwd`.
pub fn new_plugin(request: &Request, cwd: &Path) -> Result<Created, ScaffoldError> {
    let name = request.name.as_str();
    check_name(name)?;
    let lib = lib_name(name);
    let ty = type_name(name);
    let template = request.template;
    let workspace = find_workspace(cwd);
    let member_of = workspace.as_ref().filter(|_| request.dir.is_none());
    let files = |manifest: &str, dependencies: &str, run: &str| {
        let vars = [
            ("name", name),
            ("lib", lib.as_str()),
            ("Type", ty.as_str()),
            ("summary", template.summary()),
            ("dependencies", dependencies),
            ("run", run),
        ];
        vec![("Cargo.toml", render(manifest, &vars)), ("src/lib.rs", render(template.source(), &vars))]
    };
    if let Some(ws) = member_of {
        let rel = format!("plugins/{name}");
        let dir = ws.root.join(&rel);
        if dir.exists() {
            return Err(ScaffoldError::Exists(dir));
        }
        check_free(name, &taken_names(Some(&ws.root), &ws.members))?;
        let mut dependencies = String::from("plugin-api.workspace = true");
        if template == Template::Websocket {
            dependencies.push_str("\nwebsocket-core = { path = \"../websocket/core\" }");
        }
        let run = format!("cargo build -p {name} && target/debug/host --plugin {lib} --listen 127.0.0.1:7000");
        let files = files(include_str!("../templates/workspace.Cargo.toml"), &dependencies, &run);
        let manifest_path = ws.root.join("Cargo.toml");
        let manifest = add_member(&ws.manifest, &rel)
            .map_err(|reason| ScaffoldError::Manifest { path: manifest_path.clone(), reason })?;
        write_crate(&dir, &files)?;
        if let Err(e) = replace_file(&manifest_path, &manifest) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        return Ok(Created { dir, member: true, lib });
    }
    let base = request.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let dir = cwd.join(base).join(name);
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    // A crate of its own clashes with nothing but its directory (checked above) and its own
    // dependencies (`check_name`): the host's workspace members (`examples/chat`…) and the
    // plugins in the host's directories are no concern of a crate built and run elsewhere
    // (`--plugin-dir target/debug`).
    let source = host_source()?;
    let mut dependencies = match &source {
        Some(src) => format!("plugin-api = {{ path = {} }}", toml_string(&src.join("plugin-api").to_string_lossy())),
        None => format!("plugin-api = {}", toml_string(api_version())),
    };
    if template == Template::Websocket {
        let core = source.as_ref().map(|s| s.join("plugins/websocket/core")).filter(|c| c.join("Cargo.toml").is_file());
        let Some(core) = core else {
            return Err(ScaffoldError::WebSocketUnavailable);
        };
        dependencies.push_str(&format!("\nwebsocket-core = {{ path = {} }}", toml_string(&core.to_string_lossy())));
    }
    let run = format!("cargo build && host --plugin-dir target/debug --plugin {lib} --listen 127.0.0.1:7000");
    let mut files = files(include_str!("../templates/standalone.Cargo.toml"), &dependencies, &run);
    files.push((".gitignore", include_str!("../templates/standalone.gitignore").to_string()));
    // The templates are formatted as the host's code is.
    files.push(("rustfmt.toml", include_str!("../templates/standalone.rustfmt.toml").to_string()));
    write_crate(&dir, &files)?;
    Ok(Created { dir, member: false, lib })
}

/// `host plugin new`: creates the crate and prints what to run next.
pub fn run(request: &Request) -> anyhow::Result<()> {
    let cwd = std::env::current_dir()?;
    let created = new_plugin(request, &cwd)?;
    let shown = created.dir.strip_prefix(&cwd).unwrap_or(&created.dir).display().to_string();
    let (name, lib) = (&request.name, &created.lib);
    let mut out = Vec::new();
    if created.member {
        let root = find_workspace(&cwd).map(|w| w.root).unwrap_or_default();
        let host = root.join("target/debug/host");
        let host = host.strip_prefix(&cwd).map_or_else(|_| host.display().to_string(), |p| p.display().to_string());
        out.push(format!("created plugin `{lib}` in {shown}, a member of the workspace. Next:"));
        out.push(format!("  cargo build -p {name}"));
        out.push(format!("  {host} --plugin {lib} --listen 127.0.0.1:7000"));
        out.push(format!("  cargo test -p {name}"));
    } else {
        out.push(format!("created plugin `{lib}` in {shown}. Next:"));
        out.push(format!("  cd {shown} && cargo build"));
        out.push(format!("  host --plugin-dir target/debug --plugin {lib} --listen 127.0.0.1:7000"));
        out.push("  cargo test".into());
    }
    out.push(format!("  {}", request.template.try_command()));
    out.push(
        "Edit src/lib.rs and build again: the running host reloads it (docs/plugins.md in the host's source).".into(),
    );
    // Not println!: it panics when stdout is a closed pipe, and the crate exists by now.
    let _ = writeln!(std::io::stdout(), "{}", out.join("\n"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["echo2", "my-proto", "my_proto", "a"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        let why = |name: &str| check_name(name).unwrap_err().to_string();
        assert_eq!(why(""), "invalid plugin name ``: it is empty");
        assert!(why("2fast").contains("must start with a lowercase ASCII letter"));
        assert!(why("-x").contains("must start with"));
        assert!(why("Proto").contains("must start with"));
        assert!(why("my proto").contains("' ' is not allowed"));
        assert!(why("my/proto").contains("'/' is not allowed"));
        assert!(why("café").contains("'é' is not allowed"));
        assert!(why("fn").contains("Rust keyword"));
        assert!(why("self").contains("Rust keyword"));
        assert!(why("test").contains("reserved"));
        assert!(why("plugin-api").contains("reserved"));
        assert!(why("host").contains("reserved"));
        assert!(why(&"a".repeat(65)).contains("longer than 64"));
        assert_eq!(lib_name("my-proto"), "my_proto");
    }

    #[test]
    fn type_names_never_clash() {
        assert_eq!(type_name("my-proto"), "MyProto");
        assert_eq!(type_name("echo2"), "Echo2");
        assert_eq!(type_name("frame"), "FramePlugin");
        assert_eq!(type_name("self_"), "SelfPlugin");
        assert_eq!(type_name("web_socket"), "WebSocketPlugin");
    }

    #[test]
    fn taken_names_are_refused_whatever_their_separator() {
        let taken = vec![("host-plugin-http".to_string(), "m".to_string()), ("ws_chat".to_string(), "e".to_string())];
        assert!(check_free("ws-chat", &taken).unwrap_err().to_string().contains("already used by e"));
        assert!(check_free("host_plugin_http", &taken).is_err());
        assert!(check_free("chat", &taken).is_ok());
    }

    /// A fake workspace in a temp dir, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let path = std::env::temp_dir().join(format!("host-scaffold-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }
        fn write(&self, rel: &str, text: &str) {
            let path = self.0.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const MANIFEST: &str = r#"[workspace]
resolver = "2"
members = [
    "host",
    "plugins/http", # the HTTP plugin
    "plugins/text",
    "tests",
]
# Comments stay.
default-members = [
    "host",
    "plugins/http",
    "plugins/text",
]

[workspace.package]
version = "0.1.0"
"#;

    #[test]
    fn the_workspace_is_found_from_below_it_and_only_the_hosts() {
        let dir = Dir::new("find");
        dir.write("ws/Cargo.toml", MANIFEST);
        dir.write("ws/plugins/http/Cargo.toml", "[package]\nname = \"host-plugin-http\"\n");
        std::fs::create_dir_all(dir.0.join("ws/plugins/http/src")).unwrap();
        let ws = find_workspace(&dir.0.join("ws/plugins/http/src")).expect("found from below");
        assert_eq!(ws.root, dir.0.join("ws"));
        assert_eq!(ws.members, ["host", "plugins/http", "plugins/text", "tests"]);
        assert!(find_workspace(&dir.0.join("ws")).is_some());
        // Another workspace, or none at all.
        dir.write("other/Cargo.toml", "[workspace]\nmembers = [\"app\"]\n");
        assert!(find_workspace(&dir.0.join("other")).is_none());
        dir.write("lone/Cargo.toml", "[package]\nname = \"lone\"\n");
        assert!(find_workspace(&dir.0.join("lone")).is_none());
    }

    #[test]
    fn members_are_added_keeping_the_formatting() {
        let text = add_member(MANIFEST, "plugins/mine").unwrap();
        let want = MANIFEST
            .replace(
                "    \"plugins/text\",\n    \"tests\"",
                "    \"plugins/text\",\n    \"plugins/mine\",\n    \"tests\"",
            )
            .replace("    \"plugins/text\",\n]", "    \"plugins/text\",\n    \"plugins/mine\",\n]");
        assert_eq!(text, want);
        // Without plugins/ entries, on one line, without default-members.
        let text = add_member("[workspace]\nmembers = [\"host\", \"tests\"]\n", "plugins/mine").unwrap();
        assert_eq!(text, "[workspace]\nmembers = [\"host\", \"tests\", \"plugins/mine\"]\n");
        assert!(add_member("[package]\nname = \"x\"\n", "plugins/mine").unwrap_err().contains("no [workspace]"));
    }

    #[test]
    fn a_workspace_member_is_created_and_listed() {
        let dir = Dir::new("member");
        dir.write("Cargo.toml", MANIFEST);
        dir.write("plugins/http/Cargo.toml", "[package]\nname = \"host-plugin-http\"\n[lib]\nname = \"http\"\n");
        let cwd = dir.0.join("plugins");
        let request = |name: &str| Request { name: name.into(), template: Template::Http, dir: None };
        let created = new_plugin(&request("my-proto"), &cwd).unwrap();
        assert!(created.member);
        assert_eq!(created.dir, dir.0.join("plugins/my-proto"));
        let manifest = std::fs::read_to_string(created.dir.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("name = \"my-proto\"\n"), "{manifest}");
        assert!(manifest.contains("version.workspace = true\nedition.workspace = true\n"), "{manifest}");
        assert!(manifest.contains("plugin-api.workspace = true\n"), "{manifest}");
        assert!(manifest.contains("crate-type = [\"cdylib\", \"rlib\"]"), "{manifest}");
        assert!(manifest.contains("[lints]\nworkspace = true\n"), "{manifest}");
        let lib = std::fs::read_to_string(created.dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains("pub struct MyProto {") && !lib.contains("{{"), "{lib}");
        let root = std::fs::read_to_string(dir.0.join("Cargo.toml")).unwrap();
        assert_eq!(root.matches("\"plugins/my-proto\"").count(), 2, "{root}");
        // Refusals leave nothing behind.
        let before = std::fs::read_to_string(dir.0.join("Cargo.toml")).unwrap();
        for (name, error) in [
            ("my-proto", "already exists"),
            ("http", "plugins/http already exists"),
            ("host-plugin-http", "already used by the workspace member plugins/http"),
            ("Bad", "invalid plugin name"),
        ] {
            let e = new_plugin(&request(name), &cwd).unwrap_err().to_string();
            assert!(e.contains(error), "{name}: {e}");
        }
        assert_eq!(std::fs::read_to_string(dir.0.join("Cargo.toml")).unwrap(), before);
        assert!(!dir.0.join("plugins/host-plugin-http").exists());
    }

    #[test]
    fn every_template_renders_whole() {
        for template in [Template::Text, Template::Frame, Template::Http, Template::Websocket] {
            let vars =
                [("name", "x"), ("lib", "x"), ("Type", "X"), ("summary", "s"), ("dependencies", "d"), ("run", "r")];
            let text = render(template.source(), &vars);
            assert!(!text.contains("{{") && !text.contains("}}"), "{template:?}:\n{text}");
            assert!(text.starts_with("//! x: "), "{template:?}");
            assert!(text.contains("export_plugin!(") && text.contains("#[cfg(test)]"), "{template:?}");
        }
        for manifest in
            [include_str!("../templates/workspace.Cargo.toml"), include_str!("../templates/standalone.Cargo.toml")]
        {
            let text = render(manifest, &[("name", "x"), ("lib", "x"), ("summary", "s"), ("dependencies", "")]);
            assert!(!text.contains("{{"), "{text}");
            text.parse::<toml::Table>().unwrap();
        }
    }
}
