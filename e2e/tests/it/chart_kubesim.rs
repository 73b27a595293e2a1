//! The rendered operator chart on a cluster: applied with the real `kubectl apply
//! --server-side` to a local kubesim cluster, then the operator binary run as a local process
//! with the chart's own container arguments reconciles a MicroService, holds its Lease, and
//! drains within the chart's grace period on SIGTERM.

use anyhow::{ensure, Context, Result};
use flotilla_e2e::chart::{self, kind_of, name_of, operator_deployment};
use flotilla_e2e::tools;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;

const RELEASE: &str = "flotilla";
const NAMESPACE: &str = "flotilla-system";

/// Container args and literal environment variables of the operator.
type OperatorCommand = (Vec<String>, Vec<(String, String)>);

/// The operator container's args and literal env from a rendered Deployment, with the metrics
/// address moved to `metrics_addr` (a loopback port of this machine instead of the pod's
/// `0.0.0.0:8080`).
fn local_operator_command(deployment: &Deployment, metrics_addr: &str) -> Result<OperatorCommand> {
    let container = chart::first_container(deployment)?;
    let mut args = container.args.clone().unwrap_or_default();
    let at = args
        .iter()
        .position(|a| a == "--metrics-addr")
        .context("chart passes no --metrics-addr")?;
    let value = args
        .get_mut(at + 1)
        .context("--metrics-addr has no value")?;
    *value = metrics_addr.to_owned();
    let envs = container
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.value.map(|v| (e.name, v)))
        .chain([("POD_NAMESPACE".to_owned(), NAMESPACE.to_owned())])
        .collect();
    Ok((args, envs))
}

