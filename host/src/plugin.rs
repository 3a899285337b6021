//! Finding a plugin file and loading it. Only workers and the `check-plugin` probe load plugins;
//! the master only finds files (see docs/architecture.md: the master never dlopens a plugin).

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibHeader, LibraryError, RootModule};
use abi_stable::sabi_types::VersionNumber;
use abi_stable::std_types::{RResult, RStr, RString};
use plugin_api::abi::{PluginModRef, RawPluginBox, RawWorkerInfo, WorkerEnvRef, ABI_VERSION};
use plugin_api::frozen::{self, Root};

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin `{name}` not found; looked for {tried}")]
    NotFound { name: String, tried: String },
    #[error("could not load plugin {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("plugin {path} was built for ABI version {found}, this host speaks version {expected}")]
    AbiVersion { path: PathBuf, found: u32, expected: u32 },
}

/// Where plugins are looked up when no `--plugin-dir` is given: `plugins/` in the current
/// directory, then the directory of the host binary (so a workspace build runs as it is).
pub fn default_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("plugins")];
    if let Some(dir) = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
        dirs.push(dir);
    }
    dirs
}

/// The file names a plugin called `name` may have, in order of preference.
fn file_names(name: &str) -> [String; 2] {
    [format!("{name}.so"), format!("lib{name}.so")]
}

/// Whether `--plugin NAME` names a file rather than a plugin to look up: it has a slash, ends in
/// `.so`, or is an existing file.
pub fn is_path(name: &str) -> bool {
    name.contains('/') || name.ends_with(".so") || Path::new(name).is_file()
}

/// Finds the file of plugin `name`: `name` itself when it is a path ([`is_path`]; a bare
/// `x.so` not in the current directory is also looked for in `dirs`), else the first
/// `DIR/NAME.so` or `DIR/libNAME.so` in `dirs`. The result is absolute.
pub fn find(name: &str, dirs: &[PathBuf]) -> Result<PathBuf, PluginError> {
    let mut tried = Vec::new();
    let candidates: Vec<PathBuf> = if name.contains('/') {
        vec![PathBuf::from(name)]
    } else if is_path(name) {
        std::iter::once(PathBuf::from(name)).chain(dirs.iter().map(|d| d.join(name))).collect()
    } else {
        dirs.iter().flat_map(|d| file_names(name).map(|f| d.join(f))).collect()
    };
    for path in candidates {
        if path.is_file() {
            return Ok(std::path::absolute(&path).unwrap_or(path));
        }
        tried.push(path.display().to_string());
    }
    Err(PluginError::NotFound { name: name.to_string(), tried: tried.join(", ") })
}

/// A plugin loaded in this process.
pub struct Loaded {
    /// Its root module, through the frozen types of its release when it has some.
    pub module: Box<dyn Root>,
    pub name: String,
    pub version: String,
    /// The version of `plugin-api` the plugin was built against.
    pub api_version: String,
}

impl Loaded {
    /// Builds the worker's instance, seen through today's `RawPlugin` whichever release the
    /// plugin is of, and checks the layout of its extension (the events added since plugin-api
    /// 0.1.3) before the host calls any of them.
    pub fn new_instance(
        &self,
        config: RStr<'_>,
        info: &RawWorkerInfo<'_>,
        env: &dyn Fn() -> WorkerEnvRef,
    ) -> RResult<RawPluginBox, RString> {
        let mut plugin = match self.module.new_instance(config, info, env) {
            RResult::ROk(plugin) => plugin,
            err => return err,
        };
        if let Err(e) = plugin.extension().check() {
            return RResult::RErr(RString::from(format!("plugin-api {}: {e}", self.api_version)));
        }
        RResult::ROk(plugin)
    }
}

/// How a plugin of one release is loaded: checked against the root module type of that release.
type LoadAs = fn(&LibHeader) -> Result<Box<dyn Root>, LibraryError>;

/// The releases of `plugin-api` a plugin of which is checked against frozen types
/// (`plugin_api::frozen::vX_Y_Z`), because a later release grew its root module or vtables:
/// `(major, minor, patch)` → how to load it. Every other release loads with today's types
/// (`plugin_api::abi`). Since 0.1.3 the root module and vtables never grow (new events and calls
/// go to the extensions), so this table is complete unless the policy in `plugin_api::abi`
/// changes.
const FROZEN_RELEASES: &[((u32, u32, u32), LoadAs)] = &[
    ((0, 1, 0), load_as::<frozen::v0_1_0::PluginModRef>),
    ((0, 1, 1), load_as::<frozen::v0_1_1::PluginModRef>),
    ((0, 1, 2), load_as::<frozen::v0_1_2::PluginModRef>),
];

