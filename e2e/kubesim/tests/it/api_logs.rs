//! `pods/<name>/log` served from the node's log files, including `tailLines` and `follow`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{LogParams, PostParams};
use kube::Api;
use kubesim::node::logs::container_log_path;
use kubesim::ClusterConfig;
use serde_json::json;

use crate::support::{start, start_with};

#[tokio::test]
async fn pod_logs_are_read_from_the_node_directory() -> Result<()> {
    // A container's log file is what the log endpoint returns; follow streams appended lines.
    let dir = tempfile::tempdir()?;
    let cluster = start_with(ClusterConfig {
        node_state_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "default");
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "i"}]}}),
    )?;
    pods.create(&PostParams::default(), &pod).await?;
    let path = container_log_path(dir.path(), "default", "p", "app", false);
    std::fs::create_dir_all(path.parent().context("log dir")?)?;
    std::fs::write(&path, "one\ntwo\nthree\n")?;

    assert_eq!(
        pods.logs("p", &LogParams::default()).await?,
        "one\ntwo\nthree\n"
    );
    assert_eq!(
        pods.logs(
            "p",
            &LogParams {
                tail_lines: Some(1),
                ..Default::default()
            }
        )
        .await?,
        "three\n"
    );

    let mut stream = pods
        .log_stream(
            "p",
            &LogParams {
                follow: true,
                ..Default::default()
            },
        )
        .await?;
    use futures::AsyncBufReadExt;
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    assert_eq!(line, "one\n");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)?
        .write_all(b"four\n")?;
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            line.clear();
            if stream.read_line(&mut line).await? == 0 {
                anyhow::bail!("log stream ended");
            }
            if line == "four\n" {
                return Ok(());
            }
        }
    })
    .await?;
    found?;
    Ok(())
}

#[tokio::test]
async fn logs_without_a_node_are_not_found() -> Result<()> {
    // With no node directory the log endpoint answers 404 rather than an empty log.
    let cluster = start().await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "default");
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "i"}]}}),
    )?;
    pods.create(&PostParams::default(), &pod).await?;
    match pods.logs("p", &LogParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404),
        other => anyhow::bail!("expected 404, got {other:?}"),
    }
    Ok(())
}
