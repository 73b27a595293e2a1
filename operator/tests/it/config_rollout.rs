//! Rollouts when referenced configuration changes (`--rollout-on-config-change`), on kubesim:
//! a referenced Secret or ConfigMap value changing changes the pod template's
//! `flotilla.rs/config-digest` and is announced as `ConfigChanged`; an unreferenced key of the
//! same Secret does not; a missing required Secret is held and reported; a restart with nothing
//! changed writes nothing; a Secret the operator may not read is reported until it is granted;
//! with the flag off templates carry no digest; a guarded service analyses the new template like
//! any release.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use flotilla_crds::annotations::CONFIG_DIGEST;
use flotilla_crds::{
    conditions, env_from_config_map, env_from_secret, RolloutPhase, RolloutStrategy,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::{Api, ResourceExt};

use crate::failover_common::sim::{FailoverSim, Sim};
use crate::support::*;

/// A harness whose operator rolls pods on configuration changes.
async fn start_rolling(test: &str) -> Result<Harness> {
    let config = flotilla_operator::OperatorConfig {
        rollout_on_config_change: true,
        ..test_config()
    };
    Harness::builder(test)
        .timeout(WAIT)
        .operator(InProcess::launcher(move |client, shutdown| {
            flotilla_operator::run(client, config.clone(), shutdown)
        }))
        .start()
        .await
}

async fn create_secret(api: &Api<Secret>, name: &str, data: &[(&str, &str)]) -> Result<()> {
    let string_data: BTreeMap<String, String> = data
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.into());
    secret.string_data = Some(string_data);
    api.create(&PostParams::default(), &secret).await?;
    Ok(())
}

