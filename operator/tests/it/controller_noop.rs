//! A converged MicroService costs no writes: after an operator restart, every child is found
//! unchanged and no resourceVersion moves. Also checks the operator's HTTP endpoints.

use std::net::SocketAddr;

use crate::support::*;
use anyhow::{Context, Result};
use flotilla_operator::OperatorConfig;
use flotilla_testkit::http;
use kube::ResourceExt;

/// A loopback address with a port that was free a moment ago.
fn free_addr() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let reply = http::get(&format!("http://{addr}{path}")).await?;
    Ok((reply.status, reply.body))
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn restart_on_a_converged_namespace_writes_nothing() -> Result<()> {
    // Nothing changed → no write: a restarted operator reconciles every MicroService again and
    // finds all children unchanged.
    let env = start("noop").await?;
    let mut s = spec("flotilla/users:0.1.0");
    s.config = Some([("A".to_string(), "1".to_string())].into());
    s.autoscaling = serde_json::from_value(serde_json::json!(
        {"maxReplicas": 3, "targetCPUUtilizationPercentage": 50}
    ))?;
    env.create("users", s).await?;
    env.wait("converged status", || async {
        let ms = env.msvcs().get("users").await?;
        let observed = ms.status.as_ref().and_then(|s| s.observed_generation);
        let hpa = env.hpas().get_opt("users").await?;
        Ok((observed == ms.metadata.generation && hpa.is_some()).then_some(()))
    })
    .await?;
    env.stop_operator().await?;
    let versions = || async {
        Ok::<_, anyhow::Error>(vec![
            env.deployments().get("users").await?.resource_version(),
            env.services().get("users").await?.resource_version(),
            env.config_maps()
                .get("users-config")
                .await?
                .resource_version(),
            env.hpas().get("users").await?.resource_version(),
            env.msvcs().get("users").await?.resource_version(),
        ])
    };
    let before = versions().await?;

    let addr = free_addr()?;
    let config = OperatorConfig {
        metrics_addr: Some(addr),
        ..test_config()
    };
    let operator = spawn_operator(&env, config);
    let series =
        "flotilla_child_writes_total{kind=\"HorizontalPodAutoscaler\",outcome=\"unchanged\"}";
    let text = env
        .poll("a reconcile after the restart", || async {
            let Ok((200, text)) = http_get(addr, "/metrics").await else {
                return Ok(None);
            };
            Ok((metric(&text, series) >= 1.0).then_some(text))
        })
        .await?;
    for outcome in ["created", "updated", "deleted"] {
        for kind in [
            "Deployment",
            "Service",
            "ConfigMap",
            "HorizontalPodAutoscaler",
        ] {
            let s = format!("flotilla_child_writes_total{{kind=\"{kind}\",outcome=\"{outcome}\"}}");
            assert_eq!(metric(&text, &s), 0.0, "{s} in\n{text}");
        }
    }
    assert_eq!(versions().await?, before, "a converged object was written");

    let (code, _) = http_get(addr, "/readyz").await?;
    assert_eq!(code, 200);
    let (code, _) = http_get(addr, "/healthz").await?;
    assert_eq!(code, 200);
    assert_eq!(metric(&text, "flotilla_leader"), 1.0);
    operator.stop().await.context("operator did not stop")?;
    Ok(())
}
