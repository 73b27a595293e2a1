//! One leader even when the API server hangs: two operator replicas on kubesim, the leader's
//! Lease renewals hang (the fault matches only its holder identity), and the test records every
//! write each replica's client sends.

// Each test binary uses a different part of the shared harness.
#[allow(dead_code)]
mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_operator::leader::{LeaseTiming, LEASE_NAME};
use flotilla_operator::{OperatorConfig, RunError};
use k8s_openapi::api::coordination::v1::Lease;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Api;
use kubesim::faults::LatencyRule;
use support::*;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TIMING: LeaseTiming = LeaseTiming {
    lease_duration: Duration::from_secs(4),
    renew_interval: Duration::from_secs(1),
    retry_interval: Duration::from_millis(250),
};

/// One write request as the replica's client saw it: from the call until the answer arrived
/// or the caller gave up on it.
#[derive(Debug, Clone)]
struct Write {
    who: &'static str,
    what: String,
    start: Instant,
    end: Instant,
}

#[derive(Debug, Clone, Default)]
struct Writes(Arc<Mutex<Vec<Write>>>);

impl Writes {
    fn of(&self, who: &str) -> Vec<Write> {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.iter().filter(|w| w.who == who).cloned().collect()
    }
}

/// Records the write when the request's future completes or is dropped.
struct InFlight {
    who: &'static str,
    what: String,
    start: Instant,
    log: Writes,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let w = Write {
            who: self.who,
            what: std::mem::take(&mut self.what),
            start: self.start,
            end: Instant::now(),
        };
        self.log.0.lock().unwrap_or_else(|p| p.into_inner()).push(w);
    }
}

/// A client layer logging every request that is not a read and not about the Lease.
struct Recording<S> {
    inner: S,
    who: &'static str,
    log: Writes,
}

impl<S, B> tower::Service<http::Request<B>> for Recording<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let write = req.method() != http::Method::GET && !path.contains("/leases");
        let guard = write.then(|| InFlight {
            who: self.who,
            what: format!("{} {path}", req.method()),
            start: Instant::now(),
            log: self.log.clone(),
        });
        let call = self.inner.call(req);
        Box::pin(async move {
            let r = call.await;
            drop(guard);
            r
        })
    }
}

/// A replica running in-process with its own recording client; its result and the time it
/// returned come back through the join handle.
struct Replica {
    _stop: oneshot::Sender<()>,
    task: JoinHandle<(Result<(), RunError>, Instant)>,
}

async fn replica(env: &Harness, writes: &Writes, who: &'static str) -> Result<Replica> {
    let path = env.local().context("needs kubesim")?.kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(path)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let log = writes.clone();
    let layer = tower::layer::layer_fn(move |inner| Recording {
        inner,
        who,
        log: log.clone(),
    });
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&layer)
        .build();
    let config = OperatorConfig {
        leader_election: true,
        leader_election_namespace: Some(env.ns.clone()),
        identity: Some(who.to_string()),
        lease_timing: TIMING,
        ..test_config()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let run = flotilla_operator::run(client, config, async move {
        let _ = stopped.await;
    });
    let task = tokio::spawn(async move {
        let r = run.await;
        (r, Instant::now())
    });
    Ok(Replica { _stop: stop, task })
}

async fn wait_holder(env: &Harness, who: &str) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    env.poll(&format!("{who} to hold the lease"), || async {
        let l = leases.get_opt(LEASE_NAME).await?;
        let holder = l.and_then(|l| l.spec).and_then(|s| s.holder_identity);
        Ok((holder.as_deref() == Some(who)).then_some(()))
    })
    .await
}

#[tokio::test]
async fn leader_with_hanging_renewals_stops_writing_before_the_standby_takes_over() -> Result<()> {
    // Never two writers: once the leader's renewals hang, it stops writing by its renew
    // deadline and returns LeadershipLost, and the standby takes over one lease duration after
    // the last renewal and does the writing from then on.
    let env = start_without_operator("leader-hang").await?;
    env.run(|env| {
        Box::pin(async move {
            let writes = Writes::default();
            let a = replica(env, &writes, "op-a").await?;
            wait_holder(env, "op-a").await?;
            let _b = replica(env, &writes, "op-b").await?;
            env.create("users", spec("flotilla/users:0.1.0")).await?;
            env.wait("op-a to create the Deployment", || async {
                Ok(env.deployments().get_opt("users").await?)
            })
            .await?;

            let faults = env.kubesim()?.faults();
            for rule in LatencyRule::hang_lease_writes_of("op-a") {
                faults.add_latency(rule);
            }
            let hung_at = Instant::now();
            wait_holder(env, "op-b").await?;
            let taken_over = hung_at.elapsed();

            // A change after the takeover: whoever still thinks it leads would write it.
            env.patch_spec(
                "users",
                serde_json::json!({"image": "flotilla/users:0.2.0"}),
            )
            .await?;
            env.wait("the change to be applied", || async {
                let d = env.deployments().get("users").await?;
                let image = container(&d).and_then(|c| c.image);
                Ok((image.as_deref() == Some("flotilla/users:0.2.0")).then_some(()))
            })
            .await?;

            let (a_writes, b_writes) = (writes.of("op-a"), writes.of("op-b"));
            let (Some(a_last), Some(b_first)) = (
                a_writes.iter().max_by_key(|w| w.end),
                b_writes.iter().min_by_key(|w| w.start),
            ) else {
                bail!("each replica should have written: op-a {a_writes:?}, op-b {b_writes:?}");
            };
            if a_last.end >= b_first.start {
                bail!(
                    "two writers: op-a's {} ended {:?} after op-b's {} started",
                    a_last.what,
                    a_last.end - b_first.start,
                    b_first.what
                );
            }

            faults.clear();
            let (result, returned) = tokio::time::timeout(Duration::from_secs(5), a.task)
                .await
                .context("op-a kept running although its renewals hang")??;
            match result {
                Err(RunError::LeadershipLost(reason)) => eprintln!("op-a: {reason}"),
                other => bail!("op-a should have lost the lease, got {other:?}"),
            }
            let stopped = returned.saturating_duration_since(hung_at);
            eprintln!("op-a stopped {stopped:?} and op-b took over {taken_over:?} after the hang");
            assert!(
                stopped < TIMING.lease_duration,
                "op-a stopped after {stopped:?}"
            );
            assert!(
                taken_over < TIMING.lease_duration + Duration::from_secs(2),
                "takeover after {taken_over:?}"
            );
            Ok(())
        })
    })
    .await
}
