//! Health-aware traffic end to end: break the users pods with fault injection and watch Flotilla
//! eject them, fail the users Service over to a fallback MicroService, and fail back once the
//! primary has recovered.
//!
//! Pods are reached on their pod IP on the local cluster, and through `kubectl port-forward` on
//! a real one (the test runner is outside the cluster network there).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use flotilla_crds::{labels, ActiveTarget};
use flotilla_e2e::env::run_test;
use flotilla_e2e::{http, msvc};
use flotilla_testkit::http as testkit_http;
use flotilla_testkit::Harness;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use tokio::io::{AsyncBufReadExt, BufReader};

const PRIMARY: &str = "users";
const FALLBACK: &str = "users-backup";
/// Failover and failback on a loaded machine: detection is about a second, the recovery window
/// is set to three.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(90);

/// The bearer token of the users sample's `/admin/faults`, from its Secret.
fn admin_token(sample: &msvc::Sample) -> Result<String> {
    sample
        .secrets
        .iter()
        .filter(|s| s.metadata.name.as_deref() == Some("users-secrets"))
        .find_map(|s| s.string_data.as_ref()?.get("admin-token").cloned())
        .context("the users sample has no admin-token in its Secret")
}

/// Sends `method /admin/faults` with `body` to one pod.
async fn set_faults(h: &Harness, pod: &Pod, token: &str, body: Option<&str>) -> Result<()> {
    let (base, _forward) = pod_base_url(h, pod).await?;
    let url = format!("{base}/admin/faults");
    let request = match body {
        Some(b) => testkit_http::request(::http::Method::POST, &url)
            .header("content-type", "application/json")
            .body(b.to_owned()),
        None => testkit_http::request(::http::Method::DELETE, &url),
    };
    let reply = testkit_http::send(request.bearer_auth(token)).await?;
    ensure!(
        (200..300).contains(&reply.status),
        "{url} answered {}",
        reply.status
    );
    Ok(())
}

/// The base URL of a pod's port 8080, and the port-forward process keeping it open (if any).
async fn pod_base_url(h: &Harness, pod: &Pod) -> Result<(String, Option<tokio::process::Child>)> {
    if h.is_local() {
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .context("pod has no IP")?;
        return Ok((format!("http://{ip}:8080"), None));
    }
    let mut child = tokio::process::Command::new("kubectl")
        .args(["port-forward", "-n", &h.ns])
        .arg(format!("pod/{}", pod.name_any()))
        .arg(":8080")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting kubectl port-forward")?;
    let stdout = child.stdout.take().context("port-forward stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("kubectl port-forward did not start")??
        .context("kubectl port-forward exited")?;
    // "Forwarding from 127.0.0.1:40123 -> 8080"
    let addr = line
        .split_whitespace()
        .nth(2)
        .filter(|a| a.starts_with("127.0.0.1:"))
        .with_context(|| format!("unexpected port-forward output: {line}"))?;
    Ok((format!("http://{addr}"), Some(child)))
}

async fn active(h: &Harness) -> Result<Option<ActiveTarget>> {
    let ms = h.msvcs().get(PRIMARY).await?;
    Ok(ms.status.and_then(|s| s.failover).and_then(|f| f.active))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_pods_are_ejected_then_traffic_fails_over_and_back() -> Result<()> {
    run_test("failover_and_failback", |h| {
        Box::pin(async move {
            let sample = msvc::sample(PRIMARY)?;
            let token = admin_token(&sample)?;
            msvc::apply_secrets(h, &sample).await?;

            let mut backup = sample.msvc.clone();
            backup.metadata.name = Some(FALLBACK.into());
            backup.spec.replicas = 1;
            backup.spec.failover.enabled = false;
            h.apply(&backup).await?;
            let mut users = sample.msvc.clone();
            users.spec.replicas = 2;
            users.spec.failover.enabled = true;
            users.spec.failover.fallback = Some(FALLBACK.into());
            users.spec.failover.recover_after_seconds = 3;
            h.apply(&users).await?;
            msvc::wait_ready(h, FALLBACK).await?;
            msvc::wait_ready(h, PRIMARY).await?;
            h.wait_within(
                "the engine to see two healthy primary pods",
                SWITCH_TIMEOUT,
                || async {
                    let f = h
                        .msvcs()
                        .get(PRIMARY)
                        .await?
                        .status
                        .and_then(|s| s.failover);
                    Ok(f.filter(|f| f.healthy_pods == Some(2)).map(|_| ()))
                },
            )
            .await?;
            let pods = h.pods_of(PRIMARY).await?;
            ensure!(
                pods.len() == 2,
                "expected 2 primary pods, found {}",
                pods.len()
            );

            // One pod fails readiness: Flotilla flips its membership label off.
            let (bad, good) = (&pods[0], &pods[1]);
            set_faults(h, bad, &token, Some(r#"{"unhealthy": true}"#)).await?;
            let pods_api: Api<Pod> = h.pods();
            let serves = labels::serves(PRIMARY);
            h.wait_within(
                "the failing pod to leave the Service",
                SWITCH_TIMEOUT,
                || async {
                    let p = pods_api.get(&bad.name_any()).await?;
                    let label = p.labels().get(&serves).cloned();
                    Ok((label.as_deref() == Some("false")).then_some(()))
                },
            )
            .await?;
            ensure!(active(h).await? == Some(ActiveTarget::Primary));

            // Every pod fails: the fallback's pods take the primary Service's traffic.
            set_faults(h, good, &token, Some(r#"{"unhealthy": true}"#)).await?;
            h.wait_within("status to say fallback", SWITCH_TIMEOUT, || async {
                Ok((active(h).await? == Some(ActiveTarget::Fallback)).then_some(()))
            })
            .await?;
            // The primary pods answer /readyz with 503; a 200 through the primary Service comes
            // from the fallback.
            h.poll_within(
                "the users Service to be served by the fallback",
                SWITCH_TIMEOUT,
                || async {
                    let reply = http::service_request(
                        h,
                        PRIMARY,
                        ::http::Method::GET,
                        "/readyz",
                        None,
                        None,
                    )
                    .await?;
                    Ok((reply.status == 200).then_some(()))
                },
            )
            .await?;

            // The primary recovers: traffic returns after the recovery window.
            for p in [bad, good] {
                set_faults(h, p, &token, None).await?;
            }
            h.wait_within("status to say primary again", SWITCH_TIMEOUT, || async {
                Ok((active(h).await? == Some(ActiveTarget::Primary)).then_some(()))
            })
            .await?;
            let fallback_pods = pods_api
                .list(&ListParams::default().labels(&format!("{}={FALLBACK}", labels::INSTANCE)))
                .await?;
            h.wait_within(
                "the fallback pods to leave the users Service",
                SWITCH_TIMEOUT,
                || async {
                    let mut carrying = BTreeMap::new();
                    for p in &fallback_pods.items {
                        let p = pods_api.get(&p.name_any()).await?;
                        if p.labels().get(&serves).map(String::as_str) == Some("true") {
                            carrying.insert(p.name_any(), ());
                        }
                    }
                    Ok(carrying.is_empty().then_some(()))
                },
            )
            .await?;
            let reasons = h.event_reasons(PRIMARY).await?;
            for want in ["PodEjected", "FailedOver", "FailedBack"] {
                if !reasons.iter().any(|r| r == want) {
                    bail!("no {want} Event on {PRIMARY}; reasons: {reasons:?}");
                }
            }
            Ok(())
        })
    })
    .await
}
