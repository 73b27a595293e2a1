//! One leader even when the API server hangs or is slow: operator replicas on kubesim whose
//! clients record every write they send. The leader's Lease renewals hang (the fault matches only
//! its holder identity), or a write is slow when the leader is asked to stop.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use crate::support::*;
use anyhow::{bail, Context, Result};
use flotilla_crds::FAILOVER_FIELD_MANAGER;
use flotilla_operator::leader::{LeaseTiming, LEASE_NAME};
use flotilla_operator::{OperatorConfig, RunError};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Api;
use kubesim::faults::LatencyRule;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TIMING: LeaseTiming = LeaseTiming {
    lease_duration: Duration::from_secs(4),
    renew_interval: Duration::from_secs(1),
    retry_interval: Duration::from_millis(250),
};

/// A renew deadline (9 s) well above [`SLOW_WRITE`], so the slow write is within the leader's
/// write budget and finishes rather than being cut.
const SLOW_WRITE_TIMING: LeaseTiming = LeaseTiming {
    lease_duration: Duration::from_secs(10),
    renew_interval: Duration::from_secs(1),
    retry_interval: Duration::from_millis(250),
};

/// How long the API server holds the write in flight when the leader is asked to stop.
const SLOW_WRITE: Duration = Duration::from_millis(1500);

/// One write request as the replica's client saw it: from the call until the answer arrived
/// or the caller gave up on it.
#[derive(Debug, Clone)]
struct Write {
    who: &'static str,
    what: String,
    /// A write of the Lease itself (renewal, takeover, release).
    lease: bool,
    start: Instant,
    end: Instant,
}

/// Finished writes, and those still waiting for their answer (who, what).
#[derive(Debug, Default)]
struct Log {
    done: Vec<Write>,
    open: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone, Default)]
struct Writes(Arc<Mutex<Log>>);

impl Writes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `who`'s finished writes other than the Lease's.
    fn of(&self, who: &str) -> Vec<Write> {
        let all = self.lock();
        all.done
            .iter()
            .filter(|w| w.who == who && !w.lease)
            .cloned()
            .collect()
    }

    /// `who`'s finished writes of the Lease.
    fn lease_writes_of(&self, who: &str) -> Vec<Write> {
        let all = self.lock();
        all.done
            .iter()
            .filter(|w| w.who == who && w.lease)
            .cloned()
            .collect()
    }

    /// Whether `who` is waiting for the answer to a write whose method, path and query
    /// `matches`.
    fn in_flight(&self, who: &str, matches: impl Fn(&str) -> bool) -> bool {
        self.lock()
            .open
            .iter()
            .any(|(w, p)| *w == who && matches(p))
    }
}

/// Records the write when the request's future completes or is dropped.
struct InFlight {
    who: &'static str,
    what: String,
    lease: bool,
    start: Instant,
    log: Writes,
}

impl InFlight {
    fn new(who: &'static str, what: String, lease: bool, log: Writes) -> Self {
        log.lock().open.push((who, what.clone()));
        InFlight {
            who,
            what,
            lease,
            start: Instant::now(),
            log,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let w = Write {
            who: self.who,
            what: std::mem::take(&mut self.what),
            lease: self.lease,
            start: self.start,
            end: Instant::now(),
        };
        let mut all = self.log.lock();
        if let Some(i) = all
            .open
            .iter()
            .position(|(who, what)| *who == w.who && *what == w.what)
        {
            all.open.remove(i);
        }
        all.done.push(w);
    }
}

/// A client layer logging every request that is not a read.
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
        let write = req.method() != http::Method::GET;
        let guard = write.then(|| {
            let query = req
                .uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            let what = format!("{} {path}{query}", req.method());
            InFlight::new(self.who, what, path.contains("/leases"), self.log.clone())
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
    /// Dropping it asks the replica to shut down.
    stop: oneshot::Sender<()>,
    task: JoinHandle<(Result<(), RunError>, Instant)>,
}

async fn replica(env: &Harness, writes: &Writes, who: &'static str) -> Result<Replica> {
    replica_with(env, writes, who, TIMING).await
}

async fn replica_with(
    env: &Harness,
    writes: &Writes,
    who: &'static str,
    timing: LeaseTiming,
) -> Result<Replica> {
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
        lease_timing: timing,
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
    Ok(Replica { stop, task })
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

#[tokio::test]
async fn a_stopping_leader_releases_the_lease_only_after_its_writes_in_flight() -> Result<()> {
    // No write lands after the release: asked to stop while a write of its failover writer
    // (which the controller's drain does not cover) is slow on the API server, the leader
    // releases the Lease only once that write has been answered.
    let env = start_without_operator("leader-release").await?;
    env.run(|env| {
        Box::pin(async move {
            let writes = Writes::default();
            let a = replica_with(env, &writes, "op-a", SLOW_WRITE_TIMING).await?;
            wait_holder(env, "op-a").await?;
            let created = env.create("users", spec("flotilla/users:0.1.0")).await?;
            env.wait("op-a to write the status", || async {
                let ms = env.msvcs().get("users").await?;
                let observed = ms.status.and_then(|s| s.observed_generation);
                Ok((observed.is_some() && observed == created.metadata.generation).then_some(()))
            })
            .await?;

            let faults = env.kubesim()?.faults();
            faults.add_latency(LatencyRule {
                verb: Some("patch".into()),
                resource: Some("microservices/status".into()),
                millis: u64::try_from(SLOW_WRITE.as_millis())?,
                holder_identity: None,
            });
            // A failover report on a service without failover: the leader's failover writer
            // withdraws it, with a status write that the API server now holds.
            let report = serde_json::json!({
                "apiVersion": "flotilla.rs/v1alpha1",
                "kind": "MicroService",
                "status": {"failover": {"healthyPods": 1, "totalPods": 1}},
            });
            env.msvcs()
                .patch_status(
                    "users",
                    &PatchParams::apply(FAILOVER_FIELD_MANAGER).force(),
                    &Patch::Apply(&report),
                )
                .await?;
            let status = format!(
                "PATCH /apis/flotilla.rs/v1alpha1/namespaces/{}/microservices/users/status?",
                env.ns
            );
            let manager = format!("fieldManager={FAILOVER_FIELD_MANAGER}");
            let withdrawal = |what: &str| what.starts_with(&status) && what.contains(&manager);
            env.poll("op-a's withdrawal to be in flight", || async {
                Ok(writes.in_flight("op-a", withdrawal).then_some(()))
            })
            .await?;

            drop(a.stop);
            let (result, _) = tokio::time::timeout(Duration::from_secs(30), a.task)
                .await
                .context("op-a did not stop")??;
            result.context("op-a should stop cleanly")?;
            faults.clear();

            let answered = writes
                .of("op-a")
                .into_iter()
                .filter(|w| withdrawal(&w.what))
                .map(|w| w.end)
                .max()
                .context("op-a's withdrawal was never answered")?;
            let release = writes
                .lease_writes_of("op-a")
                .into_iter()
                .max_by_key(|w| w.start)
                .context("op-a wrote no Lease")?;
            let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
            let holder = leases
                .get(LEASE_NAME)
                .await?
                .spec
                .and_then(|s| s.holder_identity);
            if holder.is_some() {
                bail!("op-a stopped without releasing the Lease (holder {holder:?})");
            }
            if release.start < answered {
                bail!(
                    "op-a released the Lease {:?} before its write in flight was answered",
                    answered - release.start
                );
            }
            Ok(())
        })
    })
    .await
}
