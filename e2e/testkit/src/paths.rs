//! Where the workspace's binaries and files are, seen from a running test binary.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// Root of the repository (two levels above this crate).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .unwrap_or(manifest)
        .to_path_buf()
}

/// The Cargo target directory the running test binary was built into (`target/debug`).
pub fn target_dir() -> PathBuf {
    // Test binaries live in `<target>/<profile>/deps/`.
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().and_then(Path::parent).map(Path::to_path_buf))
        .unwrap_or_else(|| repo_root().join("target").join("debug"))
}

/// The workspace binary `name` of `package`: `$FLOTILLA_<NAME>_BIN` when set, else the one next
/// to the running test binary, else the debug build (a benchmark built in release may use it),
/// or an error saying how to build it.
pub fn workspace_binary(name: &str, package: &str) -> Result<PathBuf> {
    let var = format!(
        "FLOTILLA_{}_BIN",
        name.to_ascii_uppercase().replace('-', "_")
    );
    let target = target_dir();
    let candidates = [
        std::env::var_os(&var).map(PathBuf::from),
        Some(target.join(name)),
        target.parent().map(|t| t.join("debug").join(name)),
    ];
    if let Some(found) = candidates.iter().flatten().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "{} is missing: build it with `cargo build -p {package}` or set {var} (the test command \
         builds the whole workspace first)",
        target.join(name).display()
    )
}

/// The last `lines` lines of the file at `path` ("" when unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