fn load_as<M: RootModule + Root + 'static>(header: &LibHeader) -> Result<Box<dyn Root>, LibraryError> {
    Ok(Box::new(header.init_root_module::<M>()?))
}

/// Loads the plugin at `path` and checks its ABI. Never use `RootModule::load_from_file`: it
/// caches one module per type for the life of the process (docs/architecture.md pitfall 3).
///
/// abi_stable refuses a root module or vtable with fewer fields than the host's, so a plugin
/// built against an older `plugin-api` whose prefix types have since grown is checked against
/// the frozen types of its release instead ([`FROZEN_RELEASES`]; see "ABI evolution policy" in
/// `plugin_api::abi`).
pub fn load(path: &Path) -> Result<Loaded, PluginError> {
    // A bare file name would go to the dynamic loader's search path, not the current directory.
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let path = absolute.as_path();
    let load_err = |reason: String| PluginError::Load { path: path.to_path_buf(), reason };
    let header = lib_header_from_path(path).map_err(|e| match e {
        // A shared library, but without abi_stable's root module symbol.
        LibraryError::GetSymbolError { .. } => {
            load_err("it is a shared library but not a host plugin (it exports no plugin root module)".into())
        }
        other => load_err(essential_error(&other.to_string())),
    })?;
    let api = VersionNumber::new(header.version_strings()).map_err(|e| load_err(essential_error(&e.to_string())))?;
    let release = (api.major, api.minor, api.patch);
    let load_as = FROZEN_RELEASES
        .iter()
        .find(|(frozen, _)| *frozen == release)
        .map_or(load_as::<PluginModRef> as LoadAs, |(_, load_as)| *load_as);
    let module = load_as(header).map_err(|e| load_err(essential_error(&e.to_string())))?;
    let found = module.abi_version();
    if found != ABI_VERSION {
        return Err(PluginError::AbiVersion { path: path.to_path_buf(), found, expected: ABI_VERSION });
    }
    let (name, version) = (module.name().to_string(), module.version().to_string());
    Ok(Loaded { module, name, version, api_version: api.to_string() })
}

/// abi_stable's layout report runs to hundreds of lines. Keep the gist: the last `Error:` block,
/// cut to a few lines; the whole report goes to the debug log.
pub fn essential_error(report: &str) -> String {
    tracing::debug!(report, "full plugin load error");
    let tail = match report.rfind("Error:") {
        Some(i) => &report[i + "Error:".len()..],
        None => report,
    };
    let lines: Vec<&str> =
        tail.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("---")).take(6).collect();
    let gist = lines.join(" ").replace('\0', "");
    if gist.is_empty() {
        report.lines().next().unwrap_or("unknown error").to_string()
    } else {
        gist
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_both_file_name_forms_in_order() {
        let dir = std::env::temp_dir().join(format!("host-plugin-find-{}", std::process::id()));
        let a = dir.join("a");
        let b = dir.join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("libweb.so"), b"x").unwrap();
        assert_eq!(find("web", &[a.clone(), b.clone()]).unwrap(), b.join("libweb.so"));
        std::fs::write(a.join("web.so"), b"x").unwrap();
        assert_eq!(find("web", &[a.clone(), b.clone()]).unwrap(), a.join("web.so"));
        let err = find("nope", &[a.clone(), b.clone()]).unwrap_err().to_string();
        assert!(err.contains("`nope`") && err.contains("a/nope.so") && err.contains("b/libnope.so"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_name_is_a_path_and_so_is_not_appended_twice() {
        let dir = std::env::temp_dir().join(format!("host-plugin-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("myecho.so"), b"x").unwrap();
        assert!(is_path("myecho.so") && is_path("./x") && !is_path("http"));
        assert_eq!(find("myecho.so", std::slice::from_ref(&dir)).unwrap(), dir.join("myecho.so"));
        let err = find("other.so", std::slice::from_ref(&dir)).unwrap_err().to_string();
        assert!(!err.contains(".so.so"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keeps_the_last_error_block() {
        let report = "Compared <this> to <other>\n--- lots\nError:first\nblah\nError:\n mismatched type\n Expected: u8\n Found: u32\n";
        assert_eq!(essential_error(report), "mismatched type Expected: u8 Found: u32");
        assert_eq!(essential_error("plain failure"), "plain failure");
    }
}