/// What a kubelet does for the operator's Secret volumes (the verdict key): writes each rendered
/// Secret's data as files under `dir`, and points arguments under a volume's mount path there.
fn mount_secret_volumes(
    deployment: &Deployment,
    docs: &[serde_json::Value],
    dir: &std::path::Path,
    args: &mut [String],
) -> Result<()> {
    let pod = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("Deployment has no pod spec")?;
    let container = pod
        .containers
        .first()
        .context("Deployment has no container")?;
    for mount in container.volume_mounts.iter().flatten() {
        let Some(secret_name) = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .and_then(|v| v.secret.as_ref())
            .and_then(|s| s.secret_name.clone())
        else {
            continue;
        };
        let doc = docs
            .iter()
            .find(|d| kind_of(d) == "Secret" && name_of(d) == secret_name)
            .with_context(|| format!("Secret {secret_name} is not rendered"))?;
        let secret: Secret = serde_json::from_value(doc.clone())?;
        let target = dir.join(&mount.name);
        std::fs::create_dir_all(&target)?;
        for (key, value) in secret.data.iter().flatten() {
            std::fs::write(target.join(key), &value.0)?;
        }
        for arg in args.iter_mut() {
            if let Some(rest) = arg.strip_prefix(mount.mount_path.as_str()) {
                *arg = format!("{}{rest}", target.display());
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_chart_applies_to_kubesim_and_operator_reconciles() -> Result<()> {
    // The rendered chart (CRD included) is accepted by `kubectl apply --server-side`, and the
    // operator started with the chart's own container arguments (and its verdict key, as the
    // kubelet would mount it) reconciles a MicroService to Ready on that cluster.
    use flotilla_e2e::msvc;
    use flotilla_testkit::cluster::LocalCluster;
    use flotilla_testkit::operator::{free_port, OperatorProcess};
    use flotilla_testkit::wait;
    use kube::api::{Patch, PatchParams};
    use kube::Api;

    let cluster = LocalCluster::start().await?;
    let kubeconfig = cluster.kubeconfig_path().to_string_lossy().into_owned();
    let kubectl = tools::find("kubectl")?;
    let helm = tools::find("helm")?;

    // replicaCount=0: the Deployment is applied, but the operator runs below as a local
    // process rather than as a pod of the simulated node.
    let mut args = chart::template_args("flotilla", RELEASE, NAMESPACE, &["replicaCount=0"]);
    args.extend(["--include-crds".to_owned(), "--skip-tests".to_owned()]);
    let rendered = tools::run_ok(&helm, &args, None)?;
    // What `helm install --create-namespace` does first.
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": NAMESPACE}}))?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(cluster.client())
        .create(&Default::default(), &ns)
        .await?;
    let applied = tools::run_ok(
        &kubectl,
        [
            "--kubeconfig",
            &kubeconfig,
            "apply",
            "--server-side",
            "--field-manager",
            "helm",
            "-f",
            "-",
        ],
        Some(rendered.as_bytes()),
    )?;
    let docs = chart::split_documents(&rendered)?;
    for doc in &docs {
        let expected = format!("/{} serverside-applied", name_of(doc));
        ensure!(
            applied.contains(&expected),
            "{} {} was not applied:\n{applied}",
            kind_of(doc),
            name_of(doc)
        );
    }
    let crd_established = tools::run_ok(
        &kubectl,
        [
            "--kubeconfig",
            &kubeconfig,
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/microservices.flotilla.rs",
        ],
        None,
    );
    crd_established?;

    let deployment = operator_deployment(&docs)?;
    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let (mut op_args, op_env) = local_operator_command(&deployment, &metrics_addr)?;
    mount_secret_volumes(
        &deployment,
        &docs,
        &cluster.state_dir().join("volumes"),
        &mut op_args,
    )?;
    let log = cluster.state_dir().join("chart-operator.log");
    let operator = OperatorProcess::start(
        cluster.kubeconfig_path(),
        &op_args,
        &op_env,
        &metrics_addr,
        log.clone(),
    )
    .await?;

    let client = cluster.client();
    let namespace = flotilla_testkit::namespace::TestNamespace::create(
        &client,
        "rendered_chart_applies_to_kubesim_and_operator_reconciles",
    )
    .await?;
    let api: Api<flotilla_crds::MicroService> = Api::namespaced(client.clone(), &namespace.name);
    let sample: flotilla_crds::MicroService = serde_json::from_value(serde_json::json!({
        "apiVersion": flotilla_crds::API_VERSION,
        "kind": flotilla_crds::KIND,
        "metadata": {"name": "users", "namespace": namespace.name},
        "spec": {"image": "flotilla/users:0.1.0", "replicas": 1}
    }))?;
    api.patch(
        "users",
        &PatchParams::apply("flotilla-e2e").force(),
        &Patch::Apply(&sample),
    )
    .await?;
    let ready = wait::for_object(
        &api,
        "users",
        msvc::READY_TIMEOUT,
        flotilla_testkit::is_ready,
    )
    .await;
    if ready.is_err() {
        eprintln!(
            "{}",
            flotilla_testkit::dump::namespace_report(&client, &namespace.name).await
        );
        eprintln!("operator log:\n{}", flotilla_testkit::paths::tail(&log, 80));
        eprintln!("{}", cluster.diagnostics());
    }
    let ready = ready?;
    ensure!(
        ready.status.as_ref().and_then(|s| s.ready_replicas) == Some(1),
        "{:?}",
        ready.status
    );
    // The chart turns leader election on in the release namespace: the operator holds the Lease.
    let lease =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), NAMESPACE)
            .get("flotilla-operator")
            .await
            .context("the operator's Lease")?;
    ensure!(
        lease.spec.and_then(|s| s.holder_identity).is_some(),
        "the Lease has no holder"
    );
    // SIGTERM: the operator drains and exits within the chart's grace period, releasing the
    // Lease so a standby can take over at once.
    let grace = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.termination_grace_period_seconds)
        .context("no terminationGracePeriodSeconds")?;
    let status = operator
        .terminate(std::time::Duration::from_secs(u64::try_from(grace)?))
        .await?;
    ensure!(status.success(), "operator exited with {status}");
    let lease =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(cluster.client(), NAMESPACE)
            .get("flotilla-operator")
            .await?;
    ensure!(
        lease.spec.and_then(|s| s.holder_identity).is_none(),
        "the Lease was not released on SIGTERM"
    );
    cluster.shutdown().await;
    Ok(())
}
