//! The process kubelet: restarts, image pull failures, environment and logs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_testkit::wait::{self, poll};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapKeySelector, EnvVar, EnvVarSource, Event, ObjectFieldSelector, Pod, Secret,
    SecretKeySelector,
};
use k8s_openapi::ByteString;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kubesim::node::{read_pod_log, LogOptions};

use crate::support::node::*;

const WAIT: Duration = Duration::from_secs(60);

fn pod_of(deploy: &k8s_openapi::api::apps::v1::Deployment, name: &str) -> Pod {
    let template = deploy.spec.clone().unwrap_or_default().template;
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..template.metadata.unwrap_or_default()
        },
        spec: template.spec,
        status: None,
    }
}

fn restart_count(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |c| c[0].restart_count)
}

#[tokio::test]
async fn a_killed_process_is_restarted_and_counted() -> anyhow::Result<()> {
    // SIGKILL the container's process: the kubelet starts a new one, restartCount becomes 1 and
    // lastState records the kill; the pod becomes Ready again.
    let sim = Sim::start().await?;
    sim.pods()
        .create(
            &PostParams::default(),
            &pod_of(&deployment("crash", 1, IMAGE), "crash"),
        )
        .await?;
    poll("pod ready", WAIT, || async {
        Ok(is_ready(&sim.pods().get("crash").await?).then_some(()))
    })
    .await?;
    let pids = processes_of("crash");
    assert_eq!(pids.len(), 1, "one process for the pod");
    std::process::Command::new("kill")
        .arg("-KILL")
        .arg(pids[0].to_string())
        .status()?;
    let pod = poll("restart", WAIT, || async {
        let pod = sim.pods().get("crash").await?;
        Ok((restart_count(&pod) == 1 && is_ready(&pod)).then_some(pod))
    })
    .await?;
    let status = pod
        .status
        .unwrap_or_default()
        .container_statuses
        .unwrap_or_default()
        .remove(0);
    let last = status
        .last_state
        .and_then(|s| s.terminated)
        .map(|t| (t.exit_code, t.signal));
    assert_eq!(last, Some((137, Some(9))));
    let new_pids = processes_of("crash");
    assert_eq!(new_pids.len(), 1);
    assert_ne!(new_pids[0], pids[0]);
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_killed_container_is_noticed_at_the_next_relist() -> anyhow::Result<()> {
    // As a real kubelet, kubesim acts on an exit only when it relists: a container killed just
    // after one relist is noticed at the next, nearly a period later, and none waits much more
    // than a period. Pod A's noticed kill marks a relist; pod B is killed right after it.
    const PERIOD: Duration = Duration::from_secs(3);
    let sim = Sim::start_configured(false, testpod_images(), |node| {
        node.relist_period = PERIOD;
    })
    .await?;
    let template = deployment("relist", 1, IMAGE);
    for name in ["relist-a", "relist-b"] {
        sim.pods()
            .create(&PostParams::default(), &pod_of(&template, name))
            .await?;
    }
    let mut pods = Vec::new();
    for name in ["relist-a", "relist-b"] {
        pods.push(wait::for_object(&sim.pods(), name, WAIT, is_ready).await?);
    }
    // The container's process is the one its containerID names.
    let pid_a = container_pid(&pods[0])?;
    assert_eq!(processes_of("relist-a"), vec![pid_a]);
    let restarted = |p: &Pod| restart_count(p) >= 1;
    let kill = |pid: u32| {
        std::process::Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status()
    };
    let killed_a = Instant::now();
    kill(pid_a)?;
    wait::for_object(&sim.pods(), "relist-a", WAIT, restarted).await?;
    let noticed_a = killed_a.elapsed();
    kill(container_pid(&pods[1])?)?;
    let killed_b = Instant::now();
    wait::for_object(&sim.pods(), "relist-b", WAIT, restarted).await?;
    let noticed_b = killed_b.elapsed();
    // Slack for a loaded machine: the status write and the watch between a relist and this test.
    let slack = Duration::from_secs(2);
    assert!(
        noticed_a <= PERIOD + slack,
        "A noticed {noticed_a:?} after its kill"
    );
    assert!(
        noticed_b >= PERIOD - slack && noticed_b <= PERIOD + slack,
        "B, killed just after a relist, noticed {noticed_b:?} after its kill (period {PERIOD:?})"
    );
    // The terminated run keeps its containerID in lastState; the new run has its own.
    let a = wait::for_object(&sim.pods(), "relist-a", WAIT, |p| {
        restarted(p) && is_ready(p)
    })
    .await?;
    assert_ne!(container_pid(&a)?, pid_a);
    let status = a
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default()
        .remove(0);
    let old_id = format!("kubesim://{pid_a}");
    let last_id = status
        .last_state
        .and_then(|s| s.terminated)
        .and_then(|t| t.container_id);
    assert_eq!(last_id.as_deref(), Some(old_id.as_str()));
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_unmapped_image_stays_pending_with_err_image_pull() -> anyhow::Result<()> {
    // A cluster without the image cannot run the pod: Pending, waiting ErrImagePull or
    // ImagePullBackOff, and a Warning Event says why.
    let sim = Sim::start().await?;
    sim.pods()
        .create(
            &PostParams::default(),
            &pod_of(&deployment("nope", 1, "example.com/unknown:1"), "nope"),
        )
        .await?;
    let reason = poll("image pull failure", WAIT, || async {
        let pod = sim.pods().get("nope").await?;
        let status = pod.status.unwrap_or_default();
        let waiting = status
            .container_statuses
            .unwrap_or_default()
            .first()
            .and_then(|c| c.state.clone()?.waiting?.reason);
        Ok(waiting
            .filter(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
            .map(|r| (status.phase, r)))
    })
    .await?;
    assert_eq!(reason.0.as_deref(), Some("Pending"));
    let events: Api<Event> = Api::namespaced(sim.client.clone(), "default");
    poll("a Failed event", WAIT, || async {
        let list = events.list(&ListParams::default()).await?.items;
        Ok(list
            .iter()
            .any(|e| {
                e.involved_object.name.as_deref() == Some("nope")
                    && e.reason.as_deref() == Some("Failed")
                    && e.type_.as_deref() == Some("Warning")
            })
            .then_some(()))
    })
    .await?;
    assert!(processes_of("nope").is_empty());
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn env_references_resolve_and_output_reaches_the_pod_log() -> anyhow::Result<()> {
    // ConfigMap, Secret and downward-API values reach the process; Service DNS names in env are
    // rewritten to cluster IPs; stdout lands in the log `kubectl logs` reads.
    let sim = Sim::start().await?;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "default");
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("cfg".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("level".to_string(), "debug".to_string())])),
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm).await?;
    let secrets: Api<Secret> = Api::namespaced(sim.client.clone(), "default");
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("jwt".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "key".to_string(),
            ByteString(b"s3cret".to_vec()),
        )])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &secret).await?;
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(sim.client.clone(), "default");
    services
        .create(&PostParams::default(), &service("users"))
        .await?;
    let ip = poll("cluster IP", WAIT, || async {
        let svc = services.get("users").await?;
        Ok(svc
            .spec
            .and_then(|s| s.cluster_ip)
            .filter(|ip| !ip.is_empty()))
    })
    .await?;

    let mut pod = pod_of(&deployment("envy", 1, IMAGE), "envy");
    let source = |s: EnvVarSource| EnvVar {
        name: String::new(),
        value: None,
        value_from: Some(s),
    };
    if let Some(c) = pod.spec.as_mut().map(|s| &mut s.containers[0]) {
        c.env = Some(vec![
            EnvVar {
                name: "LEVEL".into(),
                ..source(EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: "cfg".into(),
                        key: "level".into(),
                        optional: None,
                    }),
                    ..Default::default()
                })
            },
            EnvVar {
                name: "JWT".into(),
                ..source(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "jwt".into(),
                        key: "key".into(),
                        optional: None,
                    }),
                    ..Default::default()
                })
            },
            EnvVar {
                name: "MY_IP".into(),
                ..source(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "status.podIP".into(),
                        api_version: None,
                    }),
                    ..Default::default()
                })
            },
            EnvVar {
                name: "USERS_URL".into(),
                value: Some("http://users.default.svc.cluster.local:8080".into()),
                value_from: None,
            },
        ]);
    }
    sim.pods().create(&PostParams::default(), &pod).await?;
    let pod = poll("pod ready", WAIT, || async {
        let p = sim.pods().get("envy").await?;
        Ok(is_ready(&p).then_some(p))
    })
    .await?;
    let addr = pod_addr(&pod)?;
    let env = |name: &'static str| async move {
        http_get(addr, &format!("/env/{name}"))
            .await
            .map(|(_, body)| body)
    };
    assert_eq!(env("LEVEL").await?, "debug");
    assert_eq!(env("JWT").await?, "s3cret");
    assert_eq!(env("MY_IP").await?, addr.ip().to_string());
    assert_eq!(env("LISTEN_ADDR").await?, addr.to_string());
    assert_eq!(env("USERS_URL").await?, format!("http://{ip}:8080"));

    let log = poll("log line", WAIT, || async {
        let opts = LogOptions::default();
        let text = read_pod_log(sim.state.path(), "default", "envy", &opts)
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        Ok(text.ok().filter(|t| t.contains("listening on")))
    })
    .await?;
    assert!(log.contains(&addr.to_string()), "log: {log}");
    // The same log through the API server, as `kubectl logs` reads it.
    let via_api = sim
        .pods()
        .logs("envy", &kube::api::LogParams::default())
        .await?;
    assert!(via_api.contains("listening on"), "pods/log: {via_api}");
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_container() -> anyhow::Result<()> {
    // After failureThreshold failed liveness checks the kubelet kills the process, records a
    // Killing event and starts a fresh one (restartCount 1, healthy again).
    let sim = Sim::start().await?;
    sim.pods()
        .create(
            &PostParams::default(),
            &pod_of(&deployment("sick", 1, IMAGE), "sick"),
        )
        .await?;
    let pod = poll("pod ready", WAIT, || async {
        let p = sim.pods().get("sick").await?;
        Ok(is_ready(&p).then_some(p))
    })
    .await?;
    let before = processes_of("sick");
    assert_eq!(http(pod_addr(&pod)?, "POST", "/sick").await?.0, 200);
    poll("restart after liveness failure", WAIT, || async {
        let p = sim.pods().get("sick").await?;
        Ok((restart_count(&p) == 1 && is_ready(&p)).then_some(()))
    })
    .await?;
    let after = processes_of("sick");
    assert_eq!(after.len(), 1);
    assert_ne!(after, before, "a new process");
    let (code, _) = http_get(pod_addr(&pod)?, "/healthz").await?;
    assert_eq!(code, 200, "the new process is healthy");
    let events: Api<Event> = Api::namespaced(sim.client.clone(), "default");
    let list = events.list(&ListParams::default()).await?.items;
    assert!(list
        .iter()
        .any(|e| e.involved_object.name.as_deref() == Some("sick")
            && e.reason.as_deref() == Some("Killing")));
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn deletion_waits_the_grace_period_then_kills_and_the_endpoint_terminates(
) -> anyhow::Result<()> {
    // A process that ignores SIGTERM keeps running for terminationGracePeriodSeconds while its
    // endpoint reports terminating and not ready; then it is SIGKILLed and the pod goes away.
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::DeleteParams;

    let sim = Sim::start().await?;
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(sim.client.clone(), "default");
    services
        .create(&PostParams::default(), &service("stubborn"))
        .await?;
    let mut pod = pod_of(&deployment("stubborn", 1, IMAGE), "stubborn");
    if let Some(spec) = pod.spec.as_mut() {
        spec.termination_grace_period_seconds = Some(3);
        spec.containers[0].env = Some(vec![EnvVar {
            name: "TESTPOD_IGNORE_SIGTERM".into(),
            value: Some("1".into()),
            value_from: None,
        }]);
    }
    sim.pods().create(&PostParams::default(), &pod).await?;
    poll("pod ready", WAIT, || async {
        Ok(is_ready(&sim.pods().get("stubborn").await?).then_some(()))
    })
    .await?;
    let slices: Api<EndpointSlice> = Api::namespaced(sim.client.clone(), "default");
    let conditions = || async {
        let lp = ListParams::default().labels("kubernetes.io/service-name=stubborn");
        let list = slices.list(&lp).await?.items;
        anyhow::Ok(
            list.into_iter()
                .flat_map(|s| s.endpoints)
                .filter_map(|e| e.conditions)
                .collect::<Vec<_>>(),
        )
    };
    poll("ready endpoint", WAIT, || async {
        Ok(conditions()
            .await?
            .iter()
            .any(|c| c.ready == Some(true))
            .then_some(()))
    })
    .await?;

    let started = std::time::Instant::now();
    sim.pods()
        .delete("stubborn", &DeleteParams::default())
        .await?;
    poll("terminating endpoint", WAIT, || async {
        let c = conditions().await?;
        Ok(c.iter()
            .any(|c| c.terminating == Some(true) && c.ready == Some(false))
            .then_some(()))
    })
    .await?;
    assert_eq!(
        processes_of("stubborn").len(),
        1,
        "still running during the grace period"
    );
    poll("pod and process gone", WAIT, || async {
        let gone = sim.pods().get_opt("stubborn").await?.is_none();
        Ok((gone && processes_of("stubborn").is_empty()).then_some(()))
    })
    .await?;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the grace period was honoured"
    );
    poll("endpoint removed", WAIT, || async {
        Ok(conditions().await?.is_empty().then_some(()))
    })
    .await?;
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn dropping_the_node_kills_its_processes() -> anyhow::Result<()> {
    // A test that fails (or forgets shutdown) drops its Node: no pod process may survive that.
    let mut sim = Sim::start().await?;
    sim.pods()
        .create(
            &PostParams::default(),
            &pod_of(&deployment("dropped", 1, IMAGE), "dropped"),
        )
        .await?;
    poll("pod ready", WAIT, || async {
        Ok(is_ready(&sim.pods().get("dropped").await?).then_some(()))
    })
    .await?;
    assert_eq!(processes_of("dropped").len(), 1);
    drop(sim.node.take());
    poll("process killed", WAIT, || async {
        Ok(processes_of("dropped").is_empty().then_some(()))
    })
    .await?;
    sim.shutdown().await;
    Ok(())
}
