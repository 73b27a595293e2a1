//! The operator binary exports its reconcile spans over OTLP/gRPC to a real receiver when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, named `flotilla-operator`: a reconcile is one trace
//! with its API calls below it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use flotilla_testkit::operator::{free_port, Launcher, OperatorProcess, RunningOperator, Target};
use flotilla_testkit::otlp::Receiver;
use flotilla_testkit::wait::poll;
use flotilla_testkit::Harness;
use futures::FutureExt as _;

use crate::support::spec;

/// The operator binary for all namespaces, exporting traces to `endpoint` over gRPC in
/// batches of at most 100 ms.
fn exporting_to(endpoint: String) -> Launcher {
    Arc::new(move |target: Target<'_>| {
        let endpoint = endpoint.clone();
        async move {
            let metrics_addr = format!("127.0.0.1:{}", free_port()?);
            let args: Vec<String> = [
                "run",
                "--metrics-addr",
                &metrics_addr,
                "--log-format",
                "text",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            let envs = [
                ("POD_NAMESPACE", "default"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()));
            let log = target.state_dir.join("operator.log");
            let operator =
                OperatorProcess::start(target.kubeconfig, &args, &envs, &metrics_addr, log).await?;
            Ok(Box::new(operator) as Box<dyn RunningOperator>)
        }
        .boxed()
    })
}

#[tokio::test]
async fn operator_exports_reconcile_spans_over_otlp_grpc() -> Result<()> {
    // A MicroService's reconcile is a span at the receiver, from the service `flotilla-operator`.
    let receiver = Receiver::start().await?;
    let h = Harness::builder("otlp")
        .operator(exporting_to(receiver.grpc_endpoint()))
        .start()
        .await?;
    h.create("users", spec("flotilla/users:0.1.0")).await?;
    let reconcile = poll(
        "the operator's reconcile span",
        Duration::from_secs(60),
        || async {
            Ok(receiver.spans().into_iter().find(|s| {
                s.service == "flotilla-operator"
                    && s.name == "reconciling object"
                    && s.attribute("object.ref").contains("users")
            }))
        },
    )
    .await?;
    assert_eq!(reconcile.protocol, "grpc");
    assert_eq!(reconcile.trace_id.len(), 32, "{reconcile:?}");

    // The reconcile's writes are spans of the same trace, below the reconcile's own span.
    let write = poll(
        "the span of the reconcile's apply of the Deployment",
        Duration::from_secs(60),
        || async {
            Ok(receiver.spans().into_iter().find(|s| {
                s.name == "api call"
                    && s.attribute("action") == "apply Deployment users"
                    && s.trace_id == reconcile.trace_id
            }))
        },
    )
    .await?;
    let spans = receiver.spans();
    let mut parent = write.parent_span_id.clone();
    let mut chain = vec![write.name.clone()];
    while !parent.is_empty() && parent != reconcile.span_id {
        let up = spans
            .iter()
            .find(|s| s.span_id == parent)
            .with_context(|| format!("parent {parent} of {chain:?} not received"))?;
        chain.push(up.name.clone());
        parent = up.parent_span_id.clone();
    }
    assert_eq!(
        parent, reconcile.span_id,
        "the write's span descends from the reconcile's: {chain:?}"
    );
    Ok(())
}