async fn set_secret_key(api: &Api<Secret>, name: &str, key: &str, value: &str) -> Result<()> {
    let patch = serde_json::json!({"stringData": {key: value}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// The digest annotation of a Deployment's template as `Kind/name` → digest.
fn digest_entries(d: &Deployment) -> BTreeMap<String, String> {
    template_annotation(d, CONFIG_DIGEST)
        .unwrap_or_default()
        .split(',')
        .filter_map(|e| e.split_once(':'))
        .map(|(object, hex)| (object.to_string(), hex.to_string()))
        .collect()
}

/// Waits until the Deployment `name`'s digest entry for `object` differs from `before`.
async fn entry_changed(
    env: &Harness,
    name: &str,
    object: &str,
    before: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    env.wait(&format!("a new digest of {object}"), || async {
        let entries = digest_entries(&env.deployments().get(name).await?);
        let changed = entries.contains_key(object) && entries.get(object) != before.get(object);
        Ok(changed.then_some(entries))
    })
    .await
}

/// Notes of the `ConfigChanged` Events about `name`.
async fn config_changed_notes(env: &Harness, name: &str) -> Result<Vec<String>> {
    Ok(env
        .events_of(name)
        .await?
        .into_iter()
        .filter(|(reason, _)| reason == "ConfigChanged")
        .map(|(_, note)| note)
        .collect())
}

/// Waits for a `ConfigChanged` Event naming `object` (e.g. `Secret app-tls`).
async fn announced(env: &Harness, name: &str, object: &str) -> Result<()> {
    let object = format!("{object} changed");
    env.wait(
        &format!("a ConfigChanged Event naming {object}"),
        || async {
            let notes = config_changed_notes(env, name).await?;
            Ok(notes.iter().any(|n| n.starts_with(&object)).then_some(()))
        },
    )
    .await
}

#[tokio::test]
async fn referenced_values_roll_the_template() -> Result<()> {
    // Each referenced value that changes changes its own digest entry and is announced; a key
    // the env does not read and a Secret nobody references change nothing; a missing required
    // Secret keeps the template and says so, and its return with the same data rolls nothing.
    let env = start_rolling("config-roll").await?;
    let secrets: Api<Secret> = env.api();
    create_secret(
        &secrets,
        "app-secrets",
        &[("token", "one"), ("unused", "x")],
    )
    .await?;
    create_secret(&secrets, "app-tls", &[("cert", "c1")]).await?;
    create_secret(&secrets, "unrelated", &[("k", "v")]).await?;
    let settings: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "app-settings"}, "data": {"mode": "fast"}
    }))?;
    env.config_maps()
        .create(&PostParams::default(), &settings)
        .await?;
    let mut s = spec("flotilla/users:0.1.0");
    s.env = Some(vec![
        env_from_secret("TOKEN", "app-secrets", "token", None),
        env_from_secret("CERT", "app-tls", "cert", None),
        env_from_config_map("MODE", "app-settings", "mode"),
        env_from_secret("EXTRA", "extra", "k", Some(true)),
    ]);
    env.create("app", s).await?;
    let first = env
        .wait("the Deployment with a config digest", || async {
            let d = env.deployments().get_opt("app").await?;
            Ok(d.map(|d| digest_entries(&d)).filter(|e| e.len() == 4))
        })
        .await?;
    let objects: Vec<&str> = first.keys().map(String::as_str).collect();
    assert_eq!(
        objects,
        [
            "ConfigMap/app-settings",
            "Secret/app-secrets",
            "Secret/app-tls",
            "Secret/extra"
        ]
    );

    // An unreferenced key of a referenced Secret and an unreferenced Secret change, then a
    // referenced one: the Secret watch delivers them in order, so once the last one shows,
    // the first two have been looked at.
    set_secret_key(&secrets, "app-secrets", "unused", "y").await?;
    set_secret_key(&secrets, "unrelated", "k", "w").await?;
    set_secret_key(&secrets, "app-tls", "cert", "c2").await?;
    let second = entry_changed(&env, "app", "Secret/app-tls", &first).await?;
    for unchanged in [
        "Secret/app-secrets",
        "ConfigMap/app-settings",
        "Secret/extra",
    ] {
        assert_eq!(second.get(unchanged), first.get(unchanged), "{unchanged}");
    }
    announced(&env, "app", "Secret app-tls").await?;
    let notes = config_changed_notes(&env, "app").await?;
    if notes
        .iter()
        .any(|n| n.contains("app-secrets") || n.contains("unrelated"))
    {
        bail!("an unreferenced change was announced: {notes:?}");
    }

    // A referenced key of the shared Secret, the ConfigMap, and the optional Secret appearing.
    set_secret_key(&secrets, "app-secrets", "token", "two").await?;
    let third = entry_changed(&env, "app", "Secret/app-secrets", &second).await?;
    announced(&env, "app", "Secret app-secrets").await?;
    env.config_maps()
        .patch(
            "app-settings",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"mode": "slow"}})),
        )
        .await?;
    let fourth = entry_changed(&env, "app", "ConfigMap/app-settings", &third).await?;
    create_secret(&secrets, "extra", &[("k", "on")]).await?;
    let fifth = entry_changed(&env, "app", "Secret/extra", &fourth).await?;

    // A required Secret deleted: Degraded says so, the template keeps its digest.
    secrets.delete("app-tls", &DeleteParams::default()).await?;
    env.wait("Degraded ConfigMissing naming app-tls", || async {
        let ms = env.msvcs().get("app").await?;
        let c = ms.status.and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.type_ == conditions::DEGRADED)
        });
        Ok(c.filter(|c| c.reason == "ConfigMissing" && c.message.contains("Secret app-tls")))
    })
    .await?;
    assert_eq!(digest_entries(&env.deployments().get("app").await?), fifth);
    // Back with the same data: the problem clears, nothing rolls.
    create_secret(&secrets, "app-tls", &[("cert", "c2")]).await?;
    env.wait("Degraded to clear", || async {
        let ms = env.msvcs().get("app").await?;
        Ok(
            (condition(&ms, conditions::DEGRADED).map(|c| c.0) == Some(conditions::FALSE.into()))
                .then_some(()),
        )
    })
    .await?;
    assert_eq!(digest_entries(&env.deployments().get("app").await?), fifth);

    // Nothing changed → no write: a restarted operator reads the same values, finds the same
    // digest and writes no child.
    env.stop_operator().await?;
    let version = env.deployments().get("app").await?.resource_version();
    let addr: std::net::SocketAddr =
        format!("127.0.0.1:{}", flotilla_testkit::operator::free_port()?).parse()?;
    let config = flotilla_operator::OperatorConfig {
        rollout_on_config_change: true,
        metrics_addr: Some(addr),
        ..test_config()
    };
    let operator = spawn_operator(&env, config);
    let series = |kind: &str, outcome: &str| {
        format!("flotilla_child_writes_total{{kind=\"{kind}\",outcome=\"{outcome}\"}}")
    };
    let metric = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    };
    let text = env
        .poll("a reconcile after the restart", || async {
            let url = format!("http://{addr}/metrics");
            let Ok(reply) = flotilla_testkit::http::get(&url).await else {
                return Ok(None);
            };
            let seen = metric(&reply.body, &series("Deployment", "unchanged")) >= 1.0;
            Ok(seen.then_some(reply.body))
        })
        .await?;
    for outcome in ["created", "updated"] {
        let s = series("Deployment", outcome);
        assert_eq!(metric(&text, &s), 0.0, "{s} in\n{text}");
    }
    assert_eq!(
        env.deployments().get("app").await?.resource_version(),
        version
    );
    operator.stop().await?;
    Ok(())
}

