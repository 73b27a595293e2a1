//! Services: cluster IPs, EndpointSlices from ready pods, and the proxy on the cluster IP.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use flotilla_testkit::wait::poll;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};

use crate::support::node::*;

const WAIT: Duration = Duration::from_secs(60);

/// (address, ready) of every endpoint in the Service's slices.
async fn endpoints(
    slices: &Api<EndpointSlice>,
    svc: &str,
) -> anyhow::Result<BTreeSet<(String, bool)>> {
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={svc}"));
    Ok(slices
        .list(&lp)
        .await?
        .items
        .into_iter()
        .flat_map(|s| s.endpoints)
        .map(|e| {
            (
                e.addresses[0].clone(),
                e.conditions.and_then(|c| c.ready).unwrap_or(true),
            )
        })
        .collect())
}

#[tokio::test]
async fn a_pod_failing_readiness_leaves_the_endpoints_and_stops_getting_traffic(
) -> anyhow::Result<()> {
    // Two ready pods share traffic through the cluster IP; once one fails readiness it is marked
    // not ready in the slice and new connections reach only the other; with none ready the
    // cluster IP refuses connections.
    let sim = Sim::start().await?;
    let services: Api<Service> = Api::namespaced(sim.client.clone(), "default");
    services
        .create(&PostParams::default(), &service("shop"))
        .await?;
    sim.deployments()
        .create(&PostParams::default(), &deployment("shop", 2, IMAGE))
        .await?;
    let ip = poll("cluster IP", WAIT, || async {
        Ok(services
            .get("shop")
            .await?
            .spec
            .and_then(|s| s.cluster_ip)
            .filter(|ip| !ip.is_empty()))
    })
    .await?;
    let vip: SocketAddr = format!("{ip}:8080").parse()?;
    let pods = poll("2 ready pods", WAIT, || async {
        let pods = live_pods(&sim, "shop").await?;
        Ok((pods.len() == 2 && pods.iter().all(is_ready)).then_some(pods))
    })
    .await?;
    let slices: Api<EndpointSlice> = Api::namespaced(sim.client.clone(), "default");
    let ips: Vec<String> = pods
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    let want: BTreeSet<(String, bool)> = ips.iter().map(|ip| (ip.clone(), true)).collect();
    poll("both endpoints ready", WAIT, || async {
        Ok((endpoints(&slices, "shop").await? == want).then_some(()))
    })
    .await?;

    let names: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let served = poll("traffic to both pods", WAIT, || async {
        let mut seen = BTreeSet::new();
        for _ in 0..6 {
            if let Ok((200, body)) = http_get(vip, "/").await {
                seen.insert(body.trim().trim_start_matches("pod=").to_string());
            }
        }
        Ok((seen == names).then_some(seen))
    })
    .await?;
    assert_eq!(served.len(), 2);

    // Fail readiness of the first pod.
    let (bad, good) = (&pods[0], &pods[1]);
    assert_eq!(http(pod_addr(bad)?, "POST", "/fail").await?.0, 200);
    let bad_ip = bad
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default();
    let good_ip = good
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default();
    let want: BTreeSet<(String, bool)> = [(bad_ip, false), (good_ip, true)].into_iter().collect();
    poll("failing pod marked not ready", WAIT, || async {
        Ok((endpoints(&slices, "shop").await? == want).then_some(()))
    })
    .await?;
    let good_name = good.metadata.name.clone().unwrap_or_default();
    poll("traffic only to the ready pod", WAIT, || async {
        let mut all_good = true;
        for _ in 0..10 {
            let (code, body) = http_get(vip, "/").await?;
            all_good &= code == 200 && body.trim() == format!("pod={good_name}");
        }
        Ok(all_good.then_some(()))
    })
    .await?;

    // No ready endpoints: the cluster IP refuses.
    assert_eq!(http(pod_addr(good)?, "POST", "/fail").await?.0, 200);
    poll("connections refused", WAIT, || async {
        Ok(http_get(vip, "/").await.is_err().then_some(()))
    })
    .await?;
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn slices_written_by_others_drive_the_proxy_for_selectorless_services() -> anyhow::Result<()>
{
    // For a Service without a selector the built-in controller writes nothing; the proxy follows
    // whatever slice another writer (Flotilla) publishes, and a change applies to new connections.
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use kube::api::{ObjectMeta, Patch, PatchParams};

    let sim = Sim::start().await?;
    sim.deployments()
        .create(&PostParams::default(), &deployment("pool", 2, IMAGE))
        .await?;
    let pods = poll("2 ready pods", WAIT, || async {
        let pods = live_pods(&sim, "pool").await?;
        Ok((pods.len() == 2 && pods.iter().all(is_ready)).then_some(pods))
    })
    .await?;
    let services: Api<Service> = Api::namespaced(sim.client.clone(), "default");
    let mut svc = service("front");
    if let Some(spec) = svc.spec.as_mut() {
        spec.selector = None;
    }
    services.create(&PostParams::default(), &svc).await?;
    let ip = poll("cluster IP", WAIT, || async {
        Ok(services
            .get("front")
            .await?
            .spec
            .and_then(|s| s.cluster_ip)
            .filter(|ip| !ip.is_empty()))
    })
    .await?;
    let vip: SocketAddr = format!("{ip}:8080").parse()?;
    let slices: Api<EndpointSlice> = Api::namespaced(sim.client.clone(), "default");
    let slice_for = |pod: &k8s_openapi::api::core::v1::Pod| EndpointSlice {
        metadata: ObjectMeta {
            name: Some("front-manual".into()),
            labels: Some(
                [
                    (
                        "kubernetes.io/service-name".to_string(),
                        "front".to_string(),
                    ),
                    (
                        "endpointslice.kubernetes.io/managed-by".to_string(),
                        "flotilla.rs".to_string(),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec![pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(PORT),
            ..Default::default()
        }]),
    };
    let name = |p: &k8s_openapi::api::core::v1::Pod| {
        format!("pod={}", p.metadata.name.as_deref().unwrap_or_default())
    };
    slices
        .create(&PostParams::default(), &slice_for(&pods[0]))
        .await?;
    for (i, pod) in pods.iter().enumerate() {
        if i > 0 {
            let patch = serde_json::to_value(slice_for(pod))?;
            slices
                .patch(
                    "front-manual",
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
        }
        let want = name(pod);
        poll("traffic to the listed pod only", WAIT, || async {
            let mut hits = 0;
            for _ in 0..5 {
                if let Ok((200, body)) = http_get(vip, "/").await {
                    hits += usize::from(body.trim() == want);
                }
            }
            Ok((hits == 5).then_some(()))
        })
        .await?;
    }
    let all = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=front"))
        .await?
        .items;
    assert_eq!(
        all.len(),
        1,
        "the built-in controller leaves selector-less Services alone"
    );
    sim.shutdown().await;
    Ok(())
}
