//! The built-in resources kubesim serves, each tied to its k8s-openapi type for validation.

use std::collections::BTreeMap;

use k8s_openapi::api::{apps, autoscaling, coordination, core, discovery, events, policy, rbac};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use crate::registry::{Decoder, ResourceDef, ScalePaths, SchemaFn, STANDARD_VERBS};

/// Decodes into `T` and encodes back: rejects type errors and drops unknown fields, as the
/// real server's decoding does.
fn decode<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    let mut out = serde_json::to_value(typed).map_err(|e| e.to_string())?;
    integral_floats_as_integers(&mut out);
    Ok(out)
}

/// Writes whole-number floats (`minimum: 0.0` in a CRD schema) as integers, as Go's JSON
/// encoding of a float64 does, so a decoded object equals what clients sent.
fn integral_floats_as_integers(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    *v = Value::from(f as i64);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(m) => m.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

fn schema<T: schemars::JsonSchema>(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    g.subschema_for::<T>()
}

/// The decoder and schema of a k8s-openapi type.
fn typed<T: DeserializeOwned + Serialize + schemars::JsonSchema>() -> (Decoder, SchemaFn) {
    (decode::<T>, schema::<T>)
}

struct Spec {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    all: bool,
    status: bool,
    scale: bool,
    decoder: fn(&Value) -> Result<Value, String>,
    schema: crate::registry::SchemaFn,
}

fn spec(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    types: (Decoder, SchemaFn),
) -> Spec {
    Spec {
        group,
        version,
        kind,
        plural,
        namespaced,
        short,
        all: false,
        status: false,
        scale: false,
        decoder: types.0,
        schema: types.1,
    }
}

fn with(mut s: Spec, all: bool, status: bool, scale: bool) -> Spec {
    s.all = all;
    s.status = status;
    s.scale = scale;
    s
}

/// Every built-in resource kubesim serves.
pub fn all() -> Vec<ResourceDef> {
    use core::v1 as c;
    let specs = [
        with(
            spec(
                "",
                "v1",
                "Namespace",
                "namespaces",
                false,
                &["ns"],
                typed::<c::Namespace>(),
            ),
            false,
            true,
            false,
        ),
        with(
            spec("", "v1", "Pod", "pods", true, &["po"], typed::<c::Pod>()),
            true,
            true,
            false,
        ),
        with(
            spec(
                "",
                "v1",
                "Service",
                "services",
                true,
                &["svc"],
                typed::<c::Service>(),
            ),
            true,
            true,
            false,
        ),
        spec(
            "",
            "v1",
            "ConfigMap",
            "configmaps",
            true,
            &["cm"],
            typed::<c::ConfigMap>(),
        ),
        spec(
            "",
            "v1",
            "Secret",
            "secrets",
            true,
            &[],
            typed::<c::Secret>(),
        ),
        spec(
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            true,
            &["sa"],
            typed::<c::ServiceAccount>(),
        ),
        spec(
            "",
            "v1",
            "Event",
            "events",
            true,
            &["ev"],
            typed::<c::Event>(),
        ),
        spec(
            "",
            "v1",
            "Endpoints",
            "endpoints",
            true,
            &["ep"],
            typed::<c::Endpoints>(),
        ),
        with(
            spec(
                "apps",
                "v1",
                "Deployment",
                "deployments",
                true,
                &["deploy"],
                typed::<apps::v1::Deployment>(),
            ),
            true,
            true,
            true,
        ),
        with(
            spec(
                "apps",
                "v1",
                "ReplicaSet",
                "replicasets",
                true,
                &["rs"],
                typed::<apps::v1::ReplicaSet>(),
            ),
            true,
            true,
            true,
        ),
        spec(
            "apps",
            "v1",
            "ControllerRevision",
            "controllerrevisions",
            true,
            &[],
            typed::<apps::v1::ControllerRevision>(),
        ),
        with(
            spec(
                "autoscaling",
                "v2",
                "HorizontalPodAutoscaler",
                "horizontalpodautoscalers",
                true,
                &["hpa"],
                typed::<autoscaling::v2::HorizontalPodAutoscaler>(),
            ),
            true,
            true,
            false,
        ),
        spec(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
            "endpointslices",
            true,
            &[],
            typed::<discovery::v1::EndpointSlice>(),
        ),
        spec(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            true,
            &[],
            typed::<coordination::v1::Lease>(),
        ),
        with(
            spec(
                "policy",
                "v1",
                "PodDisruptionBudget",
                "poddisruptionbudgets",
                true,
                &["pdb"],
                typed::<policy::v1::PodDisruptionBudget>(),
            ),
            false,
            true,
            false,
        ),
        spec(
            "events.k8s.io",
            "v1",
            "Event",
            "events",
            true,
            &["ev"],
            typed::<events::v1::Event>(),
        ),
        // Stored and listed only: nothing enforces a NetworkPolicy (pods share the machine).
        spec(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
            &["netpol"],
            typed::<k8s_openapi::api::networking::v1::NetworkPolicy>(),
        ),
        spec(
            "rbac.authorization.k8s.io",
            "v1",
            "Role",
            "roles",
            true,
            &[],
            typed::<rbac::v1::Role>(),
        ),
        spec(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
            &[],
            typed::<rbac::v1::ClusterRole>(),
        ),
        spec(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
            &[],
            typed::<rbac::v1::RoleBinding>(),
        ),
        spec(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
            &[],
            typed::<rbac::v1::ClusterRoleBinding>(),
        ),
        with(
            spec(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
                false,
                &["crd", "crds"],
                typed::<CustomResourceDefinition>(),
            ),
            false,
            true,
            false,
        ),
    ];
    specs
        .into_iter()
        .map(|s| ResourceDef {
            group: s.group.to_string(),
            versions: vec![s.version.to_string()],
            kind: s.kind.to_string(),
            plural: s.plural.to_string(),
            singular: s.kind.to_lowercase(),
            namespaced: s.namespaced,
            short_names: s.short.iter().map(|x| x.to_string()).collect(),
            categories: if s.all {
                vec!["all".to_string()]
            } else {
                Vec::new()
            },
            status: s.status,
            scale: s.scale.then(|| ScalePaths {
                spec_replicas: ".spec.replicas".to_string(),
                status_replicas: ".status.replicas".to_string(),
                label_selector: Some(".spec.selector".to_string()),
            }),
            decoder: Some(s.decoder),
            openapi: Some(s.schema),
            schemas: BTreeMap::new(),
            cel_rules: BTreeMap::new(),
            printer_columns: BTreeMap::new(),
            crd: None,
            verbs: STANDARD_VERBS.to_vec(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_bounds_keep_their_integer_form() {
        // A CRD's `minimum: 0` survives decoding as 0, not 0.0 (re-applies stay no-ops).
        let crd = serde_json::json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "a.b.c"}, "spec": {"group": "b.c", "scope": "Namespaced",
            "names": {"kind": "A", "plural": "a"}, "versions": [{"name": "v1", "served": true, "storage": true,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {"n": {"type": "number", "minimum": 0, "maximum": 1.5}}}}}]}});
        let out = decode::<CustomResourceDefinition>(&crd).expect("decodes");
        let n = &out["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["n"];
        assert_eq!(n["minimum"], serde_json::json!(0));
        assert_eq!(n["maximum"], serde_json::json!(1.5));
    }
}
