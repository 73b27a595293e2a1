//! The image table: which local executable stands in for a container image.
//!
//! There is no container engine, so a pod's image is mapped to an executable on this machine by an
//! explicit, ordered table (`e2e/kubesim/images.yaml`). Patterns may contain `*` wildcards; the first
//! matching entry wins. Relative executable paths are resolved against the table's base directory
//! (the workspace root for the bundled table); a bare command name (`kubectl`) is looked up on
//! `PATH`. Pure lookups only; nothing here starts processes.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One row of the table: an image pattern and the executable that plays it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ImageEntry {
    /// Image reference pattern, e.g. `flotilla/users:*`; `*` matches any run of characters.
    pub pattern: String,
    /// Executable to run, absolute or relative to the table's base directory.
    pub executable: PathBuf,
}

#[derive(Deserialize)]
struct ImageFile {
    #[serde(default)]
    images: Vec<ImageEntry>,
}

/// Errors reading an image table.
#[derive(Debug, thiserror::Error)]
pub enum ImageTableError {
    #[error("cannot read image table {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image table {path} is not valid YAML of the form `images: [{{pattern, executable}}]`: {source}")]
    Parse {
        path: PathBuf,
        source: serde_norway::Error,
    },
}

/// An ordered image → executable table.
#[derive(Clone, Debug, Default)]
pub struct ImageTable {
    entries: Vec<ImageEntry>,
    base_dir: PathBuf,
}

impl ImageTable {
    /// A table from entries; relative executables resolve against `base_dir`.
    pub fn new(entries: Vec<ImageEntry>, base_dir: impl Into<PathBuf>) -> Self {
        Self {
            entries,
            base_dir: base_dir.into(),
        }
    }

    /// Parses a YAML table; relative executables resolve against `base_dir`.
    pub fn from_yaml(
        text: &str,
        base_dir: impl Into<PathBuf>,
    ) -> Result<Self, serde_norway::Error> {
        let file: ImageFile = serde_norway::from_str(text)?;
        Ok(Self::new(file.images, base_dir))
    }

    /// Reads a YAML table from disk; relative executables resolve against `base_dir`.
    pub fn load(path: &Path, base_dir: impl Into<PathBuf>) -> Result<Self, ImageTableError> {
        let text = std::fs::read_to_string(path).map_err(|source| ImageTableError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, base_dir).map_err(|source| ImageTableError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Adds an entry in front of the others (tests map their own images this way).
    pub fn prepend(&mut self, pattern: impl Into<String>, executable: impl Into<PathBuf>) {
        self.entries.insert(
            0,
            ImageEntry {
                pattern: pattern.into(),
                executable: executable.into(),
            },
        );
    }

    /// Re-roots relative executables under `target/` at `target_dir` (for a `CARGO_TARGET_DIR`
    /// outside the workspace).
    pub fn with_target_dir(mut self, target_dir: &Path) -> Self {
        for e in &mut self.entries {
            if let Ok(rest) = e.executable.strip_prefix("target") {
                e.executable = target_dir.join(rest);
            }
        }
        self
    }

    /// The executable for `image`, or `None` when no pattern matches (the pod cannot "pull" it).
    pub fn resolve(&self, image: &str) -> Option<PathBuf> {
        let image = normalize(image);
        self.entries
            .iter()
            .find(|e| glob_match(normalize(&e.pattern), image))
            .map(|e| self.executable(&e.executable))
    }

    /// A bare command name (no `/`, e.g. `kubectl`) is looked up on `PATH`, as a shell would;
    /// anything else resolves against the base directory.
    fn executable(&self, exe: &Path) -> PathBuf {
        let bare = exe.components().count() == 1 && !exe.is_absolute();
        if bare {
            let found = std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join(exe))
                    .find(|p| p.is_file())
            });
            if let Some(p) = found {
                return p;
            }
        }
        self.base_dir.join(exe)
    }
}

/// Drops the registry prefixes Docker treats as implicit, so `docker.io/library/x` matches `x`.
fn normalize(image: &str) -> &str {
    let image = image.strip_prefix("docker.io/").unwrap_or(image);
    image.strip_prefix("library/").unwrap_or(image)
}

/// `*`-only glob matching over bytes.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_pattern_wins_and_relative_paths_join_the_base() {
        // The table is ordered and relative executables are resolved against its base directory.
        let table = ImageTable::from_yaml(
            "images:\n  - pattern: \"flotilla/users:*\"\n    executable: target/debug/users\n  - pattern: \"*\"\n    executable: /bin/false\n",
            "/ws",
        )
        .expect("valid yaml");
        assert_eq!(
            table.resolve("flotilla/users:0.1.0"),
            Some(PathBuf::from("/ws/target/debug/users"))
        );
        assert_eq!(table.resolve("other:1"), Some(PathBuf::from("/bin/false")));
    }

    #[test]
    fn unmapped_images_do_not_resolve() {
        // An image without a matching row must stay unresolved so the pod reports ErrImagePull.
        let table = ImageTable::new(
            vec![ImageEntry {
                pattern: "flotilla/auth:*".into(),
                executable: "auth".into(),
            }],
            "/",
        );
        assert_eq!(table.resolve("flotilla/users:0.1.0"), None);
        assert!(table.resolve("docker.io/flotilla/auth:1").is_some());
    }

    #[test]
    fn a_custom_target_dir_replaces_the_workspace_target() {
        // Executables built into another target directory are still found.
        let table = ImageTable::from_yaml(
            "images:\n  - pattern: \"a:*\"\n    executable: target/debug/a\n  - pattern: \"b:*\"\n    executable: bin/b\n",
            "/ws",
        )
        .expect("valid yaml")
        .with_target_dir(Path::new("/elsewhere"));
        assert_eq!(
            table.resolve("a:1"),
            Some(PathBuf::from("/elsewhere/debug/a"))
        );
        assert_eq!(table.resolve("b:1"), Some(PathBuf::from("/ws/bin/b")));
    }

    #[test]
    fn glob_handles_multiple_stars() {
        // Wildcards match any run, including an empty one.
        assert!(glob_match("a*b*c", "abc"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("*", ""));
    }
}
