//! Generated files are committed fresh: the CRD manifest and the API reference in the README.
//!
//! Set `FLOTILLA_UPDATE_GENERATED=1` to rewrite them from the current types.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

fn crate_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name)
}

fn updating() -> bool {
    std::env::var_os("FLOTILLA_UPDATE_GENERATED").is_some_and(|v| v == "1")
}

/// The committed CRD manifest equals what `flotilla-operator crd` prints.
#[test]
fn crd_manifest_is_fresh() -> Result<()> {
    let path = crate_file("microservices.flotilla.rs.yaml");
    let generated = flotilla_crds::crd_yaml()?;
    if updating() {
        std::fs::write(&path, &generated)?;
    }
    let committed = std::fs::read_to_string(&path).with_context(|| format!("reading {path:?}"))?;
    if committed != generated {
        bail!(
            "crds/microservices.flotilla.rs.yaml is stale; regenerate it with \
             `flotilla-operator crd > crds/microservices.flotilla.rs.yaml` \
             (or FLOTILLA_UPDATE_GENERATED=1 cargo test -p flotilla-crds)"
        );
    }
    Ok(())
}

/// The API reference section of the README equals the table generated from the schema.
#[test]
fn readme_reference_is_fresh() -> Result<()> {
    let path = crate_file("README.md");
    let readme = std::fs::read_to_string(&path).with_context(|| format!("reading {path:?}"))?;
    let (Some(start), Some(end)) = (
        readme.find(flotilla_crds::REFERENCE_BEGIN),
        readme.find(flotilla_crds::REFERENCE_END),
    ) else {
        bail!("crds/README.md lacks the generated reference markers");
    };
    let head = &readme[..start + flotilla_crds::REFERENCE_BEGIN.len()];
    let tail = &readme[end..];
    let expected = format!(
        "{head}\n{}\n{tail}",
        flotilla_crds::api_reference_markdown().trim()
    );
    if updating() {
        std::fs::write(&path, &expected)?;
        return Ok(());
    }
    if readme != expected {
        bail!(
            "the API reference in crds/README.md is stale; regenerate it with \
             FLOTILLA_UPDATE_GENERATED=1 cargo test -p flotilla-crds"
        );
    }
    Ok(())
}
