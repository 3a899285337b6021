//! The workspace as a fresh clone builds it.

use std::path::Path;

// `cargo build --release` (the README's first command) builds the default members only: no
// test fixture (a plugin that crashes or panics on purpose) may land in target/release, where
// the host looks for plugins by default; every plugin and example does.
#[test]
fn a_release_build_leaves_the_test_fixtures_out() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let manifest: toml::Table = text.parse().unwrap();
    let list = |key: &str| -> Vec<String> {
        manifest["workspace"]
            .get(key)
            .and_then(|v| v.as_array())
            .map_or_else(Vec::new, |a| a.iter().filter_map(|m| m.as_str().map(String::from)).collect())
    };
    let (members, defaults) = (list("members"), list("default-members"));
    assert!(!defaults.is_empty(), "no default-members: a release build builds the fixtures");
    for member in &defaults {
        assert!(!member.starts_with("tests"), "default member {member} is a test crate");
    }
    for member in members.iter().filter(|m| m.starts_with("plugins/") || m.starts_with("examples/")) {
        assert!(defaults.contains(member), "{member} is not built by `cargo build --release`");
    }
}
