//! The samples' events on the cluster: the broker runs as a pod (`services/deploy/rabbitmq.yaml`,
//! the `rabbitmq:3` image, which kubesim plays with the machine's RabbitMQ), orders publishes an
//! `OrderPlaced` event for an order placed over gRPC with a token from auth, and shipping, a
//! queue consumer, schedules its shipment. Every manifest is the one in `services/deploy/`, with
//! its generated Secrets (the broker's user among them).
//!
//! The order is placed over gRPC on the orders Service's cluster IP, which only the local
//! cluster lets a test runner reach (the API server's service proxy speaks HTTP/1.1): on a
//! cluster named by `FLOTILLA_E2E_KUBECONFIG` the test says so and checks nothing.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use flotilla_e2e::chart::{kind_of, split_documents};
use flotilla_e2e::env::run_test;
use flotilla_e2e::{http, msvc, tools};
use flotilla_testkit::cluster::FIELD_MANAGER;
use flotilla_testkit::Harness;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Patch, PatchParams};
use kube::ResourceExt;
use orders::pb::orders_client::OrdersClient;
use orders::pb::CreateOrderRequest;
use serde_json::json;

/// A sample Deployment to pull, processes to start and a broker to boot on a loaded machine.
const READY: Duration = Duration::from_secs(180);

/// Server-side applies the broker's Deployment and Service from `services/deploy/rabbitmq.yaml`.
async fn apply_broker(h: &Harness) -> Result<()> {
    let path = tools::repo_root().join("services/deploy/rabbitmq.yaml");
    let text = std::fs::read_to_string(&path)?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for doc in split_documents(&text)? {
        match kind_of(&doc) {
            "Deployment" => {
                let obj: Deployment = serde_json::from_value(doc)?;
                h.api::<Deployment>()
                    .patch(&obj.name_any(), &params, &Patch::Apply(&obj))
                    .await?;
            }
            "Service" => {
                let obj: Service = serde_json::from_value(doc)?;
                h.api::<Service>()
                    .patch(&obj.name_any(), &params, &Patch::Apply(&obj))
                    .await?;
            }
            other => anyhow::bail!("unexpected {other} in {}", path.display()),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_reaches_shipping_through_the_broker_pod() -> Result<()> {
    run_test("an_order_reaches_shipping_through_the_broker_pod", |h| {
        Box::pin(async move {
            if !h.is_local() {
                eprintln!(
                    "not checked on this cluster: the test places the order over gRPC on the \
                     orders Service's cluster IP, which only the local cluster exposes"
                );
                return Ok(());
            }
            let mut users = msvc::sample("users")?;
            // One pod: its SQLite database is a file per pod.
            users.msvc.spec.replicas = 1;
            msvc::apply_sample(h, &users).await?;
            msvc::apply_sample(h, &msvc::sample("auth")?).await?;
            let orders = msvc::sample("orders")?;
            // orders' Secrets include the broker's credentials, which the broker reads too.
            msvc::apply_secrets(h, &orders).await?;
            apply_broker(h).await?;
            msvc::apply_sample(h, &orders).await?;
            msvc::apply_sample(h, &msvc::sample("shipping")?).await?;
            for name in ["users", "auth", "orders", "shipping"] {
                h.wait_ready(name, READY).await?;
            }
            // A fresh users database per test namespace: the address is free.
            let (email, password) = ("buyer@example.com", "correct horse battery staple");
            http::sign_up(h, "users", email, password, READY).await?;
            let token = http::log_in(h, "auth", email, password).await?;

            let svc = h.api::<Service>().get("orders").await?;
            let ip = svc
                .spec
                .and_then(|s| s.cluster_ip)
                .context("orders has no cluster IP")?;
            let mut api = OrdersClient::connect(format!("http://{ip}:8080")).await?;
            let mut request = tonic::Request::new(CreateOrderRequest {
                item: "teapot".into(),
                quantity: 2,
            });
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
            let order = api.create_order(request).await?.into_inner();

            // The shipment appears once shipping consumed the event from the broker pod.
            let path = format!("/shipments/{}", order.id);
            let shipment = h
                .poll_within("shipping to schedule the order's shipment", READY, || {
                    let path = path.clone();
                    async move {
                        let reply = http::service_request(
                            h,
                            "shipping",
                            ::http::Method::GET,
                            &path,
                            None,
                            None,
                        )
                        .await?;
                        Ok((reply.status == 200).then_some(reply))
                    }
                })
                .await?
                .json()?;
            ensure!(
                shipment.get("item") == Some(&json!("teapot"))
                    && shipment.get("quantity") == Some(&json!(2))
                    && shipment.get("userId") == Some(&json!(order.owner)),
                "{shipment}"
            );
            Ok(())
        })
    })
    .await
}
