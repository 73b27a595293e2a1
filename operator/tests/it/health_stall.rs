//! A hanging API server does not wedge the controller silently: calls other than watches time
//! out, and a controller that stops making progress shows in `/healthz`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;
use anyhow::{Context, Result};
use flotilla_operator::kube_client::{self, ClientTimeouts};
use flotilla_operator::OperatorConfig;
use flotilla_testkit::operator::free_port;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kubesim::faults::LatencyRule;

/// The operator's own client (with its timeouts) for the harness's cluster.
async fn operator_client(env: &Harness, request: Duration) -> Result<kube::Client> {
    let path = env.local().context("needs kubesim")?.kubeconfig_path();
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(path)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    let timeouts = ClientTimeouts {
        connect: Duration::from_secs(5),
        request,
    };
    Ok(kube_client::build(config, timeouts)?)
}

fn hang(verb: &str, resource: &str) -> LatencyRule {
    LatencyRule {
        verb: Some(verb.into()),
        resource: Some(resource.into()),
        millis: 3_600_000,
        holder_identity: None,
    }
}

#[tokio::test]
async fn hung_event_writes_do_not_wedge_reconciles() -> Result<()> {
    // Every Event the operator publishes hangs on the API server; the reconcile still gets to
    // the status write, because the publish gives up (client request timeout) and moves on.
    let env = start_without_operator("hung-events").await?;
    env.run(|env| {
        Box::pin(async move {
            env.kubesim()?
                .faults()
                .add_latency(hang("create", "events"));
            let client = operator_client(env, Duration::from_secs(1)).await?;
            let _op = InProcess::spawn(client, |c, s| flotilla_operator::run(c, test_config(), s));
            env.create("users", spec("flotilla/users:0.1.0")).await?;
            env.wait("a status despite hanging Events", || async {
                let ms = env.msvcs().get("users").await?;
                Ok(ms.status.is_some().then_some(()))
            })
            .await?;
            env.kubesim()?.faults().clear();
            Ok(())
        })
    })
    .await
}

#[tokio::test]
async fn healthz_reports_a_stalled_controller_until_it_moves_again() -> Result<()> {
    // The Deployment list hangs, so the caches never sync and the reconcile of a new
    // MicroService cannot finish: /healthz turns 503 naming the stall after the limit, and 200
    // again once the API server answers and the reconcile completes.
    let env = start_without_operator("healthz-stall").await?;
    env.run(|env| {
        Box::pin(async move {
            let faults = env.kubesim()?.faults();
            faults.add_latency(hang("list", "deployments"));
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
            let config = OperatorConfig {
                metrics_addr: Some(addr),
                stall_after: Duration::from_secs(2),
                ..test_config()
            };
            let client = operator_client(env, Duration::from_secs(1)).await?;
            let _op = InProcess::spawn(client, move |c, s| flotilla_operator::run(c, config, s));
            let http = reqwest::Client::new();
            let url = format!("http://{addr}/healthz");
            let healthz = || async {
                let r = http.get(&url).send().await?;
                Ok::<_, anyhow::Error>((r.status().as_u16(), r.text().await?))
            };
            env.poll("the operator to serve /healthz", || async {
                Ok(healthz().await.ok().filter(|(code, _)| *code == 200))
            })
            .await?;

            env.create("users", spec("flotilla/users:0.1.0")).await?;
            let (_, reason) = env
                .poll("/healthz to report the stall", || async {
                    Ok(healthz().await.ok().filter(|(code, _)| *code == 503))
                })
                .await?;
            assert!(reason.starts_with("controller stalled"), "{reason}");

            faults.clear();
            env.wait("the Deployment once the list answers", || async {
                Ok(env.deployments().get_opt("users").await?)
            })
            .await?;
            env.poll("/healthz to recover", || async {
                Ok(healthz().await.ok().filter(|(code, _)| *code == 200))
            })
            .await?;
            Ok(())
        })
    })
    .await
}