/// Grants `user` `rules` cluster-wide, in a ClusterRole and binding named `name`.
async fn grant(env: &Harness, name: &str, user: &str, rules: serde_json::Value) -> Result<()> {
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name}, "rules": rules,
    }))?;
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}],
    }))?;
    let pp = PostParams::default();
    Api::<ClusterRole>::all(env.client.clone())
        .create(&pp, &role)
        .await?;
    Api::<ClusterRoleBinding>::all(env.client.clone())
        .create(&pp, &binding)
        .await?;
    Ok(())
}

/// A client for the harness's cluster acting as `user`.
async fn client_as(env: &Harness, user: &str) -> Result<kube::Client> {
    let path = env.local().context("needs kubesim")?.kubeconfig_path();
    let mut config =
        kube::Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &Default::default())
            .await?;
    config.auth_info.impersonate = Some(user.to_string());
    Ok(kube::Client::try_from(config)?)
}

#[tokio::test]
async fn a_forbidden_secret_is_reported_until_granted() -> Result<()> {
    // An operator whose RBAC lacks Secrets still converges the MicroService, without a digest
    // entry for the Secret it may not read, and says why in Degraded (Forbidden); once the grant
    // arrives, its refused Secret watch lists again and the entry appears without a restart.
    let env = start_without_operator("config-forbidden").await?;
    let user = format!("config-test-{}", env.ns);
    grant(
        &env,
        &format!("{user}-all-but-secrets"),
        &user,
        serde_json::json!([
            {"apiGroups": ["apps", "autoscaling", "flotilla.rs", "events.k8s.io"],
             "resources": ["*"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["configmaps", "services", "pods", "events"],
             "verbs": ["*"]},
        ]),
    )
    .await?;
    create_secret(&env.api(), "app-secrets", &[("token", "one")]).await?;
    let config = flotilla_operator::OperatorConfig {
        rollout_on_config_change: true,
        ..test_config()
    };
    let client = client_as(&env, &user).await?;
    let operator = InProcess::spawn(client, move |c, s| flotilla_operator::run(c, config, s));
    let mut s = spec("flotilla/users:0.1.0");
    s.env = Some(vec![env_from_secret("TOKEN", "app-secrets", "token", None)]);
    env.create("app", s).await?;
    env.wait("Degraded Forbidden naming the Secret", || async {
        let ms = env.msvcs().get("app").await?;
        let c = ms.status.and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.type_ == conditions::DEGRADED)
        });
        Ok(c.filter(|c| c.reason == "Forbidden" && c.message.contains("Secret app-secrets")))
    })
    .await?;
    let d = env.deployments().get("app").await?;
    assert_eq!(template_annotation(&d, CONFIG_DIGEST), None);

    grant(
        &env,
        &format!("{user}-secrets"),
        &user,
        serde_json::json!([{"apiGroups": [""], "resources": ["secrets"],
                            "verbs": ["get", "list", "watch"]}]),
    )
    .await?;
    env.wait("the Secret's digest entry after the grant", || async {
        let d = env.deployments().get("app").await?;
        Ok(digest_entries(&d)
            .contains_key("Secret/app-secrets")
            .then_some(()))
    })
    .await?;
    env.wait("Degraded to clear", || async {
        let ms = env.msvcs().get("app").await?;
        Ok(
            (condition(&ms, conditions::DEGRADED).map(|c| c.0) == Some(conditions::FALSE.into()))
                .then_some(()),
        )
    })
    .await?;
    operator.stop().await?;
    Ok(())
}

