//! MicroService helpers for the suite: loading the sample manifests, applying them into a test
//! namespace, and waiting for the operator's status to report a converged, Ready service.

use std::time::Duration;

use anyhow::{Context, Result};
use flotilla_crds::{conditions, MicroService};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use crate::env::{Ctx, FIELD_MANAGER};
use crate::{tools, wait};

/// Deadline for a MicroService to become Ready: process start-up, probes and a rollout.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Reads the sample manifest `<name>.yaml` from `services/deploy/` (or from the directory in
/// `FLOTILLA_E2E_SAMPLES_DIR`, to run the suite with other manifests).
pub fn sample(name: &str) -> Result<MicroService> {
    let dir = std::env::var_os("FLOTILLA_E2E_SAMPLES_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tools::repo_root().join("services").join("deploy"));
    let path = dir.join(format!("{name}.yaml"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The MicroService API of the test namespace.
pub fn api(ctx: &Ctx<'_>) -> Api<MicroService> {
    Api::namespaced(ctx.client.clone(), &ctx.ns)
}

/// Server-side applies `msvc` into the test namespace (field manager `flotilla-e2e`).
pub async fn apply(ctx: &Ctx<'_>, msvc: &MicroService) -> Result<MicroService> {
    let mut obj = msvc.clone();
    obj.metadata.namespace = Some(ctx.ns.clone());
    obj.metadata.resource_version = None;
    obj.metadata.uid = None;
    obj.metadata.managed_fields = None;
    obj.status = None;
    let name = obj.name_any();
    api(ctx)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await
        .with_context(|| format!("applying MicroService {name}"))
}

/// True when the status describes the current generation and says Ready.
pub fn is_ready(msvc: &MicroService) -> bool {
    let Some(status) = msvc.status.as_ref() else {
        return false;
    };
    status.observed_generation == msvc.metadata.generation
        && wait::is_true(&status.conditions, conditions::READY)
}

/// Waits until the MicroService `name` is Ready for its current generation.
pub async fn wait_ready(ctx: &Ctx<'_>, name: &str) -> Result<MicroService> {
    wait::for_object(&api(ctx), name, READY_TIMEOUT, is_ready).await
}
