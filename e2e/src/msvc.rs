//! MicroService helpers for the suite: loading the sample manifests, applying them into a test
//! namespace, and waiting for the operator's status to report a converged, Ready service.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use flotilla_crds::MicroService;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use flotilla_testkit::cluster::FIELD_MANAGER;
use flotilla_testkit::Harness;
use k8s_openapi::api::core::v1::Secret;

use crate::{chart, tools};

/// Deadline for a MicroService to become Ready: process start-up, probes and a rollout.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// A sample service manifest: its MicroService and the Secrets it references.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The MicroService.
    pub msvc: MicroService,
    /// Secrets the MicroService's env refers to.
    pub secrets: Vec<Secret>,
}

/// Reads the sample manifest `<name>.yaml` from `services/deploy/` (or from the directory in
/// `FLOTILLA_E2E_SAMPLES_DIR`, to run the suite with other manifests), with the Secrets its
/// MicroService refers to: those in the file, else the ones `secrets.sh` in that directory
/// generates (the repository ships no secret values), generated once per test process so
/// every sample sees the same values.
pub fn sample(name: &str) -> Result<Sample> {
    let dir = std::env::var_os("FLOTILLA_E2E_SAMPLES_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tools::repo_root().join("services").join("deploy"));
    let path = dir.join(format!("{name}.yaml"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut sample = parse_sample(&text).with_context(|| format!("parsing {}", path.display()))?;
    let script = dir.join("secrets.sh");
    if script.exists() {
        for wanted in referenced_secrets(&sample.msvc) {
            if sample.secrets.iter().any(|s| s.name_any() == wanted) {
                continue;
            }
            let generated = generated_secrets(&script)?
                .iter()
                .find(|s| s.name_any() == wanted)
                .cloned()
                .with_context(|| format!("{} generates no Secret {wanted}", script.display()))?;
            sample.secrets.push(generated);
        }
    }
    Ok(sample)
}

/// Names of the Secrets the MicroService's env refers to, in order of first reference.
fn referenced_secrets(msvc: &MicroService) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let refs = msvc.spec.env.iter().flatten().filter_map(|e| {
        let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
        Some(r.name.clone())
    });
    for name in refs {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The output of `script` (the samples' `secrets.sh`), run once per process.
fn generated_secrets(script: &std::path::Path) -> Result<&'static [Secret]> {
    static GENERATED: std::sync::OnceLock<Result<Vec<Secret>, String>> = std::sync::OnceLock::new();
    let generated = GENERATED.get_or_init(|| {
        let run = || -> Result<Vec<Secret>> {
            let out = std::process::Command::new("bash")
                .arg(script)
                .output()
                .with_context(|| format!("running {}", script.display()))?;
            if !out.status.success() {
                bail!(
                    "{} failed: {}",
                    script.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            chart::split_documents(&String::from_utf8_lossy(&out.stdout))?
                .into_iter()
                .map(|doc| Ok(serde_json::from_value(doc)?))
                .collect()
        };
        run().map_err(|e| format!("{e:#}"))
    });
    generated.as_deref().map_err(|e| anyhow::anyhow!("{e}"))
}

/// Splits a sample manifest into its one MicroService and its Secrets; other kinds are errors.
pub fn parse_sample(text: &str) -> Result<Sample> {
    let mut msvc = None;
    let mut secrets = Vec::new();
    for doc in chart::split_documents(text)? {
        match chart::kind_of(&doc) {
            "MicroService" if msvc.is_none() => msvc = Some(serde_json::from_value(doc)?),
            "Secret" => secrets.push(serde_json::from_value(doc)?),
            other => bail!("unexpected {other:?} document in a sample manifest"),
        }
    }
    Ok(Sample {
        msvc: msvc.context("no MicroService in the sample manifest")?,
        secrets,
    })
}

/// Server-side applies the sample's Secrets and then its MicroService into the test namespace.
pub async fn apply_sample(h: &Harness, sample: &Sample) -> Result<MicroService> {
    apply_secrets(h, sample).await?;
    h.apply(&sample.msvc).await
}

/// Server-side applies the sample's Secrets into the test namespace.
pub async fn apply_secrets(h: &Harness, sample: &Sample) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    for secret in &sample.secrets {
        let mut secret = secret.clone();
        secret.metadata.namespace = Some(h.ns.clone());
        let name = secret.name_any();
        secrets
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .with_context(|| format!("applying Secret {name}"))?;
    }
    Ok(())
}

/// Waits until the MicroService `name` is Ready for its current generation.
pub async fn wait_ready(h: &Harness, name: &str) -> Result<MicroService> {
    h.wait_ready(name, READY_TIMEOUT).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_manifest_splits_into_secret_and_microservice() {
        // A sample file carries Secrets and exactly one MicroService; both are kept.
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {k: v}\n---\n\
                    apiVersion: flotilla.rs/v1alpha1\nkind: MicroService\nmetadata: {name: m}\n\
                    spec: {image: i:1}\n";
        let sample = parse_sample(text).expect("parses");
        assert_eq!(sample.msvc.name_any(), "m");
        assert_eq!(sample.secrets.len(), 1);
    }

    #[test]
    fn samples_get_generated_secrets_for_every_reference() -> Result<()> {
        // The repository's manifests carry no Secret; each sample gets the generated Secrets
        // its env refers to, with random values that are the same for every sample.
        let users = sample("users")?;
        let auth = sample("auth")?;
        let names = |s: &Sample| s.secrets.iter().map(|x| x.name_any()).collect::<Vec<_>>();
        assert_eq!(names(&users), ["users-secrets", "auth-public-keys"]);
        assert_eq!(names(&auth), ["auth-secrets", "users-secrets"]);
        let value = |s: &Sample, name: &str, key: &str| {
            s.secrets
                .iter()
                .find(|x| x.name_any() == name)
                .and_then(|x| x.string_data.as_ref()?.get(key).cloned())
        };
        // auth signs with the private key; users verifies with its public half only.
        let signing = value(&auth, "auth-secrets", "signing-key").unwrap_or_default();
        let public = value(&users, "auth-public-keys", "public-keys").unwrap_or_default();
        assert!(signing.contains("BEGIN PRIVATE KEY"), "{signing}");
        assert!(public.contains("BEGIN PUBLIC KEY"), "{public}");
        assert!(value(&users, "auth-secrets", "signing-key").is_none());
        assert_ne!(
            value(&users, "users-secrets", "admin-token"),
            value(&users, "users-secrets", "service-token")
        );
        Ok(())
    }

    #[test]
    fn unexpected_kinds_are_refused() {
        // A Deployment in a sample file is a mistake, not something to skip.
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";
        assert!(parse_sample(text).is_err());
    }
}