#[tokio::test]
async fn without_the_flag_templates_carry_no_digest() -> Result<()> {
    // Off (the default), a MicroService reading a Secret gets a template without the annotation,
    // so upgrading to an operator with the feature off rolls nothing.
    let env = start("config-off").await?;
    create_secret(&env.api(), "app-secrets", &[("token", "one")]).await?;
    let mut s = spec("flotilla/users:0.1.0");
    s.env = Some(vec![env_from_secret("TOKEN", "app-secrets", "token", None)]);
    env.create("app", s).await?;
    let d = env
        .wait("the Deployment", || async {
            Ok(env.deployments().get_opt("app").await?)
        })
        .await?;
    assert_eq!(template_annotation(&d, CONFIG_DIGEST), None);
    env.stop_operator().await?;
    Ok(())
}

#[tokio::test]
async fn guarded_service_analyses_a_rotated_secret() -> Result<()> {
    // A guarded `users` reads RELEASE from a Secret; rotating it starts an analysis with the
    // stable pods kept on the old digest, and the promotion moves them to the new one.
    let sim = Sim::start_tuned(
        "config-guarded",
        None,
        |c| c.rollout_on_config_change = true,
        |_| {},
    )
    .await?;
    let secrets: Api<Secret> = sim.api();
    create_secret(&secrets, "users-release", &[("value", "1")]).await?;
    sim.create_users("users", 2, |s| {
        s.rollout.strategy = RolloutStrategy::Guarded;
        s.rollout.analysis_seconds = 3;
        s.rollout.ready_timeout_seconds = 20;
        if let Some(env) = s.env.as_mut() {
            env.push(env_from_secret("RELEASE", "users-release", "value", None));
        }
    })
    .await?;
    sim.ready_pods("users", 2).await?;
    let rollout = || async {
        let ms = sim.msvcs().get("users").await?;
        Ok::<_, anyhow::Error>(ms.status.and_then(|s| s.rollout))
    };
    sim.wait("the first template to be stable", || async {
        Ok(rollout().await?.filter(|r| r.phase == RolloutPhase::Stable))
    })
    .await?;
    let before = digest_entries(&sim.deployments().get("users").await?);
    set_secret_key(&secrets, "users-release", "value", "2").await?;
    sim.wait("an analysis with the stable template kept", || async {
        let analysing = rollout()
            .await?
            .is_some_and(|r| r.phase == RolloutPhase::Analyzing);
        let stable = digest_entries(&sim.deployments().get("users").await?);
        let canary = sim.deployments().get_opt("users-canary").await?;
        if analysing && stable != before {
            bail!("the stable Deployment took the new digest before the analysis ended");
        }
        let canary_new = canary.is_some_and(|c| digest_entries(&c) != before);
        Ok((analysing && canary_new).then_some(()))
    })
    .await?;
    sim.wait("the promotion", || async {
        Ok(rollout()
            .await?
            .filter(|r| r.phase == RolloutPhase::Promoted))
    })
    .await?;
    entry_changed(&sim, "users", "Secret/users-release", &before).await?;
    let reasons = sim.event_reasons("users").await?;
    for want in ["ConfigChanged", "RolloutStarted", "Promoted"] {
        if !reasons.iter().any(|r| r == want) {
            bail!("no {want} Event: {reasons:?}");
        }
    }
    sim.shutdown().await;
    Ok(())
}
